"""Exact ties in the neighbour search: every path lists the top ``k`` under one total order.

The rule (``docs/metrics.md``, "Neighbour search"): similarity descending, then index
ascending, i.e. the first ``k`` of a stable descending sort of a row of the similarity matrix the
path used. The data here are small integers with many duplicated rows, so every product is exact
in float32 and float64 (and bfloat16 for the ``'bf16-refine'`` search): every path then works on
the same similarity values, and ties at the ``k``-th place are everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.metrics import neighbors, representation
from tasks.metrics.api import layer_matrix
from tasks.metrics.bf16_neighbors import reduced_topk
from tasks.metrics.neighbors import (_symmetric_search, restrict_lists, stacked_topk_neighbors, ties_in_index_order,
                                     topk_neighbors)
from tasks.metrics.representation import Representation

from . import reference as ref


def tied_features(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64, copies: float = 0.4,
                  span: int = 2) -> torch.Tensor:
    """``(n, d)`` integers in ``[-span, span]``, a fraction ``copies`` of the rows exact copies of
    other rows (an image's captions with ``unit: sample``); products of such rows are exact."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-span, span + 1, (n, d), generator=g).to(dtype)
    dup = torch.randperm(n, generator=g)[: int(copies * n)]
    x[dup] = x[torch.randint(0, n, (dup.numel(),), generator=g)]
    return x


def stable_top_k(sims: torch.Tensor, k: int, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The rule itself on ``(N, N)`` similarities: the first ``k`` of each row's stable descending
    sort (numpy, float64). Returns ``(N, k)`` values and int64 indices."""
    s = sims.double().numpy().copy()
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def assert_lists(got: tuple[torch.Tensor, torch.Tensor], want: tuple[np.ndarray, np.ndarray], label: str) -> None:
    values, indices = got
    bad = np.flatnonzero((indices.numpy() != want[1]).any(1))
    assert bad.size == 0, f"{label}: {bad.size} rows differ, first {bad[:5].tolist()}"
    np.testing.assert_array_equal(values.double().numpy(), want[0], err_msg=label)


SHAPES = [(60, 3, 5), (97, 4, 1), (128, 2, 10), (200, 5, 7), (41, 3, 39), (50, 6, 20)]


@pytest.mark.parametrize("n, d, k", SHAPES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_every_search_path_lists_the_stable_sort_top_k(n, d, k, seed, dtype, exclude_self) -> None:
    """Full Gram, row blocks of every size, a given Gram (copied in blocks), the symmetric
    search, the stacked search and the bfloat16 search refined (certified, and with no extra
    candidates: rows recomputed) all give the stable sort's lists, order and values included."""
    x = tied_features(n, d, seed, dtype)
    want = stable_top_k(x.double() @ x.double().T, k, exclude_self)
    gram = x @ x.T
    paths = {"default": lambda: topk_neighbors(x, k, exclude_self=exclude_self),
             "gram": lambda: topk_neighbors(None, k, exclude_self=exclude_self, gram=gram),
             "stacked": lambda: tuple(t[1] for t in stacked_topk_neighbors([2 * x, x], k, exclude_self=exclude_self)),
             "bf16-refine": lambda: topk_neighbors(x, k, exclude_self=exclude_self, precision="bf16-refine"),
             "bf16-refine, no extra": lambda: ties_in_index_order(*(lambda r: (r.values, r.indices))(
                 reduced_topk(x, k, exclude_self=exclude_self, refine=True, extra=0, block_elements=5 * n)))}
    for rows in (1, 2, 3, 7, 64):
        paths[f"rows {rows}"] = lambda rows=rows: topk_neighbors(x, k, exclude_self=exclude_self,
                                                                 block_elements=rows * n)
        paths[f"gram rows {rows}"] = lambda rows=rows: topk_neighbors(None, k, exclude_self=exclude_self, gram=gram,
                                                                      block_elements=rows * n)
        paths[f"symmetric rows {rows}"] = lambda rows=rows: ties_in_index_order(
            *_symmetric_search(x, k, exclude_self, rows))
    for label, search in paths.items():
        assert_lists(search(), want, label)


@pytest.mark.parametrize("r, c, count", [(40, 1024, 11), (30, 523, 6), (25, 300, 2), (20, 96, 3), (10, 64, 1)])
@pytest.mark.parametrize("seed", range(3))
def test_largest_entries_through_group_maxima_are_topks_values(monkeypatch, r, c, count, seed) -> None:
    """Rows of a few distinct values (equal group maxima everywhere, ties at the ``count``-th
    value in most rows), ``-inf`` entries, columns beyond the last whole group: the values are
    ``torch.topk``'s and the columns hold them; the groups were searched (two smaller top-k), also
    in a transposed block (its columns contiguous); rows of strided values take ``torch.topk``."""
    from tasks.metrics import ranked_topk as rt

    g = torch.Generator().manual_seed(seed)
    block = torch.randint(-3, 4, (r, c), generator=g).float()
    block[torch.rand((r, c), generator=g) < 0.05] = float("-inf")
    block[0] = 1.0  # a row of one value
    block[1, :] = 0.0
    block[1, -1] = 5.0  # its largest entry in the last columns, outside every group
    calls = []
    real = torch.topk
    monkeypatch.setattr(torch, "topk", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    values, cols = rt.largest_entries(block, count)
    assert len(calls) == 2 and calls[0][1] == c // rt.GROUP_SIZE  # the group maxima, then the candidates
    want = real(block, count, dim=-1).values
    assert torch.equal(values, want) and torch.equal(block.gather(1, cols), values)
    assert (cols.sort(1).values.diff(dim=1) > 0).all()  # distinct columns
    for label, other in (("transposed", block.T.contiguous().T), ("strided", torch.zeros(r, 2 * c)[:, ::2].copy_(block))):
        calls.clear()
        values, cols = rt.largest_entries(other, count)
        assert len(calls) == (2 if label == "transposed" else 1), label  # groups where rows or columns are contiguous
        assert torch.equal(values, want) and torch.equal(block.gather(1, cols), values), label


@pytest.mark.parametrize("n, k", [(1024, 10), (523, 4), (300, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_rows_searched_through_group_maxima_follow_the_rule(n, k, dtype) -> None:
    """The searches whose rows are long enough for ``largest_entries``' groups, on data with ties
    at the ``k``-th place in most rows: the stable sort's lists."""
    x = tied_features(n, 3, 11, dtype)
    want = stable_top_k(x.double() @ x.double().T, k)
    assert_lists(topk_neighbors(x, k), want, "default")
    assert_lists(topk_neighbors(None, k, gram=x @ x.T, block_elements=100 * n), want, "gram, row blocks")
    assert_lists(Representation([x]).knn(0, k), want, "representation")


@pytest.mark.parametrize("n, d, k", SHAPES[:3])
def test_on_a_batched_device_every_path_follows_the_rule(monkeypatch, n, d, k) -> None:
    """As a GPU runs them (``gram.batched_device``: no host-side check that a block has no tie,
    lists always put in index order): the same lists."""
    from tasks.metrics import gram as gram_module

    monkeypatch.setattr(gram_module, "BATCHED_DEVICE_TYPES", {"cuda", "cpu"})
    test_every_search_path_lists_the_stable_sort_top_k(n, d, k, 7, torch.float32, True)


def test_the_symmetric_search_is_taken_and_exact_on_tied_rows() -> None:
    """Through ``topk_neighbors`` (width >= 16 k, blocks of a few rows): the merges of candidate
    lists from several blocks keep the lowest tied indices."""
    x = tied_features(300, 40, 5, torch.float32, copies=0.6, span=1)
    assert neighbors.symmetric_search_pays(300, 40, 2, 11 * 300 * 2)
    want = stable_top_k(x.double() @ x.double().T, 2)
    assert_lists(topk_neighbors(x, 2, block_elements=11 * 300 * 2), want, "symmetric")


def test_a_given_gram_of_any_bits_is_ranked_by_the_rule() -> None:
    """Not only exact products: a float32 Gram of non-integer rows with copies, whatever its last
    bits, is ranked by the rule applied to those very values, in blocks of any size."""
    g = torch.Generator().manual_seed(11)
    base = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    x = base[torch.randint(0, 40, (150,), generator=g)]  # ~3.75 copies of each row
    gram = x @ x.T
    want = stable_top_k(gram, 6)
    for rows in (1, 4, 150):
        assert_lists(topk_neighbors(None, 6, gram=gram, block_elements=rows * 150), want, f"rows {rows}")


def test_the_example_of_the_issue() -> None:
    """N=777, D=64, a fifth of the rows copies, k=10: exact and bf16-refine agree (they differed in
    50 rows); on integer rows both equal the rule."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (777, 64), generator=g).float()
    dup = torch.randperm(777, generator=g)[:155]
    x[dup] = x[torch.randint(0, 777, (155,), generator=g)]
    want = stable_top_k(x.double() @ x.double().T, 10)
    assert_lists(topk_neighbors(x, 10), want, "exact")
    assert_lists(topk_neighbors(x, 10, precision="bf16-refine"), want, "bf16-refine")


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_subset_lists_read_off_the_parent_follow_the_rule_in_subset_indices(order, cached, seed) -> None:
    """A subset's lists (read off the parent's deeper lists, tied rows settled or searched again)
    are the rule on the subset's own similarities, its indices the positions in ``rows`` (in
    whatever order ``rows`` lists them), with and without the parent's cached Grams."""
    x = tied_features(240, 3, seed, copies=0.5)
    rep = Representation([x, 2 * x])
    if cached:
        rep.cache_grams()
    rows = torch.randperm(240, generator=torch.Generator().manual_seed(seed))[:150]
    if order == "sorted":
        rows = rows.sort().values
    sub = rep.subset(rows)
    assert sub._parent_lists_pay(5, True)
    xs = x[rows]
    want = stable_top_k(xs @ xs.T, 5)
    for layer in range(2):
        assert_lists(tuple(t.cpu() for t in sub.knn(layer, 5)), (want[0] * (layer + 1) ** 2, want[1]), f"layer {layer}")


def test_restrict_lists_marks_rows_whose_tie_may_run_past_the_list() -> None:
    """A row whose ``k``-th subset member ties with the deep list's last entry may have tied
    members beyond the list: marked to be searched again, not guessed; tied members within the
    list are settled by subset position, not by the order the deep list gives them."""

    def row0(values: list[float], indices: list[int], rows: list[int], k: int, **kw):
        v, i, short = restrict_lists(torch.tensor([values] * 6), torch.tensor([indices] * 6), torch.tensor(rows),
                                     6, k, **kw)
        return v[0].tolist(), i[0].tolist(), bool(short[0])

    rows = [0, 1, 3, 4, 5]
    assert row0([5.0, 4.0, 4.0, 4.0], [1, 2, 3, 4], rows, 2)[2]  # 4.0 ends the list: sample 5 may tie
    assert row0([5.0, 4.0, 4.0, 4.0], [1, 2, 3, 4], rows, 2, complete=True) == ([5.0, 4.0], [1, 2], False)
    assert row0([5.0, 4.0, 4.0, 3.0], [1, 2, 3, 4], rows, 2) == ([5.0, 4.0], [1, 2], False)
    # a tie listed in another order than the subset's: subset positions 2, 3 (samples 4, 3) win
    assert row0([5.0, 4.0, 4.0, 4.0, 3.0], [1, 4, 3, 2, 5], [0, 1, 4, 3, 2, 5], 3) == ([5.0, 4.0, 4.0], [1, 2, 3], False)


LIST_METRICS = ["mutual_knn", "jaccard_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cknna"]


@pytest.mark.parametrize("seed", range(3))
def test_list_metric_scores_do_not_depend_on_block_size_or_gram(monkeypatch, seed) -> None:
    """Tied data: every list metric scores the same with the whole Gram, with blocks of 3 rows,
    with cached Grams and with bf16-refine lists, and equals the loop reference (stable sort)."""
    n, k = 90, 4
    xs = [tied_features(n, 3, seed), tied_features(n, 4, seed + 10)]
    ys = [tied_features(n, 2, seed + 20), xs[0][torch.randperm(n, generator=torch.Generator().manual_seed(seed))]]
    ys[1][: n // 2] = xs[0][: n // 2]
    want = {m: np.array([[(ref.cknna if m == "cknna" else getattr(ref, m))(a.numpy(), b.numpy(), k) for b in ys]
                         for a in xs]) for m in LIST_METRICS}
    for m in LIST_METRICS:
        got = layer_matrix(m, xs, ys, topk=k)
        np.testing.assert_allclose(got, want[m], rtol=0, atol=1e-9, err_msg=m)
        cached = layer_matrix(m, Representation(xs).cache_grams(), Representation(ys).cache_grams(), topk=k)
        np.testing.assert_array_equal(cached, got, err_msg=f"{m}, cached Grams")
        if m != "cknna":
            refined = layer_matrix(m, xs, ys, topk=k, knn_precision="bf16-refine")
            np.testing.assert_array_equal(refined, got, err_msg=f"{m}, bf16-refine")
    monkeypatch.setattr(neighbors, "DEFAULT_BLOCK_ELEMENTS", 3 * n)
    monkeypatch.setattr(representation, "DEFAULT_BLOCK_ELEMENTS", 3 * n)
    for m in LIST_METRICS:
        np.testing.assert_allclose(layer_matrix(m, xs, ys, topk=k), want[m], rtol=0, atol=1e-9,
                                   err_msg=f"{m}, blocks of 3 rows")


def test_the_symmetric_search_on_a_batched_device_checks_ties_only_in_its_block_selections(monkeypatch) -> None:
    """As a GPU runs it: one host sync (a tie check, ``Tensor.__bool__``) per candidate selection
    from a block, none in the merges of candidate lists (two sorts there), and still the rule's
    lists on tied rows."""
    from tasks.metrics import gram as gram_module

    monkeypatch.setattr(gram_module, "BATCHED_DEVICE_TYPES", {"cuda", "cpu"})
    x = tied_features(120, 40, 3, torch.float32, copies=0.5, span=1)
    blocks = gram_module.row_blocks(120, 16)
    syncs = []
    to_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: syncs.append(1) or to_bool(t))
    lists = ties_in_index_order(*_symmetric_search(x, 3, True, 16))
    monkeypatch.undo()
    assert len(syncs) == 2 * len(blocks) - 1  # the last block gives no later rows candidates
    assert_lists(lists, stable_top_k(x.double() @ x.double().T, 3), "symmetric, batched")


def real_valued_copies(n: int, d: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``(n, d)`` unit rows of Gaussian features, a third of them exact copies of other rows: a
    matrix product may round a row's products with two copies apart in the last bit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    dup = torch.randperm(n, generator=g)[: n // 3]
    x[dup] = x[torch.randint(0, n, (dup.numel(),), generator=g)]
    return x.to(dtype)


def copies_tie_lists(x: torch.Tensor, k: int, exclude_self: bool = True) -> np.ndarray:
    """The rule where copies' products are equal by construction: float64 products of the distinct
    rows (numpy's unique), spread to every copy, then the stable sort; ``(N, k)`` indices."""
    unique, inverse = np.unique(x.double().numpy(), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sims = torch.from_numpy((unique @ unique.T)[np.ix_(inverse, inverse)])
    return stable_top_k(sims, k, exclude_self)[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_real_valued_copies_follow_the_rule_on_every_path(monkeypatch, dtype, seed) -> None:
    """Copies of real-valued rows: the products with two copies of a row may differ in the last
    bit (MKL float64: most such datasets), so a list could keep the copy the rounding favoured,
    and another one with another block size. The engine holds copies as one value
    (``copies.settle_copies``): the whole Gram, a cached Gram, row blocks of any size, the
    symmetric search, bf16-refine, the stacked search as a GPU runs it and a subset's lists read
    off its parent's all list the lowest-index copies, as the rule does on equal products."""
    from tasks.metrics import gram as gram_module

    n, k = 90, 3
    x = real_valued_copies(n, 17, seed, dtype)
    want = copies_tie_lists(x, k)
    paths = {"whole Gram": lambda: Representation([x]).knn(0, k),
             "cached Gram": lambda: Representation([x]).cache_grams().knn(0, k),
             "bf16-refine": lambda: Representation([x]).knn(0, k, precision="bf16-refine")}
    for label, search in paths.items():
        assert (search()[1].numpy() == want).all(), label
    for rows in (1, 4, 30):
        monkeypatch.setattr(neighbors, "DEFAULT_BLOCK_ELEMENTS", rows * n)
        monkeypatch.setattr(representation, "DEFAULT_BLOCK_ELEMENTS", rows * n)
        assert (Representation([x]).knn(0, k)[1].numpy() == want).all(), f"rows {rows}"
    wide = torch.cat([x] * 4, dim=1)  # width >= 16 k and blocks of 11 n k elements: the symmetric search
    assert neighbors.symmetric_search_pays(n, int(wide.shape[1]), k, 11 * n * k)
    monkeypatch.setattr(neighbors, "DEFAULT_BLOCK_ELEMENTS", 11 * n * k)
    monkeypatch.setattr(representation, "DEFAULT_BLOCK_ELEMENTS", 11 * n * k)
    assert (Representation([wide]).knn(0, k)[1].numpy() == copies_tie_lists(wide, k)).all(), "symmetric"
    monkeypatch.undo()
    monkeypatch.setattr(gram_module, "BATCHED_DEVICE_TYPES", {"cuda", "cpu"})
    assert (Representation([x, 2 * x]).knn_stack(k)[1].numpy() == want).all(), "stacked"
    monkeypatch.undo()
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:60]
    sub = Representation([x]).subset(rows)
    assert (sub.knn(0, k)[1].numpy() == copies_tie_lists(x[rows], k)).all(), "subset"


def test_settle_copies_takes_the_lowest_copies_but_the_row_itself() -> None:
    """By hand: rows 1, 3, 4 are copies (group 1), 0 and 2 distinct. Row 3's list (self excluded)
    held copy 4 and the search rounded 4 above 1: it lists 1 then 4 (not 3: itself), at one
    value; row 0 held one copy, 4: it lists 1, the lowest; lists without copies are untouched."""
    from tasks.metrics.copies import copy_canon, settle_copies

    x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8]])
    canon = copy_canon(x)
    assert canon.tolist() == [0, 1, 2, 1, 1]
    values = torch.tensor([[0.6, 0.0], [1.0, 1.0], [0.8, 0.8], [1.0 + 1e-7, 1.0], [1.0, 1.0]])
    indices = torch.tensor([[4, 2], [3, 4], [1, 3], [4, 1], [1, 3]])
    v, i = settle_copies(values, indices, canon)
    assert i.tolist() == [[1, 2], [3, 4], [1, 3], [1, 4], [1, 3]]
    assert v[3].tolist() == [values[3, 0].item()] * 2 and v[0].tolist() == values[0].tolist()
    assert copy_canon(torch.eye(4)) is None
    assert copy_canon(torch.tensor([[0.0, 1.0], [-0.0, 1.0], [0.5, 1.0]])).tolist() == [0, 0, 2]  # -0.0 == 0.0


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_settle_copies_undoes_any_rounding_among_copies(seed, exclude_self) -> None:
    """Lists as a search could give them when the products with copies round apart: the rule's
    lists of real-valued rows with many copies (each distinct pair's product computed once), each
    entry's copy swapped for another copy of the same row, its value moved by a last-bit step,
    rows in any order of those values. Settled, they are the rule's lists again, values included
    (the group's largest)."""
    from tasks.metrics.copies import copy_canon, settle_copies

    n, k = 120, 9
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)[torch.randint(0, 30, (n,), generator=g)]
    unique, inverse = np.unique(x.numpy(), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    values, indices = stable_top_k(torch.from_numpy((unique @ unique.T)[np.ix_(inverse, inverse)]), k, exclude_self)
    canon = copy_canon(x)
    assert canon is not None
    rng = np.random.default_rng(seed)
    members = {int(g): np.flatnonzero(canon.numpy() == g) for g in np.unique(canon.numpy())}
    moved_values, moved = values.copy(), indices.copy()
    for i in range(n):
        for t in range(k):
            pool = [j for j in members[int(canon[indices[i, t]])] if not (exclude_self and j == i)]
            taken = set(moved[i, :t].tolist())
            choices = [j for j in pool if j not in taken and j not in indices[i, t + 1:]]
            moved[i, t] = rng.choice(choices) if choices else indices[i, t]
            moved_values[i, t] = np.nextafter(values[i, t], np.inf) if rng.random() < 0.5 else values[i, t]
        by_value = np.argsort(-moved_values[i], kind="stable")
        moved_values[i], moved[i] = moved_values[i][by_value], moved[i][by_value]
    assert (moved != indices).any() and (moved_values != values).any()  # the lists were moved: settling has work
    got_values, got = settle_copies(torch.from_numpy(moved_values), torch.from_numpy(moved), canon, exclude_self)
    np.testing.assert_array_equal(got.numpy(), indices)
    group_max = {}
    for i in range(n):
        for t in range(k):
            key = (i, int(canon[moved[i, t]]))
            group_max[key] = max(group_max.get(key, -np.inf), moved_values[i, t])
    np.testing.assert_array_equal(got_values.numpy(), [[group_max[(i, int(canon[indices[i, t]]))] for t in range(k)]
                                                       for i in range(n)])
