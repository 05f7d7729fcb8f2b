"""Tests for pipeline.io.parquet_writer: row-group bounds, part rolling, row positions, atomic publishing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.parquet_writer import PartFile, PartWriter
from pipeline.io.storage import TMP_MARK, sha256_file

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("blob", pa.binary())])
BLOB = 1000
ROW_ESTIMATE = 64 + len("r00000") + BLOB  # what the writer counts for one row below


def _row(i: int) -> dict:
    return {"id": i, "name": f"r{i:05d}", "blob": bytes([i % 251]) * BLOB}


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _group_rows(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def test_row_groups_bounded_by_rows(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA, row_group_rows=7)
    for i in range(25):
        writer.add(_row(i))
    parts = writer.close()
    assert [p.path.name for p in parts] == ["part-00000.parquet"]
    assert _group_rows(parts[0].path) == [7, 7, 7, 4]
    table = pq.read_table(parts[0].path)
    assert table.schema.equals(SCHEMA)
    assert table.to_pylist() == [_row(i) for i in range(25)]


def test_row_groups_bounded_by_bytes(tmp_path):
    bound = 10_000  # 9 rows stay under it, the 10th reaches it
    writer = PartWriter(tmp_path, SCHEMA, row_group_bytes=bound, row_group_rows=1_000_000)
    for i in range(45):
        writer.add(_row(i))
    [part] = writer.close()
    assert 9 * ROW_ESTIMATE < bound <= 10 * ROW_ESTIMATE
    assert _group_rows(part.path) == [10, 10, 10, 10, 5]
    meta = pq.ParquetFile(part.path).metadata
    for i in range(meta.num_row_groups):
        # the bound is met on the row that crosses it: a group overshoots by at most one row (plus page headers)
        assert meta.row_group(i).total_byte_size <= bound + BLOB + 1024


def test_big_rows_flush_one_per_group(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA, row_group_bytes=BLOB // 2)
    for i in range(4):
        writer.add(_row(i))
    [part] = writer.close()
    assert _group_rows(part.path) == [1, 1, 1, 1]


def test_parts_roll_at_part_bytes_and_positions_point_at_the_rows(tmp_path):
    # Groups of 10 rows (~10.7 kB each); a part closes once its groups reach 30 kB: after 3 groups.
    writer = PartWriter(tmp_path, SCHEMA, row_group_bytes=10_000, part_bytes=30_000)
    positions = [writer.add(_row(i)) for i in range(100)]
    assert writer.rows_written == 100
    parts = writer.close()
    assert [p.path.name for p in parts] == [f"part-{k:05d}.parquet" for k in range(4)]
    assert [p.rows for p in parts] == [30, 30, 30, 10]
    assert _listing(tmp_path) == [p.path.name for p in parts]
    assert positions == [(f"part-{i // 30:05d}.parquet", i % 30) for i in range(100)]
    tables = {p.path.name: pq.read_table(p.path) for p in parts}
    for i, (name, row) in enumerate(positions):
        assert tables[name].slice(row, 1).to_pylist() == [_row(i)]
    for p in parts:
        assert p.path.parent == tmp_path
        assert p.bytes == p.path.stat().st_size
        assert pq.ParquetFile(p.path).metadata.num_rows == p.rows


def test_positions_with_a_prefix_and_a_part_closing_on_the_row_that_fills_it(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA, prefix="frames", row_group_rows=4, part_bytes=4 * ROW_ESTIMATE)
    positions = [writer.add(_row(i)) for i in range(10)]
    # The 4th row fills a group and the part: it is still in part 0, the 5th opens part 1.
    assert positions[3] == ("frames-00000.parquet", 3)
    assert positions[4] == ("frames-00001.parquet", 0)
    parts = writer.close()
    assert [(p.path.name, p.rows) for p in parts] == [
        ("frames-00000.parquet", 4),
        ("frames-00001.parquet", 4),
        ("frames-00002.parquet", 2),
    ]
    for i, (name, row) in enumerate(positions):
        assert pq.read_table(tmp_path / name).column("id")[row].as_py() == i


def test_part_files_are_hidden_until_complete(tmp_path):
    writer = PartWriter(tmp_path / "out", SCHEMA, row_group_rows=5)
    for i in range(12):
        writer.add(_row(i))
    listing = _listing(tmp_path / "out")
    assert len(listing) == 1
    assert listing[0].startswith(".part-00000.parquet" + TMP_MARK)
    assert list((tmp_path / "out").glob("*.parquet")) == []  # readers see nothing yet
    writer.close()
    assert _listing(tmp_path / "out") == ["part-00000.parquet"]  # no temp left behind
    assert pq.read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 12


def test_close_without_rows_writes_nothing(tmp_path):
    writer = PartWriter(tmp_path / "out", SCHEMA)
    assert writer.close() == []
    assert not (tmp_path / "out").exists() or _listing(tmp_path / "out") == []


def test_close_is_idempotent(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA)
    writer.add(_row(0))
    first = writer.close()
    assert writer.close() == first
    assert _listing(tmp_path) == ["part-00000.parquet"]


def test_abort_removes_the_temp_and_publishes_nothing(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA, row_group_rows=5)
    for i in range(12):  # two groups in the temp file, two rows buffered
        writer.add(_row(i))
    assert len(_listing(tmp_path)) == 1
    writer.abort()
    assert _listing(tmp_path) == []
    assert writer.parts == []
    assert writer.rows_written == 0
    assert writer.close() == []  # the buffered rows went too
    assert _listing(tmp_path) == []


def test_abort_keeps_parts_already_published(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA, row_group_rows=5, part_bytes=1)  # every group closes a part
    for i in range(12):
        writer.add(_row(i))
    writer.abort()
    assert _listing(tmp_path) == ["part-00000.parquet", "part-00001.parquet"]
    assert writer.rows_written == 10


def test_writer_reused_after_abort_numbers_rows_afresh(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA, row_group_rows=3)
    for i in range(5):
        writer.add(_row(i))
    writer.abort()
    assert writer.add(_row(100)) == ("part-00000.parquet", 0)
    [part] = writer.close()
    assert part.rows == 1
    assert pq.read_table(part.path).column("id").to_pylist() == [100]


def test_part_file_metadata(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA, compression="zstd")
    for i in range(20):
        writer.add(_row(i))
    [part] = writer.close()
    assert isinstance(part, PartFile)
    assert part.sha256 == sha256_file(part.path)
    assert part.bytes == part.path.stat().st_size
    assert part.rows == 20
    meta = pq.ParquetFile(part.path).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert part.bytes < 20 * BLOB  # repeated bytes compress


def test_statistics_skip_binary_columns(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA)
    for i in range(5):
        writer.add(_row(i))
    [part] = writer.close()
    group = pq.ParquetFile(part.path).metadata.row_group(0)
    ids = group.column(0)
    assert ids.is_stats_set and (ids.statistics.min, ids.statistics.max) == (0, 4)
    assert group.column(1).is_stats_set
    assert not group.column(2).is_stats_set


def test_rows_must_match_the_schema(tmp_path):
    writer = PartWriter(tmp_path, SCHEMA, row_group_rows=1)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        writer.add({"id": "not a number", "name": "x", "blob": b""})
    writer.abort()
    assert _listing(tmp_path) == []


def test_move_if_changed_keeps_an_identical_file_untouched(tmp_path):
    from pipeline.io.storage import move_if_changed

    target, tmp = tmp_path / "t.bin", tmp_path / ".t.bin.tmp"
    tmp.write_bytes(b"abc")
    assert move_if_changed(tmp, target) and target.read_bytes() == b"abc" and not tmp.exists()
    stamp = target.stat().st_mtime_ns
    tmp.write_bytes(b"abc")
    assert not move_if_changed(tmp, target) and not tmp.exists() and target.stat().st_mtime_ns == stamp
    tmp.write_bytes(b"abd")
    assert move_if_changed(tmp, target) and target.read_bytes() == b"abd"
