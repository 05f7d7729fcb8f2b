"""Corpus-level step after all videos: cross-video dedup, CLIP curation, manifests, stats tables, dataset.json."""

from __future__ import annotations

import collections
import hashlib
import io
import json
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import CurateConfig
from pipeline.io.data_root import DataRoot
from pipeline.schema import (
    CAMERA_SCHEMA,
    CATEGORY_STATS_SCHEMA,
    CLIP_SCORE_COLUMNS,
    DROP_REASONS,
    FRAME_STATS_SCHEMA,
    MANIFEST_SCHEMA,
    PUBLISH_DROP_REASONS,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    VIDEO_STATS_SCHEMA,
)
from pipeline.sources.catalog import CatalogProblem
from pipeline.video.phash import HammingIndex
from pipeline.video.record import VideoRecord, load_records


def publish(root: DataRoot, cfg: CurateConfig, catalog_problems: Sequence[CatalogProblem] = ()) -> dict[str, Any]:
    """Write stats tables, manifests and dataset.json for everything finished under `root`; returns dataset.json."""
    records = load_records(root)
    frames = _load_frames(root, records)
    if cfg.dedup.across_videos:
        frames = _drop_cross_video_duplicates(frames, cfg.dedup.max_hamming)
    clip_info = None
    if cfg.clip.enabled:
        from pipeline.clip.curation import curate_frames  # imports torch: only when CLIP curation is on

        frames, clip_info = curate_frames(root, records, frames, cfg.clip)
    _recount(records, frames)
    outputs = {
        root.frames_table: _parquet_bytes(frames),
        root.videos_table: _parquet_bytes(_videos_table(records, catalog_problems)),
        root.categories_table: _parquet_bytes(_categories_table(records)),
    }
    cameras = _cameras(root, records, cfg)
    if cfg.intrinsics.enabled:
        outputs[root.cameras_table] = _parquet_bytes(
            pa.Table.from_pylist(
                [{n: c.get(n) for n in CAMERA_SCHEMA.names} for c in cameras.values()], schema=CAMERA_SCHEMA
            )
        )
    kept = _kept_by_video(frames)
    manifests = {}
    for dataset in sorted({r.dataset for r in records}):
        table = _manifest(root, [r for r in records if r.dataset == dataset and r.ok], kept, cameras)
        manifests[dataset] = table.num_rows
        outputs[root.manifest(dataset)] = _parquet_bytes(table)
    for path in [*outputs, root.dataset_json]:
        # A publish killed mid-write left its temporary; unchanged bytes are not rewritten, so clear it here.
        root.remove_stale_temps(path.parent, path.name)
    # The manifests go last: a reader who finds one can rely on everything it points to.
    for path in sorted(outputs, key=lambda p: p.parent.name == "manifest"):
        root.write_bytes(path, outputs[path])
    description = _description(root, cfg, records, frames, outputs, manifests, clip_info, cameras)
    root.write_bytes(root.dataset_json, (json.dumps(description, indent=2, sort_keys=True) + "\n").encode())
    return description


def _load_frames(root: DataRoot, records: list[VideoRecord]) -> pa.Table:
    tables = [
        _read_table(root, part.path, schema=FRAME_STATS_SCHEMA)
        for record in records
        if record.ok
        for part in record.frame_parts
    ]
    if not tables:
        return FRAME_STATS_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def _drop_cross_video_duplicates(frames: pa.Table, max_hamming: int) -> pa.Table:
    """Mark kept frames that repeat a kept frame of an earlier video; the earlier one stays."""
    kept = frames["kept"].to_numpy(zero_copy_only=False)
    if not kept.any():
        return frames
    video = np.asarray(pc.binary_join_element_wise(frames["dataset"], frames["video_id"], "/"), dtype=object)
    hashes = frames["phash"].fill_null(0).to_numpy().astype(np.uint64)
    sample_ids = frames["sample_id"].to_numpy(zero_copy_only=False)
    reason = frames["drop_reason"].to_numpy(zero_copy_only=False).astype(object)
    duplicate_of = frames["duplicate_of"].to_numpy(zero_copy_only=False).astype(object)
    # Each video's rows are contiguous, in (dataset, video_id) order as loaded.
    starts = np.flatnonzero(np.r_[True, video[1:] != video[:-1]])
    ends = np.r_[starts[1:], len(video)]
    index = HammingIndex()
    index_rows = np.empty(int(kept.sum()), np.int64)  # frame row of each index position
    for start, end in zip(starts.tolist(), ends.tolist()):
        rows = start + np.flatnonzero(kept[start:end])
        if len(rows) == 0:
            continue
        match = index.nearest(hashes[rows], max_hamming)
        hit = match >= 0
        dup_rows = rows[hit]
        kept[dup_rows] = False
        reason[dup_rows] = "duplicate_cross_video"
        duplicate_of[dup_rows] = sample_ids[index_rows[match[hit]]]
        fresh = rows[~hit]
        index_rows[len(index) : len(index) + len(fresh)] = fresh
        index.add(hashes[fresh])
    frames = frames.set_column(frames.schema.get_field_index("kept"), "kept", pa.array(kept))
    frames = frames.set_column(
        frames.schema.get_field_index("drop_reason"), "drop_reason", pa.array(reason, pa.string())
    )
    frames = frames.set_column(
        frames.schema.get_field_index("duplicate_of"), "duplicate_of", pa.array(duplicate_of, pa.string())
    )
    return frames.cast(FRAME_STATS_SCHEMA)


def previous_catalog_problems(root: DataRoot) -> list[CatalogProblem]:
    """The catalog problems the last publish recorded, so a corpus-only rerun (no catalog at hand) keeps them."""
    if not root.exists(root.videos_table):
        return []
    columns = ["dataset", "video_id", "catalog_line", "status", "error"]
    with root.open_parquet(root.videos_table, columns) as source:
        table = pq.read_table(source, columns=columns)
    problems = []
    for row in table.filter(pc.equal(table["status"], "catalog_error")).to_pylist():
        reason, _, message = (row["error"] or "").partition(": ")  # written as f"{reason}: {message}"
        problems.append(
            CatalogProblem(
                line=row["catalog_line"],
                video_id=row["video_id"],
                reason=reason,
                message=message,
                dataset=row["dataset"],
            )
        )
    return problems


def _recount(records: list[VideoRecord], frames: pa.Table) -> None:
    """Bring each record's kept/dropped counts in line with the corpus-level decisions."""
    late = frames.filter(pc.is_in(frames["drop_reason"], pa.array(PUBLISH_DROP_REASONS)))
    per_video = collections.Counter(
        zip(late["dataset"].to_pylist(), late["video_id"].to_pylist(), late["drop_reason"].to_pylist())
    )
    for record in records:
        key = (record.dataset, record.video_id)
        counts = {reason: per_video.get((*key, reason), 0) for reason in PUBLISH_DROP_REASONS}
        record.dropped.update(counts)
        # The record's frames_kept is what ingest kept; records are re-read on every publish.
        record.frames_kept = record.frames_kept - sum(counts.values()) if record.ok else 0


def _videos_table(records: list[VideoRecord], catalog_problems: Sequence[CatalogProblem]) -> pa.Table:
    rows = []
    for record in records:
        flat = record.flat()
        row = {name: flat.get(name) for name in VIDEO_STATS_SCHEMA.names}
        row["shards"] = len(record.shards)
        row["shard_bytes"] = sum(p.bytes for p in record.shards)
        rows.append(row)
    for problem in catalog_problems:
        rows.append(
            {
                "dataset": problem.dataset,
                "video_id": problem.video_id,
                "catalog_line": problem.line,
                "status": "catalog_error",
                "error": f"{problem.reason}: {problem.message}",
            }
        )
    return pa.Table.from_pylist(rows, schema=VIDEO_STATS_SCHEMA)


def _categories_table(records: list[VideoRecord]) -> pa.Table:
    """Per (dataset, catalog category): videos, frames and drops by reason, summed over the video records."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        flat = record.flat()
        key = (record.dataset, record.category or "")
        row = groups.setdefault(
            key,
            {
                "dataset": key[0],
                "category": key[1],
                "videos": 0,
                "videos_ok": 0,
                **{name: 0 for name in CATEGORY_STATS_SCHEMA.names[4:]},
            },
        )
        row["videos"] += 1
        row["videos_ok"] += record.ok
        for name in CATEGORY_STATS_SCHEMA.names[4:]:
            row[name] += flat.get(name) or 0
    return pa.Table.from_pylist([groups[key] for key in sorted(groups)], schema=CATEGORY_STATS_SCHEMA)


def _kept_by_video(frames: pa.Table) -> dict[tuple[str, str], pa.Table]:
    """Kept frames (sample_id and CLIP scores) per (dataset, video_id): each video's rows are contiguous."""
    kept = frames.filter(frames["kept"])
    video = np.asarray(pc.binary_join_element_wise(kept["dataset"], kept["video_id"], "/"), dtype=object)
    starts = np.flatnonzero(np.r_[True, video[1:] != video[:-1]]) if len(video) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(video)].astype(np.int64)
    kept = kept.select(["dataset", "video_id", "sample_id", *CLIP_SCORE_COLUMNS])
    return {
        (kept["dataset"][int(a)].as_py(), kept["video_id"][int(a)].as_py()): kept.slice(int(a), int(b - a))
        for a, b in zip(starts, ends)
    }


def _cameras(root: DataRoot, records: list[VideoRecord], cfg: CurateConfig) -> dict[tuple[str, str], dict]:
    """Current intrinsics estimates (or failures) of the ok videos, when the stage is on; stale ones are left out."""
    if not cfg.intrinsics.enabled:
        return {}
    from pipeline.corpus.intrinsics import load_camera  # pycolmap itself is imported only to estimate

    found = {}
    for record in records:
        if record.ok:
            camera = load_camera(root, record, cfg.intrinsics)
            if camera is not None:
                found[(record.dataset, record.video_id)] = camera
    return found


def _with_intrinsics(table: pa.Table, camera: dict[str, Any] | None) -> pa.Table:
    """Mark where a video's fx fy cx cy come from; fill them (and k1) from its estimate when the catalog gave none."""
    n = table.num_rows
    if n and table["fx"].null_count < n:
        source, k1 = "catalog", None
    elif camera is not None and camera["status"] == "ok":
        source, k1 = "colmap", camera["k1"]
        for name in ("fx", "fy", "cx", "cy"):
            table = table.set_column(
                table.schema.get_field_index(name), name, pa.array([camera[name]] * n, pa.float32())
            )
    else:
        source, k1 = None, None
    table = table.append_column("k1", pa.array([k1] * n, pa.float32()))
    return table.append_column("intrinsics_source", pa.array([source] * n, pa.string()))


def _manifest(
    root: DataRoot,
    records: list[VideoRecord],
    kept: dict[tuple[str, str], pa.Table],
    cameras: dict[tuple[str, str], dict],
) -> pa.Table:
    """Kept rows of the records' shards, no pixels, with where they are, their CLIP scores and intrinsics."""
    tables = []
    empty = pa.table(
        {
            "sample_id": pa.array([], pa.string()),
            **{name: pa.array([], MANIFEST_SCHEMA.field(name).type) for name in CLIP_SCORE_COLUMNS},
        }
    )
    for record in records:
        # Looked up in the video's own kept frames: a hash set of the whole corpus per shard would be O(n^2).
        video_kept = kept.get((record.dataset, record.video_id), empty)
        for part in record.shards:
            table = _read_table(root, part.path, columns=list(SAMPLE_COLUMNS))
            table = table.append_column("shard", pa.array([part.path] * table.num_rows, pa.string()))
            table = table.append_column("row", pa.array(np.arange(table.num_rows), pa.int64()))
            position = pc.index_in(table["sample_id"], value_set=video_kept["sample_id"])
            table = table.filter(pc.is_valid(position))
            scores = video_kept.take(position.drop_null())
            for name in CLIP_SCORE_COLUMNS:
                table = table.append_column(name, scores[name])
            tables.append(_with_intrinsics(table, cameras.get((record.dataset, record.video_id))))
    if not tables:
        return MANIFEST_SCHEMA.empty_table()
    return pa.concat_tables(tables).cast(MANIFEST_SCHEMA)


def _read_table(
    root: DataRoot, relative: str, columns: list[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """A Parquet file under the data root (only `columns`: an object store then sends no pixels)."""
    with root.open_parquet(root.root / relative, columns) as source:
        return pq.read_table(source, columns=columns, schema=schema)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=1_000_000)
    return sink.getvalue()


def _description(
    root: DataRoot,
    cfg: CurateConfig,
    records: list[VideoRecord],
    frames: pa.Table,
    outputs: dict,
    manifests: dict[str, int],
    clip_info: dict[str, Any] | None,
    cameras: dict[tuple[str, str], dict],
) -> dict[str, Any]:
    reasons = collections.Counter(r for r in frames["drop_reason"].to_pylist() if r)
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": f"depthcurate {_version()}",
        "config": cfg.recorded(),
        "config_hash": cfg.full_hash(),
        "processing_hash": cfg.processing_hash(),
        "counts": {
            "videos": dict(sorted(collections.Counter(r.status for r in records).items())),
            "frames_decoded": frames.num_rows,
            "frames_kept": int(pc.sum(frames["kept"]).as_py() or 0),
            "dropped": {reason: reasons.get(reason, 0) for reason in DROP_REASONS},
            "samples": manifests,
            **(
                {"cameras": dict(sorted(collections.Counter(c["status"] for c in cameras.values()).items()))}
                if cfg.intrinsics.enabled
                else {}
            ),
        },
        "shards": [part.model_dump() for r in records if r.ok for part in r.shards],
        "clip": clip_info,  # model, checkpoint sha256, embedding files, SemDeDup figures; null when off
        "tables": {root.relative(path): _sha256(data) for path, data in sorted(outputs.items())},
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version() -> str:
    try:
        return metadata.version("depthcurate")
    except metadata.PackageNotFoundError:
        return "unknown"
