"""Corpus-level step after all videos: cross-video dedup, CLIP curation, manifests, stats tables, dataset.json.

Out of core and incremental: the corpus decisions come first (cross-video duplicates from the kept frames'
hashes only, kept and reused between runs: pipeline/corpus/cross_video.py; the CLIP pass over the shard rows
when it is on). Then each video gets its own part of the frames table (stats/frames.parquet/<dataset>/
<video_id>.parquet) and of its dataset's manifest (manifest/<dataset>.parquet/<video_id>.parquet), written only
when what they are made from changed since the last publish (state/publish/outputs.json): adding a video to a
corpus reads and writes that video and the small tables, whatever the corpus's size. Memory holds a few
videos' rows and the decisions. A rerun whose inputs (records, config, catalog problems, camera files) are
unchanged and whose outputs are all in place returns the dataset.json it wrote last time and writes nothing.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from pipeline import package_version
from pipeline.config import CurateConfig
from pipeline.corpus.cross_video import VideoDuplicates, cross_video_duplicates
from pipeline.io.data_root import DataRoot
from pipeline.io.lease import LeaseTiming, acquire_lease
from pipeline.io.storage import sha256_file, temp_path_for
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
    SHARD_SCHEMA,
    VIDEO_STATS_SCHEMA,
)
from pipeline.sources.catalog import CatalogProblem
from pipeline.video.record import VideoRecord, load_records

_ROW_GROUP_ROWS = 1_000_000  # of the stats tables and manifests
_INPUTS_STATE = "inputs.json"
_OUTPUTS_STATE = "outputs.json"
VideoKey = tuple[str, str]


@dataclass
class _Tally:
    """The per-video outputs summed: for dataset.json and for each video's record."""

    frames: int = 0
    kept: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    publish_drops: dict[VideoKey, collections.Counter[str]] = field(default_factory=dict)
    manifests: dict[str, int] = field(default_factory=dict)


@dataclass
class _ClipPass:
    """The CLIP pass's decisions for the frames ingest kept (the shard rows), in corpus order."""

    table: pa.Table  # kept, drop_reason, duplicate_of and the score columns
    offsets: dict[VideoKey, int]  # where each video's rows start
    info: dict[str, Any]


def publish(root: DataRoot, cfg: CurateConfig, catalog_problems: Sequence[CatalogProblem] = ()) -> dict[str, Any]:
    """Write stats tables, manifests and dataset.json for everything finished under `root`; returns dataset.json.

    One run publishes at a time (a lease on the corpus): a run that finds another publishing waits for it, then
    publishes too, so its own videos are in the result.
    """
    timing = LeaseTiming(cfg.run.lease_heartbeat_s, cfg.run.lease_stale_s)
    with acquire_lease(root.publish_lease, timing, wait_s=cfg.run.publish_wait_s) as lease:
        if lease is None:
            raise PublishBusy(
                f"another run has been publishing {root.name} for over {cfg.run.publish_wait_s:.0f}s "
                "(run.publish_wait_s); rerun to publish"
            )
        return _publish(root, cfg, catalog_problems)


class PublishBusy(RuntimeError):
    pass


def _publish(root: DataRoot, cfg: CurateConfig, catalog_problems: Sequence[CatalogProblem]) -> dict[str, Any]:
    records = load_records(root)
    datasets = sorted({r.dataset for r in records})
    _remove_temps(root, datasets)
    inputs = _inputs_digest(root, records, cfg, catalog_problems)
    unchanged = _unchanged_description(root, inputs)
    if unchanged is not None:
        return unchanged
    listed = _listed_files(root, records)  # before publish recounts the records in memory
    videos = [r for r in records if r.ok]
    duplicates = cross_video_duplicates(root, records, cfg.dedup) if cfg.dedup.across_videos else {}
    clip = _clip_pass(root, records, videos, duplicates, cfg) if cfg.clip.enabled else None
    cameras = _cameras(root, records, cfg)
    outputs = _write_video_tables(root, videos, duplicates, clip, cameras)
    tally = _tally(datasets, outputs)
    _recount(records, tally)
    small = {
        root.videos_table: _parquet_bytes(_videos_table(records, catalog_problems)),
        root.categories_table: _parquet_bytes(_categories_table(records)),
    }
    if cfg.intrinsics.enabled:
        rows = [{n: c.get(n) for n in CAMERA_SCHEMA.names} for c in cameras.values()]
        small[root.cameras_table] = _parquet_bytes(pa.Table.from_pylist(rows, schema=CAMERA_SCHEMA))
    files = {path: _FileDigest(size=len(data), sha256=_sha256(data)) for path, data in small.items()}
    for path, data in small.items():
        root.write_bytes(path, data)
    files.update({root.root / rel: file for output in outputs.values() for rel, file in output.files.items()})
    description = _description(root, cfg, records, tally, files, clip.info if clip else None, cameras)
    description["files"] = listed + _camera_files(root, cameras)
    data = (json.dumps(description, indent=2, sort_keys=True) + "\n").encode()
    root.write_bytes(root.dataset_json, data)
    files[root.dataset_json] = _FileDigest(size=len(data), sha256=_sha256(data))
    _save_inputs(root, inputs, files)
    return description


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


# ---------------------------------------------------------------- the per-video tables


class _FileDigest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int
    sha256: str


class _VideoOutput(BaseModel):
    """What publish wrote for one video (its frames-table part and manifest part) and what dataset.json counts
    of it; kept in state/publish/outputs.json so an unchanged video is neither read nor written again."""

    model_config = ConfigDict(extra="forbid")

    key: str | None  # digest of everything the two files are made from; None: rewrite every time (CLIP)
    frames: int
    kept: int
    reasons: dict[str, int]  # drop reasons of its frame rows
    samples: int
    files: dict[str, _FileDigest]  # by path relative to the data root


class _OutputsState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    videos: dict[str, _VideoOutput]  # by "dataset/video_id"


def _write_video_tables(
    root: DataRoot,
    videos: list[VideoRecord],
    duplicates: dict[VideoKey, VideoDuplicates],
    clip: _ClipPass | None,
    cameras: dict[VideoKey, dict[str, Any]],
) -> dict[str, _VideoOutput]:
    """Each ok video's frame rows (corpus decisions applied) into its part of the frames table, and its kept
    shard rows into its part of its dataset's manifest; returns what was written per video, in corpus order.

    A video whose inputs (record, cross-video decisions, camera) are those of its parts in place is skipped:
    adding a video to a corpus reads and writes that video, not the corpus.
    """
    _clear_old_layout(root, sorted({v.dataset for v in videos}))
    previous = _load_outputs(root)
    outputs: dict[str, _VideoOutput] = {}
    keys = {}
    for video in videos:
        key = (video.dataset, video.video_id)
        keys[key] = _video_key(video, duplicates.get(key), cameras.get(key), clip)
        old = previous.get(_name(video))
        if keys[key] is not None and old is not None and old.key == keys[key] and _in_place(root, old):
            outputs[_name(video)] = old
    todo = [v for v in videos if _name(v) not in outputs]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-write") as writer:
        in_flight: Future[tuple[str, _VideoOutput]] | None = None
        for video, read in _read_ahead(root, todo):
            key = (video.dataset, video.video_id)
            frames = _decide(read.frames, duplicates.get(key), clip, key)
            manifest = _manifest_table(read.shards, frames, cameras.get(key))
            if in_flight is not None:  # one video encoding while the next is read and decided: bounded memory
                name, done = in_flight.result()
                outputs[name] = done
            in_flight = writer.submit(_write_video, root, video, keys[key], frames, manifest)
        if in_flight is not None:
            name, done = in_flight.result()
            outputs[name] = done
    ordered = {_name(v): outputs[_name(v)] for v in videos}
    _remove_unlisted(root, ordered)
    _save_outputs(root, ordered)
    return ordered


def _name(video: VideoRecord) -> str:
    return f"{video.dataset}/{video.video_id}"  # the key of outputs.json


def _write_video(
    root: DataRoot, video: VideoRecord, key: str | None, frames: pa.Table, manifest: pa.Table
) -> tuple[str, _VideoOutput]:
    """Encode and publish a video's two parts (on the writer thread: Arrow releases the GIL)."""
    files = {}
    parts = [
        (root.frames_table_part(video.dataset, video.video_id), frames),
        (root.manifest_part(video.dataset, video.video_id), manifest),
    ]
    for path, table in parts:
        tmp = temp_path_for(path)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression="zstd", row_group_size=_ROW_GROUP_ROWS)
        files[root.relative(path)] = _FileDigest(size=tmp.stat().st_size, sha256=sha256_file(tmp))
        root.publish_file(tmp, path)
    reasons = {
        str(r["values"]): int(r["counts"])
        for r in pc.value_counts(frames["drop_reason"]).to_pylist()
        if r["values"] is not None
    }
    kept = int(pc.sum(frames["kept"]).as_py() or 0)
    output = _VideoOutput(
        key=key, frames=frames.num_rows, kept=kept, reasons=reasons, samples=manifest.num_rows, files=files
    )
    return _name(video), output


def _video_key(
    video: VideoRecord, duplicates: VideoDuplicates | None, camera: dict[str, Any] | None, clip: _ClipPass | None
) -> str | None:
    """Digest of what a video's parts are made from. The record carries its frame parts' and shards' sha256.
    With CLIP on, a video's rows depend on the whole corpus (SemDeDup clusters): no key, always rewritten."""
    if clip is not None:
        return None
    digest = hashlib.sha256(f"{SCHEMA_VERSION}\n{package_version()}\n".encode())
    digest.update(video.to_json())
    if duplicates is not None:
        digest.update(np.asarray(duplicates.rows, "<i8").tobytes())
        digest.update("\n".join(duplicates.duplicate_of).encode())
    digest.update(json.dumps(camera, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _in_place(root: DataRoot, output: _VideoOutput) -> bool:
    try:
        return all(root.size(root.root / relative) == file.size for relative, file in output.files.items())
    except OSError:  # missing
        return False


def _load_outputs(root: DataRoot) -> dict[str, _VideoOutput]:
    """Last publish's per-video outputs; empty (everything is written again) when the state is missing or
    damaged: it is rebuilt, never trusted."""
    try:
        return _OutputsState.model_validate_json(root.read_bytes(root.publish_state(_OUTPUTS_STATE))).videos
    except (OSError, ValueError):
        return {}


def _save_outputs(root: DataRoot, outputs: dict[str, _VideoOutput]) -> None:
    state = _OutputsState(videos=outputs)
    root.write_bytes(root.publish_state(_OUTPUTS_STATE), state.model_dump_json(indent=1).encode())


def _remove_temps(root: DataRoot, datasets: list[str]) -> None:
    """What a publish killed mid-write left (unchanged bytes are not rewritten, so it is cleared here). The
    part directories are publish's alone, and one publish runs at a time (the lease): no temporary is live."""
    for path in [root.videos_table, root.categories_table, root.cameras_table, root.dataset_json]:
        root.remove_stale_temps(path.parent, path.name)
    for directory in [*(root.frames_table / d for d in datasets), *(root.manifest(d) for d in datasets)]:
        root.remove_stale_temps(directory)


def _clear_old_layout(root: DataRoot, datasets: list[str]) -> None:
    """Single-file tables of the layout before per-video parts give way to their directories."""
    for table in [root.frames_table, *(root.manifest(d) for d in datasets)]:
        if root.exists(table):
            root.remove(table)


def _remove_unlisted(root: DataRoot, outputs: dict[str, _VideoOutput]) -> None:
    """Delete the parts of videos no longer published (removed, or failed since)."""
    listed = {root.root / relative for output in outputs.values() for relative in output.files}
    for path in root.table_parts():
        if path not in listed:
            root.remove(path)


def _tally(datasets: list[str], outputs: dict[str, _VideoOutput]) -> _Tally:
    tally = _Tally(manifests={d: 0 for d in datasets})
    for name, output in outputs.items():
        dataset, video_id = name.split("/", 1)
        tally.frames += output.frames
        tally.kept += output.kept
        tally.reasons.update(output.reasons)
        tally.manifests[dataset] += output.samples
        drops = {r: n for r, n in output.reasons.items() if r in PUBLISH_DROP_REASONS}
        tally.publish_drops[(dataset, video_id)] = collections.Counter(drops)
    return tally


@dataclass
class _VideoTables:
    frames: pa.Table  # every frame row, as ingest wrote them
    shards: list[tuple[str, pa.Table]]  # (part path, its sample columns)


def _read_video(root: DataRoot, video: VideoRecord) -> _VideoTables:
    # The shard schema fills columns a shard written by an older release lacks with nulls.
    shards = [
        (part.path, _read_table(root, part.path, columns=list(SAMPLE_COLUMNS), schema=SHARD_SCHEMA))
        for part in video.shards
    ]
    return _VideoTables(_read_frames(root, video), shards)


def _read_frames(root: DataRoot, video: VideoRecord) -> pa.Table:
    tables = [_read_table(root, part.path, schema=FRAME_STATS_SCHEMA) for part in video.frame_parts]
    return pa.concat_tables(tables) if tables else FRAME_STATS_SCHEMA.empty_table()


def _read_ahead(root: DataRoot, videos: list[VideoRecord]) -> Iterator[tuple[VideoRecord, _VideoTables]]:
    """The videos' tables in order, the next one read while the caller encodes this one (Arrow releases the
    GIL in both), so reading and compressing overlap: a few videos' rows in memory at most."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-read") as pool:
        pending: collections.deque[tuple[VideoRecord, Future[_VideoTables]]] = collections.deque()
        for video in videos:
            pending.append((video, pool.submit(_read_video, root, video)))
            if len(pending) > 1:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _decide(table: pa.Table, duplicates: VideoDuplicates | None, clip: _ClipPass | None, key: VideoKey) -> pa.Table:
    """A video's frame rows with the corpus decisions applied (kept, drop_reason, duplicate_of, CLIP scores)."""
    if clip is not None:  # its decisions include the cross-video ones
        return _with_clip(table, clip, clip.offsets[key])
    if duplicates is None or len(duplicates.rows) == 0:
        return table
    mask = np.zeros(table.num_rows, bool)
    mask[duplicates.rows] = True
    reasons = pa.array(["duplicate_cross_video"] * len(duplicates.rows), pa.string())
    return _set_rows(table, mask, reasons, pa.array(duplicates.duplicate_of, pa.string()))


def _set_rows(table: pa.Table, mask: np.ndarray, reasons: pa.Array, duplicate_of: pa.Array) -> pa.Table:
    """Drop the masked rows with these reasons and duplicate_of values (one per masked row, in row order)."""
    selected = pa.array(mask)
    updates = {
        "kept": pc.and_(table["kept"].combine_chunks(), pa.array(~mask)),
        "drop_reason": pc.replace_with_mask(table["drop_reason"].combine_chunks(), selected, reasons),
        "duplicate_of": pc.replace_with_mask(table["duplicate_of"].combine_chunks(), selected, duplicate_of),
    }
    for name, column in updates.items():
        index = table.schema.get_field_index(name)  # the field itself, so `kept` stays non-nullable
        table = table.set_column(index, table.schema.field(index), column)
    return table


def _with_clip(table: pa.Table, clip: _ClipPass, offset: int) -> pa.Table:
    """Apply the CLIP pass's rows (this video's shard rows, from `offset`) to the frame rows ingest kept."""
    ingest_kept = np.flatnonzero(table["kept"].to_numpy(zero_copy_only=False))
    decided = clip.table.slice(offset, len(ingest_kept))
    mask = np.zeros(table.num_rows, bool)
    mask[ingest_kept] = True
    dropped = ~decided["kept"].to_numpy(zero_copy_only=False)
    drop_mask = np.zeros(table.num_rows, bool)
    drop_mask[ingest_kept[dropped]] = True
    table = _set_rows(
        table,
        drop_mask,
        decided["drop_reason"].filter(pa.array(dropped)).combine_chunks(),
        decided["duplicate_of"].filter(pa.array(dropped)).combine_chunks(),
    )
    where = np.full(table.num_rows, -1, np.int64)
    where[ingest_kept] = np.arange(len(ingest_kept))
    for name in CLIP_SCORE_COLUMNS:
        # Rows ingest dropped have no embedding: null, as take() of a null index gives.
        column = decided[name].take(pa.array(where, mask=where < 0))
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _manifest_table(shards: list[tuple[str, pa.Table]], frames: pa.Table, camera: dict[str, Any] | None) -> pa.Table:
    """A video's manifest part: the kept rows of its shards, in shard order."""
    tables = [rows.cast(MANIFEST_SCHEMA) for rows in _manifest_rows(shards, frames, camera)]
    return pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()


def _manifest_rows(
    shards: list[tuple[str, pa.Table]], frames: pa.Table, camera: dict[str, Any] | None
) -> Iterator[pa.Table]:
    """Kept rows of the video's shards, no pixels, with where they are, their CLIP scores and intrinsics."""
    kept = frames.select(["frame_index", *CLIP_SCORE_COLUMNS]).filter(frames["kept"])  # select first: cheaper
    # Within a video a frame index names one sample (its sample_id is built from it): matching integers
    # instead of sample_id strings is what keeps this pass cheap at tens of millions of rows.
    kept_index = kept["frame_index"].to_numpy()
    order = np.argsort(kept_index, kind="stable")
    sorted_index = kept_index[order]
    for path, table in shards:
        index = table["frame_index"].to_numpy()
        at = np.minimum(np.searchsorted(sorted_index, index), max(len(sorted_index) - 1, 0))
        found = sorted_index[at] == index if len(sorted_index) else np.zeros(len(index), bool)
        rows = np.flatnonzero(found)
        if len(rows) < table.num_rows:  # most shards keep every row: no copy of their columns then
            table = table.filter(pa.array(found))
        table = table.append_column("shard", pa.repeat(pa.scalar(path, pa.string()), len(rows)))
        table = table.append_column("row", pa.array(rows, pa.int64()))
        scores = kept.take(order[at[rows]])
        for name in CLIP_SCORE_COLUMNS:
            table = table.append_column(name, scores[name])
        yield _with_intrinsics(table, camera)


# ---------------------------------------------------------------- corpus decisions


def _clip_pass(
    root: DataRoot,
    records: list[VideoRecord],
    videos: list[VideoRecord],
    duplicates: dict[VideoKey, VideoDuplicates],
    cfg: CurateConfig,
) -> _ClipPass:
    """Tags, junk and SemDeDup over the frames ingest kept, after the cross-video decisions."""
    from pipeline.clip.curation import curate_frames  # imports torch: only when CLIP curation is on

    tables, offsets, offset = [], {}, 0
    for video in videos:
        key = (video.dataset, video.video_id)
        table = _decide(_read_frames(root, video), duplicates.get(key), None, key)
        ingest_kept = _ingest_kept(table, duplicates.get(key))
        offsets[key] = offset
        offset += ingest_kept.num_rows
        tables.append(ingest_kept)
    shard_rows = pa.concat_tables(tables) if tables else _slim(FRAME_STATS_SCHEMA.empty_table())
    decided, info = curate_frames(root, records, shard_rows, cfg.clip)
    return _ClipPass(decided, offsets, info)


def _ingest_kept(table: pa.Table, duplicates: VideoDuplicates | None) -> pa.Table:
    """The rows ingest kept (kept now, or dropped as cross-video duplicates since), slimmed to what CLIP reads."""
    ingest_kept = table["kept"].to_numpy(zero_copy_only=False).copy()
    if duplicates is not None:
        ingest_kept[duplicates.rows] = True
    return _slim(table.filter(pa.array(ingest_kept)))


def _slim(table: pa.Table) -> pa.Table:
    return table.select(["sample_id", "kept", "drop_reason", "duplicate_of", *CLIP_SCORE_COLUMNS])


def _recount(records: list[VideoRecord], tally: _Tally) -> None:
    """Bring each record's kept/dropped counts in line with the corpus-level decisions."""
    for record in records:
        counts = tally.publish_drops.get((record.dataset, record.video_id), collections.Counter())
        record.dropped.update({reason: counts.get(reason, 0) for reason in PUBLISH_DROP_REASONS})
        # The record's frames_kept is what ingest kept; records are re-read on every publish.
        record.frames_kept = record.frames_kept - sum(counts.values()) if record.ok else 0


def _cameras(root: DataRoot, records: list[VideoRecord], cfg: CurateConfig) -> dict[VideoKey, dict[str, Any]]:
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


# ---------------------------------------------------------------- the small tables


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


def _read_table(
    root: DataRoot, relative: str, columns: list[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """A Parquet file under the data root (only `columns`: an object store then sends no pixels)."""
    with root.open_parquet(root.root / relative, columns) as source:
        return pq.read_table(source, columns=columns, schema=schema)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=_ROW_GROUP_ROWS)
    return sink.getvalue()


# ---------------------------------------------------------------- dataset.json and the rerun check


def _listed_files(root: DataRoot, records: list[VideoRecord]) -> list[dict[str, Any]]:
    """The per-video files beyond the shards, for verify: each record, its frame parts and its preview."""
    files = []
    for record in records:
        data = record.to_json()  # the record file's bytes (they round-trip exactly)
        path = root.relative(root.video_record(record.dataset, record.video_id))
        files.append({"kind": "record", "path": path, "bytes": len(data), "sha256": _sha256(data)})
        files += [{"kind": "frame_part", **part.model_dump()} for part in record.frame_parts]
        if record.preview_sha256 is not None:
            preview = root.relative(root.preview(record.dataset, record.video_id))
            files.append({"kind": "preview", "path": preview, "sha256": record.preview_sha256})
    return files


def _camera_files(root: DataRoot, cameras: dict[VideoKey, dict[str, Any]]) -> list[dict[str, Any]]:
    files = []
    for dataset, video_id in sorted(cameras):
        path = root.camera(dataset, video_id)
        if root.exists(path):
            files.append({"kind": "camera", "path": root.relative(path), "sha256": root.sha256(path)})
    return files


def _description(
    root: DataRoot,
    cfg: CurateConfig,
    records: list[VideoRecord],
    tally: _Tally,
    files: dict[Path, _FileDigest],
    clip_info: dict[str, Any] | None,
    cameras: dict[VideoKey, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": f"depthcurate {package_version()}",
        "config": cfg.recorded(),
        "config_hash": cfg.full_hash(),
        "processing_hash": cfg.processing_hash(),
        "counts": {
            "videos": dict(sorted(collections.Counter(r.status for r in records).items())),
            "frames_decoded": tally.frames,
            "frames_kept": tally.kept,
            "dropped": {reason: tally.reasons.get(reason, 0) for reason in DROP_REASONS},
            "samples": tally.manifests,
            **(
                {"cameras": dict(sorted(collections.Counter(c["status"] for c in cameras.values()).items()))}
                if cfg.intrinsics.enabled
                else {}
            ),
        },
        "shards": [part.model_dump() for r in records if r.ok for part in r.shards],
        "clip": clip_info,  # model, checkpoint sha256, embedding files, SemDeDup figures; null when off
        "tables": {root.relative(path): file.sha256 for path, file in sorted(files.items())},
    }


def _inputs_digest(
    root: DataRoot, records: list[VideoRecord], cfg: CurateConfig, catalog_problems: Sequence[CatalogProblem]
) -> str | None:
    """A digest of everything publish reads, or None when an input cannot be fingerprinted cheaply (CLIP's
    embedding files): then publish always runs. Records carry their parts' sha256, so their bytes cover the
    frame parts and shards."""
    if cfg.clip.enabled:
        return None
    digest = hashlib.sha256(f"{SCHEMA_VERSION}\n{package_version()}\n{cfg.full_hash()}\n".encode())
    for record in records:
        digest.update(record.to_json())
    for problem in catalog_problems:
        digest.update(repr(problem).encode())
    if cfg.intrinsics.enabled:
        for record in records:
            path = root.camera(record.dataset, record.video_id)
            digest.update(root.read_bytes(path) if record.ok and root.exists(path) else b"-")
    return digest.hexdigest()


def _unchanged_description(root: DataRoot, inputs: str | None) -> dict[str, Any] | None:
    """Last run's dataset.json when its inputs were these and every output it wrote is in place, at its size."""
    if inputs is None:
        return None
    try:
        state = json.loads(root.read_bytes(root.publish_state(_INPUTS_STATE)))
        if state["inputs"] != inputs:
            return None
        for relative, size in state["sizes"].items():
            if root.size(root.root / relative) != size:
                return None
        description: dict[str, Any] = json.loads(root.read_bytes(root.dataset_json))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return description


def _save_inputs(root: DataRoot, inputs: str | None, files: dict[Path, _FileDigest]) -> None:
    """The inputs digest and the size of every output (known from writing them: nothing is stat'ed again)."""
    if inputs is None:
        root.remove(root.publish_state(_INPUTS_STATE))
        return
    sizes = {root.relative(path): file.size for path, file in files.items()}
    state = {"inputs": inputs, "sizes": sizes}
    root.write_bytes(root.publish_state(_INPUTS_STATE), json.dumps(state, indent=1, sort_keys=True).encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
