"""Exact Hamming search over pHashes: HammingIndex (multi-index hashing) against find_many (brute force).

    python -m benchmarks.bench_hash_index [--sizes 100000 400000 1500000] [--max-distance 4] [--out F]

For each size: that many random uint64 hashes, about 1% of them planted near-copies (0 to max_distance bits
flipped) of an earlier hash, fed the way publish's cross-video pass feeds them: in batches ("videos"), each batch
queried against everything before it, then added. Times the HammingIndex pass (build included) and, up to
--brute-max hashes, the brute-force pass (find_many over all earlier hashes per batch), and checks that both give
the same positions. Nothing is extrapolated: a size past --brute-max has no brute-force figure.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks.common import Stopwatch, add_out_argument, emit, meta
from pipeline.video.phash import HammingIndex, find_many


def hashes_with_duplicates(size: int, max_distance: int, fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """`size` random hashes; `fraction` of them replaced by copies of an earlier hash with 0..max_distance bits
    flipped. Returns the hashes and how many were planted."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=size, dtype=np.uint64)
    planted = np.sort(rng.choice(np.arange(1, size), size=int(fraction * size), replace=False))
    copies = hashes[(rng.random(len(planted)) * planted).astype(np.int64)]
    for i in range(len(copies)):
        for bit in rng.choice(64, size=int(rng.integers(0, max_distance + 1)), replace=False):
            copies[i] ^= np.uint64(1) << np.uint64(bit)
    hashes[planted] = copies
    return hashes, len(planted)


def indexed_pass(hashes: np.ndarray, max_distance: int, batch: int) -> np.ndarray:
    index = HammingIndex()
    out = np.empty(len(hashes), np.int64)
    for start in range(0, len(hashes), batch):
        block = hashes[start : start + batch]
        out[start : start + batch] = index.nearest(block, max_distance)
        index.add(block)
    return out


def brute_pass(hashes: np.ndarray, max_distance: int, batch: int) -> np.ndarray:
    out = np.empty(len(hashes), np.int64)
    for start in range(0, len(hashes), batch):
        out[start : start + batch] = find_many(hashes[:start], hashes[start : start + batch], max_distance)
    return out


def measure(size: int, max_distance: int, batch: int, brute_max: int, seed: int) -> dict[str, Any]:
    hashes, planted = hashes_with_duplicates(size, max_distance, 0.01, seed)
    with Stopwatch() as watch:
        indexed = indexed_pass(hashes, max_distance, batch)
    row: dict[str, Any] = {
        "size": size,
        "planted": planted,
        "found": int((indexed >= 0).sum()),
        "index_s": round(watch.s, 3),
        "brute_s": None,
        "agree": None,
    }
    if size <= brute_max:
        with Stopwatch() as watch:
            brute = brute_pass(hashes, max_distance, batch)
        row.update(brute_s=round(watch.s, 3), agree=bool((brute == indexed).all()))
        row["speedup"] = round(row["brute_s"] / max(row["index_s"], 1e-9), 1)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_500_000])
    parser.add_argument("--max-distance", type=int, default=4)
    parser.add_argument("--batch", type=int, default=200, help="hashes per batch (a video's kept frames)")
    parser.add_argument("--brute-max", type=int, default=100_000, help="no brute-force pass above this size")
    parser.add_argument("--seed", type=int, default=0)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    run_meta = meta()
    rows = [measure(size, args.max_distance, args.batch, args.brute_max, args.seed) for size in args.sizes]
    result = {
        "benchmark": "hash_index",
        "max_distance": args.max_distance,
        "batch": args.batch,
        "brute_max": args.brute_max,
        "results": rows,
    }
    emit(result, args.out, run_meta)


if __name__ == "__main__":
    main()
