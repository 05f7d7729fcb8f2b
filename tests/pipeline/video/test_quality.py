"""Tests for pipeline.video.quality: the analysis view, the dark/blank/blurry rules, camera motion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.config import QualityConfig
from pipeline.synthetic.renderer import SceneSpec, render_frames
from pipeline.video.quality import FrameQuality, MotionMeter, analysis_view, measure_quality, quality_drop_reason

CFG = QualityConfig()


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A rendered canyon frame (BGR, 320x192): natural texture at a realistic sharpness."""
    return next(iter(render_frames(SceneSpec(width=320, height=192, fps=10, duration_s=0.1, seed=1)))).image


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """Smooth random texture, wide enough to cut shifted 256-pixel windows from."""
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.random((160, 320)).astype(np.float32), (0, 0), 1.5)
    return cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _gray(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def _reason(gray: np.ndarray) -> str | None:
    return quality_drop_reason(measure_quality(gray), CFG)


# ------------------------------------------------------------------ analysis_view


def test_analysis_view_scales_down_to_the_width_keeping_aspect(scene):
    view = analysis_view(scene, 256)
    assert view.shape == (154, 256, 3)  # 192 * 256 / 320 = 153.6
    assert view.dtype == np.uint8
    assert abs(float(view.mean()) - float(scene.mean())) < 2  # an area average, not a crop


@pytest.mark.parametrize("width", [320, 400, 1000])
def test_analysis_view_never_upscales(scene, width):
    assert analysis_view(scene, width) is scene


def test_analysis_view_of_gray_and_extreme_aspect():
    gray = np.zeros((10, 2000), np.uint8)
    assert analysis_view(gray, 256).shape == (1, 256)  # height never rounds to 0


# ------------------------------------------------------------------ measures and rules


def test_measure_quality_of_known_images():
    flat = np.full((40, 60), 100, np.uint8)
    assert measure_quality(flat) == FrameQuality(100.0, 0.0, 0.0)
    halves = np.zeros((40, 60), np.uint8)
    halves[:, 30:] = 200
    q = measure_quality(halves)
    assert q.brightness == pytest.approx(100.0)
    assert q.contrast == pytest.approx(100.0)
    assert q.sharpness > 0


def test_sharp_texture_is_kept(scene):
    gray = _gray(analysis_view(scene, CFG.analysis_width))
    q = measure_quality(gray)
    assert q.sharpness > 2 * CFG.blur_min_sharpness
    assert _reason(gray) is None


def test_dark_frame(scene):
    dark = (_gray(scene) * 0.05).astype(np.uint8)
    assert _reason(dark) == "dark"
    assert _reason(np.zeros((96, 160), np.uint8)) == "dark"


def test_flat_grey_is_blank():
    assert _reason(np.full((96, 160), 128, np.uint8)) == "blank"
    rng = np.random.default_rng(0)
    faint = (128 + rng.normal(0, 2, (96, 160))).astype(np.uint8)  # sensor noise on a grey card
    assert _reason(faint) == "blank"


@pytest.mark.parametrize("sigma", [2.0, 4.0])
def test_blurred_texture_is_blurry(scene, sigma):
    gray = _gray(analysis_view(scene, CFG.analysis_width))
    blurred = cv2.GaussianBlur(gray, (0, 0), sigma)
    q = measure_quality(blurred)
    assert q.contrast > CFG.blank_max_std  # still has contrast: blurry, not blank
    assert _reason(blurred) == "blurry"


def test_rules_apply_in_order_dark_blank_blurry():
    # A black frame is also flat and soft: it must be reported as dark.
    assert quality_drop_reason(FrameQuality(0.0, 0.0, 0.0), CFG) == "dark"
    assert quality_drop_reason(FrameQuality(100.0, 0.0, 0.0), CFG) == "blank"
    assert quality_drop_reason(FrameQuality(100.0, 50.0, 0.0), CFG) == "blurry"
    assert quality_drop_reason(FrameQuality(100.0, 50.0, 1e3), CFG) is None


def test_thresholds_come_from_the_config():
    q = FrameQuality(brightness=20.0, contrast=10.0, sharpness=50.0)
    assert quality_drop_reason(q, CFG) is None
    assert quality_drop_reason(q, QualityConfig(dark_max_brightness=30)) == "dark"
    assert quality_drop_reason(q, QualityConfig(blank_max_std=12)) == "blank"
    assert quality_drop_reason(q, QualityConfig(blur_min_sharpness=60)) == "blurry"
    # at the threshold itself the frame passes (strictly below fails)
    assert (
        quality_drop_reason(q, QualityConfig(dark_max_brightness=20, blank_max_std=10, blur_min_sharpness=50)) is None
    )


# ------------------------------------------------------------------ motion


def test_identical_frames_have_no_motion(texture):
    meter = MotionMeter()
    frame = texture[:, :256].copy()
    assert meter(frame, frame) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("shift", [4, 8])
def test_shift_is_measured_as_a_fraction_of_the_width(texture, shift):
    meter = MotionMeter()
    a = texture[:, :256].copy()
    b = texture[:, shift : 256 + shift].copy()  # the camera panned: content moves `shift` px left
    assert a.shape == b.shape == (160, 256)
    assert meter(a, b) == pytest.approx(shift / 256, rel=0.1)
    assert meter(b, a) == pytest.approx(shift / 256, rel=0.1)  # a magnitude: direction does not matter


def test_motion_is_relative_to_the_image_width(texture):
    meter = MotionMeter()
    wide = meter(texture[:, :256].copy(), texture[:, 8:264].copy())
    narrow = meter(texture[:80, :128].copy(), texture[:80, 8:136].copy())
    assert narrow == pytest.approx(2 * wide, rel=0.2)  # the same 8 px is twice the fraction of half the width


def test_motion_meter_is_reusable(texture):
    meter = MotionMeter()
    a, b = texture[:, :256].copy(), texture[:, 8:264].copy()
    first = meter(a, b)
    meter(a, a)
    assert meter(a, b) == pytest.approx(first, rel=1e-6)  # no state carried between calls
