"""Top-``k`` selection under one total order: similarity descending, then index ascending.

``torch.topk`` returns *some* ``k`` largest entries: where the ``k``-th value ties with the
``(k+1)``-th (duplicate rows: an image's captions with ``unit: sample``), which of the tied
entries it keeps depends on the kernel, the block shape and the device. The neighbour lists are
instead defined as the first ``k`` of a stable descending sort of the row (what
``np.argsort(-s, kind='stable')[:k]`` gives): every entry above the ``k``-th value, then the
lowest indices among the entries equal to it.

``ranked_topk`` asks ``topk`` for ``k + 1`` entries, so a tie at the boundary shows as
``v[k-1] == v[k]``; only rows with one are settled, from the same values (one ``(T, C)``
selection over the ``T`` tied rows). Off a GPU, a block whose ``k + 1`` values strictly decrease
in every row (no tie anywhere: the usual case) costs one comparison of them more than a plain
``topk``; the ``(k+1)``-th entry itself cost ~0.1 ms a layer at N=1024, k=10 (2 CPU threads).
"""

from __future__ import annotations

import torch

from .gram import batched_device

#: the key of entries that are not tied at the ``k``-th value (larger than any sample index)
_NOT_TIED = torch.iinfo(torch.int64).max


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
    v, i = torch.topk(block, k + 1, dim=-1, largest=True, sorted=True)
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


__all__ = ["ranked_topk", "settle_ties", "ties_in_index_order"]
