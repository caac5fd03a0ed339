"""CKNNA against the dense mask-based reference of the paper's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.metrics import METRICS, Representation, bootstrap_ci, calibrate, layer_matrix, score

from . import reference as ref
from .conftest import layers, paired


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("k", [2, 5, 12])
def test_matches_reference(unbiased: bool, k: int) -> None:
    x, y = paired(n=36, noise=1.0, seed=k)
    got = score("cknna", x, y, topk=k, unbiased=unbiased)
    assert got == pytest.approx(ref.cknna(x, y, k, unbiased), abs=1e-12)


def test_unnormalised_features_biased_mask_with_self() -> None:
    """Biased variant keeps the diagonal as a candidate; self may or may not be a neighbour."""
    x, y = paired(n=30, seed=21, normalize=False)
    got = score("cknna", x, y, topk=6, unbiased=False)
    assert got == pytest.approx(ref.cknna(x, y, 6, unbiased=False), abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_distance_agnostic(unbiased: bool) -> None:
    x, y = paired(n=30, seed=22)
    got = score("cknna", x, y, topk=6, unbiased=unbiased, distance_agnostic=True)
    assert got == pytest.approx(ref.cknna(x, y, 6, unbiased, distance_agnostic=True), abs=1e-12)


def test_distance_agnostic_full_mask_is_refused_and_a_near_full_one_is_exact_in_float32() -> None:
    """With every candidate a neighbour the distance-agnostic kernels are constant, sim(K, K) = 0:
    the score used to come back 0.0 (a number for an undefined quotient) where any other zero
    self-similarity is refused. One neighbour fewer, the kernel values are exact ones: float32
    input was refused by float32's rounding margin while float64 scored it."""
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=(n, 1))
    y = x @ rng.normal(size=(1, 32)) + 0.5 * rng.normal(size=(n, 32))
    for topk, unbiased in ((None, True), (n - 1, True), (None, False), (n, False)):
        with pytest.raises(ValueError, match="distance_agnostic CKNNA with every candidate a neighbour"):
            score("cknna", x, y, topk=topk, unbiased=unbiased, distance_agnostic=True)
    want = ref.cknna(x, y, n - 2, True, distance_agnostic=True)
    for dtype in (np.float64, np.float32):
        got = score("cknna", x.astype(dtype), y.astype(dtype), topk=n - 2, distance_agnostic=True)
        assert got == pytest.approx(want, abs=1e-12)


def test_layer_matrix_equals_score() -> None:
    xs, ys = layers(seed=8), layers(seed=9, widths=(6, 25))
    m = layer_matrix("cknna", xs, ys, topk=7)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j] == score("cknna", x, y, topk=7)
            assert m[i, j] == pytest.approx(ref.cknna(x, y, 7), abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_topk_none_means_all_neighbours(unbiased: bool) -> None:
    """topk=None (a TypeError in the paper's code): full mask, i.e. linear (unbiased) CKA."""
    x, y = paired(n=20, seed=23)
    got = score("cknna", x, y, topk=None, unbiased=unbiased)
    assert got == pytest.approx(ref.cka(x, y, unbiased=unbiased), abs=1e-12)
    full = 19 if unbiased else 20
    assert score("cknna", x, y, topk=full - 1, unbiased=unbiased) == pytest.approx(
        ref.cknna(x, y, full - 1, unbiased), abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_topk_up_to_the_candidate_count_and_no_further(unbiased: bool) -> None:
    """topk = N-1 (unbiased, self excluded) or N (biased, self a candidate) makes every candidate
    a neighbour: the full mask, i.e. (unbiased) CKA. A larger topk (the paper's torch.topk fails)
    was silently read as "all neighbours"; it is refused now, as by the k-NN metrics."""
    x, y = paired(n=20, seed=24)
    full = 19 if unbiased else 20
    want = ref.cknna(x, y, full, unbiased)  # explicit top-k masks
    assert want == pytest.approx(ref.cka(x, y, unbiased=unbiased), abs=1e-12)
    assert score("cknna", x, y, topk=full, unbiased=unbiased) == pytest.approx(want, abs=1e-12)
    bound = "N-1" if unbiased else "N"
    for k in (full + 1, 1000):
        with pytest.raises(ValueError, match=rf"topk must be in \[2, {bound}\] = \[2, {full}\].*got {k}"):
            score("cknna", x, y, topk=k, unbiased=unbiased)
        with pytest.raises(ValueError, match="topk must be in"):
            layer_matrix("cknna", [x, y], [y], topk=k, unbiased=unbiased)


def test_bootstrap_subsamples_too_small_for_topk_are_refused_as_for_knn_metrics() -> None:
    """N=24, topk=12: a half-size subsample (12 rows) has 11 candidates per row. CKNNA scored it
    as unbiased_cka (the full mask: 0.012 on one subsample, where cknna of all rows is 0.406)
    and returned an interval built from that other statistic, while mutual_knn raised; the
    pipeline relies on the ValueError to leave the interval empty with a warning."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(24, 2))
    x, y = np.c_[z, rng.normal(size=(24, 6))], np.c_[z, rng.normal(size=(24, 6))]
    for metric in ("mutual_knn", "cknna"):
        with pytest.raises(ValueError, match=r"topk must be in \[\d, N-1\] = \[\d, 11\].*got 12"):
            bootstrap_ci(metric, x, y, n_boot=5, seed=0, topk=12)
    got = bootstrap_ci("cknna", x, y, n_boot=5, seed=0, topk=11)  # topk = m - 1: the full mask
    assert got.resample_size == 12 and np.isfinite([got.low, got.high]).all()
    assert got.estimate == pytest.approx(ref.cknna(x, y, 11), abs=1e-12)


def test_requires_topk_at_least_two() -> None:
    x, y = paired()
    with pytest.raises(ValueError):
        score("cknna", x, y, topk=1)


def test_large_n_path_without_gram() -> None:
    xs, ys = layers(seed=10), layers(seed=11)
    a = layer_matrix("cknna", Representation(xs, keep_gram_max_n=1),
                     Representation(ys, keep_gram_max_n=1), topk=5)
    np.testing.assert_allclose(a, layer_matrix("cknna", xs, ys, topk=5), atol=1e-12)


def test_binary_search_path_equals_slot_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large-N lookups (sorted lists) give the same numbers as the dense slot table."""
    import tasks.metrics.cknna as ck

    xs, ys = layers(seed=12), layers(seed=13, widths=(4, 19))
    dense = layer_matrix("cknna", xs, ys, topk=6)
    monkeypatch.setattr(ck, "SLOT_TABLE_MAX_ELEMENTS", 0)
    monkeypatch.setattr(ck, "CPU_SLOT_SCRATCH_MAX_ELEMENTS", 0)
    np.testing.assert_allclose(layer_matrix("cknna", xs, ys, topk=6), dense, atol=1e-12)
    for unbiased in (True, False):
        x, y = xs[0], ys[1]
        assert score("cknna", x, y, topk=6, unbiased=unbiased) == pytest.approx(
            ref.cknna(x, y, 6, unbiased), abs=1e-12)


@pytest.mark.parametrize("share", [0.0, 1.0])  # every matrix dense, or over the mask's entries only
@pytest.mark.parametrize("slots", [True, False])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("agnostic", [False, True])
def test_sparse_and_dense_sums_give_the_reference(monkeypatch: pytest.MonkeyPatch, share: float, slots: bool,
                                                   unbiased: bool, agnostic: bool) -> None:
    """``matrix`` sums over the mask's entries (``hit_sim``) where they are few, else visits every
    x-entry for every y-layer (``masked_sim``): either way, with the slot table or binary search,
    every entry is the float64 reference's, on layers that share structure (many entries in the
    mask), independent ones (few) and the same layer on both sides (all)."""
    import tasks.metrics.cknna as ck

    g = np.random.default_rng(16)
    z = g.standard_normal((40, 3))
    xs = [z @ g.standard_normal((3, 6)) + 0.3 * g.standard_normal((40, 6)), g.standard_normal((40, 5))]
    ys = [z @ g.standard_normal((3, 7)) + 0.3 * g.standard_normal((40, 7)), g.standard_normal((40, 4)), xs[1]]
    monkeypatch.setattr(ck, "SPARSE_MAX_SHARE", share)
    if not slots:
        monkeypatch.setattr(ck, "SLOT_TABLE_MAX_ELEMENTS", 0)
        monkeypatch.setattr(ck, "CPU_SLOT_SCRATCH_MAX_ELEMENTS", 0)
    got = layer_matrix("cknna", xs, ys, topk=6, unbiased=unbiased, distance_agnostic=agnostic)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert got[i, j] == pytest.approx(ref.cknna(x, y, 6, unbiased, distance_agnostic=agnostic), abs=1e-12)
    assert got[1, 2] == pytest.approx(1.0, abs=1e-4)  # the same layer (up to the +1e-6 of the denominator)


@pytest.mark.parametrize("one_layer_fits", [True, False])
def test_dense_sums_build_one_y_layer_slot_table_at_a_time(monkeypatch: pytest.MonkeyPatch, one_layer_fits: bool) -> None:
    """The dense sums look the x-entries up in the slot table of one y-layer at a time, built in a
    buffer and cleared for the next: they run where one layer's table fits the buffer although
    every layer's together would not (N=4,096, 13 layers: the tables of all layers were 218 M
    entries, past ``SLOT_TABLE_MAX_ELEMENTS``, and every list was binary-searched), and leave no
    ``(L, N*N)`` table on either state. Where not even one fits, the sorted lists are searched.
    Either way every entry is the float64 reference's."""
    import tasks.metrics.cknna as ck

    xs, ys = layers(seed=17, widths=(5, 9, 7)), layers(seed=18, widths=(4, 19, 6))
    n = len(xs[0])
    monkeypatch.setattr(ck, "SPARSE_MAX_SHARE", 0.0)  # the dense path
    monkeypatch.setattr(ck, "SLOT_TABLE_MAX_ELEMENTS", 3 * n * n - 1)  # every layer's tables: too many
    monkeypatch.setattr(ck, "CPU_SLOT_SCRATCH_MAX_ELEMENTS", n * n if one_layer_fits else n * n - 1)
    engine = ck.CknnaEngine()
    a, b = (engine.encode(Representation(side), {"topk": 6}) for side in (xs, ys))
    got = engine.matrix(a, b, {"topk": 6})
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert got[i, j] == pytest.approx(ref.cknna(x, y, 6, True), abs=1e-12)
    assert a.slots is None and b.slots is None
    assert (b.sorted_pair is None) == one_layer_fits  # binary search sorts the y-lists


@pytest.mark.parametrize("x_layers", [1, 2])
@pytest.mark.parametrize("unbiased", [True, False])
def test_one_x_layer_per_chunk_gives_the_whole_matrix(monkeypatch: pytest.MonkeyPatch, unbiased: bool,
                                                      x_layers: int) -> None:
    """On a CPU the masked sums run a block of x-layers against a block of y-layers at a time
    (``CPU_CHUNK_ELEMENTS``), y-blocks outside: one layer pair per call, or two of the three
    x-layers against one y-layer, gives every entry the float64 reference gives it."""
    import tasks.metrics.cknna as ck

    xs, ys = layers(seed=14, widths=(5, 9, 7)), layers(seed=15, widths=(4, 19))
    monkeypatch.setattr(ck, "SPARSE_MAX_SHARE", 0.0)  # the dense path, which chunks
    whole = layer_matrix("cknna", xs, ys, topk=6, unbiased=unbiased)
    monkeypatch.setattr(ck, "CPU_CHUNK_ELEMENTS", x_layers * len(xs[0]) * 6)
    chunked = layer_matrix("cknna", xs, ys, topk=6, unbiased=unbiased)
    np.testing.assert_array_equal(chunked, whole)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert chunked[i, j] == pytest.approx(ref.cknna(x, y, 6, unbiased), abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_a_pair_alone_in_its_dense_call_scores_its_bits_in_a_larger_call(monkeypatch: pytest.MonkeyPatch,
                                                                           unbiased: bool) -> None:
    """A dense call of one layer pair reduces each sum to one value; over ``N k >= 32,768``
    entries (torch's grain) and more than one thread torch then splits it between the threads,
    which rounds otherwise than the per-pair sums of a larger call: with the y-layers the outer
    loop (or a side of one layer), a pair's score moved by an ulp with the layer counts and the
    chunk (N=1700, k=20: 1 x 3 layers against each y-layer alone)."""
    import tasks.metrics.cknna as ck

    n, k = 1700, 20
    g = np.random.default_rng(23)
    latent = g.standard_normal((n, 5))
    xs = [latent @ g.standard_normal((5, 8)) + 0.3 * g.standard_normal((n, 8))]
    ys = [latent @ g.standard_normal((5, 8)) + 0.3 * g.standard_normal((n, 8)) for _ in range(3)]
    monkeypatch.setattr(ck, "SPARSE_MAX_SHARE", 0.0)  # the dense path
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rx, ry = Representation(xs), Representation(ys)
        whole = layer_matrix("cknna", rx, ry, topk=k, unbiased=unbiased)  # one call of the 1 x 3 pairs
        alone = [layer_matrix("cknna", rx, Representation([y]), topk=k, unbiased=unbiased)[0, 0] for y in ys]
        monkeypatch.setattr(ck, "CPU_CHUNK_ELEMENTS", 1)  # one pair per call
        chunked = layer_matrix("cknna", rx, ry, topk=k, unbiased=unbiased)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(whole[0], alone)
    np.testing.assert_array_equal(chunked, whole)


def test_sums_stay_sparse_when_dense_calls_take_a_few_y_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where one dense call holds fewer than every y-layer (a large N against the chunk), the
    mask's entries are still summed sparsely while they fit the memory of one x-layer against
    every y-layer: the bound had shrunk with the calls (one layer pair per call: a quarter of
    one pair's entries), so independent layers at large N went dense (at a 1% share 7x slower:
    ``SPARSE_MAX_SHARE``)."""
    import tasks.metrics.cknna as ck

    n, k = 200, 6
    g = np.random.default_rng(17)
    xs = [g.standard_normal((n, 8)) for _ in range(2)]
    ys = [g.standard_normal((n, 8)) for _ in range(6)]  # independent: ~k/N of each pair's entries shared
    monkeypatch.setattr(ck, "CPU_CHUNK_ELEMENTS", n * k)  # one layer pair per dense call
    calls = {"sparse": 0}
    real = ck.hit_sim

    def counted(*args, **kwargs):
        calls["sparse"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ck, "hit_sim", counted)
    got = layer_matrix("cknna", xs, ys, topk=k)
    assert calls["sparse"] == 1
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert got[i, j] == pytest.approx(ref.cknna(x, y, k, True), abs=1e-12)


def test_registered_range_is_nominal_and_the_paper_value_can_leave_it() -> None:
    """(-1, 1) is a nominal range (identical inputs ~1), not a bound: the masks of the numerator
    and of the self-similarities differ. Pinned here with the float64 reference, and what
    calibrate makes of it: calibrated stays in [0, 1], and is 0 once tau >= 1."""
    assert METRICS["cknna"].bounds_for({}) == (-1.0, 1.0)
    r = np.random.default_rng(290)
    n = int(r.integers(3, 9))
    x, y = r.normal(size=(n, 3)), r.normal(size=(n, 3))
    assert n == 4 and ref.cknna(x, y, 2, True) < -2.6
    assert score("cknna", x, y, topk=2) == pytest.approx(ref.cknna(x, y, 2, True), abs=1e-12)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 8))[:3], rng.normal(size=(30, 6))[:3]
    assert ref.cknna(a, b, 2, unbiased=False) > 1.04
    assert score("cknna", a, b, topk=2, unbiased=False) == pytest.approx(ref.cknna(a, b, 2, unbiased=False), abs=1e-12)
    for u, v, p in ((x, y, {"topk": 2}), (a, b, {"topk": 2, "unbiased": False})):
        cal = calibrate("cknna", u, v, permutations=50, seed=0, **p)
        assert cal.tau >= 1.0 and cal.calibrated == 0.0  # the null reaches the nominal maximum


def test_isotropic_scaling_moves_unbiased_scores_only_through_the_epsilon() -> None:
    """docs/metrics.md ("+1e-6 in CKA denominators"): unit-norm rows scaled by 0.1 move
    unbiased_cka 0.413 -> 0.371 and cknna 0.197 -> 0.117; without the epsilon both are scale
    invariant."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = x[:, :8] + 0.2 * rng.normal(size=(200, 8))
    y /= np.linalg.norm(y, axis=1, keepdims=True)

    def parts(a, b, k):  # (numerator, sqrt of the self-similarities) of the reference
        ka, lb = ref.linear_kernel(a), ref.linear_kernel(b)

        def sim(p, q):
            if k is None:
                return ref.hsic_unbiased(p, q)
            m = ref.knn_mask(p, k, True) * ref.knn_mask(q, k, True)
            return ref.hsic_unbiased(m * p, m * q)

        return sim(ka, lb), np.sqrt(sim(ka, ka) * sim(lb, lb))

    for metric, k, at_one, at_tenth in (("unbiased_cka", None, 0.4134, 0.3713), ("cknna", 10, 0.1973, 0.1175)):
        (n1, d1), (n2, d2) = parts(x, y, k), parts(0.1 * x, 0.1 * y, k)
        assert n1 / d1 == pytest.approx(n2 / d2, abs=1e-12)  # the ratio itself is invariant
        assert score(metric, x, y, topk=k) == pytest.approx(n1 / (d1 + 1e-6), abs=1e-10)
        assert score(metric, x, y, topk=k) == pytest.approx(at_one, abs=1e-4)
        assert score(metric, 0.1 * x, 0.1 * y, topk=k) == pytest.approx(n2 / (d2 + 1e-6), abs=1e-10)
        assert score(metric, 0.1 * x, 0.1 * y, topk=k) == pytest.approx(at_tenth, abs=1e-4)


def test_a_layer_whose_masked_self_similarity_is_negative_is_refused() -> None:
    """Masked kernels are not symmetric, so ``sim(K, K)`` can be negative: the paper's sqrt gave
    NaN. Refused (naming side and layer) like a zero unbiased self-HSIC. The value is checked
    with the reference HSIC on the engine's own neighbour lists (no ties here: any valid lists).
    The distance-agnostic ``sim(M, M)`` of the same mask is positive (0.075) and scored."""
    from tasks.metrics import Representation

    x = np.array([[-0.324, -0.619], [1.423, -1.558], [-0.982, 0.345], [0.889, 2.033], [-0.512, -0.592]])
    y = np.random.default_rng(1).normal(size=(5, 3))
    idx = Representation(x).knn(0, 3)[1].numpy()
    mask = np.zeros((5, 5))
    mask[np.arange(5)[:, None], idx] = 1.0
    k = x @ x.T
    assert ref.hsic_unbiased(mask * k, mask * k) == pytest.approx(-0.1597, abs=1e-4)
    assert ref.hsic_unbiased(mask, mask) == pytest.approx(0.075, abs=1e-12)
    with pytest.raises(ValueError, match=r"^x: layer 0 has an unbiased masked self-similarity sim\(K, K\) of -0.16,"):
        score("cknna", x, y, topk=3)
    assert np.isfinite(score("cknna", x, y, topk=3, distance_agnostic=True))


def test_a_negative_distance_agnostic_masked_self_similarity_is_refused(monkeypatch) -> None:
    """The mask's own ``sim(M, M)`` can be negative too, and is refused the same way. Lists that
    give one: four equal rows and one other, ``topk=2``, listed as ``torch.topk`` chose among the
    ties before lists followed the stable-sort rule (valid k-NN lists of these rows; the rule's own
    lists give a positive value here). Fed through the engine's encoding by standing in for the
    representation's search."""
    import torch

    from tasks.metrics import Representation

    x = np.array([[-1.0], [-1.0], [-1.0], [-1.0], [1.0]])
    y = np.random.default_rng(1).normal(size=(5, 3))
    lists = np.array([[1, 3], [2, 3], [0, 3], [1, 2], [1, 3]])
    mask = np.zeros((5, 5))
    mask[np.arange(5)[:, None], lists] = 1.0
    assert ref.hsic_unbiased(mask, mask) < 0
    assert ref.hsic_unbiased(mask * (x @ x.T), mask * (x @ x.T)) < 0
    searched = Representation.knn_stack

    def tied_lists(self, k, exclude_self=True, precision="exact"):
        values, indices = searched(self, k, exclude_self, precision)
        if self.n == 5 and self.layers[0].shape[1] == 1:  # x's side: the lists topk had chosen
            indices = torch.from_numpy(lists)[None].to(indices.device)
            values = torch.gather(self.layers[0] @ self.layers[0].T, 1, indices[0])[None]
        return values, indices

    monkeypatch.setattr(Representation, "knn_stack", tied_lists)
    for params in ({}, {"distance_agnostic": True}):
        with pytest.raises(ValueError, match=r"^x: layer 0 has an unbiased masked self-similarity"):
            score("cknna", x, y, topk=2, **params)


def _large_float32_pair(scale: float, n: int = 40, seed: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Finite float32 features whose rows have norms of about ``9 * scale`` (``scale=1e9``: kernel
    values ~1e20, so a float32 product of an x-value and a y-value overflows)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    x = z @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(n, 8))
    y = z @ rng.normal(size=(3, 6)) + 0.3 * rng.normal(size=(n, 6))
    return (x * scale).astype(np.float32), (y * scale).astype(np.float32)


@pytest.mark.parametrize("unbiased", [True, False])
def test_float32_features_with_large_rows_score_as_their_float64_values(unbiased: bool) -> None:
    """A float32 product of two kernel values ~1e20 is inf, and inf * 0 (not mutual) was NaN:
    CKNNA of finite features came out NaN, observed and null. The products are float64 now."""
    x, y = _large_float32_pair(1e9)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    want = ref.cknna(x64, y64, 5, unbiased)
    assert score("cknna", x, y, topk=5, unbiased=unbiased) == pytest.approx(want, rel=1e-5)
    res = calibrate("cknna", x, y, permutations=4, seed=3, topk=5, unbiased=unbiased)
    g = torch.Generator().manual_seed(3)
    for t in range(4):
        perm = torch.randperm(len(y), generator=g).numpy()
        assert res.null[t] == pytest.approx(ref.cknna(x64, y64[perm], 5, unbiased), rel=1e-4, abs=1e-6)


def test_reverse_membership_without_the_slot_table_is_lists_sized() -> None:
    """Without the dense slot table (L N^2 > 2^26) each neighbour's whole sorted list was gathered:
    an (N k, k) int64 tensor per layer, 2.6 GB at N=8,193, k=200 (an N x N float32 matrix is 268 MB
    there). Now the layer's pairs are sorted keys and the queries are binary-searched."""
    from tests.tasks.metrics.peak_memory import peak_growth

    setup = (
        "from tasks.metrics.cknna import CknnaState, _reverse_membership\n"
        "g = torch.Generator().manual_seed(0)\n"
        "n, k = 6000, 100\n"
        "idx = torch.stack([torch.randperm(n - 1, generator=g)[:k] for _ in range(n)])\n"
        "idx = idx + (idx >= torch.arange(n).view(n, 1)).long()  # no self\n"
        "idx = idx[None]\n"
        "state = CknnaState(idx, idx.float())\n"
        "want = torch.stack([torch.tensor([[int(i) in set(idx[0, j].tolist()) for j in row] for i, row in enumerate(idx[0, :50].tolist())])])\n")
    measured = ("rev = _reverse_membership(state)\n"
                "assert torch.equal(rev[:, :50], want) and rev.any() and not rev.all()\n")
    [extra] = peak_growth(setup, measured)
    assert extra < 60 * 2**20, extra / 2**20  # the old gather: 6000 * 100 * 100 * 8 B = 458 MiB


def _circular_lists_setup(n: int, k: int, layers: int) -> str:
    """Setup code of two ``CknnaState`` of ``layers`` independent random layers each: the lists of
    ``i`` are the next ``k`` samples after it in a random cyclic order of the layer (distinct, no
    self; about ``k^2 / N`` entries of a row shared with another layer's)."""
    return (
        "from tasks.metrics.cknna import CknnaEngine, CknnaState, self_sims\n"
        "g = torch.Generator().manual_seed(0)\n"
        f"n, k, L = {n}, {k}, {layers}\n"
        "def lists():\n"
        "    out = []\n"
        "    for _ in range(L):\n"
        "        p = torch.randperm(n, generator=g)\n"
        "        q = torch.empty_like(p)\n"
        "        q[p] = torch.arange(n)\n"
        "        out.append(p[(q.view(n, 1) + torch.arange(1, k + 1)) % n])\n"
        "    return torch.stack(out)\n"
        "states = [CknnaState(idx, torch.rand(idx.shape, generator=g, dtype=torch.float64)) for idx in (lists(), lists())]\n"
        "for s in states:\n"
        "    s.self_sim = self_sims(s, True)[0]\n")


def test_sparse_matrix_without_the_slot_table_is_lists_sized() -> None:
    """N=3000, k=50, 13 x 13 independent layers: 1.7% of the combinations in the mask, so
    ``matrix`` sums over the mask's entries (``hit_sim``), and the slot table (L N^2 = 117 M
    entries) is too large. Each hit's x-slot was found by gathering its whole sorted x-row and its
    sorting order: two (H, k) int64 tensors, 2.6 GB extra at N=6000, k=100 (the dense path,
    ``SPARSE_MAX_SHARE = 0``: 354 MB), 565 MiB here. Now one binary search of the hits in the
    lists' flat sorted keys: 94 to 119 MiB here (275 at N=6000, k=100, which took 12 s)."""
    from tests.tasks.metrics.peak_memory import peak_growth

    measured = ("m = CknnaEngine().matrix(states[0], states[1], {'unbiased': True})\n"
                "extra.append(int(m.isfinite().all()))\n")
    extra, finite = peak_growth(_circular_lists_setup(3000, 50, 13), measured)
    assert finite == 1
    assert extra < 250 * 2**20, extra / 2**20  # lists: 13 x 3000 x 50 int64 = 15 MiB a side


def test_sparse_matrix_holds_no_more_than_one_dense_call() -> None:
    """A representation against itself: every entry of each layer is in the mask of its own pair
    (1/13 of the combinations, under ``SPARSE_MAX_SHARE``), 2.6 M hits at N=20,000, k=10, 13
    layers. Summed sparsely they held 416 MiB, where the dense path (a call per x-layer against
    the 13 y-layers) holds 160 MiB; with 70 layers a side the sparse sums could hold 5.6 times a
    dense call's hits. Now the sparse path takes only what fits one dense call's memory. Here
    N=8,000 (1.0 M hits): the sparse sums peak 142 MiB above the states, the dense calls 7 to 10
    (at N=20,000: 371 and 25 MiB, in 7 s)."""
    from tests.tasks.metrics.peak_memory import peak_growth

    measured = ("m = CknnaEngine().matrix(states[0], states[0], {'unbiased': True})\n"
                "own = states[0].self_sim / (states[0].self_sim.abs() + 1e-6)\n"
                "extra.append(int(torch.allclose(m.diagonal(), own, rtol=1e-9, atol=0)))\n")
    extra, same = peak_growth(_circular_lists_setup(8000, 10, 13), measured)
    assert same == 1  # each layer against itself: sim(K, K) / (|sim(K, K)| + 1e-6)
    assert extra < 100 * 2**20, extra / 2**20  # with the states' float64 values (18 MiB here)
