"""Sky segmentation for the 3D-movie branch: a weight-free default and a pluggable TorchScript segmenter.

The stereo branch sets sky pixels to the frame's minimum disparity, so a detector must err on the side of
"not sky": a false positive flattens real geometry, a miss only leaves noisy disparity in a textureless area.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.config import SkyConfig


class SkyDetector(Protocol):
    def __call__(
        self, image: np.ndarray, disparity: np.ndarray | None = None, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """BGR uint8 HxWx3 (left view), optional HxW disparity and validity -> HxW bool sky mask."""
        ...


class GradientSkyDetector:
    """Embedded, weight-free default: smooth runs from the top border, grown by colour, vetoed by disparity.

    In the spirit of Shen & Wang (2013) and Zhu et al.: per column, the sky estimate is the run of smooth pixels
    from the top border (at `analysis_width`, with a threshold set from the frame's own noise floor), grown
    through smooth pixels whose colour changes gradually (and stays near the estimate's Lab colour model), cut
    to what touches the top border, and finally re-decided pixel by pixel near its border, at half resolution
    when the analysis is at half or less (then upsampled), else at full resolution.
    With disparity (larger = nearer), pixels clearly nearer than the frame's farthest are never sky.
    """

    def __init__(
        self,
        *,
        analysis_width: int = 320,
        blur_sigma: float = 1.25,
        texture_floor: float = 1.1,
        texture_cap: float = 2.2,
        noise_factor: float = 2.5,
        max_mean_texture: float = 0.7,
        grow_factor: float = 1.5,
        max_colour_step: float = 2.5,
        colour_max_distance: float = 6.0,
        min_sky_fraction: float = 0.002,
        edge_margin: float = 8.0,
        disparity_margin_px: float = 1.0,
        disparity_margin_fraction: float = 0.5,
    ) -> None:
        self.analysis_width = analysis_width  # frames are analysed at this width: noise averages out
        self.blur_sigma = blur_sigma  # pre-blur of the texture measure, in analysis pixels
        # Smooth means texture below noise_factor * the frame's flattest texture (its 2nd percentile),
        # clipped to [texture_floor, texture_cap] grey levels: the cap keeps faint walls out of noisy frames.
        self.texture_floor = texture_floor
        self.texture_cap = texture_cap
        self.noise_factor = noise_factor
        # A real sky's texture sits well below the threshold; a faint texture that scrapes under it is a wall.
        self.max_mean_texture = max_mean_texture
        self.grow_factor = grow_factor  # growth tolerates this much more texture (compression banding)
        self.max_colour_step = max_colour_step  # CIE delta E between neighbours that growth may cross
        self.colour_max_distance = colour_max_distance  # Mahalanobis (Lab) to the seed's colours; 0 = off
        self.min_sky_fraction = min_sky_fraction  # smaller estimates are noise: no sky
        self.edge_margin = edge_margin  # analysis pixels around the coarse border re-decided at finer size
        # The stereo cue vetoes pixels above min + max(margin_px, margin_fraction * range) of the valid
        # disparities. Half the range, not a pixel or two: optical flow fills a textureless sky with the
        # disparity of its skyline, which passes the left-right check (DIS on the synthetic canyon: median
        # 3-11 px for a sky whose true disparity is 0, in a 0-40 px frame).
        self.disparity_margin_px = disparity_margin_px
        self.disparity_margin_fraction = disparity_margin_fraction

    def __call__(
        self, image: np.ndarray, disparity: np.ndarray | None = None, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """HxW bool sky mask of a BGR uint8 image; disparity (larger = nearer) and valid are optional."""
        _check_image(image)
        height, width = image.shape[:2]
        far = None
        if disparity is not None:
            if disparity.shape != (height, width) or (valid is not None and valid.shape != (height, width)):
                raise ValueError(
                    f"disparity {disparity.shape} and valid {None if valid is None else valid.shape} "
                    f"must match the image's {(height, width)}"
                )
            far = far_mask(disparity, valid, self.disparity_margin_px, self.disparity_margin_fraction)
        scale = min(1.0, self.analysis_width / width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Edges are re-decided at half size when the analysis is at half size or less: a quarter of the pixels,
        # and the mean of four is the steadier colour. With the band found at analysis size and _shrink, the
        # detector takes half the time at 940x400 (5.4 against 10.6 ms) and a quarter at 1880x800, and sky IoU on
        # bench_stereo's scenes rose (0.9475 -> 0.9552 on its 6, 0.9429 -> 0.9484 on 20; issue 16).
        fine_scale = 0.5 if scale <= 0.5 else 1.0
        fine, fine_far = image, far
        if fine_scale < 1:
            fine = cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
            fine_far = None if far is None else _shrink_mask(far, (width // 2, height // 2))
        small, small_far = fine, fine_far
        if scale < 1:
            small = _shrink(fine, size)
            if far is not None:  # an analysis pixel may be sky only if most of what it covers may be
                small_far = _shrink_mask(far, size)
        mask = self._detect(small, small_far)
        if not mask.any():
            return np.zeros((height, width), bool)
        mask = self._refine(fine, mask, scale / fine_scale, fine_far)
        if fine_scale == 1:
            return mask
        mask = cv2.resize(mask.view(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR) > 0
        # Upsampling may step over the stereo veto's full-size pixels, and cut off what then lies beyond them.
        return mask if far is None else _touching_top(mask & far)

    def _refine(self, image: np.ndarray, mask: np.ndarray, scale: float, far: np.ndarray | None) -> np.ndarray:
        """The coarse mask (at scale of the image) at the image's size, its border re-decided at that size.

        The texture measure stops the coarse estimate a few analysis pixels short of every border: the pixels
        within edge_margin of it are re-decided from their colours.
        """
        height, width = image.shape[:2]
        radius = int(np.ceil(self.edge_margin / scale))
        if scale < 1:
            mask, inner, band = _upsampled_edge_band(mask, radius * scale, (width, height))
        else:
            inner, band = _edge_band(mask, radius)
        return _touching_top(refine_edges(image, mask, inner, band, allowed=far, max_step=self.max_colour_step))

    def _detect(self, image: np.ndarray, far: np.ndarray | None) -> np.ndarray:
        """Coarse sky mask at analysis size."""
        height, width = image.shape[:2]
        empty = np.zeros((height, width), bool)
        texture = texture_map(image, self.blur_sigma)
        threshold = float(np.clip(self.noise_factor * np.percentile(texture, 2), self.texture_floor, self.texture_cap))
        smooth = texture < threshold
        if far is not None:
            smooth &= far
        # A one-pixel speck of noise must not end a column's run.
        smooth = cv2.morphologyEx(smooth.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) > 0
        if far is not None:
            smooth &= far
        seed = np.logical_and.accumulate(smooth, axis=0)  # per column, the smooth run from the top border
        seed = cv2.morphologyEx(seed.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
        min_pixels = max(4, int(self.min_sky_fraction * height * width))
        if seed.sum() < min_pixels or texture[seed].mean() > self.max_mean_texture * threshold:
            return empty
        # Grow through smooth pixels whose colour changes gradually: that follows a sky's gradient down to
        # the horizon and across compression banding, where the column runs stop, without entering a wall.
        lab = cv2.cvtColor(cv2.GaussianBlur(image, (0, 0), 1.0).astype(np.float32) * (1.0 / 255.0), cv2.COLOR_BGR2LAB)
        grown = (colour_step(lab) < self.max_colour_step) & (texture < self.grow_factor * threshold)
        if self.colour_max_distance > 0:  # a per-pixel distance: needed only where growth is still possible
            grown[grown] = _mahalanobis(lab[grown], lab[seed]) < self.colour_max_distance
        if far is not None:
            grown &= far
        sky = _connected_to(grown | seed, seed)
        sky = cv2.morphologyEx(sky.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
        sky = _fill_small_holes(sky, max_area=max(4, height * width // 500))
        sky = _touching_top(sky)
        return sky if sky.sum() >= min_pixels else empty


def colour_step(lab: np.ndarray) -> np.ndarray:
    """Largest CIE Lab difference (delta E) between each pixel and its right or lower neighbour."""
    dx, dy = _neighbour_steps(lab)
    step = np.maximum(dx, dy)
    step[:, 1:] = np.maximum(step[:, 1:], dx[:, :-1])  # and the left and upper ones: edges are symmetric
    step[1:] = np.maximum(step[1:], dy[:-1])
    return step


def _neighbour_steps(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delta E from each pixel to its right (dx) and lower (dy) neighbour; 0 where there is none."""
    dx = np.zeros(lab.shape[:2], np.float32)
    dy = np.zeros(lab.shape[:2], np.float32)
    # Channel planes, not interleaved pixels: twice as fast as an einsum over the last axis, and the squares
    # add up in the same order (L, a, b), so the distances are the same to the bit.
    for plane in cv2.split(lab):
        step = plane[:, 1:] - plane[:, :-1]
        dx[:, :-1] += step * step
        step = plane[1:] - plane[:-1]
        dy[:-1] += step * step
    return np.sqrt(dx, out=dx), np.sqrt(dy, out=dy)


def texture_map(image: np.ndarray, blur_sigma: float = 1.25) -> np.ndarray:
    """Local texture in grey levels: smoothed |Laplacian| of the blurred grey image.

    Second differences, not the gradient magnitude: a rendered or real sky brightens smoothly towards
    the horizon by about a grey level per pixel, as steep as fine texture, but its curvature is near zero.
    """
    grey: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    # Odd reflection continues a gradient linearly past the border; an even one would fold it into a ridge
    # along the top rows, exactly where every column's sky run starts.
    pad = int(np.ceil(3 * (blur_sigma + 1.5))) + 1
    grey = np.pad(grey, pad, mode="reflect", reflect_type="odd")
    grey = cv2.GaussianBlur(grey, (0, 0), blur_sigma)  # also hides 8-bit quantisation steps
    lap = np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3))
    return cv2.GaussianBlur(lap, (0, 0), 1.5)[pad:-pad, pad:-pad]


def refine_edges(
    image: np.ndarray,
    mask: np.ndarray,
    inner: np.ndarray,
    band: np.ndarray,
    allowed: np.ndarray | None = None,
    max_step: float = 2.5,
) -> np.ndarray:
    """Re-decide the band's pixels around a coarse mask: grow its certain interior over colour-continuous steps.

    A sky changes colour by well under max_step (CIE Lab delta E) from one pixel to the next, while a border
    with a wall, a tree or a roof is a jump, so growing from the certain interior stops at the true edge.
    Pixels outside `allowed` (the stereo cue) are never added. `inner` and `band` are the coarse mask's
    (_edge_band); the mask is returned as it is when there is no interior or nothing to re-decide.
    """
    if allowed is not None:
        band = band & allowed
    if not inner.any() or not band.any():
        return mask
    # Work inside the band's bounding box (plus one pixel): most of the frame is far from any sky border.
    y0, y1, x0, x1 = _bounding_box(band, pad=1)
    # A median keeps edges where they are but stops sensor noise from ending the growth inside the sky.
    roi = cv2.medianBlur(np.ascontiguousarray(image[y0:y1, x0:x1]), 3)
    lab = cv2.cvtColor(roi.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_BGR2LAB)
    seed, grow = inner[y0:y1, x0:x1], band[y0:y1, x0:x1]
    # One delta E per neighbour pair serves both passes below: it is symmetric, and computing it once
    # (instead of once per direction and pass) is most of this function's speed.
    dx, dy = _neighbour_steps(lab)
    right_close, down_close = dx < max_step, dy < max_step
    # Pixels with no jump to any neighbour, connected to the interior: the bulk of the growth in one pass.
    smooth = right_close & down_close
    smooth[:, 1:] &= right_close[:, :-1]  # and to the left and upper neighbours
    smooth[1:] &= down_close[:-1]
    sky = _connected_to(seed | (grow & smooth), seed)
    # That leaves out the last pixels before each jump (a jump marks both its sides, JPEG ringing widens
    # it); take back, a pixel at a time, those whose colour is still close to a sky neighbour's.
    for _ in range(4):
        sky |= _reached(sky, right_close, down_close) & grow
    out = inner.copy()
    out[y0:y1, x0:x1] = sky
    return out


def _edge_band(mask: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask's pixels more than radius inside its border, and the others within radius of that border.

    Distance transforms, not erode/dilate with a disk: their cost does not grow with the radius. They run on
    the whole frame, not on a crop around the mask: this OpenCV build's transform is not exact (a crop moves
    some distances by an ulp), which could flip a pixel that sits at the radius and change the output.
    """
    if radius < 1:  # nothing to re-decide: the mask is its own interior
        return mask.copy(), np.zeros_like(mask)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)
    inner = inside > radius
    return inner, ~inner & (outside <= radius)


def _upsampled_edge_band(
    mask: np.ndarray, radius: float, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A coarse mask at full size (width, height) and its _edge_band there, radius in the coarse mask's pixels.

    The distances are taken at the coarse size and upsampled as one signed distance (positive inside), whose
    zero crossing is the coarse mask's linear upsampling: the two full-size transforms it replaces were a
    quarter of the detector's time at 940x400 (and sky IoU on bench_stereo's scenes rose 0.9475 -> 0.9511).
    """
    inside = cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~mask).view(np.uint8), cv2.DIST_L2, 3)
    signed = cv2.resize(np.subtract(inside, outside, out=inside), size, interpolation=cv2.INTER_LINEAR)
    inner = signed > radius
    return signed > 0, inner, ~inner & (signed >= -radius)


def _bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[int, int, int, int]:
    """Rows y0:y1 and columns x0:x1 of the non-empty mask's bounding box, grown by pad and clipped."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    height, width = mask.shape
    return max(y - pad, 0), min(y + h + pad, height), max(x - pad, 0), min(x + w + pad, width)


def _reached(sky: np.ndarray, right_close: np.ndarray, down_close: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour in sky whose colour is within the step: right_close[y, x] is for (y, x)-(y, x+1)."""
    across, along = right_close[:, :-1], down_close[:-1]
    reached = np.zeros_like(sky)
    reached[:, 1:] |= sky[:, :-1] & across  # from the left neighbour
    reached[:, :-1] |= sky[:, 1:] & across  # from the right one
    reached[1:] |= sky[:-1] & along  # from above
    reached[:-1] |= sky[1:] & along  # from below
    return reached


def far_mask(
    disparity: np.ndarray, valid: np.ndarray | None = None, margin_px: float = 1.0, margin_fraction: float = 0.5
) -> np.ndarray:
    """Pixels that may be sky by the stereo cue: invalid, or within a margin of the frame's minimum disparity."""
    disparity = np.asarray(disparity, np.float32)
    ok = np.isfinite(disparity)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if not ok.any():
        return np.ones(disparity.shape, bool)
    # Percentiles, not min/max: a few outliers past the LR check must not move the reference.
    low, high = np.percentile(disparity[ok], [1, 99])
    limit = low + max(margin_px, margin_fraction * (high - low))
    # Invalid pixels carry no evidence: textureless sky often fails the left-right check.
    return ~ok | (disparity <= limit)


def _shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """INTER_AREA to size (width, height), by exact halvings first: OpenCV's area filter has a fast path for
    whole factors only, so 940 -> 470 -> 320 takes half the time of 940 -> 320 (1.4 ms of 10 at 940x400)."""
    while image.shape[1] >= 2 * size[0] and image.shape[0] >= 2 * size[1]:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask at size (width, height): true where most of what a pixel covers is."""
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5


def _mahalanobis(points: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Distance of each Lab point to the Gaussian fitted to sample."""
    mean = sample.mean(axis=0)
    cov = np.cov(sample, rowvar=False) if len(sample) > 3 else np.zeros((3, 3))
    # A flat sky has a near-singular covariance; the floor (a few Lab units) keeps distances sane.
    cov = np.atleast_2d(cov) + np.eye(3, dtype=np.float64) * 4.0
    diff = (points - mean).astype(np.float64)
    inverse = np.linalg.inv(cov)
    # The quadratic form term by term, in the order (and so with the rounding) of
    # einsum("ij,jk,ik->i"), at a quarter of its cost.
    total = np.zeros(len(diff))
    for j in range(3):
        for k in range(3):
            total += diff[:, j] * inverse[j, k] * diff[:, k]
    return np.sqrt(total)


def _connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Components of mask that overlap seed."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[labels[seed & mask]] = True  # repeated labels are harmless: no np.unique (a sort) needed
    keep[0] = False
    return keep[labels]


def _touching_top(mask: np.ndarray) -> np.ndarray:
    """Components of mask that touch the top row: sky is open to the top border."""
    out = np.zeros_like(mask)
    if not mask[0].any():
        return out
    # Labelling only the box around the mask's pixels leaves its components as they are, and is cheaper.
    _, y1, x0, x1 = _bounding_box(mask)
    crop = mask[:y1, x0:x1]
    top = np.zeros_like(crop)
    top[0] = crop[0]
    out[:y1, x0:x1] = _connected_to(crop, top)
    return out


def _fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill enclosed non-sky specks (compression blocks, a bird) of at most max_area pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    height, width = mask.shape
    x, y, w, h, area = (stats[:, i] for i in range(5))
    touches_border = (x == 0) | (y == 0) | (x + w == width) | (y + h == height)
    fill = (area <= max_area) & ~touches_border
    fill[0] = False  # label 0 is the sky itself
    return mask | fill[labels]


class TorchScriptSkySegmenter:
    """A pretrained semantic segmenter exported to TorchScript, loaded from a local file."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        sky_class_id: int = 2,
        input_size: tuple[int, int] = (512, 512),
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        device: str = "auto",
    ) -> None:
        import torch

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"sky segmenter model not found: {path} (sky.model_path must be a local "
                "TorchScript file; weights are never downloaded at run time)"
            )
        from pipeline.torch_compat import resolve_device  # torch only when this backend is used

        self.device = resolve_device(device)
        try:
            with warnings.catch_warnings():
                # Recent torch (2.13 here) warns that TorchScript is deprecated; it still loads it fine.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=self.device)
        except RuntimeError as exc:
            raise ValueError(f"cannot load {path} as a TorchScript model: {exc}") from exc
        self.model.eval()
        self.sky_class_id = sky_class_id
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __call__(
        self, image: np.ndarray, disparity: np.ndarray | None = None, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """HxW bool sky mask; the segmenter ignores the stereo cue."""
        return self.segment_batch([image])[0]

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Sky masks of BGR uint8 images (any sizes), run through the model in one batch."""
        import torch

        if not images:
            return []
        for image in images:
            _check_image(image)
        width, height = self.input_size
        rgb = np.stack([cv2.cvtColor(_resize(im, (width, height)), cv2.COLOR_BGR2RGB) for im in images])
        with torch.inference_mode():
            batch = torch.from_numpy(rgb).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            batch = (batch - self._mean) / self._std
            out = self.model(batch)
            if isinstance(out, dict):  # torchvision segmentation models return {"out": logits, "aux": ...}
                if "out" not in out:
                    raise ValueError(f"segmenter returned a dict without 'out' (keys: {sorted(out)})")
                out = out["out"]
            elif isinstance(out, (tuple, list)) and out:  # (logits, aux...) from other exporters
                out = out[0]
            if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != len(images):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"segmenter output must be N x C x h x w logits for N={len(images)}, got {shape}")
            if not 0 <= self.sky_class_id < out.shape[1]:
                raise ValueError(f"sky_class_id {self.sky_class_id} is not among the model's {out.shape[1]} classes")
            labels = out.argmax(dim=1).eq(self.sky_class_id).to(torch.uint8).cpu().numpy()
        return [
            cv2.resize(lab, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
            for lab, im in zip(labels, images)
        ]


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    shrinking = image.shape[1] > size[0] or image.shape[0] > size[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a BGR uint8 HxWx3 image, got {image.dtype} {image.shape}")


def make_sky_detector(cfg: SkyConfig) -> SkyDetector | None:
    """The detector the config asks for; None when sky detection is off."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "gradient":
        return GradientSkyDetector()
    if cfg.backend == "torchscript":
        if not cfg.model_path:
            raise ValueError(
                "sky.backend 'torchscript' needs sky.model_path: a local TorchScript segmenter file "
                "(e.g. an ADE20K or Cityscapes model exported with torch.jit.script or trace)"
            )
        return TorchScriptSkySegmenter(
            cfg.model_path, sky_class_id=cfg.sky_class_id, input_size=cfg.input_size, mean=cfg.mean, std=cfg.std
        )
    raise ValueError(f"unknown sky backend {cfg.backend!r}; expected gradient, torchscript or none")
