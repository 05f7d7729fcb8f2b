"""The Prefect-free driver: the same per-video function as the flow, a local pool, then publish."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.config import with_overrides
from pipeline.driver import curate_catalog, curate_entries
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


def test_curates_good_videos_records_bad_ones_and_a_rerun_skips_everything(http_root, small_config, tmp_path):
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
    tables = {path: path.read_bytes() for path in (root.manifest("test"), root.videos_table, root.dataset_json)}
    again = curate_entries(_entries(http_root), root, cfg)
    assert [v.skipped for v in again.videos] == [True, True, True]  # a 404 is permanent: not retried either
    assert {path: path.read_bytes() for path in tables} == tables  # publish rewrote no byte


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
