"""The corpus-level CLIP pass through publish: score columns, junk drops, SemDeDup, counts, idempotence."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.clip.embeddings import embed_video
from pipeline.clip.model import get_model
from pipeline.config import load_config
from pipeline.corpus.description import dedup_config
from pipeline.corpus.publish import publish
from pipeline.corpus.verify import verify_dataset
from pipeline.io.data_root import DataRoot
from pipeline.io.storage import sha256_file
from pipeline.schema import CLIP_JUNK, CLIP_TAGS, DROP_REASONS
from pipeline.video.ingest import ingest_video

BASE = {
    "sample": {"fps": 10, "max_height": 96, "trim": {"head_s": 0.5, "tail_s": 0.5}, "decimate": None},
    "split": {"train_fraction": 0.8, "gap_frames": 2},
}


@pytest.fixture(scope="module")
def corpus(video_dir, clip_settings, tmp_path_factory):
    """An original, a smaller re-encode of it (a re-upload) and an unrelated video, ingested and embedded."""
    from pipeline.sources.catalog import CatalogEntry

    work = tmp_path_factory.mktemp("clip_corpus")
    copy = work / "copy.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-i",
            str(video_dir / "walk.mp4"),
            "-vf",
            "scale=128:-2",
            "-c:v",
            "libx264",
            str(copy),
        ],
        check=True,
    )
    root = DataRoot(work / "root")
    cfg = load_config(overrides=BASE)
    entry = CatalogEntry(video_id="walk", url="http://127.0.0.1/walk.mp4", dataset="test", category="natural")
    records = []
    for video_id, path, category in [
        ("a_original", video_dir / "walk.mp4", "natural"),
        ("b_copy", copy, "natural"),
        ("c_other", video_dir / "walk.mkv", "driving"),
    ]:
        records.append(ingest_video(dataclasses.replace(entry, video_id=video_id, category=category), path, root, cfg))
    model = get_model(load_config(overrides={"clip": clip_settings}).clip)
    for record in records:
        embed_video(root, record, model)
    return root


def _config(clip_settings, **clip):
    # pHash cross-video dedup off, so the re-upload is left for SemDeDup to find
    return load_config(overrides={**BASE, "dedup": {"across_videos": False}, "clip": {**clip_settings, **clip}})


def test_scores_are_manifest_columns(corpus, clip_settings):
    description = publish(corpus, _config(clip_settings))
    manifest = pq.read_table(corpus.manifest("test")).to_pandas()
    assert len(manifest) == description["counts"]["samples"]["test"] > 0
    tags = manifest[[f"tag_{t}" for t in CLIP_TAGS]].to_numpy()
    assert np.allclose(tags.sum(axis=1), 1, atol=1e-5)
    assert (manifest.clip_tag == np.array(CLIP_TAGS)[tags.argmax(axis=1)]).all()
    junk = manifest[[f"junk_{j}" for j in CLIP_JUNK]].to_numpy()
    assert ((junk > 0) & (junk < 1)).all()
    filtered = pq.read_table(corpus.manifest("test"), filters=[("junk_text", "<", float(np.median(junk[:, 0])))])
    assert 0 < filtered.num_rows < len(manifest)  # a plain Parquet filter, as a trainer would use it
    frames = pq.read_table(corpus.frames_table).to_pandas()
    shard_rows = sum(s["rows"] for s in description["shards"])
    assert frames.tag_natural.notna().sum() == shard_rows  # every embedded frame is scored, kept or not
    clip = description["clip"]
    assert clip["model"] == "tiny-clip-test" and clip["checkpoint_sha256"] == sha256_file(clip_settings["checkpoint"])
    assert clip["missing_embeddings"] == [] and clip["frames_embedded"] == shard_rows
    assert verify_dataset(corpus) == []


def test_reupload_is_a_semantic_duplicate_of_the_earlier_video(corpus, clip_settings):
    publish(corpus, _config(clip_settings, semdedup={"epsilon": 0.0005}))
    frames = pq.read_table(corpus.frames_table).to_pandas()
    copy = frames[frames.video_id == "b_copy"]
    dropped = copy[copy.drop_reason == "semantic_duplicate"]
    assert len(dropped) >= 0.8 * len(copy)
    assert dropped.duplicate_of.str.startswith("test/a_original/").mean() >= 0.9
    # keep rule: every semantic duplicate points at a kept frame that comes earlier in corpus order
    order = {sid: i for i, sid in enumerate(frames.sample_id)}
    kept = set(frames.sample_id[frames.kept])
    semantic = frames[frames.drop_reason == "semantic_duplicate"]
    assert all(d in kept and order[d] < order[s] for s, d in zip(semantic.sample_id, semantic.duplicate_of))


def test_larger_epsilon_drops_more(corpus, clip_settings):
    small = publish(corpus, _config(clip_settings, semdedup={"epsilon": 0.0002}))["counts"]
    large = publish(corpus, _config(clip_settings, semdedup={"epsilon": 0.003}))["counts"]
    assert large["dropped"]["semantic_duplicate"] > small["dropped"]["semantic_duplicate"] > 0
    assert large["frames_kept"] < small["frames_kept"]
    off = publish(corpus, _config(clip_settings, semdedup={"enabled": False}))["counts"]
    assert off["dropped"]["semantic_duplicate"] == 0


def test_junk_threshold_drops_are_counted_per_video_and_category(corpus, clip_settings):
    publish(corpus, _config(clip_settings, semdedup={"enabled": False}))
    scores = pq.read_table(corpus.manifest("test"), columns=["junk_blank"])["junk_blank"].to_numpy()
    threshold = float(np.median(scores))
    description = publish(corpus, _config(clip_settings, semdedup={"enabled": False}, junk_drop={"blank": threshold}))
    frames = pq.read_table(corpus.frames_table).to_pandas()
    junk = frames[frames.drop_reason == "junk_blank"]
    assert len(junk) == (scores >= threshold).sum() and (junk.junk_blank >= threshold).all()
    assert description["counts"]["dropped"]["junk_blank"] == len(junk)
    videos = pq.read_table(corpus.videos_table).to_pandas().set_index("video_id")
    for video_id, group in frames.groupby("video_id"):
        assert videos.loc[video_id, "frames_kept"] == group.kept.sum()
        for reason in DROP_REASONS:
            assert videos.loc[video_id, f"dropped_{reason}"] == (group.drop_reason == reason).sum()
    categories = pq.read_table(corpus.categories_table).to_pandas().set_index("category")
    assert set(categories.index) == {"natural", "driving"}
    for category, group in videos.groupby("category"):
        assert categories.loc[category, "dropped_junk_blank"] == group.dropped_junk_blank.sum()
        assert categories.loc[category, "frames_kept"] == group.frames_kept.sum()
        assert categories.loc[category, "videos_ok"] == len(group)


def test_republishing_with_clip_changes_no_byte(corpus, clip_settings):
    cfg = _config(clip_settings)
    description = publish(corpus, cfg)
    files = [
        corpus.dataset_json,
        corpus.videos_table,
        corpus.frames_table,
        corpus.categories_table,
        corpus.manifest("test"),
    ]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert publish(corpus, cfg) == description
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before


def test_dedup_config_takes_the_datasets_settings_and_a_new_epsilon(corpus, clip_settings, tmp_path):
    publish(corpus, load_config(overrides=BASE))  # published with CLIP off
    with pytest.raises(ValueError, match="clip.checkpoint"):
        dedup_config(corpus)  # nothing says which model to use
    clip_only = tmp_path / "clip.yaml"
    clip_only.write_text(json.dumps({"clip": clip_settings, "sample": {"fps": 3}}))  # JSON is YAML
    cfg = dedup_config(corpus, clip_only, epsilon=0.2)
    assert cfg.clip.enabled and cfg.clip.semdedup.epsilon == 0.2 and cfg.clip.checkpoint == clip_settings["checkpoint"]
    assert cfg.sample.fps == 10  # how the shards were made comes from dataset.json, not from the file
    assert cfg.processing_hash() == load_config(overrides=BASE).processing_hash()
