"""manifests/SCHEMA.md against pipeline/schema.py: every table's columns, in order, with their Arrow types."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import schema as schemas
from pipeline.schema import (
    CAMERA_SCHEMA,
    CATEGORY_STATS_SCHEMA,
    FRAME_STATS_SCHEMA,
    MANIFEST_SCHEMA,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    VIDEO_STATS_SCHEMA,
    SchemaVersionError,
    check_version,
    embedding_schema,
)

DOC = (Path(__file__).resolve().parents[2] / "manifests" / "SCHEMA.md").read_text()
EMBEDDING_DIM = 8  # the doc writes the embedding's length as `dim`
# SCHEMA.md's section titles (`## <title>: <path>`) and the schema each one documents.
SECTIONS = {
    "Samples": SHARD_SCHEMA,
    "Manifest": MANIFEST_SCHEMA,
    "Frames": FRAME_STATS_SCHEMA,
    "Videos": VIDEO_STATS_SCHEMA,
    "Categories": CATEGORY_STATS_SCHEMA,
    "Cameras": CAMERA_SCHEMA,
    "Embeddings": embedding_schema(EMBEDDING_DIM),
}


def _documented(title: str) -> list[tuple[str, str]]:
    """(column, type) of each row of the column table in SCHEMA.md's section `title`."""
    (section,) = [s for s in re.split(r"(?m)^## ", DOC) if s.startswith(f"{title}:")]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[:2] == ["| column | type | meaning |", "|---|---|---|"], f"{title}: no column table"
    cells = [re.split(r"(?<!\\)\|", row)[1:3] for row in rows[2:]]  # a \| inside a cell is not a border
    return [(name.strip(), kind.strip().replace("`", "")) for name, kind in cells]


def _arrow(field: pa.Field) -> str:
    kind = str(field.type).replace(f"[{EMBEDDING_DIM}]", "[dim]")
    return f"{kind}, null" if field.nullable else kind


@pytest.mark.parametrize("title", SECTIONS)
def test_each_table_in_schema_md_matches_its_schema_column_by_column(title):
    expected = [(field.name, _arrow(field)) for field in SECTIONS[title]]
    assert _documented(title) == expected


def test_every_schema_has_a_section():
    module_schemas = [value for value in vars(schemas).values() if isinstance(value, pa.Schema)]
    assert all(any(schema is s for s in SECTIONS.values()) for schema in module_schemas)
    assert f"(schema version {SCHEMA_VERSION})" in DOC.splitlines()[0]


def test_version_check():
    check_version(SHARD_SCHEMA, "shard")
    with pytest.raises(SchemaVersionError, match="none"):
        check_version(pa.schema([("x", pa.int32())]), "foreign.parquet")
    future = SHARD_SCHEMA.with_metadata({b"depthcurate.schema_version": b"2.0"})
    with pytest.raises(SchemaVersionError, match="2.0"):
        check_version(future, "future.parquet")
