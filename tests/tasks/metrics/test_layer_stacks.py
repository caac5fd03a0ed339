"""Per-layer work batched over stacks of same-width layers gives the per-layer results exactly."""

import numpy as np
import pytest
import torch

from tasks.metrics import METRICS, Representation, layer_matrix, score
from tasks.metrics.gram import gram_full, gram_stack
from tasks.metrics.representation import layer_stacks


def _layers(widths, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, w)).astype(np.float32) for w in widths]


@pytest.mark.parametrize("metric", ["mutual_knn", "cka", "unbiased_cka", "cknna"])
def test_interleaved_widths_equal_per_pair_scores(metric):
    xs, ys = _layers([8, 16, 8, 8, 16]), _layers([5, 5, 12], seed=1)
    m = layer_matrix(metric, xs, ys, topk=5)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            # the CKA family's (La, Lb) float64 product rounds by its shape (as before the stacks)
            assert m[i, j] == pytest.approx(score(metric, x, y, topk=5), rel=1e-12, abs=1e-15)


def test_stacked_input_equals_list_input():
    x = np.stack(_layers([8] * 6, n=600))  # N > 512: the blocked products
    for metric in ("mutual_knn", "cka", "cknna"):
        a = layer_matrix(metric, x, x[::-1].copy(), topk=7)
        b = layer_matrix(metric, list(x), list(x[::-1].copy()), topk=7)
        assert np.array_equal(a, b)


def test_gram_stack_equals_gram_full():
    xs = [torch.from_numpy(x) for x in _layers([9] * 3, n=600)]
    for g, x in zip(gram_stack(xs), xs):
        assert torch.equal(g, gram_full(x))
    stacked = torch.stack(xs)
    assert torch.equal(gram_stack(list(stacked.unbind(0))), gram_stack(xs))


def test_layer_stacks_bounds_and_order():
    layers = [torch.zeros(4, w) for w in (2, 3, 2, 2, 3)]
    assert layer_stacks(layers) == [[0, 2, 3], [1, 4]]
    assert layer_stacks(layers, consecutive=True) == [[0], [1], [2, 3], [4]]
    assert layer_stacks(layers, max_elements=16) == [[0, 2], [3], [1], [4]]


def test_constant_and_nonfinite_layers_named_in_stacks():
    x = np.stack(_layers([4] * 3))
    x[1] = 1.0
    with pytest.raises(ValueError, match="layer 1 is constant"):
        Representation(x)
    x[1] = 0.5 * x[0]
    x[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="layer 2 has non-finite values"):
        Representation(x)


def _gpu_paths(monkeypatch) -> None:
    """The engine's GPU paths (layer stacks multiplied row strip by row strip, stacked neighbour
    search and value checks) taken on the CPU, so that CI runs the code a GPU runs."""
    from tasks.metrics import gram

    monkeypatch.setattr(gram, "BATCHED_DEVICE_TYPES", {"cuda", "cpu"})


@pytest.fixture
def gpu_paths(monkeypatch):
    _gpu_paths(monkeypatch)


def _counting_bmm(monkeypatch) -> list[int]:
    calls = [0]
    bmm = torch.bmm

    def counted(*args, **kwargs):
        calls[0] += 1
        return bmm(*args, **kwargs)

    monkeypatch.setattr(torch, "bmm", counted)
    return calls


@pytest.mark.parametrize("n", [40, 600])  # 600 > 2 * gram.BLOCK: three row strips
@pytest.mark.parametrize("metric", sorted(METRICS))
def test_the_gpu_paths_give_the_cpu_paths_numbers(metric, n, monkeypatch):
    xs, ys = _layers([8, 16, 8, 8, 16], n=n), _layers([5, 5, 12], n=n, seed=1)
    params = {"topk": 5, "cca_dim": 4}
    want = layer_matrix(metric, xs, ys, **params)
    _gpu_paths(monkeypatch)
    calls = _counting_bmm(monkeypatch)
    got = layer_matrix(metric, xs, ys, **params)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    if metric in ("mutual_knn", "cka", "cknna"):
        assert calls[0] > 0  # the stacked products ran


def test_gpu_path_grams_and_neighbours_equal_per_layer_ones(gpu_paths):
    xs = [torch.from_numpy(x) for x in _layers([9] * 3, n=600)]
    for g, x in zip(gram_stack(xs), xs):
        assert torch.equal(g, g.T)
        torch.testing.assert_close(g, x.double() @ x.double().T, rtol=0, atol=1e-5, check_dtype=False)
    rep = Representation(np.stack([x.numpy() for x in xs]))
    values, indices = rep.knn_stack(6)
    for l in range(len(xs)):
        ref = torch.topk(torch.from_numpy(xs[l].double().numpy() @ xs[l].double().numpy().T).fill_diagonal_(-np.inf), 6)
        assert torch.equal(indices[l], ref.indices)
    for s, l in enumerate([0, 1, 2]):
        centred = rep.centred_gram_stack([0, 1, 2])[s]
        xc = xs[l].double() - xs[l].double().mean(0)
        torch.testing.assert_close(centred.triu(), (xc @ xc.T).triu(), rtol=0, atol=1e-5, check_dtype=False)


@pytest.mark.parametrize("metric", ["mutual_knn", "cka", "unbiased_cka", "cknna"])
def test_calibration_on_the_gpu_paths_equals_the_cpu_paths(metric, monkeypatch):
    from tasks.metrics import calibrate

    xs, ys = _layers([8, 16, 8], n=300), _layers([5, 5], n=300, seed=1)
    want = calibrate(metric, xs, ys, permutations=20, seed=3, topk=5)
    _gpu_paths(monkeypatch)
    got = calibrate(metric, xs, ys, permutations=20, seed=3, topk=5)
    assert got.p_value == want.p_value and got.argmax == want.argmax
    np.testing.assert_allclose([got.observed, got.null_mean, got.null_std, got.tau, got.calibrated],
                               [want.observed, want.null_mean, want.null_std, want.tau, want.calibrated], rtol=1e-6, atol=1e-9)


def test_gpu_path_stacks_hold_a_bounded_number_of_layers_at_once(monkeypatch):
    """The stacks bound their Gram matrices (G N^2), not their features: at a small N a stack could
    be the whole model, its stacked copy and centred temporaries all alive at once. Chunks of at
    most gram.STACK_FEATURE_ELEMENTS feature elements give the same matrices."""
    from tasks.metrics import gram

    xs, ys = _layers([8] * 7, n=40), _layers([5] * 3, n=40, seed=1)
    want = {m: layer_matrix(m, xs, ys, topk=5) for m in ("mutual_knn", "cka", "unbiased_cka")}
    _gpu_paths(monkeypatch)
    monkeypatch.setattr(gram, "STACK_FEATURE_ELEMENTS", 3 * 40 * 8)  # three x-layers per chunk
    assert gram.feature_chunks([torch.zeros(40, 8)] * 7) == [(0, 3), (3, 6), (6, 7)]
    assert gram.feature_chunks([torch.zeros(40, 800)] * 2) == [(0, 1), (1, 2)]  # at least one layer
    stacked = []
    real = gram.stacked_gram_upper
    monkeypatch.setattr(gram, "stacked_gram_upper", lambda x, *a, **k: stacked.append(x.shape[0]) or real(x, *a, **k))
    import tasks.metrics.representation as representation

    monkeypatch.setattr(representation, "stacked_gram_upper", gram.stacked_gram_upper)
    for metric, expected in want.items():
        np.testing.assert_allclose(layer_matrix(metric, xs, ys, topk=5), expected, rtol=1e-5, atol=1e-7)
    assert stacked and max(stacked) <= 3


@pytest.mark.parametrize("paths", ["cpu", "gpu"])
def test_a_layer_whose_first_rows_agree_is_constant_only_if_every_row_does(paths, monkeypatch):
    """Off a GPU the constant check compares whole layers only where the first two rows agree:
    a layer whose other rows differ is measured, one whose rows all agree refused, as one of a
    stack and on its own."""
    if paths == "gpu":
        _gpu_paths(monkeypatch)
    x = np.stack(_layers([4] * 3))
    x[2, 1] = x[2, 0]  # rows 0 and 1 agree, row 2 on differ
    x[0, 1:] = x[0, 0]  # every row equals row 0 but the last
    x[0, -1, 3] += 1.0
    assert len(Representation(x)) == 3
    assert len(Representation(list(x))) == 3
    x[0, -1] = x[0, 0]  # now layer 0 is constant
    for given in (x, list(x)):
        with pytest.raises(ValueError, match="layer 0 is constant"):
            Representation(given)


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("n", [40, 600])  # 600 > 2 * gram.CPU_BLOCK: the blocked Gram in the reused buffer
def test_cpu_neighbour_lists_searched_through_one_buffer_are_each_layers_own(n, cached):
    """On a CPU every layer's Gram is built (or its cached Gram copied) in one reused buffer:
    each layer's lists are its own, as a float64 search of that layer alone finds them, and the
    cached Grams are left as they were."""
    xs = _layers([9, 9, 12, 9], n=n)
    rep = Representation(xs)
    if cached:
        rep.cache_grams()
        before = [rep.cached_gram(l).clone() for l in range(len(xs))]
    values, indices = rep.knn_stack(6)
    if cached:
        assert all(torch.equal(rep.cached_gram(l), g) for l, g in enumerate(before))
    for l, x in enumerate(xs):
        sims = torch.from_numpy(x.astype(np.float64) @ x.astype(np.float64).T).fill_diagonal_(-np.inf)
        ref = torch.topk(sims, 6)
        assert torch.equal(indices[l], ref.indices)
        torch.testing.assert_close(values[l], ref.values, rtol=0, atol=1e-5, check_dtype=False)


@pytest.mark.parametrize("n", [257, 258, 259, 385, 513, 642])  # a last CPU block of 1 to 3 rows
def test_blocked_gram_ties_duplicate_rows_exactly(n):
    """A duplicated sample's inner products tie exactly with its copy's in every row, whatever
    ``N mod gram.CPU_BLOCK``: the blocked Gram equals one product of the whole layer entry for
    entry (a last block of a few rows had taken another kernel and rounded them apart)."""
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.normal(size=(n, 64)).astype(np.float32))
    x[-1] = x[0]
    x[-2] = x[1]
    g = gram_full(x)
    assert torch.equal(g[:, -1], g[:, 0]) and torch.equal(g[:, -2], g[:, 1])
    assert torch.equal(g.triu(), (x @ x.T).triu())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n", [257, 258, 259])
def test_blockwise_neighbour_search_ties_duplicate_rows_exactly(n, symmetric, monkeypatch):
    """The neighbour search in row blocks (an N too large for one Gram; 128-row blocks here) has
    no last block of a few rows either (``gram.row_blocks``): in every row's full list a
    duplicated sample ties exactly with its copy (the symmetric search had given row 256 of 259
    values 8e-7 apart: its candidates among earlier rows come from their blocks' products)."""
    from tasks.metrics import neighbors

    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.normal(size=(n, 64)).astype(np.float32))
    x[-1] = x[0]
    x[-2] = x[1]
    monkeypatch.setattr(neighbors, "symmetric_search_pays", lambda *args: symmetric)
    values, indices = neighbors.topk_neighbors(x, n - 1, block_elements=128 * n)
    for i in range(2, n - 2):
        for a, b in ((0, n - 1), (1, n - 2)):
            ia, ib = (indices[i] == a).nonzero().item(), (indices[i] == b).nonzero().item()
            assert values[i, ia] == values[i, ib] and ib == ia + 1, (i, a, b)
