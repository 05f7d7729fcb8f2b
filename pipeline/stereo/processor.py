"""The 3D-movie branch: resolve a video's stereo layout and view geometry, turn view pairs into checked disparity."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import StereoConfig
from pipeline.errors import VideoError
from pipeline.media.codecs import encode_confidence_png, encode_disparity_png, encode_jpeg, encode_mask_png
from pipeline.media.decode import FrameReader
from pipeline.sources.catalog import CatalogEntry
from pipeline.stereo.disparity import PixelChecks, StereoResult, pixel_checks, rejection_reason, summarize
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
WORKERS = max(os.cpu_count() or 1, 2)  # threads running a batch's flows and measures, one task per core


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
    """Flow both ways, checks, sky, rejection rules and PNG encoding for batches of view pairs.

    Everything runs as single-threaded tasks on WORKERS threads (OpenCV's own threads off while a batch runs):
    each DIS flow is a task, and each pair's measure (checks, sky, summary, PNGs) a task queued behind the next
    pair's flows. OpenCV's threads split one flow over the cores at a cost: two DIS medium flows at 940x400 took
    85 ms of CPU on 2 threads against 77 ms on one, and the measures would wait for cores or fight the flows for
    them. The measures run before the batch's source QA is known, since that rarely changes them: a desync drops
    the pixels, swapped eyes redo the pairs the other way round. The outputs are those of doing it all in turn,
    to the byte (DIS gives the same flow on any number of threads). benchmarks/bench_stereo.py times it against
    the two bare flow calls with OpenCV's threads on.
    """

    def __init__(self, cfg: StereoConfig, jpeg_quality: int = 95) -> None:
        self.cfg = cfg
        self.jpeg_quality = jpeg_quality
        self.flow = make_flow_backend(cfg.flow)
        self.sky = make_sky_detector(cfg.sky)
        # The time-offset check correlates patterns of motion at QA_WIDTH: the coarsest DIS is enough, on any backend.
        self.temporal_flow = DISFlow("ultrafast")

    def process(self, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray]) -> list[StereoOutcome]:
        """Outcomes in order; a batch holds consecutive pairs of one video, which the source QA votes over."""
        with _opencv_single_threaded(), ThreadPoolExecutor(WORKERS) as pool:
            # Submitted first, these never wait behind a measure that waits for them.
            prepared = [pool.submit(prepare_pair, left, right) for left, right in zip(lefts, rights)]
            temporal = pool.submit(self._temporal_flows, lefts)
            early_sky = None if self.cfg.sky.use_disparity else self.sky  # needs the left view alone
            skies = [pool.submit(early_sky, left) if early_sky is not None else None for left in lefts]
            flows_lr, flows_rl, pending = self._flows_and_measures(pool, lefts, rights, prepared, skies)
            measures = [m.result() for m in pending]
            pairs = [m.pair for m in measures]
            checks = [m.checks for m in measures]
            swapped = batch_swapped(checks, self.cfg.swap_min_fraction)
            desync = desync_scores(temporal.result(), flows_lr, checks)
            reason = self._source_reason(swapped, batch_desync(desync, self.cfg.max_desync_score))
            if swapped and self.cfg.on_swapped == "swap":  # the right view is the left eye's: read the other way
                again = [
                    pool.submit(self._measure, right, left, pair.swapped(), rl, lr, None, swapped=True)
                    for left, right, pair, lr, rl in zip(lefts, rights, pairs, flows_lr, flows_rl)
                ]
                measures = [m.result() for m in again]
        return [
            self._outcome(m, reason, self._qa_columns(m.pair, swapped, score)) for m, score in zip(measures, desync)
        ]

    def _flows_and_measures(
        self,
        pool: ThreadPoolExecutor,
        lefts: Sequence[np.ndarray],
        rights: Sequence[np.ndarray],
        prepared: Sequence[Future[PreparedPair]],
        skies: Sequence[Future[np.ndarray] | None],
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[Future[_Measure]]]:
        """Both flows of every pair, and each pair's measure as a task.

        DIS flows are tasks of their own, a pair's measure queued behind the next pair's flows so the cores
        stay busy; other backends (RAFT) take the whole batch in one call, which keeps a GPU busy.
        """
        if not isinstance(self.flow, DISFlow):
            pairs = [p.result() for p in prepared]
            flows_lr, flows_rl = stereo_flows(self.flow, lefts, [p.right_matched for p in pairs])
            measures = [
                pool.submit(self._measure, lefts[i], rights[i], pair, flows_lr[i], flows_rl[i], skies[i])
                for i, pair in enumerate(pairs)
            ]
            return flows_lr, flows_rl, measures
        # Every task waits only on tasks submitted before it, so the FIFO pool cannot deadlock.
        flows: list[tuple[Future[np.ndarray], Future[np.ndarray]]] = []
        pending: list[Future[_Measure]] = []

        def measure(i: int) -> Future[_Measure]:
            return pool.submit(self._measure_when_ready, lefts[i], rights[i], prepared[i], *flows[i], skies[i])

        for i, (left, pair) in enumerate(zip(lefts, prepared)):
            flows.append((pool.submit(self._dis_flow, left, pair), pool.submit(self._dis_flow, left, pair, True)))
            if i:  # queued behind this pair's flows, the previous pair's measure never holds a worker waiting on one
                pending.append(measure(i - 1))
        if flows:
            pending.append(measure(len(flows) - 1))
        return [lr.result() for lr, _ in flows], [rl.result() for _, rl in flows], pending

    def _dis_flow(self, left: np.ndarray, pair: Future[PreparedPair], backward: bool = False) -> np.ndarray:
        """One pair's flow from the left view to the colour-matched right one, or back."""
        right = pair.result().right_matched
        return self.flow([right], [left])[0] if backward else self.flow([left], [right])[0]

    def _measure_when_ready(
        self,
        left: np.ndarray,
        right: np.ndarray,
        pair: Future[PreparedPair],
        flow_lr: Future[np.ndarray],
        flow_rl: Future[np.ndarray],
        sky: Future[np.ndarray] | None,
    ) -> _Measure:
        return self._measure(left, right, pair.result(), flow_lr.result(), flow_rl.result(), sky)

    def _measure(
        self,
        left: np.ndarray,
        right: np.ndarray,
        pair: PreparedPair,
        flow_lr: np.ndarray,
        flow_rl: np.ndarray,
        sky: Future[np.ndarray] | None,
        *,
        swapped: bool = False,
    ) -> _Measure:
        """One pair on its own: checks (black bands left out), sky, summary, rule, and the PNGs when it passes."""
        # The match cue compares with the colour-matched right view, the one the flows were computed on.
        matched = pair.right_matched if not swapped else right
        checks = exclude_bands(pixel_checks(flow_lr, flow_rl, self.cfg, left, matched), pair, flow_lr)
        result = summarize(checks, sky.result() if sky is not None else self._sky_mask(left, checks))
        columns: dict[str, Any] = {
            "lr_pass_fraction": result.lr_pass_fraction,
            "vertical_fail_fraction": result.vertical_fail_fraction,
            "disp_range_px": result.disp_range_px,
            "sky_fraction": result.sky_fraction,
            "converted_score": converted_score(result.disparity, result.valid),
        }
        reason = rejection_reason(result, self.cfg)
        pixels = self._pixel_columns(result, left, right, swapped) if reason is None else {}
        return _Measure(pair, checks, result, reason, columns, pixels)

    def _sky_mask(self, left: np.ndarray, checks: PixelChecks) -> np.ndarray | None:
        if self.sky is None:
            return None
        return self.sky(left, checks.disparity, checks.valid) if self.cfg.sky.use_disparity else self.sky(left)

    def _pixel_columns(
        self, result: StereoResult, left: np.ndarray, right: np.ndarray, swapped: bool
    ) -> dict[str, Any]:
        """The shard's disparity, masks and confidence as PNGs, and the views it stores as JPEGs."""
        png, scale, offset = encode_disparity_png(result.disparity, result.valid)
        columns: dict[str, Any] = {
            "disparity": png,
            "disp_scale": scale,
            "disp_offset": offset,
            "valid_mask": encode_mask_png(result.valid),
            "sky_mask": encode_mask_png(result.sky_mask),
            "confidence": encode_confidence_png(result.confidence),
        }
        if swapped:  # swapped back: the shard's image is the left eye's, which came as the right view
            columns["image"] = encode_jpeg(left, self.jpeg_quality)
        if self.cfg.store_right_view:
            columns["right_image"] = encode_jpeg(right, self.jpeg_quality)
        return columns

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

    @staticmethod
    def _outcome(measure: _Measure, qa_reason: str | None, qa: dict[str, Any]) -> StereoOutcome:
        columns = {**measure.columns, **qa}
        # Source defects first: they are why a pair fails other rules too (a time offset fails the vertical check).
        reason = qa_reason or measure.reason
        if reason is not None:
            return StereoOutcome(reason, columns)
        result = measure.result
        return StereoOutcome(None, {**columns, **measure.pixels}, (result.disparity, result.valid, result.sky_mask))


_opencv_threads_lock = threading.Lock()
_opencv_threads_users = 0
_opencv_threads_saved = 1


@contextmanager
def _opencv_single_threaded() -> Iterator[None]:
    """OpenCV's threads off while any processor runs (several videos' processors can overlap), restored after."""
    global _opencv_threads_users, _opencv_threads_saved
    with _opencv_threads_lock:
        if _opencv_threads_users == 0:
            _opencv_threads_saved = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _opencv_threads_users += 1
    try:
        yield
    finally:
        with _opencv_threads_lock:
            _opencv_threads_users -= 1
            if _opencv_threads_users == 0:
                cv2.setNumThreads(_opencv_threads_saved)


@dataclass(frozen=True)
class _Measure:
    """One pair's checks and summary before the batch's source QA: its own rule's verdict, and PNGs if it passed."""

    pair: PreparedPair
    checks: PixelChecks
    result: StereoResult
    reason: str | None
    columns: dict[str, Any]  # quality columns
    pixels: dict[str, Any]  # the shard's pixel columns; empty when `reason` is set


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
