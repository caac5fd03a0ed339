"""Known properties of the metrics: identity, chance levels, invariances, symmetry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from tasks.metrics import METRICS, chance_level, layer_matrix, score

from .conftest import layers, paired

PARAMS = {"topk": 5, "cca_dim": 4}
IDENTITY = {  # value on identical inputs
    "mutual_knn": 1.0, "cycle_knn": 1.0, "lcs_knn": 5.0, "edit_distance_knn": 1.0, "cka": 1.0,
    "unbiased_cka": 1.0, "cknna": 1.0, "svcca": 1.0, "jaccard_knn": 1.0, "cka_rbf_median": 1.0,
    "procrustes": 1.0, "linear_regression": 1.0, "rsa_spearman": 1.0,
}


#: the paper's +1e-6 in the CKA denominator is not negligible against the unbiased HSIC, which
#: is normalised by m(m-3): identical inputs give HSIC / (HSIC + 1e-6) slightly below 1
EPS_AFFECTED = {"unbiased_cka", "cknna"}


@pytest.mark.parametrize("metric", sorted(IDENTITY))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_identical_inputs_score_their_maximum(metric: str, dtype) -> None:
    x = paired(n=50, seed=1)[0].astype(dtype)
    tol = 1e-6 if dtype == np.float64 else 2e-5
    if metric in EPS_AFFECTED:
        tol = 1e-3
    assert score(metric, x, x, **PARAMS) == pytest.approx(IDENTITY[metric], abs=tol)
    lo, hi = METRICS[metric].bounds_for(PARAMS)
    assert hi == pytest.approx(IDENTITY[metric])


@pytest.mark.parametrize("k", [5, 10])
def test_mutual_knn_of_independent_data_is_near_chance(k: int) -> None:
    rng = np.random.default_rng(k)
    n = 400
    vals = [score("mutual_knn", rng.normal(size=(n, 16)), rng.normal(size=(n, 16)), topk=k)
            for _ in range(5)]
    chance = chance_level("mutual_knn", n, topk=k)
    assert chance == pytest.approx(k / (n - 1))
    assert np.mean(vals) == pytest.approx(chance, rel=0.2)


def test_jaccard_and_cycle_chance_levels_match_independent_data() -> None:
    rng = np.random.default_rng(2)
    n, k = 300, 10
    pairs = [(rng.normal(size=(n, 20)), rng.normal(size=(n, 20))) for _ in range(4)]
    for metric in ("jaccard_knn", "cycle_knn"):
        got = np.mean([score(metric, x, y, topk=k) for x, y in pairs])
        assert got == pytest.approx(chance_level(metric, n, topk=k), rel=0.2)


@pytest.mark.parametrize("n,d", [(200, 20), (100, 100)])
def test_linear_cka_of_independent_gaussians_is_d_over_d_plus_n(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    vals = [score("cka", rng.normal(size=(n, d)), rng.normal(size=(n, d))) for _ in range(5)]
    assert np.mean(vals) == pytest.approx(d / (d + n), rel=0.1)


@pytest.mark.parametrize("metric", ["cka", "unbiased_cka", "cka_rbf_median", "procrustes",
                                    "rsa_spearman"])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(metric: str) -> None:
    x, y = paired(n=40, dx=10, dy=8, seed=3, normalize=False)
    q = ortho_group.rvs(10, random_state=4)
    base = score(metric, x, y)
    # scaling moves the un-normalised HSIC against the fixed +1e-6: tiny change, as in the paper
    tol = 1e-4 if metric in EPS_AFFECTED else 1e-7
    assert score(metric, x @ q, y) == pytest.approx(base, abs=1e-9)
    assert score(metric, 3.5 * x, y) == pytest.approx(base, abs=tol)
    assert score(metric, x @ q, 0.2 * y) == pytest.approx(base, abs=tol)


def test_svcca_invariant_to_feature_scaling_and_order_not_rotation() -> None:
    """SVCCA standardises each feature, so it is invariant to per-feature scaling and feature
    permutations, but (unlike CKA) not to rotations of the feature space."""
    x, y = paired(n=40, dx=10, dy=8, seed=3, normalize=False)
    base = score("svcca", x, y, cca_dim=4)
    scales = np.linspace(0.1, 5.0, 10)
    # (the +1e-8 added to each std makes this exact only up to ~1e-8 relative)
    assert score("svcca", x * scales, y[:, ::-1], cca_dim=4) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("metric", ["mutual_knn", "jaccard_knn", "lcs_knn", "edit_distance_knn",
                                    "cknna"])
def test_knn_metrics_invariant_to_rotation_and_scaling(metric: str) -> None:
    x, y = paired(n=40, dx=10, dy=8, seed=5)
    q = ortho_group.rvs(10, random_state=6)
    base = score(metric, x, y, topk=5)
    tol = 1e-4 if metric in EPS_AFFECTED else 1e-9
    assert score(metric, x @ q, 2.0 * y, topk=5) == pytest.approx(base, abs=tol)


SYMMETRIC = ["mutual_knn", "jaccard_knn", "lcs_knn", "edit_distance_knn", "cka", "unbiased_cka",
             "svcca", "cka_rbf_median", "procrustes", "rsa_spearman"]


@pytest.mark.parametrize("metric", SYMMETRIC)
def test_symmetric_metrics_are_symmetric(metric: str) -> None:
    assert METRICS[metric].symmetric
    xs, ys = layers(seed=7), layers(seed=8, widths=(9, 5))
    np.testing.assert_allclose(layer_matrix(metric, xs, ys, **PARAMS),
                               layer_matrix(metric, ys, xs, **PARAMS).T, atol=1e-10)


def test_cknna_symmetry_only_for_the_biased_estimator() -> None:
    """The paper's unbiased HSIC term 1^T K' L' 1 is order dependent on the non-symmetric masked
    kernels, so (unbiased) CKNNA is registered as not symmetric; the biased one is symmetric."""
    assert not METRICS["cknna"].symmetric
    xs, ys = layers(seed=7), layers(seed=8, widths=(9, 5))
    fwd, bwd = layer_matrix("cknna", xs, ys, topk=5), layer_matrix("cknna", ys, xs, topk=5).T
    assert not np.allclose(fwd, bwd, atol=1e-6)
    np.testing.assert_allclose(fwd, bwd, atol=0.05)
    np.testing.assert_allclose(layer_matrix("cknna", xs, ys, topk=5, unbiased=False),
                               layer_matrix("cknna", ys, xs, topk=5, unbiased=False).T, atol=1e-10)


def test_cycle_knn_is_not_symmetric() -> None:
    assert not METRICS["cycle_knn"].symmetric
    assert not METRICS["linear_regression"].symmetric
    x, y = paired(n=60, noise=2.0, seed=9)
    assert score("cycle_knn", x, y, topk=3) != score("cycle_knn", y, x, topk=3)


def test_scores_within_bounds_on_random_data() -> None:
    xs, ys = layers(seed=10), layers(seed=11)
    for metric in METRICS:
        if metric.startswith("test_"):
            continue
        lo, hi = METRICS[metric].bounds_for(PARAMS)
        m = layer_matrix(metric, xs, ys, **PARAMS)
        assert np.all(m >= lo - 1e-9) and np.all(m <= hi + 1e-9), metric
