"""Aggregation, Benjamini–Hochberg and bootstrap intervals."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from tasks.metrics import aggregate, bh_fdr, bootstrap_ci, layer_matrix, prepare, with_concatenated

from . import reference as ref
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


def test_aggregate_ignores_nan_but_not_infinite_scores() -> None:
    """An infinite entry is a score (a log-likelihood of -inf); NaN is not and is never the best."""
    assert aggregate(np.array([[np.nan, -np.inf]])) == (-math.inf, (0, 1))
    assert aggregate(np.array([[np.nan, np.inf]]), higher_is_better=False) == (math.inf, (0, 1))
    assert aggregate(np.array([[np.nan, -np.inf], [-np.inf, np.nan]])) == (-math.inf, (0, 1))
    assert aggregate(np.array([[np.nan, 2.0], [np.inf, np.nan]]), higher_is_better=False) == (2.0, (0, 1))


def test_aggregate_refuses_masked_entries_and_complex_scores() -> None:
    """A masked entry was read under its mask and returned as the best score (``[[0.4, --]]``
    holding 0.9 gave 0.9 at (0, 1)); ``bh_fdr`` already refused masked p-values. Complex
    entries raised float()'s bare TypeError, or lost their imaginary part with a warning."""
    masked = np.ma.masked_array([[0.4, 0.9]], mask=[[False, True]])
    for how in ("max", "mean"):
        with pytest.raises(ValueError, match=r"^matrix given as a masked array with 1 masked entry: .*m\.filled\(np\.nan\)"):
            aggregate(masked, how)
    assert aggregate(masked.filled(np.nan)) == (0.4, (0, 0))  # the way the message gives
    assert aggregate(np.ma.masked_array([[0.4, 0.9]])) == (0.9, (0, 1))  # nothing masked: the values themselves
    for complex_scores in ([[1 + 2j]], np.array([[0.5 + 0j]])):
        with pytest.raises(ValueError, match=r"^matrix must hold real numbers \(NaN for a missing score\), got complex"):
            aggregate(complex_scores)
    with pytest.raises(ValueError, match=r"^matrix must hold real numbers .*could not convert string to float"):
        aggregate([["a"]])
    x, y = paired(n=12, dx=4, dy=3)
    with pytest.raises(ValueError, match=r"^observed given as a masked array with 1 masked entry"):
        bootstrap_ci("cka", x, y, n_boot=2, observed=np.ma.masked_array([[0.9]], mask=[[True]]))


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
    for bad, message in ((dict(n_boot=2.7), "n_boot must be an integer >= 2, got 2.7"), (dict(n_boot="5"), "n_boot must be"),
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


def _paper_candidates(layers_: list[np.ndarray], q: float = 0.95) -> list[np.ndarray]:
    """The paper's candidate set (``measure_alignment.compute_score`` with the whole-network
    candidate), float64 numpy: clamp each layer (one threshold per layer, the list branch), then
    every clamped layer L2-normalised, and the clamped layers concatenated and normalised once."""
    clamped = [ref.prepare(x, q=q, normalize=False) for x in layers_]
    return [ref.normalize_rows(x) for x in clamped] + [ref.normalize_rows(np.hstack(clamped))]


def test_with_concatenated_gives_the_papers_candidates() -> None:
    """Rows and layers of unequal norm: the documented recipe equals the paper's candidates, and
    mutual k-NN over them equals scoring each candidate pair alone."""
    rng = np.random.default_rng(11)
    scale = lambda xs: [x * rng.uniform(0.2, 5.0, size=(len(x), 1)) * (3.0 ** i) for i, x in enumerate(xs)]  # noqa: E731
    xs = scale([x * 7 for x in layers(n=30, seed=5)])
    ys = scale(layers(n=30, widths=(9, 14), seed=6))
    xs_c = with_concatenated(prepare(xs, normalize=False), normalize_layers=True)
    ys_c = with_concatenated(prepare(ys, normalize=False), normalize_layers=True)
    for got, want in ((xs_c, _paper_candidates(xs)), (ys_c, _paper_candidates(ys))):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-12)
    # the recipe documented before: single layers clamped but not normalised, another candidate set
    old = with_concatenated(prepare(xs, normalize=False))
    assert not np.allclose(old[0], xs_c[0])
    m = layer_matrix("mutual_knn", xs_c, ys_c, topk=5)
    loop = np.array([[ref.mutual_knn(x, y, 5) for y in _paper_candidates(ys)] for x in _paper_candidates(xs)])
    np.testing.assert_allclose(m, loop, atol=1e-12)
    assert m.shape == (4, 3)


@pytest.mark.parametrize("flag", [None, "False", 0])
def test_aggregate_refuses_a_higher_is_better_that_is_not_a_bool(flag) -> None:
    """``None`` chose the smallest entry and ``'False'`` the largest, silently."""
    with pytest.raises(ValueError, match="higher_is_better must be True or False"):
        aggregate(np.array([[0.1, 0.9]]), "max", flag)


@pytest.mark.parametrize("alpha", ["0.05", None, np.array([0.05]), True])
def test_calibrate_names_an_alpha_that_is_not_a_number(alpha) -> None:
    from tasks.metrics import calibrate

    x, y = paired(n=20, seed=13)
    with pytest.raises(ValueError, match="^alpha must be a number"):
        calibrate("cka", x, y, permutations=19, alpha=alpha)


def test_check_seed_accepts_every_torch_seed_up_to_2_to_the_32_minus_1() -> None:
    """torch's generator tells apart the seeds 0 .. 2**32 - 1: the last of them is a seed,
    2**32 (which draws what 0 draws) is not."""
    from tasks.metrics.stats import TORCH_SEED_MAX, check_seed

    assert TORCH_SEED_MAX == 2**32 - 1
    assert check_seed(0, TORCH_SEED_MAX) == 0 and check_seed(2**32 - 1, TORCH_SEED_MAX) == 2**32 - 1
    with pytest.raises(ValueError, match="2\\*\\*32 - 1"):
        check_seed(2**32, TORCH_SEED_MAX)


def test_with_concatenated_of_one_layer() -> None:
    """One layer: itself plus its own rows L2-normalised (the concatenation of one layer)."""
    x = np.random.default_rng(22).normal(size=(6, 4))
    out = with_concatenated([x])
    assert len(out) == 2 and isinstance(out[1], np.ndarray)
    np.testing.assert_array_equal(out[0], x)
    np.testing.assert_allclose(out[1], ref.normalize_rows(x), rtol=0, atol=1e-15)


def test_bootstrap_accepts_two_replicates() -> None:
    """``n_boot`` counts from 2 (one replicate has no spread): two replicates give an interval, a
    crude one (the pipeline warns below 40) but not a degenerate one: two different values are a
    spread, not a pile (each is half of them: every 2-replicate interval had been flagged)."""
    xs, ys = layers(n=30, seed=3), layers(n=30, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = bootstrap_ci("cka", xs, ys, n_boot=2, seed=0)
    assert not res.degenerate and res.low < res.estimate < res.high
    assert res.estimate == pytest.approx(layer_matrix("cka", xs, ys).max(), abs=1e-12)
    assert np.isfinite(res.low) and np.isfinite(res.high)
