"""Top-``k`` selection under one total order: similarity descending, then index ascending.

``torch.topk`` returns *some* ``k`` largest entries: where the ``k``-th value ties with the
``(k+1)``-th (duplicate rows: an image's captions with ``unit: sample``), which of the tied
entries it keeps depends on the kernel, the block shape and the device. The neighbour lists are
instead defined as the first ``k`` of a stable descending sort of the row (what
``np.argsort(-s, kind='stable')[:k]`` gives): every entry above the ``k``-th value, then the
lowest indices among the entries equal to it.

``ranked_topk`` asks for the ``k + 1`` largest entries, so a tie at the boundary shows as
``v[k-1] == v[k]``; only rows with one are settled, from the same values (one ``(T, C)``
selection over the ``T`` tied rows). Off a GPU, a block whose ``k + 1`` values strictly decrease
in every row (no tie anywhere: the usual case) costs one comparison of them more than a plain
``topk``; the ``(k+1)``-th entry itself cost ~0.1 ms a layer at N=1024, k=10 (2 CPU threads).

Off a GPU, long rows take those ``k + 1`` entries through group maxima (``largest_entries``):
the columns are split into groups of ``GROUP_SIZE`` (the last ``C mod GROUP_SIZE`` columns in
none), each group's maximum taken, and only the ``k + 1`` groups of largest maxima searched, with
the columns in no group. Every grouped entry above the ``(k+1)``-th largest maximum lies in a
chosen group (fewer than ``k + 1`` groups have a larger maximum) and the chosen groups' maxima
are ``k + 1`` entries at least that large, so the chosen groups and the ungrouped columns hold
the row's ``k + 1`` largest *values* (ties included: the same multiset), which is all the rule
reads from them.
"""

from __future__ import annotations

import torch

from .gram import batched_device

#: the key of entries that are not tied at the ``k``-th value (larger than any sample index)
_NOT_TIED = torch.iinfo(torch.int64).max
#: columns per group of ``largest_entries``: each group is ``GROUP_SIZE`` columns ``C // GROUP_SIZE``
#: apart, so that the maxima are one vectorised reduction over rows of contiguous values (N=1024,
#: k=10, 2 CPU threads: 1.17 ms a layer against 1.34 for ``topk`` of the whole rows; 16 columns a
#: group 1.34, 4 1.39; contiguous groups of 8, whose maxima reduce along a short axis, 1.58)
GROUP_SIZE = 8


def ranked_topk(block: torch.Tensor, k: int, ids: torch.Tensor | None = None, ordered: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each row of ``block`` under (value descending, id ascending).

    Args:
        block: ``(R, C)`` similarities (any float dtype; ``-inf`` allowed, no NaN).
        k: entries per row, ``1 <= k``; with ``k >= C`` every entry is returned (``C`` of them).
        ids: optional ``(R, C)`` int64 ids of the entries (sample indices, e.g. of merged candidate
            lists), the tie-break key; default the column positions ``0..C-1``.
        ordered: also order equal values by increasing id (``ties_in_index_order``); else
            their order within a row is left as ``topk`` gives it (the *set* is the rule's).

    Returns:
        ``(values, chosen)``: ``(R, min(k, C))`` values sorted descending and int64 column
        positions (or ``ids`` of them when given); possibly views of larger tensors.
    """
    c = int(block.shape[-1])
    if k >= c:  # every entry: nothing to choose
        v, i = torch.topk(block, c, dim=-1, largest=True, sorted=True)
        i = i if ids is None else ids.gather(-1, i)
        return ties_in_index_order(v, i) if ordered else (v, i)
    v, i = largest_entries(block, k + 1)
    if ids is not None:
        i = ids.gather(-1, i)
    if not batched_device(block.device) and bool((v[:, 1:] < v[:, :-1]).all()):
        return v[:, :k], i[:, :k]  # no tie at all: set and order as they are
    tied = v[:, k - 1] == v[:, k]
    values, chosen = v[:, :k], i[:, :k]
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        key = (torch.arange(c, device=block.device) if ids is None else ids.index_select(0, rows))
        sv, si = settle_ties(block.index_select(0, rows), key, v.index_select(0, rows), i.index_select(0, rows), k)
        values, chosen = values.clone(), chosen.clone()
        values[rows], chosen[rows] = sv, si
    return ties_in_index_order(values, chosen) if ordered else (values, chosen)


def largest_entries(block: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest values of each row of ``block`` ``(R, C)`` (no NaN), descending,
    ``(R, count)``, and the columns of entries holding them ``(R, count)`` int64: what
    ``torch.topk(block, count, sorted=True)`` returns, up to which of several equal entries it names.

    Off a GPU, for a block whose rows or columns are contiguous, where the ``count`` groups
    searched (``GROUP_SIZE`` columns each, see the module's docstring) and the last
    ``C mod GROUP_SIZE`` columns, always searched, are at most a quarter of the row, only they
    are: the group maxima
    ``(R, C // GROUP_SIZE)``, ``topk`` of them, a gather of the chosen groups' columns and
    ``topk`` of those (1,677 x 20,000, k=10: 12.6 ms against 30.2). The same for a transposed
    block (its columns contiguous: ``_symmetric_search``'s later rows), whose maxima are taken
    along its columns and copied once (20,000 x 1,677: 51 ms against 70; the maxima reduced
    along its strided rows had taken 85). Elsewhere ``torch.topk`` of the rows."""
    r, c = block.shape
    groups = c // GROUP_SIZE
    main = groups * GROUP_SIZE
    searched = count * GROUP_SIZE + (c - main)
    if batched_device(block.device) or groups == 0 or 4 * searched > c or 1 not in block.stride():
        return torch.topk(block, count, dim=-1, largest=True, sorted=True)
    # group g holds the columns g, g + groups, g + 2 groups, ...: maxima of contiguous values
    if block.stride(1) == 1:
        maxima = block[:, :main].unflatten(1, (GROUP_SIZE, groups)).amax(1)  # (R, groups)
    else:  # a transposed block (its columns contiguous): the maxima along them, then one copy
        maxima = block.T[:main].unflatten(0, (GROUP_SIZE, groups)).amax(0).T.contiguous()
    chosen = torch.topk(maxima, count, dim=-1, largest=True, sorted=False).indices
    offsets = torch.arange(0, main, groups, device=block.device)
    cols = (chosen[:, :, None] + offsets).reshape(r, count * GROUP_SIZE)
    if main < c:  # the last columns, in no group
        cols = torch.cat([cols, torch.arange(main, c, device=block.device).expand(r, c - main)], 1)
    values, at = torch.topk(block.gather(1, cols), count, dim=-1, largest=True, sorted=True)
    return values, cols.gather(1, at)


def settle_ties(row_values: torch.Tensor, key: torch.Tensor, top_values: torch.Tensor,
                top_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule's top ``k`` of rows whose ``k + 1`` best entries are known.

    Args:
        row_values: ``(T, C)`` the rows' values (every entry that could tie at the ``k``-th
            value must be among them).
        key: ``(T, C)`` or ``(C,)`` int64 ids of those entries (the tie-break).
        top_values: ``(T, k + 1)`` the rows' ``k + 1`` largest values, descending (any valid
            ``topk``: which tied entries it holds does not matter).
        top_ids: ``(T, k + 1)`` int64 their ids.
        k: entries wanted.

    Returns:
        ``(T, k)`` values and int64 ids: the entries above the ``k``-th value (all in
        ``top_*``), then the lowest ids among the entries equal to it.
    """
    kth = top_values[:, k - 1:k]  # (T, 1)
    above = (top_values[:, :k] > kth).sum(1, keepdim=True)  # (T, 1): all listed in top_*
    tied = torch.where(row_values == kth, key, _NOT_TIED)
    lowest = torch.topk(tied, k, dim=1, largest=False, sorted=True).values  # >= k - above real ids
    p = torch.arange(k, device=top_ids.device)
    listed = p < above
    values = torch.where(listed, top_values[:, :k], kth)
    ids = torch.where(listed, top_ids[:, :k], lowest.gather(1, (p - above).clamp_(min=0)))
    return values, ids


def ties_in_index_order(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., k)`` lists sorted by decreasing value, neighbours of equal value in increasing
    index order: which of two tied neighbours comes first no longer depends on the block sizes
    or the device (``topk`` leaves it unspecified; the sequence metrics read the order).
    Off a GPU, lists whose values all strictly decrease are returned as they are (nothing to
    reorder: the two sorts were 9 of 185 ms of mutual k-NN over 2 x 13 layers at N=1024)."""
    if not batched_device(values.device) and bool((values[..., 1:] < values[..., :-1]).all()):
        return values, indices
    by_index, order = torch.sort(indices, dim=-1)
    values, order_by_value = torch.sort(values.gather(-1, order), dim=-1, descending=True, stable=True)
    return values, by_index.gather(-1, order_by_value)


__all__ = ["largest_entries", "ranked_topk", "settle_ties", "ties_in_index_order"]
