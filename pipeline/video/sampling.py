"""The per-video sampling stage: decode at the target fps, cut into clips, filter, dedup, split, JPEG-encode."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import CurateConfig
from pipeline.errors import VideoError
from pipeline.io.parquet_writer import PartWriter
from pipeline.media.codecs import encode_jpeg
from pipeline.media.decode import FrameReader, decoded_digest, deinterlace_parity, output_size
from pipeline.media.probe import VideoInfo
from pipeline.schema import STEREO_QUALITY_COLUMNS
from pipeline.sources.catalog import CatalogEntry
from pipeline.sources.recipe import recipe_digests
from pipeline.stereo.packing import split_views
from pipeline.stereo.processor import StereoOutcome, StereoProcessor, crop_intrinsics, resolve_stereo_setup
from pipeline.video.phash import HashIndex, phash
from pipeline.video.previews import PREVIEW_CLIPS, PreviewFrame
from pipeline.video.quality import MotionMeter, analysis_view, measure_quality, quality_drop_reason
from pipeline.video.record import AppliedSampling, RecipeCheck
from pipeline.video.shots import CutDetector

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class SamplingPlan:
    start_s: float
    end_s: float
    size: tuple[int, int]  # decoded frame (width, height)
    fps: float
    decimate: tuple[int, int] | None  # keep N frames of every M, or None
    boundary_s: float  # train before, val after
    gap_frames: int  # frames dropped on each side of the boundary
    dedup_separation_s: float  # within-video duplicates count only this far apart in time
    trim_end_s: float  # the data's end minus end_s

    @property
    def frame_s(self) -> float:
        return 1.0 / self.fps

    @property
    def gap_s(self) -> float:
        return self.gap_frames / self.fps

    def applied(self) -> AppliedSampling:
        return AppliedSampling(
            trim_start_s=self.start_s,
            trim_end_s=self.trim_end_s,
            split_gap_frames=self.gap_frames,
            dedup_separation_s=self.dedup_separation_s,
        )


@dataclass
class SampleCounts:
    decoded: int = 0
    kept: int = 0
    clips: int = 0
    layout: str = "mono"
    dropped: collections.Counter = field(default_factory=collections.Counter)
    warning: str | None = None
    previews: list[PreviewFrame] = field(default_factory=list)  # a few kept frames for the contact sheet
    recipe: RecipeCheck | None = None  # rebuilding a recipe: how its frames of this video fared


def sample_id(dataset: str, video_id: str, frame_index: int) -> str:
    return f"{dataset}/{video_id}/{frame_index:08d}"


def plan_sampling(info: VideoInfo, entry: CatalogEntry, cfg: CurateConfig, *, stereo: bool = False) -> SamplingPlan:
    """Trims, fps, decimation, frame size and split boundary for one video; raises VideoError(too_short).

    Stereo videos are sampled MiDaS-style: `stereo.clip_frames` frames over `stereo.clip_span_s`, then a jump of
    `stereo.jump_s`; they are decoded at full size because the view geometry crops and resizes each view.
    """
    if stereo:
        fps = cfg.stereo.clip_frames / cfg.stereo.clip_span_s
        decimate: tuple[int, int] | None = (
            cfg.stereo.clip_frames,
            max(cfg.stereo.clip_frames, round((cfg.stereo.clip_span_s + cfg.stereo.jump_s) * fps)),
        )
    else:
        fps = cfg.sample.fps
        decimate = (cfg.sample.decimate.keep, cfg.sample.decimate.every) if cfg.sample.decimate else None
    trim = cfg.sample.trim
    explicit = entry.trim_start_s is not None or entry.trim_end_s is not None
    # Catalog trims are honoured exactly; the config default shrinks for short videos.
    duration = info.usable_duration_s  # a file cut short is planned on what it holds, not on its header
    head = entry.trim_start_s if entry.trim_start_s is not None else min(trim.head_s, trim.max_fraction * duration)
    tail = entry.trim_end_s if entry.trim_end_s is not None else min(trim.tail_s, trim.max_fraction * duration)
    # Snap the start onto the sampling grid so frame_index == round(timestamp_s * fps) names one picture.
    start, end = math.ceil(head * fps - 1e-6) / fps, duration - tail
    if end - start < 1.0 / fps:
        source = "catalog" if explicit else "config"
        raise VideoError(
            "too_short",
            f"video lasts {duration:.1f}s, shorter than its {source} trims ({head:.1f}s head + {tail:.1f}s tail)",
        )
    width, height = info.display_size
    # Like the trims, the split gap and the dedup separation are sized for long videos: shrink them for short ones.
    sampled_frames = (end - start) * fps
    return SamplingPlan(
        start_s=start,
        end_s=end,
        fps=fps,
        decimate=decimate,
        size=(width, height) if stereo else output_size(width, height, cfg.sample.max_height),
        boundary_s=start + cfg.split.train_fraction * (end - start),
        gap_frames=min(cfg.split.gap_frames, int(cfg.split.gap_max_fraction * sampled_frames)),
        dedup_separation_s=round(min(cfg.dedup.min_separation_s, cfg.dedup.separation_max_fraction * (end - start)), 6),
        trim_end_s=duration - end,
    )


class _ClipTracker:
    """Numbers clips: a new one starts at a scene cut, a new decimation window, or the split boundary."""

    def __init__(self, plan: SamplingPlan) -> None:
        self.decimate = plan.decimate
        self.first_index = int(round(plan.start_s * plan.fps))
        self.clip_id = -1
        self._window: int | None = None
        self._split: str | None = None

    def update(self, index: int, split: str, cut: bool) -> tuple[int, bool]:
        """(clip_id, inside the keep window) for the frame at `index`."""
        window, inside = 0, True
        if self.decimate:
            keep, every = self.decimate
            window, position = divmod(index - self.first_index, every)
            inside = position < keep
        if cut or window != self._window or split != self._split or self.clip_id < 0:
            self.clip_id += 1
        self._window, self._split = window, split
        return self.clip_id, inside


@dataclass
class _Pending:
    """A decoded frame on its way to the frame stats (and, when kept, the shards), in decode order."""

    row: dict[str, Any]
    image: np.ndarray | None = None  # None: dropped before any check that could wait
    right: np.ndarray | None = None  # a stereo candidate's right view, until its batch is checked
    outcome: StereoOutcome | None = None

    @property
    def awaiting_checks(self) -> bool:
        return self.right is not None and self.outcome is None

    @property
    def ready(self) -> bool:
        return self.image is None or self.outcome is not None


class _RowSink:
    """Writes frame-stats rows in decode order; stereo candidates wait here until their batch is processed."""

    def __init__(
        self,
        entry: CatalogEntry,
        shards: PartWriter,
        frames: PartWriter,
        counts: SampleCounts,
        processor: StereoProcessor | None,
        batch_size: int,
        jpeg_quality: int,
        max_previews: int = PREVIEW_CLIPS,
    ):
        self.entry, self.shards, self.frames, self.counts = entry, shards, frames, counts
        self.processor, self.batch_size, self.jpeg_quality = processor, batch_size, jpeg_quality
        self.max_previews = max_previews
        self._queue: collections.deque[_Pending] = collections.deque()
        self._waiting = 0

    def drop(self, row: dict[str, Any], reason: str) -> None:
        row["drop_reason"] = reason
        self._queue.append(_Pending(row))
        self._drain()

    def keep(self, row: dict[str, Any], image: np.ndarray, right: np.ndarray | None = None) -> None:
        """Keep a mono frame now, or queue a stereo pair for the checks (which may still reject it)."""
        self._queue.append(_Pending(row, image, right, None if right is not None else StereoOutcome(None)))
        if right is not None:
            self._waiting += 1
            if self._waiting >= self.batch_size:
                self.flush()
        self._drain()

    def flush(self) -> None:
        waiting = [item for item in self._queue if item.awaiting_checks]
        if waiting:
            assert self.processor is not None, "stereo pairs are queued only when a processor exists"
            outcomes = self.processor.process([i.image for i in waiting], [i.right for i in waiting])  # type: ignore[misc]  # awaiting_checks: both set
            for item, outcome in zip(waiting, outcomes):
                item.outcome = outcome
            self._waiting = 0
        self._drain()

    def _drain(self) -> None:
        while self._queue and self._queue[0].ready:
            item = self._queue.popleft()
            row = item.row
            if item.outcome is not None and item.image is not None:
                row.update({k: v for k, v in item.outcome.columns.items() if k in STEREO_QUALITY_COLUMNS})
                if item.outcome.reason is not None:
                    row["drop_reason"] = item.outcome.reason
                else:
                    self._write_kept(row, item.image, item.outcome)
            if row.get("drop_reason"):
                self.counts.dropped[row["drop_reason"]] += 1
            self.frames.add(row)

    def _write_kept(self, row: dict[str, Any], image: np.ndarray, outcome: StereoOutcome) -> None:
        row["kept"] = True
        self.counts.kept += 1
        shard_row = _shard_row(row, self.entry, image, self.jpeg_quality)
        shard_row.update(outcome.columns)
        if self.processor is not None:
            shard_row["layout"] = self.counts.layout
        self.shards.add(shard_row)
        previews = self.counts.previews
        if len(previews) < self.max_previews and (not previews or previews[-1].clip_id != row["clip_id"]):
            previews.append(PreviewFrame(row["clip_id"], image.copy(), outcome.preview))


def sample_video(
    video_path: str | Path,
    entry: CatalogEntry,
    info: VideoInfo,
    plan: SamplingPlan,
    cfg: CurateConfig,
    shards: PartWriter,
    frames: PartWriter,
    *,
    progress: ProgressFn | None = None,
) -> SampleCounts:
    """Stream the video once; every decoded frame becomes a stats row, every kept one also a shard row.

    `plan` is plan_sampling's for the catalog's layout; a video declared `auto` that turns out mono is re-planned
    as mono (its only second plan).
    """
    counts = SampleCounts()
    setup = None
    if entry.layout != "mono":
        setup = resolve_stereo_setup(video_path, entry, plan.start_s, plan.end_s, plan.size, cfg.stereo)
        if setup is None:
            plan = plan_sampling(info, entry, cfg, stereo=False)
    counts.layout = setup.layout if setup else "mono"
    processor = StereoProcessor(cfg.stereo, cfg.sample.jpeg_quality) if setup else None
    sink = _RowSink(entry, shards, frames, counts, processor, cfg.stereo.flow.batch_size, cfg.sample.jpeg_quality)
    if setup is not None:
        view_size = split_views(np.zeros((plan.size[1], plan.size[0], 3), np.uint8), setup.layout)[0].shape[1::-1]
        fx, fy, cx, cy = crop_intrinsics(entry, view_size, setup.geometry)
        entry = dataclasses.replace(entry, fx=fx, fy=fy, cx=cx, cy=cy)
        sink.entry = entry
    reader = FrameReader(
        video_path,
        fps=plan.fps,
        start_s=plan.start_s,
        end_s=plan.end_s,
        size=plan.size,
        parity=deinterlace_parity(info.field_order),
    )
    clips = _ClipTracker(plan)
    cuts = CutDetector(cfg.shots)
    motion_meter = MotionMeter()
    seen = HashIndex()
    previous_kept: tuple[int, np.ndarray] | None = None  # (clip_id, analysis gray), mono only
    expected = max(1, int((plan.end_s - plan.start_s) * plan.fps))
    recipe = recipe_digests(cfg.recipe.path, entry.dataset, entry.video_id) if cfg.recipe.path else None
    recipe_decoded = 0
    after_damage = False
    for frame in reader:
        counts.decoded += 1
        recipe_decoded += recipe is not None and frame.index in recipe
        if progress and counts.decoded % 200 == 0:
            progress(min(1.0, counts.decoded / expected), f"{counts.decoded}/{expected} frames")
        split = "train" if frame.timestamp_s < plan.boundary_s else "val"
        if frame.damaged:
            # Smeared decoder output: nothing measured on it, and the next clean frame starts a new clip.
            row = _frame_row(entry, frame.index, frame.timestamp_s, clips.update(frame.index, split, False)[0], split)
            sink.drop(row, "decode_error")
            after_damage = True
            continue
        image, right = setup.views(frame.image) if setup else (frame.image, None)
        small = analysis_view(image, cfg.filters.analysis_width)
        cut = cuts.update(small) or after_damage
        after_damage = False
        clip_id, inside = clips.update(frame.index, split, cut)
        row = _frame_row(entry, frame.index, frame.timestamp_s, clip_id, split)
        sid = row["sample_id"]
        reason = _position_drop(inside, frame.timestamp_s, plan)
        if reason is None and setup is not None and cut:
            reason = "at_cut"
        if reason is None:
            reason = _content_drop(
                row,
                small,
                clip_id,
                previous_kept if setup is None else None,
                motion_meter,
                seen if setup is None else None,
                cfg,
                plan.dedup_separation_s,
            )
        gray = row.pop("_gray", None)
        if reason is None:
            row["decoded_sha256"] = decoded_digest(frame)
            if setup is None:
                previous_kept = (clip_id, gray)
                seen.add(row["phash"], sid, frame.timestamp_s)
        if recipe is not None:
            reason = _recipe_reason(recipe.get(frame.index), reason, row.get("decoded_sha256"))
        if reason is not None:
            sink.drop(row, reason)
        else:
            sink.keep(row, image, right)
    sink.flush()
    counts.clips = clips.clip_id + 1
    counts.warning = reader.warning
    if recipe is not None:
        missing = len(recipe) - recipe_decoded
        counts.recipe = RecipeCheck(counts.kept, len(recipe) - counts.kept - missing, missing)
    return counts


def _recipe_reason(wanted: str | None, reason: str | None, digest: str | None) -> str | None:
    """Rebuilding a recipe: keep a frame only when the recipe keeps it and it decodes to the same pixels.

    The rules still run on every frame (and a frame they would keep still feeds the static and dedup checks of
    later frames), so clips, splits and rule outcomes stay as they were when the recipe was made.
    """
    if wanted is None:
        return reason or "not_in_recipe"
    return None if reason is None and digest == wanted else "recipe_changed"


def _frame_row(entry: CatalogEntry, index: int, timestamp_s: float, clip_id: int, split: str) -> dict[str, Any]:
    return {
        "dataset": entry.dataset,
        "video_id": entry.video_id,
        "frame_index": index,
        "timestamp_s": round(timestamp_s, 6),
        "clip_id": clip_id,
        "split": split,
        "sample_id": sample_id(entry.dataset, entry.video_id, index),
        "kept": False,
    }


def _position_drop(inside: bool, timestamp_s: float, plan: SamplingPlan) -> str | None:
    if not inside:
        return "decimated"
    # `gap_frames` frames on each side: [boundary - gap, boundary + gap), half a frame of slack for rounding.
    offset = timestamp_s - plan.boundary_s + plan.frame_s / 2
    if plan.gap_s > 0 and -plan.gap_s <= offset < plan.gap_s:
        return "split_gap"
    return None


def _content_drop(
    row: dict[str, Any],
    small: np.ndarray,
    clip_id: int,
    previous_kept: tuple[int, np.ndarray] | None,
    motion_meter: MotionMeter,
    seen: HashIndex | None,
    cfg: CurateConfig,
    separation_s: float,
) -> str | None:
    """Measure the frame into `row` and return the first rule it fails, if any (static and dedup: mono only)."""
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    quality = measure_quality(gray)
    row.update(brightness=quality.brightness, contrast=quality.contrast, sharpness=quality.sharpness, _gray=gray)
    if (reason := quality_drop_reason(quality, cfg.filters)) is not None:
        return reason
    if previous_kept is not None and previous_kept[0] == clip_id:
        row["motion"] = motion_meter(previous_kept[1], gray)
        if row["motion"] < cfg.filters.static_max_motion:
            return "static"
    row["phash"] = phash(gray)
    if seen is None:
        return None
    duplicate = seen.find(row["phash"], cfg.dedup.max_hamming, time_s=row["timestamp_s"], min_separation_s=separation_s)
    if duplicate is not None:
        row["duplicate_of"] = duplicate
        return "duplicate"
    return None


def _shard_row(row: dict[str, Any], entry: CatalogEntry, image: np.ndarray, quality: int) -> dict[str, Any]:
    height, width = image.shape[:2]
    return {
        "sample_id": row["sample_id"],
        "dataset": entry.dataset,
        "video_id": entry.video_id,
        "category": entry.category,
        "subcategory": entry.subcategory,
        "clip_id": row["clip_id"],
        "frame_index": row["frame_index"],
        "timestamp_s": row["timestamp_s"],
        "split": row["split"],
        "width": width,
        "height": height,
        "fx": entry.fx,
        "fy": entry.fy,
        "cx": entry.cx,
        "cy": entry.cy,
        "brightness": row["brightness"],
        "sharpness": row["sharpness"],
        "motion": row.get("motion"),
        "phash": row["phash"],
        "image": encode_jpeg(image, quality),
    }
