"""Neighbour metrics against the loop references, on random and structured data."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.metrics import layer_matrix, score

from . import reference as ref
from .conftest import layers, paired

REFS = {
    "mutual_knn": ref.mutual_knn,
    "jaccard_knn": ref.jaccard_knn,
    "cycle_knn": ref.cycle_knn,
    "lcs_knn": ref.lcs_knn,
    "edit_distance_knn": ref.edit_distance_knn,
}


@pytest.mark.parametrize("metric", list(REFS))
@pytest.mark.parametrize("noise,k", [(0.3, 5), (3.0, 7)])
def test_matches_reference(metric: str, noise: float, k: int) -> None:
    x, y = paired(n=45, noise=noise, seed=int(noise * 10) + k)
    assert score(metric, x, y, topk=k) == pytest.approx(REFS[metric](x, y, k), abs=1e-12)


@pytest.mark.parametrize("metric", list(REFS))
def test_float32_torch_inputs(metric: str) -> None:
    import torch

    x, y = paired(n=30, seed=5)
    got = score(metric, torch.from_numpy(x).float(), torch.from_numpy(y).float(), topk=4)
    assert got == pytest.approx(REFS[metric](x, y, 4), abs=1e-12)


@pytest.mark.parametrize("metric", list(REFS))
def test_layer_matrix_equals_score(metric: str) -> None:
    xs, ys = layers(seed=1), layers(widths=(5, 20), seed=2)
    m = layer_matrix(metric, xs, ys, topk=6)
    assert m.shape == (3, 2) and m.dtype == np.float64
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j] == score(metric, x, y, topk=6)
            assert m[i, j] == pytest.approx(REFS[metric](x, y, 6), abs=1e-12)


@pytest.mark.parametrize("group, dense, chunk", [(2, True, 1 << 22), (1, False, 7), (63, False, 1 << 22), (3, True, 40)])
def test_table_paths_give_the_same_matrices(monkeypatch: pytest.MonkeyPatch, group: int, dense: bool,
                                            chunk: int) -> None:
    """The x-lists' bitmask table in groups of layers, as sorted keys (large-N path) instead of a
    dense table, and counted a few rows at a time, gives the same counts."""
    import tasks.metrics.knn_hits as hits_mod

    xs, ys = layers(seed=3), layers(seed=4)
    want = {m: layer_matrix(m, xs, ys, topk=5) for m in ("mutual_knn", "cycle_knn", "jaccard_knn")}
    monkeypatch.setattr(hits_mod, "MAX_GROUP", group)
    monkeypatch.setattr(hits_mod, "COUNT_CHUNK_ELEMENTS", chunk)
    if not dense:
        monkeypatch.setattr(hits_mod, "DENSE_TABLE_MAX_BYTES", 0)
    for m, expected in want.items():
        np.testing.assert_array_equal(layer_matrix(m, xs, ys, topk=5), expected)


def test_blockwise_neighbours_equal_full() -> None:
    """Blockwise top-k without a Gram (large-N path) equals the Gram path."""
    import torch

    from tasks.metrics.neighbors import topk_neighbors

    x = torch.from_numpy(paired(n=50, seed=6)[0])
    v1, i1 = topk_neighbors(x, 7)
    v2, i2 = topk_neighbors(x, 7, block_elements=3 * 50)  # 3 rows per block
    v3, i3 = topk_neighbors(None, 7, gram=x @ x.T)
    assert torch.equal(i1, i2) and torch.equal(i1, i3)
    np.testing.assert_array_equal(i1.numpy(), ref.knn_lists(x.numpy(), 7))


@pytest.mark.parametrize("n, k, exclude_self, rows", [
    (300, 10, True, 7), (300, 10, False, 64), (300, 1, True, 299), (41, 40, True, 3), (41, 41, False, 5),
    (200, 20, True, 1),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_symmetric_blockwise_search_equals_full_topk(n, k, exclude_self, rows, dtype) -> None:
    """Each row block multiplied only against the columns from its first row on, the rest of a
    row's candidates read down earlier blocks: the lists of the full Gram's top-k, blocks of
    fewer rows than k included."""
    import torch

    from tasks.metrics.neighbors import _symmetric_search, ties_in_index_order

    x = torch.nn.functional.normalize(torch.randn(n, 16, generator=torch.Generator().manual_seed(n + k),
                                                  dtype=getattr(torch, dtype)), dim=1)
    values, indices = ties_in_index_order(*_symmetric_search(x, k, exclude_self, rows))
    full = x.double() @ x.double().T
    if exclude_self:
        full.fill_diagonal_(float("-inf"))
    want = torch.topk(full, k, dim=1)
    assert torch.equal(indices, want.indices)
    torch.testing.assert_close(values.double(), want.values, rtol=0, atol=1e-6 if dtype == "float32" else 1e-13)


def test_blockwise_search_multiplies_each_inner_product_once_where_that_pays() -> None:
    """About half the multiply-adds of full row blocks, N^2 D (1 + rows / N) FLOPs, not 2 N^2 D,
    where the width dwarfs k; else (k=100, D=64 took 3.8 s against 2.2 s at N=20,000: the merges
    of 2k candidates cost more than the products saved) the full row blocks."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tasks.metrics.neighbors import SYMMETRIC_MIN_WIDTH_PER_K, symmetric_search_pays, topk_neighbors

    def flops(d: int, k: int) -> int:
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
        with FlopCounterMode(display=False) as counter:
            topk_neighbors(x, k, block_elements=rows * n)
        return counter.get_total_flops()

    n, rows = 2000, 200
    d = SYMMETRIC_MIN_WIDTH_PER_K * 10
    assert flops(d, 10) == sum(2 * rows * (n - start) * d for start in range(0, n, rows)) <= 0.56 * 2 * n * n * d
    assert flops(d, 11) == 2 * n * n * d  # k too large for this width
    assert symmetric_search_pays(20_000, 768, 10, 1 << 25) and not symmetric_search_pays(20_000, 64, 100, 1 << 25)
    assert not symmetric_search_pays(20_000, 8, 1000, 1 << 25)
    assert not symmetric_search_pays(20_000, 100_000, 200, 1 << 25)  # one merge's temporaries would outgrow a block


def test_tied_neighbours_come_in_index_order_on_every_path(monkeypatch) -> None:
    """Integer-valued features tie exactly (every product exact): each list orders equal
    similarities by increasing index, whatever the block size, with or without a Gram, and on
    the stacked GPU path; so where the k-th neighbour is not tied with the next, the lists agree
    across them, order included (the sequence metrics read it)."""
    import torch

    from tasks.metrics import gram as gram_module
    from tasks.metrics.neighbors import stacked_topk_neighbors, topk_neighbors

    base = torch.randint(-20, 21, (30, 6), generator=torch.Generator().manual_seed(3)).float()
    x = base[torch.randperm(60, generator=torch.Generator().manual_seed(4)) % 30]  # each row twice
    k = 5
    lists = [topk_neighbors(x, k)[1], topk_neighbors(x, k, block_elements=7 * 60)[1],
             topk_neighbors(x, k, block_elements=60)[1], topk_neighbors(None, k, gram=x @ x.T)[1]]
    monkeypatch.setattr(gram_module, "BATCHED_DEVICE_TYPES", {"cuda", "cpu"})
    lists.append(stacked_topk_neighbors([x, x * 2], k)[1][0])
    sims = (x @ x.T).fill_diagonal_(float("-inf"))
    ranked = torch.sort(sims, dim=1, descending=True).values
    clear = ranked[:, k - 1] > ranked[:, k]  # rows whose k-th neighbour is not tied with the next:
    assert clear.sum() > 30 and (~clear).any()  # which tied neighbour makes the list is left open
    for found in lists:
        values = sims.gather(1, found)
        assert torch.equal(values, ranked[:, :k])
        tied = values[:, 1:] == values[:, :-1]
        assert tied[clear].any() and (found[:, 1:] > found[:, :-1])[tied].all()
        assert torch.equal(found[clear], lists[0][clear])


def test_representation_without_gram_matches() -> None:
    from tasks.metrics import Representation

    xs, ys = layers(seed=7), layers(seed=8)
    ra, rb = Representation(xs, keep_gram_max_n=10), Representation(ys, keep_gram_max_n=10)
    assert not ra.keep_gram
    np.testing.assert_array_equal(layer_matrix("mutual_knn", ra, rb, topk=5),
                                  layer_matrix("mutual_knn", xs, ys, topk=5))


@pytest.mark.parametrize("k", [0, 40, 2.5, None])
def test_bad_topk(k) -> None:
    x, y = paired(n=40)
    with pytest.raises(ValueError):
        score("mutual_knn", x, y, topk=k)


def test_cycle_knn_memory_without_adjacency_is_lists_plus_a_block() -> None:
    """cycle_knn's large-N path gathered each B-neighbour's A-list: an (Lb, N*k, k) int64 tensor,
    O(Lb N k^2) (N=3000, k=50, 12 x 12 layers: 1760 MiB peak RSS against 398 MiB for
    mutual_knn). Here N=2000, k=40, 12 layers: 600+ MiB extra before; now the x side's bitmask
    table (8 MB of int16) and a chunk of queries."""
    from tests.tasks.metrics.peak_memory import peak_growth

    [extra] = peak_growth(
        "from tasks.metrics.knn_hits import build_list_table, member_counts, pair_keys\n"
        "g = torch.Generator().manual_seed(0)\n"
        "idx = [torch.randint(0, 2000, (12, 2000, 40), generator=g) for _ in range(2)]",
        "member_counts(build_list_table(idx[0]), pair_keys(idx[1], reverse=True), 'any')")
    assert extra < 160 * 2**20, extra / 2**20


def test_blockwise_search_holds_one_similarity_block_at_a_time() -> None:
    """The loop kept the previous block alive while the next product was allocated: two blocks
    at the peak (260 MiB growth for 128 MiB blocks at N=12000). Here 32 MiB blocks, N=6000."""
    from tests.tasks.metrics.peak_memory import peak_growth

    [extra] = peak_growth(
        "from tasks.metrics.neighbors import topk_neighbors\n"
        "x = torch.nn.functional.normalize(torch.randn(6000, 16, generator=torch.Generator().manual_seed(0)), dim=1)",
        "topk_neighbors(x, 10, block_elements=1 << 23)")
    assert extra < 1.5 * 32 * 2**20, extra / 2**20


def test_edit_distance_knn_is_one_division_of_the_integer_total() -> None:
    """Layer pairs whose edit distances sum to the same total score the same float, so the
    best pair (first maximum, as the paper takes it) does not hang on summation order: a mean
    of per-sample ``1 - e/k`` gave 0.19999999999999996 and 0.19999999999999998 for two totals
    of 68 (N=17, k=5), and the argmax moved."""
    from fractions import Fraction

    rng = np.random.default_rng(1)
    n, k = 17, 5
    base = rng.normal(size=(n, 8))
    xs = [np.tanh(base @ rng.normal(size=(8, 16)) * rng.uniform(0.2, 2)) + 0.3 * l * rng.normal(size=(n, 16))
          for l in range(6)]
    ys = [base @ rng.normal(size=(8, 12)) + rng.uniform(0.2, 3) * rng.normal(size=(n, 12)) for _ in range(6)]
    m = layer_matrix("edit_distance_knn", xs, ys, topk=k)
    by_total: dict[int, set[float]] = {}
    for i, x in enumerate(xs):
        lists_x = ref.knn_lists(x, k)
        for j, y in enumerate(ys):
            lists_y = ref.knn_lists(y, k)
            total = sum(ref.levenshtein(list(a), list(b)) for a, b in zip(lists_x, lists_y))
            assert abs(float(m[i, j]) - float(1 - Fraction(total, n * k))) <= 1e-15
            by_total.setdefault(total, set()).add(float(m[i, j]))
    assert all(len(values) == 1 for values in by_total.values()), by_total
    assert len(by_total) < m.size  # totals do repeat here


def test_a_subsets_rows_searched_afresh_keep_the_tie_order() -> None:
    """Rows of a subset that its parent's deeper lists cannot settle are searched again; that
    search kept topk's own order of tied neighbours (65, 68, 67, 66, 69 for 65..69)."""
    import torch

    from tasks.metrics import Representation

    x = np.zeros((1000, 2), np.float32)
    x[:, 0] = 1
    x[900:] = (0, 1)
    x[1, 0] = 2
    rows = [0] + list(range(900, 999))
    values, indices = Representation(x, keep_gram_max_n=0).subset(torch.tensor(rows)).knn(0, 5)
    tied = values[:, 1:] == values[:, :-1]
    assert tied.all() and (indices[:, 1:] > indices[:, :-1]).all()  # every row's five are tied: in index order


@pytest.mark.parametrize("k", [1, 10])
def test_a_small_subset_searches_its_own_rows_not_deep_parent_lists(k) -> None:
    """A subsample of 100 of 20,000 rows read its lists off the parent's lists searched to depth
    3kN/m + 16, here the whole sample: 7 GB of lists. A small subset now searches its own rows; a
    half-size one (bootstrap's default) still reads the parent's lists."""
    import torch

    from tasks.metrics import Representation

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    parent = Representation(x, keep_gram_max_n=0)
    small = torch.from_numpy(np.sort(rng.choice(2000, 40, replace=False)))
    lists = parent.subset(small).knn(0, k)
    assert not [key for key in parent._memo if key[0] == "knn-stack"]  # no deep lists were searched
    assert torch.equal(lists[1], Representation(x[small.numpy()], keep_gram_max_n=0).knn(0, k)[1])
    half = torch.from_numpy(np.sort(rng.choice(2000, 1000, replace=False)))
    lists = parent.subset(half).knn(0, k)
    assert [key for key in parent._memo if key[0] == "knn-stack"]
    assert torch.equal(lists[1], Representation(x[half.numpy()], keep_gram_max_n=0).knn(0, k)[1])


@pytest.mark.parametrize("metric", ["lcs_knn", "edit_distance_knn"])
def test_sequence_metrics_chunked_over_y_layers_match_reference(metric: str, monkeypatch) -> None:
    """One y-layer per chunk of the sequence DP (``SEQUENCE_CHUNK_ELEMENTS`` tiny): every entry of
    the layer matrix is still the loop reference of its own pair of layers."""
    import tasks.metrics.knn_metrics as km

    xs, ys = layers(n=20, seed=7), layers(n=20, widths=(5, 9, 11), seed=8)
    monkeypatch.setattr(km, "SEQUENCE_CHUNK_ELEMENTS", 1)
    m = layer_matrix(metric, xs, ys, topk=4)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j] == pytest.approx(REFS[metric](x, y, 4), abs=1e-12)


@pytest.mark.parametrize("exclude_self", [True, False])
def test_given_gram_searched_in_row_blocks_matches_reference(exclude_self: bool) -> None:
    """A precomputed Gram read 3 rows at a time (several blocks, the last one short) gives the
    loop reference's lists, with and without self."""
    import torch

    from tasks.metrics.neighbors import topk_neighbors

    x = paired(n=20, seed=9)[0]
    g = torch.from_numpy(x @ x.T)
    before = g.clone()
    values, idx = topk_neighbors(None, 5, gram=g, exclude_self=exclude_self, block_elements=3 * 20)
    want = ref.knn_lists(x, 5, exclude_self=exclude_self)
    np.testing.assert_array_equal(idx.numpy(), want)
    np.testing.assert_allclose(values.numpy(), np.take_along_axis(x @ x.T, want, axis=1), rtol=0, atol=1e-12)
    assert torch.equal(g, before)  # "it is not modified"


def test_lists_without_ties_are_kept_and_tied_ones_put_in_index_order() -> None:
    """``ties_in_index_order``: strictly decreasing lists need no reordering (returned as they
    are); one tie anywhere puts that row's tied neighbours in index order, the rest unchanged."""
    import torch

    from tasks.metrics.neighbors import ties_in_index_order

    values = torch.tensor([[3.0, 2.0, 1.0], [5.0, 4.0, 0.5]])
    indices = torch.tensor([[4, 0, 2], [1, 3, 0]])
    v, i = ties_in_index_order(values, indices)
    assert v is values and i is indices
    values[1, 2] = 4.0  # row 1: neighbours 3 and 0 tie
    v, i = ties_in_index_order(values, indices)
    assert torch.equal(i, torch.tensor([[4, 0, 2], [1, 0, 3]])) and torch.equal(v, values)


@pytest.mark.parametrize("k1, k2", [(6, 6), (4, 7), (7, 3)])
def test_sequence_distances_of_rows_with_repeated_entries(k1: int, k2: int) -> None:
    """``lcs_lengths`` and ``edit_distances`` are the classic dynamic programmes for any integer
    rows, also rows that repeat an entry or differ in length (a neighbour list never repeats one,
    which alone hides a wrong LCS step: matching ``x[s]`` against ``y[:t]`` instead of
    ``y[:t-1]`` counts a repeated symbol twice)."""
    import torch

    from tasks.metrics.neighbors import edit_distances, lcs_lengths

    rng = np.random.default_rng(k1 * 10 + k2)
    x = rng.integers(0, 3, size=(60, k1))
    y = rng.integers(0, 3, size=(60, k2))
    x[0], y[0, :3] = 1, 1  # one symbol repeated on both sides
    lcs = lcs_lengths(torch.from_numpy(x), torch.from_numpy(y)).tolist()
    edit = edit_distances(torch.from_numpy(x), torch.from_numpy(y)).tolist()
    assert lcs == [ref.lcs(list(a), list(b)) for a, b in zip(x, y)]
    assert edit == [ref.levenshtein(list(a), list(b)) for a, b in zip(x, y)]
