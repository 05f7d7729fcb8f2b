"""Turn one downloaded video into its shards, its frame stats and its video record, resumably."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.config import CurateConfig
from pipeline.errors import DISK_FULL, VideoError, is_out_of_space
from pipeline.io.data_root import DataRoot
from pipeline.io.lease import LeaseLost
from pipeline.io.parquet_writer import PartFile, PartWriter
from pipeline.io.storage import sha256_file
from pipeline.media.probe import VideoInfo, probe_video
from pipeline.schema import DROP_REASONS, FRAME_STATS_SCHEMA, SHARD_SCHEMA
from pipeline.sources.catalog import CatalogEntry
from pipeline.video.previews import video_sheet, write_preview_jpeg
from pipeline.video.record import (
    PartRef,
    VideoRecord,
    remove_stale_temps,
    write_failure,
    write_record,
)
from pipeline.video.sampling import SampleCounts, SamplingPlan, plan_sampling, sample_video

ProgressFn = Callable[[float, str], None]


def ingest_video(
    entry: CatalogEntry,
    video_path: str | Path,
    root: DataRoot,
    cfg: CurateConfig,
    progress: ProgressFn | None = None,
    fence: Callable[[], bool] | None = None,
) -> VideoRecord:
    """Probe, sample and write one video; bad input (and a full disk) ends as a failure record, not an exception.

    `fence`, when given, is asked before the first file becomes visible: False (the run's lease on the video was
    taken over) discards the work and raises LeaseLost.
    """
    try:
        return _ingest(entry, video_path, root, cfg, progress, fence)
    except OSError as exc:
        if not is_out_of_space(exc):
            raise
        # Transient: the temporary part is gone, and a rerun once there is space redoes the video. A shard, a
        # frame part, the preview or the record: the same. When not even this record fits, write_failure raises
        # and the driver logs it (pipeline.driver).
        error = VideoError(DISK_FULL, f"writing {entry.dataset}/{entry.video_id}: {exc}", transient=True)
        return write_failure(entry, root, cfg, error)


def _ingest(
    entry: CatalogEntry,
    video_path: str | Path,
    root: DataRoot,
    cfg: CurateConfig,
    progress: ProgressFn | None,
    fence: Callable[[], bool] | None,
) -> VideoRecord:
    shard_dir = root.shard_dir(entry.dataset, entry.video_id)
    frames_dir = root.video_frames_dir(entry.dataset, entry.video_id)
    remove_stale_temps(root, entry)
    info: VideoInfo | None = None
    plan: SamplingPlan | None = None
    try:
        info = probe_video(video_path)
        plan = plan_sampling(info, entry, cfg, stereo=entry.layout != "mono")  # fails fast, before any writer opens
        shards = PartWriter(
            shard_dir,
            SHARD_SCHEMA,
            row_group_bytes=cfg.write.row_group_bytes,
            part_bytes=cfg.write.part_bytes,
            compression=cfg.write.compression,
        )
        # Frame stats are small rows: one part per video.
        frames = PartWriter(
            frames_dir,
            FRAME_STATS_SCHEMA,
            prefix="frames",
            row_group_rows=50_000,
            part_bytes=1 << 40,
            compression="zstd",
        )
        try:
            counts = sample_video(video_path, entry, info, plan, cfg, shards, frames, progress=progress)
            if fence is not None and not fence():
                raise LeaseLost(f"{entry.dataset}/{entry.video_id}: lease taken over while sampling")
            shard_parts, frame_parts = shards.close(), frames.close()
        except BaseException:
            shards.abort()
            frames.abort()
            raise
    except VideoError as exc:
        if fence is not None and not fence():
            raise LeaseLost(f"{entry.dataset}/{entry.video_id}: lease taken over") from exc
        return write_failure(entry, root, cfg, exc, info=info, applied=plan.applied() if plan else None)
    root.upload(*(p.path for p in shard_parts + frame_parts))  # object-store root: publish the parts
    _remove_unlisted(root, shard_dir, shard_parts)
    _remove_unlisted(root, frames_dir, frame_parts)
    preview_sha256 = None
    if counts.previews:
        preview = root.preview(entry.dataset, entry.video_id)
        write_preview_jpeg(video_sheet(counts.previews), preview)
        preview_sha256 = sha256_file(preview)
        root.upload(preview)
    record = VideoRecord.new(entry, cfg, "ok", info=info, applied=plan.applied())
    _count_into(record, counts)
    record.warning = "; ".join(w for w in (_truncation_warning(info), counts.warning) if w) or None
    record.preview_sha256 = preview_sha256
    record.shards = [_part_ref(root, p) for p in shard_parts]
    record.frame_parts = [_part_ref(root, p) for p in frame_parts]
    write_record(root, record)
    return record


def _truncation_warning(info: VideoInfo) -> str | None:
    if info.truncated_at_s is None:
        return None
    return (
        f"file cut short: its data ends at {info.truncated_at_s:.1f}s of the {info.duration_s:.1f}s its header "
        "gives; trims and split follow the data"
    )


def _count_into(record: VideoRecord, counts: SampleCounts) -> None:
    record.frames_decoded, record.frames_kept, record.clips = counts.decoded, counts.kept, counts.clips
    record.dropped = {reason: counts.dropped.get(reason, 0) for reason in DROP_REASONS}
    record.detected_layout, record.recipe = counts.layout, counts.recipe


def _part_ref(root: DataRoot, part: PartFile) -> PartRef:
    return PartRef(path=root.relative(part.path), rows=part.rows, bytes=part.bytes, sha256=part.sha256)


def _remove_unlisted(root: DataRoot, directory: Path, parts: list[PartFile]) -> None:
    """Drop parts an earlier run (other config, longer output) left behind."""
    keep = {p.path.name for p in parts}
    for stale in root.glob(directory, "*.parquet"):
        if stale.name not in keep:
            root.remove(stale)
