"""Incremental publish: the cross-video decisions and their index kept under the data root.

Data roots here are generated (records, frame parts and shards with the real schemas, no pixels), so corpora of
dozens of videos with planted cross-video duplicates cost milliseconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.corpus.cross_video import STATE_NAME, cross_video_duplicates
from pipeline.corpus.publish import publish
from pipeline.io.data_root import DataRoot
from pipeline.io.storage import sha256_file
from pipeline.schema import FRAME_STATS_SCHEMA, SHARD_SCHEMA
from pipeline.sources.catalog import CatalogEntry
from pipeline.video.phash import find_many
from pipeline.video.record import PartRef, VideoRecord, load_records, write_record
from pipeline.video.sampling import sample_id

CFG = load_config(overrides={"dedup": {"max_hamming": 4}})
OUTPUTS = ("stats/frames.parquet", "stats/videos.parquet", "stats/categories.parquet", "manifest/gen.parquet")


def write_video(root: DataRoot, video_id: str, frames: int, seed: int, copy_from: np.ndarray | None = None) -> None:
    """A finished video: its frame part (every third frame kept), shard (the kept rows) and record."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, frames, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, frames, np.uint64)
    kept = np.arange(frames) % 3 == 0
    if copy_from is not None and len(copy_from):  # near copies of another video's hashes: 0-3 bits flipped
        take = rng.choice(np.flatnonzero(kept), size=min(len(copy_from), kept.sum() // 2), replace=False)
        flips = [np.uint64(sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 4), replace=False))) for _ in take]
        hashes[take] = copy_from[: len(take)] ^ np.array(flips, np.uint64)
    ids = [sample_id("gen", video_id, i) for i in range(frames)]
    table = pa.table(
        {
            "dataset": ["gen"] * frames,
            "video_id": [video_id] * frames,
            "frame_index": np.arange(frames),
            "timestamp_s": np.arange(frames) / 10.0,
            "clip_id": np.arange(frames) // 50,
            "split": ["train"] * frames,
            "kept": kept,
            "drop_reason": [None if k else "decimated" for k in kept],
            "sample_id": ids,
            "phash": hashes,
        }
    )
    table = pa.table(
        {
            f.name: table[f.name] if f.name in table.column_names else pa.nulls(frames, f.type)
            for f in FRAME_STATS_SCHEMA
        }
    ).cast(FRAME_STATS_SCHEMA)
    shard = table.filter(table["kept"])
    shard_table = pa.table(
        {
            f.name: shard[f.name]
            if f.name in shard.column_names
            else (
                pa.array([b"\xff\xd8"] * shard.num_rows)
                if f.name == "image"
                else pa.array(["natural"] * shard.num_rows)
                if f.name == "category"
                else pa.array([16] * shard.num_rows, pa.int32())
                if f.name in ("width", "height")
                else pa.nulls(shard.num_rows, f.type)
            )
            for f in SHARD_SCHEMA
        }
    ).cast(SHARD_SCHEMA)
    parts = []
    for path, data in (
        (root.video_frames_dir("gen", video_id) / "frames-00000.parquet", table),
        (root.shard_dir("gen", video_id) / "part-00000.parquet", shard_table),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, path, compression="zstd")
        parts.append(
            PartRef(path=root.relative(path), rows=data.num_rows, bytes=path.stat().st_size, sha256=sha256_file(path))
        )
    entry = CatalogEntry(video_id=video_id, url=f"http://127.0.0.1/{video_id}.mp4", dataset="gen", category="natural")
    record = VideoRecord.new(entry, CFG, "ok")
    record.frames_decoded, record.frames_kept = frames, int(kept.sum())
    record.dropped["decimated"] = frames - int(kept.sum())
    record.shards, record.frame_parts = [parts[1]], [parts[0]]
    write_record(root, record)


def kept_hashes(root: DataRoot, video_id: str) -> np.ndarray:
    table = pq.read_table(root.video_frames_dir("gen", video_id) / "frames-00000.parquet")
    return table.filter(table["kept"])["phash"].to_numpy()


def make_corpus(path: Path, names: list[str], frames: int = 300) -> DataRoot:
    root = DataRoot(path)
    for i, name in enumerate(names):
        earlier = kept_hashes(root, names[i - 1]) if i else None
        write_video(root, name, frames, seed=i, copy_from=earlier)
    return root


def outputs(root: DataRoot, read: Callable[..., dict[str, bytes]]) -> dict[str, bytes]:
    """Every published file's bytes (`read` is the published_bytes fixture)."""
    return read(root.root, *OUTPUTS, "dataset.json")


def from_scratch(root: DataRoot, tmp_path: Path, read: Callable[..., dict[str, bytes]]) -> dict[str, bytes]:
    """What a publish with no state writes for the same videos."""
    fresh = tmp_path / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(root.root, fresh, ignore=shutil.ignore_patterns("state", "manifest", "dataset.json"))
    copy = DataRoot(fresh)
    publish(copy, CFG)
    return outputs(copy, read)


@pytest.mark.parametrize("max_hamming", [0, 2, 4, 10, 20])
def test_decisions_match_a_brute_force_pass_and_planted_copies_are_found(tmp_path, max_hamming):
    root = make_corpus(tmp_path / "root", ["a", "b", "c", "d"])
    dedup = CFG.dedup.model_copy(update={"max_hamming": max_hamming})
    decided = cross_video_duplicates(root, load_records(root), dedup)
    assert decided[("gen", "a")].rows.size == 0 and decided[("gen", "b")].rows.size > 0
    # Brute force over the same kept hashes, video by video, with find_many (the reference).
    index, ids = np.empty(0, np.uint64), []
    for name in "abcd":
        table = pq.read_table(root.video_frames_dir("gen", name) / "frames-00000.parquet")
        rows = np.flatnonzero(table["kept"].to_numpy(zero_copy_only=False))
        hashes, sids = table["phash"].to_numpy()[rows], table["sample_id"].to_numpy(zero_copy_only=False)[rows]
        match = find_many(index, hashes, max_hamming)
        assert decided[("gen", name)].rows.tolist() == rows[match >= 0].tolist()
        assert decided[("gen", name)].duplicate_of == [ids[m] for m in match[match >= 0]]
        index, ids = np.concatenate([index, hashes[match < 0]]), ids + list(sids[match < 0])


@pytest.mark.parametrize("added", ["0_first", "bb_middle", "z_last"])
def test_adding_a_video_anywhere_writes_the_bytes_of_a_publish_from_scratch(tmp_path, added, published_bytes):
    root = make_corpus(tmp_path / "root", ["b", "c", "d"])
    publish(root, CFG)
    write_video(root, added, 300, seed=9, copy_from=kept_hashes(root, "c"))  # shares frames with c
    assert publish(root, CFG)["counts"]["dropped"]["duplicate_cross_video"] > 0
    assert outputs(root, published_bytes) == from_scratch(root, tmp_path, published_bytes)


def test_removing_or_changing_a_video_is_decided_again(tmp_path, published_bytes):
    root = make_corpus(tmp_path / "root", ["a", "b", "c", "d"])
    publish(root, CFG)
    root.video_record("gen", "b").unlink()
    publish(root, CFG)
    assert outputs(root, published_bytes) == from_scratch(root, tmp_path, published_bytes)
    write_video(root, "c", 200, seed=42, copy_from=kept_hashes(root, "a"))  # c re-ingested: other frames
    publish(root, CFG)
    assert outputs(root, published_bytes) == from_scratch(root, tmp_path, published_bytes)


def _stamps(root: DataRoot) -> dict[str, int]:
    files = [p for p in root.root.rglob("*.parquet") if p.is_file()]
    return {p.relative_to(root.root).as_posix(): p.stat().st_mtime_ns for p in files}


def test_appending_a_video_writes_only_its_own_parts(tmp_path, monkeypatch):
    from pipeline.corpus import publish as publish_module

    root = make_corpus(tmp_path / "root", ["a", "b", "c"])
    publish(root, CFG)
    before = _stamps(root)
    write_video(root, "d", 300, seed=5, copy_from=kept_hashes(root, "b"))
    read = []
    original = publish_module._read_video
    monkeypatch.setattr(
        publish_module, "_read_video", lambda r, video: read.append(video.video_id) or original(r, video)
    )
    publish(root, CFG)
    after = _stamps(root)
    changed = sorted(name for name, stamp in after.items() if before.get(name) != stamp)
    assert read == ["d"]
    assert changed == [
        "manifest/gen.parquet/d.parquet",
        "shards/gen/d/part-00000.parquet",
        "stats/categories.parquet",
        "stats/frames.parquet/gen/d.parquet",
        "stats/frames/gen/d/frames-00000.parquet",
        "stats/videos.parquet",
    ]


def test_a_damaged_outputs_state_or_part_is_rewritten(tmp_path, published_bytes):
    root = make_corpus(tmp_path / "root", ["a", "b", "c"])
    publish(root, CFG)
    expected = outputs(root, published_bytes)
    root.publish_state("outputs.json").write_bytes(b'{"format": 1, "videos": {"gen/a": 7}}')
    part = root.frames_table_part("gen", "b")
    part.write_bytes(part.read_bytes()[:100])
    (root.root / "manifest" / "gen.parquet" / "zz_stale.parquet").write_bytes(b"a part of no video")
    root.publish_state("inputs.json").unlink()  # so publish looks instead of finding nothing new
    publish(root, CFG)
    assert outputs(root, published_bytes) == expected


def test_tables_of_the_single_file_layout_give_way_to_per_video_parts(tmp_path, published_bytes):
    root = make_corpus(tmp_path / "root", ["a", "b"])
    publish(root, CFG)
    expected = outputs(root, published_bytes)
    for table in (root.frames_table, root.manifest("gen")):  # as a release before per-video parts left them
        whole = pq.read_table(table)
        shutil.rmtree(table)
        pq.write_table(whole, table)
    shutil.rmtree(root.root / "state")
    publish(root, CFG)
    assert outputs(root, published_bytes) == expected


def test_a_rerun_with_nothing_new_writes_nothing_and_reads_no_frames(tmp_path):
    root = make_corpus(tmp_path / "root", ["a", "b", "c"])
    description = publish(root, CFG)
    stamps = {name: (root.root / name).stat().st_mtime_ns for name in (*OUTPUTS, "dataset.json")}
    (root.video_frames_dir("gen", "b") / "frames-00000.parquet").unlink()  # would fail any read of b's frames
    assert publish(root, CFG) == description
    assert {name: (root.root / name).stat().st_mtime_ns for name in stamps} == stamps


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other_format"])
def test_a_damaged_state_is_rebuilt_not_trusted(tmp_path, damage, published_bytes):
    root = make_corpus(tmp_path / "root", ["a", "b", "c"])
    publish(root, CFG)
    expected = outputs(root, published_bytes)
    state = root.publish_state(STATE_NAME)
    data = bytearray(state.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"not a state file")
    else:
        with np.load(state) as arrays:
            members = {name: arrays[name] for name in arrays.files}
        members["format"] = np.array([999])
        members["dup_rows"] = members["dup_rows"][:0]  # and decisions that would be wrong if trusted
        np.savez(state, **members)
        data = bytearray(state.read_bytes())
    state.write_bytes(bytes(data))
    root.publish_state("inputs.json").unlink()  # so publish decides again instead of finding nothing new
    publish(root, CFG)
    assert outputs(root, published_bytes) == expected


_KILLED_CHILD = """
import os, signal, sys
from pipeline.config import load_config
from pipeline.corpus import publish as publish_module
from pipeline.io.data_root import DataRoot

original, calls = DataRoot.publish_file, []
def publish_then_die(self, local, path):
    calls.append(path)
    if len(calls) == 2:  # the new video's frames part is in place, its manifest part finished but not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, local, path)
DataRoot.publish_file = publish_then_die
publish_module.publish(DataRoot(sys.argv[1]), load_config(overrides={"dedup": {"max_hamming": 4}}))
"""


def test_a_publish_killed_midway_leaves_state_the_next_one_repairs(tmp_path, published_bytes):
    root = make_corpus(tmp_path / "root", ["a", "b", "c"])
    publish(root, CFG)
    write_video(root, "d", 300, seed=7, copy_from=kept_hashes(root, "a"))
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(root.root)], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert [p.name for p in (root.root / "manifest").rglob(".*tmp*")]  # it did die with a temporary left
    publish(root, CFG)
    assert outputs(root, published_bytes) == from_scratch(root, tmp_path, published_bytes)
    assert not list(root.root.rglob(".*tmp*"))
    assert os.path.getsize(root.publish_state(STATE_NAME)) > 0


def test_appending_a_video_decides_only_that_video(tmp_path, monkeypatch, published_bytes):
    from pipeline.corpus import cross_video

    root = make_corpus(tmp_path / "root", ["a", "b", "c"])
    publish(root, CFG)
    write_video(root, "d", 300, seed=5, copy_from=kept_hashes(root, "b"))
    read = []
    original = cross_video._read_kept
    monkeypatch.setattr(cross_video, "_read_kept", lambda r, video: read.append(video.video_id) or original(r, video))
    publish(root, CFG)
    assert read == ["d"]
    assert outputs(root, published_bytes) == from_scratch(root, tmp_path, published_bytes)


def test_clip_pass_takes_videos_with_and_without_cross_video_duplicates(tmp_path, clip_settings):
    """The CLIP pass stacks every video's shard rows: a video that lost frames to another and one that did not
    must stack (the kept column keeps its non-null type), and without embeddings nothing else changes."""
    from pipeline.config import with_overrides

    root = make_corpus(tmp_path / "root", ["a", "b", "c"])
    plain = publish(root, CFG)["counts"]
    with_clip = publish(root, with_overrides(CFG, {"clip": clip_settings}))
    assert with_clip["counts"]["dropped"] == plain["dropped"] and plain["dropped"]["duplicate_cross_video"] > 0
    assert with_clip["clip"]["missing_embeddings"] == ["gen/a", "gen/b", "gen/c"]
