"""Real stereo pairs with ground truth for tests and benchmarks, and the same texture at other parallaxes.

The pairs: Middlebury 2014's motorcycle as scikit-image ships it (741x500, disparities 7-60 px, i.e. up to
8.1% of the width; inf where unknown; scikit-image is a test/bench extra, imported only here), and Middlebury
2006's Aloe as OpenCV's samples ship it (1282x1110 JPEG views, disparities up to 211 px, 16.5% of the width),
found at run time in Debian's opencv-doc (`apt-get install opencv-doc`) or a directory named by
$OPENCV_SAMPLES_DATA; `aloe()` returns None where neither has it.
A pair at another parallax is re-rendered from the left view: the ground truth times `scale`, splatted to
the right view (nearer wins, holes take the farther neighbour), and the left view sampled through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class GroundTruthPair:
    """BGR uint8 views and the left view's disparity (x_right = x_left - disparity; inf where unknown)."""

    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray  # HxW float32


@dataclass(frozen=True)
class PairScore:
    """Kept pixels against ground truth: density over pixels with ground truth, errors over the kept ones."""

    density: float
    bad_1: float  # fraction of kept pixels more than 1 px off
    bad_3: float
    epe_px: float  # mean absolute error


def motorcycle() -> GroundTruthPair:
    """The motorcycle pair at its native parallax (scikit-image's copy; no download)."""
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()
    bgr = [np.ascontiguousarray(cv2.cvtColor(view, cv2.COLOR_RGB2BGR)) for view in (left, right)]
    return GroundTruthPair(bgr[0], bgr[1], np.where(np.isfinite(disparity), disparity, np.inf).astype(np.float32))


# Where OpenCV's sample images may be: $OPENCV_SAMPLES_DATA first, then Debian's opencv-doc.
_OPENCV_SAMPLE_DIRS = ("/usr/share/doc/opencv-doc/examples/data",)
_ALOE_FILES = ("aloeL.jpg", "aloeR.jpg", "aloeGT.png")


def aloe() -> GroundTruthPair | None:
    """Middlebury's Aloe from OpenCV's samples, or None where no sample directory holds it.

    aloeGT.png is the full-size left view's disparity in whole pixels, 8-bit, 0 where unknown (Middlebury 2006's
    full-size convention; tests/pipeline/stereo/test_real_pair_accuracy.py checks it against the views).
    """
    directory = _opencv_samples_with(_ALOE_FILES)
    if directory is None:
        return None
    left, right = (cv2.imread(str(directory / name), cv2.IMREAD_COLOR) for name in _ALOE_FILES[:2])
    truth = cv2.imread(str(directory / _ALOE_FILES[2]), cv2.IMREAD_UNCHANGED)
    if left is None or right is None or truth is None:
        raise ValueError(f"cannot decode the Aloe pair in {directory}")
    disparity = np.where(truth > 0, truth.astype(np.float32), np.float32(np.inf))
    return GroundTruthPair(left, right, disparity)


def _opencv_samples_with(names: tuple[str, ...]) -> Path | None:
    override = os.environ.get("OPENCV_SAMPLES_DATA")
    for directory in (*((override,) if override else ()), *_OPENCV_SAMPLE_DIRS):
        if all((Path(directory) / name).is_file() for name in names):
            return Path(directory)
    return None


def with_parallax(pair: GroundTruthPair, scale: float) -> GroundTruthPair:
    """pair's left view and a right view re-rendered at scale x its ground-truth disparity."""
    height, width = pair.disparity.shape
    right_disparity, _, _ = splat_right(fill_rows(pair.disparity) * np.float32(scale))
    map_x = np.arange(width, dtype=np.float32)[None, :] + fill_rows(right_disparity)
    map_y = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width))
    right = cv2.remap(pair.left, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return GroundTruthPair(pair.left, right, (pair.disparity * np.float32(scale)).astype(np.float32))


def splat_right(disparity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A complete left-view disparity (x_right = x - d) splatted to the right view, the nearer surface winning.

    Returns the right view's disparity (inf where no left pixel lands), and each left pixel's target column and
    whether it lands inside the right view.
    """
    height, width = disparity.shape
    target = np.rint(np.arange(width)[None, :] - disparity).astype(np.int64)
    rows = np.broadcast_to(np.arange(height)[:, None], (height, width))
    inside = (target >= 0) & (target < width)
    right = np.full((height, width), -np.inf, np.float32)
    np.maximum.at(right, (rows[inside], target[inside]), disparity[inside].astype(np.float32))
    right[np.isneginf(right)] = np.inf
    return right, target, inside


def score(disparity: np.ndarray, kept: np.ndarray, truth: np.ndarray) -> PairScore:
    """density, bad-1, bad-3 and EPE of `disparity` on `kept` pixels, where truth is finite."""
    scored = np.isfinite(truth)
    use = np.asarray(kept, bool) & scored
    error = np.abs(disparity - truth)[use]
    if not error.size:
        return PairScore(0.0, float("nan"), float("nan"), float("nan"))
    return PairScore(
        density=float(use.sum() / scored.sum()),
        bad_1=float((error > 1).mean()),
        bad_3=float((error > 3).mean()),
        epe_px=float(error.mean()),
    )


def fill_rows(disparity: np.ndarray) -> np.ndarray:
    """inf replaced by the farther (smaller) of the nearest finite values left and right along its row."""
    height, width = disparity.shape
    finite = np.isfinite(disparity)
    cols = np.arange(width)[None, :]
    from_left = np.maximum.accumulate(np.where(finite, cols, 0), axis=1)
    from_right = np.minimum.accumulate(np.where(finite, cols, width - 1)[:, ::-1], axis=1)[:, ::-1]
    left = np.take_along_axis(disparity, from_left, 1)
    right = np.take_along_axis(disparity, from_right, 1)
    nearest = np.fmin(np.where(np.isfinite(left), left, np.nan), np.where(np.isfinite(right), right, np.nan))
    return np.where(finite, disparity, np.nan_to_num(nearest, nan=0.0)).astype(np.float32)
