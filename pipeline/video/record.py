"""The per-video record: what curating one video produced, and its lifecycle on the data root.

`stats/videos/<dataset>/<video_id>.json` is written last, after the video's shards, frame parts and preview, so
its presence means the video is finished (ok, or failed with a named reason). It carries the processing hash of
the config, so a config change redoes the video, and the size and sha256 of every part, so a rerun can tell
whether the files still match it. This module is the only one that reads or writes that file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict

from pipeline.config import CurateConfig
from pipeline.errors import DISK_FULL, VideoError, redact_secrets
from pipeline.io.data_root import DataRoot
from pipeline.media.probe import VideoInfo
from pipeline.schema import DROP_REASONS
from pipeline.sources.catalog import CatalogEntry

OK = "ok"


# Failures that are never the video's fault (a bug, a glitch, a full disk): a rerun always tries them again.
NEVER_FINAL = frozenset({"internal_error", DISK_FULL})


@dataclass(frozen=True)
class AppliedSampling:
    """The settings sampling applied to one video: the config's defaults, scaled down for a short one."""

    trim_start_s: float
    trim_end_s: float
    split_gap_frames: int
    dedup_separation_s: float


@dataclass(frozen=True)
class RecipeCheck:
    """Of the frames a recipe keeps for one video: kept again, decoded to other pixels, never decoded."""

    recipe_matched: int
    recipe_changed: int
    recipe_missing: int


_INFO_FIELDS = tuple(VideoInfo.__dataclass_fields__)
_RECIPE_FIELDS = tuple(f.name for f in fields(RecipeCheck))
_PLAN_FIELDS = tuple(f.name for f in fields(AppliedSampling))


class PartRef(BaseModel):
    """A finished Parquet part of a video (a shard or a frame-stats part), relative to the data root."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    rows: int
    bytes: int
    sha256: str


class VideoRecord(BaseModel):
    """One catalog entry's outcome. On disk it is flat JSON: `dropped` becomes `dropped_<reason>` keys, `info`
    becomes its probe fields, and `retryable`, `info` and the trims appear only when known (as they always have).
    """

    model_config = ConfigDict(extra="forbid")

    dataset: str
    video_id: str
    seq: int | None
    url: str
    category: str
    subcategory: str | None
    layout: str  # as the catalog declared it (mono, a stereo packing, or auto)
    catalog_line: int
    status: str  # "ok", or the failure reason
    processing_hash: str
    detected_layout: str | None = None
    error: str | None = None
    warning: str | None = None
    retryable: bool | None = None  # failures only: whether a rerun with run.retry_failed tries again
    frames_decoded: int = 0
    frames_kept: int = 0
    clips: int = 0
    dropped: dict[str, int] = {}  # frames dropped by reason, every reason of DROP_REASONS
    shards: list[PartRef] = []
    frame_parts: list[PartRef] = []
    preview_sha256: str | None = None  # the contact sheet, when one was written
    info: VideoInfo | None = None  # the probe, when the file could be probed
    # What sampling applied (AppliedSampling), once the video was known to be long enough to plan.
    trim_start_s: float | None = None  # seconds trimmed at each end
    trim_end_s: float | None = None
    split_gap_frames: int | None = None  # frames dropped on each side of the train/val boundary
    dedup_separation_s: float | None = None  # within-video duplicates count only this far apart
    recipe: RecipeCheck | None = None  # rebuilding a recipe: how its frames of this video fared

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.video_id}"

    @classmethod
    def new(
        cls,
        entry: CatalogEntry,
        cfg: CurateConfig,
        status: str,
        info: VideoInfo | None = None,
        applied: AppliedSampling | None = None,
    ) -> VideoRecord:
        """A record of `entry` with nothing counted yet."""
        return cls(
            dataset=entry.dataset,
            video_id=entry.video_id,
            seq=entry.seq,
            url=redact_secrets(entry.url),
            category=entry.category,
            subcategory=entry.subcategory,
            layout=entry.layout,
            catalog_line=entry.line,
            status=status,
            processing_hash=cfg.processing_hash(),
            dropped={reason: 0 for reason in DROP_REASONS},
            info=info,
            **(asdict(applied) if applied else {}),
        )

    def flat(self) -> dict[str, Any]:
        """The record as its JSON file holds it (and as the videos table reads it)."""
        out = self.model_dump(exclude={"dropped", "info", "retryable", "recipe", *_PLAN_FIELDS})
        out["shards"] = [part.model_dump() for part in self.shards]
        out["frame_parts"] = [part.model_dump() for part in self.frame_parts]
        out.update({f"dropped_{reason}": self.dropped.get(reason, 0) for reason in DROP_REASONS})
        if self.retryable is not None:
            out["retryable"] = self.retryable
        if self.info is not None:
            out.update(asdict(self.info))
        if self.recipe is not None:
            out.update(asdict(self.recipe))
        out.update({name: getattr(self, name) for name in _PLAN_FIELDS if getattr(self, name) is not None})
        return out

    @classmethod
    def from_flat(cls, data: dict[str, Any]) -> VideoRecord:
        data = dict(data)
        dropped = {reason: data.pop(f"dropped_{reason}", 0) for reason in DROP_REASONS}
        info = {name: data.pop(name) for name in _INFO_FIELDS if name in data}
        recipe = {name: data.pop(name) for name in _RECIPE_FIELDS if name in data}
        return cls(
            **data,
            dropped=dropped,
            info=VideoInfo(**info) if info else None,
            recipe=RecipeCheck(**recipe) if recipe else None,
        )

    def to_json(self) -> bytes:
        return json.dumps(self.flat(), indent=1, sort_keys=True, default=str).encode()

    def shards_digest(self) -> str:
        """A short digest of the video's shards: side tables computed from them (embeddings, intrinsics) carry it,
        so they are recomputed exactly when the shards change."""
        return hashlib.sha256("\n".join(part.sha256 for part in self.shards).encode()).hexdigest()[:16]


def load_record(root: DataRoot, dataset: str, video_id: str) -> VideoRecord | None:
    """The video's record, or None when it has none (not started, or killed before its record was written)."""
    try:
        return VideoRecord.from_flat(json.loads(root.read_bytes(root.video_record(dataset, video_id))))
    except (OSError, ValueError):
        return None  # absent, or torn by a crash before the atomic rename (cannot happen, but harmless)


def load_records(root: DataRoot) -> list[VideoRecord]:
    """Every finished video's record, in (dataset, video_id) order: the order that decides dedup winners."""
    records = [VideoRecord.from_flat(json.loads(data)) for data in root.read_many(root.video_records())]
    return sorted(records, key=lambda r: (r.dataset, r.video_id))


def write_record(root: DataRoot, record: VideoRecord) -> None:
    """Write the record: the done-marker, so it goes after everything it lists. Its messages name files under the
    data root relative to it (ffprobe's, the OS's and yt-dlp's errors carry absolute paths)."""
    record.error = root.relative_paths(record.error) if record.error else record.error
    record.warning = root.relative_paths(record.warning) if record.warning else record.warning
    root.write_bytes(root.video_record(record.dataset, record.video_id), record.to_json())


def is_finished(record: VideoRecord | None, cfg: CurateConfig) -> bool:
    """True when a rerun has nothing to do: done, or failed for good (404, unreadable file, too short)."""
    if record is None or record.processing_hash != cfg.processing_hash():
        return False
    if record.ok:
        return True
    if record.status in NEVER_FINAL:
        return False  # never final
    return not (cfg.run.retry_failed and record.retryable in (True, None))


def damaged_outputs(root: DataRoot, record: VideoRecord, cfg: CurateConfig) -> list[str]:
    """Shards and frame parts of a finished video that no longer match its record (empty when all do).

    Only this video's files are looked at, by size, and by sha256 when run.resume_check says so.
    """
    problems = count_problems(record)
    if record.preview_sha256 is not None:
        preview = root.preview(record.dataset, record.video_id)
        if not root.exists(preview):
            problems.append(f"{root.relative(preview)} is missing")
        elif cfg.run.resume_check == "sha256" and root.sha256(preview) != record.preview_sha256:
            problems.append(f"{root.relative(preview)} changed since it was written (sha256 mismatch)")
    for part in record.shards + record.frame_parts:
        path = root.root / part.path
        try:
            size = root.size(path)
        except FileNotFoundError:
            problems.append(f"{part.path} is missing")
            continue
        if size != part.bytes:
            problems.append(f"{part.path} has {size} bytes, its record says {part.bytes}")
        elif cfg.run.resume_check == "sha256" and root.sha256(path) != part.sha256:
            problems.append(f"{part.path} changed since it was written (sha256 mismatch)")
    return problems


def count_problems(record: VideoRecord) -> list[str]:
    """A record whose counts disagree with its parts' rows was edited (or is from a broken writer)."""
    problems = []
    decoded, kept = sum(p.rows for p in record.frame_parts), sum(p.rows for p in record.shards)
    if record.frame_parts and decoded != record.frames_decoded:
        problems.append(f"its record says {record.frames_decoded} frames decoded, its frame parts hold {decoded}")
    if record.ok and kept != record.frames_kept:
        problems.append(f"its record says {record.frames_kept} frames kept, its shards hold {kept}")
    return problems


def remove_stale_temps(root: DataRoot, entry: CatalogEntry) -> None:
    """Temporaries a killed run left for this video: its part directories, and its record and preview by name."""
    for directory in (
        root.shard_dir(entry.dataset, entry.video_id),
        root.video_frames_dir(entry.dataset, entry.video_id),
    ):
        root.remove_stale_temps(directory)
    for path in (root.video_record(entry.dataset, entry.video_id), root.preview(entry.dataset, entry.video_id)):
        root.remove_stale_temps(path.parent, path.name)  # directories shared with other videos' writers


def write_failure(
    entry: CatalogEntry,
    root: DataRoot,
    cfg: CurateConfig,
    error: VideoError,
    info: VideoInfo | None = None,
    applied: AppliedSampling | None = None,
) -> VideoRecord:
    """Record a failed video and remove any output an earlier successful run left for it.

    When the record itself cannot be written (a full disk), the record of an earlier run goes too, so no record
    lists the outputs removed here: the video is unfinished, the next run does it again. The error is raised.
    """
    remove_stale_temps(root, entry)
    for directory in (
        root.shard_dir(entry.dataset, entry.video_id),
        root.video_frames_dir(entry.dataset, entry.video_id),
    ):
        root.remove_dir(directory)
    for path in (
        root.preview(entry.dataset, entry.video_id),
        root.embeddings(entry.dataset, entry.video_id),
        root.camera(entry.dataset, entry.video_id),
    ):
        root.remove(path)
    record = VideoRecord.new(entry, cfg, error.reason, info=info, applied=applied)
    record.error = redact_secrets(error.message)
    record.retryable = error.transient
    try:
        write_record(root, record)
    except OSError:
        root.remove(root.video_record(entry.dataset, entry.video_id))  # deleting needs no space
        raise
    return record
