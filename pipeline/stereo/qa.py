"""Stereo source QA: defects of the source rather than of one match.

Eyes swapped, a time offset between the eyes, colour mismatch, 2D-to-3D conversions and floating windows. Each
is measured on what the stereo branch computes anyway (the two stereo flows, the checks), plus one small
temporal flow per pair at `QA_WIDTH` for the time offset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.stereo.disparity import PixelChecks

QA_WIDTH = 320  # the temporal flow and the time-offset measure run at about this width
BLACK_LEVEL = 24  # luma at or below which a column counts as black (codec noise lifts true black a little)
SIGN_DEAD_ZONE_PX = 0.5  # disparities this close to 0 say nothing about which eye is which
MIN_TREND = 0.2  # correlation of disparity with the row, inverted, that a swapped frame must show
MIN_MOTION_PX = 0.25  # spread of vertical motion (at QA_WIDTH) below which a pair says nothing about sync
CONVERTED_PEAKS = 3  # disparity layers a 2D-to-3D conversion is credited with
CONVERTED_BIN_PX = 0.25  # histogram bin; a peak is 3 bins wide, so DIS noise on a flat layer stays in it
_MIN_PIXELS = 100


@dataclass(frozen=True)
class Bands:
    """Widths in pixels of the black bands at the left and right edge of one view."""

    left: int = 0
    right: int = 0


@dataclass(frozen=True)
class PreparedPair:
    """A view pair made ready for matching: black bands found, the right view's colours matched to the left's."""

    right_matched: np.ndarray  # the right view with the left view's per-channel mean and std; for matching only
    left_bands: Bands
    right_bands: Bands
    color_gap: float  # mean over B, G, R of |mean_R - mean_L| + |std_R - std_L|, 8-bit levels, before matching

    def swapped(self) -> PreparedPair:
        """The same pair read the other way round (the bands change views; the colour match stays for matching)."""
        return dataclasses.replace(self, left_bands=self.right_bands, right_bands=self.left_bands)

    @property
    def float_window_px(self) -> int:
        """Width of a black band that one view has and the other has not at the same edge (a floating window)."""
        return max(
            abs(self.left_bands.left - self.right_bands.left), abs(self.left_bands.right - self.right_bands.right)
        )


def black_bands(view: np.ndarray) -> Bands:
    """Black columns at each edge of a BGR or grey view (a column is black when its brightest pixel is)."""
    gray = view if view.ndim == 2 else cv2.cvtColor(view, cv2.COLOR_BGR2GRAY)
    bright = gray.max(axis=0) > BLACK_LEVEL
    if not bright.any():
        return Bands()  # a black frame is not a floating window; the dark/blank rules deal with it
    first = int(np.argmax(bright))
    last = int(np.argmax(bright[::-1]))
    return Bands(first, last)


def prepare_pair(left: np.ndarray, right: np.ndarray) -> PreparedPair:
    """Find both views' black bands and match the right view's colours to the left's outside them.

    Matching mean and std per channel (a gain and an offset) undoes exposure, white-balance and grading
    differences between the cameras, which brightness-constancy matchers turn into disparity error.
    """
    # A band spans the whole height, so every 4th row finds it.
    left_bands, right_bands = black_bands(left[::4]), black_bands(right[::4])
    width = left.shape[1]
    # Columns that are picture in both views, so a black band does not drag one view's statistics down.
    start = max(left_bands.left, right_bands.left)
    stop = width - max(left_bands.right, right_bands.right)
    if stop - start < 2:
        start, stop = 0, width
    step = 4  # statistics on every 4th pixel: as good for a mean and std, 16x cheaper
    left_stats = _channel_stats(left[::step, start:stop:step])
    right_stats = _channel_stats(right[::step, start:stop:step])
    gap = float(np.mean(np.abs(right_stats - left_stats).sum(axis=0)))
    return PreparedPair(_match(right, right_stats, left_stats), left_bands, right_bands, gap)


def _channel_stats(pixels: np.ndarray) -> np.ndarray:
    """(2, C) float64: per-channel mean and std."""
    mean, std = cv2.meanStdDev(np.ascontiguousarray(pixels))
    return np.stack([mean[:, 0], std[:, 0]])


def _match(image: np.ndarray, own: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-channel gain and offset through a lookup table, so image ends with target's mean and std."""
    levels = np.arange(256, dtype=np.float64)[:, None]
    gain = target[1] / np.maximum(own[1], 1.0)
    table = np.clip((levels - own[0]) * gain + target[0] + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.LUT(image, table[:, 0])
    return cv2.LUT(image, table.reshape(1, 256, -1))


def exclude_bands(checks: PixelChecks, pair: PreparedPair, flow_lr: np.ndarray) -> PixelChecks:
    """The checks with the pixels in the left view's black bands, or matched into the right view's, invalid.

    They fail the left-right check too: there is no match to be consistent with.
    """
    if pair.left_bands == pair.right_bands == Bands():
        return checks  # pixels matched outside the image already fail the left-right check
    mask = band_mask(pair.left_bands, pair.right_bands, flow_lr)
    return dataclasses.replace(
        checks, lr_ok=checks.lr_ok & ~mask, confidence=np.where(mask, np.float32(0), checks.confidence)
    )


def band_mask(own: Bands, other: Bands, flow: np.ndarray) -> np.ndarray:
    """HxW bool: pixels of the view `flow` starts from that lie in its own black bands or match into the other's."""
    width = flow.shape[1]
    x = np.arange(width, dtype=np.float32)[None, :]
    matched = x + flow[..., 0]
    with np.errstate(invalid="ignore"):
        mask = (matched < other.left) | (matched > width - 1 - other.right)
    mask |= (x < own.left) | (x > width - 1 - own.right)
    return mask


def looks_swapped(disparity: np.ndarray, valid: np.ndarray, min_fraction: float) -> bool:
    """Whether one frame's valid disparity says the eyes are swapped.

    Two signs must agree. The disparity sign: in front of the cameras a point is seen further left by the
    right eye, so at least min_fraction of the signed pixels (|d| >= SIGN_DEAD_ZONE_PX) being negative says
    the views are the wrong way round. The trend down the frame: the ground nears the camera towards the
    bottom, so disparity grows with the row (correlation +0.8 on the canyon renders); swapped eyes invert
    that too, and a frame votes only with a correlation of -MIN_TREND or lower. The trend is what keeps a
    converged 3D-movie shot set wholly behind the screen (every disparity negative, yet the right way
    round) from voting; a swapped pair of a converged movie, whose far half reads positive, is missed.
    """
    disparity, valid = disparity[::2, ::2], valid[::2, ::2]  # a quarter of the pixels tell the same
    values = disparity[valid]
    signed = np.abs(values) >= SIGN_DEAD_ZONE_PX
    if signed.sum() < _MIN_PIXELS:
        return False
    if np.mean(values[signed] < 0) < min_fraction:
        return False
    rows = np.nonzero(valid)[0].astype(np.float64)
    return _correlation(rows, values.astype(np.float64)) <= -MIN_TREND


def batch_swapped(checks: Sequence[PixelChecks], min_fraction: float) -> bool:
    """A majority of the batch's frames (views of one video) look swapped."""
    votes = sum(looks_swapped(c.disparity, c.valid, min_fraction) for c in checks)
    return votes * 2 > len(checks)


def desync_scores(
    temporal: Sequence[np.ndarray | None], flows_lr: Sequence[np.ndarray], checks: Sequence[PixelChecks]
) -> list[float | None]:
    """|correlation| between each pair's vertical stereo flow and its left view's vertical motion.

    A right eye late by dt sees every point where it was dt ago, so the stereo flow gains -dt times the
    point's image velocity; rectified in-sync views have none vertically. `temporal[i]` is the left view's
    flow to a neighbouring pair's left view at QA_WIDTH (None: no neighbour), so a vertical stereo flow
    that follows it pixel by pixel means a time offset. A constant vertical offset (a misaligned rig)
    does not correlate. None where too little vertical motion was seen to tell.
    """
    return [_desync(t, flow, c) for t, flow, c in zip(temporal, flows_lr, checks)]


def _desync(temporal: np.ndarray | None, flow_lr: np.ndarray, checks: PixelChecks) -> float | None:
    if temporal is None:
        return None
    step = qa_step(flow_lr.shape[1])
    rows, cols = temporal.shape[:2]
    stereo_v = flow_lr[::step, ::step, 1][:rows, :cols]
    # Pixels matched consistently; the vertical check is left out, since a time offset is what fails it.
    measured = checks.lr_ok[::step, ::step][:rows, :cols]
    motion = temporal[..., 1][measured]
    if motion.size < _MIN_PIXELS or motion.std() < MIN_MOTION_PX:
        return None
    return abs(_correlation(stereo_v[measured].astype(np.float64), motion.astype(np.float64)))


def qa_step(width: int) -> int:
    """Subsampling step from a view's width to about QA_WIDTH."""
    return max(1, -(-width // QA_WIDTH))


def qa_view(view: np.ndarray) -> np.ndarray:
    """Grey view shrunk by qa_step, for the temporal flow; pixel (i, j) covers the view's (i, j) * step."""
    gray = view if view.ndim == 2 else cv2.cvtColor(view, cv2.COLOR_BGR2GRAY)
    step = qa_step(gray.shape[1])
    if step == 1:
        return gray
    height, width = gray.shape
    return cv2.resize(gray, (width // step, height // step), interpolation=cv2.INTER_AREA)


def temporal_neighbours(count: int) -> list[int]:
    """For each pair of a batch, the pair its temporal flow goes to: the next one, the previous for the last."""
    return [i + 1 for i in range(count - 1)] + [count - 2] if count >= 2 else []


def converted_score(disparity: np.ndarray, valid: np.ndarray) -> float | None:
    """Fraction of valid disparity within the CONVERTED_PEAKS strongest peaks of its histogram.

    A 2D-to-3D conversion assigns a few flat depth layers, so most of its pixels share a few disparities;
    real stereo of a real scene spreads over a continuum. None without valid pixels.
    """
    values = disparity[::2, ::2][valid[::2, ::2]]  # a quarter of the pixels give the same fractions
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    bins = max(1, int(np.ceil((high - low) / CONVERTED_BIN_PX)) + 1)
    counts = np.bincount(((values - low) / CONVERTED_BIN_PX).astype(np.int64), minlength=bins).astype(np.float64)
    windows = np.convolve(counts, np.ones(3), mode="same")  # mass within one bin of each bin
    taken = 0.0
    for _ in range(CONVERTED_PEAKS):
        peak = int(np.argmax(windows))
        if windows[peak] <= 0:
            break
        lo, hi = max(peak - 1, 0), peak + 2
        taken += counts[lo:hi].sum()
        counts[lo:hi] = 0
        windows = np.convolve(counts, np.ones(3), mode="same")
    return float(taken / values.size)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def batch_desync(scores: Sequence[float | None], max_score: float) -> bool:
    """A majority of the batch's pairs that showed vertical motion show it in their stereo flow too."""
    measured = [s for s in scores if s is not None]
    return sum(s > max_score for s in measured) * 2 > len(measured) if measured else False
