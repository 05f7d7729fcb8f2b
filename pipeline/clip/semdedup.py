"""SemDeDup (Abbas et al., 2023): spherical k-means of unit embeddings, then near-duplicates within each cluster.

Keep rule: rows are visited in the order given (publish passes the corpus order: dataset, video_id, frame
order). A row is a duplicate when its cosine similarity to a row already kept, earlier in that order and in
the same cluster, exceeds 1 - epsilon; it then points at the most similar such kept row. So the earliest
member of a group of near-duplicates stays, as in the cross-video pHash pass. Duplicates that k-means puts in
different clusters are not compared (SemDeDup's trade: near-duplicates at cosine 0.99 rarely split).

Memory: the embeddings stay float16 (1M x 512 = 1 GB); similarities are computed in float32 blocks of bounded
size, and each cluster is gathered on its own. Time: k-means costs ~n*k*d and the per-cluster pass ~n*(n/k)*d,
so the default k = ceil(sqrt(n)) makes both grow as n^1.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_CELLS = 1 << 23  # float32 similarities computed at a time (32 MB)
_BLOCK = 1024  # rows of a cluster decided together: one block x block product, then a short sequential pass


@dataclass(frozen=True)
class SemDedupResult:
    duplicate_of: np.ndarray  # int64 per row: the kept row it duplicates, or -1 when kept
    similarity: np.ndarray  # float32 per row: cosine to that kept row (0 when kept)
    labels: np.ndarray  # int32 per row: k-means cluster
    clusters: int


def semdedup(
    vectors: np.ndarray,
    epsilon: float,
    *,
    clusters: int | None = None,
    iterations: int = 20,
    sample_per_cluster: int = 256,
    seed: int = 0,
) -> SemDedupResult:
    """Near-duplicates of unit rows (any float dtype): cosine > 1 - epsilon to an earlier kept row of the cluster."""
    n = len(vectors)
    duplicate_of = np.full(n, -1, np.int64)
    similarity = np.zeros(n, np.float32)
    if n == 0:
        return SemDedupResult(duplicate_of, similarity, np.zeros(0, np.int32), 0)
    k = min(n, clusters or math.ceil(math.sqrt(n)))
    centroids = kmeans(vectors, k, iterations=iterations, sample_per_cluster=sample_per_cluster, seed=seed)
    labels, _ = assign(vectors, centroids)
    order = np.argsort(labels, kind="stable")  # grouped by cluster, corpus order inside each
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    for cluster in range(k):
        rows = order[bounds[cluster] : bounds[cluster + 1]]
        if len(rows) < 2:
            continue
        local, sims = greedy_dedup(unit_rows(vectors[rows]), 1.0 - epsilon)
        hit = local >= 0
        duplicate_of[rows[hit]] = rows[local[hit]]
        similarity[rows[hit]] = sims[hit]
    return SemDedupResult(duplicate_of, similarity, labels, k)


def kmeans(
    vectors: np.ndarray, k: int, *, iterations: int = 20, sample_per_cluster: int = 256, seed: int = 0
) -> np.ndarray:
    """k x d float32 unit centroids of spherical k-means (Lloyd), fitted on a seeded sample; deterministic."""
    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n, got k={k}, n={n}")
    # Like faiss: a few hundred points per centroid place it as well as all of them would. The sample is
    # converted to float32 once (k x sample_per_cluster rows: 0.5 GB for 1M embeddings at 512-d).
    sample = (
        slice(None) if n <= k * sample_per_cluster else np.sort(rng.choice(n, k * sample_per_cluster, replace=False))
    )
    fit = unit_rows(vectors[sample])
    centroids = fit[np.sort(rng.choice(len(fit), k, replace=False))]
    previous = None
    for _ in range(iterations):
        labels, sims = assign(fit, centroids)
        if previous is not None and np.array_equal(labels, previous):
            break
        previous = labels
        sums = np.zeros((k, dim), np.float32)
        _accumulate(sums, fit, labels)
        empty = np.flatnonzero(np.bincount(labels, minlength=k) == 0)
        if len(empty):  # reseed an empty cluster with the point its centroid serves worst
            sums[empty] = unit_rows(fit[np.argsort(sims, kind="stable")[: len(empty)]])
        centroids = unit_rows(sums)
    return centroids


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (int32) and its cosine (float32) for every row, in bounded chunks."""
    n = len(vectors)
    labels = np.empty(n, np.int32)
    sims = np.empty(n, np.float32)
    step = max(1, min(_rows_per_chunk(vectors.shape[1]), _CELLS // len(centroids)))
    for start in range(0, n, step):
        scores = unit_rows(vectors[start : start + step]) @ centroids.T
        labels[start : start + step] = scores.argmax(axis=1)
        sims[start : start + step] = scores[np.arange(len(scores)), labels[start : start + step]]
    return labels, sims


def greedy_dedup(x: np.ndarray, threshold: float, block: int = _BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact greedy pass over float32 unit rows in order: row i is a duplicate when cos > threshold to a kept j < i.

    Returns (duplicate_of, similarity): the most similar earlier kept row (-1 when kept) and its cosine.
    Cost ~ rows x kept rows x d, memory ~ block x (block + a chunk of kept rows); this is also the brute-force
    baseline when given the whole corpus as one cluster.
    """
    m = len(x)
    duplicate_of = np.full(m, -1, np.int64)
    similarity = np.zeros(m, np.float32)
    kept = np.empty(m, np.int64)
    n_kept = 0
    kept_step = max(1, _CELLS // block)
    for start in range(0, m, block):
        rows = x[start : start + block]
        b = len(rows)
        best = np.full(b, -np.inf, np.float32)
        best_at = np.full(b, -1, np.int64)
        for k0 in range(0, n_kept, kept_step):  # against every row kept in earlier blocks
            candidates = kept[k0 : min(k0 + kept_step, n_kept)]
            sims = rows @ x[candidates].T
            j = sims.argmax(axis=1)
            value = sims[np.arange(b), j]
            better = value > best
            best[better] = value[better]
            best_at[better] = candidates[j[better]]
        # Rounding can push the cosine of identical unit vectors past 1; epsilon 0 must drop nothing.
        is_dup = np.minimum(best, 1.0) > threshold
        inner = np.minimum(rows @ rows.T, 1.0)
        inner[np.triu_indices(b)] = -np.inf  # only earlier rows of the block count
        # Within the block the decision is sequential, but only rows close to an earlier row of it need one.
        for i in np.flatnonzero(inner.max(axis=1) > threshold):
            if not is_dup[i] and (~is_dup[:i] & (inner[i, :i] > threshold)).any():
                is_dup[i] = True
        # Each duplicate points at its most similar kept row, earlier blocks or this one.
        inner[:, is_dup] = -np.inf
        j = inner.argmax(axis=1)
        value = inner[np.arange(b), j]
        better = value > best
        best[better] = value[better]
        best_at[better] = start + j[better]
        duplicate_of[start : start + b][is_dup] = best_at[is_dup]
        similarity[start : start + b][is_dup] = np.minimum(best[is_dup], 1.0)
        new = start + np.flatnonzero(~is_dup)
        kept[n_kept : n_kept + len(new)] = new
        n_kept += len(new)
    return duplicate_of, similarity


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy with rows scaled to unit length (float16 storage leaves norms ~1e-3 off)."""
    out = np.array(x, dtype=np.float32)
    out /= np.maximum(np.sqrt(np.einsum("ij,ij->i", out, out))[:, None], 1e-12)
    return out


def _rows_per_chunk(dim: int) -> int:
    return max(1, _CELLS // max(dim, 1))


def _accumulate(sums: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> None:
    """sums[label] += row for every row, a chunk at a time, sorted by label and summed per run of one label.

    Slice sums in a loop measured 5x faster than np.add.reduceat and 50x faster than np.add.at.
    """
    step = _rows_per_chunk(rows.shape[1])
    for start in range(0, len(rows), step):
        chunk_labels = labels[start : start + step]
        order = np.argsort(chunk_labels, kind="stable")
        chunk = rows[start : start + step][order]
        sorted_labels = chunk_labels[order]
        bounds = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            sums[sorted_labels[a]] += chunk[a:b].sum(axis=0)
