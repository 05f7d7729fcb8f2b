"""Per-video CLIP embedding files: computed from the shards' JPEGs, resumable, read back for the corpus pass.

The corpus pass streams them (`current_files`, `read_sample_ids`, `iter_vectors`: a row group at a time);
`load_embeddings` reads every one into one matrix, for small corpora and as the reference in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.clip.model import ClipModel
from pipeline.io.data_root import DataRoot
from pipeline.io.storage import atomic_path
from pipeline.schema import EMBEDDING_MODEL_KEY, EMBEDDING_SOURCE_KEY, embedding_schema
from pipeline.video.record import VideoRecord

_ROW_GROUP_ROWS = 8192  # ~8 MB of 512-d float16 vectors per row group
_READ_ROWS = 256  # shard rows read at a time: a few hundred JPEGs (720p q95: ~50 MB)


def is_current(root: DataRoot, record: VideoRecord, model_hash: str) -> bool:
    """True when the video's embedding file exists and was made by this model from these shards."""
    path = root.embeddings(record.dataset, record.video_id)
    try:
        with root.open(path) as source:
            metadata = pq.read_schema(source).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return False
    return (
        metadata.get(EMBEDDING_MODEL_KEY, b"").decode() == model_hash
        and metadata.get(EMBEDDING_SOURCE_KEY, b"").decode() == record.shards_digest()
    )


def embed_video(root: DataRoot, record: VideoRecord, model: ClipModel) -> bool:
    """Embed every shard row of a finished video into its embedding file; False when it was already current."""
    if not record.ok:
        raise ValueError(f"{record.name} has status {record.status}: nothing to embed")
    if is_current(root, record, model.model_hash):
        return False
    path = root.embeddings(record.dataset, record.video_id)
    root.remove_stale_temps(path.parent, path.name)  # the directory is shared with other videos' writers
    schema = embedding_schema(model.dim).with_metadata(
        {
            **embedding_schema(model.dim).metadata,
            EMBEDDING_MODEL_KEY: model.model_hash.encode(),
            EMBEDDING_SOURCE_KEY: record.shards_digest().encode(),
        }
    )
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        pending: list[pa.Table] = []
        for part in record.shards:
            with root.open(root.root / part.path) as source:  # streamed: a part may be a gigabyte
                shard = pq.ParquetFile(source)
                # A few hundred JPEGs at a time: a long video costs time, not RAM.
                for batch in shard.iter_batches(
                    batch_size=max(_READ_ROWS, model.batch_size), columns=["sample_id", "image"]
                ):
                    vectors = model.embed_jpegs(batch.column("image").to_pylist())
                    pending.append(
                        pa.table(
                            {"sample_id": batch.column("sample_id"), "embedding": _vector_array(vectors)},
                            schema=schema,
                        )
                    )
                    if sum(t.num_rows for t in pending) >= _ROW_GROUP_ROWS:
                        writer.write_table(pa.concat_tables(pending))
                        pending = []
        if pending:
            writer.write_table(pa.concat_tables(pending))
    root.upload(path)  # object-store root: publish it (on disk it is in place already)
    return True


@dataclass
class CorpusEmbeddings:
    sample_ids: pa.Array  # string, one per row of `vectors`
    vectors: np.ndarray  # N x dim float16, unit rows
    files: list[dict[str, Any]]  # path, rows, sha256 of each file read (dataset.json lists them)
    missing: list[str]  # "<dataset>/<video_id>" of ok videos without current embeddings


def load_embeddings(root: DataRoot, records: list[VideoRecord], model_hash: str, dim: int) -> CorpusEmbeddings:
    """Current embeddings of the ok videos, in record order, into one preallocated float16 matrix (N x dim x 2
    bytes: 10 GB for 10M x 512; the publish pass streams instead, see pipeline/clip/curation.py)."""
    current, missing = current_files(root, records, model_hash)
    total = sum(_num_rows(root, p) for p in current)
    vectors = np.empty((total, dim), np.float16)
    ids, files, row = [], [], 0
    for path in current:
        with root.open_parquet(path) as source:
            table = pq.read_table(source)
        n = table.num_rows
        vectors[row : row + n] = _vectors(table["embedding"], dim)
        ids.append(table["sample_id"].combine_chunks())
        files.append(file_info(root, path, n))
        row += n
    sample_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    return CorpusEmbeddings(sample_ids, vectors, files, missing)


def current_files(root: DataRoot, records: list[VideoRecord], model_hash: str) -> tuple[list[Path], list[str]]:
    """Embedding files of the ok videos that are current, in record order, and "<dataset>/<video_id>" of the ok
    videos without one."""
    current, missing = [], []
    for record in records:
        if not record.ok:
            continue
        if is_current(root, record, model_hash):
            current.append(root.embeddings(record.dataset, record.video_id))
        else:
            missing.append(record.name)
    return current, missing


def file_info(root: DataRoot, path: Path, rows: int) -> dict[str, Any]:
    """What dataset.json lists of an embedding file read: path, rows, bytes, sha256."""
    return {"path": root.relative(path), "rows": rows, "bytes": root.size(path), "sha256": root.sha256(path)}


def read_sample_ids(root: DataRoot, path: Path) -> pa.Array:
    """The sample_id column of an embedding file (its rows, in order), without the vectors."""
    with root.open_parquet(path, ["sample_id"]) as source:
        return pq.read_table(source, columns=["sample_id"])["sample_id"].combine_chunks()


def iter_vectors(root: DataRoot, path: Path, dim: int, batch_rows: int | None = None) -> Iterator[np.ndarray]:
    """The file's float16 vectors in row order, `batch_rows` at a time (default `_ROW_GROUP_ROWS`: 8 MB at 512-d)."""
    batch_rows = batch_rows or _ROW_GROUP_ROWS
    with root.open_parquet(path, ["embedding"]) as source:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=batch_rows, columns=["embedding"]):
            yield _vectors(batch.column("embedding"), dim)


def _num_rows(root: DataRoot, path: Path) -> int:
    with root.open(path) as source:
        return pq.ParquetFile(source).metadata.num_rows


def _vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float16()), vectors.shape[1])


def _vectors(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim)
