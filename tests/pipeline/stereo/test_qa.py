"""Stereo source QA on renders that carry each defect, and on clean renders that must pass."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.io.data_root import DataRoot
from pipeline.media.codecs import decode_disparity_png, decode_mask_png, encode_jpeg
from pipeline.sources.catalog import CatalogEntry
from pipeline.stereo import qa
from pipeline.stereo.processor import StereoOutcome, StereoProcessor
from pipeline.synthetic.renderer import SceneSpec, StereoFrame, render_stereo_frames, render_stereo_video
from pipeline.video.ingest import ingest_video

VIEW = dict(width=320, height=192, fps=20.0, baseline_m=0.3)
SPEC = SceneSpec(duration_s=0.2, seed=5, **VIEW)


def _config(**stereo):
    return load_config(overrides={"stereo": {"crop": None, "output_size": None, **stereo}}).stereo


@pytest.fixture(scope="module")
def clean() -> list[StereoFrame]:
    return list(render_stereo_frames(SPEC, convergence_px=4.0))[:3]


@pytest.fixture(scope="module")
def parallel() -> list[StereoFrame]:
    """No convergence shift: every point in front of the cameras has a positive disparity."""
    return list(render_stereo_frames(SPEC))[:3]


def _process(lefts, rights, **stereo) -> list[StereoOutcome]:
    return StereoProcessor(_config(**stereo)).process(lefts, rights)


def _disparity(outcome: StereoOutcome) -> tuple[np.ndarray, np.ndarray]:
    columns = outcome.columns
    disparity = decode_disparity_png(columns["disparity"], columns["disp_scale"], columns["disp_offset"])
    return disparity, decode_mask_png(columns["valid_mask"])


def _bad3(outcome: StereoOutcome, frame: StereoFrame) -> float:
    disparity, valid = _disparity(outcome)
    good = valid & ~frame.sky_mask & ~frame.occluded
    assert good.mean() > 0.6
    return float(np.mean(np.abs(disparity - frame.disparity)[good] > 3))


def test_clean_pairs_pass_every_source_check(clean):
    outcomes = _process([f.left for f in clean], [f.right for f in clean])
    for outcome in outcomes:
        assert outcome.reason is None
        columns = outcome.columns
        assert columns["stereo_swapped"] is False and columns["stereo_float_window_px"] == 0
        assert columns["stereo_color_gap"] < 3
        assert columns["stereo_desync_score"] is None or columns["stereo_desync_score"] < 0.5
        assert "image" not in columns  # the left view stays the sampled one


def test_swapped_eyes_are_rejected_by_name(parallel):
    outcomes = _process([f.right for f in parallel], [f.left for f in parallel], on_swapped="reject")
    assert [o.reason for o in outcomes] == ["stereo_swapped"] * 3
    assert all(o.columns["stereo_swapped"] for o in outcomes)


def test_swapped_eyes_are_swapped_back(parallel):
    outcomes = _process([f.right for f in parallel], [f.left for f in parallel], on_swapped="swap")
    for outcome, frame in zip(outcomes, parallel):
        assert outcome.reason is None and outcome.columns["stereo_swapped"] is True
        # The shard's image becomes the left eye's, and the disparity is that view's.
        assert outcome.columns["image"] == encode_jpeg(frame.left, 95)
        assert _bad3(outcome, frame) < 0.02


def test_swap_vote_needs_the_sign_and_the_trend(parallel):
    disparity = parallel[0].disparity
    valid = ~parallel[0].sky_mask
    assert not qa.looks_swapped(disparity, valid, 0.9)
    assert qa.looks_swapped(-disparity, valid, 0.9)
    # Everything behind the screen of a converged movie, the right way round: the trend vetoes the sign.
    assert not qa.looks_swapped(disparity - disparity.max() - 1, valid, 0.9)


def test_time_offset_between_the_eyes_is_caught():
    delayed = list(render_stereo_frames(SPEC, convergence_px=4.0, right_delay_frames=1))[1:4]
    outcomes = _process([f.left for f in delayed], [f.right for f in delayed])
    assert [o.reason for o in outcomes] == ["stereo_desync"] * 3
    assert all(o.columns["stereo_desync_score"] > 0.8 for o in outcomes)


def test_a_single_pair_has_no_motion_to_compare(clean):
    (outcome,) = _process([clean[0].left], [clean[0].right])
    assert outcome.reason is None and outcome.columns["stereo_desync_score"] is None


def test_darkened_right_view_matches_as_well_as_the_original(clean):
    frame = clean[0]
    dark = np.clip(frame.right.astype(np.float32) * 0.7 + 0.5, 0, 255).astype(np.uint8)
    (plain,) = _process([frame.left], [frame.right])
    (darkened,) = _process([frame.left], [dark])
    assert plain.reason is None and darkened.reason is None
    assert darkened.columns["stereo_color_gap"] > 20 > 3 > plain.columns["stereo_color_gap"]
    reference, reference_valid = _disparity(plain)
    disparity, valid = _disparity(darkened)
    assert abs(valid.mean() - reference_valid.mean()) < 0.02
    both = valid & reference_valid
    assert np.median(np.abs(disparity - reference)[both]) < 0.1
    assert _bad3(darkened, frame) <= _bad3(plain, frame) + 0.005


def _layered(frame: StereoFrame, layers: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A 2D-to-3D conversion of the left view: a few flat disparity layers, the right view warped from them."""
    ground = frame.disparity[~frame.sky_mask]
    edges = np.quantile(ground, np.linspace(0, 1, layers + 1)[1:-1])
    labels = np.digitize(frame.disparity, edges)
    values = np.array([np.median(ground[np.digitize(ground, edges) == i]) for i in range(layers)], np.float32)
    layered = values[labels]
    height, width = layered.shape
    map_x = np.arange(width, dtype=np.float32)[None, :] + layered  # right(x - d) = left(x), d taken at x
    map_y = np.repeat(np.arange(height, dtype=np.float32)[:, None], width, axis=1)
    return frame.left, cv2.remap(frame.left, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_converted_layers_score_higher_than_real_stereo(clean):
    frame = clean[0]
    (natural,) = _process([frame.left], [frame.right])
    left, right = _layered(frame)
    (converted,) = _process([left], [right])
    assert natural.reason is None  # the converted pair's few layers may be too close for stereo_range: no matter
    assert converted.columns["converted_score"] > 0.8
    assert natural.columns["converted_score"] < 0.5


def _black(view: np.ndarray, left: int = 0, right: int = 0) -> np.ndarray:
    view = view.copy()
    view[:, :left] = 0
    view[:, view.shape[1] - right :] = 0
    return view


def test_floating_window_in_the_left_view_is_measured_and_excluded(clean):
    frame = clean[0]
    (outcome,) = _process([_black(frame.left, left=40)], [frame.right])
    assert outcome.reason is None and outcome.columns["stereo_float_window_px"] == 40
    _, valid = _disparity(outcome)
    assert not valid[:, :40].any() and valid[:, 40:].mean() > 0.6


def test_floating_window_in_the_right_view_excludes_what_matches_into_it(clean):
    frame = clean[0]
    width = frame.left.shape[1]
    (outcome,) = _process([frame.left], [_black(frame.right, right=30)])
    assert outcome.reason is None and outcome.columns["stereo_float_window_px"] == 30
    _, valid = _disparity(outcome)
    lands = np.arange(width)[None, :] - frame.disparity  # column in the right view, from the ground truth
    assert valid[lands < width - 30 - 2].mean() > 0.6
    assert valid[lands > width - 30 + 2].mean() < 0.02


def test_bars_in_both_views_are_no_floating_window(clean):
    frame = clean[0]
    pair = qa.prepare_pair(_black(frame.left, left=12), _black(frame.right, left=12))
    assert pair.left_bands == pair.right_bands == qa.Bands(12, 0)
    assert pair.float_window_px == 0


@pytest.mark.parametrize("delay", [0, 1])
def test_desync_lands_in_the_frame_stats(tmp_path, delay):
    spec = SceneSpec(duration_s=3.0, seed=21, **VIEW)
    video = render_stereo_video(spec, tmp_path / "movie.mp4", convergence_px=4.0, right_delay_frames=delay)
    cfg = load_config(
        overrides={
            "sample": {"trim": {"head_s": 0.5, "tail_s": 0.5}},
            "split": {"gap_frames": 0},
            "stereo": {"crop": None, "output_size": None, "jump_s": 0.5, "flow": {"batch_size": 4}},
        }
    )
    entry = CatalogEntry(
        video_id="movie", url="http://127.0.0.1/x.mp4", dataset="movies", category="natural", layout="sbs_full"
    )
    root = DataRoot(tmp_path / "root")
    record = ingest_video(entry, video, root, cfg)
    frames = pq.read_table(root.video_frames_dir("movies", "movie") / "frames-00000.parquet").to_pylist()
    checked = [f for f in frames if f["stereo_swapped"] is not None]  # the frames that reached the stereo checks
    assert checked and all(f["stereo_float_window_px"] == 0 and not f["stereo_swapped"] for f in checked)
    if delay:
        assert record.frames_kept == 0 and record.dropped["stereo_desync"] == len(checked)
    else:
        assert record.frames_kept == len(checked) and record.dropped["stereo_desync"] == 0
