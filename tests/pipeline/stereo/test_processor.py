"""The stereo branch end to end on synthetic side-by-side videos: layout, geometry, checks, rejection rules."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import VideoError
from pipeline.io.data_root import DataRoot
from pipeline.io.parquet_writer import PartWriter
from pipeline.media.codecs import decode_confidence_png, decode_disparity_png, decode_mask_png, encode_jpeg
from pipeline.media.probe import probe_video
from pipeline.schema import SHARD_SCHEMA
from pipeline.sources.catalog import CatalogEntry
from pipeline.stereo.optical_flow import DISFlow
from pipeline.stereo.packing import CropBox, ViewGeometry
from pipeline.stereo.processor import StereoProcessor, crop_intrinsics, resolve_stereo_setup
from pipeline.synthetic.renderer import SceneSpec, render_stereo_frames, render_stereo_video
from pipeline.video.ingest import ingest_video
from trainer.augment import Geometry
from trainer.data import ShardReader, _augmented_labels, _decode_labels

VIEW = dict(width=320, height=192, fps=20.0, baseline_m=0.3)


@pytest.fixture(scope="module")
def stereo_videos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stereo")
    spec = SceneSpec(duration_s=6.0, seed=21, **VIEW)
    return {
        "sbs_full": render_stereo_video(spec, directory / "full.mp4", layout="sbs_full", convergence_px=4.0),
        "tab_half": render_stereo_video(spec, directory / "tab.mp4", layout="tab_half", convergence_px=4.0),
        "vertical": render_stereo_video(
            spec, directory / "vertical.mp4", layout="sbs_full", convergence_px=4.0, vertical_px=4.0
        ),
        "flat": render_stereo_video(
            dataclasses.replace(spec, baseline_m=0.0), directory / "flat.mp4", layout="sbs_full"
        ),
    }


@pytest.fixture
def stereo_config():
    return load_config(
        overrides={
            "sample": {"trim": {"head_s": 0.5, "tail_s": 0.5}},
            "split": {"gap_frames": 0},
            "stereo": {"crop": None, "output_size": None, "jump_s": 0.5, "flow": {"batch_size": 3}},
        }
    )


def _entry(layout: str, video_id: str = "movie") -> CatalogEntry:
    return CatalogEntry(
        video_id=video_id, url="http://127.0.0.1/x.mp4", dataset="movies", category="natural", layout=layout
    )


def _setup(video, layout, cfg):
    info = probe_video(video)
    return resolve_stereo_setup(video, _entry(layout), 0.5, info.duration_s - 0.5, info.display_size, cfg.stereo)


def test_declared_and_detected_layouts(stereo_videos, stereo_config):
    assert _setup(stereo_videos["sbs_full"], "sbs_full", stereo_config).layout == "sbs_full"
    setup = _setup(stereo_videos["tab_half"], "auto", stereo_config)
    assert setup.layout == "tab_half"
    assert (setup.geometry.output_size) == (320, 192)  # half views restored to the full aspect ratio


def test_mono_declared_stereo_is_a_named_error(video_dir, stereo_config):
    with pytest.raises(VideoError) as err:
        _setup(video_dir / "walk.mp4", "sbs_full", stereo_config)
    assert err.value.reason == "not_stereo"
    assert _setup(video_dir / "walk.mp4", "auto", stereo_config) is None  # auto: processed as mono


def test_processor_keeps_a_good_pair_and_disparity_matches_ground_truth(stereo_config):
    frame = next(iter(render_stereo_frames(SceneSpec(duration_s=0.1, seed=5, **VIEW), convergence_px=4.0)))
    (outcome,) = StereoProcessor(stereo_config.stereo).process([frame.left], [frame.right])
    assert outcome.reason is None
    columns = outcome.columns
    disparity = decode_disparity_png(columns["disparity"], columns["disp_scale"], columns["disp_offset"])
    valid = decode_mask_png(columns["valid_mask"])
    good = valid & ~frame.sky_mask & ~frame.occluded
    error = np.abs(disparity - frame.disparity)[good]
    assert good.mean() > 0.6 and np.mean(error > 3) < 0.02
    assert disparity[good].min() < 0 < disparity[good].max()  # both signs survive the convergence shift


class _OneCallDIS:
    """DIS behind a backend the processor does not know: it gets the whole batch in one call (RAFT's path)."""

    def __init__(self) -> None:
        self.dis = DISFlow()
        self.calls = 0
        self.opencv_threads: list[int] = []

    def __call__(self, first, second):
        self.calls += 1
        self.opencv_threads.append(cv2.getNumThreads())
        return self.dis(first, second)


def _columns_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a.values(), b.values())
    )


@pytest.mark.parametrize("swapped", [False, True])
def test_pairs_measured_beside_the_next_flows_give_the_one_call_outcomes(stereo_config, swapped):
    # DIS runs pair by pair with each pair's checks, sky and PNGs on worker threads; a batch backend gets one
    # call and the same work after it. The bytes must not depend on which path (or thread timing) made them.
    frames = list(render_stereo_frames(SceneSpec(duration_s=0.2, seed=5, **VIEW)))[:3]  # no convergence shift
    lefts, rights = [f.left for f in frames], [f.right for f in frames]
    if swapped:
        lefts, rights = rights, lefts
    overlapped = StereoProcessor(stereo_config.stereo)
    one_call = StereoProcessor(stereo_config.stereo)
    one_call.flow = backend = _OneCallDIS()
    expected = one_call.process(lefts, rights)
    assert backend.calls == 1
    for outcome, other in zip(overlapped.process(lefts, rights), expected, strict=True):
        assert outcome.reason is None and outcome.columns["stereo_swapped"] is swapped
        assert _columns_equal(outcome.columns, other.columns)
        assert all(np.array_equal(x, y) for x, y in zip(outcome.preview, other.preview, strict=True))


def test_opencv_runs_single_threaded_while_any_processor_does(stereo_config):
    # The processor runs a task per core, so OpenCV's own threads are off until the last overlapping batch ends.
    frames = list(render_stereo_frames(SceneSpec(duration_s=0.1, seed=5, **VIEW)))[:1]
    first, second = StereoProcessor(stereo_config.stereo), StereoProcessor(stereo_config.stereo)
    first.flow, second.flow = _OneCallDIS(), _OneCallDIS()
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        entered, release = threading.Event(), threading.Event()
        original = first.flow.dis

        def slow(a, b):  # holds the first batch open until the second has run
            entered.set()
            release.wait(timeout=60)
            return original(a, b)

        first.flow.dis = slow
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(first.process, [frames[0].left], [frames[0].right])
            assert entered.wait(timeout=60)
            second.process([frames[0].left], [frames[0].right])
            assert cv2.getNumThreads() == 1  # the first batch is still running
            release.set()
            running.result()
        assert first.flow.opencv_threads == second.flow.opencv_threads == [1]
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def _ingest(video, layout, cfg, tmp_path, video_id="movie"):
    root = DataRoot(tmp_path)
    record = ingest_video(_entry(layout, video_id), video, root, cfg)
    frames = pq.read_table(root.video_frames_dir("movies", video_id) / "frames-00000.parquet").to_pylist()
    return root, record, frames


def test_movie_sampling_takes_short_clips_and_jumps(stereo_videos, stereo_config, tmp_path):
    root, record, frames = _ingest(stereo_videos["sbs_full"], "sbs_full", stereo_config, tmp_path)
    assert record.status == "ok" and record.detected_layout == "sbs_full"
    kept = [f for f in frames if f["kept"]]
    assert kept and all(f["lr_pass_fraction"] >= 0.7 for f in kept)
    # 4 fps, 4 frames a clip then a 0.5 s jump: every clip holds at most 4 consecutive frames within 1 s
    for clip in {f["clip_id"] for f in kept}:
        times = [f["timestamp_s"] for f in kept if f["clip_id"] == clip]
        assert len(times) <= 4 and max(times) - min(times) <= 1.0
    assert record.dropped["decimated"] > 0
    assert root.preview("movies", "movie").is_file()


def test_vertical_misalignment_rejects_frames_by_name(stereo_videos, stereo_config, tmp_path):
    _, record, frames = _ingest(stereo_videos["vertical"], "sbs_full", stereo_config, tmp_path)
    assert record.status == "ok" and record.frames_kept == 0
    assert record.dropped["stereo_vertical"] > 0
    assert all(f["vertical_fail_fraction"] > 0.1 for f in frames if f["drop_reason"] == "stereo_vertical")


def test_zero_baseline_is_rejected_for_range(stereo_videos, stereo_config, tmp_path):
    _, record, _ = _ingest(stereo_videos["flat"], "sbs_full", stereo_config, tmp_path)
    assert record.frames_kept == 0 and record.dropped["stereo_range"] > 0


def test_crop_intrinsics_follow_the_crop():
    entry = dataclasses.replace(_entry("sbs_full"), fx=0.5, fy=0.9, cx=0.5, cy=0.5)
    geometry = ViewGeometry(CropBox(x=100, y=50, width=200, height=100), (100, 50))
    fx, fy, cx, cy = crop_intrinsics(entry, (400, 200), geometry)
    assert (fx, fy, cx, cy) == pytest.approx((1.0, 1.8, 0.5, 0.5))
    assert crop_intrinsics(_entry("sbs_full"), (400, 200), geometry) == (None, None, None, None)


def test_confidence_column_round_trips_through_a_shard_to_the_trainer(stereo_config, tmp_path):
    frame = next(iter(render_stereo_frames(SceneSpec(duration_s=0.1, seed=5, **VIEW), convergence_px=4.0)))
    (outcome,) = StereoProcessor(stereo_config.stereo).process([frame.left], [frame.right])
    assert outcome.reason is None
    confidence = decode_confidence_png(outcome.columns["confidence"])
    valid = decode_mask_png(outcome.columns["valid_mask"])
    sky = decode_mask_png(outcome.columns["sky_mask"])
    # The mask is the threshold of the stored confidence: a trainer can cut its own, or weigh by it.
    np.testing.assert_array_equal(valid, confidence >= stereo_config.stereo.min_confidence)
    assert np.all(confidence[sky] == 0) and 0.3 < confidence.mean() < 1
    assert len(np.unique(confidence)) > 20  # graded, not a second mask
    writer = PartWriter(tmp_path, SHARD_SCHEMA)
    height, width = frame.left.shape[:2]
    row = dict(sample_id="m/0", dataset="m", video_id="m", category="natural", clip_id=0, frame_index=0)
    row.update(timestamp_s=0.0, split="train", width=width, height=height, image=encode_jpeg(frame.left))
    writer.add({**row, **outcome.columns})
    (part,) = writer.close()
    read = ShardReader().row(str(part.path), 0, 0, stereo=True)
    labels = _decode_labels(read, (height, width))
    assert labels.confidence is not None
    np.testing.assert_array_equal(labels.confidence, confidence)
    np.testing.assert_array_equal(labels.valid, valid)
    flipped = _augmented_labels(labels, Geometry((0, 0, width, height), (height, width), True))
    np.testing.assert_array_equal(flipped["confidence"][0], confidence[:, ::-1])  # the sample's weight map
    np.testing.assert_array_equal(flipped["valid"][0], valid[:, ::-1])
    # A shard written before the column existed still reads, without a confidence.
    old = pq.read_table(part.path).drop_columns(["confidence"])
    pq.write_table(old, tmp_path / "old.parquet")
    old_row = ShardReader().row(str(tmp_path / "old.parquet"), 0, 0, stereo=True)
    assert "confidence" not in old_row
    old_labels = _decode_labels(old_row, (height, width))
    assert old_labels.confidence is None
    assert "confidence" not in _augmented_labels(old_labels, Geometry((0, 0, width, height), (height, width), False))


def test_a_view_needing_more_than_max_upscale_is_a_named_error(stereo_videos, stereo_config):
    small = stereo_config.stereo.model_copy(update={"output_size": (960, 576), "max_upscale": 2.0})
    video = stereo_videos["sbs_full"]
    info = probe_video(video)
    with pytest.raises(VideoError) as err:
        resolve_stereo_setup(video, _entry("sbs_full"), 0.5, info.duration_s - 0.5, info.display_size, small)
    assert err.value.reason == "stereo_view_too_small" and "3.00x" in str(err.value)
    fits = small.model_copy(update={"max_upscale": 3.0})
    setup = resolve_stereo_setup(video, _entry("sbs_full"), 0.5, info.duration_s - 0.5, info.display_size, fits)
    assert setup is not None and setup.geometry.disparity_scale == pytest.approx(3.0)
