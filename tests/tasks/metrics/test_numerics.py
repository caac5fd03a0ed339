"""Numerical accuracy where the fast path lost digits: float32 CKA at large N, Procrustes at
rank deficiency, least squares on ill-conditioned layers, and sides that mix float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.metrics import Representation, layer_matrix, score

from . import reference as ref


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_float32_cka_at_large_n_matches_float64_on_both_paths() -> None:
    """The Gram path's self-HSIC was a float32 norm over N(N-1)/2 packed entries: 2.6e-4 off at
    N=4096 (the feature path, 2e-8). Accumulated in float64 now."""
    rng = np.random.default_rng(0)
    n = 4096
    x = rng.normal(size=(n, 16)) + 2.0
    x, y = _unit(x), _unit(x[:, :12] + rng.normal(size=(n, 12)))
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    want = layer_matrix("cka", x32.astype(np.float64), y32.astype(np.float64))[0, 0]
    assert layer_matrix("cka", x32, y32)[0, 0] == pytest.approx(want, abs=1e-5)  # Gram path (N <= 4096)
    features = layer_matrix("cka", Representation(x32, keep_gram_max_n=n - 1), Representation(y32, keep_gram_max_n=n - 1))
    assert features[0, 0] == pytest.approx(want, abs=1e-6)


def test_procrustes_of_a_low_rank_layer_with_itself_is_one() -> None:
    """sqrt of the near-zero eigenvalues of m m^T (rounding noise) added ~1e-8 each: 1 + 7e-7."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3)) @ rng.normal(size=(3, 800))
    assert score("procrustes", x, x) == pytest.approx(1.0, abs=1e-12)
    y = rng.normal(size=(1000, 3)) @ rng.normal(size=(3, 50)) + x[:, :50]
    xc, yc = x - x.mean(0), y - y.mean(0)
    want = np.linalg.svd(xc.T @ yc, compute_uv=False).sum() / (np.linalg.norm(xc) * np.linalg.norm(yc))
    assert score("procrustes", x, y) == pytest.approx(want, abs=1e-12)


def test_linear_regression_is_least_squares_on_an_ill_conditioned_layer() -> None:
    """The Gram eigenproblem squared the condition number and dropped directions below 1e-7 s_max:
    R^2 0.004 where least squares gives 0.99."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)
    x = np.stack([a, 1e-8 * b], 1)
    y = b[:, None] + 0.1 * rng.normal(size=(200, 1))
    xc, yc = x - x.mean(0), y - y.mean(0)
    coef = np.linalg.lstsq(xc, yc, rcond=None)[0]
    want = 1 - ((yc - xc @ coef) ** 2).sum() / (yc ** 2).sum()
    assert want > 0.99 and score("linear_regression", x, y, ridge=0.0) == pytest.approx(want, abs=1e-9)
    spectrum = rng.normal(size=(300, 120)) * (np.arange(1, 121) ** -3.0)  # a power-law layer
    target = rng.normal(size=(300, 5))
    xs, ts = spectrum - spectrum.mean(0), target - target.mean(0)
    fit = xs @ np.linalg.lstsq(xs, ts, rcond=None)[0]
    assert score("linear_regression", spectrum, target) == pytest.approx(1 - ((ts - fit) ** 2).sum() / (ts ** 2).sum(), abs=1e-9)


def test_a_side_mixing_float32_and_float64_layers_keeps_its_float64_layers() -> None:
    """The side computed in float32 unless every layer was float64: a float64 layer was rounded
    (mutual k-NN of near-duplicate rows 0.92 instead of 1.0), so layer_matrix[i, j] != score."""
    rng = np.random.default_rng(0)
    x1 = np.repeat(rng.normal(size=(50, 8)), 2, 0) + 1e-9 * rng.normal(size=(100, 8))
    x0 = rng.normal(size=(100, 8)).astype(np.float32)
    assert layer_matrix("mutual_knn", [x0, x1], [x1.copy()], topk=1)[1, 0] == score("mutual_knn", x1, x1.copy(), topk=1) == 1.0


def test_a_float32_representation_against_a_float64_one_keeps_its_path() -> None:
    """Upcast to the pair's float64, the float32 side lost its keep_gram_max_n: the two sides then
    took different CKA paths ("both sides must use the same CKA path")."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(300, 8))
    got = layer_matrix("cka", Representation(x, keep_gram_max_n=100), Representation(y, keep_gram_max_n=100))[0, 0]
    assert got == pytest.approx(ref.cka(x.astype(np.float64), y), abs=1e-12)


def _lstsq_r2(x: np.ndarray, y: np.ndarray, eps: float) -> float:
    """In-sample R^2 of float64 least squares with numpy's cutoff max(N, D) eps s_max."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    coef = np.linalg.lstsq(xc, yc, rcond=max(xc.shape) * eps)[0]
    return float(1 - ((yc - xc @ coef) ** 2).sum() / (yc ** 2).sum())


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_linear_regression_of_a_float32_low_rank_layer_ignores_its_rounding_noise(offset: float) -> None:
    """The rank cutoff used float64's eps on float32 values: the float32 rounding noise of a
    rank-16 width-128 layer counted as 112 more regressors (R^2 0.31 against unrelated targets
    instead of 0.04). The cutoff now uses the input's eps (float32's), also for a float32 side
    upcast to pair with a float64 one."""
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 16)) @ rng.normal(size=(16, 128)) + offset  # rank 16 (+ an offset)
    y = rng.normal(size=(n, 32))  # unrelated
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    exact = _lstsq_r2(x, y32.astype(np.float64), np.finfo(np.float64).eps)  # the unrounded layer
    assert exact < 0.05
    want = _lstsq_r2(x32.astype(np.float64), y32.astype(np.float64), np.finfo(np.float32).eps)
    assert want == pytest.approx(exact, abs=1e-6)
    assert score("linear_regression", x32, y32) == pytest.approx(want, abs=1e-9)
    assert score("linear_regression", x32, y) == pytest.approx(_lstsq_r2(x32.astype(np.float64), y, np.finfo(np.float32).eps), abs=1e-9)
    # a float64 layer keeps float64's cutoff (its rank-16 directions; with the offset, float64
    # rounding noise near that cutoff moves R^2 by ~5e-8, as it does numpy's)
    assert score("linear_regression", x, y32.astype(np.float64)) == pytest.approx(exact, abs=1e-6)


def test_svcca_rank_of_a_float32_layer_ignores_its_rounding_noise() -> None:
    """SVCCA's rank check (directions above 1e-7 s_max) counted float32 rounding noise of a
    rank-4 layer with an offset of 100 as rank >= 10 and scored 0.124 where the float64 layer is
    refused; the cutoff is now numpy's matrix_rank rule at the input's precision."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 64)) + 100.0
    y = rng.normal(size=(400, 32))
    for dtype in (np.float64, np.float32):
        with pytest.raises(ValueError, match="rank 4 < cca_dim=10"):
            score("svcca", x.astype(dtype), y.astype(dtype), cca_dim=10)
    got = score("svcca", x.astype(np.float32), y.astype(np.float32), cca_dim=4)
    assert got == pytest.approx(ref.svcca(x, y, 4), abs=1e-4)


def _rbf_cka_cdist(x: np.ndarray, y: np.ndarray, sigma, unbiased: bool) -> float:
    """RBF CKA in float64 with exact pairwise distances (``scipy.spatial.distance.cdist``)."""
    from scipy.spatial.distance import cdist

    def kernel(z: np.ndarray) -> np.ndarray:
        d = cdist(z, z)
        s = np.median(d[np.triu_indices(len(z), 1)]) if sigma == "median" else sigma
        return np.exp(-d ** 2 / (2 * s * s))

    k, l = kernel(x.astype(np.float64)), kernel(y.astype(np.float64))
    hsic = ref.hsic_unbiased if unbiased else ref.hsic_biased
    return float(hsic(k, l) / (np.sqrt(hsic(k, k) * hsic(l, l)) + 1e-6))


@pytest.mark.parametrize("offset,dtype", [(0.0, np.float32), (1e2, np.float32), (1e4, np.float32), (1e6, np.float32), (1e6, np.float64)])
def test_kernel_cka_is_translation_invariant_under_a_shared_offset(offset: float, dtype) -> None:
    """RBF distances were ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` of the uncentred Gram: float32 rows
    sharing an offset of 1e4 (spread ~4) gave 0.0395 instead of 0.7721 at sigma=4 and 'median'
    refused ("median pairwise distance is 0"); float64 at offset 1e6 was 3e-6 off. Linear CKA
    from a cached Gram (``cache_grams``, as the pipeline does) had the same cancellation in
    ``H G H``: -0.146 instead of 0.702. Every route now matches exact distances, and the value at
    offset 0. Features centred in one float32 pass kept column means up to 0.13 at offset 1e6,
    which biased linear CKA took for centred: 8e-4 off (``gram.centre_columns``)."""
    rng = np.random.default_rng(0)
    n, d = 120, 16
    z = rng.normal(size=(n, 4))
    x0 = z @ rng.normal(size=(4, d)) + 0.5 * rng.normal(size=(n, d))
    y0 = z @ rng.normal(size=(4, d)) + 0.5 * rng.normal(size=(n, d))
    x, y = (x0 + offset).astype(dtype), (y0 - offset / 2).astype(dtype)
    tol = 2e-5 if dtype == np.float32 else 1e-9
    for sigma in (4.0, "median"):
        for unbiased in (False, True):
            want = _rbf_cka_cdist(x, y, sigma, unbiased)
            if offset * np.finfo(dtype).eps < 1e-3:  # float32 at 1e6 rounds the values themselves by 0.06
                assert want == pytest.approx(_rbf_cka_cdist(x0, y0, sigma, unbiased), abs=1e-4)  # float32 rounding of the values
            params = {"kernel_metric": "rbf", "rbf_sigma": sigma, "unbiased": unbiased}
            assert score("cka", x, y, **params) == pytest.approx(want, abs=tol)
            cached = layer_matrix("cka", Representation(x).cache_grams(), Representation(y).cache_grams(), **params)
            assert cached[0, 0] == pytest.approx(want, abs=tol)
    assert score("cka_rbf_median", x, y) == pytest.approx(_rbf_cka_cdist(x, y, "median", False), abs=tol)
    xc, yc = (v.astype(np.float64) - v.astype(np.float64).mean(0) for v in (x, y))
    for unbiased in (False, True):  # linear HSIC is translation invariant: the centred values' CKA
        want = ref.cka(xc, yc, unbiased=unbiased)
        cached = layer_matrix("cka", Representation(x).cache_grams(), Representation(y).cache_grams(), unbiased=unbiased)
        assert cached[0, 0] == pytest.approx(want, abs=tol)
        assert score("cka", x, y, unbiased=unbiased) == pytest.approx(want, abs=tol)


def test_centred_gram_reuses_a_cached_gram_only_while_the_offset_is_small() -> None:
    """``H G H`` of a cached Gram (no product) while ``|m|^2 <= 64 mean |x_i - m|^2``; beyond
    it, the Gram of the centred features. Both equal the float64 centred Gram."""
    import torch

    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(50, 6))
    for offset, reused in ((0.0, True), (2.0, True), (30.0, False)):
        x = (x0 + offset).astype(np.float32)
        rep = Representation(x).cache_grams()
        xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
        got = rep.centred_gram(0)
        np.testing.assert_allclose(got.numpy(), xc @ xc.T, atol=2e-5 * max(1.0, offset))
        cached = torch.from_numpy(x @ x.T)
        from tasks.metrics.gram import center_gram_
        assert torch.equal(got, center_gram_(rep.cached_gram(0).clone())) == reused
        assert torch.allclose(cached, rep.cached_gram(0), atol=1e-2 * (1 + offset ** 2))  # cache untouched
