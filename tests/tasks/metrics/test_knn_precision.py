"""Opt-in reduced-precision neighbour search (``knn_precision``): bf16 lists are close to the
exact ones (within the bfloat16 error bound), overlaps of any lists are counted exactly,
``'bf16-refine'`` equals the exact lists (including when its certificate fails and rows are
recomputed), and the default path and caches are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.metrics import Representation, calibrate, layer_matrix, score
from tasks.metrics.bf16_neighbors import BF16_UNIT, _error_factor, reduced_topk
from tasks.metrics.neighbors import topk_neighbors

from .conftest import layers

K = 10


def gaussian(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Isotropic Gaussian rows, L2-normalised: concentrated similarities (hard for bf16)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64),
                                         dim=1).to(dtype)


def low_rank(n: int, d: int, seed: int, noise: float = 0.3) -> torch.Tensor:
    """A 4-dim signal plus small noise, L2-normalised: well-separated neighbourhoods."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    x = z @ torch.randn(4, d, generator=g, dtype=torch.float64)
    x = x + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1).float()


def set_differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.sort(-1).values != b.sort(-1).values).any(-1)


def assert_same_as_exact(x: torch.Tensor, idx: torch.Tensor, exact: torch.Tensor) -> None:
    """``idx`` lists the exact neighbours: row by row the float64 similarities of the listed
    samples equal those of ``exact`` position by position, up to float32 ties (1e-6), and at
    most a few rows differ at all (tie order)."""
    g = x.double() @ x.double().T
    torch.testing.assert_close(g.gather(1, idx), g.gather(1, exact), atol=1e-6, rtol=0)
    assert int((idx != exact).any(-1).sum()) <= max(2, x.shape[0] // 200)


def adversarial() -> torch.Tensor:
    """Four rows of width 256 where bfloat16 rounding is coherent and flips the nearest
    neighbour of row 0, by 0.75 bf16 units of ``|x_0| |x_j|``.

    Row 0 is all ``a = 1 + 3/1024`` (rounds down to 1). Row 1 (``X``): 128 entries ``a`` and 128
    entries ``-b``, ``b = 1 + 5/1024`` (rounds up to ``1 + 1/128``): exact similarity -0.2505,
    bf16 -1.0. Rows 2, 3 (``Y1``, ``Y2``) hold bf16-exact entries summing to -0.3125 and -0.9375
    (exact similarities -0.3134, -0.9404; bf16 -0.3125, -0.9375). Exact order X, Y1, Y2;
    bf16 order Y1, Y2, X."""
    a, b = 1 + 3 / 1024, 1 + 5 / 1024
    q = torch.full((256,), a)
    xrow = torch.cat([torch.full((128,), a), torch.full((128,), -b)])
    base = torch.cat([torch.ones(127), -torch.ones(128)])
    y1, y2 = torch.cat([base, torch.tensor([0.6875])]), torch.cat([base, torch.tensor([0.0625])])
    return torch.stack([q, xrow, y1, y2]).float()


@pytest.fixture(scope="module")
def hard() -> tuple[torch.Tensor, torch.Tensor]:
    return gaussian(1000, 256, 0), gaussian(1000, 256, 1)


def test_bf16_lists_are_within_the_error_bound(hard: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Every bf16 neighbour is at least as similar as every left-out sample minus twice the
    bfloat16 error bound; values are the exact similarities of the listed neighbours, sorted."""
    x = hard[0]
    v, idx = topk_neighbors(x, K, precision="bf16")
    _, exact = topk_neighbors(x, K)
    assert 0 < set_differs(idx, exact).float().mean() < 0.5  # really approximate, still close
    g = x.double() @ x.double().T  # independent float64 similarities
    g.fill_diagonal_(-np.inf)
    inside = torch.zeros_like(g, dtype=torch.bool).scatter_(1, idx, True)
    worst_in = g.masked_fill(~inside, np.inf).min(1).values
    best_out = g.masked_fill(inside, -np.inf).max(1).values
    tol = 2 * (_error_factor(x.shape[1], x.dtype) + 2 * BF16_UNIT)  # unit rows: |s| <= 1
    assert bool((worst_in >= best_out - tol).all())
    assert not bool(inside.diagonal().any())  # self excluded
    np.testing.assert_allclose(v.double(), g.gather(1, idx), atol=1e-6)
    assert bool((v[:, :-1] >= v[:, 1:]).all())


def test_bf16_overlaps_are_counted_exactly(hard: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The score from bf16 lists is the integer overlap of those very lists over N*k."""
    x, y = hard
    ra, rb = Representation(x), Representation(y)
    for metric in ("mutual_knn", "jaccard_knn"):
        got = layer_matrix(metric, ra, rb, topk=K, knn_precision="bf16")[0, 0]
        a = ra.knn_indices(K, precision="bf16")[0].numpy()
        b = rb.knn_indices(K, precision="bf16")[0].numpy()
        common = [len(set(a[i]) & set(b[i])) for i in range(len(a))]
        if metric == "mutual_knn":
            assert got == sum(common) / (len(a) * K)  # exact: integer sum, one division
        else:
            assert got == pytest.approx(np.mean([c / (2 * K - c) for c in common]), abs=1e-15)


@pytest.mark.parametrize("data", ["low_rank", "gaussian"])
def test_refine_equals_exact(data: str) -> None:
    x = low_rank(1500, 128, 2) if data == "low_rank" else gaussian(1500, 128, 3)
    v, idx = topk_neighbors(x, K, precision="bf16-refine")
    ve, exact = topk_neighbors(x, K)
    assert_same_as_exact(x, idx, exact)
    torch.testing.assert_close(v, ve, atol=1e-6, rtol=0)


def test_certificate_needs_its_full_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """On coherent-rounding data plain bf16 picks the wrong neighbour; the refinement with two
    candidates must not certify it (it would with a quarter of the error bound) and recomputes."""
    import tasks.metrics.bf16_neighbors as bn

    x = adversarial()
    assert topk_neighbors(x, 1)[1][0, 0] == 1  # exact: X
    assert topk_neighbors(x, 1, precision="bf16")[1][0, 0] == 2  # bf16: Y1
    r = reduced_topk(x, 1, refine=True, extra=1)
    assert r.indices[0, 0] == 1 and r.recomputed >= 1
    full = bn._error_factor
    monkeypatch.setattr(bn, "_error_factor", lambda d, dtype: full(d, dtype) / 4)
    assert reduced_topk(x, 1, refine=True, extra=1).indices[0, 0] == 2  # the bound is needed


def test_refine_recomputes_uncertified_rows(hard: tuple[torch.Tensor, torch.Tensor]) -> None:
    """With no extra candidates the certificate fails on many rows; they are recomputed and the
    lists still equal the exact ones, although plain bf16 lists differ."""
    x = hard[1]
    _, exact = topk_neighbors(x, K)
    plain = reduced_topk(x, K)
    r = reduced_topk(x, K, refine=True, extra=0, block_elements=97 * 1000)  # several blocks
    assert bool(set_differs(plain.indices, exact).any())
    assert 0 < r.recomputed <= x.shape[0]
    assert_same_as_exact(x, r.indices, exact)
    assert reduced_topk(x, K, refine=True).recomputed < r.recomputed


def test_refine_float64_and_self_included() -> None:
    x = gaussian(400, 64, 4, torch.float64)
    for exclude_self in (True, False):
        _, exact = topk_neighbors(x, K, exclude_self=exclude_self)
        v, idx = topk_neighbors(x, K, exclude_self=exclude_self, precision="bf16-refine")
        assert v.dtype == torch.float64
        assert_same_as_exact(x, idx, exact)
    assert bool((idx[:, 0] == torch.arange(400)).all())  # with self: itself first


@pytest.mark.parametrize("scale", [1e20, 1e40, 1e-22, 1e-60])
def test_bf16_search_of_float64_far_from_unit_scale(scale: float) -> None:
    """float64 rows of norm 1e20 overflowed bfloat16 (their -inf products tied the excluded self:
    33 of 40 refined lists held the row itself, mutual_knn 0.330 for 0.395) and rows of norm
    1e-22 underflowed to 0, which the relative certificate passed (0.103 for 0.210). The search
    runs on the rows scaled by a power of two: 'bf16-refine' equals the exact lists at any scale,
    'bf16' is as close as at unit scale."""
    rng = np.random.default_rng(17)
    x = rng.normal(size=(400, 16))
    y = x @ rng.normal(size=(16, 6)) + 0.5 * rng.normal(size=(400, 6))
    xs = torch.from_numpy(x * scale)
    _, exact = topk_neighbors(xs, K)
    v, idx = topk_neighbors(xs, K, precision="bf16-refine")
    unit = torch.from_numpy(x)  # similarities compared at unit scale (the tolerance is absolute)
    assert_same_as_exact(unit, idx, exact)
    assert_same_as_exact(unit, exact, topk_neighbors(unit, K)[1])
    assert not bool((idx == torch.arange(400)[:, None]).any())
    want = score("mutual_knn", x, y, topk=K)
    assert score("mutual_knn", x * scale, y, topk=K, knn_precision="bf16-refine") == want
    unit_bf16 = score("mutual_knn", x, y, topk=K, knn_precision="bf16")
    assert abs(score("mutual_knn", x * scale, y, topk=K, knn_precision="bf16") - unit_bf16) <= 2e-3
    # the certificate's margin stays rigorous at scale: rows recomputed, never wrongly certified
    r = reduced_topk(xs, K, refine=True, extra=0)
    assert_same_as_exact(unit, r.indices, exact)


def test_default_path_unchanged_and_caches_never_mix(hard: tuple[torch.Tensor, torch.Tensor]
                                                     ) -> None:
    x, y = hard
    fresh = layer_matrix("mutual_knn", x, y, topk=K)
    assert layer_matrix("mutual_knn", x, y, topk=K, knn_precision="exact")[0, 0] == fresh[0, 0]
    bf16 = layer_matrix("mutual_knn", x, y, topk=K, knn_precision="bf16")
    assert bf16[0, 0] != fresh[0, 0]  # the data tell the two apart
    ra, rb = Representation(x), Representation(y)
    for precision, expected in (("bf16", bf16), ("exact", fresh), ("bf16", bf16)):
        for metric in ("mutual_knn", "cycle_knn"):
            want = expected if metric == "mutual_knn" else layer_matrix(
                metric, x, y, topk=K, knn_precision=precision)
            got = layer_matrix(metric, ra, rb, topk=K, knn_precision=precision)
            np.testing.assert_array_equal(got, want)
    layer_matrix("mutual_knn", ra, rb, topk=K, knn_precision="bf16-refine")
    for rep, z in ((ra, x), (rb, y)):  # its own cache entry, holding the exact lists
        assert_same_as_exact(z, rep.knn_indices(K, precision="bf16-refine")[0],
                             rep.knn_indices(K)[0])
    ra.cache_grams()  # a cached Gram serves 'exact' only; bf16 still searches the features
    rc = Representation(y).cache_grams()
    np.testing.assert_array_equal(layer_matrix("mutual_knn", Representation(x).cache_grams(), rc,
                                               topk=K, knn_precision="bf16"), bf16)


def test_sequence_metrics_and_calibration_accept_it() -> None:
    xs, ys = layers(n=120, seed=5), layers(n=120, widths=(9, 14), seed=6)
    for metric in ("lcs_knn", "edit_distance_knn", "jaccard_knn"):
        assert np.array_equal(layer_matrix(metric, xs, ys, topk=5, knn_precision="bf16-refine"),
                              layer_matrix(metric, xs, ys, topk=5))
    a = calibrate("mutual_knn", xs, ys, permutations=20, seed=1, topk=5, knn_precision="bf16-refine")
    b = calibrate("mutual_knn", xs, ys, permutations=20, seed=1, topk=5)
    assert a.observed == b.observed and np.array_equal(a.null, b.null)
    # other metrics ignore it, as they ignore every parameter that is not theirs
    assert score("cka", xs[0], ys[0], knn_precision="bf16") == score("cka", xs[0], ys[0])


@pytest.mark.parametrize("bad", ["fp16", "BF16", None, 16, ["bf16"]])
def test_bad_precision_is_refused(bad: object) -> None:
    xs, ys = layers(n=30, seed=7), layers(n=30, seed=8)
    with pytest.raises(ValueError, match="knn_precision must be one of"):
        layer_matrix("mutual_knn", xs, ys, topk=3, knn_precision=bad)


def test_reduced_search_needs_features() -> None:
    x = gaussian(50, 8, 9)
    with pytest.raises(ValueError, match="pass x, not gram"):
        topk_neighbors(None, 3, gram=x @ x.T, precision="bf16")
    with pytest.raises(ValueError, match="topk must be in"):
        reduced_topk(x, 50)
