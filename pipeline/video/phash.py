"""Perceptual hashes (64-bit DCT pHash) and an exact Hamming-distance index over them."""

from __future__ import annotations

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
