"""The per-video sampling stage: decode at the target fps, cut into clips, filter, dedup, split, JPEG-encode."""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from pipeline.catalog import CatalogEntry
from pipeline.config import CurateConfig
from pipeline.decode import FrameReader, output_size
from pipeline.dedup import HashIndex, phash
from pipeline.errors import VideoError
from pipeline.parquet_writer import PartWriter
from pipeline.probe import VideoInfo
from pipeline.quality import MotionMeter, analysis_view, measure_quality, quality_drop_reason
from pipeline.shots import CutDetector

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class SamplingPlan:
    start_s: float
    end_s: float
    size: tuple[int, int]  # output (width, height)
    boundary_s: float  # train before, val after
    gap_s: float  # frames within this of the boundary are dropped, on both sides
    frame_s: float  # one frame at the sampled fps


@dataclass
class SampleCounts:
    decoded: int = 0
    kept: int = 0
    clips: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    warning: str | None = None


def sample_id(dataset: str, video_id: str, frame_index: int) -> str:
    return f"{dataset}/{video_id}/{frame_index:08d}"


def plan_sampling(info: VideoInfo, entry: CatalogEntry, cfg: CurateConfig) -> SamplingPlan:
    """Trim, output size and split boundary for one video; raises VideoError(too_short)."""
    trim = cfg.sample.trim
    explicit = entry.trim_start_s is not None or entry.trim_end_s is not None
    # Catalog trims are honoured exactly; the config default shrinks for short videos.
    head = entry.trim_start_s if entry.trim_start_s is not None else min(trim.head_s, trim.max_fraction * info.duration_s)
    tail = entry.trim_end_s if entry.trim_end_s is not None else min(trim.tail_s, trim.max_fraction * info.duration_s)
    # Snap the start onto the sampling grid so frame_index == round(timestamp_s * fps) names one picture.
    start, end = math.ceil(head * cfg.sample.fps - 1e-6) / cfg.sample.fps, info.duration_s - tail
    if end - start < 1.0 / cfg.sample.fps:
        source = "catalog" if explicit else "config"
        raise VideoError("too_short", f"video lasts {info.duration_s:.1f}s, shorter than its {source} trims "
                                      f"({head:.1f}s head + {tail:.1f}s tail)")
    width, height = info.display_size
    return SamplingPlan(
        start_s=start, end_s=end,
        size=output_size(width, height, cfg.sample.max_height),
        boundary_s=start + cfg.split.train_fraction * (end - start),
        gap_s=cfg.split.gap_frames / cfg.sample.fps,
        frame_s=1.0 / cfg.sample.fps,
    )


class _ClipTracker:
    """Numbers clips: a new one starts at a scene cut, a new decimation window, or the split boundary."""

    def __init__(self, cfg: CurateConfig, first_index: int):
        self.decimate = cfg.sample.decimate
        self.first_index = first_index
        self.clip_id = -1
        self._window = None
        self._split = None

    def update(self, index: int, split: str, cut: bool) -> tuple[int, bool]:
        """(clip_id, inside the keep window) for the frame at `index`."""
        window, inside = 0, True
        if self.decimate:
            window, position = divmod(index - self.first_index, self.decimate.every)
            inside = position < self.decimate.keep
        if cut or window != self._window or split != self._split or self.clip_id < 0:
            self.clip_id += 1
        self._window, self._split = window, split
        return self.clip_id, inside


def sample_video(video_path: str | Path, entry: CatalogEntry, info: VideoInfo, cfg: CurateConfig,
                 shards: PartWriter, frames: PartWriter, *, progress: ProgressFn | None = None,
                 shard_prefix: str = "") -> SampleCounts:
    """Stream the video once; every decoded frame becomes a stats row, every kept one also a shard row."""
    plan = plan_sampling(info, entry, cfg)
    fps = cfg.sample.fps
    reader = FrameReader(video_path, fps=fps, start_s=plan.start_s, end_s=plan.end_s, size=plan.size)
    clips = _ClipTracker(cfg, int(round(plan.start_s * fps)))
    cuts = CutDetector(cfg.shots)
    motion_meter = MotionMeter()
    seen = HashIndex()
    counts = SampleCounts()
    previous_kept: tuple[int, np.ndarray] | None = None  # (clip_id, analysis gray)
    expected = max(1, int((plan.end_s - plan.start_s) * fps))
    for frame in reader:
        counts.decoded += 1
        small = analysis_view(frame.image, cfg.filters.analysis_width)
        split = "train" if frame.timestamp_s < plan.boundary_s else "val"
        clip_id, inside = clips.update(frame.index, split, cuts.update(small))
        sid = sample_id(entry.dataset, entry.video_id, frame.index)
        row: dict[str, Any] = {"dataset": entry.dataset, "video_id": entry.video_id, "frame_index": frame.index,
                               "timestamp_s": round(frame.timestamp_s, 6), "clip_id": clip_id, "split": split,
                               "sample_id": sid, "kept": False}
        reason = _position_drop(inside, frame.timestamp_s, plan)
        if reason is None:
            reason = _content_drop(row, small, clip_id, previous_kept, motion_meter, seen, cfg)
        if reason is None:
            gray = row.pop("_gray")
            previous_kept = (clip_id, gray)
            seen.add(row["phash"], sid, frame.timestamp_s)
            row["kept"] = True
            shards.add(_shard_row(row, entry, frame.image, cfg.sample.jpeg_quality))
            counts.kept += 1
        else:
            row.pop("_gray", None)
            row["drop_reason"] = reason
            counts.dropped[reason] += 1
        frames.add(row)
        if progress and counts.decoded % 200 == 0:
            progress(min(1.0, counts.decoded / expected), f"{counts.decoded}/{expected} frames")
    counts.clips = clips.clip_id + 1
    counts.warning = reader.warning
    return counts


def _position_drop(inside: bool, timestamp_s: float, plan: SamplingPlan) -> str | None:
    if not inside:
        return "decimated"
    # `gap_frames` frames on each side: [boundary - gap, boundary + gap), half a frame of slack for rounding.
    offset = timestamp_s - plan.boundary_s + plan.frame_s / 2
    if plan.gap_s > 0 and -plan.gap_s <= offset < plan.gap_s:
        return "split_gap"
    return None


def _content_drop(row: dict[str, Any], small: np.ndarray, clip_id: int,
                  previous_kept: tuple[int, np.ndarray] | None, motion_meter: MotionMeter,
                  seen: HashIndex, cfg: CurateConfig) -> str | None:
    """Measure the frame into `row` and return the first rule it fails, if any."""
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
    duplicate = seen.find(row["phash"], cfg.dedup.max_hamming, time_s=row["timestamp_s"],
                          min_separation_s=cfg.dedup.min_separation_s)
    if duplicate is not None:
        row["duplicate_of"] = duplicate
        return "duplicate"
    return None


def _shard_row(row: dict[str, Any], entry: CatalogEntry, image: np.ndarray, quality: int) -> dict[str, Any]:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {row['sample_id']}")
    height, width = image.shape[:2]
    return {
        "sample_id": row["sample_id"], "dataset": entry.dataset, "video_id": entry.video_id,
        "category": entry.category, "subcategory": entry.subcategory, "clip_id": row["clip_id"],
        "frame_index": row["frame_index"], "timestamp_s": row["timestamp_s"], "split": row["split"],
        "width": width, "height": height, "fx": entry.fx, "fy": entry.fy, "cx": entry.cx, "cy": entry.cy,
        "brightness": row["brightness"], "sharpness": row["sharpness"], "motion": row.get("motion"),
        "phash": row["phash"], "image": jpeg.tobytes(),
    }
