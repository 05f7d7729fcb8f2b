"""Read the curated manifests the trainer streams from, and select rows by the config's filters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import objectstore
from pipeline.io.parquet_tables import table_files
from pipeline.schema import SchemaVersionError, check_version
from trainer.config import FilterConfig

# Manifest columns the trainer needs; the pixels stay in the shards.
COLUMNS = [
    "sample_id",
    "dataset",
    "video_id",
    "category",
    "clip_id",
    "frame_index",
    "timestamp_s",
    "split",
    "width",
    "height",
    "fx",
    "fy",
    "cx",
    "cy",
    "motion",
    "layout",
    "shard",
    "row",
]


class ManifestError(ValueError):
    """A manifest the trainer cannot use: missing, of an unknown schema version, or empty after filtering."""


def data_root_of(manifest: str | Path) -> Path | str:
    """A manifest lives at <root>/manifest/<dataset>.parquet (a directory of per-video parts, or one file); shard
    paths in it are relative to <root>.

    For an object-store manifest (s3://...) the root is a URL too, and the shards are read through fsspec.
    """
    if objectstore.is_remote(manifest):
        return str(manifest).rsplit("/", 2)[0]
    return Path(manifest).resolve().parent.parent


def read_manifest(path: str | Path) -> pd.DataFrame:
    """One manifest (a path or an object-store URL: a directory of per-video parts, or one Parquet file) as a
    DataFrame with `root` (the data root) and `kind` (video or stereo) added."""
    path = path if objectstore.is_remote(path) else Path(path)
    parts = table_files(path)
    if not parts:
        raise ManifestError(f"manifest {path} does not exist or has no parts (no video of its dataset published)")
    tables = []
    for part in parts:
        with objectstore.open_parquet(part) as source:
            table = pq.read_table(source)  # no pixels in a manifest: every column is cheap and filterable
        try:
            check_version(table.schema, f"manifest {part}")
        except SchemaVersionError as exc:
            raise ManifestError(str(exc)) from exc
        missing = [c for c in COLUMNS if c not in table.schema.names]
        if missing:
            raise ManifestError(f"manifest {part} lacks columns {missing}")
        tables.append(table)
    frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    frame["root"] = str(data_root_of(path))
    frame["kind"] = np.where(frame["layout"].isna(), "video", "stereo")
    return frame


def load_manifests(paths: Sequence[str | Path], split: str | None, filters: FilterConfig) -> pd.DataFrame:
    """All rows of `paths` that pass `filters` (and belong to `split` when given), in manifest order."""
    if not paths:
        raise ManifestError("no manifest given")
    frame = pd.concat([read_manifest(p) for p in paths], ignore_index=True)
    total = len(frame)
    keep = np.ones(total, bool)
    if split is not None:
        keep &= (frame["split"] == split).to_numpy()
    if filters.datasets:
        keep &= frame["dataset"].isin(filters.datasets).to_numpy()
    if filters.categories:
        keep &= frame["category"].isin(filters.categories).to_numpy()
    for column, (low, high) in filters.ranges.items():
        if column not in frame.columns:
            raise ManifestError(f"filter on unknown manifest column {column!r}; columns: {sorted(frame.columns)}")
        values = frame[column].to_numpy(dtype=float, na_value=np.nan)
        if low is not None:
            keep &= values >= low
        if high is not None:
            keep &= values <= high
    frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        where = ", ".join(str(p) for p in paths)
        raise ManifestError(
            f"no samples left in {where} (of {total}) for split={split!r} and filters "
            f"{filters.model_dump(exclude_defaults=True) or '{}'}"
        )
    return frame


def check_shards(frame: pd.DataFrame) -> None:
    """Fail fast, naming the file, when a shard the manifest lists is missing."""
    for root, shard in frame[["root", "shard"]].drop_duplicates().itertuples(index=False):
        if not objectstore.exists(objectstore.join(root, shard)):
            raise ManifestError(f"shard {shard} listed in the manifest is missing under {root}")
