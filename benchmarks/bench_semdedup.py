"""SemDeDup: wall time and peak memory against n, a brute-force baseline, and quality on planted duplicates.

    python -m benchmarks.bench_semdedup [--sizes 10000 30000 100000 300000 1000000] [--brute-max 30000]
                                        [--blas-threads 1] [--out FILE]
    python -m benchmarks.bench_semdedup --streamed 1000000 3000000 [--workdir /tmp/bench_clip] [--out FILE]

--streamed: the corpus pass of publish as it runs (pipeline/clip/curation.py::curate_embeddings: zero-shot
scores, then SemDeDup streamed from disk) on the same synthetic rows written as per-video embedding files in the
real format (2000 rows a video, 8192-row zstd row groups, as embed_video writes them), under --workdir. Each size:
one child writes the files, another runs the pass and reports wall time, rows/s, its RSS before the pass (the
frames table publish would hold) and its peak RSS (VmHWM), and the disk the pass's temporaries need; the files
are removed afterwards.

Synthetic 512-d unit embeddings stored as float16, as publish holds them: a mixture of 2000 "scenes" (rows of
one scene at cosine ~0.8 to each other, ~0.9 to its centre, like CLIP embeddings of frames of one video), with
3% of the rows near-copies of other rows (cosine 0.9976-0.9998). Each size runs in its own subprocess: wall
time of `semdedup` (k-means + per-cluster pass), the peak of Python/numpy allocations during it (tracemalloc,
excluding the input array, which is reported separately) and the subprocess's peak RSS (ru_maxrss, all of it).
Quality: planted groups of 1-4 near-copies (cosine 0.9976-0.9998 to their original, so every pair of a group is
above 0.99) and hard negatives (cosine 0.955-0.984, which must stay); precision and recall of the dropped set,
where the truth is "every member of a group except its first in corpus order".

Measurements run in subprocesses with OPENBLAS_NUM_THREADS=--blas-threads (default 1): on a shared, loaded
2-core machine, two BLAS threads made a 172x512 product 30-100x slower (spin-waiting for a core) and large ones
no faster; give a dedicated machine its core count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, add_out_argument, add_workdir_argument, emit, meta, proc_kb
from pipeline.clip.semdedup import greedy_dedup, semdedup, unit_rows

DIM = 512
SCENES = 2000
_CHUNK = 65536


def _near(rng: np.random.Generator, base: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Unit rows at the given angles (radians) from the unit rows of `base`, in random directions."""
    noise = rng.normal(size=base.shape).astype(np.float32)
    noise -= np.einsum("ij,ij->i", noise, base)[:, None] * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return np.cos(angles)[:, None] * base + np.sin(angles)[:, None] * noise


def synthetic(n: int, seed: int = 0, copy_fraction: float = 0.03) -> np.ndarray:
    """n x DIM float16 unit rows: a mixture of scenes plus near-copies, built in chunks (bounded memory)."""
    out = np.empty((n, DIM), np.float16)
    for start, rows in synthetic_chunks(n, seed, copy_fraction):
        out[start : start + len(rows)] = rows
    return out


def synthetic_chunks(n: int, seed: int = 0, copy_fraction: float = 0.03) -> Iterator[tuple[int, np.ndarray]]:
    """`synthetic(n)` a chunk at a time: (first row, float32 rows)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.normal(size=(SCENES, DIM)))
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        spread = rng.uniform(0.35, 0.55, m).astype(np.float32)  # angle to the scene centre: cos 0.85-0.94
        rows = _near(rng, centres[rng.integers(0, SCENES, m)], spread)
        copies = np.flatnonzero(rng.random(m) < copy_fraction)
        copies = copies[copies > 0]
        sources = rng.integers(0, copies, len(copies))  # an earlier row of the chunk
        rows[copies] = _near(rng, rows[sources], rng.uniform(0.02, 0.07, len(copies)).astype(np.float32))
        yield start, rows


def measure(n: int, brute: bool) -> dict:
    """Run in a child process: one semdedup (and optionally the brute-force pass) on n synthetic rows."""
    vectors = synthetic(n)
    tracemalloc.start()
    t0 = time.perf_counter()
    result = semdedup(vectors, 0.01, seed=0)
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    figures = {
        "n": n,
        "clusters": result.clusters,
        "seconds": round(wall, 2),
        "input_mb": round(vectors.nbytes / 2**20, 1),
        "semdedup_peak_alloc_mb": round(peak / 2**20, 1),
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "dropped": int((result.duplicate_of >= 0).sum()),
    }
    if brute:
        t0 = time.perf_counter()
        baseline, _ = greedy_dedup(unit_rows(vectors), 0.99)
        figures["brute_force_seconds"] = round(time.perf_counter() - t0, 2)
        figures["brute_force_dropped"] = int((baseline >= 0).sum())
        figures["same_decisions_as_brute_force"] = float(np.mean((baseline >= 0) == (result.duplicate_of >= 0)))
    return figures


ROWS_PER_VIDEO = 2000


def write_corpus(n: int, workdir: Path) -> dict:
    """`synthetic(n)` as per-video embedding files under workdir/root/embeddings/bench/ (the real schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import embedding_schema

    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "embeddings" / "bench").mkdir(parents=True)
    schema = embedding_schema(DIM)
    t0 = time.perf_counter()
    pending: list[np.ndarray] = []
    have = video = 0

    def write(rows: np.ndarray, video: int) -> None:
        ids = pa.array([f"bench/v{video:07d}/{i:08d}" for i in range(len(rows))], pa.string())
        flat = pa.array(rows.astype(np.float16).reshape(-1), pa.float16())
        table = pa.table({"sample_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM)}, schema=schema)
        path = root / "embeddings" / "bench" / f"v{video:07d}.parquet"
        pq.write_table(table, path, row_group_size=8192, compression="zstd")

    for _, rows in synthetic_chunks(n):
        pending.append(rows)
        have += len(rows)
        if have >= ROWS_PER_VIDEO:
            joined = np.concatenate(pending)
            whole = have - have % ROWS_PER_VIDEO
            for start in range(0, whole, ROWS_PER_VIDEO):
                write(joined[start : start + ROWS_PER_VIDEO], video)
                video += 1
            pending, have = [joined[whole:]], have - whole
    if have:
        write(np.concatenate(pending), video)
        video += 1
    size = sum(p.stat().st_size for p in (root / "embeddings" / "bench").iterdir())
    return {"videos": video, "bytes": size, "write_seconds": round(time.perf_counter() - t0, 1)}


def measure_streamed(n: int, workdir: Path) -> dict:
    """Run in a child process: the streamed corpus pass over the files write_corpus left for n rows."""
    import pyarrow as pa

    from pipeline.clip.curation import curate_embeddings
    from pipeline.config import ClipConfig
    from pipeline.io.data_root import DataRoot
    from pipeline.schema import CLIP_JUNK, CLIP_SCORE_COLUMNS, CLIP_TAGS, FRAME_STATS_SCHEMA

    root = DataRoot(workdir / "root")
    paths = sorted((workdir / "root" / "embeddings" / "bench").iterdir())
    # The slim frames table publish passes: one row per embedding row, ids built a video at a time in Arrow.
    ids = pa.chunked_array(
        [
            pa.array([f"bench/{p.stem}/{i:08d}" for i in range(min(ROWS_PER_VIDEO, n - k * ROWS_PER_VIDEO))])
            for k, p in enumerate(paths)
        ],
        pa.string(),
    )
    columns = {
        "sample_id": ids,
        "kept": pa.array(np.ones(n, bool)),
        "drop_reason": pa.nulls(n, pa.string()),
        "duplicate_of": pa.nulls(n, pa.string()),
    }
    for name in CLIP_SCORE_COLUMNS:
        columns[name] = pa.nulls(n, FRAME_STATS_SCHEMA.field(name).type)
    frames = pa.table(columns)
    text = unit_rows(np.random.default_rng(9).normal(size=(len(CLIP_TAGS) + len(CLIP_JUNK) + 1, DIM)))
    text = text.astype(np.float16).astype(np.float32)
    cfg = ClipConfig(semdedup={"epsilon": 0.01})
    rss_before = proc_kb("/proc/self/status", "VmRSS")
    t0 = time.perf_counter()
    out, info = curate_embeddings(root, paths, frames, cfg, text, 100.0, DIM, workdir=workdir)
    wall = time.perf_counter() - t0
    return {
        "n": n,
        "videos": len(paths),
        "clusters": info["semdedup"]["clusters"],
        "dropped": info["semdedup"]["dropped"],
        "seconds": round(wall, 1),
        "rows_per_second": round(n / wall),
        "rss_before_pass_mb": round(rss_before / 1024, 1),
        "peak_rss_mb": round(proc_kb("/proc/self/status", "VmHWM") / 1024, 1),
        "embeddings_on_disk_mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
        "temporary_disk_mb": round(2 * n * DIM * 2 / 2**20, 1),  # staged kept rows + the per-cluster spill
        "float16_matrix_mb_avoided": round(n * DIM * 2 / 2**20, 1),
    }


def planted_quality(n_base: int = 50_000, groups: int = 3000, negatives: int = 3000, seed: int = 1) -> dict:
    """Precision and recall of the dropped set on planted near-duplicate groups, and of the brute-force pass."""
    rng = np.random.default_rng(seed)
    base = synthetic(n_base, seed=seed, copy_fraction=0.0).astype(np.float32)
    originals = rng.choice(n_base, groups + negatives, replace=False)
    group_of, extra = [], []
    for g, i in enumerate(originals[:groups]):
        k = int(rng.integers(1, 5))
        extra.append(_near(rng, np.repeat(base[i : i + 1], k, axis=0), rng.uniform(0.02, 0.07, k).astype(np.float32)))
        group_of += [g] * k
    hard = _near(rng, base[originals[groups:]], rng.uniform(0.18, 0.30, negatives).astype(np.float32))
    vectors = np.vstack([base, *extra, hard])
    labels = np.full(len(vectors), -1)
    labels[originals[:groups]] = np.arange(groups)
    labels[n_base : n_base + len(group_of)] = group_of
    order = rng.permutation(len(vectors))  # copies scattered through the corpus, before or after originals
    vectors, labels = vectors[order].astype(np.float16), labels[order]
    truth = np.zeros(len(vectors), bool)
    for g in range(groups):
        members = np.flatnonzero(labels == g)
        truth[members[1:]] = True  # the earliest member of each group is the one kept
    figures: dict[str, Any] = {
        "rows": len(vectors),
        "groups": groups,
        "planted_duplicates": int(truth.sum()),
        "hard_negatives": negatives,
    }
    for epsilon in (0.005, 0.01, 0.02):
        t0 = time.perf_counter()
        dropped = semdedup(vectors, epsilon, seed=0).duplicate_of >= 0
        figures[f"epsilon_{epsilon}"] = {**_scores(dropped, truth), "seconds": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    brute = greedy_dedup(unit_rows(vectors), 0.99)[0] >= 0
    figures["brute_force_epsilon_0.01"] = {**_scores(brute, truth), "seconds": round(time.perf_counter() - t0, 2)}
    return figures


def _scores(dropped: np.ndarray, truth: np.ndarray) -> dict:
    hits = int((dropped & truth).sum())
    return {
        "dropped": int(dropped.sum()),
        "precision": round(hits / max(1, int(dropped.sum())), 4),
        "recall": round(hits / max(1, int(truth.sum())), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--brute-max", type=int, default=30_000, help="largest n also run brute force")
    parser.add_argument("--blas-threads", type=int, default=1, help="OPENBLAS_NUM_THREADS of the measurements")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quality", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--streamed", type=int, nargs="+", help="sizes of the streamed corpus pass (on disk)")
    parser.add_argument("--write-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--streamed-child", type=int, help=argparse.SUPPRESS)
    add_workdir_argument(parser, "the synthetic embedding files and the pass's temporaries")
    add_out_argument(parser)
    args = parser.parse_args()
    if args.write_child:
        print(json.dumps(write_corpus(args.write_child, args.workdir)))
        return
    if args.streamed_child:
        print(json.dumps(measure_streamed(args.streamed_child, args.workdir)))
        return
    if args.child:
        print(json.dumps(measure(args.child, args.child <= args.brute_max)))
        return
    if args.quality:
        print(json.dumps(planted_quality()))
        return
    run_meta = meta()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.blas_threads), "OMP_NUM_THREADS": str(args.blas_threads)}

    def child(*flags: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_semdedup", *flags, "--brute-max", str(args.brute_max)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    if args.streamed:
        workdir = args.workdir or Path("/tmp/bench_clip")
        streamed = []
        for n in args.streamed:
            written = child("--write-child", str(n), "--workdir", str(workdir))
            streamed.append({**child("--streamed-child", str(n), "--workdir", str(workdir)), "write": written})
            shutil.rmtree(workdir / "root", ignore_errors=True)
            print(json.dumps(streamed[-1]), file=sys.stderr)
        emit({"dim": DIM, "epsilon": 0.01, "blas_threads": args.blas_threads, "streamed": streamed}, args.out, run_meta)
        return
    scaling = []
    for n in args.sizes:
        scaling.append(child("--child", str(n)))
        print(json.dumps(scaling[-1]), file=sys.stderr)
    for previous, current in zip(scaling, scaling[1:]):  # growth exponent between neighbouring sizes
        current["time_exponent_vs_previous"] = round(
            float(np.log(current["seconds"] / previous["seconds"]) / np.log(current["n"] / previous["n"])), 2
        )
    emit(
        {
            "dim": DIM,
            "epsilon": 0.01,
            "blas_threads": args.blas_threads,
            "scaling": scaling,
            "quality": child("--quality"),
        },
        args.out,
        run_meta,
    )


if __name__ == "__main__":
    main()
