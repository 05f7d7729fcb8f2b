"""Tests for pipeline.video.phash: pHash robustness and discrimination, the HashIndex, batched find_many."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from pipeline.media.decode import FrameReader
from pipeline.synthetic.renderer import SceneSpec, encode_video, render_frames
from pipeline.video.phash import HammingIndex, HashIndex, find_many, hamming, phash


def _gray(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def _first_frame(seed: int) -> np.ndarray:
    return next(iter(render_frames(SceneSpec(width=320, height=192, fps=10, duration_s=0.1, seed=seed)))).image


def _flip(value: int, bits: list[int]) -> int:
    for b in bits:
        value ^= 1 << b
    return value


# ------------------------------------------------------------------ phash


def test_phash_is_a_deterministic_64_bit_int():
    gray = _gray(_first_frame(1))
    h = phash(gray)
    assert isinstance(h, int) and 0 <= h < 2**64
    assert phash(gray.copy()) == h
    assert 16 <= bin(h).count("1") <= 48  # bits split around the median, not all one way


def test_phash_is_stable_under_resize_and_jpeg():
    image = _first_frame(1)
    h = phash(_gray(image))
    small = cv2.resize(image, (160, 96), interpolation=cv2.INTER_AREA)
    large = cv2.resize(image, (640, 384), interpolation=cv2.INTER_LINEAR)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    for variant in (small, large, cv2.imdecode(jpeg, cv2.IMREAD_COLOR)):
        assert hamming(h, phash(_gray(variant))) <= 4


def test_phash_is_stable_under_a_real_reencode(tmp_path):
    """The same footage uploaded twice: h264 at 320x192, and a smaller re-encode of that file."""
    spec = SceneSpec(width=320, height=192, fps=10, duration_s=1.0, seed=5)
    original = encode_video((f.image for f in render_frames(spec)), tmp_path / "original.mp4", spec.fps)
    reupload = tmp_path / "reupload.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(original),
            "-vf",
            "scale=256:-2",
            "-c:v",
            "libx264",
            "-crf",
            "28",
            "-preset",
            "veryfast",
            str(reupload),
        ],
        check=True,
    )
    a = list(FrameReader(original, fps=10, start_s=0.0, end_s=1.0, size=(320, 192)))
    b = list(FrameReader(reupload, fps=10, start_s=0.0, end_s=1.0, size=(256, 154)))
    assert len(a) == len(b) == 10
    distances = [hamming(phash(_gray(x.image)), phash(_gray(y.image))) for x, y in zip(a, b)]
    assert max(distances) <= 4


@pytest.mark.parametrize("seed_a, seed_b", [(1, 2), (1, 3), (2, 4), (3, 5)])
def test_phash_separates_different_scenes(seed_a, seed_b):
    assert hamming(phash(_gray(_first_frame(seed_a))), phash(_gray(_first_frame(seed_b)))) >= 10


def test_hamming():
    assert hamming(0, 0) == 0
    assert hamming(0, 2**64 - 1) == 64
    assert hamming(0b1011, 0b0010) == 2
    assert hamming(2**63, 0) == 1


# ------------------------------------------------------------------ HashIndex


def test_empty_index_finds_nothing():
    index = HashIndex()
    assert len(index) == 0
    assert index.find(123, 64) is None


def test_find_returns_the_nearest_within_max_distance():
    base = 0x0123_4567_89AB_CDEF
    index = HashIndex()
    index.add(_flip(base, [1, 5, 9]), "three")
    index.add(_flip(base, [2]), "one")
    index.add(_flip(base, [0, 10, 20, 30, 40, 50]), "six")
    assert len(index) == 3 and index.keys == ["three", "one", "six"]
    assert index.find(base, 4) == "one"
    assert index.find(base, 1) == "one"  # the bound is inclusive
    assert index.find(base, 0) is None
    assert index.find(_flip(base, [0, 10, 20, 30, 40, 50]), 0) == "six"
    assert index.find(_flip(base, [1, 5, 9]), 2) == "three"


def test_ties_go_to_the_first_added():
    index = HashIndex()
    index.add(0b0001, "first")
    index.add(0b0100, "second")
    assert index.find(0b0000, 4) == "first"


def test_min_separation_ignores_neighbours_in_time():
    index = HashIndex()
    index.add(0xFF, "t0", time_s=0.0)
    index.add(0xFF, "t100", time_s=100.0)
    index.add(0xFE, "t200", time_s=200.0)
    assert index.find(0xFF, 4, time_s=10.0) == "t0"  # no separation asked: nearest in hash wins
    assert index.find(0xFF, 4, time_s=10.0, min_separation_s=60.0) == "t100"
    assert index.find(0xFF, 4, time_s=110.0, min_separation_s=60.0) == "t0"  # t0 and t200 qualify; t0 is exact
    assert index.find(0xFF, 0, time_s=150.0, min_separation_s=60.0) == "t0"  # t100 and t200 too close
    assert index.find(0xFF, 4, time_s=100.0, min_separation_s=300.0) is None  # everything too close
    assert index.find(0xFF, 0, time_s=40.0, min_separation_s=60.0) == "t100"  # exactly 60 s apart counts


def test_index_grows_past_its_initial_capacity():
    rng = np.random.default_rng(0)
    values = [int(v) for v in rng.integers(0, 2**64, size=3000, dtype=np.uint64)]
    index = HashIndex()
    for i, v in enumerate(values):
        index.add(v, f"k{i}", time_s=float(i))
    assert len(index) == 3000
    for i in (0, 1023, 1024, 2047, 2048, 2999):
        assert index.find(values[i], 0) == f"k{i}"
        assert index.find(values[i], 0, time_s=float(i), min_separation_s=0.5) is None  # itself is too close


def test_high_bit_hashes():
    index = HashIndex()
    index.add(2**64 - 1, "ones")
    index.add(2**63, "top")
    assert index.find(2**64 - 2, 1) == "ones"
    assert index.find(2**63 + 1, 1) == "top"


# ------------------------------------------------------------------ find_many


def _brute_force(index: np.ndarray, queries: np.ndarray, max_distance: int) -> list[int]:
    out = []
    for q in queries.tolist():
        distances = [hamming(q, h) for h in index.tolist()]
        best = min(range(len(distances)), key=lambda i: (distances[i], i))
        out.append(best if distances[best] <= max_distance else -1)
    return out


@pytest.fixture(scope="module")
def hashes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    index = rng.integers(0, 2**64, size=150, dtype=np.uint64)
    index[10] = index[20]  # an exact duplicate inside the index: ties go to the lower position
    near = index[rng.integers(0, 150, size=80)].copy()
    for i in range(len(near)):  # near copies: 0 to 6 bits flipped
        for bit in rng.choice(64, size=int(rng.integers(0, 7)), replace=False):
            near[i] ^= np.uint64(1) << np.uint64(bit)
    queries = np.concatenate([near, rng.integers(0, 2**64, size=40, dtype=np.uint64), index[[20]]])
    return index, queries


@pytest.mark.parametrize("max_distance", [0, 3, 6, 20])
@pytest.mark.parametrize("chunk_cells", [1, 7, 150, 1000, 1 << 24])
def test_find_many_equals_brute_force(hashes, max_distance, chunk_cells):
    index, queries = hashes
    result = find_many(index, queries, max_distance, chunk_cells=chunk_cells)
    assert result.dtype == np.int64 and result.shape == (len(queries),)
    assert result.tolist() == _brute_force(index, queries, max_distance)


def test_find_many_finds_planted_matches(hashes):
    index, queries = hashes
    result = find_many(index, queries, 6)
    assert (result[:80] >= 0).all()  # every near copy is found
    assert result[-1] == 10  # the duplicated hash maps to its first position
    assert (find_many(index, queries, 64) >= 0).all()  # everything is within 64 bits


def test_find_many_empty_inputs():
    some = np.array([1, 2, 3], np.uint64)
    none = np.array([], np.uint64)
    assert find_many(none, some, 64).tolist() == [-1, -1, -1]
    assert find_many(some, none, 64).shape == (0,)
    assert find_many(none, none, 64).shape == (0,)


# ------------------------------------------------------------------ HammingIndex (multi-index hashing)


def _flip_bits(values: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`values` with counts[i] distinct random bits of values[i] flipped."""
    out = values.copy()
    for i, k in enumerate(counts.tolist()):
        for bit in rng.choice(64, size=k, replace=False):
            out[i] ^= np.uint64(1) << np.uint64(bit)
    return out


def _indexed(stored: np.ndarray) -> HammingIndex:
    index = HammingIndex()
    index.add(stored)
    return index


@pytest.mark.parametrize("max_distance", [0, 1, 4, 10, 20])
@pytest.mark.parametrize("size, seed", [(1, 0), (37, 1), (500, 2), (3000, 3), (12000, 4)])
def test_hamming_index_equals_find_many_on_random_sets(size, seed, max_distance):
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 2**64, size=size, dtype=np.uint64)
    picks = rng.integers(0, size, size=300)
    near = _flip_bits(stored[picks], rng.integers(0, max_distance + 3, size=300), rng)
    queries = np.concatenate([near, stored[:50], rng.integers(0, 2**64, size=200, dtype=np.uint64)])
    result = _indexed(stored).nearest(queries, max_distance)
    assert result.dtype == np.int64 and result.shape == (len(queries),)
    assert result.tolist() == find_many(stored, queries, max_distance).tolist()


@pytest.mark.parametrize("max_distance", [0, 1, 2, 3, 4, 5, 6, 8, 10, 12])
def test_hamming_index_finds_planted_near_duplicates(max_distance):
    rng = np.random.default_rng(100 + max_distance)
    stored = rng.integers(0, 2**64, size=5000, dtype=np.uint64)
    index = _indexed(stored)
    assert index.plan(max_distance) is not None  # the banded path, not the scan
    picks = rng.integers(0, len(stored), size=400)
    within = _flip_bits(stored[picks], rng.integers(0, max_distance + 1, size=400), rng)
    beyond = _flip_bits(stored[picks], rng.integers(max_distance + 1, max_distance + 4, size=400), rng)
    found = index.nearest(within, max_distance)
    assert (found >= 0).all()  # every copy within reach is found ...
    assert found.tolist() == find_many(stored, within, max_distance).tolist()  # ... at the nearest position
    assert index.nearest(beyond, max_distance).tolist() == find_many(stored, beyond, max_distance).tolist()


@pytest.mark.parametrize("max_distance", [2, 4, 10])
def test_hamming_index_ties_go_to_the_lowest_position(max_distance):
    rng = np.random.default_rng(7)
    filler = rng.integers(0, 2**64, size=4000, dtype=np.uint64)
    base = np.uint64(0x0123_4567_89AB_CDEF)
    one, two = np.uint64(1) << np.uint64(3), np.uint64(1) << np.uint64(40)  # both one bit from `base`
    stored = np.concatenate([filler[:1500], [base ^ two], filler[1500:3000], [base ^ one], [base ^ two], filler[3000:]])
    index = _indexed(stored.astype(np.uint64))
    assert index.plan(max_distance) is not None
    assert index.nearest(np.array([base], np.uint64), max_distance).tolist() == [1500]
    exact = np.array([base ^ one], np.uint64)  # distance 0 beats the earlier distance-2 entry
    assert index.nearest(exact, max_distance).tolist() == [3001]


@pytest.mark.parametrize("max_distance", [0, 4, 10, 20])
def test_hamming_index_adds_between_queries(max_distance):
    rng = np.random.default_rng(11)
    index = HammingIndex()
    stored = np.empty(0, np.uint64)
    for _ in range(40):  # past several flushes of the unindexed tail and merges of runs
        fresh = rng.integers(0, 2**64, size=int(rng.integers(0, 400)), dtype=np.uint64)
        if len(stored):
            copies = stored[rng.integers(0, len(stored), size=len(fresh) // 4)]
            fresh[: len(copies)] = _flip_bits(copies, rng.integers(0, max_distance + 3, size=len(copies)), rng)
        queries = np.concatenate([fresh, rng.integers(0, 2**64, size=20, dtype=np.uint64)])
        assert index.nearest(queries, max_distance).tolist() == find_many(stored, queries, max_distance).tolist()
        index.add(fresh)
        stored = np.concatenate([stored, fresh])
        assert len(index) == len(stored) and index.hashes.tolist() == stored.tolist()


def test_hamming_index_switching_distances_stays_exact():
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 2**64, size=6000, dtype=np.uint64)
    queries = _flip_bits(stored[rng.integers(0, 6000, size=500)], rng.integers(0, 9, size=500), rng)
    index = _indexed(stored)
    for max_distance in (4, 1, 8, 0, 4, 64, -1):
        assert index.nearest(queries, max_distance).tolist() == find_many(stored, queries, max_distance).tolist()


def test_hamming_index_empty_inputs():
    index = HammingIndex()
    assert index.nearest(np.array([1, 2], np.uint64), 4).tolist() == [-1, -1]
    index.add(np.array([1, 2, 3], np.uint64))
    assert index.nearest(np.array([], np.uint64), 4).shape == (0,)
    index.add(np.array([], np.uint64))
    assert len(index) == 3
    assert index.nearest(np.array([2**64 - 1], np.uint64), 64).tolist() == [2]  # 3 = 0b11: 62 bits away
