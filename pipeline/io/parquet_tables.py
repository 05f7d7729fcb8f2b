"""Read a published table, whichever form it has: a directory of per-video Parquet files (what publish writes,
so adding a video rewrites only that video's file) or one Parquet file (the layout before per-video parts).

The directory's files are read in sorted path order, as pyarrow and pandas read such a directory; files whose
name starts with "." or "_" are skipped, as they do (a writer's temporaries start with ".").
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import objectstore


def table_files(location: str | Path) -> list[str | Path]:
    """The Parquet files of the table at a local path or URL: the file itself, or the parts under the directory;
    empty when there is neither."""
    if objectstore.exists(location):
        return [location]
    if objectstore.is_remote(location):
        found = objectstore.glob(objectstore.join(str(location), "**/*.parquet"))
        return [url for url in found if _visible(url.rsplit("/", 1)[-1])]
    directory = Path(location)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*.parquet") if _visible(p.name) and p.is_file())


def read_table(location: str | Path, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """The whole table (only `columns`: an object store then sends no other bytes).

    With `schema` every part is read as that schema (a column an older part lacks comes back null), and a table
    with no parts is its empty table; without it, a table with no parts raises FileNotFoundError.
    """
    files = table_files(location)
    if not files:
        if schema is None:
            raise FileNotFoundError(f"no Parquet table at {location}")
        empty = schema.empty_table()
        return empty.select(columns) if columns is not None else empty
    tables = []
    for file in files:
        with objectstore.open_parquet(file, columns) as source:
            tables.append(pq.read_table(source, columns=columns, schema=schema))
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))
