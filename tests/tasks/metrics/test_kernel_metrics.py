"""CKA family against dense float64 references; both evaluation paths; U-statistic check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.metrics import Representation, layer_matrix, score
from tasks.metrics.hsic import hsic_unbiased_dense

from . import reference as ref
from .conftest import layers, paired


@pytest.mark.parametrize("noise", [0.2, 2.0])
@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_matches_reference(noise: float, unbiased: bool) -> None:
    x, y = paired(n=35, noise=noise, seed=11)
    metric = "unbiased_cka" if unbiased else "cka"
    assert score(metric, x, y) == pytest.approx(ref.cka(x, y, unbiased=unbiased), abs=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_cka_matches_reference(sigma: float, unbiased: bool) -> None:
    x, y = paired(n=30, seed=12, normalize=False)
    got = score("cka", x, y, kernel_metric="rbf", rbf_sigma=sigma, unbiased=unbiased)
    assert got == pytest.approx(ref.cka(x, y, "rbf", sigma, unbiased), abs=1e-10)


def test_rbf_median_heuristic() -> None:
    xs = layers(seed=2)
    ys = layers(seed=3, widths=(4, 9))
    m = layer_matrix("cka_rbf_median", xs, ys)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            def med(z):
                d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
                return np.median(d[np.triu_indices(len(z), 1)])
            k, l = ref.rbf_kernel(x, med(x)), ref.rbf_kernel(y, med(y))
            expected = ref.hsic_biased(k, l) / (np.sqrt(ref.hsic_biased(k, k) * ref.hsic_biased(l, l)) + 1e-6)
            assert m[i, j] == pytest.approx(expected, abs=1e-10)


def test_unbiased_hsic_is_the_u_statistic() -> None:
    """Independent check of the Song et al. estimator against the 4-tuple U-statistic."""
    x, y = paired(n=8, dx=3, dy=2, seed=13, normalize=False)
    k, l = ref.linear_kernel(x), ref.rbf_kernel(y, 1.3)
    expected = ref.hsic_u_statistic(k, l)
    assert ref.hsic_unbiased(k, l) == pytest.approx(expected, rel=1e-10)
    got = hsic_unbiased_dense(torch.from_numpy(k), torch.from_numpy(l))
    assert float(got) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("metric", ["cka", "unbiased_cka"])
def test_feature_path_equals_gram_path(metric: str) -> None:
    xs, ys = layers(seed=4), layers(seed=5, widths=(3, 30))
    gram = layer_matrix(metric, xs, ys)
    feat = layer_matrix(metric, Representation(xs, keep_gram_max_n=1),
                        Representation(ys, keep_gram_max_n=1))
    np.testing.assert_allclose(feat, gram, atol=1e-12)


@pytest.mark.parametrize("metric,params", [("cka", {}), ("unbiased_cka", {}),
                                           ("cka", {"kernel_metric": "rbf", "rbf_sigma": 0.7})])
def test_layer_matrix_equals_score(metric: str, params: dict) -> None:
    xs, ys = layers(seed=6), layers(seed=7, widths=(10, 2))
    m = layer_matrix(metric, xs, ys, **params)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j] == pytest.approx(score(metric, x, y, **params), abs=1e-14)
            unb = metric == "unbiased_cka"
            expected = ref.cka(x, y, params.get("kernel_metric", "ip"),
                               params.get("rbf_sigma", 1.0), unb)
            assert m[i, j] == pytest.approx(expected, abs=1e-12)


def test_float32_close_to_float64() -> None:
    x, y = paired(n=64, seed=8)
    f64 = score("cka", x, y)
    f32 = score("cka", x.astype(np.float32), y.astype(np.float32))
    assert f32 == pytest.approx(f64, abs=1e-5)


def test_bad_kernel() -> None:
    x, y = paired()
    with pytest.raises(ValueError):
        score("cka", x, y, kernel_metric="poly")
    with pytest.raises(ValueError):
        score("cka", x, y, kernel_metric="rbf", rbf_sigma=-1.0)


@pytest.mark.parametrize("n", [96, 1024])
def test_unbiased_cka_in_float32_on_features_that_point_one_way(n: int) -> None:
    """Unit-norm features with a large common direction (mean cosine ~0.9, as real layers often
    are): the unbiased estimator's terms nearly cancel; in float32 they lost 2e-2 of the score and
    6e-2 of a null draw at N=1024 before the kernels were centred. Gram path, feature path and the
    permutation null against the float64 definition."""
    from tasks.metrics import calibrate

    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, 8))
    x = z @ rng.normal(size=(8, 64)) + 8 * rng.normal(size=(1, 64))
    y = np.tanh(z @ rng.normal(size=(8, 48))) + 8 * rng.normal(size=(1, 48))
    x, y = [(v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32) for v in (x, y)]
    assert (x @ x.T).mean() > 0.85
    want = ref.cka(x.astype(np.float64), y.astype(np.float64), unbiased=True)
    assert layer_matrix("unbiased_cka", [x], [y])[0, 0] == pytest.approx(want, abs=1e-5)
    features = layer_matrix("unbiased_cka", Representation([x], keep_gram_max_n=0), Representation([y], keep_gram_max_n=0))
    assert features[0, 0] == pytest.approx(want, abs=1e-5)
    null = calibrate("unbiased_cka", [x], [y], permutations=2, seed=0).null
    first = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()  # calibrate's first draw
    assert null[0] == pytest.approx(ref.cka(x.astype(np.float64), y[first].astype(np.float64), unbiased=True), abs=1e-5)
