"""The 3D-movie branch: resolve a video's stereo layout and view geometry, turn view pairs into checked disparity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import StereoConfig
from pipeline.errors import VideoError
from pipeline.media.codecs import encode_disparity_png, encode_jpeg, encode_mask_png
from pipeline.media.decode import FrameReader
from pipeline.sources.catalog import CatalogEntry
from pipeline.stereo.disparity import pixel_checks, rejection_reason, summarize
from pipeline.stereo.optical_flow import make_flow_backend, stereo_flows
from pipeline.stereo.packing import (
    ViewGeometry,
    apply_geometry,
    detect_layout,
    find_letterbox,
    looks_stereo,
    plan_view_geometry,
    split_views,
)
from pipeline.stereo.sky import make_sky_detector

PROBE_FRAMES = 8  # frames looked at to decide the layout and the letterbox


@dataclass(frozen=True)
class StereoSetup:
    layout: str  # one of the stereo layouts (never "mono" or "auto")
    geometry: ViewGeometry  # crop and resize applied to both views

    def views(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left, right = split_views(frame, self.layout)
        return apply_geometry(left, self.geometry), apply_geometry(right, self.geometry)


@dataclass
class StereoOutcome:
    reason: str | None  # a rejection rule that fired, or None when the frame is kept
    columns: dict[str, Any] = field(default_factory=dict)  # quality columns (and pixels when kept)
    preview: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # disparity, valid, sky


def resolve_stereo_setup(
    video_path: str | Path, entry: CatalogEntry, start_s: float, end_s: float, size: tuple[int, int], cfg: StereoConfig
) -> StereoSetup | None:
    """Layout (checked against the frames) and view geometry; None for a mono video given as `auto`."""
    frames = _probe_frames(video_path, start_s, end_s, size)
    layout = entry.layout
    if layout == "auto":
        layout = detect_layout(frames).layout
        if layout == "mono":
            return None
    else:
        stereo, score = looks_stereo(frames, layout)
        if not stereo:
            raise VideoError(
                "not_stereo",
                f"declared {layout}, but the two halves of its frames are not views of "
                f"one scene (similarity {score:.2f}): a mono video?",
            )
    views = [split_views(f, layout)[0] for f in frames]
    height, width = views[0].shape[:2]
    letterbox = find_letterbox(views) if cfg.letterbox else None
    geometry = plan_view_geometry(width, height, letterbox=letterbox, crop=cfg.crop, output_size=cfg.output_size)
    return StereoSetup(layout, geometry)


def _probe_frames(video_path: str | Path, start_s: float, end_s: float, size: tuple[int, int]) -> list[np.ndarray]:
    span = max(end_s - start_s, 1e-3)
    reader = FrameReader(video_path, fps=PROBE_FRAMES / span, start_s=start_s, end_s=end_s, size=size)
    return [f.image.copy() for f in reader][:PROBE_FRAMES]


class StereoProcessor:
    """Flow both ways, checks, sky, rejection rules and PNG encoding for batches of view pairs."""

    def __init__(self, cfg: StereoConfig, jpeg_quality: int = 95) -> None:
        self.cfg = cfg
        self.jpeg_quality = jpeg_quality
        self.flow = make_flow_backend(cfg.flow)
        self.sky = make_sky_detector(cfg.sky)

    def process(self, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray]) -> list[StereoOutcome]:
        flows_lr, flows_rl = stereo_flows(self.flow, lefts, rights)
        return [self._one(left, right, lr, rl) for left, right, lr, rl in zip(lefts, rights, flows_lr, flows_rl)]

    def _one(self, left: np.ndarray, right: np.ndarray, flow_lr: np.ndarray, flow_rl: np.ndarray) -> StereoOutcome:
        checks = pixel_checks(flow_lr, flow_rl, self.cfg)
        sky = None
        if self.sky is not None:
            sky = self.sky(left, checks.disparity, checks.valid) if self.cfg.sky.use_disparity else self.sky(left)
        result = summarize(checks, sky)
        columns: dict[str, Any] = {
            "lr_pass_fraction": result.lr_pass_fraction,
            "vertical_fail_fraction": result.vertical_fail_fraction,
            "disp_range_px": result.disp_range_px,
            "sky_fraction": result.sky_fraction,
        }
        reason = rejection_reason(result, self.cfg)
        if reason is not None:
            return StereoOutcome(reason, columns)
        png, scale, offset = encode_disparity_png(result.disparity, result.valid)
        columns.update(
            disparity=png,
            disp_scale=scale,
            disp_offset=offset,
            valid_mask=encode_mask_png(result.valid),
            sky_mask=encode_mask_png(result.sky_mask),
        )
        if self.cfg.store_right_view:
            columns["right_image"] = encode_jpeg(right, self.jpeg_quality)
        return StereoOutcome(None, columns, (result.disparity, result.valid, result.sky_mask))


def crop_intrinsics(
    entry: CatalogEntry, view_size: tuple[int, int], geometry: ViewGeometry
) -> tuple[float | None, float | None, float | None, float | None]:
    """Catalog intrinsics (normalised to the full view) renormalised to the cropped view; resizing keeps them."""
    fx, fy, cx, cy = entry.fx, entry.fy, entry.cx, entry.cy
    if fx is None:
        return None, None, None, None
    if fy is None or cx is None or cy is None:  # read_catalog rejects such rows; an entry built in code may not
        raise ValueError(f"{entry.video_id}: intrinsics need all of fx, fy, cx, cy or none")
    width, height = view_size
    box = geometry.box
    return (
        fx * width / box.width,
        fy * height / box.height,
        (cx * width - box.x) / box.width,
        (cy * height - box.y) / box.height,
    )
