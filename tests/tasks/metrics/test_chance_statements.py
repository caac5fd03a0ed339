"""What the docs promise about chance, checked against independent references.

- The chance levels are the exact means of the row-permutation null where the docs say so: every
  one of the ``N!`` permutations is scored (``N = 7``), no sampling error, and compared with the
  formulas written out here (``mutual_knn`` ``k/(N-1)``; ``jaccard_knn`` a hypergeometric sum;
  ``cycle_knn`` ``mean_i [1 - C(N-1-d_i, k) / C(N-1, k)]`` with ``d_i`` counted from x's lists;
  ``unbiased_cka`` and ``rsa_spearman`` 0).
- Under independence the permutation p-value of the max over layer pairs (one permutation for all
  of a side's layers) is valid: ``P(p <= alpha) <= alpha`` and the calibrated score is 0 in at
  least ``1 - alpha`` of the datasets, up to Monte Carlo error, for a symmetric count metric, the
  asymmetric ``cycle_knn`` and a kernel metric.
- Linear CKA of independent isotropic Gaussians is about ``d / (d + N)``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tasks.metrics import calibrate, chance_level, get_metric, layer_matrix
from tasks.metrics.api import encode_pair

from . import reference

N_ENUM, K_ENUM = 7, 2
_ALL_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(N_ENUM))))


def _exact_null_mean(metric: str, x: np.ndarray, y: np.ndarray, params: dict) -> float:
    """Mean of the metric over all N! row orders of ``y`` (the engine's null path, which
    ``test_null.py`` checks against scoring ``y[perm]`` from scratch)."""
    spec = get_metric(metric)
    a, b, p, _, _ = encode_pair(spec, [x], [y], params)
    return float(spec.engine.null_matrices(a, b, _ALL_PERMUTATIONS, p)[:, 0, 0].double().mean())


def _enum_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.normal(size=(N_ENUM, 3)), rng.normal(size=(N_ENUM, 4))


def test_permutation_null_means_are_the_stated_chance_levels_exactly() -> None:
    """``chance_level``'s ``mutual_knn`` and ``jaccard_knn`` values are the exact permutation-null
    means, and ``unbiased_cka``'s and ``rsa_spearman``'s 0 is too (float64 rounding only)."""
    x, y = _enum_data()
    n, k = N_ENUM, K_ENUM
    others = n - 1
    jaccard = sum(math.comb(k, c) * math.comb(others - k, k - c) / math.comb(others, k) * c / (2 * k - c)
                  for c in range(k + 1))
    for metric, want in (("mutual_knn", k / others), ("jaccard_knn", jaccard)):
        assert _exact_null_mean(metric, x, y, {"topk": k}) == pytest.approx(want, rel=1e-12, abs=0)
        assert chance_level(metric, n, topk=k) == pytest.approx(want, rel=1e-12, abs=0)
    for metric in ("unbiased_cka", "rsa_spearman"):
        assert abs(_exact_null_mean(metric, x, y, {})) < 1e-12
        assert chance_level(metric, n) == 0.0


def test_cycle_knn_exact_null_mean_counts_how_often_x_lists_hold_each_row() -> None:
    """docs/metrics.md: under the permutation null (y's rows permuted) ``cycle_knn``'s mean is
    ``mean_i [1 - C(N-1-d_i, k) / C(N-1, k)]``, ``d_i`` = how many of x's lists hold ``i``; at most
    ``1 - C(N-1-k, k) / C(N-1, k)`` (all ``d_i = k``). Here the lists of x and y give different
    values (0.5714 and 0.5619), so the side is checked too."""
    x, y = _enum_data()
    n, k = N_ENUM, K_ENUM

    def formula(lists: np.ndarray) -> float:
        d = np.bincount(lists.ravel(), minlength=n)
        return float(np.mean([1 - math.comb(n - 1 - di, k) / math.comb(n - 1, k) for di in d]))

    from_x, from_y = formula(reference.knn_lists(x, k)), formula(reference.knn_lists(y, k))
    assert abs(from_x - from_y) > 1e-3  # the data tell the two sides apart
    got = _exact_null_mean("cycle_knn", x, y, {"topk": k})
    assert got == pytest.approx(from_x, rel=1e-12, abs=0)
    assert got <= 1 - math.comb(n - 1 - k, k) / math.comb(n - 1, k) + 1e-12


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "cka"])
def test_max_over_layer_pairs_p_values_are_valid_under_independence(metric: str) -> None:
    """200 independent datasets, 3 x 3 layers (each model's layers share its own latent, so they
    are correlated), max over the 9 layer pairs, K = 19 permutations: the rank of the observed
    maximum among the 20 values is uniform (ties only make p larger), so P(p <= 0.05) <= 0.05 and
    calibrated > 0 (observed above the 19th of 20) in at most 5%. Binomial(200, 0.05) has sd
    0.0154: the bound 0.05 + 3 sd = 0.096 is passed by a valid test except with probability
    ~0.3% (these seeds: 0.065, 0.02, 0.025), while a null scored on the observed argmax layer
    pair only, instead of the max over pairs, gives 0.30, 0.21 and 0.15 here. P(p <= 0.5) is at
    most 0.5 + 3 sd (0.106; these seeds 0.47, 0.42, 0.45; argmax-only null 0.97, 0.97, 0.85)
    and, for the continuous ``cka``, at least 0.5 - 0.106."""
    n, reps, k_perm = 40, 200, 19
    params = {"topk": 4} if metric != "cka" else {}
    ps, cal = [], []
    for r in range(reps):
        rng = np.random.default_rng(7000 + r)
        sides = []
        for widths in ((8, 12, 6), (10, 5, 7)):
            z = rng.normal(size=(n, 3))
            sides.append([reference.normalize_rows(z @ rng.normal(size=(3, d)) + rng.normal(size=(n, d)))
                          for d in widths])
        res = calibrate(metric, sides[0], sides[1], permutations=k_perm, seed=r, **params)
        ps.append(res.p_value)
        cal.append(res.calibrated)
    ps, cal = np.array(ps), np.array(cal)
    sd = math.sqrt(0.05 * 0.95 / reps)
    assert np.mean(ps <= 0.05) <= 0.05 + 3 * sd
    assert np.mean(cal > 0) <= 0.05 + 3 * sd
    half = 3 * math.sqrt(0.25 / reps)
    assert np.mean(ps <= 0.5) <= 0.5 + half
    if metric == "cka":
        assert np.mean(ps <= 0.5) >= 0.5 - half


def test_linear_cka_of_independent_gaussians_is_about_d_over_d_plus_n() -> None:
    """DESIGN.md / docs: linear CKA of independent isotropic Gaussians ~ d / (d + N). Measured
    over 200 datasets at N=100, d=10: 0.0911 +- 0.0009 (formula 0.0909), N=200, d=50: 0.1997 +-
    0.0004 (0.2000). 60 datasets here: standard error ~0.0016 and ~0.0008; 4% of the value
    (0.0036, 0.008) is more than 2 standard errors plus the O(1/N) bias of the approximation."""
    rng = np.random.default_rng(11)
    for n, d in ((100, 10), (200, 50)):
        v = [layer_matrix("cka", [rng.normal(size=(n, d))], [rng.normal(size=(n, d))])[0, 0] for _ in range(60)]
        assert np.mean(v) == pytest.approx(d / (d + n), rel=0.04)
