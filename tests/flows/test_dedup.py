"""The curate flow with CLIP curation on, and the `dedup` flow / CLI that re-runs the corpus pass.

(tests/pipeline/video/test_phash.py is pipeline/video/phash.py's: the perceptual hashes.)
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipeline.corpus.verify import verify_dataset
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry, write_catalog
from pipeline.video.record import load_records

VIDEOS = ("walk.mp4", "walk.mkv", "cut.mp4")


def _config(path, clip_settings: dict, epsilon: float | None = None, clip: bool = True):
    settings = {
        "sample": {"fps": 10, "max_height": 96, "trim": {"head_s": 0.5, "tail_s": 0.5}, "decimate": None},
        "split": {"gap_frames": 2},
        "download": {"attempts": 1},
        "run": {"workers": 2},
    }
    if clip:
        settings["clip"] = {**clip_settings, "semdedup": {"epsilon": epsilon}}
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def _catalog(path, base_url: str):
    entries = [
        CatalogEntry(
            video_id=name.replace(".", "_"),
            url=f"{base_url}/{name}",
            dataset="clip",
            category="natural" if i < 2 else "driving",
        )
        for i, name in enumerate(VIDEOS)
    ]
    return write_catalog(entries, path)


def _files(root: DataRoot, *folders: str) -> dict[str, tuple[int, bytes]]:
    return {
        p.relative_to(root.root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for folder in folders
        for p in sorted((root.root / folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def clip_run(prefect_harness, http_root, clip_settings, tmp_path_factory):
    """One curate flow run with CLIP curation on (epsilon 0.001: only the closest frames are duplicates)."""
    from flows.curate import curate

    work = tmp_path_factory.mktemp("clip_run")
    catalog = _catalog(work / "catalog.csv", http_root)
    curate(
        catalog=str(catalog),
        data_root=str(work / "data"),
        config=str(_config(work / "clip.yaml", clip_settings, 0.001)),
    )
    return DataRoot(work / "data")


def test_curate_with_clip_embeds_every_kept_frame_and_tags_the_manifest(clip_run):
    description = json.loads(clip_run.dataset_json.read_text())
    assert description["counts"]["videos"] == {"ok": 3}
    for record in load_records(clip_run):
        embedded = pq.read_table(clip_run.embeddings(record.dataset, record.video_id), columns=["sample_id"])
        shard = pq.read_table(clip_run.root / record.shards[0].path, columns=["sample_id"])
        assert embedded["sample_id"].equals(shard["sample_id"])
    manifest = pq.read_table(clip_run.manifest("clip"))
    assert manifest.num_rows > 0 and manifest.column("clip_tag").null_count == 0
    assert description["clip"]["model"] == "tiny-clip-test" and len(description["clip"]["embeddings"]) == 3
    assert verify_dataset(clip_run) == []


def test_curate_publishes_the_audit_artifacts(clip_run):
    from prefect.artifacts import Artifact

    videos = json.loads(Artifact.get("curation-audit-videos").data)
    categories = json.loads(Artifact.get("curation-audit-categories").data)
    assert {row["video_id"] for row in videos} >= {"walk_mp4", "walk_mkv", "cut_mp4"}
    assert {row["category"] for row in categories} >= {"natural", "driving"}
    description = json.loads(clip_run.dataset_json.read_text())
    dropped = description["counts"]["dropped"]["semantic_duplicate"]
    assert sum(row["dropped_semantic_duplicate"] for row in categories) == dropped > 0
    assert sum(row["dropped_semantic_duplicate"] for row in videos) == dropped


def test_dedup_with_a_new_epsilon_reuses_shards_and_embeddings_and_reruns_idempotently(clip_run, tmp_path):
    root = DataRoot(tmp_path / "data")
    shutil.copytree(clip_run.root, root.root, copy_function=shutil.copy2)
    shutil.rmtree(root.root / "videos")  # nothing to decode from: the pass must read the shards' embeddings
    before = json.loads(root.dataset_json.read_text())
    untouched = _files(root, "shards", "embeddings", "stats/videos", "stats/frames")
    manifest_before = _files(root, "manifest")

    assert main(["dedup", "--data-root", str(root.root), "--epsilon", "0.005"]) == 0
    after = json.loads(root.dataset_json.read_text())
    assert _files(root, "shards", "embeddings", "stats/videos", "stats/frames") == untouched
    assert _files(root, "manifest") != manifest_before
    assert after["clip"]["semdedup"]["epsilon"] == 0.005 and after["config"]["clip"]["semdedup"]["epsilon"] == 0.005
    dropped = after["counts"]["dropped"]["semantic_duplicate"]
    assert dropped > before["counts"]["dropped"]["semantic_duplicate"]
    assert after["counts"]["frames_kept"] == before["counts"]["frames_kept"] - (
        dropped - before["counts"]["dropped"]["semantic_duplicate"]
    )
    assert after["shards"] == before["shards"] and verify_dataset(root) == []

    everything = _files(root, ".")
    assert main(["dedup", "--data-root", str(root.root), "--epsilon", "0.005"]) == 0
    assert _files(root, ".") == everything  # the second run changes no byte and touches no file


def test_dedup_embeds_a_dataset_curated_without_clip(prefect_harness, http_root, clip_settings, tmp_path, capsys):
    from flows.curate import curate

    catalog = _catalog(tmp_path / "catalog.csv", http_root)
    root = DataRoot(tmp_path / "data")
    plain = _config(tmp_path / "plain.yaml", clip_settings, clip=False)
    curate(catalog=str(catalog), data_root=str(root.root), config=str(plain), limit=1)
    assert not (root.root / "embeddings").exists()
    assert main(["dedup", "--data-root", str(root.root)]) == 2
    assert "clip.checkpoint" in capsys.readouterr().err  # no model configured: a clear error, no flow run
    shards = _files(root, "shards")
    assert (
        main(
            [
                "dedup",
                "--data-root",
                str(root.root),
                "--config",
                str(_config(tmp_path / "clip.yaml", clip_settings, 0.01)),
            ]
        )
        == 0
    )
    assert _files(root, "shards") == shards
    assert (root.embeddings("clip", "walk_mp4")).is_file()
    manifest = pq.read_table(root.manifest("clip"))
    assert manifest.num_rows > 0 and manifest.column("tag_natural").null_count == 0


def test_dedup_takes_where_to_run_from_its_config(tmp_path):
    from flows.dedup import placed
    from pipeline.config import CurateConfig

    config = tmp_path / "ray.yaml"
    config.write_text("run: {executor: ray, ray: {address: 'ray://head:10001', gpus_per_task: 0.5}, workers: 9}\n")
    cfg = placed(CurateConfig(), str(config))
    assert (cfg.run.executor, cfg.run.ray.address, cfg.run.ray.gpus_per_task) == ("ray", "ray://head:10001", 0.5)
    assert cfg.run.workers == 2  # the dataset's own settings stay; only where tasks run comes from `config`
    assert placed(cfg, None) is cfg
