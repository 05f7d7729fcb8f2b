"""The Prefect-free driver: the same per-video function as the flow, a local pool, then publish."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from pipeline.config import with_overrides
from pipeline.driver import curate_catalog, curate_entries
from pipeline.errors import DiskFull
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry, write_catalog
from pipeline.synthetic.demo import demo_catalog, demo_digest
from pipeline.video.record import is_finished, load_record


def _entries(http_root: str) -> list[CatalogEntry]:
    return [
        CatalogEntry(video_id="walk", url=f"{http_root}/walk.mp4", dataset="test", category="natural"),
        CatalogEntry(video_id="cut", url=f"{http_root}/cut.mp4", dataset="test", category="natural"),
        CatalogEntry(video_id="missing", url=f"{http_root}/missing.mp4", dataset="test", category="natural"),
    ]


def test_curates_good_videos_records_bad_ones_and_a_rerun_skips_everything(
    http_root, small_config, tmp_path, published_bytes
):
    root = DataRoot(tmp_path / "root")
    cfg = with_overrides(small_config, {"run": {"workers": 2}})
    first = curate_entries(_entries(http_root), root, cfg)
    assert [(v.video_id, v.status, v.skipped) for v in first.videos] == [
        ("walk", "ok", False),
        ("cut", "ok", False),
        ("missing", "download_failed", False),
    ]
    assert "404" in (first.videos[2].error or "")
    manifest = pq.read_table(root.manifest("test"))
    assert manifest.num_rows == first.description["counts"]["samples"]["test"] > 0
    tables = published_bytes(root.root, "manifest", "stats/frames.parquet", "stats/videos.parquet", "dataset.json")
    again = curate_entries(_entries(http_root), root, cfg)
    assert [v.skipped for v in again.videos] == [True, True, True]  # a 404 is permanent: not retried either
    assert published_bytes(root.root, *tables) == tables  # publish rewrote no byte


def test_catalog_problems_become_catalog_errors_in_the_videos_table(http_root, small_config, tmp_path):
    catalog = write_catalog(_entries(http_root)[:1], tmp_path / "catalog.csv")
    with open(catalog, "a", encoding="utf-8") as fh:
        fh.write(f",walk,{http_root}/walk.mp4,test,natural,,mono,,,,,,,,,\n")  # the same id again
    root = DataRoot(tmp_path / "root")
    result = curate_catalog(catalog, root, small_config)
    assert [v.status for v in result.videos] == ["ok"]
    videos = pq.read_table(root.videos_table).to_pylist()
    (problem,) = [row for row in videos if row["status"] == "catalog_error"]
    assert problem["error"].startswith("duplicate_id: catalog.csv: line")


def _foreign_lease(path, age_s: float) -> None:
    import json
    import os
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": "other-host-1-cafe", "since": 0}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_a_video_another_live_run_holds_is_left_to_it(http_root, small_config, tmp_path):
    root = DataRoot(tmp_path / "root")
    walk, cut, _ = _entries(http_root)
    _foreign_lease(root.video_lease("test", "walk"), age_s=1.0)
    result = curate_entries([walk, cut], root, small_config)
    assert [(v.video_id, v.status) for v in result.videos] == [("walk", "busy"), ("cut", "ok")]
    assert load_record(root, "test", "walk") is None and not root.shard_dir("test", "walk").exists()
    # Its holder died: once the lease is stale the next run takes it over and curates the video.
    _foreign_lease(root.video_lease("test", "walk"), age_s=small_config.run.lease_stale_s + 1)
    again = curate_entries([walk, cut], root, small_config)
    assert [(v.video_id, v.status, v.skipped) for v in again.videos] == [("walk", "ok", False), ("cut", "ok", True)]
    assert not root.video_lease("test", "walk").exists()  # released after the work


def test_a_run_whose_lease_was_taken_over_writes_nothing(http_root, small_config, tmp_path, monkeypatch):
    import pipeline.video.ingest as ingest

    root = DataRoot(tmp_path / "root")
    walk = _entries(http_root)[0]
    real = ingest.sample_video

    def frozen_then_taken_over(*args, **kwargs):
        counts = real(*args, **kwargs)
        _foreign_lease(root.video_lease("test", "walk"), age_s=0.0)  # another run took over meanwhile
        return counts

    monkeypatch.setattr(ingest, "sample_video", frozen_then_taken_over)
    (outcome,) = curate_entries([walk], root, small_config).videos
    assert outcome.status == "busy"
    assert load_record(root, "test", "walk") is None and not list(root.shard_dir("test", "walk").glob("*.parquet"))


def test_an_internal_error_is_retried_by_the_next_run(http_root, small_config, tmp_path, monkeypatch):
    import pipeline.driver as driver

    root = DataRoot(tmp_path / "root")
    walk = _entries(http_root)[0]
    cfg = with_overrides(small_config, {"run": {"retry_failed": False}})
    real = driver.ingest_video

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(driver, "ingest_video", broken)
    (first,) = curate_entries([walk], root, cfg).videos
    assert first.status == "internal_error"
    record = load_record(root, "test", "walk")
    assert record is not None and record.retryable is True and not is_finished(record, cfg)
    monkeypatch.setattr(driver, "ingest_video", real)
    (second,) = curate_entries([walk], root, cfg).videos
    assert (second.status, second.skipped) == ("ok", False)


@pytest.mark.slow
def test_driver_and_flow_write_the_same_bytes_and_match_the_recorded_demo(
    demo_run, demo_sources, demo_config, tmp_path
):
    """The demo through the driver equals the demo through the Prefect flow, and both equal the digest recorded
    before the redesign of pipeline/ (tests/pipeline/synthetic/demo_digest.json): no output changed.

    When an output change is intended, regenerate that file from a demo run (pipeline.synthetic.demo.demo_digest)
    and say why in the commit."""
    import json
    from pathlib import Path

    root = DataRoot(tmp_path / "driver")
    shutil.copytree(demo_sources, root.root / "demo_sources")
    with demo_catalog(root) as catalog:
        curate_catalog(catalog, root, demo_config)
    driver, flow = demo_digest(root.root), demo_digest(demo_run)
    assert driver == flow
    recorded = json.loads((Path(__file__).parent / "synthetic" / "demo_digest.json").read_text())
    assert {name: digest for name, digest in flow.items() if recorded.get(name) != digest} == {}
    assert flow.keys() == recorded.keys()


# ------------------------------------------------------------------ a full disk


def _problems(caplog) -> tuple[list[str], list[logging.LogRecord]]:
    """The error lines logged, and the records that carry a traceback."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    return errors, tracebacks


@pytest.mark.parametrize("stage", ["video", "info_json", "preview"])
def test_a_full_disk_while_curating_a_video_is_a_retryable_disk_full_and_the_others_are_ok(
    full_disk, monkeypatch, http_root, small_config, tmp_path, caplog, stage
):
    root = DataRoot(tmp_path / "root")
    walk, cut, _ = _entries(http_root)
    # Two attempts, and no retry of transient failures: a full disk is neither retried at once nor final.
    cfg = with_overrides(small_config, {"run": {"retry_failed": False}, "download": {"attempts": 2}})
    full_disk(stage, "cut")
    with caplog.at_level(logging.INFO, logger="depthcurate"):
        result = curate_entries([walk, cut], root, cfg)
    assert [(v.video_id, v.status) for v in result.videos] == [("walk", "ok"), ("cut", "disk_full")]
    record = load_record(root, "test", "cut")
    assert record is not None and record.retryable is True and not is_finished(record, cfg)
    assert "No space left on device" in (record.error or "")
    assert not root.shard_dir("test", "cut").exists() and not root.preview("test", "cut").exists()
    if stage != "preview":  # the download's partial files are gone, and it was not retried within the run
        assert not list(root.videos_dir("test").glob("cut.*"))
        assert not any("retrying" in r.getMessage() for r in caplog.records)
    assert _problems(caplog)[1] == []
    published = {row["video_id"]: row for row in pq.read_table(root.videos_table).to_pylist()}
    assert (published["cut"]["status"], published["cut"]["retryable"]) == ("disk_full", True)
    assert published["walk"]["status"] == "ok"
    # Space again: the next run does the video, and only that one.
    monkeypatch.undo()
    again = curate_entries([walk, cut], root, cfg)
    assert [(v.video_id, v.status, v.skipped) for v in again.videos] == [("walk", "ok", True), ("cut", "ok", False)]


def test_no_room_even_for_the_failure_record_is_one_log_line_and_the_run_goes_on(
    full_disk, http_root, small_config, tmp_path, caplog
):
    root = DataRoot(tmp_path / "root")
    walk, cut, _ = _entries(http_root)
    curate_entries([walk, cut], root, small_config)  # cut: an ok record and its shards, from an earlier run
    changed = with_overrides(small_config, {"sample": {"fps": 5}})  # so the next run redoes both videos
    full_disk("record", "cut")  # its ok record cannot be written, nor then its disk_full record
    with caplog.at_level(logging.INFO, logger="depthcurate"):
        result = curate_entries([walk, cut], root, changed)
    assert [(v.video_id, v.status) for v in result.videos] == [("walk", "ok"), ("cut", "disk_full")]
    # No record at all (the earlier one must not outlive the shards removed with it): the next run redoes it.
    assert load_record(root, "test", "cut") is None and not root.shard_dir("test", "cut").exists()
    errors, tracebacks = _problems(caplog)
    assert tracebacks == []
    assert len(errors) == 1, errors
    assert errors[0].startswith("cut: disk_full, not recorded: no space on ") and " free)" in errors[0]
    published = pq.read_table(root.videos_table).to_pylist()
    assert [(row["video_id"], row["status"]) for row in published] == [("walk", "ok")]


def test_a_full_disk_in_publish_is_one_clear_error_and_the_published_tables_stay(
    full_disk, http_root, small_config, tmp_path, caplog, published_bytes
):
    root = DataRoot(tmp_path / "root")
    walk, cut, _ = _entries(http_root)
    curate_entries([walk], root, small_config)
    published = published_bytes(root.root, "manifest", "stats/frames.parquet", "stats/videos.parquet", "dataset.json")
    full_disk("publish", "videos")
    with caplog.at_level(logging.INFO, logger="depthcurate"), pytest.raises(DiskFull) as caught:
        curate_entries([walk, cut], root, small_config)
    message = str(caught.value)
    assert message.startswith(f"publish ran out of space on {root.name} (") and " free)" in message
    assert "\n" not in message and caught.value.__cause__ is None  # one line; the CLI prints it as it is
    errors, tracebacks = _problems(caplog)
    assert errors == [message] and tracebacks == []
    # What was published stays as it was (cut's own new parts may be in place already: unlisted until a rerun).
    assert published_bytes(root.root, *published) == published
    record = load_record(root, "test", "cut")
    assert record is not None and record.ok  # kept: once there is space, a rerun only publishes


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 4 MB tmpfs (needs root, or a user namespace's privileges); skipped where it cannot be mounted."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command here to make a 4 MB tmpfs; the injected ENOSPC tests cover the same paths")
    if done.returncode != 0:
        reason = done.stderr.strip() or f"exit code {done.returncode}"
        pytest.skip(f"cannot mount a 4 MB tmpfs here (uid {os.geteuid()}: {reason}); injected ENOSPC tests cover it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_data_root_on_a_real_full_disk_finishes_with_every_video_recorded_or_named(
    tiny_filesystem, http_root, small_config, caplog
):
    root = DataRoot(tiny_filesystem)
    cfg = with_overrides(small_config, {"run": {"workers": 2}})
    # ~0.5 MB each (the download, its shard, frame stats, preview): twelve do not fit in 4 MB.
    entries = [
        CatalogEntry(video_id=f"v{i:02d}", url=f"{http_root}/walk.mp4", dataset="test", category="natural")
        for i in range(12)
    ]
    with caplog.at_level(logging.INFO, logger="depthcurate"):
        try:
            curate_entries(entries, root, cfg)
        except DiskFull as exc:  # publish found no room either: the one error, on one line
            assert "\n" not in str(exc) and root.name in str(exc)
    errors, tracebacks = _problems(caplog)
    assert tracebacks == []
    statuses = {}
    for entry in entries:
        record = load_record(root, entry.dataset, entry.video_id)
        if record is None:  # not even its record fitted: one line says so
            assert len([line for line in errors if line.startswith(f"{entry.video_id}: ")]) == 1, errors
            statuses[entry.video_id] = "unrecorded"
        else:
            statuses[entry.video_id] = record.status
            assert record.ok or (record.status == "disk_full" and record.retryable), record
    assert "ok" in statuses.values() and set(statuses.values()) - {"ok"}, statuses  # it did run out of space
    # Free the space the downloads took (finished videos never read them again) and run the finished videos
    # again: nothing is redone, and publish fits now, listing the disk_full videos too.
    shutil.rmtree(root.videos_dir("test"))
    again = curate_entries([e for e in entries if statuses[e.video_id] == "ok"], root, cfg)
    assert all(video.skipped for video in again.videos)
    published = {row["video_id"]: row["status"] for row in pq.read_table(root.videos_table).to_pylist()}
    assert published == {video_id: status for video_id, status in statuses.items() if status != "unrecorded"}
