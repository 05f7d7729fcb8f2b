"""Atomic, idempotent file writes: readers never see a half-written file, reruns touch no unchanged byte."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"  # temporary files are hidden (leading dot) and carry this mark


def temp_path_for(path: Path, *, keep_suffix: bool = False) -> Path:
    """A hidden sibling of `path` that `*.parquet`-style globs ignore.

    keep_suffix repeats the suffix at the end, for writers that pick the format from it (ffmpeg).
    """
    return path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}{path.suffix if keep_suffix else ''}")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, *, skip_if_same: bool = True) -> bool:
    """Write `data` to `path` atomically; returns False when the file already held exactly these bytes."""
    path = Path(path)
    if skip_if_same and path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def move_if_changed(tmp: str | Path, path: str | Path) -> bool:
    """Rename a finished temporary onto `path` atomically; False, and the temporary deleted, when `path` already
    held exactly its bytes (compared by size, then sha256, streaming: for files too large to hold in memory)."""
    tmp, path = Path(tmp), Path(path)
    if path.is_file() and path.stat().st_size == tmp.stat().st_size and sha256_file(path) == sha256_file(tmp):
        tmp.unlink()
        return False
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return True


def remove_stale_temps(directory: str | Path, name: str | None = None) -> int:
    """Delete temporary files a killed writer left in `directory`; returns how many.

    Given `name`, only the temporaries of that file go. Pass it when other writers share the
    directory: their temporaries are live, not stale.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    start = f".{name}{TMP_MARK}" if name else "."
    stale = [p for p in directory.iterdir() if p.name.startswith(start) and TMP_MARK in p.name]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def free_space(path: str | Path) -> str:
    """The space left on the file system holding `path` (or its nearest existing parent), for messages: "1.2 MiB"."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = float(shutil.disk_usage(path).free)
    except OSError as exc:
        return f"unknown ({exc.strerror or exc})"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024:
            return f"{free:.0f} bytes" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} TiB"


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
