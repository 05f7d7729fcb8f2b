"""The curate flow on the embedded demo catalog: every bad input named, the rest written, reruns idempotent."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.corpus.verify import verify_dataset
from pipeline.io.data_root import DataRoot
from pipeline.sources.catalog import CatalogEntry


@pytest.fixture(scope="module")
def videos(demo_run):
    table = pq.read_table(DataRoot(demo_run).videos_table).to_pandas()
    return {row.video_id: row for row in table.itertuples() if row.status != "catalog_error"}


@pytest.mark.parametrize(
    "video_id, status, fragment",
    [
        ("missing", "download_failed", "404"),
        ("page", "not_a_video", "Unsupported URL"),
        ("not_a_video", "unreadable_video", "not_a_video.mp4"),
        ("truncated", "unreadable_video", "moov atom not found"),
        ("audio_only", "no_video_stream", "streams: audio"),
        ("tiny", "too_short", "shorter than its catalog trims"),
    ],
)
def test_bad_input_is_a_named_failure(videos, video_id, status, fragment):
    row = videos[video_id]
    assert row.status == status and fragment in row.error
    assert row.frames_kept == 0


def test_zero_byte_file_is_a_named_failure(videos):
    row = videos["empty"]
    assert row.status in {"download_failed", "unreadable_video"} and row.error


def test_duplicate_catalog_id_is_reported_with_its_line(demo_run):
    table = pq.read_table(DataRoot(demo_run).videos_table).to_pandas()
    (problem,) = table[table.status == "catalog_error"].itertuples()
    assert problem.video_id == "tripod" and problem.catalog_line == 16
    assert "duplicate_id" in problem.error and "line 5" in problem.error


def test_good_videos_are_written_next_to_the_failures(demo_run, videos):
    root = DataRoot(demo_run)
    for video_id in ("canyon_cut", "canyon_defects", "tripod"):
        assert videos[video_id].status == "ok" and videos[video_id].frames_kept > 0
        assert (root.shard_dir("demo", video_id) / "part-00000.parquet").is_file()
        assert (root.videos_dir("demo") / f"{video_id}.info.json").is_file()
    assert videos["canyon_cut"].clips >= 3  # the cut, a decimation window, the split boundary
    assert videos["canyon_defects"].dropped_dark > 0 and videos["canyon_defects"].dropped_blurry > 0
    assert videos["tripod"].dropped_static > 0
    assert videos["canyon_cut_reupload"].dropped_duplicate_cross_video > 0
    assert verify_dataset(root) == []


def test_dataset_json_records_config_and_counts(demo_run, demo_config):
    description = json.loads(DataRoot(demo_run).dataset_json.read_text())
    assert description["config_hash"] == demo_config.full_hash()
    assert description["counts"]["videos"]["ok"] == 6
    manifest = pq.read_table(DataRoot(demo_run).manifest("demo"))
    assert description["counts"]["samples"]["demo"] == manifest.num_rows > 0
    assert manifest.column("fx").null_count == 0  # the demo catalog carries the renderer's intrinsics


def _summary_artifacts() -> list:
    """Every curate-summary artifact of the session's server, newest first (other tests' flows add theirs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["curate-summary"])),
            sort=ArtifactSort.CREATED_DESC,
        )


def test_summary_artifact_is_the_published_videos_table(demo_run):
    """Written after publish: a re-upload's frames dropped by corpus dedup are not counted as kept; the catalog
    error is a row; the description is markdown with the published totals."""
    table = pq.read_table(DataRoot(demo_run).videos_table).to_pylist()
    published = [(t["video_id"], t["status"], t["frames_decoded"] or 0, t["frames_kept"] or 0) for t in table]
    matching = [
        artifact
        for artifact in _summary_artifacts()
        if [(r["video_id"], r["status"], r["frames_decoded"], r["frames_kept"]) for r in json.loads(artifact.data)]
        == published
    ]
    assert matching, "no curate-summary artifact has the published table's rows"
    reupload = next(t for t in table if t["video_id"] == "canyon_cut_reupload")
    assert reupload["dropped_duplicate_cross_video"] > 0  # publish dropped some of what ingest kept
    assert "catalog_error" in {t["status"] for t in table}
    kept = sum(t["frames_kept"] or 0 for t in table)
    description = matching[0].description
    assert description.startswith("**15 videos: 6 ok, 9 failed (0 retryable, 1 catalog error)**")
    assert f"{kept} kept" in description and "| catalog_error | 1 | 0 |" in description


def test_rerun_downloads_nothing_decodes_nothing_and_changes_no_byte(demo_run):
    import hashlib

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.curate import curate

    def snapshot():
        return {
            p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in demo_run.rglob("*")
            if p.is_file() and "demo_sources" not in p.parts
        }

    before = snapshot()
    state = curate(demo=True, data_root=str(demo_run), return_state=True)
    result = state.result()
    # Skipped: the task returned before its download task and before ingest (probe, ffmpeg decode) ran.
    assert all(v["skipped"] for v in result["videos"])
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    names = sorted(r.name for r in runs)
    assert names and not [n for n in names if n.startswith(("download-", "embed-"))]
    assert len([n for n in names if n.startswith("curate-")]) == len(result["videos"])
    assert snapshot() == before


def test_stereo_videos_yield_checked_disparity(demo_run, videos):
    import cv2
    import numpy as np

    from pipeline.media.codecs import decode_disparity_png, decode_mask_png

    assert videos["canyon_sbs"].status == "ok" and videos["canyon_sbs"].detected_layout == "sbs_full"
    assert videos["canyon_half_sbs"].detected_layout == "sbs_half"  # declared auto
    root = DataRoot(demo_run)
    rows = pq.read_table(root.shard_dir("demo", "canyon_sbs") / "part-00000.parquet").to_pylist()
    assert rows and all(r["layout"] == "sbs_full" for r in rows)
    row = rows[0]
    disparity = decode_disparity_png(row["disparity"], row["disp_scale"], row["disp_offset"])
    valid, sky = decode_mask_png(row["valid_mask"]), decode_mask_png(row["sky_mask"])
    image = cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_COLOR)
    assert disparity.shape == valid.shape == sky.shape == image.shape[:2] == (192, 320)
    assert row["lr_pass_fraction"] >= 0.7 and row["disp_range_px"] >= 10
    # convergence shift of 4 px: the far scene sits behind the screen (negative), the near ground in front
    assert disparity[valid & ~sky].min() < 0 < disparity[valid & ~sky].max()
    assert sky.any() and np.allclose(disparity[sky], disparity.min(), atol=0.05)
    assert root.preview("demo", "canyon_sbs").is_file()


def test_mono_declared_stereo_is_rejected(videos):
    row = videos["mono_as_stereo"]
    assert row.status == "not_stereo" and "sbs_full" in row.error


def test_a_damaged_shard_found_at_resume_is_rebuilt(small_flow, http_root):
    """verify names the changed shard; the rerun redoes that video only (size + sha256 of its own files)."""
    entries = [
        CatalogEntry(video_id=vid, url=f"{http_root}/{name}", dataset="test", category="natural")
        for vid, name in (("walk", "walk.mp4"), ("other", "walk.mkv"), ("cut", "cut.mp4"))
    ]
    path, _ = small_flow(entries)
    root = DataRoot(path)
    shard = root.shard_dir("test", "walk") / "part-00000.parquet"
    original = shard.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    shard.write_bytes(bytes(flipped))
    root.video_frames_dir("test", "other").joinpath("frames-00000.parquet").unlink()
    untouched = {p: p.stat().st_mtime_ns for p in root.shard_dir("test", "cut").iterdir()}
    shard_problem, part_problem = verify_dataset(root)  # both named: verify covers the frame parts too
    assert "shards/test/walk/part-00000.parquet" in shard_problem
    assert "stats/frames/test/other/frames-00000.parquet: missing" in part_problem
    _, result = small_flow(entries)
    assert {v["video_id"]: v["skipped"] for v in result["videos"]} == {"walk": False, "other": False, "cut": True}
    assert shard.read_bytes() == original  # deterministic: rebuilt byte for byte
    assert {p: p.stat().st_mtime_ns for p in root.shard_dir("test", "cut").iterdir()} == untouched
    assert verify_dataset(root) == []


def test_credentials_never_reach_the_data_logs_or_artifacts(small_flow, http_root, tmp_path, caplog):
    """A password and a token in catalog URLs, and a cookies file: none of them is written anywhere."""
    secrets = ("PASSWORDSECRET", "TOKENSECRET", "COOKIESECRET")
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t4102444800\tsession\tCOOKIESECRET\n")
    with_password = http_root.replace("http://", "http://alice:PASSWORDSECRET@")
    entries = [
        CatalogEntry(
            video_id="walk", url=f"{with_password}/walk.mp4?token=TOKENSECRET", dataset="test", category="natural"
        ),
        CatalogEntry(
            video_id="gone", url=f"{with_password}/gone.mp4?token=TOKENSECRET", dataset="test", category="natural"
        ),
    ]
    bad_url = "ftp://alice:PASSWORDSECRET@127.0.0.1/x.mp4?token=TOKENSECRET"  # refused by the catalog, quoted
    with caplog.at_level("DEBUG"):
        path, result = small_flow(
            entries,
            {"download": {"cookies_file": str(cookies)}},
            extra_rows=f",bad,{bad_url},test,natural,,,,,,,,,,,\n",
        )
    assert [v["status"] for v in result["videos"]] == ["ok", "download_failed"]
    root = DataRoot(path)
    table = pq.read_table(root.videos_table).to_pylist()
    assert {r["video_id"]: r["status"] for r in table} == {
        "walk": "ok",
        "gone": "download_failed",
        "bad": "catalog_error",
    }
    assert "***@127.0.0.1" in next(r["url"] for r in table if r["video_id"] == "walk")  # still says where
    leaks = [p for p in path.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)]
    assert leaks == []  # records, stats tables, manifest, dataset.json, .info.json
    summary = _summary_artifacts()[0]  # this run's
    assert "gone" in summary.data and not any(s in summary.data + str(summary.description) for s in secrets)
    assert "walk" in caplog.text and not any(s in caplog.text for s in secrets)


def test_refused_and_stalled_downloads_are_named_and_the_rest_is_written(small_flow, http_root, video_dir, tmp_path):
    import socket
    import subprocess

    odd = tmp_path / "odd.mp4"  # 121x67, a file:// URL; other footage than walk.mp4, so dedup keeps both
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(video_dir / "walk.mkv"),
            "-vf",
            "scale=121:67",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv444p",
            str(odd),
        ],
        check=True,
    )
    with socket.socket() as silent, socket.socket() as gone:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections queue up and are never answered
        gone.bind(("127.0.0.1", 0))
        refused_port = gone.getsockname()[1]
        gone.close()
        entries = [
            CatalogEntry(video_id=vid, url=url, dataset="test", category="natural")
            for vid, url in (
                ("walk", f"{http_root}/walk.mp4"),
                ("refused", f"http://127.0.0.1:{refused_port}/v.mp4"),
                ("stalled", f"http://127.0.0.1:{silent.getsockname()[1]}/v.mp4"),
                ("odd", odd.as_uri()),
            )
        ]
        path, result = small_flow(entries, {"download": {"socket_timeout_s": 0.3, "local_roots": [str(tmp_path)]}})
    assert {v["video_id"]: v["status"] for v in result["videos"]} == {
        "walk": "ok",
        "refused": "download_failed",
        "stalled": "download_failed",
        "odd": "ok",
    }
    table = {r["video_id"]: r for r in pq.read_table(DataRoot(path).videos_table).to_pylist()}
    assert "refused" in table["refused"]["error"].lower() and "timed out" in table["stalled"]["error"].lower()
    assert (table["odd"]["width"], table["odd"]["height"]) == (121, 67)
    manifest = pq.read_table(DataRoot(path).manifest("test"), columns=["video_id"])["video_id"].to_pylist()
    assert set(manifest) == {"walk", "odd"} and verify_dataset(DataRoot(path)) == []


def test_intrinsics_run_per_video_in_the_flow_and_a_rerun_skips_them(small_flow, http_root):
    """intrinsics.enabled: a camera file per ok video, the cameras table and counts; a rerun keeps the files."""
    from pipeline.corpus.intrinsics import REASONS

    entries = [CatalogEntry(video_id="walk", url=f"{http_root}/walk.mp4", dataset="test", category="natural")]
    overrides = {"intrinsics": {"enabled": True, "frames": 20, "attempts": 1}}
    path, result = small_flow(entries, overrides)
    root = DataRoot(path)
    camera_file = root.camera("test", "walk")
    camera = json.loads(camera_file.read_bytes())
    assert camera["status"] in ("ok", *REASONS)  # this small, slow clip may or may not register: named either way
    (row,) = pq.read_table(root.cameras_table).to_pylist()
    assert (row["video_id"], row["status"], row["fx"]) == ("walk", camera["status"], camera["fx"])
    assert result["counts"]["cameras"] == {camera["status"]: 1}
    sources = set(pq.read_table(root.manifest("test"))["intrinsics_source"].to_pylist())
    assert sources == ({"colmap"} if camera["status"] == "ok" else {None})
    before = camera_file.stat().st_mtime_ns
    _, again = small_flow(entries, overrides)
    assert again["videos"][0]["skipped"] and camera_file.stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_failed_video_fails_its_task_run_and_the_flow_completes_with_the_count(
    prefect_harness, small_config, http_root, tmp_path, monkeypatch
):
    """One internal_error, one 404, one catalog error: their task runs end Failed (the UI shows them), the other
    video and publish still run, the flow run ends Completed saying how many failed, and the summary artifact is
    the published videos table, catalog error included, with a markdown description."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    import pipeline.driver
    from flows.curate import curate
    from pipeline.sources.catalog import write_catalog

    ingest = pipeline.driver.ingest_video

    def failing(entry, *args, **kwargs):
        if entry.video_id == "broken":
            raise RuntimeError("a bug in ingest")
        return ingest(entry, *args, **kwargs)

    monkeypatch.setattr(pipeline.driver, "ingest_video", failing)
    entries = [
        CatalogEntry(video_id=vid, url=f"{http_root}/{name}", dataset="test", category="natural")
        for vid, name in (("walk", "walk.mp4"), ("broken", "walk.mkv"), ("gone", "gone.mp4"))
    ]
    catalog = write_catalog(entries, tmp_path / "catalog.csv")
    with open(catalog, "a", encoding="utf-8") as fh:
        fh.write(",bad_row,ftp://127.0.0.1/x.mp4,test,natural,,,,,,,,,,,\n")
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small_config.model_dump(mode="json")))
    root = DataRoot(tmp_path / "root")

    state = curate(catalog=str(catalog), data_root=str(root.root), config=str(config), return_state=True)
    message = "1 ok, 3 failed (1 retryable, 1 catalog error)"
    assert state.is_completed() and state.message == message
    result = state.result()
    assert result["outcome"] == message
    assert [v["status"] for v in result["videos"]] == ["ok", "internal_error", "download_failed"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    tasks = {r.name: r.state for r in runs if r.name.startswith("curate-")}
    assert {name: s.type.value for name, s in tasks.items()} == {
        "curate-walk": "COMPLETED",
        "curate-broken": "FAILED",
        "curate-gone": "FAILED",
    }
    assert "internal_error: RuntimeError: a bug in ingest (retryable)" in tasks["curate-broken"].message
    assert "download_failed" in tasks["curate-gone"].message and "(permanent)" in tasks["curate-gone"].message
    assert any(r.name.startswith("publish") and r.state.is_completed() for r in runs)
    assert verify_dataset(root) == []

    table = pq.read_table(root.videos_table).to_pylist()
    summary = _summary_artifacts()[0]  # this run's
    rows = json.loads(summary.data)
    columns = ("dataset", "video_id", "status", "error")
    assert [tuple(r[c] for c in columns) for r in rows] == [tuple(t[c] for c in columns) for t in table]
    assert [(r["frames_decoded"], r["frames_kept"]) for r in rows] == [
        (t["frames_decoded"] or 0, t["frames_kept"] or 0) for t in table
    ]
    assert {r["video_id"]: r["retryable"] for r in rows} == {
        "walk": False,
        "broken": True,
        "gone": False,
        "bad_row": False,
    }
    assert summary.description.startswith(f"**4 videos: {message}**")
    assert "| catalog_error | 1 | 0 |" in summary.description and "| internal_error | 1 | 1 |" in summary.description
    assert "{" not in summary.description  # no Python dict repr


@pytest.mark.slow
def test_a_full_disk_fails_one_video_task_and_in_publish_fails_the_flow_with_one_error(
    small_flow, http_root, monkeypatch, published_bytes
):
    """As with the Prefect-free driver (tests/pipeline/test_driver.py): a video that runs out of space is a
    retryable disk_full while the others are written; publish running out of space raises DiskFull, one line."""
    import errno
    import os
    from pathlib import Path

    import pipeline.io.data_root as data_root
    import pipeline.video.previews as previews
    from pipeline.errors import DiskFull

    def no_space_for(name, real):
        def write(path, data, **kwargs):
            if Path(path).name == name:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(path, data, **kwargs)

        return write

    entries = [
        CatalogEntry(video_id=vid, url=f"{http_root}/{vid}.mp4", dataset="test", category="natural")
        for vid in ("walk", "cut")
    ]
    monkeypatch.setattr(previews, "write_bytes_atomic", no_space_for("cut.jpg", previews.write_bytes_atomic))
    path, result = small_flow(entries)
    assert [(v["video_id"], v["status"]) for v in result["videos"]] == [("walk", "ok"), ("cut", "disk_full")]
    assert result["outcome"] == "1 ok, 1 failed (1 retryable)"
    root = DataRoot(path)
    published = published_bytes(root.root, "stats/videos.parquet", "manifest", "dataset.json")

    monkeypatch.undo()  # space for the preview again; none for the videos table
    monkeypatch.setattr(data_root, "write_bytes_atomic", no_space_for("videos.parquet", data_root.write_bytes_atomic))
    with pytest.raises(DiskFull) as caught:
        small_flow(entries)
    assert str(caught.value).startswith(f"publish ran out of space on {root.name} (") and "\n" not in str(caught.value)
    assert published_bytes(root.root, *published) == published


def test_the_dataset_report_is_written_after_publish_and_linked(demo_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    page = (demo_run / "report.html").read_text()
    kept = sum(v["frames_kept"] or 0 for v in pq.read_table(DataRoot(demo_run).videos_table).to_pylist())
    assert f'data-count="frames-kept">{kept}<' in page and "dropped at publish:" in page  # the re-upload's frames
    with get_client(sync_client=True) as client:
        links = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dataset-report"])))
    assert any(f"({(demo_run / 'report.html').as_uri()})" in a.data for a in links)  # a markdown link to it
