"""Aggregation, Benjamini–Hochberg and bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.metrics import aggregate, bh_fdr, bootstrap_ci, layer_matrix, with_concatenated

from .conftest import layers, paired


def test_aggregate_max_mean_and_nan() -> None:
    m = np.array([[0.1, 0.7], [np.nan, 0.3]])
    assert aggregate(m) == (0.7, (0, 1))
    value, where = aggregate(m, "mean")
    assert value == pytest.approx((0.1 + 0.7 + 0.3) / 3) and where == (0, 1)
    v, w = aggregate(np.full((2, 2), np.nan))
    assert math.isnan(v) and w == (-1, -1)
    with pytest.raises(ValueError):
        aggregate(m, "median")


def test_bh_fdr_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=30), rng.uniform(0, 0.01, size=10)])
    q = bh_fdr(p)
    m = p.size
    for i in range(m):  # q_i = min over j with p_j >= p_i of m p_j / rank_j
        ranks = np.array([np.sum(p <= pj) for pj in p])
        candidates = [min(1.0, m * p[j] / ranks[j]) for j in range(m) if p[j] >= p[i]]
        assert q[i] == pytest.approx(min(candidates))
    # rejections at level a equal the BH step-up rule
    a = 0.05
    order = np.sort(p)
    kmax = max([k for k in range(1, m + 1) if order[k - 1] <= a * k / m], default=0)
    assert np.sum(q <= a) == kmax


def test_bh_fdr_shape_nan_and_range() -> None:
    q = bh_fdr(np.array([[0.01, np.nan], [0.02, 0.9]]))
    assert q.shape == (2, 2) and np.isnan(q[0, 1])
    assert q[0, 0] == pytest.approx(0.03) and q[1, 0] == pytest.approx(0.03)
    with pytest.raises(ValueError):
        bh_fdr([1.5])


def test_bootstrap_subsamples_knn_metrics_too() -> None:
    xs, ys = layers(n=60, seed=1), layers(n=60, seed=2)
    res = bootstrap_ci("mutual_knn", xs, ys, n_boot=100, seed=0, topk=5)
    assert res.method == "subsample" and res.resample_size == 30
    assert res.estimate == pytest.approx(layer_matrix("mutual_knn", xs, ys, topk=5).max())
    assert res.low <= res.estimate <= res.high + 1e-12 and res.std > 0
    again = bootstrap_ci("mutual_knn", xs, ys, n_boot=100, seed=0, topk=5)
    assert (again.low, again.high) == (res.low, res.high)
    for bad, message in ((dict(n_boot=2.7), "n_boot must be an integer >= 1, got 2.7"), (dict(n_boot="5"), "n_boot must be"),
                         (dict(seed=1.7), "seed must be an integer >= 0"), (dict(level=1.0), r"level must be in \(0, 1\)"),
                         (dict(aggregate="min"), "aggregate must be")):
        with pytest.raises(ValueError, match=message):
            bootstrap_ci("mutual_knn", xs, ys, topk=5, **{"n_boot": 3, **bad})


def test_bootstrap_subsamples_global_metrics() -> None:
    """Kernel metrics: m-out-of-n subsampling (see test_bootstrap.py for its coverage)."""
    x, y = paired(n=80, noise=1.0, seed=3)
    res = bootstrap_ci("cka", x, y, n_boot=60, seed=1)
    assert res.method == "subsample" and res.resample_size == 40
    assert res.low < res.estimate < res.high


def test_with_concatenated() -> None:
    xs = layers(seed=4)
    out = with_concatenated(xs)
    assert len(out) == 4 and out[-1].shape == (40, sum(x.shape[1] for x in xs))
    np.testing.assert_allclose(out[-1], np.hstack(xs) / np.sqrt(3), atol=1e-12)
