"""Subsampling intervals of kernel metrics: coverage, no duplicate-row bias, reuse of the
observed matrix and of cached Grams."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from tasks.metrics import Representation, aggregate, bootstrap_ci, layer_matrix
from tasks.metrics.bootstrap import subsample_interval, subsample_size

from . import reference
from .conftest import layers, paired

N = 60
_W = np.random.default_rng(123)
WX = [_W.normal(size=(4, 10)) for _ in range(2)]
WY = [_W.normal(size=(4, 8)) for _ in range(2)]


def draw(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One dataset of a fixed generator: a shared latent seen linearly (x) and through tanh (y),
    two layers per side with different noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, 4))
    xs = [z @ w + s * rng.normal(size=(N, 10)) for w, s in zip(WX, (1.0, 2.0))]
    ys = [np.tanh(z @ w) + s * rng.normal(size=(N, 8)) for w, s in zip(WY, (0.5, 1.5))]
    return xs, ys


@pytest.mark.parametrize("metric", ["cka", "mutual_knn"])
def test_subsample_interval_covers_the_expected_score(metric: str) -> None:
    """Across independent datasets of one generator, the 95% interval covers the mean of the
    estimates (the expected size-N score) about 95% of the time, and its standard error matches
    the estimates' spread (the sqrt(m/(N-m)) factor; sqrt(m/N) would be ~30% too small). For
    mutual k-NN, reweighting per-sample terms over fixed neighbour lists covered ~0.70 with a
    standard error ~0.6 of the spread: the neighbour graph varies with the sample too."""
    estimates = np.array([aggregate(layer_matrix(metric, *draw(10_000 + s), topk=5))[0] for s in range(800)])
    target, spread = estimates.mean(), estimates.std()
    hits, ses = [], []
    for s in range(80):
        ci = bootstrap_ci(metric, *draw(s), n_boot=80, seed=s, topk=5)
        assert ci.method == "subsample" and ci.resample_size == N // 2
        hits.append(ci.low <= target <= ci.high)
        ses.append(ci.std)
    assert 0.85 <= np.mean(hits) <= 1.0
    assert 0.8 <= np.mean(ses) / spread <= 1.25


def test_cknna_interval_is_not_pulled_up_by_duplicates() -> None:
    """With-replacement resampling put CKNNA's interval far above the estimate (duplicated rows
    are mutual neighbours in both spaces); subsampling intervals surround it."""
    xs, ys = layers(n=120, seed=5), layers(n=120, widths=(10, 6), seed=6)
    res = bootstrap_ci("cknna", xs, ys, n_boot=40, seed=2, topk=5)
    assert res.method == "subsample"
    assert res.low < res.estimate < res.high
    assert res.high - res.low < 0.5


def test_observed_matrix_is_used_not_recomputed() -> None:
    x, y = paired(n=50, seed=7)
    m = layer_matrix("unbiased_cka", x, y)
    plain = bootstrap_ci("unbiased_cka", x, y, n_boot=30, seed=3)
    given = bootstrap_ci("unbiased_cka", x, y, n_boot=30, seed=3, observed=m)
    assert given == plain
    shifted = bootstrap_ci("unbiased_cka", x, y, n_boot=30, seed=3, observed=m + 0.25)
    assert shifted.estimate == pytest.approx(plain.estimate + 0.25)
    assert shifted.low == pytest.approx(plain.low + 0.25)
    knn = bootstrap_ci("mutual_knn", x, y, n_boot=30, observed=np.full((1, 1), 0.5), topk=4)
    assert knn.estimate == 0.5 and knn.method == "subsample"
    with pytest.raises(ValueError, match="observed"):
        bootstrap_ci("cka", x, y, n_boot=5, observed=np.zeros((2, 1)))


def test_subsample_size_argument() -> None:
    x, y = paired(n=40, seed=8)
    assert bootstrap_ci("cka", x, y, n_boot=5, subsample=30).resample_size == 30
    assert bootstrap_ci("cka", x, y, n_boot=5, subsample=0.25).resample_size == 10
    for bad in (0, 1.0, 40, -3, 0.01):
        with pytest.raises(ValueError, match="subsample"):
            bootstrap_ci("cka", x, y, n_boot=5, subsample=bad)


@pytest.mark.parametrize("n, fraction, m", [(10, 0.66, 7), (40, 0.29, 12), (43, 0.5, 22), (40, 0.26, 10)])
def test_subsample_fraction_rounds_to_the_nearest_row_count(n: int, fraction: float, m: int) -> None:
    """``m = round(subsample * N)`` (6.6 rows are 7, not 6; 21.5 rounds half to even: 22)."""
    assert subsample_size(n, fraction) == m


def test_subset_reuses_cached_grams_of_wide_layers(monkeypatch) -> None:
    """A subset reads a layer's Gram off the parent's cached one where that is cheaper than its
    own product (``PARENT_GRAM_MIN_WIDTH_ROWS``: wide layers; always on a GPU), else multiplies
    its own rows: reading the rows of a cold Gram cost more than the product of the demo's 16-320
    wide CNN layers (CKA's bootstrap 30% slower). The scores are the same either way."""
    from tasks.metrics import gram, representation

    rng = np.random.default_rng(9)
    xs = layers(n=30, seed=9) + [rng.normal(size=(30, 900))]  # widths 12, 7, 16 and 900
    rep = Representation(xs).cache_grams()
    rows = torch.tensor([0, 3, 4, 10, 29])
    sub = rep.subset(rows)
    assert sub.n == 5 and len(sub) == len(xs)
    # 5 rows of 30: the parent's rows where D * 5 >= 128 * 35, i.e. D >= 896
    assert [sub.cached_gram(l) is not None for l in range(len(xs))] == [False, False, False, True]
    np.testing.assert_allclose(sub.cached_gram(3).numpy(), xs[3][rows] @ xs[3][rows].T, rtol=1e-12)
    want = layer_matrix("cka", [x[rows] for x in xs], [x[rows] for x in xs])
    np.testing.assert_allclose(layer_matrix("cka", sub, sub), want, atol=1e-12)
    for patch in (lambda: monkeypatch.setattr(representation, "PARENT_GRAM_MIN_WIDTH_ROWS", 0),
                  lambda: monkeypatch.setattr(gram, "BATCHED_DEVICE_TYPES", {"cuda", "cpu"})):
        monkeypatch.undo()
        patch()
        sub = rep.subset(rows)
        for l, x in enumerate(xs):  # every layer's Gram read off the parent's
            np.testing.assert_allclose(sub.cached_gram(l).numpy(), x[rows] @ x[rows].T, atol=1e-12)
        np.testing.assert_allclose(layer_matrix("cka", sub, sub), want, atol=1e-12)
    assert Representation(xs).subset(rows).cached_gram(0) is None


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_subset_neighbour_lists_equal_a_fresh_search(cached: bool, exclude_self: bool) -> None:
    """Lists read off the full sample's deeper lists equal a top-k on the subsample itself,
    including rows the deeper list cannot settle (a tiny subset forces those)."""
    rng = np.random.default_rng(4)
    xs = [rng.normal(size=(200, 12)), rng.normal(size=(200, 5)).astype(np.float32)]
    rep = Representation(xs).cache_grams() if cached else Representation(xs)
    for m, k in ((100, 10), (40, 7), (12, 11 if exclude_self else 12), (150, 3)):
        rows = torch.as_tensor(np.sort(rng.choice(200, m, replace=False)))
        sub = rep.subset(rows)
        fresh = Representation([x[rows.numpy()] for x in xs])
        for l in range(len(xs)):
            v, i = sub.knn(l, k, exclude_self=exclude_self)
            fv, fi = fresh.knn(l, k, exclude_self=exclude_self)
            assert i.shape == (m, k) and torch.equal(i, fi), (m, k, l)
            torch.testing.assert_close(v, fv, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"topk must be in \[1, 11\] for N=12"):
        rep.subset(torch.arange(12)).knn(0, 12)
    assert "_copies" in vars(sub.layers) and not sub.layers._copies  # no metric read the features


def test_subset_rows_without_enough_listed_members_are_searched_again(monkeypatch) -> None:
    import tasks.metrics.representation as representation

    monkeypatch.setattr(representation, "candidate_depth", lambda k, n, m, kmax: k)  # lists too short
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(80, 6))]
    rows = torch.as_tensor(np.sort(rng.choice(80, 50, replace=False)))
    v, i = Representation(xs).subset(rows).knn(0, 6)
    fv, fi = Representation([xs[0][rows.numpy()]]).knn(0, 6)
    assert torch.equal(i, fi)
    torch.testing.assert_close(v, fv)


def test_subset_rows_searched_again_exclude_themselves_among_rows_kept(monkeypatch) -> None:
    """Lists 3 deeper than k: about three rows in four lack k subset members and are searched
    again, the others keep the lists read off the parent; a re-searched row must mask its own
    column (its subset index), not the column of its place among the re-searched rows. Checked
    against the loop reference on the subset's rows."""
    import tasks.metrics.representation as representation

    monkeypatch.setattr(representation, "candidate_depth", lambda k, n, m, kmax: k + 3)
    searched = []
    search_rows = Representation._search_rows

    def spy(self, layer, redo, *args):
        searched.append(int(redo.numel()))
        return search_rows(self, layer, redo, *args)

    monkeypatch.setattr(Representation, "_search_rows", spy)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 6))
    rows = np.sort(rng.choice(80, 50, replace=False))
    _, got = Representation([x]).subset(torch.as_tensor(rows)).knn(0, 6)
    assert searched and 0 < searched[0] < 50  # some rows searched again, not all
    np.testing.assert_array_equal(got.numpy(), reference.knn_lists(x[rows], 6))


def test_interval_stays_within_the_metric_range() -> None:
    """Near a bound the deviations can carry an interval past it (CKA's reached -0.026)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 30))
    free = bootstrap_ci("cka", x, y, n_boot=50, seed=1)
    assert 0 < free.low < free.estimate < free.high < 1
    spread = (free.low - free.estimate, free.high - free.estimate)
    at_zero = bootstrap_ci("cka", x, y, n_boot=50, seed=1, observed=np.zeros((1, 1)))  # same replicates, estimate 0
    assert (at_zero.low, at_zero.high) == (0.0, pytest.approx(spread[1]))
    at_one = bootstrap_ci("cka", x, y, n_boot=50, seed=1, observed=np.ones((1, 1)))
    assert (at_one.low, at_one.high) == (pytest.approx(1 + spread[0]), 1.0)
    beyond = bootstrap_ci("cka", x, y, n_boot=50, seed=1, observed=np.full((1, 1), 1.5))  # never excludes the estimate
    assert beyond.low == pytest.approx(1.5 + spread[0]) and beyond.high == 1.5


def test_degenerate_subsamples_are_skipped_not_fatal() -> None:
    """A width-1 layer of +-1 rows with 2 odd rows in 12: a half subsample holding fewer than 2 of
    them is refused by unbiased_cka (constant, or an unbiased self-HSIC of exactly 0); those
    replicates are skipped and the interval comes from the others. When every subsample is
    refused (3 rows: the unbiased estimator needs 4), a clear error."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(12, 3))
    x = -np.ones((12, 1))
    x[[2, 7]] = 1.0
    result = bootstrap_ci("unbiased_cka", [x], [y], n_boot=40, seed=1)
    assert math.isfinite(result.low) and math.isfinite(result.high) and result.low <= result.estimate <= result.high
    # the plugin hunt: the skipped ones were not counted anywhere (n_boot said 40)
    draws = np.random.default_rng(1)
    refused = sum(len({2, 7} & set(draws.choice(12, 6, replace=False))) < 2 for _ in range(40))
    assert result.n_refused == refused and 0 < refused < 40
    with pytest.raises(ValueError, match="every one of the 40 bootstrap subsamples of 3 rows was refused"):
        bootstrap_ci("unbiased_cka", [x], [y], n_boot=40, seed=1, subsample=3)


def test_saturated_subsamples_give_an_interval_around_the_estimate_flagged_degenerate() -> None:
    """cycle_knn at N=40, topk=10: a half subsample (20 rows, 10 neighbours each) almost always
    scores 1, so the deviations' quantiles both lay above 0 and the interval missed its own
    estimate ([1.001, 1.0] around 1.0; [0.951, 0.951] around 0.95). Now low <= estimate <= high
    within [0, 1], flagged degenerate with a warning. Reference: the replicates recomputed
    from the definition (numpy k-NN lists) on the same subsamples, then the documented formula."""
    rng = np.random.default_rng(14)
    level, tail, n, m, k = 0.95, 0.025, 40, 20, 10
    for seed in range(6):
        x, y = rng.normal(size=(n, 16)), rng.normal(size=(n, 16))
        warning = r"bootstrap_ci\(cycle_knn\): .* does not measure its sampling spread"
        with pytest.warns(RuntimeWarning, match=warning):
            res = bootstrap_ci("cycle_knn", x, y, n_boot=100, seed=seed, level=level, topk=k)
        estimate = reference.cycle_knn(x, y, k)
        draws = np.random.default_rng(seed)
        reps = []
        for _ in range(100):
            idx = np.sort(draws.choice(n, m, replace=False))
            reps.append(reference.cycle_knn(x[idx], y[idx], k))
        reps = np.array(reps)
        c = math.sqrt(m / (n - m))
        raw = estimate + c * np.quantile(reps - reps.mean(), [tail, 1 - tail])
        assert res.estimate == pytest.approx(estimate, abs=1e-12)
        assert res.low == pytest.approx(min(max(raw[0], 0.0), estimate), abs=1e-12)
        assert res.high == pytest.approx(max(min(raw[1], 1.0), estimate), abs=1e-12)
        assert 0.0 <= res.low <= res.estimate <= res.high <= 1.0
        assert np.mean(reps == 1.0) >= 0.5 and res.degenerate


def test_degenerate_flag_is_not_raised_for_spread_replicates(recwarn) -> None:
    """Replicates spread inside the range (no share of them on a bound, an interval around the
    estimate before any limit) are not flagged and warn nothing."""
    xs, ys = draw(3)
    for metric in ("cka", "mutual_knn", "cycle_knn"):
        res = bootstrap_ci(metric, xs, ys, n_boot=40, seed=1, topk=5)
        assert not res.degenerate and res.low < res.estimate < res.high
    assert not [w for w in recwarn if "bootstrap_ci" in str(w.message)]


def test_interval_limits_keep_the_estimate_inside() -> None:
    """The formula with its limits, on replicates given directly: both ends stay within the
    range widened to the estimate and on either side of it."""
    reps = np.array([1.0] * 98 + [0.9, 0.95])  # a point mass on the upper bound
    low, high, degenerate, share = subsample_interval(0.95, reps, 1.0, 0.95, (0.0, 1.0))
    assert (low, high, degenerate, share) == (0.95, pytest.approx(0.95 + 1.0 - reps.mean()), True, 0.98)
    low, high, degenerate, _ = subsample_interval(1.0, reps, 1.0, 0.95, (0.0, 1.0))
    assert (low, high, degenerate) == (1.0, 1.0, True)
    spread = np.linspace(0.2, 0.4, 101)  # symmetric around 0.3: quantiles 0.205 and 0.395
    low, high, degenerate, share = subsample_interval(0.3, spread, 1.0, 0.95, (0.0, 1.0))
    assert (low, high, degenerate, share) == (pytest.approx(0.205), pytest.approx(0.395), False, 0.0)
    low, high, _, _ = subsample_interval(0.3, spread, 2.0, 0.95, (0.25, 0.33))  # clipped to the range
    assert (low, high) == (0.25, 0.33)
    low, high, _, _ = subsample_interval(1.2, spread, 1.0, 0.95, (-1.0, 1.0))  # nominal bounds left
    assert (low, high) == (pytest.approx(1.105), 1.2)
    nan = np.concatenate([spread, [np.nan] * 5])  # refused subsamples are left out
    assert subsample_interval(0.3, nan, 1.0, 0.95, (0.0, 1.0))[:2] == (pytest.approx(0.205), pytest.approx(0.395))


@pytest.mark.parametrize("fraction", [np.float32(0.5), np.float64(0.5), Fraction(1, 2), 0.5])
def test_subsample_fraction_of_any_real_type(fraction) -> None:
    """np.float32(0.5) was refused for its type alone."""
    x, y = paired(n=40, seed=8)
    assert subsample_size(40, fraction) == 20
    assert bootstrap_ci("cka", x, y, n_boot=5, subsample=fraction).resample_size == 20
    assert subsample_size(40, np.int64(30)) == subsample_size(40, 30.0) == 30
    for bad in (True, np.float32(np.nan), float("inf"), "0.5", None, 1.5, np.float32(-0.5)):
        with pytest.raises(ValueError, match="subsample must be a fraction in"):
            subsample_size(40, bad)


def test_replicates_all_on_one_value_away_from_the_estimate_are_flagged_degenerate():
    """Every replicate on one value other than the estimate: the deviations from their mean are
    all 0, so the interval came out [estimate, estimate], 'missed' nothing and was not flagged
    (a stored edit_distance_knn interval of zero width at 0.0139 whose two replicates were 0.0278)."""
    low, high, degenerate, _ = subsample_interval(0.025, np.full(200, 0.05), 1.0, 0.95, (0.0, 1.0))
    assert (low, high, degenerate) == (0.025, 0.025, True)
    _, _, degenerate, _ = subsample_interval(0.05, np.full(200, 0.05), 1.0, 0.95, (0.0, 1.0))
    assert not degenerate  # on the estimate itself: a true zero spread
    spread = np.random.default_rng(0).normal(0.5, 0.01, 200)
    assert not subsample_interval(0.5, spread, 1.0, 0.95, (0.0, 1.0))[2]


def test_progress_is_told_after_each_replicate_and_changes_no_number() -> None:
    """``progress(done, total)`` after every replicate, refused ones included; the interval is
    the one computed without it (same subsample stream)."""
    x, y = paired(n=40, dx=6, dy=5)
    calls: list[tuple[int, int]] = []
    told = bootstrap_ci("cka", x, y, n_boot=7, seed=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(r, 7) for r in range(1, 8)]
    assert told == bootstrap_ci("cka", x, y, n_boot=7, seed=3)


def test_two_replicates_apart_are_not_a_pile_and_each_cause_is_named() -> None:
    """Of two replicates each is half of them: the one-value rule flagged every interval of
    ``bootstrap: 2`` (an e2e audit: 16 of 16), though two values apart around the estimate are a
    spread, not a pile. A pile takes two replicates at least; each flag says which rule set it."""
    from tasks.metrics.bootstrap import BOUND, MISSED, PILED, _interval

    low, high, degenerate, _ = subsample_interval(0.5, np.array([0.45, 0.56]), 1.0, 0.95, (0.0, 1.0))
    assert not degenerate and low < 0.5 < high
    assert subsample_interval(0.5, np.array([0.45, 0.45, 0.56]), 1.0, 0.95, (0.0, 1.0))[2]  # two on one value: a pile
    assert _interval(0.5, np.array([0.45, 0.45, 0.56]), 1.0, 0.95, (0.0, 1.0))[2] == PILED
    assert _interval(0.95, np.array([1.0] * 98 + [0.9, 0.95]), 1.0, 0.95, (0.0, 1.0))[2] == BOUND
    # 98 of 100 on the estimate, 2 below: both quantiles of the deviations lie above 0
    assert _interval(1.0, np.array([0.0] * 2 + [1.0] * 98), 1.0, 0.95, (-10.0, 10.0))[2] == MISSED
    assert _interval(0.3, np.linspace(0.2, 0.4, 101), 1.0, 0.95, (0.0, 1.0))[2] is None



# ------------------------------------------------------------------ whole groups (images)

def _grouped_data(seed: int = 21) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """30 images of 1 to 4 captions, rows interleaved (an image's rows are not contiguous): two
    vision layers equal within an image, two language layers of the image's latent plus noise."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=30)
    image = np.repeat(np.arange(30), sizes)
    order = rng.permutation(len(image))
    image = image[order]
    z = rng.normal(size=(30, 3))
    xs = [(z @ rng.normal(size=(3, w)) + 0.5 * rng.normal(size=(30, w)))[image] for w in (6, 4)]
    ys = [z[image] @ rng.normal(size=(3, w)) + s * rng.normal(size=(len(image), w)) for w, s in ((5, 0.5), (7, 1.0))]
    return xs, ys, [f"img{i:02d}" for i in image]


def test_grouped_replicates_take_whole_groups_and_equal_a_float64_reference(monkeypatch) -> None:
    """With ``groups`` every replicate scores ``g = round(G/2)`` whole groups, all their rows;
    the interval equals its definition recomputed in float64 from the features: the groups
    numbered in label order, replicate ``r`` the rows of ``rng.choice(G, g, replace=False)``,
    ``c = sqrt(g / (G - g))``."""
    xs, ys, groups = _grouped_data()
    labels = np.array(groups)
    seen: list[np.ndarray] = []
    subset = Representation.subset
    monkeypatch.setattr(Representation, "subset", lambda self, rows: (seen.append(rows.cpu().numpy()), subset(self, rows))[1])
    got = bootstrap_ci("cka", xs, ys, n_boot=40, seed=5, groups=groups)
    assert got.resample_size == 15 and got.n_groups == 30 and got.n_refused == 0
    assert len(seen) >= 40
    for rows in seen:  # a union of 15 whole groups
        chosen = set(labels[rows])
        assert len(chosen) == 15 and set(np.flatnonzero(np.isin(labels, list(chosen)))) == set(rows)

    names = sorted(set(groups))
    rng = np.random.default_rng(5)
    reps = []
    for _ in range(40):
        picked = [names[i] for i in rng.choice(30, 15, replace=False)]
        rows = np.flatnonzero(np.isin(labels, picked))
        reps.append(max(reference.cka(a[rows], b[rows]) for a in xs for b in ys))
    reps = np.array(reps)
    estimate = max(reference.cka(a, b) for a in xs for b in ys)
    c = math.sqrt(15 / 15)
    q_low, q_high = np.quantile(reps - reps.mean(), [0.025, 0.975])
    want = (estimate, max(estimate + c * q_low, 0.0), min(estimate + c * q_high, 1.0), c * reps.std())
    np.testing.assert_allclose((got.estimate, got.low, got.high, got.std), want, rtol=0, atol=2e-6)


def test_groups_count_the_subsample_and_one_row_groups_change_nothing() -> None:
    """``subsample`` counts groups with ``groups``; groups of one row each give exactly the
    ungrouped result (the same draws), whatever their labels."""
    xs, ys, groups = _grouped_data()
    assert bootstrap_ci("cka", xs, ys, n_boot=5, groups=groups, subsample=6).resample_size == 6
    assert bootstrap_ci("cka", xs, ys, n_boot=5, groups=groups, subsample=0.2).resample_size == 6
    with pytest.raises(ValueError, match=r"subsample gives m = 30 groups of N = 30"):
        bootstrap_ci("cka", xs, ys, n_boot=5, groups=groups, subsample=30)
    n = len(groups)
    for metric, p in (("cka", {}), ("mutual_knn", {"topk": 4})):
        plain = bootstrap_ci(metric, xs, ys, n_boot=30, seed=2, **p)
        for singles in (None, list(range(n)), [f"s{i}" for i in np.random.default_rng(0).permutation(n)]):
            assert bootstrap_ci(metric, xs, ys, n_boot=30, seed=2, groups=singles, **p) == plain
        assert bootstrap_ci(metric, xs, ys, n_boot=30, seed=2, groups=groups, **p) != plain


@pytest.mark.parametrize("groups, message", [
    (["a"] * 10, r"groups has 10 labels for 12 rows"),
    ([["a", "b"]] * 12, r"groups must be one label per row, a 1-D sequence; got shape \(12, 2\)"),
    ([0.0] * 6 + [float("nan")] * 6, r"groups holds NaN"),
    (["a", None] * 6, r"groups labels must be of one comparable kind"),
])
def test_bad_groups_are_refused(groups, message) -> None:
    x, y = paired(n=12, seed=3)
    with pytest.raises(ValueError, match=message):
        bootstrap_ci("cka", x, y, n_boot=5, groups=groups)
