from __future__ import annotations

import dataclasses
import json
import subprocess

import pyarrow.parquet as pq
import pytest

from pipeline.corpus.publish import previous_catalog_problems, publish
from pipeline.io.data_root import DataRoot
from pipeline.schema import DROP_REASONS
from pipeline.sources.catalog import CatalogProblem
from pipeline.video.ingest import ingest_video

PROBLEMS = [CatalogProblem(line=7, video_id="dup", reason="duplicate_id", message="line 7: video_id 'dup' ...")]


@pytest.fixture
def published(video_dir, entry, small_config, tmp_path):
    """Three ingested videos: an original, a smaller re-encode of it, and an unrelated one."""
    copy = tmp_path / "copy.mp4"
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
    root = DataRoot(tmp_path / "root")
    for video_id, path in [
        ("a_original", video_dir / "walk.mp4"),
        ("b_copy", copy),
        ("c_other", video_dir / "walk.mkv"),
    ]:
        ingest_video(dataclasses.replace(entry, video_id=video_id), path, root, small_config)
    return root, publish(root, small_config, PROBLEMS)


def test_reuploaded_footage_ends_up_once(published):
    root, _ = published
    frames = pq.read_table(root.frames_table).to_pandas()
    copy = frames[frames.video_id == "b_copy"]
    original_kept = set(frames[(frames.video_id == "a_original") & frames.kept].sample_id)
    crossed = copy[copy.drop_reason == "duplicate_cross_video"]
    assert len(crossed) >= 0.9 * len(original_kept)
    assert set(crossed.duplicate_of) <= original_kept  # the earlier video keeps its frames
    other = frames[frames.video_id == "c_other"]
    assert (other.drop_reason != "duplicate_cross_video").all()


def test_manifest_points_at_the_right_shard_rows(published):
    root, description = published
    manifest = pq.read_table(root.manifest("test")).to_pylist()
    frames = pq.read_table(root.frames_table).to_pandas()
    assert len(manifest) == frames.kept.sum() == description["counts"]["samples"]["test"]
    assert "image" not in manifest[0]
    for row in manifest[:: max(1, len(manifest) // 10)]:
        shard = pq.read_table(root.root / row["shard"], columns=["sample_id", "frame_index"])
        assert shard["sample_id"][row["row"]].as_py() == row["sample_id"]
    clip_rows = [(r["video_id"], r["clip_id"], r["frame_index"]) for r in manifest]
    assert clip_rows == sorted(clip_rows)  # clips stored in order, ready for support-frame windows


def test_stats_tables_agree(published):
    root, description = published
    videos = pq.read_table(root.videos_table).to_pandas()
    frames = pq.read_table(root.frames_table).to_pandas()
    ok = videos[videos.status == "ok"].set_index("video_id")
    for video_id, group in frames.groupby("video_id"):
        assert ok.loc[video_id, "frames_decoded"] == len(group)
        assert ok.loc[video_id, "frames_kept"] == group.kept.sum()
        for reason in DROP_REASONS:
            assert ok.loc[video_id, f"dropped_{reason}"] == (group.drop_reason == reason).sum()
    problem = videos[videos.status == "catalog_error"].iloc[0]
    assert problem.catalog_line == 7 and "duplicate_id" in problem.error
    assert description["counts"]["frames_decoded"] == len(frames)
    assert {s["path"] for s in description["shards"]} == {
        f"shards/test/{v}/part-00000.parquet" for v in ("a_original", "b_copy", "c_other")
    }


def test_republishing_changes_no_byte(published, small_config):
    root, description = published
    parts = [*root.frames_table.rglob("*.parquet"), *root.manifest("test").glob("*.parquet")]
    files = [root.dataset_json, root.videos_table, *parts]
    assert len(parts) == 6  # a frames-table part and a manifest part per video
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert publish(root, small_config, PROBLEMS) == description
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    assert json.loads(root.dataset_json.read_text()) == description


def test_republishing_clears_what_a_killed_publish_left(published, small_config):
    from pipeline.io.storage import temp_path_for

    root, description = published
    parts = [root.frames_table_part("test", "b_copy"), root.manifest_part("test", "b_copy")]
    left = [temp_path_for(path) for path in (*parts, root.videos_table, root.dataset_json)]
    for tmp in left:
        tmp.write_bytes(b"half a table")  # as a publish killed mid-write leaves it
    assert publish(root, small_config, previous_catalog_problems(root)) == description
    assert not [tmp for tmp in left if tmp.exists()]


def test_cross_video_dedup_can_be_switched_off(published, small_config):
    root, _ = published
    cfg = small_config.model_copy(update={"dedup": small_config.dedup.model_copy(update={"across_videos": False})})
    description = publish(root, cfg)
    assert description["counts"]["dropped"]["duplicate_cross_video"] == 0


def test_catalog_problems_survive_a_corpus_only_republish(published, small_config):
    root, description = published
    problems = previous_catalog_problems(root)
    assert problems == PROBLEMS
    assert publish(root, small_config, problems) == description  # byte-identical tables, as with the catalog


def test_categories_table_sums_the_video_table(published):
    root, _ = published
    videos = pq.read_table(root.videos_table).to_pandas()
    videos = videos[videos.status != "catalog_error"]
    (row,) = pq.read_table(root.categories_table).to_pylist()
    assert (row["dataset"], row["category"], row["videos"], row["videos_ok"]) == ("test", "natural", 3, 3)
    assert row["frames_kept"] == videos.frames_kept.sum()
    assert row["dropped_duplicate_cross_video"] == videos.dropped_duplicate_cross_video.sum() > 0
    manifest = pq.read_table(root.manifest("test"))
    assert manifest.column("tag_natural").null_count == manifest.num_rows  # CLIP off: the columns stay empty


def test_shards_written_before_newer_columns_existed_still_publish(published, small_config):
    """A shard from an older release lacks columns added since (e.g. the stereo QA ones): publish reads it with
    those columns null instead of failing the whole corpus step."""
    root, description = published
    shard = root.root / description["shards"][0]["path"]
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(["stereo_swapped", "converted_score"]), shard)
    (root.root / "state" / "publish" / "inputs.json").unlink(missing_ok=True)  # publish again, not from cache
    again = publish(root, small_config, PROBLEMS)
    assert again["counts"] == description["counts"]
    manifest = pq.read_table(root.manifest("test"))
    assert manifest.num_rows == description["counts"]["samples"]["test"]
    assert manifest.column("stereo_swapped").null_count == manifest.num_rows
