"""Nearest-neighbour examples against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.report.neighbours import nearest, normalise, select_examples
from tests.tasks.report.synthetic import clustered_features


def _brute(x: np.ndarray, k: int) -> list[list[int]]:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    return [sorted((j for j in range(len(x)) if j != i), key=lambda j: (-sims[i, j], j))[:k] for i in range(len(x))]


@pytest.mark.parametrize("k,block", [(1, 7), (4, 256), (29, 3)])
def test_nearest_matches_brute_force_and_excludes_self(k, block):
    x = normalise(np.random.default_rng(k).normal(size=(30, 6)))
    idx, sims = nearest(x, np.arange(30), k, block=block)
    assert idx.tolist() == _brute(x, k)
    assert np.allclose(sims, np.take_along_axis(x @ x.T, idx, axis=1), atol=1e-6)
    assert all(i not in row for i, row in enumerate(idx.tolist()))


def test_nearest_rejects_bad_k():
    with pytest.raises(ValueError, match="k=5"):
        nearest(normalise(np.ones((5, 2))), np.arange(5), 5)


def test_examples_show_agreement_and_disagreement():
    n = 30
    xa = clustered_features(n, seed=0)
    xb = clustered_features(n, seed=1)
    xb[:10] = np.random.default_rng(2).normal(size=(10, xb.shape[1]))  # B scrambles the first 10 samples
    ids = [f"s{i:02d}" for i in range(n)]
    ex = select_examples(ids, xa, xb, ("A", "B", "la", "lb"), k=4, n_examples=4)
    assert (ex.model_a, ex.model_b, ex.layer_a, ex.layer_b, ex.k, ex.n_samples, ex.n_queries) == ("A", "B", "la", "lb", 4, n, n)
    overlaps = [e.overlap for e in ex.examples]
    assert len(ex.examples) == 4 and overlaps[0] == max(overlaps) and overlaps[-1] == min(overlaps) and overlaps[0] > overlaps[-1]
    brute_a, brute_b = _brute(xa, 4), _brute(xb, 4)
    for e in ex.examples:
        q = ids.index(e.sample_id)
        assert [ids.index(nb.sample_id) for nb in e.neighbours_a] == brute_a[q]
        assert [ids.index(nb.sample_id) for nb in e.neighbours_b] == brute_b[q]
        shared = set(brute_a[q]) & set(brute_b[q])
        assert {ids.index(nb.sample_id) for nb in e.neighbours_a if nb.shared} == shared
        assert {ids.index(nb.sample_id) for nb in e.neighbours_b if nb.shared} == shared
    mean = np.mean([len(set(a) & set(b)) / 4 for a, b in zip(brute_a, brute_b)])
    assert ex.mean_overlap == pytest.approx(mean)
    assert set(ex.sample_ids()) >= {e.sample_id for e in ex.examples}


def test_many_samples_evaluate_a_seeded_subset_of_queries():
    x = clustered_features(300, seed=3)
    ids = [str(i) for i in range(300)]
    first = select_examples(ids, x, x[::-1].copy(), ("A", "B", "a", "b"), k=3, max_queries=50, seed=7)
    again = select_examples(ids, x, x[::-1].copy(), ("A", "B", "a", "b"), k=3, max_queries=50, seed=7)
    assert first.n_queries == 50 and first == again


def _tied_rows() -> np.ndarray:
    """Row 0 = e0; rows 1..40 identical at cosine 1/√2 to it; row 50 closer (2/√5); the rest
    orthogonal to e0. The tied similarities are exact in float32 (one non-zero product each)."""
    rng = np.random.default_rng(4)
    x = np.zeros((240, 8))
    x[0, 0] = 1.0
    x[1:41, :2] = 1.0
    x[41:] = np.hstack([np.zeros((199, 2)), rng.normal(size=(199, 6))])
    x[50] = 0.0
    x[50, :2] = (2.0, 1.0)
    return normalise(x)


@pytest.mark.parametrize("k", [1, 3, 5, 12])
@pytest.mark.parametrize("block", [1, 256])
def test_ties_at_the_kth_place_go_to_the_lower_index(k, block):
    """argpartition picked arbitrarily among rows tied at the k-th place ([1, 2, 3, 4, 6] for
    [1, 2, 3, 4, 5]); the docstring promises the lower index."""
    x = _tied_rows()
    queries = np.array([0, 1, 7, 50])
    idx, sims = nearest(x, queries, k, block=block)
    reference = x.astype(np.float64) @ x.astype(np.float64).T
    for q, row in zip(queries, idx.tolist()):
        expected = sorted((j for j in range(len(x)) if j != q), key=lambda j: (-reference[q, j], j))[:k]
        assert row == expected
    assert idx[0].tolist() == [50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11][:k]
    assert idx[1].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13][:k]


def test_normalise_gives_float32_unit_rows_and_keeps_zero_rows_zero():
    """The docstring: rows scaled to unit L2 norm, float32, zero rows stay zero (not NaN)."""
    x = normalise(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    assert x.dtype == np.float32
    assert np.allclose(x, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]]) and np.isfinite(x).all()


def test_a_nan_row_is_never_nearer_than_a_finite_one():
    """A row whose similarity is NaN (a NaN feature) compares with nothing: the k nearest are the
    finite rows' k nearest, never the NaN row."""
    x = normalise(np.random.default_rng(5).normal(size=(12, 4)))
    x[3] = np.nan
    idx, sims = nearest(x, np.array([0, 5]), 4)
    finite = np.delete(np.arange(12), 3)
    brute = _brute(x[finite], 4)
    assert idx.tolist() == [[int(finite[j]) for j in brute[0]], [int(finite[j]) for j in brute[4]]]
    assert np.isfinite(sims).all()


@pytest.mark.parametrize("k", [2, 5, 9])
def test_nearest_matches_brute_force_on_many_rows(k):
    x = normalise(np.random.default_rng(10 + k).normal(size=(400, 5)))
    queries = np.arange(0, 400, 37)
    idx, _ = nearest(x, queries, k)
    brute = _brute(x, k)
    assert idx.tolist() == [brute[q] for q in queries]


def test_examples_reject_features_of_either_model_with_the_wrong_row_count():
    ids = [f"s{i}" for i in range(6)]
    x = np.random.default_rng(0).normal(size=(6, 3))
    for xa, xb in ((x, x[:5]), (x[:5], x)):
        with pytest.raises(ValueError, match="rows for 6 samples"):
            select_examples(ids, xa, xb, ("A", "B", "a", "b"))


def test_fewer_samples_than_k_plus_one_shrink_k_to_the_others():
    """With N ≤ k samples each has only N - 1 others: k becomes N - 1 (not an error)."""
    x = np.random.default_rng(1).normal(size=(4, 3))
    ex = select_examples([f"s{i}" for i in range(4)], x, x[::-1].copy(), ("A", "B", "a", "b"), k=5, n_examples=2)
    assert ex.k == 3 and all(len(e.neighbours_a) == len(e.neighbours_b) == 3 for e in ex.examples)


def test_the_seeded_subset_of_queries_has_no_sample_twice():
    x = clustered_features(60, seed=3)
    ids = [f"s{i:02d}" for i in range(60)]
    ex = select_examples(ids, x, x[::-1].copy(), ("A", "B", "a", "b"), k=3, n_examples=50, max_queries=50, seed=1)
    shown = [e.sample_id for e in ex.examples]
    assert ex.n_queries == 50 and len(shown) == 50 and len(set(shown)) == 50


@pytest.mark.parametrize("seed", [1, 2])
def test_the_two_examples_that_agree_most_then_the_two_that_agree_least(seed):
    """docs/report.md: four samples, the two whose lists agree most and the two that agree least."""
    n = 30
    xa = clustered_features(n, seed=0)
    xb = clustered_features(n, seed=seed)
    xb[:12] = np.random.default_rng(2).normal(size=(12, xb.shape[1]))
    ex = select_examples([f"s{i:02d}" for i in range(n)], xa, xb, ("A", "B", "a", "b"), k=4, n_examples=4)
    every = sorted(len(set(a) & set(b)) for a, b in zip(_brute(xa, 4), _brute(xb, 4)))
    overlaps = [e.overlap for e in ex.examples]
    assert sorted(overlaps[:2], reverse=True) == every[::-1][:2]
    assert sorted(overlaps[2:]) == every[:2]
