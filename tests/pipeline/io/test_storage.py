"""Tests for pipeline.io.storage: atomic writes, idempotent rewrites, stale temp cleanup, hashing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.io.storage import (
    TMP_MARK,
    atomic_path,
    remove_stale_temps,
    sha256_file,
    temp_path_for,
    write_bytes_atomic,
)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_temp_path_is_a_hidden_sibling_with_the_mark(tmp_path):
    target = tmp_path / "part-00000.parquet"
    tmp = temp_path_for(target)
    assert tmp.parent == target.parent
    assert tmp.name.startswith(".part-00000.parquet" + TMP_MARK)
    assert not tmp.name.endswith(".parquet")  # a `*.parquet` glob never picks it up
    assert temp_path_for(target) != tmp  # unique per call: two writers never share a temp


def test_atomic_path_replaces_the_target_on_success(tmp_path):
    target = tmp_path / "sub" / "dir" / "out.bin"  # missing parents are created
    with atomic_path(target) as tmp:
        assert tmp != target
        tmp.write_bytes(b"first")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_bytes() == b"first"

    with atomic_path(target) as tmp:
        tmp.write_bytes(b"second version")
        assert target.read_bytes() == b"first"  # readers still see the old whole file
    assert target.read_bytes() == b"second version"
    assert _names(target.parent) == ["out.bin"]


def test_atomic_path_leaves_no_temp_and_keeps_the_old_file_on_exception(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half written")
        raise RuntimeError("boom")
    assert seen and not seen[0].exists()
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["out.bin"]


def test_atomic_path_exception_before_any_write_creates_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(KeyError), atomic_path(target):
        raise KeyError("x")
    assert _names(tmp_path) == []


def test_write_bytes_atomic_writes_then_skips_identical_bytes(tmp_path):
    target = tmp_path / "record.json"
    assert write_bytes_atomic(target, b'{"a": 1}') is True
    assert target.read_bytes() == b'{"a": 1}'

    old = 1_000_000_000  # a fixed past mtime, so an unwanted rewrite is visible without timing
    os.utime(target, ns=(old * 10**9, old * 10**9))
    inode = target.stat().st_ino
    assert write_bytes_atomic(target, b'{"a": 1}') is False
    assert target.stat().st_mtime_ns == old * 10**9
    assert target.stat().st_ino == inode  # not even replaced by an identical copy
    assert _names(tmp_path) == ["record.json"]


@pytest.mark.parametrize("new", [b'{"a": 2}', b'{"a": 1} ', b""])
def test_write_bytes_atomic_rewrites_changed_bytes(tmp_path, new):
    target = tmp_path / "record.json"
    target.write_bytes(b'{"a": 1}')
    old = 1_000_000_000
    os.utime(target, ns=(old * 10**9, old * 10**9))
    assert write_bytes_atomic(target, new) is True
    assert target.read_bytes() == new
    assert target.stat().st_mtime_ns != old * 10**9
    assert _names(tmp_path) == ["record.json"]


def test_write_bytes_atomic_can_be_forced(tmp_path):
    target = tmp_path / "x"
    target.write_bytes(b"same")
    inode = target.stat().st_ino
    assert write_bytes_atomic(target, b"same", skip_if_same=False) is True
    assert target.read_bytes() == b"same"
    assert target.stat().st_ino != inode  # a fresh file was renamed in


def test_remove_stale_temps_removes_only_hidden_temp_files(tmp_path):
    stale = [temp_path_for(tmp_path / "part-00000.parquet"), tmp_path / f".frames-00001.parquet{TMP_MARK}abcd1234"]
    kept = ["part-00000.parquet", f"visible{TMP_MARK}abcd1234", ".hidden", ".gitkeep", "a.tmp", ".x.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    for name in kept:
        (tmp_path / name).write_bytes(b"keep")
    assert remove_stale_temps(tmp_path) == 2
    assert _names(tmp_path) == sorted(kept)
    assert remove_stale_temps(tmp_path) == 0  # idempotent


def test_remove_stale_temps_of_one_file_spares_other_writers(tmp_path):
    mine, theirs = temp_path_for(tmp_path / "a.parquet"), temp_path_for(tmp_path / "b.parquet")
    prefixed = temp_path_for(tmp_path / "a.parquet.bak")  # a name that merely starts with "a.parquet"
    for p in (mine, theirs, prefixed):
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path, "a.parquet") == 1
    assert not mine.exists() and theirs.exists() and prefixed.exists()


def test_remove_stale_temps_leaves_subdirectories_alone(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    nested = temp_path_for(sub / "part-00000.parquet")
    nested.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 0  # not recursive
    assert nested.exists()


def test_remove_stale_temps_on_a_missing_directory(tmp_path):
    assert remove_stale_temps(tmp_path / "missing") == 0


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 1024 + 7])
def test_sha256_file_matches_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk=1000) == expected  # chunk boundaries do not matter
    assert sha256_file(str(path), chunk=1) == expected
