"""The 3D-movie branch: resolve a video's stereo layout and view geometry, turn view pairs into checked disparity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import StereoConfig
from pipeline.errors import VideoError
from pipeline.media.codecs import encode_confidence_png, encode_disparity_png, encode_jpeg, encode_mask_png
from pipeline.media.decode import FrameReader
from pipeline.sources.catalog import CatalogEntry
from pipeline.stereo.disparity import PixelChecks, pixel_checks, rejection_reason, summarize
from pipeline.stereo.optical_flow import DISFlow, make_flow_backend, stereo_flows
from pipeline.stereo.packing import (
    ViewGeometry,
    apply_geometry,
    detect_layout,
    find_letterbox,
    looks_stereo,
    plan_view_geometry,
    split_views,
)
from pipeline.stereo.qa import (
    PreparedPair,
    batch_desync,
    batch_swapped,
    converted_score,
    desync_scores,
    exclude_bands,
    prepare_pair,
    qa_view,
    temporal_neighbours,
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
    # Quality columns, and pixels when kept: `image` too when the views were swapped back (the left eye's came right).
    columns: dict[str, Any] = field(default_factory=dict)
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
    if cfg.max_upscale is not None and geometry.disparity_scale > cfg.max_upscale:
        box = geometry.box
        raise VideoError(
            "stereo_view_too_small",
            f"its {box.width}x{box.height} view (after bars and crop) would be enlarged "
            f"{geometry.disparity_scale:.2f}x to {geometry.output_size[0]}x{geometry.output_size[1]}, "
            f"over stereo.max_upscale {cfg.max_upscale}",
        )
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
        # The time-offset check correlates patterns of motion at QA_WIDTH: the coarsest DIS is enough, on any backend.
        self.temporal_flow = DISFlow("ultrafast")

    def process(self, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray]) -> list[StereoOutcome]:
        """Outcomes in order; a batch holds consecutive pairs of one video, which the source QA votes over."""
        pairs = [prepare_pair(left, right) for left, right in zip(lefts, rights)]
        matched = [p.right_matched for p in pairs]
        flows_lr, flows_rl = stereo_flows(self.flow, lefts, matched)
        checks = self._checks(lefts, matched, pairs, flows_lr, flows_rl)
        swapped = batch_swapped(checks, self.cfg.swap_min_fraction)
        desync = desync_scores(self._temporal_flows(lefts), flows_lr, checks)
        reason = self._source_reason(swapped, batch_desync(desync, self.cfg.max_desync_score))
        if swapped and self.cfg.on_swapped == "swap":  # the right view is the left eye's: read the pair the other way
            lefts, rights, flows_lr, flows_rl = rights, lefts, flows_rl, flows_lr
            pairs = [p.swapped() for p in pairs]
            checks = self._checks(lefts, rights, pairs, flows_lr, flows_rl)
        return [
            self._one(left, right, check, reason, self._qa_columns(p, swapped, score))
            for left, right, check, p, score in zip(lefts, rights, checks, pairs, desync)
        ]

    def _checks(
        self,
        lefts: Sequence[np.ndarray],
        rights: Sequence[np.ndarray],
        pairs: Sequence[PreparedPair],
        flows_lr: Sequence[np.ndarray],
        flows_rl: Sequence[np.ndarray],
    ) -> list[PixelChecks]:
        """Per-pixel checks of each pair, black bands (floating windows, pillarboxes) left out of the valid pixels."""
        return [
            exclude_bands(pixel_checks(lr, rl, self.cfg, left, right), p, lr)
            for left, right, p, lr, rl in zip(lefts, rights, pairs, flows_lr, flows_rl)
        ]

    def _source_reason(self, swapped: bool, desync: bool) -> str | None:
        if swapped and self.cfg.on_swapped == "reject":
            return "stereo_swapped"
        return "stereo_desync" if desync else None

    def _temporal_flows(self, lefts: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Each left view's flow to its neighbour in the batch, small: what the time-offset check compares with."""
        neighbours = temporal_neighbours(len(lefts))
        if not neighbours:
            return [None] * len(lefts)
        small = [qa_view(left) for left in lefts]
        return list(self.temporal_flow(small, [small[j] for j in neighbours]))

    @staticmethod
    def _qa_columns(pair: PreparedPair, swapped: bool, desync: float | None) -> dict[str, Any]:
        return {
            "stereo_swapped": swapped,
            "stereo_desync_score": desync,
            "stereo_color_gap": pair.color_gap,
            "stereo_float_window_px": pair.float_window_px,
        }

    def _one(
        self, left: np.ndarray, right: np.ndarray, checks: PixelChecks, qa_reason: str | None, qa: dict[str, Any]
    ) -> StereoOutcome:
        sky = None
        if self.sky is not None:
            sky = self.sky(left, checks.disparity, checks.valid) if self.cfg.sky.use_disparity else self.sky(left)
        result = summarize(checks, sky)
        columns: dict[str, Any] = {
            "lr_pass_fraction": result.lr_pass_fraction,
            "vertical_fail_fraction": result.vertical_fail_fraction,
            "disp_range_px": result.disp_range_px,
            "sky_fraction": result.sky_fraction,
            "converted_score": converted_score(result.disparity, result.valid),
            **qa,
        }
        # Source defects first: they are why a pair fails other rules too (a time offset fails the vertical check).
        reason = qa_reason or rejection_reason(result, self.cfg)
        if reason is not None:
            return StereoOutcome(reason, columns)
        png, scale, offset = encode_disparity_png(result.disparity, result.valid)
        columns.update(
            disparity=png,
            disp_scale=scale,
            disp_offset=offset,
            valid_mask=encode_mask_png(result.valid),
            sky_mask=encode_mask_png(result.sky_mask),
            confidence=encode_confidence_png(result.confidence),
        )
        if qa["stereo_swapped"]:  # swapped back: the shard's image is the left eye's, which came as the right view
            columns["image"] = encode_jpeg(left, self.jpeg_quality)
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
