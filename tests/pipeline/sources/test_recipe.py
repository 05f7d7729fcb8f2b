"""Tests for pipeline.sources.recipe: export a dataset's recipe, rebuild it, and name the frames that changed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.corpus.report import recipe_report
from pipeline.driver import curate_catalog
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry, write_catalog
from pipeline.sources.recipe import RECIPE_FORMAT, export_recipe, load_recipe, rebuild_inputs, write_recipe


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def made(video_dir, tmp_path_factory):
    """Two local videos curated into a dataset, and its recipe."""
    work = tmp_path_factory.mktemp("recipe")
    sources = work / "sources"
    sources.mkdir()
    for name in ("walk.mp4", "cut.mp4"):
        shutil.copy(video_dir / name, sources / name)
    catalog = write_catalog(
        [
            CatalogEntry(video_id=Path(name).stem, url=str(sources / name), dataset="test", category="natural")
            for name in ("walk.mp4", "cut.mp4")
        ],
        work / "catalog.csv",
    )
    cfg = load_config(
        overrides={
            "sample": {"fps": 10, "max_height": 96, "trim": {"head_s": 0.5, "tail_s": 0.5}, "decimate": None},
            "split": {"train_fraction": 0.8, "gap_frames": 2},
            "download": {"local_roots": [str(sources)], "attempts": 1},
        }
    )
    original = DataRoot(work / "original")
    curate_catalog(catalog, original, cfg)
    recipe_path = write_recipe(export_recipe(original, catalog, "test"), work / "recipe.json.gz")
    return work, sources, catalog, original, recipe_path


def _rebuild(recipe_path: Path, root: DataRoot, workdir: Path) -> None:
    catalog, config = rebuild_inputs(recipe_path, workdir)
    curate_catalog(catalog, root, load_config(overrides=config))


def _kept(root: DataRoot) -> dict[str, str]:
    """sample_id -> decoded digest of the kept frames."""
    frames = pq.read_table(root.frames_table, columns=["sample_id", "kept", "decoded_sha256"]).to_pylist()
    return {row["sample_id"]: row["decoded_sha256"] for row in frames if row["kept"]}


def test_recipe_lists_every_kept_frame_with_its_hashes(made):
    _, _, _, original, recipe_path = made
    recipe = load_recipe(recipe_path)
    assert recipe.format == RECIPE_FORMAT and recipe.config["sample"]["fps"] == 10
    assert sorted(recipe.videos) == ["test/cut", "test/walk"]
    kept = _kept(original)
    assert sum(len(v.frame_index) for v in recipe.videos.values()) == len(kept) > 20
    for name, video in recipe.videos.items():
        assert len(video.frame_index) == len(video.phash) == len(video.decoded_sha256)
        for index, digest in zip(video.frame_index, video.decoded_sha256):
            assert kept[f"{name}/{index:08d}"] == digest and len(digest) == 32
    # The rows carry the trims as applied, so a rebuild plans the same window.
    rows = {row["video_id"]: row for row in recipe.catalog}
    assert rows["walk"]["trim_start_s"] == pytest.approx(0.5) and "line" not in rows["walk"]


def test_rebuild_from_the_same_sources_gives_the_same_frames(made, tmp_path):
    _, _, _, original, recipe_path = made
    rebuilt = DataRoot(tmp_path / "rebuilt")
    _rebuild(recipe_path, rebuilt, tmp_path)
    assert _kept(rebuilt) == _kept(original)
    report = recipe_report(rebuilt)
    assert not report.changed and "every frame of the recipe was rebuilt" in report.text
    videos = {v["video_id"]: v for v in pq.read_table(rebuilt.videos_table).to_pylist()}
    for video_id, video in videos.items():
        listed = len(load_recipe(recipe_path).videos[f"test/{video_id}"].frame_index)
        assert (video["recipe_matched"], video["recipe_changed"], video["recipe_missing"]) == (listed, 0, 0)


def test_a_reencoded_or_shortened_source_is_reported_not_replaced(made, tmp_path):
    work, sources, _, original, recipe_path = made
    changed_sources = tmp_path / "sources"
    changed_sources.mkdir()
    # walk: re-encoded (another upload of the same video); cut: the last 40% gone.
    _ffmpeg("-i", str(sources / "walk.mp4"), "-c:v", "libx264", "-crf", "30", str(changed_sources / "walk.mp4"))
    _ffmpeg("-i", str(sources / "cut.mp4"), "-t", "3.6", "-c", "copy", str(changed_sources / "cut.mp4"))
    recipe = load_recipe(recipe_path)
    rows = [{**row, "url": row["url"].replace(str(sources), str(changed_sources))} for row in recipe.catalog]
    download = {**recipe.config["download"], "local_roots": [str(changed_sources)]}
    moved = recipe.model_copy(update={"catalog": rows, "config": {**recipe.config, "download": download}})
    moved_path = write_recipe(moved, tmp_path / "moved.json")
    rebuilt = DataRoot(tmp_path / "rebuilt")
    _rebuild(moved_path, rebuilt, tmp_path)
    report = recipe_report(rebuilt)
    assert report.changed and "test/walk" in report.text
    videos = {v["video_id"]: v for v in pq.read_table(rebuilt.videos_table).to_pylist()}
    walk, cut = videos["walk"], videos["cut"]
    assert walk["recipe_changed"] == len(recipe.videos["test/walk"].frame_index) and walk["frames_kept"] == 0
    assert cut["recipe_missing"] > 0 and cut["recipe_matched"] > 0
    # Nothing outside the recipe was kept in its place.
    wanted = {f"{name}/{i:08d}" for name, v in recipe.videos.items() for i in v.frame_index}
    assert set(_kept(rebuilt)) <= wanted
