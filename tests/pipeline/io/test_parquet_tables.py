"""Reading a published table: a directory of per-video parts, or one file (the layout before parts)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import objectstore
from pipeline.io.parquet_tables import read_table, table_files
from pipeline.io.storage import temp_path_for

SCHEMA = pa.schema([pa.field("video", pa.string()), pa.field("n", pa.int64()), pa.field("extra", pa.float32())])


def _write_parts(directory, names):
    for name in names:
        path = directory / "ds" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"video": [name] * 2, "n": [1, 2]}), path)  # no `extra`: an older part


def test_a_directory_reads_as_its_parts_in_path_order_skipping_temporaries(tmp_path):
    table = tmp_path / "frames.parquet"
    _write_parts(table, ["b", "a", "c"])
    temp_path_for(table / "ds" / "d.parquet").write_bytes(b"half a part")  # a writer's live temporary
    (table / "ds" / "_SUCCESS.parquet").write_bytes(b"")
    assert [p.name for p in table_files(table)] == ["a.parquet", "b.parquet", "c.parquet"]
    found = read_table(table, schema=SCHEMA)
    assert found.column("video").to_pylist() == ["a", "a", "b", "b", "c", "c"]
    assert found.column("extra").null_count == 6 and found.schema.equals(SCHEMA)
    assert found.equals(pq.read_table(table, schema=SCHEMA))  # what pyarrow itself reads from the directory
    assert read_table(table, columns=["n"]).column_names == ["n"]


def test_one_file_is_its_own_only_part(tmp_path):
    path = tmp_path / "frames.parquet"
    pq.write_table(pa.table({"video": ["a"], "n": [3]}), path)
    assert table_files(path) == [path]
    assert read_table(path).to_pylist() == [{"video": "a", "n": 3}]


def test_no_table_is_empty_with_a_schema_and_an_error_without(tmp_path):
    (tmp_path / "empty.parquet").mkdir()
    for where in (tmp_path / "empty.parquet", tmp_path / "absent.parquet"):
        assert table_files(where) == []
        assert read_table(where, columns=["n"], schema=SCHEMA).num_rows == 0
        with pytest.raises(FileNotFoundError, match="no Parquet table"):
            read_table(where)


def test_parts_on_an_object_store(s3_bucket, tmp_path):
    _write_parts(tmp_path / "t.parquet", ["b", "a"])
    for part in table_files(tmp_path / "t.parquet"):
        objectstore.put_file_atomic(part, f"{s3_bucket}/t.parquet/ds/{part.name}")
    url = f"{s3_bucket}/t.parquet"
    assert [u.rsplit("/", 1)[-1] for u in table_files(url)] == ["a.parquet", "b.parquet"]
    assert read_table(url).equals(read_table(tmp_path / "t.parquet"))
