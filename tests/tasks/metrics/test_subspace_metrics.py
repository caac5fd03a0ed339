"""SVCCA, Procrustes, linear regression and RSA against independent numpy/scipy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from tasks.metrics import Representation, layer_matrix, score

from . import reference as ref
from .conftest import layers, paired


@pytest.mark.parametrize("cca_dim", [1, 4, 9])
def test_svcca_matches_whitening_cca(cca_dim: int) -> None:
    x, y = paired(n=50, dx=12, dy=10, noise=1.0, seed=cca_dim)
    assert score("svcca", x, y, cca_dim=cca_dim) == pytest.approx(ref.svcca(x, y, cca_dim), abs=1e-9)


def test_svcca_is_deterministic_and_wide_layers_work() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 60)), rng.normal(size=(30, 45))  # D > N: Gram-side SVD
    a = score("svcca", x, y, cca_dim=5)
    assert a == score("svcca", x, y, cca_dim=5)
    assert a == pytest.approx(ref.svcca(x, y, 5), abs=1e-9)


@pytest.mark.parametrize("gap", [3e-7, 1e-6, 5e-6])
def test_svcca_is_exact_when_cca_dim_reaches_a_nearly_collinear_direction(gap: float) -> None:
    """A kept direction with s / s_max ~ 1e-7..1e-6 (a column almost a copy of another): the Gram
    eigenproblem resolves it only to ~eps (s_max / s)^2 (2.3e-5 off at 1.5e-7, found by a
    review); the basis then comes from an SVD of the layer itself."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5))
    x[:, -1] = x[:, 0] + gap * rng.normal(size=64)
    y = x[:, :3] @ rng.normal(size=(3, 6)) + rng.normal(size=(64, 6))
    y[:, -1] = 0.01 * rng.normal(size=64) + x[:, -1] - x[:, 0]
    for a, b in ((x, y), (y, x)):
        assert score("svcca", a, b, cca_dim=5) == pytest.approx(ref.svcca(a, b, 5), abs=1e-9)


def _one_hot_layer(seed: int = 0) -> np.ndarray:
    """Balanced one-hot rows (8 classes x 5): standardised, 7 equal singular values and a zero."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(8), 5)
    rng.shuffle(labels)
    return np.eye(8, dtype=np.float32)[labels]


@pytest.mark.parametrize("cca_dim", [1, 3, 6])
def test_svcca_refuses_a_layer_whose_singular_values_tie_at_the_cut(cca_dim: int) -> None:
    """Singular values that tie at the ``cca_dim`` cut leave the top subspace undefined: the
    score would be whichever basis the SVD returns (0.075 against numpy's 0.28). The layer is
    refused by number; the whole tied block (``cca_dim`` 7: the layer's rank) is scored."""
    x = _one_hot_layer()
    y = np.random.default_rng(1).normal(size=(40, 12)).astype(np.float32)
    with pytest.raises(ValueError, match=rf"layer 1: .*values {cca_dim} and {cca_dim + 1} tie at the cca_dim cut"):
        layer_matrix("svcca", [y, x], [y], cca_dim=cca_dim)
    assert score("svcca", x, y, cca_dim=7) == pytest.approx(ref.svcca(x.astype(np.float64), y.astype(np.float64), 7), abs=1e-9)


def test_svcca_scores_a_cut_whose_gap_is_above_the_inputs_rounding() -> None:
    """One-hot rows moved by 1e-4 noise: the gaps at the cut (~1e-5 of the largest singular value,
    float32 rounding of an input being ~1e-7) are the data's: scored, as the float64 reference
    scores it."""
    rng = np.random.default_rng(2)
    x = _one_hot_layer().astype(np.float64) + 1e-4 * rng.normal(size=(40, 8))
    y = rng.normal(size=(40, 9))
    s = np.linalg.svd((x - x.mean(0)) / (x.std(0, ddof=1) + 1e-8), compute_uv=False)
    assert 1e-7 < (s[2] - s[3]) / s[0] < 1e-3
    assert score("svcca", x, y, cca_dim=3) == pytest.approx(ref.svcca(x, y, 3), abs=1e-6)
    assert score("svcca", x.astype(np.float32), y, cca_dim=3) == pytest.approx(ref.svcca(x.astype(np.float32).astype(np.float64), y, 3), abs=1e-6)


def test_svcca_rejects_too_large_cca_dim() -> None:
    x, y = paired(dx=5)
    with pytest.raises(ValueError):
        score("svcca", x, y, cca_dim=6)


def test_procrustes_matches_nuclear_norm() -> None:
    x, y = paired(n=40, dx=8, dy=30, seed=4, normalize=False)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.norm(xc.T @ yc, "nuc") / (np.linalg.norm(xc) * np.linalg.norm(yc))
    assert score("procrustes", x, y) == pytest.approx(expected, abs=1e-10)
    wide = np.random.default_rng(5).normal(size=(40, 70))  # D > N: reduced factor path
    wc = wide - wide.mean(0)
    expected = np.linalg.norm(xc.T @ wc, "nuc") / (np.linalg.norm(xc) * np.linalg.norm(wc))
    assert score("procrustes", x, wide) == pytest.approx(expected, abs=1e-10)


def test_procrustes_of_a_wide_layer_keeps_its_small_directions() -> None:
    """A layer wider than N was reduced to ``N`` columns through its Gram's eigenvectors, which
    resolve only directions above 1e-7 of the largest: a spectrum decaying below that (massive
    activations next to fine structure) lost its tail, 3e-8 to 1e-7 of the score (float32-rounded
    low-rank layers: 3e-8). The reduction is a QR now, exact to rounding."""
    rng = np.random.default_rng(11)
    n, d = 60, 150
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    v, _ = np.linalg.qr(rng.normal(size=(d, n)))
    x = (u * 10.0 ** -np.linspace(0, 12, n)) @ v.T  # singular values from 1 down to 1e-12
    y = (u[:, ::-1] * 10.0 ** -np.linspace(0, 12, n)) @ rng.normal(size=(n, n)).T  # aligned with x's tail
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.svd(xc.T @ yc, compute_uv=False).sum() / (np.linalg.norm(xc) * np.linalg.norm(yc))
    assert score("procrustes", x, y) == pytest.approx(expected, rel=1e-12, abs=0)
    assert score("procrustes", y, x) == pytest.approx(expected, rel=1e-12, abs=0)
    low = (rng.normal(size=(n, 3)) @ rng.normal(size=(3, d))).astype(np.float32).astype(np.float64)
    lc = low - low.mean(0)
    expected = np.linalg.svd(lc.T @ yc, compute_uv=False).sum() / (np.linalg.norm(lc) * np.linalg.norm(yc))
    assert score("procrustes", low, y) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("ridge", [0.0, 0.5, 10.0])
def test_linear_regression_matches_least_squares(ridge: float) -> None:
    x, y = paired(n=60, dx=7, dy=5, seed=6, normalize=False)
    xc, yc = x - x.mean(0), y - y.mean(0)
    beta = np.linalg.solve(xc.T @ xc + ridge * np.eye(7), xc.T @ yc)
    expected = 1 - np.sum((yc - xc @ beta) ** 2) / np.sum(yc ** 2)
    assert score("linear_regression", x, y, ridge=ridge) == pytest.approx(expected, abs=1e-10)
    assert score("linear_regression", x, y) != pytest.approx(score("linear_regression", y, x))


@pytest.mark.parametrize("ridge", [float("nan"), float("inf"), -0.5, True, "1"])
def test_linear_regression_refuses_a_ridge_that_is_not_a_finite_number_at_least_0(ridge) -> None:
    """ridge=NaN passed the old ``ridge < 0`` check and gave a NaN score."""
    x, y = paired(n=20, seed=6)
    with pytest.raises(ValueError, match=r"ridge must be a (finite )?number"):  # True: by the registry
        score("linear_regression", x, y, ridge=ridge)
    assert 0 <= score("linear_regression", x, y, ridge=np.float32(0.5)) <= 1  # numpy numbers accepted


def test_rsa_matches_scipy_spearman() -> None:
    x, y = paired(n=30, seed=7)

    def dists(z):
        d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
        return d[np.triu_indices(len(z), 1)]

    expected = spearmanr(dists(x), dists(y)).statistic
    assert score("rsa_spearman", x, y) == pytest.approx(expected, abs=1e-10)


def _spearman_of_distances(x: np.ndarray, y: np.ndarray) -> float:
    """Reference from the definition: Spearman (average ranks) of the exact float64 Euclidean
    distances of the values as given, upper triangles."""
    def dists(z):
        z = np.asarray(z, dtype=np.float64)
        d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
        return d[np.triu_indices(len(z), 1)]

    return float(spearmanr(dists(x), dists(y)).statistic)


def test_rsa_permute_is_the_encoding_of_the_permuted_rows() -> None:
    """``RsaEngine.permute`` (the ``Engine`` protocol's re-indexing of cached ranks: the encoding
    of ``y[perm]``) scores what the definition gives on the permuted rows; its pair position
    ``(i, j) -> i N - i (i + 1) / 2 + j - i - 1`` read one position off moved every score."""
    import torch

    from tasks.metrics import METRICS

    x, y = paired(n=14, seed=9)
    perm = torch.as_tensor(np.random.default_rng(2).permutation(14))
    engine = METRICS["rsa_spearman"].engine
    a, b = engine.encode(Representation(x), {}), engine.encode(Representation(y), {})
    got = engine.matrix(a, engine.permute(b, perm, torch.argsort(perm)), {})
    assert float(got[0, 0]) == pytest.approx(_spearman_of_distances(x, y[perm.numpy()]), abs=1e-12)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("width", [32, 15])
def test_rsa_of_float32_input_is_translation_invariant(offset: float, width: int) -> None:
    """Distances came from a float32 Gram (|x|^2 + |y|^2 - 2 x.y), which cancels when the rows
    share an offset: 0.4928 instead of 0.5241 at offset 1000, 0.064 instead of 0.327 at width 15.
    Exact differences in float64 now (ties among duplicate rows kept exact)."""
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=(n, width))
    x[1] = x[0]  # an exact tie (distance 0) and tied distances to every other row
    y = x[:, : width // 2] + 0.5 * rng.normal(size=(n, width // 2))
    x32, y32 = (x + offset).astype(np.float32), (y + offset).astype(np.float32)
    want = _spearman_of_distances(x32, y32)
    assert want == pytest.approx(_spearman_of_distances(x, y), abs=2e-4)  # float32 rounding only
    assert score("rsa_spearman", x32, y32) == pytest.approx(want, abs=1e-10)
    assert layer_matrix("rsa_spearman", [x32], [y32 - np.float32(offset)])[0, 0] == pytest.approx(
        _spearman_of_distances(x32, y32 - np.float32(offset)), abs=1e-10)


def test_rsa_refuses_a_layer_whose_distances_are_all_equal() -> None:
    """Spearman's correlation is undefined (NaN in scipy) when one side's distances are all equal;
    the engine returned 0.0 (ranks divided by a clamped zero norm). Refused like other undefined
    inputs: N=2 (one distance) and one-hot rows (every distance sqrt(2))."""
    rng = np.random.default_rng(1)
    onehot = np.eye(6)
    y = rng.normal(size=(6, 4))
    with pytest.warns(RuntimeWarning):  # scipy: "An input array is constant"
        assert np.isnan(spearmanr(np.full(15, np.sqrt(2)), rng.normal(size=15)).statistic)
    for dtype in (np.float64, np.float32):
        with pytest.raises(ValueError, match=r"x: layer 0: all 15 pairwise distances are equal \(1.41421\): their Spearman correlation is undefined"):
            score("rsa_spearman", (onehot + 7.0).astype(dtype), y.astype(dtype))
    with pytest.raises(ValueError, match="y: layer 1: .*undefined"):
        layer_matrix("rsa_spearman", [y], [y[:, :2], onehot])
    with pytest.raises(ValueError, match="N=2 samples give a single pairwise distance"):
        score("rsa_spearman", y[:2], y[:2, :3])
    assert score("rsa_spearman", y[:3], y[:3, :2]) == pytest.approx(_spearman_of_distances(y[:3], y[:3, :2]), abs=1e-12)


@pytest.mark.parametrize("metric", ["svcca", "procrustes", "linear_regression", "rsa_spearman"])
def test_layer_matrix_equals_score(metric: str) -> None:
    xs, ys = layers(seed=8), layers(seed=9, widths=(6, 14))
    m = layer_matrix(metric, xs, ys, cca_dim=4)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j] == pytest.approx(score(metric, x, y, cca_dim=4), abs=1e-12)


def test_float32_inputs() -> None:
    x, y = paired(n=40, seed=10)
    r = Representation([x.astype(np.float32)])
    assert r.dtype.is_floating_point
    assert score("svcca", x.astype(np.float32), y.astype(np.float32), cca_dim=3) == pytest.approx(
        ref.svcca(x, y, 3), abs=1e-4)


_RSA_PEAK = """
import sys, numpy as np, scipy.spatial.distance, scipy.stats, torch
from tasks import metrics
from tasks.metrics.rsa import RsaEngine
n, layers = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
rep = metrics.Representation([rng.standard_normal((n, 6)).astype(np.float32) for _ in range(layers)])
RsaEngine().encode(metrics.Representation([rng.standard_normal((50, 6))]), {})  # warm up
def kb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
before = kb("VmRSS")
state = RsaEngine().encode(rep, {})
print(kb("VmHWM") - before)
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads peak RSS from /proc")
def test_rsa_encoding_holds_each_layers_ranks_once() -> None:
    """A side's ``(L, M)`` float64 ranks (``M = N(N-1)/2``, 4 bytes per ``N^2`` a layer) are the
    memory RSA keeps at every N; they used to be built as a list of rows and then stacked, 8
    bytes per ``N^2`` a layer at the peak (5 + 4 layers at N=20,000: 7 GB more). N=2,000, 1 and 3
    layers: 3.99 per layer (6.0 when stacked; 5.7 at N=3,000, 1 and 4 layers, which took 11 s)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]

    def peak(layers: int) -> int:
        out = subprocess.run([sys.executable, "-c", _RSA_PEAK, "2000", str(layers)], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONPATH": str(root)}, check=True).stdout.split()
        return int(out[-1])

    per_layer = (peak(3) - peak(1)) / 2 / 2000**2
    assert 3.5 <= per_layer <= 5.0, per_layer


@pytest.mark.parametrize("rank", [2, 3])
def test_svcca_refuses_a_layer_of_lower_rank_than_cca_dim(rank: int) -> None:
    """A layer of rank ``r`` (``N x r`` times ``r x D``, wider than ``r``) has only ``r`` directions
    above rounding: ``cca_dim = r + 1`` is refused (its extra direction would be rounding noise),
    ``cca_dim = r`` is scored."""
    rng = np.random.default_rng(30 + rank)
    low = rng.normal(size=(40, rank)) @ rng.normal(size=(rank, 12))
    y = rng.normal(size=(40, 8))
    with pytest.raises(ValueError, match=f"rank {rank} < cca_dim={rank + 1}"):
        score("svcca", low, y, cca_dim=rank + 1)
    assert score("svcca", low, y, cca_dim=rank) == pytest.approx(ref.svcca(low, y, rank), abs=1e-9)


@pytest.mark.parametrize("cca_dim", [0, 13])
def test_svcca_cca_dim_outside_one_to_min_n_d_is_refused(cca_dim: int) -> None:
    x, y = paired(n=20, dx=12, dy=14, seed=3)
    with pytest.raises(ValueError, match=r"cca_dim must be in \[1, min\(N, D\)\] = \[1, 12\]"):
        score("svcca", x, y, cca_dim=cca_dim)


@pytest.mark.parametrize("exact", [False, True])
def test_left_singular_returns_the_numerical_rank(exact: bool) -> None:
    """``left_singular`` of a rank-3 ``(30, 10)`` matrix keeps 3 directions (singular values below
    ``rtol * s_max`` dropped, rounding noise included), orthonormal, spanning the matrix's columns,
    with numpy's singular values."""
    import torch

    from tasks.metrics.subspace_metrics import left_singular

    rng = np.random.default_rng(41)
    z = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 10))
    u, s = left_singular(torch.from_numpy(z), exact=exact)
    assert u.shape == (30, 3) and s.shape == (3,)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(z, compute_uv=False)[:3], rtol=1e-9)
    np.testing.assert_allclose(u.numpy().T @ u.numpy(), np.eye(3), atol=1e-9)
    np.testing.assert_allclose(u.numpy() @ (u.numpy().T @ z), z, atol=1e-9)


def test_linear_regression_is_1_when_x_spans_every_centred_direction() -> None:
    """docs/metrics.md, `linear_regression`: with ridge 0 (the pipeline's) an x whose centred rows
    span all N - 1 directions fits any y exactly, and rows shared by several samples cap R^2 at
    the share of y's variance between the groups, the same for every such x (every layer pair
    of an audit's vision model tied there)."""
    rng = np.random.default_rng(2)
    y = rng.normal(size=(20, 6))
    assert score("linear_regression", rng.normal(size=(20, 19)), y) == pytest.approx(1.0, abs=1e-12)
    groups = np.repeat(np.arange(8), [1, 2, 3, 4, 2, 3, 3, 2])  # 20 samples of 8 images
    yc = y - y.mean(0)
    means = np.stack([yc[groups == g].mean(0) for g in range(8)])
    between = ((means[groups]) ** 2).sum() / (yc ** 2).sum()
    for width in (7, 12):
        x = rng.normal(size=(8, width))[groups]
        assert score("linear_regression", x, y) == pytest.approx(between, abs=1e-12)
