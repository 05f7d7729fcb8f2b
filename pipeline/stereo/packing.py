"""Stereo frame layouts (side by side, top and bottom; full or half), black bars and per-view geometry.

A stereo 3D movie packs both eyes into one frame. This module unpacks them, tells which packing a
video uses (or that it is not stereo at all), finds letterbox bars, and plans the one crop and resize
applied to both views so that disparities stay meaningful: a crop moves both views by the same offset,
which leaves disparity unchanged, and a resize scales it by `ViewGeometry.disparity_scale`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

STEREO_LAYOUTS = ("sbs_full", "sbs_half", "tab_full", "tab_half")
ARRANGEMENTS = ("sbs", "tab")  # how the two halves sit; full vs half is a separate, geometric question

DEFAULT_STEREO_THRESHOLD = 0.65  # measured on renders: mono <= 0.50, stereo >= 0.88 (<= 2 px vertical error)
HALF_SBS_MAX_VIEW_ASPECT = 1.25  # an SBS view narrower than 5:4 is squeezed (4:3 .. 2.39:1 content)
HALF_TAB_MIN_VIEW_ASPECT = 2.5  # a TAB view wider than 5:2 is squeezed (4:3 .. 2.39:1 content)

_WORK_SIDE = 160  # halves are compared with their longer side at most this long: fast, codec noise averages out
_MAX_SHIFT = 0.08  # of the working view width: 3D movies stay within a few percent, our renders reach ~6%
_MAX_VERTICAL_SHIFT = 0.02  # of the working view height: tolerates a slightly misaligned pair
_TILES = (4, 4)  # rows, columns: each tile finds its own shift, since disparity varies over the image
_MIN_TILE_VAR = 2.0  # band-pass variance (grey levels^2) below which a tile is flat (sky) and says nothing


def _check_layout(layout: str) -> None:
    if layout not in STEREO_LAYOUTS:
        raise ValueError(f"unknown stereo layout {layout!r}; expected one of {', '.join(STEREO_LAYOUTS)}")


def _halves(frame: np.ndarray, arrangement: str) -> tuple[np.ndarray, np.ndarray]:
    """The two halves as stored (half layouts still squeezed); an odd last row/column is dropped."""
    h, w = frame.shape[:2]
    if arrangement == "sbs":
        half = w // 2
        return frame[:, :half], frame[:, half : 2 * half]
    half = h // 2
    return frame[:half], frame[half : 2 * half]


def split_views(frame: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Left and right views; half layouts are stretched back to the full aspect ratio.

    sbs_half: width x2, tab_half: height x2.
    """
    _check_layout(layout)
    left, right = _halves(frame, layout[:3])
    if layout == "sbs_half":
        size = (2 * left.shape[1], left.shape[0])
    elif layout == "tab_half":
        size = (left.shape[1], 2 * left.shape[0])
    else:
        return left, right
    return (
        cv2.resize(left, size, interpolation=cv2.INTER_LINEAR),
        cv2.resize(right, size, interpolation=cv2.INTER_LINEAR),
    )


def pack_views(left: np.ndarray, right: np.ndarray, layout: str) -> np.ndarray:
    """One frame holding both views in layout: the inverse of split_views (half layouts squeeze each view 2x)."""
    _check_layout(layout)
    if left.shape != right.shape:
        raise ValueError(f"views differ in shape: {left.shape} vs {right.shape}")
    h, w = left.shape[:2]
    if layout == "sbs_half":
        left, right = (cv2.resize(v, (w // 2, h), interpolation=cv2.INTER_AREA) for v in (left, right))
    elif layout == "tab_half":
        left, right = (cv2.resize(v, (w, h // 2), interpolation=cv2.INTER_AREA) for v in (left, right))
    return np.concatenate([left, right], axis=1 if layout.startswith("sbs") else 0)


# ---------------------------------------------------------------- layout detection


@dataclass(frozen=True)
class LayoutGuess:
    """What detect_layout decided and the evidence for it."""

    layout: str  # one of STEREO_LAYOUTS, or "mono"
    scores: dict[str, float]  # similarity score per candidate arrangement ("sbs", "tab"), in [-1, 1]


def detect_layout(frames: Sequence[np.ndarray], threshold: float = DEFAULT_STEREO_THRESHOLD) -> LayoutGuess:
    """Decide sbs/tab (and full vs half from the aspect ratio of a view) or mono from a few frames.

    The two halves of a stereo frame show the same scene up to a horizontal disparity; the halves of a
    mono frame are different pictures. Each arrangement is scored with `arrangement_score` (tile-wise
    normalised cross-correlation of band-passed halves, each tile at its best horizontal shift), and the
    better one wins if it reaches threshold, else "mono".

    Full vs half comes from the stored (unstretched) view's aspect w/h, assuming content between 4:3
    and 2.39:1: an SBS view narrower than 1.25 is a squeezed half view (a 16:9 half-SBS view is 0.89,
    a full one 1.78), and a TAB view wider than 2.5 is a squeezed half view (16:9 half-TAB: 3.56, full: 1.78).
    """
    shape = _common_shape(frames)
    scores = {arrangement: arrangement_score(frames, arrangement) for arrangement in ARRANGEMENTS}
    best = max(ARRANGEMENTS, key=lambda a: scores[a])
    if scores[best] < threshold:
        return LayoutGuess("mono", scores)
    h, w = shape[:2]
    if best == "sbs":  # noqa: SIM108 - one branch per arrangement, each with its own aspect test, reads better
        half = (w // 2) / h < HALF_SBS_MAX_VIEW_ASPECT
    else:
        half = w / (h // 2) > HALF_TAB_MIN_VIEW_ASPECT
    return LayoutGuess(f"{best}_{'half' if half else 'full'}", scores)


def looks_stereo(
    frames: Sequence[np.ndarray], layout: str, threshold: float = DEFAULT_STEREO_THRESHOLD
) -> tuple[bool, float]:
    """Whether frames are consistent with the declared layout: (its arrangement's score >= threshold, score).

    Only the arrangement (sbs vs tab) is checked, not full vs half: both split the same halves, and a
    declared half/full mismatch shows as a wrong aspect ratio, not as a mono video.
    """
    _check_layout(layout)
    _common_shape(frames)
    score = arrangement_score(frames, layout[:3])
    return score >= threshold, score


def arrangement_score(frames: Sequence[np.ndarray], arrangement: str) -> float:
    """Mean over frames and textured tiles of the best shifted NCC between the two halves; 0.0 if none is textured."""
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"unknown arrangement {arrangement!r}; expected sbs or tab")
    values = []
    for frame in frames:
        a, b = (_band_pass(h) for h in _halves(frame, arrangement))
        values.append(_tile_scores(a, b))
    pooled = np.concatenate(values) if values else np.zeros(0)
    return float(pooled.mean()) if pooled.size else 0.0


def _common_shape(frames: Sequence[np.ndarray]) -> tuple[int, ...]:
    if len(frames) == 0:
        raise ValueError("layout detection needs at least one frame")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames differ in shape: {sorted(shapes)}")
    shape = frames[0].shape
    if shape[0] < 8 or shape[1] < 8:
        raise ValueError(f"frame {shape} is too small to split")
    return shape


def _band_pass(view: np.ndarray) -> np.ndarray:
    """Grey, downscaled to _WORK_SIDE, difference of Gaussians: texture, without brightness or codec noise."""
    grey = cv2.cvtColor(view, cv2.COLOR_BGR2GRAY) if view.ndim == 3 else view
    h, w = grey.shape
    scale = min(1.0, _WORK_SIDE / max(h, w))
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    grey = grey.astype(np.float32)
    return cv2.GaussianBlur(grey, (0, 0), 1.0) - cv2.GaussianBlur(grey, (0, 0), 3.0)


def _tile_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per textured tile of a, the highest NCC against b over shifts.

    b ~ a moved left by d, and a little vertically.
    """
    h, w = a.shape
    max_dx = max(1, int(round(_MAX_SHIFT * w)))
    max_dy = int(round(_MAX_VERTICAL_SHIFT * h))
    ny, nx = _TILES
    th, tw = (h - 2 * max_dy) // ny, (w - 2 * max_dx) // nx
    if th < 2 or tw < 2:
        return np.zeros(0)
    rows, cols = slice(max_dy, max_dy + ny * th), slice(max_dx, max_dx + nx * tw)

    def tile_mean(x: np.ndarray) -> np.ndarray:
        return x.reshape(ny, th, nx, tw).mean(axis=(1, 3))

    ta = a[rows, cols]
    mean_a = tile_mean(ta)
    var_a = tile_mean(ta * ta) - mean_a**2
    best = np.full((ny, nx), -1.0, np.float32)
    textured_b = np.zeros((ny, nx), bool)
    for dy in range(-max_dy, max_dy + 1):
        for dx in range(-max_dx, max_dx + 1):
            # A left pixel at x shows in the right view at x - d, so tile x of a pairs with x - dx of b.
            tb = b[max_dy + dy : max_dy + dy + ny * th, max_dx - dx : max_dx - dx + nx * tw]
            mean_b = tile_mean(tb)
            var_b = tile_mean(tb * tb) - mean_b**2
            cov = tile_mean(ta * tb) - mean_a * mean_b
            ok = var_b >= _MIN_TILE_VAR
            textured_b |= ok
            ncc = cov / np.sqrt(np.maximum(var_a * var_b, 1e-12))
            best = np.where(ok, np.maximum(best, ncc), best)
    # A tile flat in either half (sky, bars) cannot tell stereo from mono, so it is left out.
    textured = (var_a >= _MIN_TILE_VAR) & textured_b
    return best[textured]


# ---------------------------------------------------------------- letterbox, crop and resize


@dataclass(frozen=True)
class CropBox:
    """A pixel rectangle: columns x..x+width-1, rows y..y+height-1."""

    x: int
    y: int
    width: int
    height: int


def find_letterbox(frames: Sequence[np.ndarray], black_level: int = 16) -> CropBox:
    """The region inside black bars (top/bottom and left/right), stable over the given frames.

    A row (column) is bar if, in the per-pixel brightest value over all frames, at most half its pixels
    exceed black_level: the maximum over frames keeps dark scenes from passing as bars, and the median
    rule ignores subtitles burnt into a bar and codec ringing at its edge. Only bars touching the frame
    edges are removed. All-black input keeps the whole frame (there is nothing to tell bars from content).
    """
    shape = _common_shape(frames)
    brightest = np.zeros(shape[:2], np.uint8)
    for frame in frames:
        np.maximum(brightest, frame.max(axis=2) if frame.ndim == 3 else frame, out=brightest)
    bright = brightest > black_level
    content_rows = np.flatnonzero(bright.mean(axis=1) > 0.5)
    content_cols = np.flatnonzero(bright.mean(axis=0) > 0.5)
    if content_rows.size == 0 or content_cols.size == 0:
        return CropBox(0, 0, shape[1], shape[0])
    y0, y1 = int(content_rows[0]), int(content_rows[-1])
    x0, x1 = int(content_cols[0]), int(content_cols[-1])
    return CropBox(x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def centre_crop_box(width: int, height: int, crop: tuple[int, int] | None, inside: CropBox | None = None) -> CropBox:
    """Centre crop of size crop (w,h) inside `inside` (or the full view).

    A view smaller than the crop keeps what fits (crop dims clipped to the view); plan_view_geometry then
    cuts that to the output's aspect ratio.

    So a 1440x600 letterboxed view with crop (1880, 800) keeps all of its 1440x600: a dimension is
    never padded, only cut. crop None returns `inside` (or the full view) unchanged.
    """
    region = inside if inside is not None else CropBox(0, 0, width, height)
    if (
        region.width <= 0
        or region.height <= 0
        or region.x < 0
        or region.y < 0
        or region.x + region.width > width
        or region.y + region.height > height
    ):
        raise ValueError(f"{region} does not lie inside a {width}x{height} view")
    if crop is None:
        return region
    if crop[0] <= 0 or crop[1] <= 0:
        raise ValueError(f"crop must be positive, got {crop}")
    cw, ch = min(crop[0], region.width), min(crop[1], region.height)
    return CropBox(region.x + (region.width - cw) // 2, region.y + (region.height - ch) // 2, cw, ch)


@dataclass(frozen=True)
class ViewGeometry:
    """The crop and resize applied identically to the left and the right view."""

    box: CropBox  # crop applied to each view
    output_size: tuple[int, int]  # (width, height) after resize

    @property
    def disparity_scale(self) -> float:
        """output_width / box.width: disparities in output pixels = input pixels * this."""
        return self.output_size[0] / self.box.width


def plan_view_geometry(
    view_width: int,
    view_height: int,
    *,
    letterbox: CropBox | None,
    crop: tuple[int, int] | None,
    output_size: tuple[int, int] | None,
) -> ViewGeometry:
    """Letterbox crop, centre crop, then the centred box of output_size's aspect, then one uniform scale.

    Geometry is never stretched: a view smaller than the crop (a 1282x1110 view under crop 1880x800 keeps
    1282x800) would otherwise reach a 940x400 output squeezed 1.47x against its height. Cutting it to
    1282x545 first scales both axes by 940/1282, so disparity_scale is also the vertical factor.
    output_size None keeps the cropped size.
    """
    box = centre_crop_box(view_width, view_height, crop, letterbox)
    if output_size is None:
        return ViewGeometry(box, (box.width, box.height))
    if output_size[0] <= 0 or output_size[1] <= 0:
        raise ValueError(f"output_size must be positive, got {output_size}")
    return ViewGeometry(aspect_box(box, output_size[0] / output_size[1]), (output_size[0], output_size[1]))


def aspect_box(box: CropBox, aspect: float) -> CropBox:
    """The largest centred box inside `box` with width / height = aspect (to the nearest pixel)."""
    width = min(box.width, max(1, round(box.height * aspect)))
    height = min(box.height, max(1, round(width / aspect)))
    return CropBox(box.x + (box.width - width) // 2, box.y + (box.height - height) // 2, width, height)


def apply_geometry(view: np.ndarray, geometry: ViewGeometry) -> np.ndarray:
    """Crop to geometry.box, then resize to geometry.output_size (INTER_AREA when shrinking)."""
    box = geometry.box
    h, w = view.shape[:2]
    if box.x + box.width > w or box.y + box.height > h:
        raise ValueError(f"{box} does not lie inside a {w}x{h} view")
    cropped = view[box.y : box.y + box.height, box.x : box.x + box.width]
    out_w, out_h = geometry.output_size
    if (out_w, out_h) == (box.width, box.height):
        return cropped
    # INTER_AREA averages when shrinking (no aliasing); it degrades to nearest when enlarging.
    shrinking = out_w <= box.width and out_h <= box.height
    return cv2.resize(cropped, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
