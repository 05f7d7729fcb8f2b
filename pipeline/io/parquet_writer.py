"""Row-buffered Parquet writing in bounded row groups, rolled into atomically published part files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.storage import sha256_file, temp_path_for


@dataclass(frozen=True)
class PartFile:
    path: Path
    rows: int
    bytes: int
    sha256: str


class PartWriter:
    """Append rows; a row group is flushed at `row_group_bytes` or `row_group_rows`, a part closed at `part_bytes`.

    Parts are written under hidden temporary names and renamed to `<prefix>-NNNNN.parquet` when complete,
    so readers only ever see whole files.
    """

    def __init__(
        self,
        directory: str | Path,
        schema: pa.Schema,
        *,
        prefix: str = "part",
        row_group_bytes: int = 64 << 20,
        row_group_rows: int = 100_000,
        part_bytes: int = 1 << 30,
        compression: str = "none",
    ) -> None:
        self.directory = Path(directory)
        self.schema = schema
        self.prefix = prefix
        self.row_group_bytes = row_group_bytes
        self.row_group_rows = row_group_rows
        self.part_bytes = part_bytes
        self.compression = compression
        self.parts: list[PartFile] = []
        self._rows: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._part_rows = 0
        self._part_bytes = 0

    @property
    def rows_written(self) -> int:
        return sum(p.rows for p in self.parts) + self._part_rows + len(self._rows)

    def add(self, row: dict[str, Any]) -> tuple[str, int]:
        """Buffer one row; returns the part file name it lands in and its row number there."""
        position = (self._part_name(), self._part_rows + len(self._rows))
        self._rows.append(row)
        self._buffered_bytes += 64 + sum(len(v) for v in row.values() if isinstance(v, (bytes, str)))
        if self._buffered_bytes >= self.row_group_bytes or len(self._rows) >= self.row_group_rows:
            self._flush()
        return position

    def _part_name(self) -> str:
        return f"{self.prefix}-{len(self.parts):05d}.parquet"

    def close(self) -> list[PartFile]:
        self._flush()
        self._publish()
        return self.parts

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except OSError:
            pass  # on a full disk the footer cannot be written either; the file goes anyway
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
        self._writer, self._tmp, self._rows, self._buffered_bytes = None, None, [], 0
        self._part_rows, self._part_bytes = 0, 0  # the discarded rows no longer count

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._tmp = temp_path_for(self.directory / self._part_name())
            self._writer = pq.ParquetWriter(
                self._tmp, self.schema, compression=self.compression, write_statistics=_statistics_columns(self.schema)
            )
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        self._writer.write_table(table, row_group_size=len(self._rows))
        self._part_rows += len(self._rows)
        self._part_bytes += self._buffered_bytes
        self._rows, self._buffered_bytes = [], 0
        if self._part_bytes >= self.part_bytes:
            self._publish()

    def _publish(self) -> None:
        if self._writer is None:
            return
        tmp = self._tmp
        assert tmp is not None  # _flush sets it together with _writer
        self._writer.close()
        final = self.directory / self._part_name()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self.parts.append(PartFile(final, self._part_rows, final.stat().st_size, sha256_file(final)))
        self._writer, self._tmp, self._part_rows, self._part_bytes = None, None, 0, 0


def _statistics_columns(schema: pa.Schema) -> list[str]:
    # Min/max of pixel bytes helps nobody; keep statistics on the columns readers filter by.
    return [f.name for f in schema if not pa.types.is_binary(f.type)]
