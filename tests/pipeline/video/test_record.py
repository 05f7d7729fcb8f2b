"""The video record: its JSON on disk, whether a rerun has work to do, and whether its files still match it."""

from __future__ import annotations

import json

from pipeline.errors import VideoError
from pipeline.io.data_root import DataRoot
from pipeline.schema import DROP_REASONS
from pipeline.video.ingest import ingest_video
from pipeline.video.record import (
    VideoRecord,
    damaged_outputs,
    is_finished,
    load_record,
    load_records,
    write_failure,
)


def test_json_on_disk_is_flat_and_reads_back_to_the_same_record(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    record = ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    on_disk = root.video_record("test", "walk").read_bytes()
    flat = json.loads(on_disk)
    # The keys the stats tables and earlier releases read: counts per reason, probe fields, trims, parts.
    assert {f"dropped_{reason}" for reason in DROP_REASONS} <= flat.keys()
    assert flat["codec"] == "h264" and flat["trim_start_s"] >= 0 and flat["shards"][0]["sha256"]
    assert "retryable" not in flat and "dropped" not in flat and "info" not in flat
    again = VideoRecord.from_flat(flat)
    assert again == record == load_record(root, "test", "walk") and again.to_json() == on_disk
    assert load_records(root) == [record]


def test_a_failure_before_the_probe_has_no_probe_fields_or_trims(entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    record = write_failure(entry, root, small_config, VideoError("download_failed", "HTTP Error 404"))
    flat = json.loads(root.video_record("test", "walk").read_bytes())
    assert flat["retryable"] is False and "codec" not in flat and "trim_start_s" not in flat
    assert record.info is None and record.frames_decoded == 0 and not record.ok


def test_no_record_and_a_torn_record_both_read_as_not_started(entry, tmp_path):
    root = DataRoot(tmp_path)
    assert load_record(root, "test", "walk") is None
    path = root.video_record("test", "walk")
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"dataset": "te')
    assert load_record(root, "test", "walk") is None


def test_transient_failures_are_retried_on_rerun(entry, small_config, tmp_path):
    record = write_failure(
        entry, DataRoot(tmp_path), small_config, VideoError("download_failed", "HTTP Error 503", transient=True)
    )
    assert not is_finished(record, small_config)
    no_retry = small_config.model_copy(update={"run": small_config.run.model_copy(update={"retry_failed": False})})
    assert is_finished(record, no_retry)


def test_damaged_outputs_names_changed_truncated_and_missing_files(video_dir, entry, small_config, tmp_path):
    root = DataRoot(tmp_path)
    record = ingest_video(entry, video_dir / "walk.mp4", root, small_config)
    assert damaged_outputs(root, record, small_config) == []
    shard = tmp_path / record.shards[0].path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    (problem,) = damaged_outputs(root, record, small_config)
    assert record.shards[0].path in problem and "sha256" in problem
    size_only = small_config.model_copy(update={"run": small_config.run.model_copy(update={"resume_check": "size"})})
    assert damaged_outputs(root, record, size_only) == []  # a stat cannot see a flipped byte ...
    shard.write_bytes(bytes(data[:-10]))
    assert "bytes" in damaged_outputs(root, record, size_only)[0]  # ... but sees a truncated file
    (tmp_path / record.frame_parts[0].path).unlink()
    assert any("missing" in p for p in damaged_outputs(root, record, size_only))


def test_stored_messages_name_files_relative_to_the_data_root(entry, small_config, tmp_path):
    root = DataRoot(tmp_path / "root")
    garbage = root.videos_dir(entry.dataset) / f"{entry.video_id}.mp4"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"\x00" * 1000)  # ffprobe's error names the file by its absolute path
    record = ingest_video(entry, garbage, root, small_config)
    stored = json.loads(root.video_record(entry.dataset, entry.video_id).read_text())["error"]
    assert record.status == "unreadable_video" and stored == record.error
    assert f"videos/{entry.dataset}/{entry.video_id}.mp4:" in stored and str(tmp_path) not in stored, stored
