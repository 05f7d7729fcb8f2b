"""Publish at corpus scale: wall time and peak memory of the corpus step on generated data roots, no video decoding.

    python -m benchmarks.bench_publish [--sizes 40x10000 40x100000 400x100000] [--quick] [--brute-max-rows N]
                                       [--timeout S] [--max-rss-gb G] [--check-incremental] [--workdir DIR]
                                       [--keep] [--seed N] [--out FILE]

Each size "VIDEOSxFRAMES" is a data root of VIDEOS finished videos of FRAMES decoded frames each, written by
`generate` the way ingest writes them (records, frame-stats parts, shards; see its docstring), under --workdir
(default /tmp/bench_publish). On it, each publish runs in a fresh child process (`--child ROOT`) so its wall time
and peak RSS (the child's VmHWM) are its own:

    full      publish from scratch
    rerun     publish again, nothing new
    add_one   one more video generated into the root (it sorts last), then publish
    brute     up to --brute-max-rows decoded rows: publish from scratch of a hard-linked copy of the same inputs
              with the cross-video search forced to brute force (the child replaces publish's HammingIndex by one
              whose `nearest` is `find_many` over every stored hash); every file of the tables (stats/*.parquet,
              manifest/*.parquet and their per-video parts) must be byte-identical (sha256) to the indexed full
              publish's
    scratch   with --check-incremental: publish from scratch of a hard-linked copy of the inputs after add_one;
              its outputs must be byte-identical to add_one's (an incremental publish must equal a fresh one)

A child past --timeout, or whose RSS passes --max-rss-gb (the machine is shared), is killed and its step reported
as such. The aims of the issue ("Publish at corpus scale") are in the result for reference, and `verdict` checks
the sizes they name.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import REPO, Stopwatch, add_out_argument, emit, meta, proc_kb
from pipeline.config import CurateConfig
from pipeline.io.data_root import DataRoot
from pipeline.io.storage import sha256_file
from pipeline.media.probe import VideoInfo
from pipeline.schema import DROP_REASONS, FRAME_STATS_SCHEMA, SHARD_SCHEMA
from pipeline.video.record import PartRef, VideoRecord, load_records, write_record
from pipeline.video.sampling import sample_id

WORKDIR = Path("/tmp/bench_publish")
DEFAULT_SIZES = ["40x10000", "40x100000", "400x100000"]
QUICK_SIZES = ["10x2000", "20x5000"]
AIMS = {
    "full_4M_rows": {"rows": 4_000_000, "max_s": 60, "max_rss_mb": 2048},
    "full_40M_rows": {"rows": 40_000_000, "max_s": 600, "max_rss_mb": 8192},
    "rerun_nothing_new": {"max_s": 5},
    "add_one_video_to_40M_rows": {"rows": 40_000_000, "max_s": 30},
}

CATEGORIES = ("nature", "driving", "urban", "indoor", "underwater")
# How the dropped frames of a video split between the reasons ingest gives (split_gap is positional, see below).
DROP_MIX = {"decimated": 0.56, "dark": 0.02, "blank": 0.01, "blurry": 0.16, "static": 0.15, "duplicate": 0.10}
UNMEASURED = ("decimated", "split_gap")  # dropped by position before any measurement: no quality columns
UNHASHED = (*UNMEASURED, "dark", "blank", "blurry", "static")  # dropped before the pHash is computed
SAMPLED_FPS = 10.0
IMAGE = b"\xff\xd8jpeg"  # stands for the JPEG: publish reads no pixels
FRAMES_ROW_GROUP = 50_000  # as ingest's frame-stats PartWriter
SHARD_ROW_GROUP = 100_000  # PartWriter's row_group_rows (tiny images never reach row_group_bytes)
POOL_SEED_VIDEOS = 16  # videos read back for planting when adding to an existing root


# ---------------------------------------------------------------- generator


class _Pool:
    """Kept pHashes of the videos generated so far (earlier in corpus order), for planting cross-video copies."""

    def __init__(self) -> None:
        self._hashes = np.empty(1 << 16, np.uint64)
        self.size = 0

    def add(self, hashes: np.ndarray) -> None:
        needed = self.size + len(hashes)
        if needed > len(self._hashes):
            self._hashes = np.resize(self._hashes, max(needed, 2 * len(self._hashes)))
        self._hashes[self.size : needed] = hashes
        self.size = needed

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return self._hashes[rng.integers(0, self.size, count)]


def _flip_bits(rng: np.random.Generator, hashes: np.ndarray, max_bits: int = 3) -> np.ndarray:
    """`hashes` with 0..max_bits distinct random bits flipped each."""
    count = len(hashes)
    flips = rng.integers(0, max_bits + 1, count)
    bits = np.argsort(rng.random((count, 64)), axis=1)[:, :max_bits].astype(np.uint64)
    mask = np.zeros(count, np.uint64)
    for j in range(max_bits):
        mask |= np.where(flips > j, np.uint64(1) << bits[:, j], np.uint64(0))
    return hashes ^ mask


def _dataset(index: int, per_dataset: int, datasets: int) -> str:
    return f"bench{min(index // per_dataset, datasets - 1)}"


def _write_parquet(table: pa.Table, path: Path, compression: str, row_group_size: int) -> PartRef:
    """One Parquet write, as PartWriter's (statistics on the non-binary columns), then its PartRef."""
    path.parent.mkdir(parents=True, exist_ok=True)
    statistics = [f.name for f in table.schema if not pa.types.is_binary(f.type)]
    pq.write_table(table, path, compression=compression, row_group_size=row_group_size, write_statistics=statistics)
    return PartRef(path=path.as_posix(), rows=table.num_rows, bytes=path.stat().st_size, sha256=sha256_file(path))


def _video(
    root: DataRoot,
    cfg: CurateConfig,
    index: int,
    dataset: str,
    frames: int,
    seed: int,
    kept_fraction: float,
    cross_dup_fraction: float,
    pool: _Pool,
) -> tuple[VideoRecord, np.ndarray, int]:
    """Write one video's frame-stats part, shard and record; returns the record, its kept pHashes and how many of
    them were planted copies of an earlier video's."""
    rng = np.random.default_rng([seed, index])
    video_id = f"v{index:07d}"
    category = CATEGORIES[index % len(CATEGORIES)]
    n = frames
    frame_index = np.arange(n, dtype=np.int64)
    trim_start = float(rng.integers(0, 30))
    timestamp = np.round(trim_start + frame_index / SAMPLED_FPS, 6)
    boundary = int(0.9 * n)
    gap = min(100, n // 50)
    split_is_val = frame_index >= boundary
    cuts = np.sort(rng.choice(np.arange(1, n), size=max(1, n // 400), replace=False))
    clip_id = np.searchsorted(cuts, frame_index, side="right").astype(np.int32)

    # Outcome per frame: a code into REASONS, or -1 for kept.
    reasons = list(DROP_MIX)
    reason_names = [*reasons, "split_gap"]
    code = np.searchsorted(np.cumsum(list(DROP_MIX.values())), rng.random(n) * sum(DROP_MIX.values()), side="right")
    code = np.minimum(code, len(reasons) - 1).astype(np.int8)
    code[rng.random(n) < kept_fraction] = -1
    code[(frame_index >= boundary - gap) & (frame_index < boundary + gap)] = reason_names.index("split_gap")
    # A within-video duplicate repeats the last kept frame before it; with none before it, it is blurry instead.
    kept_so_far = np.maximum.accumulate(np.where(code == -1, frame_index, -1))
    previous_kept = np.r_[-1, kept_so_far[:-1]]
    duplicate = reasons.index("duplicate")
    code[(code == duplicate) & (previous_kept < 0)] = reasons.index("blurry")
    kept = code == -1
    kept_rows = np.flatnonzero(kept)

    phash = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    planted = 0
    if pool.size and len(kept_rows):
        planted = int(round(cross_dup_fraction * len(kept_rows)))
        chosen = rng.choice(kept_rows, size=planted, replace=False)
        phash[chosen] = _flip_bits(rng, pool.draw(rng, planted))
    dup_rows = np.flatnonzero(code == duplicate)
    phash[dup_rows] = _flip_bits(rng, phash[previous_kept[dup_rows]])
    unhashed = np.isin(code, [reason_names.index(r) for r in UNHASHED if r in reason_names])
    unmeasured = np.isin(code, [reason_names.index(r) for r in UNMEASURED])

    prefix = f"{dataset}/{video_id}/"
    assert sample_id(dataset, video_id, 7) == prefix + "00000007"  # the id format this builds vectorised
    sample_ids = pc.binary_join_element_wise(
        prefix, pc.utf8_lpad(pc.cast(pa.array(frame_index), pa.string()), width=8, padding="0"), ""
    )
    duplicate_of = pc.take(sample_ids, pa.array(np.where(code == duplicate, previous_kept, 0), mask=code != duplicate))
    drop_reason = pa.DictionaryArray.from_arrays(
        pa.array(np.maximum(code, 0), pa.int8(), mask=kept), pa.array(reason_names, pa.string())
    ).cast(pa.string())

    def measured(values: np.ndarray) -> pa.Array:
        return pa.array(values.astype(np.float32), mask=unmeasured)

    brightness = measured(rng.uniform(20, 230, n))
    sharpness = measured(rng.gamma(2.0, 60.0, n))
    motion = measured(rng.gamma(1.5, 1.0, n))
    split = pa.DictionaryArray.from_arrays(pa.array(split_is_val.astype(np.int8)), pa.array(["train", "val"])).cast(
        pa.string()
    )
    columns = {
        "dataset": pa.repeat(pa.scalar(dataset), n),
        "video_id": pa.repeat(pa.scalar(video_id), n),
        "frame_index": pa.array(frame_index),
        "timestamp_s": pa.array(timestamp),
        "clip_id": pa.array(clip_id),
        "split": split,
        "kept": pa.array(kept),
        "drop_reason": drop_reason,
        "duplicate_of": duplicate_of,
        "sample_id": sample_ids,
        "brightness": brightness,
        "contrast": measured(rng.uniform(5, 80, n)),
        "sharpness": sharpness,
        "motion": motion,
        "phash": pa.array(phash, pa.uint64(), mask=unhashed),
    }
    frame_table = pa.Table.from_arrays(
        [columns.get(f.name, pa.nulls(n, f.type)) for f in FRAME_STATS_SCHEMA], schema=FRAME_STATS_SCHEMA
    )

    k = len(kept_rows)
    take = pa.array(kept_rows)
    shard_columns = {
        "sample_id": sample_ids.take(take),
        "dataset": columns["dataset"].slice(0, k),
        "video_id": columns["video_id"].slice(0, k),
        "category": pa.repeat(pa.scalar(category), k),
        "clip_id": columns["clip_id"].take(take),
        "frame_index": columns["frame_index"].take(take),
        "timestamp_s": columns["timestamp_s"].take(take),
        "split": split.take(take),
        "width": pa.repeat(pa.scalar(640, pa.int32()), k),
        "height": pa.repeat(pa.scalar(360, pa.int32()), k),
        "brightness": brightness.take(take),
        "sharpness": sharpness.take(take),
        "motion": motion.take(take),
        "phash": columns["phash"].take(take),
        "image": pa.repeat(pa.scalar(IMAGE, pa.binary()), k),
    }
    shard_table = pa.Table.from_arrays(
        [shard_columns.get(f.name, pa.nulls(k, f.type)) for f in SHARD_SCHEMA], schema=SHARD_SCHEMA
    )

    shard = _write_parquet(
        shard_table,
        root.shard_dir(dataset, video_id) / "part-00000.parquet",
        cfg.write.compression,
        SHARD_ROW_GROUP,
    )
    frame_part = _write_parquet(
        frame_table, root.video_frames_dir(dataset, video_id) / "frames-00000.parquet", "zstd", FRAMES_ROW_GROUP
    )
    counts = np.bincount(code[code >= 0], minlength=len(reason_names))
    record = VideoRecord(
        dataset=dataset,
        video_id=video_id,
        seq=index,
        url=f"https://example.invalid/{dataset}/{video_id}.mp4",
        category=category,
        subcategory=None,
        layout="mono",
        catalog_line=index + 2,
        status="ok",
        processing_hash=cfg.processing_hash(),
        detected_layout="mono",
        frames_decoded=n,
        frames_kept=k,
        clips=int(clip_id[-1]) + 1,
        dropped={
            reason: int(counts[reason_names.index(reason)]) if reason in reason_names else 0 for reason in DROP_REASONS
        },
        shards=[shard.model_copy(update={"path": root.relative(Path(shard.path))})],
        frame_parts=[frame_part.model_copy(update={"path": root.relative(Path(frame_part.path))})],
        info=VideoInfo(
            duration_s=trim_start + n / SAMPLED_FPS + 20.0,
            fps=30.0,
            width=1280,
            height=720,
            codec="h264",
            rotation=0,
            variable_frame_rate=False,
            container="mp4",
        ),
        trim_start_s=trim_start,
        trim_end_s=20.0,
    )
    write_record(root, record)  # last: the done-marker
    return record, phash[kept_rows], planted


def generate(
    root: Path | str,
    videos: int,
    frames_per_video: int,
    seed: int,
    kept_fraction: float = 0.4,
    cross_dup_fraction: float = 0.02,
    *,
    first: int = 0,
    planned_videos: int | None = None,
    datasets: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Write `videos` finished ok videos (numbers first .. first + videos - 1) of `frames_per_video` decoded
    frames each under `root`, as ingest would have: per video its frame-stats part (every decoded frame, in frame
    order, FRAME_STATS_SCHEMA, zstd), its shard (the kept frames, SHARD_SCHEMA, cfg.write.compression, a tiny fake
    JPEG each) and, last, its record (write_record; counts match the rows, parts carry their sizes and sha256).

    About `kept_fraction` of the frames are kept; the others are dropped as DROP_MIX says (decimated, dark, blank,
    blurry, static, duplicate of the last kept frame with 0-3 bits flipped), plus split_gap around the 90% train/val
    boundary. Rows dropped before the pHash have a null phash, rows dropped by position no quality columns, as
    ingest writes them. Kept pHashes are random 64-bit values, except `cross_dup_fraction` of each video's kept
    frames: copies of a kept frame of an earlier video with 0-3 bits flipped. Videos go to `datasets` datasets
    in blocks of ceil(planned_videos / datasets), so corpus order ((dataset, video_id)) is generation order and
    a video numbered past `planned_videos` sorts last. With `first` > 0, the pool to copy from is read back from
    up to POOL_SEED_VIDEOS earlier videos of the root. Everything is a function of `seed` and the video number.
    """
    data_root = DataRoot(root)
    cfg = CurateConfig()
    planned = planned_videos or first + videos
    per_dataset = max(1, math.ceil(planned / datasets))
    pool = _Pool()
    if first > 0:
        earlier = [r for r in load_records(data_root) if r.ok]
        for record in earlier[:: max(1, math.ceil(len(earlier) / POOL_SEED_VIDEOS))]:
            for part in record.frame_parts:
                table = pq.read_table(data_root.root / part.path, columns=["kept", "phash"])
                pool.add(table.filter(table["kept"])["phash"].fill_null(0).to_numpy().astype(np.uint64))
    rows = kept = planted = 0
    with Stopwatch() as watch:
        for index in range(first, first + videos):
            dataset = _dataset(index, per_dataset, datasets)
            record, kept_hashes, video_planted = _video(
                data_root, cfg, index, dataset, frames_per_video, seed, kept_fraction, cross_dup_fraction, pool
            )
            pool.add(kept_hashes)
            rows += record.frames_decoded
            kept += record.frames_kept
            planted += video_planted
            if progress and (index - first + 1) % max(1, videos // 10) == 0:
                print(
                    f"  generated {index - first + 1}/{videos} videos, {rows:,} rows, "
                    f"{rows / max(watch.s, 1e-9):,.0f} rows/s",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        "videos": videos,
        "rows": rows,
        "kept": kept,
        "planted_cross_video": planted,
        "generate_s": round(watch.s, 2),
        "generate_rows_per_s": round(rows / max(watch.s, 1e-9)),
    }


# ---------------------------------------------------------------- the measured child


BRUTE_FORCE_CALLS = [0]  # in a --brute child: how many times the patched `nearest` ran (0: the patch missed)


def _force_brute_force() -> list[str]:
    """Make publish's cross-video search brute force: the HammingIndex of every pipeline.corpus module publish
    loads (publish itself, and whatever module it moved the search to) answers `nearest` with find_many.
    Returns the modules patched."""
    import pipeline.corpus.publish  # noqa: F401 - loads the modules to patch
    from pipeline.video.phash import HammingIndex, find_many

    class BruteForceIndex(HammingIndex):
        def nearest(self, queries: np.ndarray, max_distance: int, chunk: int = 8192) -> np.ndarray:
            BRUTE_FORCE_CALLS[0] += 1
            return find_many(self.hashes, np.asarray(queries, np.uint64).ravel(), max_distance)

    patched = []
    for name, module in sorted(sys.modules.items()):
        if name.startswith("pipeline.corpus") and getattr(module, "HammingIndex", None) is HammingIndex:
            module.HammingIndex = BruteForceIndex  # type: ignore[attr-defined]
            patched.append(name)
    if not patched:
        raise RuntimeError("no pipeline.corpus module uses HammingIndex: cannot force brute force")
    return patched


def _child(root: Path, brute: bool, result_path: Path) -> None:
    from pipeline.corpus.publish import publish

    patched = _force_brute_force() if brute else []
    rss_before = proc_kb("/proc/self/status", "VmRSS")
    with Stopwatch() as watch:
        description = publish(DataRoot(root), CurateConfig())
    counts = description.get("counts", {})
    result = {
        "publish_s": round(watch.s, 3),
        "peak_rss_mb": round(proc_kb("/proc/self/status", "VmHWM") / 1024, 1),
        "rss_before_publish_mb": round(rss_before / 1024, 1),
        "frames_decoded": counts.get("frames_decoded"),
        "frames_kept": counts.get("frames_kept"),
        "duplicate_cross_video": (counts.get("dropped") or {}).get("duplicate_cross_video"),
        "samples": sum((counts.get("samples") or {}).values()),
    }
    if brute:
        result.update(brute_force_calls=BRUTE_FORCE_CALLS[0], brute_force_patched=patched)
    result_path.write_text(json.dumps(result))


def run_publish(root: Path, *, brute: bool = False, timeout: float, max_rss_gb: float) -> dict[str, Any]:
    """One publish of `root` in a fresh child; kills it past `timeout` or `max_rss_gb` of RSS."""
    result_path = root.parent / f".{root.name}.publish-result.json"
    result_path.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_publish",
        "--child",
        str(root),
        "--child-result",
        str(result_path),
    ]
    command += ["--brute"] if brute else []
    started = time.perf_counter()
    killed = None
    seen_rss_kb = 0.0
    with open(root.parent / f".{root.name}.publish-stderr.txt", "w+") as stderr:
        child = subprocess.Popen(command, cwd=REPO, stdout=stderr, stderr=stderr)
        while child.poll() is None:
            seen_rss_kb = max(seen_rss_kb, proc_kb(f"/proc/{child.pid}/status", "VmRSS"))
            if time.perf_counter() - started > timeout:
                killed = f"timeout after {timeout:.0f} s"
            elif seen_rss_kb > max_rss_gb * (1 << 20):
                killed = f"RSS passed {max_rss_gb} GB"
            if killed:
                child.kill()
                child.wait()
                break
            time.sleep(0.2)
        process_s = time.perf_counter() - started
        stderr.seek(0)
        tail = stderr.read()[-3000:]
    out: dict[str, Any] = {"ok": False, "process_s": round(process_s, 2), "seen_rss_mb": round(seen_rss_kb / 1024, 1)}
    if killed:
        out["error"] = f"killed: {killed}"
    elif child.returncode != 0 or not result_path.is_file():
        out["error"] = f"exit {child.returncode}: {tail.strip()}"
    else:
        out.update(ok=True, **json.loads(result_path.read_text()))
    result_path.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------- steps


def output_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of the corpus tables publish writes: stats/*.parquet and manifest/*.parquet, the
    frames table and the manifests being directories of per-video parts."""
    patterns = ("stats/*.parquet", "stats/frames.parquet/*/*.parquet", "manifest/*.parquet/*.parquet")
    paths = sorted(p for pattern in patterns for p in root.glob(pattern) if p.is_file())
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in paths}


def link_inputs(source: Path, target: Path) -> None:
    """A copy of `source`'s inputs to publish (records, frame-stats parts, shards), hard-linked: no outputs, no
    state of an earlier publish. Publish replaces files by rename, so the shared inodes are never written."""
    shutil.rmtree(target, ignore_errors=True)
    for top in (Path("stats/videos"), Path("stats/frames"), Path("shards")):
        if (source / top).is_dir():
            shutil.copytree(source / top, target / top, copy_function=os.link)


def compare(a: dict[str, str], b: dict[str, str]) -> tuple[bool, list[str]]:
    differ = sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))
    return not differ, differ


def _disk_mb(root: Path) -> float:
    return round(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20, 1)


def _step(row: dict[str, Any], name: str, result: dict[str, Any]) -> None:
    row[f"{name}_s"] = result.get("publish_s")
    row[f"{name}_rss_mb"] = result.get("peak_rss_mb")
    row[f"{name}_process_s"] = result["process_s"]
    if not result["ok"]:
        row["errors"][name] = result.get("error")
    row["steps"][name] = result


def measure(size: str, args: argparse.Namespace) -> dict[str, Any]:
    videos, frames = (int(x) for x in size.lower().split("x"))
    root = args.workdir / size
    shutil.rmtree(root, ignore_errors=True)
    print(f"{size}: generating {videos * frames:,} rows under {root}", file=sys.stderr, flush=True)
    generated = generate(
        root,
        videos,
        frames,
        args.seed,
        args.kept_fraction,
        args.cross_dup_fraction,
        datasets=args.datasets,
        progress=True,
    )
    row: dict[str, Any] = {
        "size": size,
        "rows": generated["rows"],
        "videos": videos,
        "kept": generated["kept"],
        "planted_cross_video": generated["planted_cross_video"],
        "generate_s": generated["generate_s"],
        "generate_rows_per_s": generated["generate_rows_per_s"],
        "input_mb": _disk_mb(root),
        "errors": {},
        "steps": {},
    }
    print(
        f"{size}: generated in {generated['generate_s']} s ({generated['generate_rows_per_s']:,} rows/s)",
        file=sys.stderr,
        flush=True,
    )
    brute_root = None
    if generated["rows"] <= args.brute_max_rows:
        brute_root = args.workdir / f"{size}-brute"
        link_inputs(root, brute_root)
    limits = {"timeout": args.timeout, "max_rss_gb": args.max_rss_gb}

    def publish_step(name: str, target: Path, brute: bool = False) -> dict[str, Any]:
        print(f"{size}: {name} publish ...", file=sys.stderr, flush=True)
        result = run_publish(target, brute=brute, **limits)
        _step(row, name, result)
        print(f"{size}: {name}: {json.dumps(result)[:400]}", file=sys.stderr, flush=True)
        return result

    full = publish_step("full", root)
    full_hashes = output_hashes(root) if full["ok"] else {}
    row["cross_video_dropped"] = full.get("duplicate_cross_video")
    row["samples"] = full.get("samples")
    if full["ok"]:
        publish_step("rerun", root)
        added = generate(
            root,
            1,
            frames,
            args.seed,
            args.kept_fraction,
            args.cross_dup_fraction,
            first=videos,
            planned_videos=videos,
            datasets=args.datasets,
        )
        row["add_one_generate_s"] = added["generate_s"]
        publish_step("add_one", root)
    else:
        row.update(rerun_s=None, rerun_rss_mb=None, add_one_s=None, add_one_rss_mb=None)
    row.update(brute_full_s=None, brute_full_rss_mb=None, identical_to_brute=None)
    if brute_root is not None:
        brute = publish_step("brute_full", brute_root, brute=True)
        if brute["ok"] and not brute.get("brute_force_calls"):
            row["errors"]["brute_full"] = "the brute-force patch was never called: publish no longer searches there"
        elif brute["ok"] and full["ok"]:
            row["identical_to_brute"], differ = compare(full_hashes, output_hashes(brute_root))
            if differ:
                row["differ_from_brute"] = differ
        shutil.rmtree(brute_root, ignore_errors=True)
    if args.check_incremental and row["steps"].get("add_one", {}).get("ok"):
        scratch_root = args.workdir / f"{size}-scratch"
        link_inputs(root, scratch_root)
        scratch = publish_step("scratch_after_add_one", scratch_root)
        if scratch["ok"]:
            row["incremental_equals_scratch"], differ = compare(output_hashes(root), output_hashes(scratch_root))
            if differ:
                row["incremental_differs"] = differ
        shutil.rmtree(scratch_root, ignore_errors=True)
    row["verdict"] = verdict(row)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return row


def verdict(row: dict[str, Any]) -> dict[str, bool | None]:
    """The aims that apply to this size: True/False, None where the step did not finish."""

    def within(seconds: float | None, max_s: float, rss: float | None = None, max_rss: float | None = None):
        if seconds is None or (max_rss is not None and rss is None):
            return None
        return seconds <= max_s and (max_rss is None or rss <= max_rss)

    out: dict[str, bool | None] = {"rerun_nothing_new": within(row.get("rerun_s"), AIMS["rerun_nothing_new"]["max_s"])}
    for name in ("full_4M_rows", "full_40M_rows"):
        aim = AIMS[name]
        if row["rows"] == aim["rows"]:
            out[name] = within(row.get("full_s"), aim["max_s"], row.get("full_rss_mb"), aim["max_rss_mb"])
    aim = AIMS["add_one_video_to_40M_rows"]
    if row["rows"] == aim["rows"]:
        out["add_one_video_to_40M_rows"] = within(row.get("add_one_s"), aim["max_s"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="VIDEOSxFRAMES data roots to measure")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes ({' '.join(QUICK_SIZES)}) to check it works")
    parser.add_argument(
        "--brute-max-rows", type=int, default=1_000_000, help="brute-force reference only up to this many rows"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a publish child is killed")
    parser.add_argument("--max-rss-gb", type=float, default=14, help="a publish child past this RSS is killed")
    parser.add_argument(
        "--check-incremental", action="store_true", help="also compare add_one's outputs with a fresh publish's"
    )
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help=f"where the data roots go (default {WORKDIR})")
    parser.add_argument("--keep", action="store_true", help="keep the generated data roots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kept-fraction", type=float, default=0.4)
    parser.add_argument("--cross-dup-fraction", type=float, default=0.02)
    parser.add_argument("--datasets", type=int, default=2)
    add_out_argument(parser)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--brute", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.brute, args.child_result)
        return
    run_meta = meta()
    sizes = QUICK_SIZES if args.quick else args.sizes
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sizes:
        results.append(measure(size, args))
    emit(
        {
            "benchmark": "publish",
            "aims": AIMS,
            "settings": {
                "seed": args.seed,
                "kept_fraction": args.kept_fraction,
                "cross_dup_fraction": args.cross_dup_fraction,
                "datasets": args.datasets,
                "brute_max_rows": args.brute_max_rows,
                "timeout_s": args.timeout,
                "max_rss_gb": args.max_rss_gb,
            },
            "sizes": results,
        },
        args.out,
        run_meta,
    )


if __name__ == "__main__":
    main()
