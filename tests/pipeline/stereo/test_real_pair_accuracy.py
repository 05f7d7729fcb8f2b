"""Issue 16's accuracy setting on real pairs with ground truth, and the second real pair's loader (Aloe)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipeline.config import CurateConfig, StereoConfig
from pipeline.stereo.disparity import check_stereo, rejection_reason
from pipeline.stereo.optical_flow import DISFlow, make_flow_backend, stereo_flows
from pipeline.synthetic.real_pairs import GroundTruthPair, PairScore, aloe, motorcycle, score, with_parallax

# The opt-in setting benchmarks/bench_stereo.py reports as pipeline_midas_accurate.
ACCURATE = StereoConfig(quality="accurate")


def _measure(pair: GroundTruthPair, cfg: StereoConfig) -> tuple[str | None, PairScore]:
    (lr,), (rl,) = stereo_flows(make_flow_backend(cfg.flow), [pair.left], [pair.right])
    result = check_stereo(lr, rl, cfg, None, pair.left, pair.right)
    return rejection_reason(result, cfg), score(result.disparity, result.valid, pair.disparity)


@pytest.fixture(scope="module")
def motorcycle_base() -> GroundTruthPair:
    return motorcycle()


def test_patch_size_reaches_dis_and_is_hashed_and_recorded_only_when_set():
    cfg = CurateConfig(stereo={"flow": {"dis_finest_scale": 0, "dis_patch_size": 6}})
    backend = make_flow_backend(cfg.stereo.flow)
    assert isinstance(backend, DISFlow) and backend.overrides == {"finest_scale": 0, "patch_size": 6}
    unset = CurateConfig(stereo={"flow": {"dis_finest_scale": 0}})
    assert make_flow_backend(unset.stereo.flow).overrides == {"finest_scale": 0}
    assert cfg.processing_hash() != unset.processing_hash()
    # Unset, the key is absent from the hash and from dataset.json: configs written before it read as they did.
    assert "dis_patch_size" not in json.dumps(unset.recorded())
    assert cfg.recorded()["stereo"]["flow"]["dis_patch_size"] == 6
    with pytest.raises(ValueError):
        StereoConfig(flow={"dis_patch_size": 2})


@pytest.mark.parametrize(
    "scale,min_density,max_bad_3,ratio",
    [
        # At a 3D movie's parallax (3.0% of the width), the movie aim: 0.920 / 0.96% of kept pixels off by > 3 px,
        # against the default's 0.896 / 1.28% (and finest scale 0 alone's 0.901 / 0.91%).
        (0.37, 0.90, 0.01, 0.8),
        # At 16%: 0.710 / 2.82% against the default's 0.639 / 4.84%. The 1% is not reached on this
        # re-rendered pair (bench_stereo: not even with every truly occluded pixel removed from the mask).
        (2.0, 0.70, 0.03, 0.65),
    ],
)
def test_accurate_setting_beats_the_default_on_the_real_pair(motorcycle_base, scale, min_density, max_bad_3, ratio):
    pair = with_parallax(motorcycle_base, scale)
    reason, kept = _measure(pair, ACCURATE)
    assert reason is None
    assert kept.density >= min_density and kept.bad_3 <= max_bad_3
    _, default = _measure(pair, StereoConfig())
    assert default.bad_3 > max_bad_3 and kept.bad_3 < ratio * default.bad_3
    assert kept.density > default.density


@pytest.mark.slow
def test_accurate_setting_keeps_the_real_aloe_pair_at_large_parallax():
    # A real pair at 16.5% of the width (real occlusions, JPEG, its own right view): the default rejects the
    # frame (stereo_lr: 0.568 kept); the accurate setting keeps it at 0.701 with 0.21% off by > 3 px.
    pair = aloe()
    if pair is None:
        pytest.skip("OpenCV's Aloe sample is not installed (apt-get install opencv-doc)")
    reason, kept = _measure(pair, ACCURATE)
    assert reason is None and kept.density >= 0.69 and kept.bad_3 <= 0.005
    assert _measure(pair, StereoConfig())[0] == "stereo_lr"


def test_aloe_reads_opencv_sample_files_from_the_named_directory(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    truth = np.full((12, 20), 7, np.uint8)
    truth[:, :3] = 0  # unknown
    cv2.imwrite(str(tmp_path / "aloeL.jpg"), left)
    cv2.imwrite(str(tmp_path / "aloeR.jpg"), left[:, ::-1])
    cv2.imwrite(str(tmp_path / "aloeGT.png"), truth)
    monkeypatch.setenv("OPENCV_SAMPLES_DATA", str(tmp_path))
    pair = aloe()
    assert pair is not None
    assert pair.left.shape == pair.right.shape == (12, 20, 3) and pair.left.dtype == np.uint8
    assert pair.disparity.dtype == np.float32
    assert np.isinf(pair.disparity[:, :3]).all() and (pair.disparity[:, 3:] == 7).all()
    (tmp_path / "aloeGT.png").unlink()  # a directory missing one of the files does not count
    monkeypatch.setattr("pipeline.synthetic.real_pairs._OPENCV_SAMPLE_DIRS", (str(tmp_path / "none"),))
    assert aloe() is None


def test_installed_aloe_ground_truth_is_full_size_left_disparity():
    pair = aloe()
    if pair is None:
        pytest.skip("OpenCV's Aloe sample is not installed (apt-get install opencv-doc)")
    height, width = pair.disparity.shape
    assert pair.left.shape == pair.right.shape == (height, width, 3) == (1110, 1282, 3)
    known = np.isfinite(pair.disparity)
    assert 0.9 < known.mean() < 1 and 100 < pair.disparity[known].max() < 0.2 * width
    # x_right = x_left - d: the right view sampled there looks like the left view, far more than at half or
    # 1.5 times the disparity (a wrongly scaled ground truth).
    rows, cols = np.nonzero(known & (np.arange(width)[None, :] >= 1.5 * np.nan_to_num(pair.disparity, posinf=0)))
    left = pair.left[rows, cols].astype(float)

    def gap(factor: float) -> float:
        x = np.rint(cols - factor * pair.disparity[rows, cols]).astype(int)
        return float(np.abs(pair.right[rows, x].astype(float) - left).mean())

    assert gap(1.0) < 0.5 * min(gap(0.5), gap(1.5))
