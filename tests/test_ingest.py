from __future__ import annotations

import dataclasses
import json

import pyarrow.parquet as pq

from pipeline.errors import VideoError
from pipeline.ingest import damaged_outputs, ingest_video, is_finished, load_record, write_failure
from pipeline.layout import DataRoot
from pipeline.storage import sha256_file


def test_ingest_writes_shards_frames_and_record(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    record = ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    assert record["status"] == "ok" and record["error"] is None
    assert record["frames_decoded"] == 50 and 0 < record["frames_kept"] <= 50
    assert record["frames_decoded"] == record["frames_kept"] + sum(
        v for k, v in record.items() if k.startswith("dropped_"))
    (shard,) = record["shards"]
    assert shard["path"] == "shards/test/walk/part-00000.parquet"
    assert sha256_file(tmp_path / shard["path"]) == shard["sha256"]
    assert pq.ParquetFile(tmp_path / shard["path"]).metadata.num_rows == record["frames_kept"]
    assert load_record(root, entry) == json.loads(json.dumps(record, default=str))
    assert is_finished(load_record(root, entry), small_config)
    assert not list(tmp_path.rglob(".*tmp-*"))


def test_changed_processing_settings_mean_not_finished(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    changed = small_config.model_copy(update={"sample": small_config.sample.model_copy(update={"fps": 5})})
    assert not is_finished(load_record(root, entry), changed)
    rerun = ingest_video(entry, video_dir / "walk.mp4", root, changed)
    assert rerun["frames_decoded"] == 25


def test_bad_file_becomes_a_failure_record_and_clears_old_output(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    root.embeddings("test", "walk").parent.mkdir(parents=True)
    root.embeddings("test", "walk").write_bytes(b"embeddings of the old shards")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    record = ingest_video(entry, garbage, root, small_config)
    assert record["status"] == "unreadable_video" and "garbage.mp4" in record["error"]
    assert not root.shard_dir("test", "walk").exists() and not root.embeddings("test", "walk").exists()
    assert record["retryable"] is False
    assert is_finished(record, small_config)  # a permanent failure is not retried on rerun


def test_transient_failures_are_retried_on_rerun(entry, small_config, tmp_path):
    record = write_failure(entry, DataRoot(tmp_path), small_config,
                           VideoError("download_failed", "HTTP Error 503", transient=True))
    assert not is_finished(record, small_config)
    no_retry = small_config.model_copy(update={"run": small_config.run.model_copy(update={"retry_failed": False})})
    assert is_finished(record, no_retry)


def test_too_short_for_catalog_trims(video_dir, entry, small_config, tmp_path):
    trimmed = dataclasses.replace(entry, trim_start_s=4.0, trim_end_s=3.0)
    record = ingest_video(trimmed, video_dir / "walk.mp4", DataRoot(tmp_path), small_config)
    assert record["status"] == "too_short" and "6.0s" in record["error"]


def test_damaged_outputs_names_changed_truncated_and_missing_files(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    record = ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    assert damaged_outputs(root, record, small_config) == []
    shard = tmp_path / record["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    (problem,) = damaged_outputs(root, record, small_config)
    assert record["shards"][0]["path"] in problem and "sha256" in problem
    size_only = small_config.model_copy(update={"run": small_config.run.model_copy(update={"resume_check": "size"})})
    assert damaged_outputs(root, record, size_only) == []  # a stat cannot see a flipped byte ...
    shard.write_bytes(bytes(data[:-10]))
    assert "bytes" in damaged_outputs(root, record, size_only)[0]  # ... but sees a truncated file
    (tmp_path / record["frame_parts"][0]["path"]).unlink()
    assert any("missing" in p for p in damaged_outputs(root, record, size_only))
