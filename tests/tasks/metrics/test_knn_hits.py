"""``knn_hits``: the x-lists' bitmask table and the hits of y-lists in it."""

from __future__ import annotations

import pytest

from tests.tasks.metrics.peak_memory import peak_growth

#: 63 layers (one int64 bitmask group) of N=4000 lists of k=10, each the next k samples in a
#: random cyclic order
_LISTS = (
    "from tasks.metrics.knn_hits import build_list_table, permuted_hits\n"
    "g = torch.Generator().manual_seed(0)\n"
    "n, k, L = 4000, 10, 63\n"
    "def layer():\n"
    "    p = torch.randperm(n, generator=g)\n"
    "    q = torch.empty_like(p)\n"
    "    q[p] = torch.arange(n)\n"
    "    return p[(q.view(n, 1) + torch.arange(1, k + 1)) % n]\n"
    "idx = torch.stack([layer() for _ in range(L)])\n"
    "table = build_list_table(idx)\n"
    "entries = idx.numel()\n")


@pytest.mark.parametrize("bound", ["all", "entries"])
def test_hits_of_many_held_entries_are_expanded_a_chunk_at_a_time(bound: str) -> None:
    """The lists against themselves: every one of the L N k y-entries is held by its own x-layer
    (``matrix`` of a representation with itself). Each held entry's int64 bitmask was expanded to
    all 63 layers of its group at once, two (held entries, 63) int64 tensors: 2.4 GiB here, before
    ``max_hits`` was even compared with the hits (``bound='entries'``: the hits exceed it, the
    answer is ``None``); the hits themselves are six (H,) int64 tensors, 116 MiB."""
    measured = ("hits = permuted_hits(table, idx, None, max_hits=None if BOUND == 'all' else entries)\n"
                "extra.append(-1 if hits is None else hits.row.numel())\n").replace("BOUND", repr(bound))
    extra, found = peak_growth(_LISTS, measured)
    if bound == "all":
        assert found > 63 * 4000 * 10  # every entry, and those shared by two layers
        assert extra < 300 * 2**20, extra / 2**20
    else:
        assert found == -1
        assert extra < 150 * 2**20, extra / 2**20


@pytest.mark.parametrize("group", [2, 15, 63])
def test_hits_expanded_in_chunks_are_the_same_hits_and_max_hits_is_exact(monkeypatch: pytest.MonkeyPatch,
                                                                         group: int) -> None:
    """Expanded one held entry at a time (``EXPAND_CHUNK_ELEMENTS = 1``), in groups of 2, 15 or 63
    layers, the hits are those of one expansion, in the same order; ``max_hits`` answers ``None``
    exactly when the hits exceed it, under permutations and for the lists as they are."""
    import torch

    import tasks.metrics.knn_hits as hits_mod

    g = torch.Generator().manual_seed(group)
    n, k = 23, 6
    idx_a = torch.stack([torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)]) for _ in range(17)])
    idx_b = torch.cat([idx_a[:3], torch.stack([torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)])
                                               for _ in range(2)])])
    invs = hits_mod.inverse_permutations(torch.stack([torch.randperm(n, generator=g) for _ in range(3)]))
    table = hits_mod.build_list_table(idx_a, group)
    for inv in (None, invs):
        whole = hits_mod.permuted_hits(table, idx_b, inv)
        monkeypatch.setattr(hits_mod, "EXPAND_CHUNK_ELEMENTS", 1)
        chunked = hits_mod.permuted_hits(table, idx_b, inv)
        monkeypatch.undo()
        for name in ("batch", "layer_a", "layer_b", "row", "col", "entry"):
            assert torch.equal(getattr(chunked, name), getattr(whole, name)), name
        count = whole.row.numel()
        assert count > (3 * n * k if inv is None else 0)  # unpermuted: the three shared layers at least
        assert hits_mod.permuted_hits(table, idx_b, inv, max_hits=count) is not None
        assert hits_mod.permuted_hits(table, idx_b, inv, max_hits=count - 1) is None


@pytest.mark.parametrize("ka,kb", [(5, 5), (3, 8), (1, 1), (36, 2)])
@pytest.mark.parametrize("group", [1, 2, 63])
@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("batched", [False, True])
def test_member_counts_equal_a_loop_over_the_definition(monkeypatch: pytest.MonkeyPatch, ka: int, kb: int,
                                                        group: int, dense: bool, batched: bool) -> None:
    """Overlaps (``|A ∩ B|`` per sample and summed) and cycle hits (``i`` in the x-list of one of
    its y-neighbours) from the x side's bitmask table, for any chunk size, table kind and layer
    grouping, one bit at a time or (GPU path) several, equal a plain loop over sets."""
    import torch

    import tasks.metrics.gram as gram_module
    import tasks.metrics.knn_hits as hits_mod

    if batched:
        monkeypatch.setattr(gram_module, "BATCHED_DEVICE_TYPES", {"cuda", "cpu"})

    g = torch.Generator().manual_seed(ka * 100 + kb)
    n = 37
    idx_a = torch.stack([torch.stack([torch.randperm(n, generator=g)[:ka] for _ in range(n)]) for _ in range(3)])
    idx_b = torch.stack([torch.stack([torch.randperm(n, generator=g)[:kb] for _ in range(n)]) for _ in range(4)])
    sets = [[set(idx_a[a, i].tolist()) for i in range(n)] for a in range(3)]
    overlaps = torch.tensor([[[len(sets[a][i] & set(idx_b[b, i].tolist())) for i in range(n)]
                              for b in range(4)] for a in range(3)])
    cycles = torch.tensor([[[any(i in sets[a][j] for j in idx_b[b, i].tolist()) for i in range(n)]
                            for b in range(4)] for a in range(3)])
    table = hits_mod.build_list_table(idx_a, group, None if dense else 0)
    old_chunk = hits_mod.COUNT_CHUNK_ELEMENTS
    try:
        for chunk in (1, kb, 5 * kb, n * kb, 2 * n * kb + 1, 1 << 22):
            hits_mod.COUNT_CHUNK_ELEMENTS = chunk
            assert torch.equal(hits_mod.member_counts(table, hits_mod.pair_keys(idx_b)), overlaps)
            assert torch.equal(hits_mod.member_counts(table, hits_mod.pair_keys(idx_b), "total"), overlaps.sum(-1))
            assert torch.equal(hits_mod.member_counts(table, hits_mod.pair_keys(idx_b, reverse=True), "any"), cycles)
    finally:
        hits_mod.COUNT_CHUNK_ELEMENTS = old_chunk
    with pytest.raises(ValueError, match="reduce"):
        hits_mod.member_counts(table, hits_mod.pair_keys(idx_b), "mean")


def test_bit_counts_of_every_mask_dtype_and_the_hits_limit() -> None:
    """``bit_counts`` (16 bits at a time from a table) equals a count of the binary digits for the
    three bitmask dtypes up to their last usable bit; ``permuted_hits`` gives up exactly when the
    hits are more than ``max_hits``."""
    import torch

    from tasks.metrics.knn_hits import bit_counts, build_list_table, permuted_hits

    g = torch.Generator().manual_seed(0)
    for dtype, bits in ((torch.int16, 15), (torch.int32, 31), (torch.int64, 63)):
        m = torch.randint(0, 1 << 62, (500,), generator=g) >> (63 - bits)
        m[:2] = torch.tensor([0, (1 << bits) - 1])
        assert torch.equal(bit_counts(m.to(dtype)), torch.tensor([bin(int(v)).count("1") for v in m]))
    n = 30
    idx = torch.stack([torch.stack([torch.randperm(n, generator=g)[:4] for _ in range(n)]) for _ in range(20)])
    hits = permuted_hits(build_list_table(idx), idx[:3], None)
    h = hits.row.numel()
    assert h >= 3 * n * 4  # every entry of the 3 shared layers at least
    assert permuted_hits(build_list_table(idx), idx[:3], None, max_hits=h) is not None
    assert permuted_hits(build_list_table(idx), idx[:3], None, max_hits=h - 1) is None
