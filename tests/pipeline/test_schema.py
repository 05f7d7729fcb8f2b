from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.schema import (
    CAMERA_SCHEMA,
    CATEGORY_STATS_SCHEMA,
    FRAME_STATS_SCHEMA,
    MANIFEST_SCHEMA,
    SHARD_SCHEMA,
    VIDEO_STATS_SCHEMA,
    SchemaVersionError,
    check_version,
    embedding_schema,
)

DOC = (Path(__file__).resolve().parents[2] / "manifests" / "SCHEMA.md").read_text()


@pytest.mark.parametrize(
    "schema",
    [
        SHARD_SCHEMA,
        MANIFEST_SCHEMA,
        FRAME_STATS_SCHEMA,
        VIDEO_STATS_SCHEMA,
        CATEGORY_STATS_SCHEMA,
        CAMERA_SCHEMA,
        embedding_schema(8),
    ],
)
def test_every_column_is_documented(schema):
    missing = [name for name in schema.names if name not in DOC]
    assert missing == []


def test_version_check():
    check_version(SHARD_SCHEMA, "shard")
    with pytest.raises(SchemaVersionError, match="none"):
        check_version(pa.schema([("x", pa.int32())]), "foreign.parquet")
    future = SHARD_SCHEMA.with_metadata({b"depthcurate.schema_version": b"2.0"})
    with pytest.raises(SchemaVersionError, match="2.0"):
        check_version(future, "future.parquet")
