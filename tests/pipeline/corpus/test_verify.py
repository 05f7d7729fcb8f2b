from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpus.description import read_description
from pipeline.corpus.publish import publish
from pipeline.corpus.verify import verify_dataset
from pipeline.io.data_root import DataRoot
from pipeline.schema import SchemaVersionError
from pipeline.video.ingest import ingest_video


@pytest.fixture
def root(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    publish(root, small_config)
    return root


def test_a_fresh_dataset_verifies(root):
    assert verify_dataset(root) == []


def test_a_changed_shard_is_named(root):
    shard = root.root / read_description(root)["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (problem,) = verify_dataset(root)
    assert "shards/test/walk/part-00000.parquet" in problem and "sha256" in problem


def test_a_missing_table_is_named(root):
    root.frames_table_part("test", "walk").unlink()
    assert verify_dataset(root) == ["stats/frames.parquet/test/walk.parquet: missing"]


def test_a_part_dataset_json_does_not_list_is_named(root):
    stray = root.manifest_part("test", "zz")
    stray.write_bytes(root.manifest_part("test", "walk").read_bytes())
    assert verify_dataset(root) == [
        "manifest/test.parquet/zz.parquet: not in dataset.json (a publish did not finish: rerun it)"
    ]


def test_unknown_schema_version_is_a_clear_error(root):
    description = json.loads(root.dataset_json.read_text())
    description["schema_version"] = "9.0"
    root.dataset_json.write_text(json.dumps(description))
    with pytest.raises(SchemaVersionError, match="9.0"):
        verify_dataset(root)


def test_a_shard_with_a_foreign_schema_is_named(root):
    description = json.loads(root.dataset_json.read_text())
    shard = root.root / description["shards"][0]["path"]
    pq.write_table(pa.table({"x": [1]}), shard)
    from pipeline.io.storage import sha256_file

    description["shards"][0]["sha256"] = sha256_file(shard)
    root.dataset_json.write_text(json.dumps(description))
    (problem,) = verify_dataset(root)
    assert "schema version none" in problem


def _damage(root: DataRoot, how: str) -> str:
    """Damage one per-video file the way the issue found verify blind to; returns its path."""
    record_path = root.video_record("test", "walk")
    if how == "deleted_frame_part":
        part = next(root.video_frames_dir("test", "walk").glob("*.parquet"))
        part.unlink()
        return root.relative(part)
    if how == "edited_record":
        flat = json.loads(record_path.read_text())
        flat["frames_kept"] = 999
        record_path.write_text(json.dumps(flat, indent=1, sort_keys=True))
        return root.relative(record_path)
    preview = root.preview("test", "walk")
    preview.unlink()
    return root.relative(preview)


@pytest.mark.parametrize("how", ["deleted_frame_part", "edited_record", "deleted_preview"])
def test_every_per_video_file_is_verified_and_a_rerun_repairs_it(root, http_root, entry, small_config, how):
    import dataclasses

    from pipeline.driver import curate_video

    listed = {f["kind"] for f in read_description(root)["files"]}
    assert listed == {"record", "frame_part", "preview"}
    damaged = _damage(root, how)
    problems = verify_dataset(root)
    assert problems and all(damaged in p for p in problems), problems
    if how == "edited_record":
        assert any("999 frames kept, its shards hold" in p for p in problems)
    # A rerun notices the damage, rebuilds the video, and the dataset verifies again.
    outcome = curate_video(dataclasses.replace(entry, url=f"{http_root}/walk.mp4"), root, small_config)
    assert outcome.status == "ok" and not outcome.skipped
    publish(root, small_config)
    assert verify_dataset(root) == []
