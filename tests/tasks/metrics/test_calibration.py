"""Permutation calibration: exact order statistic, p-values, reuse of cached structures."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from tasks.metrics import METRICS, aggregate, calibrate, chance_level, layer_matrix
from tasks.metrics.calibration import _calibration_numbers, tie_tolerance
from tasks.metrics.engine import TIE_RTOL
from tasks.metrics.stats import order_statistic_rank

from .conftest import layers


def _perms(n: int, k: int, seed: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g).numpy() for _ in range(k)]


def test_order_statistic_p_and_calibrated_by_hand() -> None:
    null = np.array([0.1, 0.5, 0.2, 0.3, 0.9, 0.0, 0.4, 0.6, 0.7, 0.8, 0.15, 0.25, 0.35, 0.45,
                     0.55, 0.65, 0.75, 0.85, 0.05])  # K = 19
    obs = 0.95
    tau, p, cal = _calibration_numbers(obs, null, alpha=0.05, lo=0.0, hi=1.0)
    # ceil(0.95 * 20) = 19 -> 19th smallest of the 20 values = 0.9
    assert tau == 0.9
    assert p == pytest.approx(1 / 20)
    assert cal == pytest.approx((0.95 - 0.9) / (1 - 0.9))
    tau, p, cal = _calibration_numbers(0.6, null, alpha=0.1, lo=0.0, hi=1.0)
    assert tau == 0.8  # ceil(0.9 * 20) = 18th smallest
    assert p == pytest.approx((1 + 7) / 20)  # null >= 0.6: .6 .7 .8 .9 .65 .75 .85
    assert cal == 0.0
    tau, p, cal = _calibration_numbers(2.5, null, alpha=0.05, lo=0.0, hi=math.inf)
    assert cal == pytest.approx(2.5 - 0.9)


@pytest.mark.parametrize("alpha", [0.7, np.float32(0.7), np.float16(0.7), np.float64(0.7), 0.3, np.float32(0.05)])
def test_order_statistic_rank_reads_alpha_as_the_decimal_it_prints_as(alpha) -> None:
    """np.float32(0.7) is 0.699999988 as a Python float: (1 - that) * 1000 is just above 300, so
    the rank was 301 instead of ceil(0.3 * 1000) = 300."""
    decimal = Fraction(str(alpha))
    for count in (20, 1000, 1001, 10_000):
        assert order_statistic_rank(alpha, count) == max(1, math.ceil((1 - decimal) * count))


@pytest.mark.parametrize("metric", list(METRICS))
def test_null_equals_recomputation_from_permuted_features(metric: str) -> None:
    """The cached-structure permutation gives exactly what recomputing from y[perm] gives."""
    xs, ys = layers(n=30, seed=1), layers(n=30, widths=(5, 11), seed=2)
    params = {"topk": 4, "cca_dim": 3}
    res = calibrate(metric, xs, ys, permutations=3, seed=7, **params)
    for t, perm in enumerate(_perms(30, 3, 7)):
        m = layer_matrix(metric, xs, [y[perm] for y in ys], **params)
        assert res.null[t] == pytest.approx(aggregate(m)[0], abs=1e-9)
    assert res.observed == pytest.approx(aggregate(layer_matrix(metric, xs, ys, **params))[0])


def test_structured_pair_reaches_minimum_p() -> None:
    xs = layers(n=60, seed=3)
    ys = [x @ np.random.default_rng(4).normal(size=(x.shape[1], 8)) for x in xs]
    for metric in ("mutual_knn", "cka", "cknna"):
        res = calibrate(metric, xs, ys, permutations=99, seed=0, topk=5)
        assert res.p_value == pytest.approx(1 / 100)
        assert res.calibrated > 0.1
        all_values = np.sort(np.concatenate([[res.observed], res.null]))
        assert res.tau == all_values[94]  # ceil(0.95 * 100) = 95th smallest
        assert res.observed > res.tau
        assert res.argmax == aggregate(res.matrix)[1]


def test_independent_features_calibrate_to_zero_and_uniform_p() -> None:
    cal, ps = [], []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        xs = [rng.normal(size=(50, 8)) for _ in range(2)]
        ys = [rng.normal(size=(50, 6)) for _ in range(2)]
        res = calibrate("mutual_knn", xs, ys, permutations=49, seed=seed, topk=5)
        cal.append(res.calibrated)
        ps.append(res.p_value)
    assert np.mean(np.array(cal) == 0.0) >= 0.9
    ps = np.array(ps)
    assert 0.3 < ps.mean() < 0.7
    assert np.mean(ps <= 0.5) == pytest.approx(0.5, abs=0.25)


def test_mutual_knn_null_mean_is_chance_level() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(80, 10)), rng.normal(size=(80, 10))
    res = calibrate("mutual_knn", x, y, permutations=300, seed=1, topk=8, aggregate="mean")
    assert res.null_mean == pytest.approx(chance_level("mutual_knn", 80, topk=8), rel=0.05)


def test_unbiased_cka_null_mean_is_zero() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 5))
    y = x + 0.5 * rng.normal(size=(40, 5))
    res = calibrate("unbiased_cka", x, y, permutations=400, seed=2)
    assert abs(res.null_mean) < 3 * res.null_std / np.sqrt(400)
    assert chance_level("unbiased_cka", 40) == 0.0


def test_chance_levels() -> None:
    assert chance_level("mutual_knn", 1024, topk=10) == pytest.approx(10 / 1023)
    assert chance_level("mutual_knn", 101) == pytest.approx(10 / 100)  # default topk 10
    assert chance_level("cka", 100) is None
    j = chance_level("jaccard_knn", 1001, topk=10)
    assert 0 < j < 10 / 1000
    assert chance_level("cycle_knn", 101, topk=10) == pytest.approx(1 - 0.9 ** 10)


def test_seed_reproducible_and_device_independent_stream() -> None:
    xs, ys = layers(seed=8), layers(seed=9)
    a = calibrate("cka", xs, ys, permutations=5, seed=3)
    b = calibrate("cka", xs, ys, permutations=5, seed=3)
    np.testing.assert_array_equal(a.null, b.null)
    assert a.permutations == 5 and a.metric == "cka"


def test_mean_aggregate() -> None:
    xs, ys = layers(seed=10), layers(seed=11)
    res = calibrate("cka", xs, ys, permutations=5, aggregate="mean")
    assert res.observed == pytest.approx(layer_matrix("cka", xs, ys).mean())


def test_unbounded_upper_bound_uses_difference() -> None:
    """lcs_knn's maximum is k: calibrated divides by k - tau."""
    xs = layers(n=40, seed=12)
    res = calibrate("lcs_knn", xs, xs, permutations=19, topk=5)
    assert res.observed == pytest.approx(5.0)
    assert res.calibrated == pytest.approx(1.0)


def _msd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared distance between paired rows (lower is more aligned)."""
    return float(((x - y) ** 2).sum(1).mean())


def test_lower_is_better_metric_takes_the_smallest_layer_pair() -> None:
    """A metric registered with higher_is_better=False: the model-pair score is its best (smallest)
    layer pair, in calibrate, bootstrap_ci and aggregate; before, the max took the worst pair."""
    from tasks.metrics import bootstrap_ci, register_metric, unregister_metric

    register_metric("msd_test", _msd, bounds=(0.0, math.inf), higher_is_better=False, overwrite=True)
    try:
        rng = np.random.default_rng(0)
        z = rng.normal(size=(40, 2))
        xs = [rng.normal(size=(40, 2)), z + 0.01 * rng.normal(size=(40, 2))]  # layer 1 is z, slightly noisy
        res = calibrate("msd_test", xs, [z], permutations=49, seed=0)
        assert res.argmax == (1, 0) and res.observed == pytest.approx(res.matrix[1, 0]) and res.observed < 1e-3
        assert res.p_value == pytest.approx(1 / 50) and res.calibrated > 0.99
        assert aggregate(res.matrix, "max", higher_is_better=False) == (res.observed, (1, 0))
        assert bootstrap_ci("msd_test", xs, [z], n_boot=10).argmax == (1, 0)
    finally:
        unregister_metric("msd_test")


def test_null_draws_that_are_nan_are_left_out() -> None:
    """p and tau come from the valid draws only: an all-NaN null gave the smallest p before."""
    assert all(math.isnan(v) for v in _calibration_numbers(0.3, np.full(19, np.nan), 0.05, 0.0, 1.0))
    null = np.array([0.1, np.nan, 0.5, np.nan, 0.2])
    tau, p, _ = _calibration_numbers(0.4, null, 0.05, 0.0, 1.0)
    assert p == pytest.approx((1 + 1) / 4) and tau == 0.5


def test_rounding_ties_count_as_reaching_the_observed_value() -> None:
    """An exact fit's R^2 is 1 under every permutation; rounding made the observed value the
    largest (1.0000000000000002) and p the smallest possible."""
    rng = np.random.default_rng(24)
    res = calibrate("linear_regression", [rng.normal(size=(30, 40))], [rng.normal(size=(30, 3))], permutations=19, seed=24)
    assert np.all(np.abs(res.null - res.observed) < 1e-12) and res.p_value == 1.0
    tau, p, _ = _calibration_numbers(0.5, np.array([0.5 - 1e-7, 0.2]), 0.05, 0.0, 1.0, tie_rtol=1e-5)
    assert p == pytest.approx(2 / 3)
    assert _calibration_numbers(0.5, np.array([0.5 - 1e-7, 0.2]), 0.05, 0.0, 1.0)[1] == pytest.approx(1 / 3)


def test_exact_count_metrics_do_not_count_a_draw_one_count_below_as_a_tie() -> None:
    """mutual_knn's values are overlap totals / (N k): spacing 1/(N k) = 8e-6 at N=5000, k=25,
    below float32's tie tolerance 1e-5, so a draw one count below the observed value counted as
    reaching it (p 0.96 here instead of the documented (1 + #{null >= obs})/(K+1) = 0.95; at
    N=12000, k=10, 400 permutations: 0.7132 instead of 0.6908). A draw of the same count still
    ties (it is the same float)."""
    n, k = 5000, 25
    rng = np.random.default_rng(0)
    x, y = (rng.normal(size=(n, 8)).astype(np.float32) for _ in range(2))
    res = calibrate("mutual_knn", x, y, permutations=99, seed=0, topk=k)
    counts, observed = np.rint(res.null * n * k).astype(int), round(res.observed * n * k)
    assert np.all(counts / (n * k) == res.null) and observed / (n * k) == res.observed  # exact
    assert np.sum(counts == observed - 1) == 1 and np.sum(counts == observed) == 1  # the case
    assert res.p_value == (1 + np.sum(counts >= observed)) / 100 == 0.95


def test_tie_tolerance_per_metric() -> None:
    """0 for exact counts; float64 rounding for the list metrics summed in float64 whatever the
    features' dtype; the dtype's rounding for float metrics (one statistic on two row orders)."""
    def tol(metric, dtype=torch.float32, how="max"):
        spec = METRICS[metric]
        return tie_tolerance(spec.engine, spec.resolve({}), dtype, dtype, aggregate=how)

    for metric in ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"):
        assert tol(metric) == 0.0 and tol(metric, how="mean") == TIE_RTOL[torch.float64]
    # list metrics summed in float64; subspace metrics and RSA cast every layer to float64 first
    for metric in ("jaccard_knn", "svcca", "procrustes", "linear_regression",
                   "rsa_spearman"):
        assert tol(metric) == tol(metric, torch.float64) == TIE_RTOL[torch.float64]
    for metric in ("cka", "unbiased_cka", "cknna"):
        assert tol(metric) == TIE_RTOL[torch.float32] and tol(metric, torch.float64) == TIE_RTOL[torch.float64]


def test_float64_metric_of_float32_features_counts_only_float64_ties() -> None:
    """linear_regression computes in float64 whatever the input dtype; float32 features got
    float32's tie tolerance 1e-5, which counted 15 null draws strictly below the observed R^2 as
    reaching it (p 0.7702 instead of 0.7552). Reference: R^2 = ||Q^T y_c||^2 / ||y_c||^2 from a
    QR of the centred x in numpy float64, on the same permutations of y's rows."""
    n, k = 6000, 1000
    rng = np.random.default_rng(10)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    res = calibrate("linear_regression", x, y, permutations=k, seed=0)

    q, _ = np.linalg.qr(x.astype(np.float64) - x.astype(np.float64).mean(0))
    yc = y.astype(np.float64)[:, 0] - y.astype(np.float64)[:, 0].mean()
    r2 = lambda v: float(np.sum((q.T @ v) ** 2) / np.sum(v ** 2))
    observed = r2(yc)
    null = np.array([r2(yc[perm]) for perm in _perms(n, k, 0)])
    assert res.observed == pytest.approx(observed, abs=1e-12)
    np.testing.assert_allclose(res.null, null, rtol=0, atol=1e-12)
    assert np.sum((null < observed) & (null >= observed - 1e-5)) > 0  # near misses: the case
    expected = (1 + np.sum(null >= observed - 1e-12 * max(1.0, observed))) / (k + 1)
    assert res.p_value == pytest.approx(expected, abs=1e-12)
    assert res.p_value == calibrate("linear_regression", x.astype(np.float64), y.astype(np.float64),
                                    permutations=k, seed=0).p_value


@pytest.mark.parametrize("call, message", [
    (lambda: chance_level("mutual_knn", 3, topk=5), r"topk must be in \[1, n - 1\] = \[1, 2\], got 5"),
    (lambda: chance_level("cycle_knn", 1, topk=1), r"n must be an integer >= 2, got 1"),
    (lambda: chance_level("jaccard_knn", 10.5), r"n must be an integer >= 2, got 10.5"),
    (lambda: calibrate("cka", layers(seed=1), layers(seed=2), permutations=3, seed=1.7), r"seed must be an integer >= 0, got 1.7"),
    (lambda: calibrate("cka", layers(seed=1), layers(seed=2), permutations=3, alpha=1.5), r"alpha must be in \(0, 1\)"),
    (lambda: calibrate("cka", layers(seed=1), layers(seed=2), permutations=3, aggregate="median"), r"aggregate must be 'max' or 'mean'"),
])
def test_bad_settings_are_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_mean_aggregate_of_exact_counts_counts_rounding_ties() -> None:
    """``aggregate='mean'`` reached ``tie_tolerance`` as a dtype, so the exact-count metrics kept
    a tolerance of 0 and a null mean equal to the observed one up to summation order (e.g.
    0.0925925925925926 against 0.09259259259259259) was not counted: p too small. The p-value
    must equal the documented rule with the float64 tolerance."""
    rng = np.random.default_rng(1)
    differ = 0
    for s in range(30):
        xs = [rng.normal(size=(30, 4)) for _ in range(3)]
        ys = [rng.normal(size=(30, 4)) for _ in range(3)]
        r = calibrate("mutual_knn", xs, ys, permutations=200, seed=s, aggregate="mean", topk=3)
        tol = TIE_RTOL[torch.float64] * max(1.0, abs(r.observed))
        expected = (1 + np.sum(r.null - r.observed >= -tol)) / (r.null.size + 1)
        differ += r.p_value != pytest.approx(expected, abs=1e-15)
    assert differ == 0


def test_permutations_counts_the_valid_null_draws() -> None:
    """A user metric undefined (NaN) on some permutations: ``permutations`` said the requested
    K while p rested on fewer draws; it is now the count p and tau are computed from."""
    from tasks.metrics import register_metric
    from tasks.metrics.registry import unregister_metric

    def first_column_product(x, y, **params):  # NaN whenever the permutation puts a negative first
        return float("nan") if float(y[0, 0]) < 0 else float((x[:, 0] * y[:, 0]).mean())

    register_metric("test_half_nan", first_column_product, bounds=(-1.0, 1.0), symmetric=False, overwrite=True)
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(50, 2))
        y = x + 0.1 * rng.normal(size=(50, 2))
        r = calibrate("test_half_nan", [x], [y], permutations=40, seed=0)
    finally:
        unregister_metric("test_half_nan")
    valid = int(np.sum(~np.isnan(r.null)))
    assert 0 < valid < 40 and r.null.size == 40
    assert r.permutations == valid and r.p_value == pytest.approx(1 / (valid + 1))


@pytest.mark.parametrize("lo, hi", [(0.0, math.inf), (-math.inf, math.inf), (0.0, 4.0)])
def test_a_lower_is_better_score_equal_to_tau_calibrates_to_plus_zero(lo: float, hi: float) -> None:
    """observed == tau (always with fewer than 19 permutations) gave -0.0 for a lower-is-better
    metric (0.0 / negative; max(-0.0, 0.0) keeps -0.0), shown as "-0.000" in the summary and report."""
    _, _, calibrated = _calibration_numbers(2.5, np.array([3.0, 2.9, 2.8]), 0.05, lo, hi, higher_is_better=False)
    assert calibrated == 0.0 and math.copysign(1.0, calibrated) == 1.0 and f"{calibrated:.3f}" == "0.000"


@pytest.mark.parametrize("n, k", [(10, 3), (30, 1), (50, 7), (8, 7)])
def test_chance_levels_from_their_definitions(n: int, k: int) -> None:
    """``jaccard_knn``: ``E[c / (2k - c)]`` with ``c`` hypergeometric (``k`` draws from the
    ``n - 1`` other samples, ``k`` of them marked), summed exactly with binomial coefficients;
    ``mutual_knn``: ``k / (n - 1)``; ``cycle_knn``: ``1 - (1 - k/(n-1))^k``. ``topk=1`` and
    ``topk=n-1`` (the ends of the allowed range) included."""
    others = n - 1
    jaccard = sum(Fraction(math.comb(k, c) * math.comb(others - k, k - c), math.comb(others, k)) * Fraction(c, 2 * k - c)
                  for c in range(0, k + 1))
    assert chance_level("jaccard_knn", n, topk=k) == pytest.approx(float(jaccard), rel=1e-12)
    assert chance_level("mutual_knn", n, topk=k) == pytest.approx(k / others, rel=1e-15)
    assert chance_level("cycle_knn", n, topk=k) == pytest.approx(1 - (1 - k / others) ** k, rel=1e-12)


def test_progress_is_told_after_each_batch_and_changes_no_number() -> None:
    """``progress(done, total)`` after every batch of permutations handed to the engine; the null,
    and so every number, is the one computed without it (same permutation stream)."""
    from tasks.metrics.calibration import PERMUTATION_BATCH

    xs, ys = layers(n=30, seed=1), layers(n=30, widths=(5, 11), seed=2)
    k = 2 * PERMUTATION_BATCH + 5
    calls: list[tuple[int, int]] = []
    told = calibrate("mutual_knn", xs, ys, permutations=k, seed=4, topk=4, progress=lambda done, total: calls.append((done, total)))
    plain = calibrate("mutual_knn", xs, ys, permutations=k, seed=4, topk=4)
    assert calls == [(PERMUTATION_BATCH, k), (2 * PERMUTATION_BATCH, k), (k, k)]
    assert told.null.tobytes() == plain.null.tobytes() and told == plain


def test_an_observed_value_tied_with_tau_is_not_above_chance() -> None:
    """An exact fit's R^2 is 1 under every permutation, up to rounding: with the observed value
    1 - 4e-16 and tau 1 - 7e-16, p was 1 (a tie, as documented) but the calibrated score
    (obs - tau) / (1 - tau) was 1/3 (1 seed in 60 of this shape; 5% of exact fits can be the largest value).
    A value within the tie tolerance of tau is chance: 0."""
    null = np.full(19, 0.9999999999999993)
    tau, p, cal = _calibration_numbers(1.0000000000000002, null, 0.05, 0.0, 1.0, tie_rtol=TIE_RTOL[torch.float64])
    assert p == 1.0 and cal == 0.0
    _, p, cal = _calibration_numbers(0.9999999999999996, null, 0.05, 0.0, 1.0, tie_rtol=TIE_RTOL[torch.float64])
    assert p == 1.0 and cal == 0.0
    # lower is better and unbounded: the same rule
    assert _calibration_numbers(0.5, np.full(19, 0.5 + 1e-9), 0.05, 0.0, 1.0, False, 1e-5)[2] == 0.0
    assert _calibration_numbers(2.0 + 1e-9, np.full(19, 2.0), 0.05, 0.0, math.inf, True, 1e-5)[2] == 0.0
    # beyond the tolerance it still counts
    assert _calibration_numbers(0.9, np.full(19, 0.5), 0.05, 0.0, 1.0, True, 1e-5)[2] == pytest.approx(0.8)
    for seed in range(60):  # the exact fit through calibrate: seed 51 gave calibrated 1/3 with p = 1
        rng = np.random.default_rng(seed)
        res = calibrate("linear_regression", [rng.normal(size=(12, 16))], [rng.normal(size=(12, 12))],
                        permutations=19, seed=seed)
        assert res.p_value == 1.0 and res.calibrated == 0.0, (seed, res)


def test_a_metric_undefined_everywhere_calibrates_to_nan_without_numpys_warnings() -> None:
    """A user metric that is NaN on every layer pair (reviewer P): its null is all NaN, and numpy's
    "Mean of empty slice" / "Degrees of freedom <= 0" warnings went straight to the run's terminal
    for every such pair. Every number is NaN, quietly."""
    import warnings

    from tasks.metrics import register_metric
    from tasks.metrics.registry import unregister_metric

    register_metric("test_all_nan", lambda x, y, **params: float("nan"), bounds=(0.0, 1.0), overwrite=True)
    try:
        rng = np.random.default_rng(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = calibrate("test_all_nan", [rng.normal(size=(20, 3))], [rng.normal(size=(20, 2))], permutations=9, seed=0)
    finally:
        unregister_metric("test_all_nan")
    assert all(math.isnan(v) for v in (r.observed, r.null_mean, r.null_std, r.tau, r.p_value, r.calibrated))
    assert r.permutations == 0


# --------------------------------------------------------- rows that move together (an image's captions)

def _image_rows(rng: np.random.Generator, images: int, captions: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """A vision side that knows only which image a row is (a random vector per image, repeated for
    its captions) and a language side that knows the image's content (content + noise per caption):
    the two are independent, but both group the rows by image."""
    content, identity = rng.standard_normal((images, 8)), rng.standard_normal((images, 8))
    x = np.repeat(identity, captions, axis=0)
    y = np.repeat(content, captions, axis=0) + 0.5 * rng.standard_normal((images * captions, 8))
    unit = [(v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32) for v in (x, y)]
    return [unit[0]], [unit[1]], np.repeat([f"img{i}" for i in range(images)], captions)


def test_block_permutations_move_whole_groups_onto_groups_of_their_size() -> None:
    """Each draw is a bijection taking the rows of a group, in row order, to the rows of a group
    of the same size, in row order; every such target is reached; a group whose size is unique stays."""
    from tasks.metrics.calibration import block_permutations

    labels = ["b", "a", "b", "c", "a", "d", "e", "e", "f", "b", "g"]  # sizes: b 3, a 2, e 2, c/d/f/g 1
    rows = {g: [i for i, label in enumerate(labels) if label == g] for g in set(labels)}
    perms = block_permutations(labels, 300, torch.Generator().manual_seed(5))
    assert perms.shape == (300, len(labels)) and perms.dtype == torch.int64
    reached: dict[str, set[str]] = {g: set() for g in rows}
    for perm in perms.tolist():
        assert sorted(perm) == list(range(len(labels)))
        for g, members in rows.items():
            target = next(h for h, others in rows.items() if others == [perm[i] for i in members])
            assert len(rows[target]) == len(members)
            reached[g].add(target)
    assert reached["b"] == {"b"} and reached["a"] == reached["e"] == {"a", "e"}
    assert reached["c"] == reached["d"] == reached["f"] == reached["g"] == {"c", "d", "f", "g"}


def test_a_grouped_null_equals_recomputation_from_block_permuted_features() -> None:
    """With ``groups`` each null value is the statistic recomputed from ``y`` reordered by a
    whole-group permutation, and one-row groups give exactly the ungrouped null."""
    from tasks.metrics.calibration import block_permutations

    xs, ys = layers(n=30, seed=1), layers(n=30, widths=(5, 11), seed=2)
    groups = np.repeat(np.arange(10), 3)
    res = calibrate("mutual_knn", xs, ys, permutations=4, seed=3, topk=4, groups=groups)
    for t, perm in enumerate(block_permutations(groups, 4, torch.Generator().manual_seed(3)).numpy()):
        assert sorted(set(perm[groups == 0] // 3)) == [perm[0] // 3]  # the rows of image 0 went to one image
        assert res.null[t] == pytest.approx(aggregate(layer_matrix("mutual_knn", xs, [y[perm] for y in ys], topk=4))[0])
    single = calibrate("mutual_knn", xs, ys, permutations=4, seed=3, topk=4, groups=[f"s{i}" for i in range(30)])
    plain = calibrate("mutual_knn", xs, ys, permutations=4, seed=3, topk=4)
    np.testing.assert_array_equal(single.null, plain.null)


def test_captions_of_one_image_need_the_grouped_null() -> None:
    """Independent vision and language sides that both group rows by image: shuffling single rows
    finds them aligned every time (the null loses the grouping the observed score keeps), moving
    whole images does not. 30 datasets, K = 49: under a valid null P(p <= 0.05) = 0.04 (at most
    4 of 30 has probability 0.97 for Binomial(30, 0.04)); the single-row null gave p = 1/50 in
    every dataset."""
    rng = np.random.default_rng(11)
    small = {"grouped": 0, "single rows": 0}
    for seed in range(30):
        xs, ys, groups = _image_rows(rng, images=20, captions=3)
        for how, given in (("grouped", groups), ("single rows", None)):
            res = calibrate("mutual_knn", xs, ys, permutations=49, seed=seed, topk=5, groups=given)
            small[how] += res.p_value <= 0.05
    assert small["single rows"] >= 27 and small["grouped"] <= 4, small


def test_groups_must_be_one_label_per_row() -> None:
    xs, ys = layers(n=12, seed=1), layers(n=12, seed=2)
    with pytest.raises(ValueError, match="groups has 11 labels for 12 rows"):
        calibrate("cka", xs, ys, permutations=3, groups=list(range(11)))
    with pytest.raises(ValueError, match="groups holds NaN"):
        calibrate("cka", xs, ys, permutations=3, groups=[0.0] * 11 + [math.nan])


def test_null_mean_and_std_are_the_population_moments_of_the_draws() -> None:
    """``null_mean`` and ``null_std`` (ddof=0, as documented) of the ``K`` null aggregates, here
    recomputed from the permuted features (the documented stream: ``torch.randperm`` drawn from a
    generator seeded with ``seed``). With K = 5 draws ddof=1 is 12% larger: told apart."""
    xs, ys = layers(n=25, seed=3), layers(n=25, widths=(6, 9), seed=4)
    res = calibrate("cka", xs, ys, permutations=5, seed=11)
    draws = np.array([aggregate(layer_matrix("cka", xs, [y[perm] for y in ys]))[0] for perm in _perms(25, 5, 11)])
    assert res.null_mean == pytest.approx(float(np.sum(draws) / 5), rel=1e-9)
    population = math.sqrt(float(np.sum((draws - draws.mean()) ** 2) / 5))
    assert res.null_std == pytest.approx(population, rel=1e-6)


def test_mean_aggregate_null_draws_are_means_over_layer_pairs() -> None:
    """With ``aggregate='mean'`` every null draw is the mean over layer pairs of the permuted
    pair's scores, like the observed value (not their max): float64 reference CKA of ``x``
    against ``y[perm]`` for the documented permutation stream."""
    from . import reference as ref

    xs, ys = layers(n=20, seed=12), layers(n=20, widths=(5, 8), seed=13)
    res = calibrate("cka", xs, ys, permutations=4, seed=2, aggregate="mean")
    assert res.observed == pytest.approx(np.mean([ref.cka(x, y) for x in xs for y in ys]), abs=1e-12)
    for t, perm in enumerate(_perms(20, 4, 2)):
        scores = [ref.cka(x, y[perm]) for x in xs for y in ys]
        assert max(scores) - np.mean(scores) > 1e-3  # the mean and the max tell apart here
        assert res.null[t] == pytest.approx(np.mean(scores), abs=1e-12)


def test_a_grouped_null_numbers_the_groups_once(monkeypatch) -> None:
    """The groups are numbered (``group_index``: a sort of the labels) once per calibration, not
    once per batch of permutations (12 ms a batch against 60 ms of draws at N = 100,000), and the
    draws are those of ``block_permutations``."""
    from tasks.metrics import calibration
    from tasks.metrics.calibration import block_permutations

    calls = []
    counted = calibration.group_index
    monkeypatch.setattr(calibration, "group_index", lambda *a: calls.append(1) or counted(*a))
    xs, ys = layers(n=30, seed=1), layers(n=30, seed=2)
    groups = np.repeat(np.arange(10), 3)
    k = 2 * calibration.PERMUTATION_BATCH + 3
    res = calibrate("mutual_knn", xs, ys, permutations=k, seed=4, topk=4, groups=groups)
    assert len(calls) == 1
    perms = block_permutations(groups, k, torch.Generator().manual_seed(4)).numpy()
    for t in (0, calibration.PERMUTATION_BATCH, k - 1):
        assert res.null[t] == pytest.approx(aggregate(layer_matrix("mutual_knn", xs, [y[perms[t]] for y in ys], topk=4))[0])


@pytest.mark.parametrize("metric, params", [("mutual_knn", {"topk": 5}), ("cka", {})])
def test_the_grouped_null_holds_for_two_caption_sides(metric, params) -> None:
    """Language x language under ``unit: sample``: both sides vary per caption (each a model of
    its own image content, independent of the other's, plus per-caption noise), and images have
    1 to 3 captions (three group sizes). Moving whole images keeps P(p <= 0.05) at its level
    (30 datasets, K = 39: at most 4 small p-values has probability 0.97 under a valid null);
    single rows find the two aligned in most datasets."""
    rng = np.random.default_rng(23)
    small = {"grouped": 0, "single rows": 0}
    for seed in range(30):
        captions = rng.integers(1, 4, size=24)
        image_of = np.repeat(np.arange(24), captions)
        sides = []
        for _ in range(2):
            content = rng.standard_normal((24, 8))
            v = content[image_of] + 0.5 * rng.standard_normal((len(image_of), 8))
            sides.append([(v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)])
        for how, given in (("grouped", image_of), ("single rows", None)):
            res = calibrate(metric, sides[0], sides[1], permutations=39, seed=seed, groups=given, **params)
            small[how] += res.p_value <= 0.05
    assert small["grouped"] <= 4 and small["single rows"] >= 20, small
