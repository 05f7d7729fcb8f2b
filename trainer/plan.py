"""Which samples each data-loading worker reads, batch by batch: metadata only, no pixels.

Every rank and worker computes the same plan from the manifest and the seed, so no communication is
needed. Per epoch, each source (a dataset's video or stereo rows) is cut into units (row groups, so a
worker reads a file region once), units are shuffled and dealt to the global workers (rank x workers)
to balance sample counts, and each worker streams its units through a shuffle buffer. Every worker then
makes the same number of batches of each source, in one order shared by all ranks, so every rank takes
the same number of steps (no DDP hang) and sees the same kind of batch at the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.io import objectstore
from trainer.config import DataConfig, SupportConfig

KINDS = ("video", "stereo")


class Source(NamedTuple):
    """What a batch draws from: one dataset's rows of one kind."""

    dataset: str
    kind: str  # "video" or "stereo"


@dataclass(frozen=True)
class Batch:
    """One planned batch: rows of `EpochPlan.frame` (targets), the source it draws from, its seed."""

    source: int
    targets: np.ndarray  # int64 row indices into EpochPlan.frame
    seed: tuple[int, ...]


class EpochPlan:
    """The manifest rows a training run may use, with per-row support ranges and read units."""

    def __init__(self, frame: pd.DataFrame, cfg: DataConfig):
        order = frame.sort_values(["root", "dataset", "video_id", "clip_id", "frame_index"], kind="stable").index
        self.frame = frame.loc[order].reset_index(drop=True)
        self.cfg = cfg
        self.row_group, self.row_in_group = _row_groups(self.frame)
        self.k_range = support_ranges(self.frame, cfg.support, cfg.width)
        self.avail = _clip_availability(self.frame)
        self.sources = _sources(self.frame)
        self.source_of = np.empty(len(self.frame), np.int64)
        for index, source in enumerate(self.sources):
            rows = ((self.frame["dataset"] == source.dataset) & (self.frame["kind"] == source.kind)).to_numpy()
            self.source_of[rows] = index
        is_video = (self.frame["kind"] == "video").to_numpy()
        # A video target needs a support on each side at the smallest offset its clip allows.
        self.eligible = ~is_video | (self.avail >= self.k_range[:, 0])

    def source_names(self) -> list[str]:
        return [f"{source.dataset}/{source.kind}" for source in self.sources]

    def units(self, source: int) -> list[np.ndarray]:
        """Eligible target rows of one source, grouped by the shard row group they are read from."""
        rows = np.flatnonzero(self.eligible & (self.source_of == source))
        keys = self.frame.loc[rows, ["root", "shard"]].astype(str).agg("\0".join, axis=1).to_numpy()
        groups: dict[tuple[str, int], list[int]] = {}
        for row, key, group in zip(rows, keys, self.row_group[rows]):
            groups.setdefault((key, int(group)), []).append(int(row))
        return [np.asarray(v, np.int64) for v in groups.values()]

    def epoch(self, epoch: int, global_workers: int) -> list[list[Batch]]:
        """Batches of every global worker for one epoch: the same count and source order for all."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch])
        per_worker: list[list[np.ndarray]] = []  # [source][worker] -> target rows, stream order
        counts = []
        for source in range(len(self.sources)):
            assigned = _deal(self.units(source), global_workers, rng)
            streams = [
                _shuffle_buffer(rows, cfg.shuffle_buffer, np.random.default_rng([cfg.seed, epoch, g, source]))
                for g, rows in enumerate(assigned)
            ]
            per_worker.append(streams)
            counts.append(min(len(s) for s in streams) // cfg.batch_size)
        counts = _mix(counts, [source.dataset for source in self.sources], cfg.mix)
        schedule = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        plan: list[list[Batch]] = []
        for g in range(global_workers):
            taken = [0] * len(counts)
            batches = []
            for i, source in enumerate(schedule):
                start = taken[source] * cfg.batch_size
                taken[source] += 1
                targets = per_worker[source][g][start : start + cfg.batch_size]
                batches.append(Batch(int(source), targets, (cfg.seed, epoch, g, i)))
            plan.append(batches)
        return plan

    def supports(self, targets: np.ndarray, u: float) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the supports t-k and t+k, with k drawn once per batch (u in [0, 1)) inside each clip's range."""
        low, high = self.k_range[targets, 0], self.k_range[targets, 1]
        k = low + np.floor(u * (high - low + 1)).astype(np.int64)
        k = np.minimum(k, self.avail[targets])
        return targets - k, targets + k


def support_ranges(frame: pd.DataFrame, cfg: SupportConfig, train_width: int) -> np.ndarray:
    """(k_low, k_high) per row: from the category table, or from the clip's median recorded motion.

    In motion mode k_high is the offset at which the clip's median displacement reaches target_px (the largest
    under its upper end, at least the first to pass its lower end), and k_low stays 1 as in the category rule:
    small offsets keep the basin of the true camera motion in reach. Drawing only offsets that move pixels by
    target_px[0] or more (k_low > 1) left a net that started with its translation reversed in the minimum
    where disparity is near constant and the translation's sign no longer matters (issue 18)."""
    k_max = frame["category"].map(cfg.k_max).fillna(cfg.default_k_max).to_numpy(np.int64)
    ranges = np.stack([np.ones_like(k_max), k_max], axis=1)
    if cfg.mode == "category":
        return ranges
    motion = frame["motion"].to_numpy(dtype=float, na_value=np.nan)
    clip = frame.groupby(["root", "dataset", "video_id", "clip_id"], sort=False).ngroup().to_numpy()
    median = pd.Series(motion).groupby(clip).transform("median").to_numpy()
    px_per_step = median * train_width  # motion is a fraction of the width, so it scales with resizing
    known = np.isfinite(px_per_step) & (px_per_step > 0)
    low = np.ceil(cfg.target_px[0] / np.where(known, px_per_step, 1.0))
    high = np.floor(cfg.target_px[1] / np.where(known, px_per_step, 1.0))
    high = np.clip(np.maximum(high, low), 1, cfg.motion_k_cap)
    ranges[known, 1] = high[known].astype(np.int64)
    return ranges  # clips without motion (e.g. a single kept frame so far) keep the category rule


def steps_per_epoch(plan: list[list[Batch]]) -> int:
    """Batches one rank's loader yields in an epoch (the same for every rank)."""
    return sum(len(worker) for worker in plan) // max(1, len(plan))


def _row_groups(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    groups = np.zeros(len(frame), np.int64)
    offsets = np.zeros(len(frame), np.int64)
    for (root, shard), index in frame.groupby(["root", "shard"], sort=False).groups.items():
        starts = _row_group_starts(objectstore.join(root, shard))
        rows = frame.loc[index, "row"].to_numpy()
        group = np.searchsorted(starts, rows, side="right") - 1
        groups[index] = group
        offsets[index] = rows - starts[group]
    return groups, offsets


@lru_cache(maxsize=4096)
def _row_group_starts(path: str) -> np.ndarray:
    with objectstore.open_input(path) as source:
        meta = pq.ParquetFile(source).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _clip_availability(frame: pd.DataFrame) -> np.ndarray:
    """Kept frames of the same clip on the short side of each row: the largest usable k."""
    clip = frame.groupby(["root", "dataset", "video_id", "clip_id"], sort=False).ngroup()
    position = clip.groupby(clip).cumcount().to_numpy()
    length = clip.map(clip.value_counts()).to_numpy()
    return np.minimum(position, length - 1 - position).astype(np.int64)


def _sources(frame: pd.DataFrame) -> list[Source]:
    pairs = frame[["dataset", "kind"]].drop_duplicates()
    return sorted(Source(dataset, kind) for dataset, kind in pairs.itertuples(index=False))


def _deal(units: list[np.ndarray], workers: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle units and give each to the worker holding the fewest rows; split units when too few."""
    total = sum(len(u) for u in units)
    if total and len(units) < 4 * workers:  # small data: cut row groups so every worker gets a share
        size = max(1, math.ceil(total / (4 * workers)))
        units = [u[i : i + size] for u in units for i in range(0, len(u), size)]
    held = np.zeros(workers, np.int64)
    dealt: list[list[np.ndarray]] = [[] for _ in range(workers)]
    for index in rng.permutation(len(units)):
        g = int(np.argmin(held))
        dealt[g].append(units[index])
        held[g] += len(units[index])
    return [np.concatenate(d) if d else np.zeros(0, np.int64) for d in dealt]


def _shuffle_buffer(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The order a streaming shuffle buffer of `size` items would emit `rows` in (reads stay local)."""
    out = np.empty(len(rows), np.int64)
    buffer = list(rows[:size])
    for i, incoming in enumerate(rows[size:]):
        j = int(rng.integers(len(buffer)))
        out[i], buffer[j] = buffer[j], incoming
    tail = rng.permutation(len(buffer))
    out[len(rows) - len(buffer) :] = np.asarray(buffer, np.int64)[tail]
    return out


def _mix(counts: list[int], datasets: list[str], weights: dict[str, float]) -> list[int]:
    """Batches per source: all of them, or as many as the mixing weights allow."""
    if not weights:
        return counts
    unknown = set(weights) - set(datasets)
    if unknown:
        raise ValueError(f"data.mix names datasets not in the manifests: {sorted(unknown)}")
    # A dataset's weight is shared between its sources (video, stereo) in proportion to their batches.
    per_dataset = {d: sum(c for c, dd in zip(counts, datasets) if dd == d) for d in set(datasets)}
    wanted = [weights.get(d, 0.0) * c / per_dataset[d] if per_dataset[d] else 0.0 for c, d in zip(counts, datasets)]
    scale = min((c / w for c, w in zip(counts, wanted) if w > 0), default=0.0)
    return [int(math.floor(w * scale + 1e-9)) for w in wanted]
