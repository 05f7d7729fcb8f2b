"""Training augmentation: SlowTV's aspect-ratio crops, flips and colour jitter, with intrinsics kept exact.

Optionally a depth-cue-preserving zoom: a batch is resized by a random factor (zoom in: a smaller crop
at a random place; zoom out: the whole crop at a smaller batch shape) and reports the zoom it got, by
which the objective divides the predicted translation.

Intrinsics are in pixels with pixel (u, v) at integer u, v (the renderer's and OpenCV's convention). A
crop shifts the principal point, a resize maps pixel centres ((c + 0.5) * s - 0.5), a flip mirrors it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from trainer.config import AugmentConfig


@dataclass(frozen=True)
class Geometry:
    """One sample's crop box (x0, y0, width, height in source pixels), output size and flip."""

    box: tuple[int, int, int, int]
    size: tuple[int, int]  # output (height, width)
    flip: bool


class BatchShape(NamedTuple):
    """The augmented shape every sample of one batch is cropped and resized to."""

    height: int
    width: int
    aspect: float  # width / height


# No augmented side goes below this: a stride-32 encoder's deepest level then keeps 2 pixels, which its
# reflection padding needs (a 32-px side crashes it).
MIN_SIDE = 64


def batch_shape(
    rng: np.random.Generator, cfg: AugmentConfig, height: int, width: int, train: bool = True
) -> BatchShape:
    """One batch's shape: about height*width pixels, sides multiples of 32, at least MIN_SIDE."""
    aspect = width / height
    if train and cfg.aspect_ratios and rng.random() < cfg.aspect_prob:
        aspect = float(cfg.aspect_ratios[int(rng.integers(len(cfg.aspect_ratios)))])
    pixels = height * width
    out_h = max(MIN_SIDE, int(round(math.sqrt(pixels / aspect) / 32)) * 32)
    out_w = max(MIN_SIDE, int(round(out_h * aspect / 32)) * 32)
    return BatchShape(out_h, out_w, out_w / out_h)


def centre_crop_box(src_height: int, src_width: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box of the given aspect (width / height)."""
    if src_width / src_height > aspect:
        w = max(1, min(src_width, int(round(src_height * aspect))))
        return (src_width - w) // 2, 0, w, src_height
    h = max(1, min(src_height, int(round(src_width / aspect))))
    return 0, (src_height - h) // 2, src_width, h


def draw_zoom(rng: np.random.Generator, cfg: AugmentConfig, train: bool = True) -> float:
    """One batch's resize factor; 1.0 without drawing anything when the option is off."""
    if not train or cfg.resize_prob == 0 or rng.random() >= cfg.resize_prob:
        return 1.0
    return float(rng.uniform(*cfg.resize_range))


def zoomed_size(size: tuple[int, int], zoom: float) -> tuple[int, int]:
    """Batch (height, width) for a zoom: zooming out shrinks the batch (sides multiples of 32).

    No side drops below MIN_SIDE (or its unzoomed length). zoom_factor reports the zoom this rounding leaves.
    """
    if zoom >= 1:
        return size

    def shrunk(side: int) -> int:
        return min(side, max(MIN_SIDE, int(round(side * zoom / 32)) * 32))

    return shrunk(size[0]), shrunk(size[1])


def zoom_box(
    rng: np.random.Generator, src_height: int, src_width: int, aspect: float, zoom: float
) -> tuple[int, int, int, int]:
    """Crop box for a zoom: zooming in takes a 1/zoom-sized box at a random place in the centre crop."""
    x0, y0, w, h = centre_crop_box(src_height, src_width, aspect)
    if zoom <= 1:
        return x0, y0, w, h
    cw, ch = max(1, int(round(w / zoom))), max(1, int(round(h / zoom)))
    return (x0 + int(rng.integers(0, w - cw + 1)), y0 + int(rng.integers(0, h - ch + 1)), cw, ch)


def zoom_factor(geometry: Geometry, reference: Geometry) -> float:
    """How many times larger the scene appears in geometry than in reference (geometric mean of x, y)."""
    zx = (geometry.size[1] / geometry.box[2]) / (reference.size[1] / reference.box[2])
    zy = (geometry.size[0] / geometry.box[3]) / (reference.size[0] / reference.box[3])
    return math.sqrt(zx * zy)


def apply(image: np.ndarray, geometry: Geometry, nearest: bool = False) -> np.ndarray:
    """Crop, resize and flip an HxW(xC) array; masks use nearest so they stay binary."""
    x0, y0, w, h = geometry.box
    out_h, out_w = geometry.size
    crop = image[y0 : y0 + h, x0 : x0 + w]
    if nearest:
        interpolation = cv2.INTER_NEAREST
    elif out_w < w:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_LINEAR
    resized = cv2.resize(crop, (out_w, out_h), interpolation=interpolation)
    return np.ascontiguousarray(resized[:, ::-1]) if geometry.flip else resized


def apply_disparity(disparity: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Like `apply`, with values scaled by the horizontal zoom (disparity is a horizontal distance)."""
    out = apply(disparity, geometry, nearest=True)
    return out * (geometry.size[1] / geometry.box[2])


def transform_intrinsics(k: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The 3x3 pixel K of the augmented image, given the source image's K."""
    x0, y0, w, h = geometry.box
    out_h, out_w = geometry.size
    sx, sy = out_w / w, out_h / h
    fx, fy = k[0, 0] * sx, k[1, 1] * sy
    cx = (k[0, 2] - x0 + 0.5) * sx - 0.5
    cy = (k[1, 2] - y0 + 0.5) * sy - 0.5
    if geometry.flip:
        cx = out_w - 1 - cx
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def pixel_intrinsics(k_norm: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel K from the manifest's normalised (fx/W, fy/H, cx/W, cy/H)."""
    fx, fy, cx, cy = k_norm
    return np.array([[fx * width, 0.0, cx * width], [0.0, fy * height, cy * height], [0.0, 0.0, 1.0]])


def normalised_intrinsics(k: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of pixel_intrinsics."""
    return np.array([k[0, 0] / width, k[1, 1] / height, k[0, 2] / width, k[1, 2] / height], np.float32)


@dataclass(frozen=True)
class ColourJitter:
    """Factors for one sample, shared by its target and support frames so photometry stays consistent."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator, cfg: AugmentConfig) -> ColourJitter:
        if rng.random() >= cfg.jitter_prob:
            return cls()
        return cls(
            float(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)),
            float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)),
            float(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)),
            float(rng.uniform(-cfg.hue, cfg.hue)),
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Apply to float32 RGB in [0, 1], HxWx3."""
        if self == ColourJitter():
            return rgb
        # One new array, then in-place steps: the same float32 operations in the same order as
        # out = (out - mean) * contrast + mean etc., without an allocation per step (a loader hot spot).
        out: np.ndarray = (rgb * self.brightness).astype(np.float32, copy=False)
        mean = (out @ _LUMA).mean()
        out -= mean
        out *= self.contrast
        out += mean
        grey = (out @ _LUMA)[..., None]
        out -= grey
        out *= self.saturation
        out += grey
        if self.hue:
            hsv = cv2.cvtColor(np.clip(out, 0, 1, out=out), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0] + 360.0 * self.hue) % 360.0
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return np.clip(out, 0.0, 1.0, out=out)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
