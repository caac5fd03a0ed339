"""Degenerate and awkward inputs, every registered metric, against float64 references.

The references below are written here from the definitions in ``docs/metrics.md`` (plain numpy,
Python loops, exact integers where ties matter); they import nothing from ``tasks.metrics`` nor
from ``tests/tasks/metrics/reference.py``. Each test feeds ``score``, ``layer_matrix``,
``calibrate`` or ``bootstrap_ci`` an edge case (exact ties, duplicate and zero rows, constant
columns, width 1, rank deficiency, the smallest ``N``, ``topk = N - 1``, extreme magnitudes,
every input dtype and memory layout, mixed layer widths) and checks the number against the
reference, or that the input is refused with an error that says what is wrong.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from tasks.metrics import METRICS, Representation, bootstrap_ci, calibrate, layer_matrix, score

LIST_METRICS = ("mutual_knn", "jaccard_knn", "cycle_knn", "lcs_knn", "edit_distance_knn")
KNN_METRICS = (*LIST_METRICS, "cknna")


# --------------------------------------------------------------------------------------------
# float64 references, from the definitions
# --------------------------------------------------------------------------------------------

def _similarities(z: np.ndarray) -> list[list[float]] | list[list[int]]:
    """Inner products of the rows. Integer-valued rows: exact Python integers (so exact ties stay
    ties); otherwise float64 products, each computed once per unordered pair (identical rows then
    get identical products)."""
    if np.all(np.isfinite(z)) and np.array_equal(z, np.round(z)) and np.abs(z).max() < 2**20:
        rows = [[int(v) for v in row] for row in z]
        return [[sum(a * b for a, b in zip(r, s)) for s in rows] for r in rows]
    n = len(z)
    g = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            g[i][j] = g[j][i] = float(np.dot(z[i], z[j]))
    return g


def ref_lists(z: np.ndarray, k: int, exclude_self: bool = True) -> list[list[int]]:
    """Each row's ``k`` neighbours: similarity descending, then index ascending."""
    g = _similarities(np.asarray(z, dtype=np.float64))
    n = len(g)
    return [sorted((j for j in range(n) if not (exclude_self and j == i)), key=lambda j: (-g[i][j], j))[:k]
            for i in range(n)]


def _lcs(a: list[int], b: list[int]) -> int:
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, u in enumerate(a):
        for j, v in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if u == v else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


def _levenshtein(a: list[int], b: list[int]) -> int:
    t = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i, u in enumerate(a):
        for j, v in enumerate(b):
            t[i + 1][j + 1] = min(t[i][j + 1] + 1, t[i + 1][j] + 1, t[i][j] + (u != v))
    return t[-1][-1]


def ref_list_metric(metric: str, x: np.ndarray, y: np.ndarray, k: int) -> float:
    """The list metrics as integer totals divided once (exact counts)."""
    a, b = ref_lists(x, k), ref_lists(y, k)
    n = len(a)
    if metric == "mutual_knn":
        return sum(len(set(a[i]) & set(b[i])) for i in range(n)) / (n * k)
    if metric == "jaccard_knn":
        return float(np.mean([len(set(a[i]) & set(b[i])) / len(set(a[i]) | set(b[i])) for i in range(n)]))
    if metric == "cycle_knn":
        return sum(any(i in a[j] for j in b[i]) for i in range(n)) / n
    if metric == "lcs_knn":
        return sum(_lcs(a[i], b[i]) for i in range(n)) / n
    if metric == "edit_distance_knn":
        return 1 - sum(_levenshtein(a[i], b[i]) for i in range(n)) / (n * k)
    raise KeyError(metric)


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = len(k)
    h = np.eye(n) - 1.0 / n
    return float(np.trace(k @ h @ l @ h))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012, as the paper's code writes it (``K~ * L~^T``: masked kernels need not
    be symmetric)."""
    m = len(k)
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    total = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * (kt @ lt).sum() / (m - 2)
    return float(total / (m * (m - 3)))


def kernel(z: np.ndarray, kind: str, sigma: float | str) -> np.ndarray:
    if kind == "ip":
        return z @ z.T
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    if sigma == "median":
        sigma = float(np.median(np.sqrt(d2[np.triu_indices(len(z), 1)])))
    return np.exp(-d2 / (2 * float(sigma) ** 2))


def ref_cka(x, y, kernel_metric="ip", rbf_sigma=1.0, unbiased=False) -> float:
    k, l = kernel(x, kernel_metric, rbf_sigma), kernel(y, kernel_metric, rbf_sigma)
    h = hsic_unbiased if unbiased else hsic_biased
    return h(k, l) / (math.sqrt(h(k, k) * h(l, l)) + 1e-6)


def ref_cknna(x, y, topk=10, unbiased=True, distance_agnostic=False) -> float:
    n = len(x)

    def mask(z):
        m = np.zeros((n, n))
        for i, row in enumerate(ref_lists(z, topk, exclude_self=unbiased)):
            m[i, row] = 1.0
        return m

    kx, ky = x @ x.T, y @ y.T
    mx, my = mask(x), mask(y)
    h = hsic_unbiased if unbiased else hsic_biased

    def sim(a, b, ma, mb):
        both = ma * mb
        return h(both, both) if distance_agnostic else h(both * a, both * b)

    sxx, syy = sim(kx, kx, mx, mx), sim(ky, ky, my, my)
    if min(sxx, syy) <= 0:
        raise ValueError("a masked self-similarity is not positive: CKNNA undefined")
    return sim(kx, ky, mx, my) / (math.sqrt(sxx * syy) + 1e-6)


def _centred(z):
    return z - z.mean(0)


def ref_svcca(x, y, cca_dim=10) -> float:
    def top(z):
        z = _centred(z)
        z = z / (z.std(0, ddof=1) + 1e-8)
        return np.linalg.svd(z, full_matrices=False)[0][:, :cca_dim]

    return float(np.linalg.svd(top(x).T @ top(y), compute_uv=False).mean())


def ref_procrustes(x, y) -> float:
    xc, yc = _centred(x), _centred(y)
    return float(np.linalg.svd(xc.T @ yc, compute_uv=False).sum() / (np.linalg.norm(xc) * np.linalg.norm(yc)))


def ref_linear_regression(x, y, ridge=0.0, eps=2.0 ** -52) -> float:
    """Least squares of the centred ``y`` on the centred ``x``; directions of ``x`` below numpy's
    cutoff ``max(N, D) eps s_max`` are left out, ``eps`` that of the precision ``x`` was given in
    (float32 rounding of a low-rank layer is noise, not signal: docs/metrics.md)."""
    xc, yc = _centred(x), _centred(y)
    if ridge:
        b = np.linalg.solve(xc.T @ xc + ridge * np.eye(xc.shape[1]), xc.T @ yc)
    else:
        b = np.linalg.lstsq(xc, yc, rcond=max(xc.shape) * eps)[0]
    return float(1 - ((yc - xc @ b) ** 2).sum() / (yc ** 2).sum())


def ref_rsa(x, y) -> float:
    def ranks(z):
        iu = np.triu_indices(len(z), 1)
        return rankdata(((z[:, None] - z[None]) ** 2).sum(-1)[iu])

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def reference(metric: str, x, y, **p) -> float:
    eps = np.finfo(np.float64 if _dtype_of(x) == np.float64 else np.float32).eps
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if metric in LIST_METRICS:
        return ref_list_metric(metric, x, y, p.get("topk", 10))
    if metric == "cka":
        return ref_cka(x, y, p.get("kernel_metric", "ip"), p.get("rbf_sigma", 1.0), p.get("unbiased", False))
    if metric == "unbiased_cka":
        return ref_cka(x, y, p.get("kernel_metric", "ip"), p.get("rbf_sigma", 1.0), True)
    if metric == "cka_rbf_median":
        return ref_cka(x, y, "rbf", "median", p.get("unbiased", False))
    if metric == "cknna":
        return ref_cknna(x, y, p.get("topk", 10), p.get("unbiased", True), p.get("distance_agnostic", False))
    if metric == "svcca":
        return ref_svcca(x, y, p.get("cca_dim", 10))
    if metric == "procrustes":
        return ref_procrustes(x, y)
    if metric == "linear_regression":
        return ref_linear_regression(x, y, p.get("ridge", 0.0), eps)
    if metric == "rsa_spearman":
        return ref_rsa(x, y)
    raise KeyError(f"no reference for {metric}")


def _dtype_of(z):
    """float64 for float64 data and Python lists (read as float64); else the computation dtype
    float32."""
    if isinstance(z, (list, tuple)):
        return np.float64
    if torch.is_tensor(z):
        return np.float64 if z.dtype == torch.float64 else np.float32
    return np.float64 if np.asarray(z).dtype == np.float64 else np.float32


def small_params(metric: str, topk: int = 4, cca_dim: int = 2) -> dict:
    if metric in KNN_METRICS:
        return {"topk": topk}
    if metric == "svcca":
        return {"cca_dim": cca_dim}
    return {}


def as_f64(z) -> np.ndarray:
    return z.double().numpy() if torch.is_tensor(z) else np.asarray(z, dtype=np.float64)


def unit_rows(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def correlated(n: int, dx: int, dy: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = x @ rng.normal(size=(dx, dy)) + 0.7 * rng.normal(size=(n, dy))
    return unit_rows(x), unit_rows(y)


def test_every_registered_metric_has_a_reference_here() -> None:
    """A metric registered later without a reference in this file makes this fail."""
    x, y = correlated(12, 4, 3, 0)
    for metric in METRICS:
        assert np.isfinite(reference(metric, x, y, **small_params(metric)))


# --------------------------------------------------------------------------------------------
# exact ties: duplicate rows, a zero row, width 1
# --------------------------------------------------------------------------------------------

def tied_integers(seed: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Small integer rows (every product exact in float32 and float64), with copies of rows on
    both sides and a zero row in ``x``: neighbour lists are decided by the tie rule."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-3, 4, size=(9, width))
    x = np.concatenate([base, base[[0, 0, 2, 5]], np.zeros((1, width), dtype=base.dtype)])  # N = 14
    x = x[rng.permutation(len(x))]
    y = rng.integers(-2, 3, size=(len(x), 3))
    y[[3, 8, 11]] = y[1]
    return x, y


@pytest.mark.parametrize("metric", KNN_METRICS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [1, 4])
def test_exact_ties_follow_similarity_then_index_in_score_and_layer_matrix(metric, dtype, width) -> None:
    """Ties between copies (and a zero row's all-equal similarities) are broken by the lowest index,
    whichever entry point is used: ``score``, ``layer_matrix`` among other layers, a
    ``Representation`` with cached Gram matrices."""
    x, y = (z.astype(dtype) for z in tied_integers(7 + width, width))
    tol = 1e-6 if metric == "cknna" and dtype == np.float32 else 1e-12  # CKNNA's kernel sums in float32
    for k in (1, 3, 6, len(x) - 1):
        if metric == "cknna" and k < 2:
            continue
        want = reference(metric, x, y, topk=k)
        assert score(metric, x, y, topk=k) == pytest.approx(want, abs=tol), k
        other = np.arange(len(x) * 2, dtype=dtype).reshape(len(x), 2) ** 2  # a tie-free layer beside it
        m = layer_matrix(metric, [other, x], [y, x], topk=k)
        assert m[1, 0] == pytest.approx(want, abs=tol), k
        assert m[1, 1] == pytest.approx(reference(metric, x, x, topk=k), abs=tol), k
        ra, rb = Representation([x]), Representation([y])
        ra.cache_grams()
        rb.cache_grams()
        assert layer_matrix(metric, ra, rb, topk=k)[0, 0] == pytest.approx(want, abs=tol), k


@pytest.mark.parametrize("unbiased", [True, False])
def test_cknna_biased_and_unbiased_masks_settle_ties_by_index(unbiased) -> None:
    """The biased estimator's mask counts self as a candidate, the unbiased one's does not; both
    take the lowest indices among tied candidates."""
    x, y = tied_integers(3, 4)
    for k in (2, 5, len(x) - 1):
        want = ref_cknna(x.astype(float), y.astype(float), k, unbiased=unbiased)
        assert score("cknna", x.astype(np.float32), y.astype(np.float32), topk=k, unbiased=unbiased) == \
            pytest.approx(want, abs=1e-6)
        assert score("cknna", x.astype(np.float64), y.astype(np.float64), topk=k, unbiased=unbiased) == \
            pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_duplicates_of_real_valued_rows_score_alike_through_every_entry_point(dtype) -> None:
    """Real-valued rows with copies: the BLAS product may give a row's products with two copies
    different last bits (MKL float64: most datasets; float32: a few); the engine holds copies as
    one value, so the lists keep the lowest-index copies as the reference (each pair's product
    computed once) does: every k-NN metric equals it (before: mutual k-NN 0.0519 against 0.0481
    at k=3), through ``score``, ``layer_matrix`` and a Representation with cached Grams."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(90, 17))
    x[rng.choice(90, 30, replace=False)] = x[rng.integers(0, 90, 30)]
    x = unit_rows(x).astype(dtype)
    y = (rng.normal(size=(90, 5)) + 2 * x[:, :5]).astype(dtype)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    for k in (3, 5):
        for metric in LIST_METRICS:
            assert score(metric, x, y, topk=k) == pytest.approx(ref_list_metric(metric, x64, y64, k), abs=1e-12), (metric, k)
        assert score("cknna", x, y, topk=k) == pytest.approx(ref_cknna(x64, y64, topk=k), abs=1e-5), ("cknna", k)
    for metric in KNN_METRICS:
        s = score(metric, x, y, topk=5)
        assert layer_matrix(metric, [x, y], [y], topk=5)[0, 0] == pytest.approx(s, abs=1e-15), metric
        ra, rb = Representation([x]), Representation([y])
        ra.cache_grams()
        rb.cache_grams()
        assert layer_matrix(metric, ra, rb, topk=5)[0, 0] == pytest.approx(s, abs=1e-15), metric


# --------------------------------------------------------------------------------------------
# degenerate shapes and values, every metric
# --------------------------------------------------------------------------------------------

def degenerate_case(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(DEGENERATE.index(name))
    if name == "constant column":
        x = rng.normal(size=(20, 5))
        x[:, 2] = 3.0
        return x, rng.normal(size=(20, 4)) + x[:, :4]
    if name == "zero row":
        x = rng.normal(size=(20, 5))
        x[4] = 0.0
        return x, rng.normal(size=(20, 4)) + x[:, :4]
    if name == "width 1":
        x = rng.normal(size=(15, 1))
        return x, rng.normal(size=(15, 1)) + x
    if name == "width 2 < N":
        return rng.normal(size=(15, 2)), rng.normal(size=(15, 3))
    if name == "rank 2 of width 8":
        return rng.normal(size=(15, 2)) @ rng.normal(size=(2, 8)), rng.normal(size=(15, 3))
    if name == "width above N":
        x = rng.normal(size=(12, 30))
        return x, x[:, :4] + 0.5 * rng.normal(size=(12, 4))
    raise KeyError(name)


DEGENERATE = ["constant column", "zero row", "width 1", "width 2 < N", "rank 2 of width 8", "width above N"]


@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_features_score_as_the_definition(case) -> None:
    x, y = degenerate_case(case)
    cca = 1 if case == "width 1" else 2
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-5)):
        xd, yd = x.astype(dtype), y.astype(dtype)
        for metric in METRICS:
            p = small_params(metric, topk=4, cca_dim=cca)
            want = reference(metric, xd, yd, **p)
            assert score(metric, xd, yd, **p) == pytest.approx(want, abs=tol), (metric, dtype)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_smallest_n_and_topk_n_minus_1(n) -> None:
    """At the smallest N each metric accepts, with ``topk = N - 1``, the number is the definition's;
    below it (unbiased HSIC: N >= 4; CKNNA's topk >= 2; Spearman of one distance) a clear error."""
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    for metric in METRICS:
        p = small_params(metric, topk=max(n - 1, 2) if metric == "cknna" else n - 1, cca_dim=1)
        unbiased = metric == "unbiased_cka" or metric == "cknna"
        if unbiased and n < 4:
            with pytest.raises(ValueError, match="N >= 4"):
                score(metric, x, y, **p)
        elif metric == "rsa_spearman" and n == 2:
            with pytest.raises(ValueError, match="single pairwise distance"):
                score(metric, x, y, **p)
        else:
            assert score(metric, x, y, **p) == pytest.approx(reference(metric, x, y, **p), abs=1e-9), metric


@pytest.mark.parametrize("metric", LIST_METRICS)
def test_topk_beyond_n_minus_1_or_not_an_integer_is_refused(metric) -> None:
    x, y = correlated(8, 3, 3, 1)
    for bad in (8, 9, 0, -1):
        with pytest.raises(ValueError, match=r"topk must be in \[1, N-1\] = \[1, 7\]"):
            score(metric, x, y, topk=bad)
        with pytest.raises(ValueError, match="topk"):
            layer_matrix(metric, [x, x], [y], topk=bad)
    for bad in (2.0, 2.5, True, None, "3"):
        with pytest.raises(ValueError, match="topk must be an integer"):
            score(metric, x, y, topk=bad)
    assert score(metric, x, y, topk=np.int64(3)) == pytest.approx(reference(metric, x, y, topk=3), abs=1e-12)


def test_cknna_topk_limits_depend_on_the_estimator() -> None:
    x, y = correlated(8, 3, 3, 2)
    with pytest.raises(ValueError, match=r"\[2, N-1\] = \[2, 7\]"):
        score("cknna", x, y, topk=8)
    with pytest.raises(ValueError, match="topk >= 2"):
        score("cknna", x, y, topk=1)
    # biased: self is a candidate, topk = N keeps every pair
    assert score("cknna", x, y, topk=8, unbiased=False) == pytest.approx(ref_cknna(x, y, 8, unbiased=False), abs=1e-12)
    # None = every neighbour: the full off-diagonal mask (unbiased), i.e. topk = N - 1
    assert score("cknna", x, y, topk=None) == pytest.approx(ref_cknna(x, y, 7), abs=1e-12)


# --------------------------------------------------------------------------------------------
# magnitudes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2.0 ** 49, 1e10, 1e-5, 2.0 ** -48])
def test_float32_magnitudes_inside_the_limits_keep_float64_accuracy(scale) -> None:
    """Rows of norm up to 2^49 and values down to 2^-48, in float32: no overflow or underflow in
    the Gram, the kernels or HSIC's products; within 1e-5 relative of the float64 reference."""
    x, y = correlated(24, 6, 5, 3)
    xs, ys = (x * scale).astype(np.float32), (y * scale).astype(np.float32)
    for metric in METRICS:
        p = small_params(metric, cca_dim=3)
        want = reference(metric, xs, ys, **p)
        assert score(metric, xs, ys, **p) == pytest.approx(want, rel=1e-5, abs=1e-300), metric


@pytest.mark.parametrize("scale, message", [(1e20, "above float32's limit"), (1e-20, "below float32's range")])
def test_float32_magnitudes_beyond_the_limits_are_refused_and_float64_scores_them(scale, message) -> None:
    x, y = correlated(24, 6, 5, 4)
    for metric in METRICS:
        p = small_params(metric, cca_dim=3)
        with pytest.raises(ValueError, match=f"^x: layer 0 .*{message}"):
            score(metric, (x * scale).astype(np.float32), y.astype(np.float32), **p)
        want = reference(metric, x * scale, y, **p)
        assert score(metric, x * scale, y, **p) == pytest.approx(want, rel=1e-9, abs=1e-300), metric


# --------------------------------------------------------------------------------------------
# input dtypes and memory layouts
# --------------------------------------------------------------------------------------------

def input_forms(x: np.ndarray, y: np.ndarray) -> dict:
    ix, iy = np.round(x * 10).astype(np.int64), np.round(y * 10).astype(np.int64)
    return {
        "float16 tensor": (torch.from_numpy(x).half(), torch.from_numpy(y).half()),
        "bfloat16 tensor": (torch.from_numpy(x).bfloat16(), torch.from_numpy(y).bfloat16()),
        "float16 numpy": (x.astype(np.float16), y.astype(np.float16)),
        "int64 numpy": (ix, iy),
        "int64 tensor": (torch.from_numpy(ix), torch.from_numpy(iy)),
        "float32 tensor": (torch.from_numpy(x).float(), torch.from_numpy(y).float()),
        "transposed view": (np.ascontiguousarray(x.T).T, np.asfortranarray(y)),
        "strided view": (np.repeat(x, 2, axis=1)[:, ::2], np.repeat(y, 2, axis=0)[::2]),
        "reversed columns": (x[:, ::-1], y[:, ::-1]),
        "transposed tensor": (torch.from_numpy(np.ascontiguousarray(x.T)).T, torch.from_numpy(y)),
        "nested lists": (x.tolist(), y.tolist()),
    }


@pytest.mark.parametrize("form", list(input_forms(*correlated(4, 2, 2, 0))))
def test_every_input_dtype_and_layout_scores_its_values(form) -> None:
    """Whatever the dtype (computed in float32, float64 for float64) or the strides, the score is
    the definition's on the values given (read as float64)."""
    x, y = correlated(24, 6, 5, 5)
    a, b = input_forms(x, y)[form]
    for metric in METRICS:
        p = small_params(metric, cca_dim=3)
        want = reference(metric, as_f64(a), as_f64(b), **p)
        assert score(metric, a, b, **p) == pytest.approx(want, abs=2e-5), metric


def test_layer_lists_of_mixed_widths_dtypes_and_kinds_equal_the_reference_per_pair() -> None:
    """La = 3 numpy layers (widths 4, 7, 3; one float32) against Lb = 2 torch layers (widths 5, 2):
    each entry is the definition on that pair (a float32 layer beside float64 ones is computed in
    float64, so float64 accuracy)."""
    rng = np.random.default_rng(6)
    z = rng.normal(size=(20, 3))
    xs = [z @ rng.normal(size=(3, w)) + 0.5 * rng.normal(size=(20, w)) for w in (4, 7, 3)]
    ys = [z[:, :2] @ rng.normal(size=(2, w)) + 0.5 * rng.normal(size=(20, w)) for w in (5, 2)]
    xs[1] = xs[1].astype(np.float32)
    for metric in METRICS:
        p = small_params(metric)
        got = layer_matrix(metric, xs, [torch.from_numpy(v) for v in ys], **p)
        want = np.array([[reference(metric, a, b, **p) for b in ys] for a in xs])
        assert got.shape == (3, 2)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=metric)


# --------------------------------------------------------------------------------------------
# calibrate and bootstrap_ci
# --------------------------------------------------------------------------------------------

COUNT_METRICS = {"mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"}


def ref_calibration(metric, xs, ys, permutations, alpha, seed, aggregate, p):
    """Null: ``y[perm_t]`` for the ``t``-th ``torch.randperm`` of a generator seeded with ``seed``;
    tau the ceil((1-alpha)(K+1))-th smallest of {observed} ∪ null; p = (1 + #{null >= obs})/(K+1);
    calibrated = clamp((obs - tau)/(max - tau), 0, 1)."""
    pool = np.max if aggregate == "max" else np.mean
    n = len(xs[0])

    def stat(perm):
        return float(pool([[reference(metric, a, b[perm], **p) for b in ys] for a in xs]))

    observed = stat(np.arange(n))
    g = torch.Generator().manual_seed(seed)
    null = np.array([stat(torch.randperm(n, generator=g).numpy()) for _ in range(permutations)])
    ordered = np.sort(np.append(null, observed))
    tau = ordered[math.ceil((1 - alpha) * (permutations + 1)) - 1]
    slack = 0.0 if metric in COUNT_METRICS and aggregate == "max" else 1e-12 * abs(observed)
    p_value = (1 + np.sum(null >= observed - slack)) / (permutations + 1)
    high = METRICS[metric].bounds_for(p)[1]
    calibrated = 0.0 if high <= tau or observed - tau <= slack else min(max((observed - tau) / (high - tau), 0.0), 1.0)
    return observed, tau, p_value, calibrated, null


CALIBRATIONS = [(19, 0.05, 0, "max"), (1, 0.05, 3, "max"), (9, 0.5, 7, "mean"), (5, 1e-9, 1, "max"),
                (5, 0.999, 2, "max")]


@pytest.mark.parametrize("metric", list(METRICS))
def test_calibrate_equals_its_definition_at_edge_settings(metric) -> None:
    """K = 1 (tau is the larger of two values), alpha near 0 and near 1, aggregate 'mean', a max
    over 2 x 2 layer pairs of mixed widths (float64, tie-free data)."""
    rng = np.random.default_rng(9)
    z = rng.normal(size=(14, 2))
    xs = [z @ rng.normal(size=(2, w)) + 0.6 * rng.normal(size=(14, w)) for w in (4, 3)]
    ys = [z @ rng.normal(size=(2, w)) + 0.6 * rng.normal(size=(14, w)) for w in (5, 2)]
    p = small_params(metric, topk=3)
    for k_perm, alpha, seed, agg in CALIBRATIONS:
        got = calibrate(metric, xs, ys, permutations=k_perm, alpha=alpha, seed=seed, aggregate=agg, **p)
        obs, tau, p_value, calibrated, null = ref_calibration(metric, xs, ys, k_perm, alpha, seed, agg, p)
        label = (metric, k_perm, alpha, agg)
        assert got.observed == pytest.approx(obs, abs=1e-10), label
        np.testing.assert_allclose(got.null, null, rtol=0, atol=1e-10, err_msg=str(label))
        assert got.tau == pytest.approx(tau, abs=1e-10), label
        assert got.p_value == pytest.approx(p_value, abs=1e-15), label
        assert got.calibrated == pytest.approx(calibrated, abs=1e-9), label


def test_calibrate_seed_reproducible_across_input_kinds_and_checked_settings() -> None:
    x, y = correlated(20, 4, 3, 10)
    a = calibrate("mutual_knn", [x], [y], permutations=30, seed=11, topk=3)
    b = calibrate("mutual_knn", [torch.from_numpy(x)], [y.tolist()], permutations=30, seed=11, topk=3)
    c = calibrate("mutual_knn", [x], [y], permutations=30, seed=12, topk=3)
    np.testing.assert_array_equal(a.null, b.null)
    assert not np.array_equal(a.null, c.null)
    for alpha in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            calibrate("cka", [x], [y], permutations=5, alpha=alpha)
    for k_perm in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="permutations must be an integer >= 1"):
            calibrate("cka", [x], [y], permutations=k_perm)


def ref_bootstrap(metric, xs, ys, n_boot, level, seed, p):
    """Rows ``sort(rng.choice(N, m, replace=False))``, ``m = round(N/2)``; interval
    ``estimate + c * quantile(reps - mean, tails)``, ``c = sqrt(m/(N-m))``, limited to the bounds
    and to contain the estimate; ``std = c * sd(reps)``."""
    n = len(xs[0])
    m = round(n / 2)
    estimate = max(reference(metric, a, b, **p) for a in xs for b in ys)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        rows = np.sort(rng.choice(n, m, replace=False))
        try:
            reps.append(max(reference(metric, a[rows], b[rows], **p) for a in xs for b in ys))
        except ValueError:  # undefined on this subsample: left out
            reps.append(np.nan)
    reps = np.array(reps)
    c = math.sqrt(m / (n - m))
    q_low, q_high = np.nanquantile(reps - np.nanmean(reps), [(1 - level) / 2, (1 + level) / 2])
    lo, hi = METRICS[metric].bounds_for(p)
    low = min(max(estimate + c * q_low, min(lo, estimate)), estimate)
    high = max(min(estimate + c * q_high, max(hi, estimate)), estimate)
    return estimate, low, high, c * np.nanstd(reps), int(np.isnan(reps).sum())


@pytest.mark.parametrize("metric", list(METRICS))
def test_bootstrap_on_tiny_n_equals_its_definition(metric) -> None:
    """N = 9: subsamples of 4 (round(4.5) = 4) rows, the fewest unbiased HSIC takes."""
    rng = np.random.default_rng(12)
    z = rng.normal(size=(9, 2))
    xs = [z @ rng.normal(size=(2, 4)) + 0.3 * rng.normal(size=(9, 4)), rng.normal(size=(9, 3))]
    ys = [z @ rng.normal(size=(2, 5)) + 0.3 * rng.normal(size=(9, 5))]
    p = small_params(metric, topk=2, cca_dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # degenerate-interval warnings at this N
        got = bootstrap_ci(metric, xs, ys, n_boot=12, level=0.9, seed=4, **p)
    want = ref_bootstrap(metric, xs, ys, 12, 0.9, 4, p)
    np.testing.assert_allclose((got.estimate, got.low, got.high, got.std), want[:4], rtol=0, atol=1e-9, err_msg=metric)
    assert got.resample_size == 4 and got.n_refused == want[4]


def test_bootstrap_where_every_subsample_is_too_small_says_so() -> None:
    x, y = correlated(5, 3, 3, 13)
    with pytest.raises(ValueError, match="every one of the 5 bootstrap subsamples of 2 rows was refused.*N >= 4"):
        bootstrap_ci("unbiased_cka", x, y, n_boot=5)
