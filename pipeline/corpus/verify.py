"""Check a published dataset against its dataset.json: every file it consists of, schemas, counts."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq

from pipeline.corpus.description import read_description
from pipeline.io.data_root import DataRoot
from pipeline.schema import (
    CATEGORY_STATS_SCHEMA,
    FRAME_STATS_SCHEMA,
    MANIFEST_SCHEMA,
    SHARD_SCHEMA,
    VIDEO_STATS_SCHEMA,
    SchemaVersionError,
    check_version,
    embedding_schema,
)
from pipeline.video.record import VideoRecord, count_problems


def verify_dataset(root: DataRoot) -> list[str]:
    """Problems found, one readable line each; empty when everything matches."""
    description = read_description(root)
    problems: list[str] = []
    for shard in description["shards"]:
        problems += _check_file(root, shard["path"], shard["sha256"], SHARD_SCHEMA, shard["rows"])
    expected = {
        "manifest": MANIFEST_SCHEMA,
        "stats/videos.parquet": VIDEO_STATS_SCHEMA,
        "stats/frames.parquet": FRAME_STATS_SCHEMA,
        "stats/categories.parquet": CATEGORY_STATS_SCHEMA,
    }
    for path, digest in description["tables"].items():
        schema = next(s for prefix, s in expected.items() if path.startswith(prefix))
        problems += _check_file(root, path, digest, schema, None)
    problems += _unlisted_parts(root, description["tables"])
    for file in description.get("files", []):
        if file["kind"] == "frame_part":
            problems += _check_file(root, file["path"], file["sha256"], FRAME_STATS_SCHEMA, file["rows"])
        else:
            problems += _check_bytes(root, file["path"], file["sha256"])
    problems += _record_counts(root, description.get("files", []))
    clip = description.get("clip") or {}
    for file in clip.get("embeddings", []):
        problems += _check_file(
            root, file["path"], file["sha256"], embedding_schema(clip["embedding_dim"]), file["rows"]
        )
    return problems


def _unlisted_parts(root: DataRoot, tables: dict[str, str]) -> list[str]:
    """Per-video parts in the table directories that dataset.json does not list: readers of the directory see
    them, so they are problems too (a publish that stopped after writing them; the next one settles them)."""
    return [
        f"{relative}: not in dataset.json (a publish did not finish: rerun it)"
        for relative in map(root.relative, root.table_parts())
        if relative not in tables
    ]


def _check_bytes(root: DataRoot, relative: str, digest: str) -> list[str]:
    path = root.root / relative
    if not root.exists(path):
        return [f"{relative}: missing"]
    if root.sha256(path) != digest:
        return [f"{relative}: sha256 mismatch (file changed or corrupted since publishing)"]
    return []


def _record_counts(root: DataRoot, files: list[dict[str, Any]]) -> list[str]:
    """Each video record's counts against the rows of the parts it lists (an edited record shows here too)."""
    problems = []
    for file in files:
        if file["kind"] != "record" or not root.exists(root.root / file["path"]):
            continue
        record = VideoRecord.from_flat(json.loads(root.read_bytes(root.root / file["path"])))
        problems += [f"{file['path']}: {problem}" for problem in count_problems(record)]
    return problems


def _check_file(root: DataRoot, relative: str, digest: str, schema, rows: int | None) -> list[str]:
    path = root.root / relative
    if not root.exists(path):
        return [f"{relative}: missing"]
    if root.sha256(path) != digest:
        return [f"{relative}: sha256 mismatch (file changed or corrupted since publishing)"]
    try:
        with root.open(path) as source:
            parquet = pq.ParquetFile(source)
            found, metadata = parquet.schema_arrow, parquet.metadata
        check_version(found, relative)
    except SchemaVersionError as exc:
        return [str(exc)]
    except Exception as exc:  # noqa: BLE001 - any unreadable footer is a problem to report
        return [f"{relative}: unreadable Parquet ({exc})"]
    if not found.remove_metadata().equals(schema.remove_metadata()):
        return [f"{relative}: schema differs from the documented one"]
    if rows is not None and metadata.num_rows != rows:
        return [f"{relative}: {metadata.num_rows} rows, dataset.json says {rows}"]
    return []
