"""Perceptual hashes (64-bit DCT pHash) and an exact Hamming-distance index over them."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def phash(gray: np.ndarray) -> int:
    """64-bit pHash: sign of the 8x8 low-frequency DCT of a 32x32 thumbnail against its median."""
    thumb = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(thumb)[:8, :8].ravel()
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class HashIndex:
    """Brute-force exact search: a vectorised popcount over all stored hashes per query."""

    def __init__(self) -> None:
        self._hashes = np.empty(1024, np.uint64)
        self._times = np.empty(1024, np.float64)
        self.keys: list[str] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, value: int, key: str, time_s: float = 0.0) -> None:
        n = len(self.keys)
        if n == len(self._hashes):  # amortised growth keeps adds O(1)
            self._hashes = np.resize(self._hashes, 2 * n)
            self._times = np.resize(self._times, 2 * n)
        self._hashes[n] = value
        self._times[n] = time_s
        self.keys.append(key)

    def find(self, value: int, max_distance: int, *, time_s: float = 0.0, min_separation_s: float = 0.0) -> str | None:
        """Key of the closest stored hash within `max_distance`, ignoring entries closer in time than the separation."""
        n = len(self.keys)
        if n == 0:
            return None
        distances = np.bitwise_count(self._hashes[:n] ^ np.uint64(value)).astype(np.int32)
        if min_separation_s > 0:
            distances[np.abs(self._times[:n] - time_s) < min_separation_s] = 99
        best = int(np.argmin(distances))
        return self.keys[best] if distances[best] <= max_distance else None


def find_many(index: np.ndarray, queries: np.ndarray, max_distance: int, chunk_cells: int = 1 << 24) -> np.ndarray:
    """For each query, the position in `index` of its nearest hash within `max_distance`, or -1.

    Exact brute force in chunks of about `chunk_cells` distances, so memory stays bounded.
    """
    result = np.full(len(queries), -1, np.int64)
    if len(index) == 0 or len(queries) == 0:
        return result
    step = max(1, chunk_cells // len(index))
    for start in range(0, len(queries), step):
        block = queries[start : start + step, None] ^ index[None, :]
        distances = np.bitwise_count(block)
        best = distances.argmin(axis=1)
        close = distances[np.arange(len(best)), best] <= max_distance
        result[start : start + step][close] = best[close]
    return result


# ------------------------------------------------------------------ multi-index hashing

_MIN_BAND_BITS = 8  # narrower bands prune too little: brute force instead
_PROBE_COST = 4.0  # cost units of one band-key lookup, against one candidate verified ...
_BRUTE_COST = 0.25  # ... and one stored hash compared by the brute-force scan (sequential, vectorised)
_TAIL = 2048  # hashes added since the last flush are scanned by brute force until this many
_MERGE_FACTOR = 8  # a run is merged into the one before it once that one is at most this many times larger
_POSITION_BITS = 56  # best-candidate keys: distance << 56 | position
_TABLE_MAX_BITS = 24  # direct-address tables for bands up to this wide (2**24 int64 = 128 MB) ...
_TABLE_PER_ENTRY = 4  # ... whose 2**width entries are at most this many per indexed hash


@dataclass(frozen=True)
class BandLayout:
    """64 bits split into bands (`widths`, from the low bits up); each band is probed with its `radius`-bit flips.

    Exact for any distance below len(widths) * (radius + 1): by pigeonhole, two hashes that close agree to within
    `radius` bits on at least one band."""

    widths: tuple[int, ...]
    radius: int

    @property
    def shifts(self) -> tuple[int, ...]:
        return tuple(sum(self.widths[:i]) for i in range(len(self.widths)))

    def covers(self, max_distance: int) -> bool:
        return max_distance < len(self.widths) * (self.radius + 1)

    def probes(self, width: int) -> np.ndarray:
        """XOR masks of one band's probes: the key itself, then (radius 1) each of its 1-bit flips."""
        return np.array([0] + [1 << j for j in range(width)] * self.radius, np.uint64)

    def cost(self, size: int) -> float:
        """Estimated work per query against `size` uniformly random hashes."""
        probes = [1 + self.radius * w for w in self.widths]
        return sum(p * (_PROBE_COST + size / 2.0**w) for p, w in zip(probes, self.widths))


def _layouts(max_distance: int) -> list[BandLayout]:
    """The exact layouts for `max_distance`: d + 1 bands matched exactly, or d // 2 + 1 bands probed with flips."""
    found = []
    for radius in (0, 1):
        bands = max_distance // (radius + 1) + 1
        if 64 // bands >= _MIN_BAND_BITS:
            found.append(BandLayout(tuple(64 // bands + (i < 64 % bands) for i in range(bands)), radius))
    return found


@dataclass
class _Run:
    """Positions [start, stop) indexed: per band, the sorted band keys and the positions in that order, and for a
    run large against its band's key space, a direct-address table: where each key's entries start."""

    start: int
    stop: int
    keys: list[np.ndarray]
    order: list[np.ndarray]
    starts: list[np.ndarray | None]


class HammingIndex:
    """Exact nearest-neighbour search in Hamming distance over uint64 hashes, by multi-index hashing.

    `nearest` returns what `find_many(all added hashes, queries, max_distance)` returns, bit for bit: the position
    (insertion order) of the nearest hash within `max_distance`, the lowest position on ties, -1 when none.
    Hashes are split into bands (see BandLayout); stored band keys are kept sorted in a few runs of geometrically
    growing size (adds are appended, then merged), looked up with np.searchsorted, and every candidate is verified
    with a full popcount. Where bands would be too narrow to prune, or the index is small, it scans (find_many).
    """

    def __init__(self) -> None:
        self._hashes = np.empty(1024, np.uint64)
        self._size = 0
        self._layout: BandLayout | None = None
        self._runs: list[_Run] = []

    def __len__(self) -> int:
        return self._size

    @property
    def hashes(self) -> np.ndarray:
        """The stored hashes in insertion order (a view: do not modify)."""
        return self._hashes[: self._size]

    def add(self, hashes: np.ndarray) -> None:
        """Append `hashes`; they take the next positions, in order. Indexing them is deferred to the next query."""
        hashes = np.asarray(hashes, np.uint64).ravel()
        needed = self._size + len(hashes)
        if needed > len(self._hashes):  # amortised growth keeps adds O(1) per hash
            self._hashes = np.resize(self._hashes, max(needed, 2 * len(self._hashes)))
        self._hashes[self._size : needed] = hashes
        self._size = needed

    def plan(self, max_distance: int) -> BandLayout | None:
        """The layout a query at `max_distance` would use now; None: a brute-force scan."""
        if max_distance < 0 or max_distance >= 64:
            return None
        best, best_cost = None, self._size * _BRUTE_COST
        for layout in _layouts(max_distance):
            if layout.cost(self._size) < best_cost:
                best, best_cost = layout, layout.cost(self._size)
        current = self._layout
        keep = current is not None and current.covers(max_distance) and current.cost(self._size) <= 1.5 * best_cost
        if best is not None and keep:  # not worth a rebuild
            return current
        return best

    def nearest(self, queries: np.ndarray, max_distance: int, chunk: int = 8192) -> np.ndarray:
        """For each query, the position of its nearest stored hash within `max_distance`, or -1 (as find_many)."""
        queries = np.asarray(queries, np.uint64).ravel()
        result = np.full(len(queries), -1, np.int64)
        if self._size == 0 or len(queries) == 0 or max_distance < 0:
            return result
        layout = self.plan(max_distance)
        if layout is None:
            return find_many(self.hashes, queries, max_distance)
        self._prepare(layout)
        for start in range(0, len(queries), chunk):
            result[start : start + chunk] = self._nearest_chunk(queries[start : start + chunk], max_distance)
        return result

    # -------------------------------------------------------------- internals

    def _prepare(self, layout: BandLayout) -> None:
        """Index with `layout` (rebuilding when it changed) everything added, but a tail shorter than _TAIL."""
        if layout != self._layout:
            self._layout, self._runs = layout, []
            self._push(0, self._size)
            return
        indexed = self._runs[-1].stop if self._runs else 0
        if self._size - indexed >= _TAIL:
            self._push(indexed, self._size)

    def _push(self, start: int, stop: int) -> None:
        """Index positions [start, stop) as a new run, then merge runs until sizes grow geometrically."""
        assert self._layout is not None
        keys, order = [], []
        for shift, width in zip(self._layout.shifts, self._layout.widths):
            band = _band(self._hashes[start:stop], shift, width).astype(_key_type(width))
            sort = np.argsort(band, kind="stable")
            keys.append(band[sort])
            # Narrow keys and positions halve the index: 8 bytes per band and hash instead of 16.
            order.append((sort + start).astype(np.int32 if stop < 2**31 else np.int64))
        self._runs.append(_Run(start, stop, keys, order, [_starts(k, w) for k, w in zip(keys, self._layout.widths)]))
        while len(self._runs) > 1 and self._size_of(-2) <= _MERGE_FACTOR * self._size_of(-1):
            last, before = self._runs.pop(), self._runs.pop()
            self._runs.append(_merge(before, last, self._layout.widths))

    def _size_of(self, run: int) -> int:
        return self._runs[run].stop - self._runs[run].start

    def _nearest_chunk(self, queries: np.ndarray, max_distance: int) -> np.ndarray:
        """One chunk of queries: the best (distance, position) key per query over all runs and the tail."""
        assert self._layout is not None
        best = np.full(len(queries), np.iinfo(np.int64).max, np.int64)
        for run in self._runs:
            for band, (shift, width) in enumerate(zip(self._layout.shifts, self._layout.widths)):
                owner, position = _candidates(run, band, _band(queries, shift, width), self._layout.probes(width))
                _keep_best(best, owner, position, queries, self._hashes, max_distance)
        tail_start = self._runs[-1].stop if self._runs else 0
        if tail_start < self._size:
            tail = find_many(self._hashes[tail_start : self._size], queries, max_distance)
            hit = np.flatnonzero(tail >= 0)
            _keep_best(best, hit, tail[hit] + tail_start, queries, self._hashes, max_distance)
        found = best != np.iinfo(np.int64).max
        return np.where(found, best & ((1 << _POSITION_BITS) - 1), -1)


def _key_type(width: int) -> type[np.unsignedinteger]:
    return np.uint32 if width <= 32 else np.uint64


def _band(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)


def _merge(before: _Run, after: _Run, widths: tuple[int, ...]) -> _Run:
    """One run of two adjacent ones (timsort merges the two sorted halves in linear time)."""
    keys, order = [], []
    for k1, o1, k2, o2 in zip(before.keys, before.order, after.keys, after.order):
        both = np.concatenate([k1, k2])
        sort = np.argsort(both, kind="stable")
        keys.append(both[sort])
        order.append(np.concatenate([o1, o2])[sort])
    return _Run(before.start, after.stop, keys, order, [_starts(k, w) for k, w in zip(keys, widths)])


def _starts(sorted_keys: np.ndarray, width: int) -> np.ndarray | None:
    """Where each band key's entries begin in `sorted_keys` (one more for the end), when the table of 2**width
    entries is small next to the run; a lookup is then two reads instead of two binary searches."""
    if width > _TABLE_MAX_BITS or (1 << width) > _TABLE_PER_ENTRY * len(sorted_keys):
        return None
    counts = np.bincount(sorted_keys.astype(np.int64), minlength=1 << width)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _candidates(run: _Run, band: int, query_keys: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query index, stored position) of every stored hash in `run` whose band key equals a probe of the query's."""
    needles = (query_keys[:, None] ^ probes[None, :]).ravel()
    table = run.starts[band]
    if table is not None:
        at = needles.astype(np.int64)
        lo = table[at]
        counts = table[at + 1] - lo
        hit = np.flatnonzero(counts)
    else:
        sort = np.argsort(needles)  # sorted needles walk the run in order: far fewer cache misses
        keys = run.keys[band]
        sorted_needles = needles[sort].astype(keys.dtype)  # one dtype: searchsorted would copy the run otherwise
        lo = np.searchsorted(keys, sorted_needles, "left")
        counts = np.searchsorted(keys, sorted_needles, "right") - lo
        hit = sort[np.flatnonzero(counts)]
    lo, counts = lo[counts > 0], counts[counts > 0]
    total = int(counts.sum())
    # Expand each probe's range [lo, lo + count) of the sorted run into one flat array of offsets.
    offsets = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(total)
    owner = np.repeat(hit // len(probes), counts)
    return owner, run.order[band][offsets].astype(np.int64)


def _keep_best(
    best: np.ndarray,
    owner: np.ndarray,
    position: np.ndarray,
    queries: np.ndarray,
    stored: np.ndarray,
    max_distance: int,
) -> None:
    """Lower `best[owner]` to (distance << 56 | position) for the candidates within `max_distance`."""
    distance = np.bitwise_count(queries[owner] ^ stored[position]).astype(np.int64)
    close = distance <= max_distance
    np.minimum.at(best, owner[close], (distance[close] << _POSITION_BITS) | position[close])
