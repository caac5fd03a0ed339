"""CKA family against dense float64 references; both evaluation paths; U-statistic check."""

from __future__ import annotations

import math
from fractions import Fraction

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


@pytest.mark.parametrize("kernel_metric", ["ip", "rbf"])
def test_unbiased_cka_stays_unbiased_whatever_the_unbiased_flag(kernel_metric: str) -> None:
    """``unbiased_cka`` is CKA with the unbiased HSIC by definition (the paper's wrapper forces
    it): an ``unbiased=False`` passed with it changes nothing; ``cka`` reads the flag."""
    x, y = paired(n=30, noise=1.0, seed=17)
    want = ref.cka(x, y, kernel=kernel_metric, sigma=1.0, unbiased=True)
    biased = ref.cka(x, y, kernel=kernel_metric, sigma=1.0, unbiased=False)
    assert abs(want - biased) > 1e-3  # the two estimators tell apart on this pair
    got = score("unbiased_cka", x, y, kernel_metric=kernel_metric, unbiased=False)
    assert got == pytest.approx(want, abs=1e-12)
    assert score("cka", x, y, kernel_metric=kernel_metric, unbiased=False) == pytest.approx(biased, abs=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_cka_matches_reference(sigma: float, unbiased: bool) -> None:
    x, y = paired(n=30, seed=12, normalize=False)
    got = score("cka", x, y, kernel_metric="rbf", rbf_sigma=sigma, unbiased=unbiased)
    assert got == pytest.approx(ref.cka(x, y, "rbf", sigma, unbiased), abs=1e-10)


@pytest.mark.parametrize("sigma", [100.0, 300.0])
@pytest.mark.parametrize("unbiased", [False, True])
def test_float32_rbf_cka_keeps_its_digits_at_a_wide_sigma(sigma: float, unbiased: bool) -> None:
    """A width large against the distances makes the kernel ``1 - small``: stored as ``exp`` in
    float32 the small part lost its digits (biased: 1.2e-5 relative off at sigma=100, 5.2e-5 at 300;
    unbiased at 300 refused as rounding). Against a float64 reference built from ``K - 1``
    (the same CKA, without the cancellation of ``K``'s common 1)."""
    x, y = paired(n=150, dx=24, dy=16, noise=1.0, seed=13)
    want = ref.cka(x, y, "rbf", sigma, unbiased, minus_one=True)
    assert want > 1e-7  # not just the +1e-6 of the denominator
    got = score("cka", x.astype(np.float32), y.astype(np.float32), kernel_metric="rbf", rbf_sigma=sigma,
                unbiased=unbiased)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)  # before: 1.2e-5, 8.9e-6, 5.2e-5 relative, refused


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


@pytest.mark.parametrize("params, named", [
    ({"kernel_metric": "ip"}, "kernel_metric"),
    ({"rbf_sigma": 1.0}, "rbf_sigma"),
    ({"kernel_metric": "ip", "rbf_sigma": 2.0}, "kernel_metric"),
])
def test_cka_rbf_median_refuses_another_kernel_or_width(params: dict, named: str) -> None:
    """``cka_rbf_median`` is RBF CKA with the median width by definition: ``kernel_metric='ip'``
    scored linear CKA under its name (0.6958 for 0.6764 on these data, the value of ``cka``) and
    ``rbf_sigma=1.0`` a fixed width (0.8505), so a loop passing one set of parameters to every
    metric stored another metric's number as ``cka_rbf_median``."""
    x, y = paired(n=30, seed=21, normalize=False)
    with pytest.raises(ValueError, match=f"^cka_rbf_median .*{named} must be"):
        score("cka_rbf_median", x, y, **params)
    with pytest.raises(ValueError, match=f"^cka_rbf_median .*{named} must be"):
        layer_matrix("cka_rbf_median", [x], [y, y], **params)
    # its own values (and the unbiased estimator, which it takes) still score
    same = score("cka_rbf_median", x, y, kernel_metric="rbf", rbf_sigma="median")
    assert same == score("cka_rbf_median", x, y)
    assert score("cka_rbf_median", x, y, unbiased=True) == pytest.approx(
        score("cka", x, y, kernel_metric="rbf", rbf_sigma="median", unbiased=True), abs=0)


def test_unbiased_hsic_is_the_u_statistic() -> None:
    """Independent check of the Song et al. estimator against the 4-tuple U-statistic."""
    x, y = paired(n=8, dx=3, dy=2, seed=13, normalize=False)
    k, l = ref.linear_kernel(x), ref.rbf_kernel(y, 1.3)
    expected = ref.hsic_u_statistic(k, l)
    assert ref.hsic_unbiased(k, l) == pytest.approx(expected, rel=1e-10)
    got = hsic_unbiased_dense(torch.from_numpy(k), torch.from_numpy(l))
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_biased_dense_hsic_of_non_symmetric_kernels() -> None:
    """``hsic_biased_dense``: ``trace(K H L H)``, ``H = I - 11^T/N``, for non-symmetric kernels;
    checked as ``sum_ij Kc_ij Lc_ji`` with ``Kc`` the doubly centred ``K`` (row, column and grand
    means), which is the same trace."""
    from tasks.metrics.hsic import hsic_biased_dense

    rng = np.random.default_rng(12)
    k, l = rng.normal(size=(6, 6)) + 0.5, rng.normal(size=(6, 6)) - 0.2

    def centred(a):
        return a - a.mean(1, keepdims=True) - a.mean(0, keepdims=True) + a.mean()

    expected = float(np.sum(centred(k) * centred(l).T))
    assert ref.hsic_biased(k, l) == pytest.approx(expected, rel=1e-12)
    assert float(hsic_biased_dense(torch.from_numpy(k), torch.from_numpy(l))) == pytest.approx(expected, rel=1e-12)


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


def _previous_rbf_encoding(grams: list[torch.Tensor], sigma, unbiased: bool):
    """The kernel encoding as it was before kernels were packed one at a time (every layer's
    N x N kernel in a list, then packed; float64 norms of all rows at once), for bitwise checks,
    from the Grams (of the centred features) the kernels' distances are taken from."""
    from tasks.metrics.hsic import unbiased_from_parts
    from tasks.metrics.kernel_metrics import _median, center_gram_
    from tasks.metrics.triangle import pack, triangle_pairs

    def rbf(gram):
        sq = torch.diagonal(gram)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min_(0.0)
        d2.fill_diagonal_(0.0)
        if sigma == "median":
            iu = torch.triu_indices(d2.shape[0], d2.shape[0], 1)
            s = _median(d2[iu[0], iu[1]].sqrt())
        else:
            s = float(sigma)
        m = d2.shape[0]  # K - 1 where most entries are above 1/2, as the engine stores it
        wide = float(d2.sum(dtype=torch.float64)) < math.log(2.0) * 2.0 * s * s * m * (m - 1)
        return (torch.expm1 if wide else torch.exp)(d2 / (-2.0 * s * s))

    from tasks.metrics.kernel_metrics import _sq_norms as sq_norms  # float64 sums (test_sq_norms_...)

    kernels = [rbf(g) for g in grams]
    n, dtype = kernels[0].shape[0], kernels[0].dtype
    upper = torch.empty((len(kernels), n * (n - 1) // 2), dtype=dtype)
    if not unbiased:
        diag = torch.empty((len(kernels), n), dtype=dtype)
        for l, k in enumerate(kernels):
            k = center_gram_(k.clone())
            upper[l], diag[l] = pack(k), torch.diagonal(k)
        return upper, diag, 2.0 * sq_norms(upper) + sq_norms(diag)
    rows = torch.zeros((len(kernels), n), dtype=torch.float64)
    i, j = triangle_pairs(n, torch.device("cpu"))
    for l, k in enumerate(kernels):
        u = pack(k).to(torch.float64)
        u -= u.mean()
        upper[l] = u.to(dtype)
        u = upper[l].to(torch.float64)
        rows[l].index_add_(0, i, u).index_add_(0, j, u)
    tot = rows.sum(-1)
    return upper, rows, unbiased_from_parts(2.0 * sq_norms(upper), tot, tot, (rows * rows).sum(-1), n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("sigma", [0.8, "median"])
def test_rbf_encoding_packed_layer_by_layer_is_bit_identical(dtype, unbiased: bool, sigma) -> None:
    """Packing each kernel as soon as it is built changes no bit of the encoding (against the
    previous list-then-pack code) and matches the dense float64 reference. Distances come from
    the centred features' Gram: multiplied from them without a cached Gram, ``H G H`` of the
    cached one (these rows' offset is small)."""
    from tasks.metrics import METRICS
    from tasks.metrics.gram import center_gram_, centre_columns, gram_full

    xs = [torch.from_numpy(x).to(dtype) for x in layers(n=53, seed=7)]
    fresh = [gram_full(centre_columns(x)) for x in xs]
    cached = [center_gram_(gram_full(x)) for x in xs]
    for keep, grams in ((0, fresh), (4096, cached)):  # kernels from fresh Grams, and from cached ones
        rep = Representation(xs, keep_gram_max_n=keep).cache_grams()
        p = {"kernel_metric": "rbf", "rbf_sigma": sigma, "unbiased": unbiased}
        state = METRICS["cka"].engine.encode(rep, p)
        upper, extra, self_hsic = _previous_rbf_encoding(grams, sigma, unbiased)
        assert torch.equal(state.upper, upper) and torch.equal(state.self_hsic, self_hsic)
        assert torch.equal(state.rows if unbiased else state.diag, extra)
    if sigma != "median":
        ys = layers(n=53, widths=(4, 11), seed=8)
        got = layer_matrix("cka", [x.numpy() for x in xs], ys, kernel_metric="rbf", rbf_sigma=sigma,
                           unbiased=unbiased)
        want = [[ref.cka(x.double().numpy(), y, "rbf", sigma, unbiased) for y in ys] for x in xs]
        np.testing.assert_allclose(got, want, atol=1e-5 if dtype == torch.float32 else 1e-10)


def test_rbf_encoding_memory_is_packed_triangles_plus_a_few_kernels() -> None:
    """Peak memory of encoding 12 RBF layers (N=2500, no Gram kept) beyond the packed triangles
    is a few N x N matrices: every layer's kernel was kept in a list before packing, and the
    float64 norms copied all packed rows at once (measured: 863 MiB extra for 143 MiB of
    triangles before, 315 MiB after; RBF CKA at N=5000, 12 x 12 layers: 4025 -> 1887 MiB RSS)."""
    from tests.tasks.metrics.peak_memory import peak_growth

    extra, packed = peak_growth(
        "from tasks.metrics import Representation, METRICS\n"
        "x = torch.nn.functional.normalize(torch.randn(12, 2500, 16, generator=torch.Generator().manual_seed(0)), dim=2)\n"
        "rep = Representation(x, keep_gram_max_n=0)",
        "s = METRICS['cka'].engine.encode(rep, METRICS['cka'].resolve({'kernel_metric': 'rbf'}))\n"
        "extra.append(s.upper.numel() * s.upper.element_size())")
    kernel = 2500 * 2500 * 4
    assert extra < packed + 12 * kernel, (extra / 2**20, packed / 2**20)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("metric,params", [("cka", {}), ("unbiased_cka", {}), ("cknna", {"topk": None})])
def test_a_representation_with_its_own_keep_gram_max_n_pairs_with_raw_arrays(dtype, metric: str, params: dict) -> None:
    """A Representation on the feature path (keep_gram_max_n below N) against raw arrays (Gram
    path) raised "both sides must use the same CKA path (same N)" although N was the same: the
    Gram side now moves to the feature path too, exact for the linear kernel (scores and nulls)."""
    from tasks.metrics import calibrate

    xs = [x.astype(dtype) for x in layers(n=90, seed=3)]
    ys = [y.astype(dtype) for y in layers(n=90, widths=(6, 10), seed=4)]
    features = layer_matrix(metric, Representation(xs, keep_gram_max_n=0), Representation(ys, keep_gram_max_n=0), **params)
    gram = layer_matrix(metric, xs, ys, **params)
    for x, y in ((Representation(xs, keep_gram_max_n=0), ys), (xs, Representation(ys, keep_gram_max_n=0)),
                 (Representation(xs, keep_gram_max_n=0), Representation(ys).cache_grams())):
        got = layer_matrix(metric, x, y, **params)
        np.testing.assert_array_equal(got, features)
        np.testing.assert_allclose(got, gram, atol=1e-6 if dtype == np.float32 else 1e-13)
    null = calibrate(metric, Representation(xs, keep_gram_max_n=0), Representation(ys, keep_gram_max_n=0),
                     permutations=5, **params).null
    np.testing.assert_array_equal(calibrate(metric, xs, Representation(ys, keep_gram_max_n=0),
                                            permutations=5, **params).null, null)


def test_paths_that_cannot_be_matched_name_keep_gram_max_n() -> None:
    """Where the Gram side cannot be re-encoded (an encoding of permuted rows), the error says what
    differs (keep_gram_max_n), not "same N"."""
    from tasks.metrics import METRICS

    engine = METRICS["cka"].engine
    p = METRICS["cka"].resolve({})
    xs, ys = layers(n=30, seed=1), layers(n=30, seed=2)
    a = engine.encode(Representation(xs, keep_gram_max_n=0), p)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    b = engine.permute(engine.encode(Representation(ys), p), perm, torch.argsort(perm))
    with pytest.raises(ValueError, match="keep_gram_max_n"):
        engine.matrix(a, b, p)


def test_sq_norms_of_packed_rows_are_float64_sums_to_a_few_ulps() -> None:
    """``linalg.vector_norm`` in float64 lost 4,400 ulps over the 500k entries of a packed N=1000
    kernel (an exact-zero unbiased self-HSIC came out -2,200 units of its terms' size); chunked
    pairwise sums against ``math.fsum``, in float32 and float64, across chunk boundaries."""
    import math

    from tasks.metrics.kernel_metrics import _sq_norms

    rows = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 499500)) * [[1.0], [1e-3]])
    for dtype in (torch.float64, torch.float32):
        r = rows.to(dtype)
        want = [math.fsum(v * v for v in row.double().tolist()) for row in r]
        for chunk in (1 << 20, 4096, 1000):
            got = _sq_norms(r, chunk=chunk)
            assert got.dtype == torch.float64
            np.testing.assert_allclose(got.numpy(), want, rtol=8 * np.finfo(np.float64).eps)


def _exact_unbiased_self_hsic(x: np.ndarray) -> Fraction:
    """The paper's ``hsic_unbiased(K, K)``, ``K = x x^T``, in exact rational arithmetic."""
    rows = [[Fraction(float(v)) for v in r] for r in x]
    m = len(rows)
    k = [[Fraction(0) if i == j else sum(a * b for a, b in zip(rows[i], rows[j])) for j in range(m)] for i in range(m)]
    tr = sum(k[i][j] * k[j][i] for i in range(m) for j in range(m))
    tot = sum(sum(r) for r in k)
    sums = [sum(r) for r in k]
    return (tr + tot * tot / ((m - 1) * (m - 2)) - 2 * sum(s * s for s in sums) / (m - 2)) / (m * (m - 3))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_layer_whose_unbiased_self_hsic_is_zero_is_refused(dtype) -> None:
    """All rows but one identical: the unbiased self-HSIC is exactly 0 (rational arithmetic),
    rounding made it -4e-17 and unbiased CKA NaN (sqrt of a negative), or a tiny positive value
    and a quotient of rounding errors (1.4e-13 at N=50). Refused like a constant layer, naming
    the side and layer, on every path and for every metric that divides by it; a nearby layer
    that is not degenerate still matches the reference."""
    from tasks.metrics import calibrate

    rng = np.random.default_rng(1)
    small = np.array([[-1.0], [-1.0], [-1.0], [-1.0], [1.0]])
    big = np.vstack([np.tile([[0.6, 0.8]], (49, 1)), [[1.0, 0.0]]])[rng.permutation(50)]
    for x in (small, big):
        assert _exact_unbiased_self_hsic(x) == 0
        x = x.astype(dtype)
        y = rng.normal(size=(len(x), 3)).astype(dtype)
        for metric, params in (("unbiased_cka", {}), ("cka", {"unbiased": True}), ("cknna", {"topk": None})):
            for keep in (4096, 0):  # Gram path, feature path
                with pytest.raises(ValueError, match=r"^x: layer 0 has an unbiased self-HSIC"):
                    layer_matrix(metric, Representation(x, keep_gram_max_n=keep), y, **params)
                with pytest.raises(ValueError, match=r"^y: layer 1 has an unbiased self-HSIC"):
                    layer_matrix(metric, y, Representation([y, x], keep_gram_max_n=keep), **params)
        with pytest.raises(ValueError, match="self-HSIC"):
            calibrate("unbiased_cka", x, y, permutations=3)
        assert np.isfinite(score("cka", x, y))  # the biased self-HSIC is a squared norm: > 0
    near = np.array([[-1.0], [-1.0], [-1.0], [-0.5], [1.0]])
    y = rng.normal(size=(5, 3))
    assert _exact_unbiased_self_hsic(near) > 0
    assert score("unbiased_cka", near, y) == pytest.approx(ref.cka(near, y, unbiased=True), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, width", [(10, 64), (12, 12), (50, 64)])
def test_distinct_one_hot_rows_have_a_zero_unbiased_self_hsic_and_are_refused(dtype, n: int, width: int) -> None:
    """Distinct one-hot rows (any orthonormal rows): ``K = I``, ``K~ = 0``, so the unbiased
    self-HSIC is exactly 0. The Gram path stores the centred kernel ``I - 11^T/N`` minus its
    off-diagonal mean, i.e. only rounding noise, and measured the terms' size on that noise: the
    layer passed and unbiased CKA scored rounding errors (0.0022 in float32, 1.9e-12 in float64,
    at N=10) where the feature path refused it. Both paths refuse it now; one duplicated row
    (a nonzero self-HSIC) is still scored as the reference scores it."""
    rng = np.random.default_rng(3)
    x = np.zeros((n, width))
    x[np.arange(n), rng.permutation(width)[:n]] = 1.0
    assert _exact_unbiased_self_hsic(x) == 0
    y = rng.normal(size=(n, 5))
    x, y = x.astype(dtype), y.astype(dtype)
    for metric, params in (("unbiased_cka", {}), ("cka", {"unbiased": True}), ("cknna", {"topk": None})):
        for keep in (4096, 0):  # Gram path, feature path
            with pytest.raises(ValueError, match=r"^x: layer 0 has an unbiased self-HSIC"):
                layer_matrix(metric, Representation(x, keep_gram_max_n=keep), y, **params)
    dup = x.copy()
    dup[1] = dup[0]
    assert _exact_unbiased_self_hsic(dup.astype(np.float64)) > 0
    want = ref.cka(dup.astype(np.float64), y.astype(np.float64), unbiased=True)
    assert score("unbiased_cka", dup, y) == pytest.approx(want, abs=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, offset", [(20, 2.0), (20, 4.0), (100, 7.0)])
def test_an_exactly_zero_self_hsic_is_refused_through_a_cached_gram_with_an_offset(dtype, n: int, offset: float) -> None:
    """The pipeline's path: Grams cached (``cache_grams``) and shared by every metric. A layer
    whose rows share an offset up to ``CENTRED_FROM_GRAM_MAX_RATIO`` times their spread has its
    centred kernel taken as ``H G H`` of the cached Gram, which carries the rounding of the
    offset's entries, not of the centred ones: distinct one-hot rows plus a common offset (exact
    unbiased self-HSIC 0) were scored 0.038 (float32, N=20) and 1e-10 (float64) by unbiased CKA
    and CKNNA there while the raw arrays were refused. The floor of the check now comes from the
    Gram that was centred."""
    rng = np.random.default_rng(5)
    width = n + 3
    x = np.zeros((n, width))
    x[np.arange(n), rng.permutation(width)[:n]] = 1.0
    x = x + offset / np.sqrt(width) * rng.normal(size=(1, width))  # |m|^2 about offset^2, spread about 1
    assert _exact_unbiased_self_hsic(x) == pytest.approx(0, abs=1e-9)
    y = rng.normal(size=(n, 5)).astype(dtype)
    rep = Representation(x.astype(dtype)).cache_grams()
    assert rep.centring_source(0) is not None  # the H G H route
    for metric, params in (("unbiased_cka", {}), ("cknna", {"topk": None})):
        with pytest.raises(ValueError, match=r"^x: layer 0 has an unbiased self-HSIC"):
            layer_matrix(metric, rep, Representation(y).cache_grams(), **params)
    # a real layer with the same offset is scored, as the reference scores it
    z = rng.normal(size=(n, width)) / np.sqrt(width) + offset / np.sqrt(width) * rng.normal(size=(1, width))
    want = ref.cka(z, y.astype(np.float64), unbiased=True)
    got = layer_matrix("unbiased_cka", Representation(z.astype(dtype)).cache_grams(), y)[0, 0]
    assert got == pytest.approx(want, abs=1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, offset, sigma", [(20, 7.0, 0.5), (100, 7.0, 0.5), (100, 4.0, 0.25)])
def test_an_rbf_kernel_of_equidistant_rows_is_refused_through_a_cached_gram_with_an_offset(
        dtype, n: int, offset: float, sigma: float) -> None:
    """Distinct one-hot rows plus a common offset are equidistant: the RBF kernel's off-diagonal is
    constant, its unbiased self-HSIC exactly 0, and the feature path (``keep_gram_max_n=0``)
    refuses the layer. Through a cached Gram (the pipeline's path) the distances come from
    ``H G H``, which carries the rounding of the offset's entries: unbiased RBF CKA scored that
    rounding (2.5e-5 in float32, -3.6e-13 in float64, at N=20, ``rbf_sigma=0.5``; docs/metrics.md
    had said 1e-18 or less). A real layer with the same offset is still scored as the reference."""
    rng = np.random.default_rng(5)
    width = n + 3
    x = np.zeros((n, width))
    x[np.arange(n), rng.permutation(width)[:n]] = 1.0
    x = x + offset / np.sqrt(width) * rng.normal(size=(1, width))
    y = rng.normal(size=(n, 5)).astype(dtype)
    params = {"kernel_metric": "rbf", "rbf_sigma": sigma}
    for keep in (0, 4096):  # feature path, Gram path
        rep = Representation(x.astype(dtype), keep_gram_max_n=keep)
        rep = rep.cache_grams() if keep else rep
        assert (rep.centring_source(0) is not None) == bool(keep)
        with pytest.raises(ValueError, match=r"^x: layer 0 has an unbiased self-HSIC"):
            layer_matrix("unbiased_cka", rep, Representation(y, keep_gram_max_n=keep), **params)
    z = rng.normal(size=(n, width)) / np.sqrt(width) + offset / np.sqrt(width) * rng.normal(size=(1, width))
    want = ref.cka(z, y.astype(np.float64), kernel="rbf", sigma=sigma, unbiased=True)
    rep = Representation(z.astype(dtype)).cache_grams()
    assert rep.centring_source(0) is not None
    cached = rep.cached_gram(0).clone()
    got = layer_matrix("unbiased_cka", rep, Representation(y).cache_grams(), **params)[0, 0]
    assert torch.equal(rep.cached_gram(0), cached)  # the floor's source is computed on a copy
    assert got == pytest.approx(want, abs=1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("metric, params", [("cka", {}), ("unbiased_cka", {}), ("cka", {"kernel_metric": "rbf"})])
def test_float32_cka_of_a_layer_with_itself_is_one_at_large_n(metric: str, params: dict) -> None:
    """The cross HSIC was one float32 product over the N(N-1)/2 packed kernel entries: CKA of a
    layer with itself drifted to 1 - 2.5e-4 at N=3000 while the float64 self terms did not.
    Now it equals the float64 score of the same values to ~1e-9 (not exactly 1: the paper's
    +1e-6 in the denominator)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 32)).astype(np.float32) + 1.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = score(metric, x, x, **params)
    assert got == pytest.approx(score(metric, x.astype(np.float64), x.astype(np.float64), **params), abs=1e-9)
    assert layer_matrix(metric, [x], [x, x[::-1].copy()], **params)[0, 0] == pytest.approx(got, abs=1e-12)


@pytest.mark.parametrize("dtype, tiny", [(np.float64, 1e-170), (np.float64, 1e-300), (np.float64, 5e-324),
                                         (np.float32, 1e-23), (np.float32, 1e-46), (np.float32, 1e-200)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_a_tiny_rbf_sigma_gives_the_identity_kernel_limit_not_nan(dtype, tiny: float, unbiased: bool) -> None:
    """2 sigma^2 underflowed to -0 in the kernel's dtype and the diagonal became 0/0 = NaN. The
    limit is K = I, which sigma = 1e-3 already reaches for these (well separated) rows; its
    unbiased self-HSIC is 0 (zero diagonal, nothing else), refused as for sigma = 1e-3."""
    x, y = paired(n=40, seed=11)
    x, y = x.astype(dtype), y.astype(dtype)
    if unbiased:
        for sigma in (1e-3, tiny):
            with pytest.raises(ValueError, match="unbiased self-HSIC of 0"):
                score("cka", x, y, kernel_metric="rbf", rbf_sigma=sigma, unbiased=True)
        return
    limit = score("cka", x, y, kernel_metric="rbf", rbf_sigma=1e-3, unbiased=unbiased)
    got = score("cka", x, y, kernel_metric="rbf", rbf_sigma=tiny, unbiased=unbiased)
    assert np.isfinite(got) and got == pytest.approx(limit, abs=1e-12)


@pytest.mark.parametrize("metric, unbiased", [("cka", False), ("unbiased_cka", True)])
def test_null_of_float32_features_with_large_rows_is_finite_and_exact(metric: str, unbiased: bool) -> None:
    """Permutation nulls multiply two sides' packed float32 kernels: with rows of norm ~1e10
    (kernel values ~1e20) the products overflowed and every null draw was NaN. The partner's
    entries are scaled by a power of two first (exact), so each draw is the CKA of ``y[perm]``."""
    from tasks.metrics import calibrate

    rng = np.random.default_rng(10)
    z = rng.normal(size=(40, 3))
    x = ((z @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(40, 8))) * 1e9).astype(np.float32)
    y = ((z @ rng.normal(size=(3, 6)) + 0.3 * rng.normal(size=(40, 6))) * 1e9).astype(np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    res = calibrate(metric, x, y, permutations=4, seed=5)
    assert res.observed == pytest.approx(ref.cka(x64, y64, unbiased=unbiased), rel=1e-5)
    g = torch.Generator().manual_seed(5)
    for t in range(4):
        perm = torch.randperm(40, generator=g).numpy()
        assert res.null[t] == pytest.approx(ref.cka(x64, y64[perm], unbiased=unbiased), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("metric", ["cka", "unbiased_cka"])
def test_nulls_leave_a_one_layer_partners_cached_kernel_unchanged(metric: str) -> None:
    """A one-layer side's transposed packed kernel is a view of the cached one: scaling it in place
    rescaled the cache once per batch of permutations, so later draws, a second calibration and
    any later score on the same representation were wrong (the pipeline keeps one per model)."""
    from tasks.metrics import calibrate

    xs = [a.astype(np.float32) for a in layers(n=30, widths=(5, 7), seed=11)]
    y = layers(n=30, widths=(4,), seed=12)[0].astype(np.float32)
    rx, ry = Representation(xs), Representation([y])
    before = layer_matrix(metric, rx, ry)
    unbiased = metric == "unbiased_cka"
    for _ in range(2):  # 150 permutations: three batches of null_matrices
        res = calibrate(metric, rx, ry, permutations=150, seed=2)
        g = torch.Generator().manual_seed(2)
        for t in range(150):
            perm = torch.randperm(30, generator=g).numpy()
            want = max(ref.cka(np.asarray(rx.layers[i], np.float64), np.asarray(ry.layers[0], np.float64)[perm], unbiased=unbiased)
                       for i in range(2))
            assert res.null[t] == pytest.approx(want, rel=1e-4, abs=1e-6), t
    assert np.array_equal(layer_matrix(metric, rx, ry), before)


def test_median_heuristic_failure_names_the_side_and_layer() -> None:
    """A layer whose median pairwise distance is 0 (most rows identical, not all) is that side's
    input error: the message names the side and the layer (it named neither)."""
    x, y = paired(n=10)
    y2 = np.zeros((10, 3))
    y2[0, 0], y2[1, 1] = 1.0, 2.0  # 8 identical rows: 28 of the 45 distances are 0
    with pytest.raises(ValueError, match=r"^y: layer 1: median pairwise distance is 0"):
        layer_matrix("cka_rbf_median", [x], [y, y2])


def test_unbiased_terms_size_is_the_sum_of_the_three_terms_sizes() -> None:
    """``unbiased_terms_size``: ``(|tr(K~L~)| + |1'K~1 1'L~1| / ((m-1)(m-2)) + 2 |1'K~L~1| / (m-2))
    / (m(m-3))`` (Song et al.'s three terms, absolute values), here from dense zero-diagonal
    kernels with negative totals and cross terms of both signs; the same terms, signed, give
    the unbiased HSIC of the reference."""
    from tasks.metrics.hsic import unbiased_from_parts, unbiased_terms_size

    rng = np.random.default_rng(11)
    m = 7
    k = rng.normal(size=(m, m)) - 0.6
    l = rng.normal(size=(m, m)) + 0.3
    k, l = k + k.T, l + l.T
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(m)
    t1 = np.trace(k @ l)
    t2 = (one @ k @ one) * (one @ l @ one) / ((m - 1) * (m - 2))
    t3 = 2.0 * (one @ k @ l @ one) / (m - 2)
    assert min(abs(t1), abs(t2), abs(t3)) > 1e-3 and (t1 < 0 or t2 < 0 or t3 < 0)  # a case where abs matters
    parts = [torch.tensor(v, dtype=torch.float64) for v in
             (np.sum(k * l), k.sum(), l.sum(), k.sum(1) @ l.sum(1))]
    size = unbiased_terms_size(*parts, m)
    assert float(size) == pytest.approx((abs(t1) + abs(t2) + abs(t3)) / (m * (m - 3)), rel=1e-12)
    assert float(unbiased_from_parts(*parts, m)) == pytest.approx((t1 + t2 - t3) / (m * (m - 3)), rel=1e-12)
    assert float(unbiased_from_parts(*parts, m)) == pytest.approx(ref.hsic_unbiased(k, l), rel=1e-12)


def test_median_follows_numpy_convention_for_every_size() -> None:
    """``_median`` (the RBF width heuristic): the middle value for odd sizes, the mean of the two
    middle values for even sizes, as ``np.median``."""
    from tasks.metrics.kernel_metrics import _median

    rng = np.random.default_rng(13)
    for size in range(1, 12):
        v = rng.permutation(np.arange(size, dtype=np.float64) ** 2 + 0.5)
        assert _median(torch.from_numpy(v)) == np.median(v)


def test_encode_kernels_refuses_fewer_kernels_than_counted() -> None:
    """``count`` kernels announced, fewer given: refused (the state would hold unset rows)."""
    from tasks.metrics.kernel_metrics import encode_kernels

    k = torch.from_numpy(ref.linear_kernel(paired(n=6, seed=3)[0]))
    for unbiased in (False, True):
        with pytest.raises(ValueError, match="expected 2 kernels"):
            encode_kernels(iter([(k, False, False)]), unbiased, count=2)


@pytest.mark.parametrize("unbiased", [False, True])
def test_an_empty_stack_of_kernels_adds_nothing(unbiased: bool) -> None:
    """A `(0, N, N)` stack among the kernels (a width group with no layer) is skipped: its clean-up
    named the loop's kernel, unbound when the stack was empty (UnboundLocalError)."""
    from tasks.metrics.kernel_metrics import encode_kernels

    x = torch.randn(6, 3, dtype=torch.float64)
    k = x @ x.T
    alone = encode_kernels([(k, False, False)], unbiased, count=1)
    with_empty = encode_kernels([(torch.empty(0, 6, 6, dtype=torch.float64), False, False), (k, False, False)], unbiased, count=1)
    assert torch.equal(alone.upper, with_empty.upper)
    assert torch.equal(alone.self_hsic, with_empty.self_hsic)


@pytest.mark.parametrize("metric", ["cka", "unbiased_cka"])
def test_feature_path_null_draws_equal_the_definition_on_permuted_rows(metric: str) -> None:
    """Linear CKA on the feature path (``keep_gram_max_n`` below N, as at large N) permutes its
    encoding (centred features, and for the unbiased HSIC the squared row norms and kernel row
    sums): each null draw is the max over layer pairs of CKA of ``x`` against ``y[perm]``, from
    the float64 reference, for the documented permutation stream."""
    from tasks.metrics import calibrate

    xs, ys = layers(n=24, seed=5), layers(n=24, widths=(6, 10), seed=6)
    res = calibrate(metric, Representation(xs, keep_gram_max_n=0), Representation(ys, keep_gram_max_n=0),
                    permutations=4, seed=3)
    gen = torch.Generator().manual_seed(3)
    for t in range(4):
        perm = torch.randperm(24, generator=gen).numpy()
        want = max(ref.cka(x, y[perm], unbiased=metric == "unbiased_cka") for x in xs for y in ys)
        assert res.null[t] == pytest.approx(want, abs=1e-10)
