"""SemDeDup: planted near-duplicates found, the keep rule, determinism, agreement with brute force."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.clip.semdedup import assign, greedy_dedup, kmeans, semdedup, semdedup_file, unit_rows


def _near(rng: np.random.Generator, base: np.ndarray, angle: float) -> np.ndarray:
    """A unit vector at exactly `angle` radians from unit `base`."""
    noise = rng.normal(size=base.shape)
    noise -= (noise @ base) * base
    return np.cos(angle) * base + np.sin(angle) * noise / np.linalg.norm(noise)


@pytest.fixture(scope="module")
def planted():
    """3000 clustered unit vectors (float16) plus near-copies of 300 of them, shuffled in among them."""
    rng = np.random.default_rng(7)
    centres = unit_rows(rng.normal(size=(30, 128)))
    base = unit_rows(centres[rng.integers(0, 30, 3000)] + rng.normal(size=(3000, 128)) * 0.08)
    originals = rng.choice(3000, 300, replace=False)
    # cos(0.1) = 0.995 > 0.99: duplicates at epsilon 0.01; the base vectors sit far further apart than that
    copies = np.array([_near(rng, base[i], 0.1) for i in originals])
    vectors = np.vstack([base, copies])
    order = rng.permutation(len(vectors))  # copies are not simply at the end
    position = np.argsort(order)  # where each original row went
    return vectors[order].astype(np.float16), position[originals], position[3000:]


def test_planted_duplicates_are_found_and_nothing_else(planted):
    vectors, originals, copies = planted
    result = semdedup(vectors, 0.01, seed=0)
    dropped = np.flatnonzero(result.duplicate_of >= 0)
    # each pair loses its later member, which points at the earlier one
    later = np.maximum(originals, copies)
    assert set(dropped) == set(later)
    assert np.array_equal(result.duplicate_of[later], np.minimum(originals, copies))
    assert (result.similarity[later] > 0.99).all() and (result.similarity[result.duplicate_of < 0] == 0).all()


def test_keep_rule_prefers_the_earlier_row_and_respects_kept_only():
    # a, b, c on one great circle 0.1 rad apart: cos(a, b) = cos(b, c) = 0.995, cos(a, c) = 0.980
    a, u = np.eye(32)[0], np.eye(32)[1]
    x = np.array([a, np.cos(0.1) * a + np.sin(0.1) * u, np.cos(0.2) * a + np.sin(0.2) * u], np.float32)
    dup, sims = greedy_dedup(x, 0.99)
    # b duplicates a (kept, earlier) and is dropped; c only resembles b, which is not kept, so c stays
    assert dup.tolist() == [-1, 0, -1] and sims[1] == pytest.approx(np.cos(0.1))
    dup_reversed, _ = greedy_dedup(x[::-1].copy(), 0.99)
    assert dup_reversed.tolist() == [-1, 0, -1]  # c, b, a: b drops for c; a resembles only b and stays


def test_same_seed_same_result_other_seed_same_duplicates(planted):
    vectors, _, _ = planted
    first, second = semdedup(vectors, 0.01, seed=3), semdedup(vectors, 0.01, seed=3)
    assert np.array_equal(first.duplicate_of, second.duplicate_of) and np.array_equal(first.labels, second.labels)
    other = semdedup(vectors, 0.01, seed=4)
    assert not np.array_equal(other.labels, first.labels)  # another clustering ...
    assert np.array_equal(other.duplicate_of >= 0, first.duplicate_of >= 0)  # ... the same decisions


def test_agrees_with_brute_force_over_the_whole_set(planted):
    vectors, _, _ = planted
    brute, _ = greedy_dedup(unit_rows(vectors), 0.99, block=256)  # one cluster: every pair compared
    assert np.array_equal(semdedup(vectors, 0.01).duplicate_of >= 0, brute >= 0)


def test_greedy_blocks_do_not_change_the_answer():
    rng = np.random.default_rng(1)
    base = unit_rows(rng.normal(size=(40, 16)))
    chain = unit_rows(np.repeat(base, 5, axis=0) + rng.normal(size=(200, 16)) * 0.02)
    answers = {tuple(greedy_dedup(chain, 0.995, block=block)[0]) for block in (1, 7, 64, 1024)}
    assert len(answers) == 1 and max(answers.pop()) >= 0


def test_epsilon_zero_keeps_identical_rows_and_epsilon_two_keeps_one():
    x = np.repeat(unit_rows(np.random.default_rng(2).normal(size=(3, 8))), 4, axis=0).astype(np.float16)
    assert (semdedup(x, 0.0).duplicate_of == -1).all()  # cosine > 1 never holds, rounding notwithstanding
    assert (semdedup(x, 2.0, clusters=1).duplicate_of >= 0).sum() == len(x) - 1


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(3)
    centres = unit_rows(rng.normal(size=(4, 64)))
    truth = rng.integers(0, 4, 400)
    x = unit_rows(centres[truth] + rng.normal(size=(400, 64)) * 0.05).astype(np.float16)
    labels, sims = assign(x, kmeans(x, 4, seed=0))
    # one label per true cluster, up to renaming
    assert len({(t, label) for t, label in zip(truth, labels)}) == 4 and (sims > 0.8).all()


def test_empty_and_tiny_inputs():
    assert semdedup(np.zeros((0, 8), np.float16), 0.01).duplicate_of.shape == (0,)
    single = semdedup(unit_rows(np.ones((1, 8))), 0.01)
    assert single.duplicate_of.tolist() == [-1] and single.clusters == 1


# ---------------------------------------------------------------- the streamed form: the same decisions from a file


def _streamed(tmp_path, vectors: np.ndarray, epsilon: float, **kwargs):
    path = tmp_path / "rows.f16"
    vectors.astype(np.float16).tofile(path)
    return semdedup_file(path, len(vectors), vectors.shape[1], epsilon, workdir=tmp_path, **kwargs)


def _same(a, b) -> None:
    assert a.clusters == b.clusters
    assert np.array_equal(a.duplicate_of, b.duplicate_of) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.similarity, b.similarity)


@pytest.mark.parametrize(("rows", "clusters", "block_rows"), [(3300, None, 64), (900, 3, 50), (3300, 20, 100000)])
def test_streamed_equals_in_memory_on_planted_duplicates(planted, tmp_path, rows, clusters, block_rows):
    vectors = planted[0][:rows]
    expected = semdedup(vectors, 0.01, clusters=clusters, seed=5)
    assert (expected.duplicate_of >= 0).sum() > 0
    # block_rows 50-64: far smaller than a cluster, so every cluster is spilled in many runs
    _same(_streamed(tmp_path, vectors, 0.01, clusters=clusters, seed=5, block_rows=block_rows), expected)
    assert not [p for p in tmp_path.iterdir() if p.name != "rows.f16"]  # the spill is removed


def test_streamed_kmeans_sample_and_float16_fit(planted, tmp_path, monkeypatch):
    import pipeline.clip.semdedup as module

    vectors = planted[0]
    # 2 x 8 sampled rows per cluster: the sample is a strict subset, read from the file by index
    expected = semdedup(vectors, 0.02, clusters=40, sample_per_cluster=8, seed=1)
    monkeypatch.setattr(module, "_FIT_BYTES", 0)  # the fit kept in float16 and converted per chunk
    _same(semdedup(vectors, 0.02, clusters=40, sample_per_cluster=8, seed=1), expected)
    _same(_streamed(tmp_path, vectors, 0.02, clusters=40, sample_per_cluster=8, seed=1, block_rows=333), expected)


def test_streamed_empty_and_tiny(tmp_path):
    empty = _streamed(tmp_path, np.zeros((0, 8), np.float16), 0.01)
    assert empty.duplicate_of.shape == (0,) and empty.clusters == 0
    single = _streamed(tmp_path, unit_rows(np.ones((1, 8))), 0.01)
    assert single.duplicate_of.tolist() == [-1] and single.clusters == 1
    x = np.repeat(unit_rows(np.random.default_rng(2).normal(size=(3, 8))), 4, axis=0).astype(np.float16)
    _same(_streamed(tmp_path, x, 2.0, clusters=1, block_rows=5), semdedup(x, 2.0, clusters=1))
