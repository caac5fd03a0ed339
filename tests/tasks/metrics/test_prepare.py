"""``prepare`` reproduces the paper's outlier clamp and L2 normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.metrics import prepare
from tasks.metrics.preparation import order_statistics, outlier_threshold, pooled_outlier_threshold

from . import reference as ref


@pytest.fixture
def heavy() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.standard_t(df=2, size=(30, 17))


@pytest.mark.parametrize("exact", [False, True])
def test_matches_reference(heavy: np.ndarray, exact: bool) -> None:
    got = prepare(heavy, q=0.9, exact=exact)
    assert isinstance(got, np.ndarray) and got.shape == heavy.shape
    np.testing.assert_allclose(got, ref.prepare(heavy, q=0.9, exact=exact), atol=1e-12)


def test_threshold_approx_equals_torch_quantile(heavy: np.ndarray) -> None:
    t = torch.from_numpy(heavy)
    expected = torch.quantile(t.abs().flatten(start_dim=1), 0.95, dim=1).mean()
    assert float(outlier_threshold(t, 0.95)) == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threshold_approx_is_torch_quantile_bit_for_bit(dtype: torch.dtype) -> None:
    """The paper's float32 threshold: torch.quantile finds the rank q (m - 1) in the values' dtype
    (a float64 rank moved it by up to ~1e-6 relative at q = 0.95)."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        q = (0.95, 0.999, 0.9, 0.99, 0.5)[trial % 5]
        n, m = 1 + trial % 4, int(torch.randint(2, 30000, (), generator=gen))
        x = torch.randn(n, m, generator=gen, dtype=dtype) ** 3
        expected = torch.quantile(x.abs(), q, dim=1).mean()
        assert torch.equal(outlier_threshold(x, q), expected), (q, n, m)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_threshold_approx_of_half_precision_values_is_their_float32_threshold(dtype: torch.dtype) -> None:
    """Half-precision values (which torch.quantile refuses) get the float32 rank: a half rank
    was off by ~3% (float16) or selected past the last value (bfloat16: kthvalue out of range)."""
    x = (torch.randn(8, 4096, generator=torch.Generator().manual_seed(1)) ** 3).to(dtype)
    for q in (0.999, 0.95):
        expected = torch.quantile(x.float().abs(), q, dim=1).mean()
        assert float(outlier_threshold(x, q)) == pytest.approx(float(expected), rel=1e-2)


def test_threshold_exact_is_sorted_element(heavy: np.ndarray) -> None:
    t = torch.from_numpy(heavy)
    expected = t.reshape(-1).abs().sort().values[int(0.95 * t.numel())]
    assert float(outlier_threshold(t, 0.95, exact=True)) == float(expected)


def test_clamp_limits_values(heavy: np.ndarray) -> None:
    out = prepare(heavy, q=0.8, exact=True, normalize=False)
    thr = np.sort(np.abs(heavy).ravel())[int(0.8 * heavy.size)]
    assert np.abs(out).max() == pytest.approx(thr)
    assert (np.abs(out) < np.abs(heavy)).sum() > 0


def test_q_one_only_normalises(heavy: np.ndarray) -> None:
    np.testing.assert_allclose(prepare(heavy, q=1.0), ref.normalize_rows(heavy), atol=1e-12)
    np.testing.assert_allclose(prepare(heavy, q=1.0, normalize=False), heavy)


def test_stack_uses_one_threshold_like_the_paper(heavy: np.ndarray) -> None:
    """(L, N, D): the paper's (N, L, D) tensor branch pools a sample's values over all layers."""
    stack = np.stack([heavy, 3 * heavy])  # (2, N, D)
    paper_layout = torch.from_numpy(stack).permute(1, 0, 2)  # (N, L, D)
    thr = torch.quantile(paper_layout.abs().flatten(start_dim=1), 0.95, dim=1).mean()
    expected = torch.nn.functional.normalize(torch.from_numpy(stack).clamp(-thr, thr), dim=-1)
    np.testing.assert_allclose(prepare(stack), expected.numpy(), atol=1e-12)
    per_layer = prepare(stack, per_layer=True)
    np.testing.assert_allclose(per_layer[1], prepare(3 * heavy), atol=1e-12)


@pytest.mark.parametrize("exact", [False, True])
def test_pooled_list_is_the_stack_threshold_without_stacking(heavy: np.ndarray, exact: bool) -> None:
    """``per_layer=False`` on a list: the paper's tensor-branch threshold; ragged widths pool the
    concatenation of a sample's values; row blocks of any size give the same threshold."""
    layers = [heavy, 3 * heavy, -2 * heavy]
    pooled = prepare(layers, q=0.9, exact=exact, per_layer=False)
    assert isinstance(pooled, list) and len(pooled) == 3
    np.testing.assert_array_equal(np.stack(pooled), prepare(np.stack(layers), q=0.9, exact=exact))
    ragged = [torch.from_numpy(heavy), torch.from_numpy(5 * heavy[:, :4])]
    concatenated = torch.cat(ragged, dim=1)
    want = float(outlier_threshold(concatenated, 0.9, exact))
    if not exact:  # the definition, from torch.quantile of each sample's pooled values
        assert want == pytest.approx(float(torch.quantile(concatenated.abs(), 0.9, dim=1).mean()), abs=1e-12)
    for block in (1, 7, 21, 10**6):  # values per block: 1 row, part rows, several rows, all rows
        assert float(pooled_outlier_threshold(ragged, 0.9, exact, block_values=block)) == want


def test_list_and_torch_kinds(heavy: np.ndarray) -> None:
    out = prepare([heavy, heavy[:, :5]])
    assert isinstance(out, list) and out[1].shape == (30, 5)
    t = prepare(torch.from_numpy(heavy).float())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), prepare(heavy).astype(np.float32), atol=1e-5)


def test_rejects_bad_q(heavy: np.ndarray) -> None:
    with pytest.raises(ValueError):
        prepare(heavy, q=0.0)


def test_pooled_list_mixing_dtypes_keeps_each_layer_dtype(heavy: np.ndarray) -> None:
    """``prepare([float64, float32], per_layer=False)`` returned both layers in float32 (the
    pooled threshold was computed on float32 copies). Now the threshold is found in float64 and
    every layer keeps its dtype: against the float64 reference with the pooled threshold of the
    concatenated rows (the paper's tensor branch)."""
    a, b = heavy, (2 * heavy[:, :9]).astype(np.float32)
    for exact in (False, True):
        out = prepare([a, b], q=0.9, exact=exact, per_layer=False, normalize=False)
        assert [o.dtype for o in out] == [np.float64, np.float32]
        both = np.concatenate([a, b.astype(np.float64)], axis=1)
        flat = np.sort(np.abs(both).ravel())
        t = flat[int(0.9 * flat.size)] if exact else np.quantile(np.abs(both), 0.9, axis=1).mean()
        np.testing.assert_allclose(out[0], np.clip(a, -t, t), rtol=0, atol=1e-12)
        np.testing.assert_allclose(out[1], np.clip(b, -t, t), rtol=1e-6)
    t64 = prepare([torch.from_numpy(a), torch.from_numpy(b)], q=0.9, per_layer=False)
    assert [o.dtype for o in t64] == [torch.float64, torch.float32]
    np.testing.assert_allclose(t64[0].numpy(), prepare([a, b.astype(np.float64)], q=0.9, per_layer=False)[0], atol=1e-12)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("x, message", [
    (np.ones((4, 0)), r"layer 0 has width 0 \(shape \(4, 0\)\)"),
    (np.ones((2, 4, 0)), r"layer 0 has width 0 \(shape \(4, 0\)\)"),
    ([np.ones((4, 3)), np.ones((4, 0))], r"layer 1 has width 0 \(shape \(4, 0\)\)"),
    (np.ones((0, 3)), r"layer 0 has no samples \(shape \(0, 3\)\)"),
])
def test_empty_layer_is_refused_by_name(x, message: str, exact: bool) -> None:
    """A width-0 layer raised IndexError from kthvalue; now a ValueError naming the layer."""
    with pytest.raises(ValueError, match=message):
        prepare(x, exact=exact)


def _with(value: float, shape: tuple[int, ...], at: tuple[int, ...]) -> np.ndarray:
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    x[at] = value
    return x


@pytest.mark.parametrize("q", [0.95, 1.0])
@pytest.mark.parametrize("x, message", [
    (_with(np.nan, (6, 4), (2, 1)), r"layer 0 has non-finite values \(NaN or inf\) in 1 of its 6 rows"),
    (_with(np.inf, (3, 6, 4), (1, 4, 0)), r"layer 1 has non-finite values \(NaN or inf\) in 1 of its 6 rows"),
    ([np.ones((6, 3)), _with(-np.inf, (6, 2), (5, 1))], r"layer 1 has non-finite values"),
])
def test_non_finite_values_are_refused_by_layer(x, message: str, q: float) -> None:
    """One NaN made the (pooled) clamp threshold NaN and so every value it clamped NaN; the
    layer is now named instead."""
    with pytest.raises(ValueError, match=message):
        prepare(x, q=q)


@pytest.mark.parametrize("kwargs, named", [
    ({"exact": "False"}, "exact"), ({"normalize": "False"}, "normalize"), ({"normalize": 0}, "normalize"),
    ({"per_layer": "False"}, "per_layer"), ({"q": True}, "q"), ({"q": "0.9"}, "q"), ({"q": None}, "q"),
])
def test_a_flag_or_q_of_the_wrong_type_is_refused_by_name(kwargs: dict, named: str) -> None:
    """``exact='False'`` took the exact threshold, ``normalize='False'`` normalised,
    ``per_layer='False'`` gave per-layer thresholds (the opposite of ``False``), ``q=True`` read as
    1 (no clamp), and ``q='0.9'`` / ``None`` raised a bare TypeError of a comparison."""
    x = np.random.default_rng(6).standard_t(3, size=(3, 20, 16))
    with pytest.raises(ValueError, match=rf"^{named} must be"):
        prepare(x, **kwargs)


def test_with_concatenated_refuses_a_flag_that_is_not_a_bool() -> None:
    from tasks.metrics import with_concatenated

    x = np.random.default_rng(6).normal(size=(20, 16))
    for flag in ("normalize", "normalize_layers"):
        with pytest.raises(ValueError, match=rf"^{flag} must be True or False, got 'False'"):
            with_concatenated([x, x[:, :5]], **{flag: "False"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_order_statistics_select_what_kthvalue_selects(dtype):
    """The per-sample quantile's two order statistics come from one topk at the nearer end of each
    row; they must be the values kthvalue selects, at every rank, with ties and at both ends."""
    g = torch.Generator().manual_seed(0)
    for m in (1, 2, 3, 10, 101):
        for rows in (torch.randint(0, 5, (7, m), generator=g).to(dtype), torch.rand(7, m, generator=g, dtype=dtype)):
            for lo in range(m):
                for hi in sorted({lo, min(lo + 1, m - 1)}):
                    low, high = order_statistics(rows, lo, hi)
                    assert torch.equal(low, rows.kthvalue(lo + 1, dim=1).values), (m, lo)
                    assert torch.equal(high, rows.kthvalue(hi + 1, dim=1).values), (m, hi)


@pytest.mark.parametrize("exact", [False, True])
def test_q_of_one_clamps_nothing(exact: bool) -> None:
    """``q=1`` (allowed: ``(0, 1]``): the threshold is the largest absolute value (the exact
    order statistic's index clamped to the last one), so the layer is only L2-normalised."""
    x = np.random.default_rng(21).normal(size=(9, 5))
    np.testing.assert_allclose(prepare(x, q=1.0, exact=exact), ref.normalize_rows(x), rtol=0, atol=1e-15)
    np.testing.assert_allclose(prepare(x, q=1.0, exact=exact, normalize=False), x, rtol=0, atol=0)
