"""Exact copies among a layer's rows, and neighbour lists that hold them as one value.

Two equal rows ``x_j == x_{j'}`` (an image's captions under ``unit: sample``, a narrow
layer whose clamp makes rows equal) have equal inner products with every row, so the tie rule
(similarity descending, then index ascending: ``ranked_topk``) lists the lower index first. A
matrix product need not round them alike, though: with real-valued features the products of one
row with two copies often differ in the last bit (the kernel's path depends on the column's
position in the block), and the list then keeps the copy that rounding favours, which can change
with the block size or the device. `settle_copies` restores the rule on any list: the entries of
one group of copies in a row are the lowest-index members of that group (the row itself left out
when the lists exclude self), at one value (the largest of those the search computed), in index
order.
"""

from __future__ import annotations

import torch

from .ranked_topk import ties_in_index_order

#: columns of the first screen of `copy_canon`: rows that differ in one of them are no copies
SCREEN_COLUMNS = 8
#: list entries settled at a time by `settle_copies`
SETTLE_ELEMENTS = 1 << 20


def copy_canon(x: torch.Tensor) -> torch.Tensor | None:
    """``(N,)`` int64: for each row of ``(N, D)`` float ``x``, the lowest index of a row of equal
    values (``==`` in every column: bit for bit, but that ``-0.0`` equals ``0.0``), itself when it
    has none; None when no two rows are equal (the usual case).

    Rows are screened by a hash of the 16-bit pieces of ``SCREEN_COLUMNS`` columns spread over the
    row (``-0.0`` read as ``0.0``; a sum of integers: the same for equal rows wherever they lie);
    rows that differ there are no copies, so one sort of ``N`` integers settles copy-free data.
    Each row that shares its screen hash is compared whole with the lowest row of that hash; the
    rows that differ from it (rows alike only where screened, such as sparse features' zeros) are
    settled among themselves by an exact ``torch.unique``."""
    n, width = int(x.shape[0]), int(x.shape[1])
    if n < 2 or width == 0:
        return None
    screen = torch.linspace(0, width - 1, steps=min(width, SCREEN_COLUMNS), device=x.device).round().long().unique()
    pieces = (x.index_select(1, screen) + 0.0).contiguous().view(torch.int16).to(torch.int64)  # + 0.0: -0.0 -> 0.0
    weights = (torch.arange(int(pieces.shape[1]), dtype=torch.int64, device=x.device) * 40503 + 7919) % 1048573 + 1
    keys = (pieces * weights).sum(1)
    order = torch.sort(keys, stable=True).indices  # equal keys together, lowest row first
    ordered = keys.index_select(0, order)
    same = ordered[1:] == ordered[:-1]
    if not bool(same.any()):
        return None
    starts = torch.ones(n, dtype=torch.bool, device=x.device)
    starts[1:] = ~same
    shared = ~(starts & torch.cat([starts[1:], starts.new_ones(1)]))  # in a run of two rows or more
    head = order.index_select(0, torch.cummax(torch.where(starts, torch.arange(n, device=x.device), 0), 0).values)
    rows, heads = order[shared], head[shared]
    equal = _rows_equal(x, rows, heads)
    canon = torch.arange(n, device=x.device)
    canon[rows[equal]] = heads[equal]
    odd = rows[~equal]  # alike where screened only: their copies (if any) are among them
    if int(odd.numel()) > 1:
        _, inverse = torch.unique(x.index_select(0, odd) + 0.0, dim=0, return_inverse=True)
        lowest = torch.full((int(inverse.max()) + 1,), n, dtype=torch.int64, device=x.device)
        canon[odd] = lowest.scatter_reduce_(0, inverse, odd, reduce="amin").index_select(0, inverse)
    return None if bool((canon == torch.arange(n, device=x.device)).all()) else canon


#: elements of the rows compared at a time by `_rows_equal`
_CHUNK_ELEMENTS = 1 << 22


def _rows_equal(x: torch.Tensor, rows: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """``(R,)`` bool: whether row ``rows[t]`` of ``x`` equals row ``others[t]`` (``==`` in every
    column), a chunk of rows at a time."""
    step = max(1, _CHUNK_ELEMENTS // max(int(x.shape[1]), 1))
    return torch.cat([(x.index_select(0, rows[lo:lo + step]) == x.index_select(0, others[lo:lo + step])).all(1)
                      for lo in range(0, int(rows.numel()), step)])


def subset_canon(canon: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """`copy_canon` of the rows ``rows`` (``(m,)`` distinct int64) of a sample whose copies are
    ``canon``, in the subset's own positions; None when no two of them are copies."""
    if canon is None:
        return None
    group = canon.index_select(0, rows)
    m = int(rows.numel())
    lowest = torch.full((int(canon.numel()),), m, dtype=torch.int64, device=rows.device)
    lowest.scatter_reduce_(0, group, torch.arange(m, device=rows.device), reduce="amin")
    sub = lowest.index_select(0, group)
    return None if bool((sub == torch.arange(m, device=rows.device)).all()) else sub


def settle_copies(values: torch.Tensor, indices: torch.Tensor, canon: torch.Tensor | None,
                  exclude_self: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, k)`` lists (``values`` decreasing, int ``indices``) of a sample whose copies are
    ``canon`` (`copy_canon`), with each group of copies held as one value: a row's ``c`` entries
    from one group become the group's ``c`` lowest indices (without the row itself when
    ``exclude_self``), all at the largest value the search gave them, and the row is put in
    (value descending, index ascending) order. Rows without an entry from a group of copies, and
    lists of a sample without copies, are returned as they are. Time ``O(N k log(N k))``."""
    if canon is None:
        return values, indices
    n, k = int(canon.numel()), int(indices.shape[-1])
    device = indices.device
    order = torch.sort(canon, stable=True).indices  # each group's members together, in index order
    sizes = torch.bincount(canon, minlength=n)
    start = torch.cumsum(sizes, 0) - sizes  # (N,) where group g (its lowest index) starts in ``order``
    place = torch.empty(n, dtype=torch.int64, device=device)
    place[order] = torch.arange(n, device=device)
    self_rank = place - start.index_select(0, canon)  # each row's rank among its own copies
    groups = canon.index_select(0, indices.reshape(-1).long()).view(indices.shape)
    todo = (sizes.index_select(0, groups.reshape(-1)).view(groups.shape) > 1).any(-1).nonzero().squeeze(1)
    if int(todo.numel()) == 0:
        return values, indices
    values, indices = values.clone(), indices.clone()
    step = max(1, SETTLE_ELEMENTS // max(k, 1))
    for lo in range(0, int(todo.numel()), step):
        rows = todo[lo:lo + step]
        g, v = groups.index_select(0, rows), values.index_select(0, rows)
        r = int(rows.numel())
        # the entries sorted by (row, group), stably (list order within a group): runs of one group
        key = (torch.arange(r, device=device).unsqueeze(1) * n + g).reshape(-1)
        by_group = torch.sort(key, stable=True).indices
        sorted_key = key.index_select(0, by_group)
        new_run = torch.ones_like(sorted_key, dtype=torch.bool)
        new_run[1:] = sorted_key[1:] != sorted_key[:-1]
        positions = torch.arange(r * k, device=device)
        run_start = torch.cummax(torch.where(new_run, positions, 0), 0).values
        rank = torch.empty_like(positions)
        rank[by_group] = positions - run_start  # each entry's rank among its row's entries of its group
        run = torch.cumsum(new_run, 0) - 1
        run_max = torch.full((int(run[-1]) + 1,), float("-inf"), dtype=v.dtype, device=device)
        run_max.scatter_reduce_(0, run, v.reshape(-1).index_select(0, by_group), reduce="amax")
        one_value = torch.empty_like(v.reshape(-1))
        one_value[by_group] = run_max.index_select(0, run)
        rank = rank.view(r, k)
        if exclude_self:  # the row's own place among its copies is skipped
            own = (g == canon.index_select(0, rows).unsqueeze(1)) & (rank >= self_rank.index_select(0, rows).unsqueeze(1))
            rank = rank + own
        members = order.index_select(0, (start.index_select(0, g.reshape(-1)).view(g.shape) + rank).reshape(-1)).view(g.shape)
        settled_values, settled = ties_in_index_order(one_value.view(r, k), members.to(indices.dtype))
        values[rows], indices[rows] = settled_values, settled
    return values, indices


__all__ = ["copy_canon", "settle_copies", "subset_canon"]
