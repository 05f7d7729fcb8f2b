"""Turn one downloaded video into its shards, its frame stats and its video record, resumably."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import CurateConfig
from pipeline.errors import VideoError, redact_secrets
from pipeline.io.data_root import DataRoot
from pipeline.io.parquet_writer import PartFile, PartWriter
from pipeline.media.probe import VideoInfo, probe_video
from pipeline.schema import DROP_REASONS, FRAME_STATS_SCHEMA, SHARD_SCHEMA
from pipeline.sources.catalog import CatalogEntry
from pipeline.video.previews import colorize_disparity, contact_sheet, mask_image, write_preview_jpeg
from pipeline.video.sampling import SampleCounts, plan_sampling, sample_video

ProgressFn = Callable[[float, str], None]


def load_record(root: DataRoot, entry: CatalogEntry) -> dict[str, Any] | None:
    path = root.video_record(entry.dataset, entry.video_id)
    try:
        return json.loads(root.read_bytes(path))
    except (OSError, ValueError):
        return None  # absent, or torn by a crash before the atomic rename (cannot happen, but harmless)


def is_finished(record: dict[str, Any] | None, cfg: CurateConfig) -> bool:
    """True when a rerun has nothing to do: done, or failed for good (404, unreadable file, too short)."""
    if record is None or record.get("processing_hash") != cfg.processing_hash():
        return False
    if record["status"] == "ok":
        return True
    return not (cfg.run.retry_failed and record.get("retryable", True))


def damaged_outputs(root: DataRoot, record: dict[str, Any], cfg: CurateConfig) -> list[str]:
    """Shards and frame parts of a finished video that no longer match its record (empty when all do).

    Only this video's files are looked at, by size, and by sha256 when run.resume_check says so.
    """
    problems = []
    for part in record.get("shards", []) + record.get("frame_parts", []):
        path = root.root / part["path"]
        try:
            size = root.size(path)
        except FileNotFoundError:
            problems.append(f"{part['path']} is missing")
            continue
        if size != part["bytes"]:
            problems.append(f"{part['path']} has {size} bytes, its record says {part['bytes']}")
        elif cfg.run.resume_check == "sha256" and root.sha256(path) != part["sha256"]:
            problems.append(f"{part['path']} changed since it was written (sha256 mismatch)")
    return problems


def ingest_video(
    entry: CatalogEntry, video_path: str | Path, root: DataRoot, cfg: CurateConfig, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Probe, sample and write one video; bad input (and a full disk) ends as a failure record, not an exception."""
    try:
        return _ingest(entry, video_path, root, cfg, progress)
    except OSError as exc:
        if not _out_of_space(exc):
            raise
        # Transient: the temporary part is gone, and a rerun once there is space redoes the video.
        return write_failure(
            entry,
            root,
            cfg,
            VideoError("disk_full", f"writing {entry.dataset}/{entry.video_id}: {exc}", transient=True),
        )


def _ingest(
    entry: CatalogEntry, video_path: str | Path, root: DataRoot, cfg: CurateConfig, progress: ProgressFn | None
) -> dict[str, Any]:
    shard_dir = root.shard_dir(entry.dataset, entry.video_id)
    frames_dir = root.video_frames_dir(entry.dataset, entry.video_id)
    _remove_stale_temps(root, entry)
    info = None
    try:
        info = probe_video(video_path)
        plan_sampling(info, entry, cfg, stereo=entry.layout != "mono")  # fail fast, before any writer opens
        shards = PartWriter(
            shard_dir,
            SHARD_SCHEMA,
            row_group_bytes=cfg.write.row_group_bytes,
            part_bytes=cfg.write.part_bytes,
            compression=cfg.write.compression,
        )
        frames = PartWriter(
            frames_dir,
            FRAME_STATS_SCHEMA,
            prefix="frames",
            row_group_rows=50_000,
            part_bytes=1 << 40,
            compression="zstd",
        )
        try:
            counts = sample_video(video_path, entry, info, cfg, shards, frames, progress=progress)
            shard_parts, frame_parts = shards.close(), frames.close()
        except BaseException:
            shards.abort()
            frames.abort()
            raise
    except VideoError as exc:
        return write_failure(entry, root, cfg, exc, info=info)
    root.upload(*(p.path for p in shard_parts + frame_parts))  # object-store root: publish the parts
    _remove_unlisted(root, shard_dir, shard_parts)
    _remove_unlisted(root, frames_dir, frame_parts)
    record = _base_record(entry, cfg, "ok", info=info)
    if counts.previews:
        preview = root.preview(entry.dataset, entry.video_id)
        write_preview_jpeg(_contact_sheet(counts.previews), preview)
        root.upload(preview)
    record.update(
        _counts_fields(counts),
        warning=counts.warning,
        detected_layout=counts.layout,
        shards=[_part_entry(root, p) for p in shard_parts],
        frame_parts=[_part_entry(root, p) for p in frame_parts],
    )
    _write_record(root, entry, record)
    return record


def write_failure(
    entry: CatalogEntry, root: DataRoot, cfg: CurateConfig, error: VideoError, info: VideoInfo | None = None
) -> dict[str, Any]:
    """Record a failed video and remove any output an earlier successful run left for it."""
    _remove_stale_temps(root, entry)
    for directory in (
        root.shard_dir(entry.dataset, entry.video_id),
        root.video_frames_dir(entry.dataset, entry.video_id),
    ):
        root.remove_dir(directory)
    root.remove(root.preview(entry.dataset, entry.video_id))
    root.remove(root.embeddings(entry.dataset, entry.video_id))
    root.remove(root.camera(entry.dataset, entry.video_id))
    record = _base_record(entry, cfg, error.reason, info=info)
    record["error"] = redact_secrets(error.message)
    record["retryable"] = error.transient
    _write_record(root, entry, record)
    return record


def _remove_stale_temps(root: DataRoot, entry: CatalogEntry) -> None:
    """Temporaries a killed run left for this video: its part directories, and its record and preview by name."""
    for directory in (
        root.shard_dir(entry.dataset, entry.video_id),
        root.video_frames_dir(entry.dataset, entry.video_id),
    ):
        root.remove_stale_temps(directory)
    for path in (root.video_record(entry.dataset, entry.video_id), root.preview(entry.dataset, entry.video_id)):
        root.remove_stale_temps(path.parent, path.name)  # directories shared with other videos' writers


def _out_of_space(exc: OSError) -> bool:
    """A full disk, a quota, or a file-size limit; pyarrow's errors carry the errno only in their text."""
    codes = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return exc.errno in codes or any(os.strerror(code) in str(exc) for code in codes)


def _base_record(entry: CatalogEntry, cfg: CurateConfig, status: str, info: VideoInfo | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "dataset": entry.dataset,
        "video_id": entry.video_id,
        "seq": entry.seq,
        "url": redact_secrets(entry.url),
        "category": entry.category,
        "subcategory": entry.subcategory,
        "layout": entry.layout,
        "catalog_line": entry.line,
        "detected_layout": None,
        "status": status,
        "error": None,
        "warning": None,
        "processing_hash": cfg.processing_hash(),
        "frames_decoded": 0,
        "frames_kept": 0,
        "clips": 0,
        "shards": [],
        "frame_parts": [],
        **{f"dropped_{reason}": 0 for reason in DROP_REASONS},
    }
    if info is not None:
        record.update(info.as_dict())
        try:
            plan = plan_sampling(info, entry, cfg, stereo=entry.layout != "mono")
            record.update(trim_start_s=plan.start_s, trim_end_s=info.duration_s - plan.end_s)
        except VideoError:
            pass
    return record


def _contact_sheet(previews: list[tuple]) -> np.ndarray:
    """One row per sampled clip: the frame, and for stereo its coloured disparity and sky mask."""
    rows = []
    for _, image, stereo in previews:
        if stereo is None:
            rows.append([image])
        else:
            disparity, valid, sky = stereo
            rows.append([image, colorize_disparity(disparity, valid, sky), mask_image(sky)])
    return contact_sheet(rows)


def _counts_fields(counts: SampleCounts) -> dict[str, Any]:
    fields = {"frames_decoded": counts.decoded, "frames_kept": counts.kept, "clips": counts.clips}
    fields.update({f"dropped_{reason}": counts.dropped.get(reason, 0) for reason in DROP_REASONS})
    return fields


def _part_entry(root: DataRoot, part: PartFile) -> dict[str, Any]:
    return {"path": root.relative(part.path), "rows": part.rows, "bytes": part.bytes, "sha256": part.sha256}


def _remove_unlisted(root: DataRoot, directory: Path, parts: list[PartFile]) -> None:
    """Drop parts an earlier run (other config, longer output) left behind."""
    keep = {p.path.name for p in parts}
    for stale in root.glob(directory, "*.parquet"):
        if stale.name not in keep:
            root.remove(stale)


def _write_record(root: DataRoot, entry: CatalogEntry, record: dict[str, Any]) -> None:
    data = json.dumps(record, indent=1, sort_keys=True, default=str).encode()
    root.write_bytes(root.video_record(entry.dataset, entry.video_id), data)  # the done-marker: last
