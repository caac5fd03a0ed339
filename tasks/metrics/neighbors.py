"""k-nearest-neighbour lists and the set/sequence comparisons the kNN metrics need.

Neighbours are by inner product (the paper's ``feats @ feats.T``), self excluded unless asked,
computed blockwise: a block of ``B`` query rows against the rows from its own first row on (each
inner product once; ``_symmetric_search``, where the width is large next to ``k``) or against all
rows, so memory is ``O(N*k + B*N)`` and never ``N^2`` unless the caller passes a full Gram matrix.

Index conventions: ``idx`` is ``(..., N, k)`` int64, row ``i`` lists the neighbours of sample ``i``
in decreasing similarity, neighbours of equal similarity by increasing index. Which neighbours
are listed is defined the same way, on every path and block size: the first ``k`` of the row's
stable descending sort (``ranked_topk``: all above the ``k``-th similarity, then the lowest
indices among those equal to it). Permuting samples
(``y' = y[perm]``) maps a list to ``inv[idx[perm]]`` where ``inv`` is the inverse permutation:
order and content are kept (tied neighbours then follow the old indices: a search of the permuted
features can list other tied ones).
"""

from __future__ import annotations

import math

import torch

from .bf16_neighbors import check_knn_precision, reduced_topk
from .gram import batched_device, gram_full, gram_stack, row_blocks
from .ranked_topk import ranked_topk, settle_ties, ties_in_index_order

# Elements (not bytes) of one similarity block; 2**25 float32 = 128 MiB.
DEFAULT_BLOCK_ELEMENTS = 1 << 25
#: the default on a CUDA device, 2**27 float32 = 512 MiB: on an H200 the exact search at
#: N=100,000 (width 1024) took 1.28 s with 128 MiB blocks, 1.06 s with 512 MiB (1.5 GB peak)
CUDA_BLOCK_ELEMENTS = 1 << 27


def default_block_elements(device: torch.device) -> int:
    """Elements of one similarity block when the caller names none: larger on a GPU."""
    return CUDA_BLOCK_ELEMENTS if device.type == "cuda" else DEFAULT_BLOCK_ELEMENTS


def topk_neighbors(x: torch.Tensor | None, k: int, *, exclude_self: bool = True,
                   gram: torch.Tensor | None = None,
                   block_elements: int | None = None,
                   precision: str = "exact",
                   scratch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product neighbours of every row.

    Args:
        x: ``(N, D)`` features (float32/float64); ignored when ``gram`` is given.
        k: neighbours per row, ``1 <= k <= N - 1`` (``N`` when ``exclude_self=False``).
        exclude_self: put ``-inf`` on the diagonal before selection (the paper's rule).
        gram: optional precomputed ``(N, N)`` ``x @ x.T``; it is not modified.
        block_elements: size of one similarity block (rows * N); default `default_block_elements`
            of the device (128 MiB of float32, 512 MiB on CUDA).
        precision: ``'exact'`` (default: the computation dtype), or the opt-in bfloat16 search
            ``'bf16'`` (approximate lists) / ``'bf16-refine'`` (certified equal to exact), see
            ``bf16_neighbors``; those need ``x`` and never read ``gram``.
        scratch: optional ``(N, N)`` buffer of the computation dtype and device that the search
            may overwrite: for ``x``'s whole Gram when it fits one block, or for the copy of a
            block of ``gram``'s rows whose diagonal is masked (a caller searching many layers
            passes one for all: fresh pages for each layer's Gram cost a CPU ~1 ms per 4 MB).

    Returns:
        ``(values, indices)``: ``(N, k)`` similarities in the computation dtype and ``(N, k)`` int64,
        sorted by decreasing similarity, then increasing index; where the ``k``-th similarity
        ties, the lowest tied indices are listed (``ranked_topk``), whatever the path.
    """
    if block_elements is None:
        block_elements = default_block_elements(gram.device if gram is not None else x.device)  # type: ignore[union-attr]
    if check_knn_precision(precision) != "exact":
        if x is None:
            raise ValueError(f"knn_precision={precision!r} searches the features: pass x, not gram")
        r = reduced_topk(x, k, exclude_self=exclude_self, refine=precision == "bf16-refine",
                         block_elements=block_elements)
        return ties_in_index_order(r.values, r.indices)
    n = int(gram.shape[0] if gram is not None else x.shape[0])  # type: ignore[union-attr]
    kmax = n - 1 if exclude_self else n
    if not 1 <= k <= kmax:
        raise ValueError(f"topk must be in [1, {kmax}] for N={n}, got {k}")
    rows = max(1, min(n, block_elements // max(n, 1)))
    device = gram.device if gram is not None else x.device  # type: ignore[union-attr]
    dtype = gram.dtype if gram is not None else x.dtype  # type: ignore[union-attr]
    if gram is None and rows >= n:  # the whole Gram fits in one block: use its symmetry
        gram = gram_full(x, out=scratch)  # type: ignore[arg-type]
        if exclude_self:
            gram.fill_diagonal_(float("-inf"))
        return ranked_topk(gram, k, ordered=True)
    if gram is None and symmetric_search_pays(n, int(x.shape[1]), k, block_elements):  # type: ignore[union-attr]
        return ties_in_index_order(*_symmetric_search(x, k, exclude_self, rows))  # type: ignore[arg-type]
    values = torch.empty((n, k), dtype=dtype, device=device)
    indices = torch.empty((n, k), dtype=torch.int64, device=device)
    for start, stop in row_blocks(n, rows):  # no last block of a few rows: another kernel, another rounding
        if gram is None:
            block = x[start:stop] @ x.T  # type: ignore[union-attr]
        else:
            block = gram[start:stop]
            if exclude_self:  # a copy: the given gram is not modified
                block = block.clone() if scratch is None else scratch.view(-1)[:block.numel()].view_as(block).copy_(block)
        if exclude_self:
            r = torch.arange(stop - start, device=device)
            block[r, r + start] = float("-inf")
        v, i = ranked_topk(block, k)  # tied rows settled from this block, before it is freed
        values[start:stop] = v
        indices[start:stop] = i
        del block, v, i  # one block alive at a time: the next product is allocated after this one is freed
    return ties_in_index_order(values, indices)


#: ``symmetric_search_pays``: the width must be at least this many times ``k``. At N=20,000 on
#: one CPU thread: k=10, D=768 took 4.5 s against 7.1 s for full row blocks; k=76, D=768 6.5
#: against 7.2 s; k=100, D=64 3.8 against 2.2 s; k=1000, D=8 17.0 against 4.6 s.
SYMMETRIC_MIN_WIDTH_PER_K = 16


def symmetric_search_pays(n: int, d: int, k: int, block_elements: int) -> bool:
    """Whether ``_symmetric_search`` beats full row blocks for ``(n, d)`` features and ``k``
    neighbours: it saves about ``n^2 d / 2`` multiply-adds but merges ``(n, 2k)`` candidates after
    every block, so the width must dwarf ``k`` (``SYMMETRIC_MIN_WIDTH_PER_K``), and one merge's
    temporaries (about ``44 n k`` bytes: values and int64 indices, concatenated, selected and
    gathered) must stay within one block of ``block_elements`` float32 elements."""
    return d >= SYMMETRIC_MIN_WIDTH_PER_K * k and 11 * n * k <= block_elements


def _symmetric_search(x: torch.Tensor, k: int, exclude_self: bool, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_neighbors`` of ``(N, D)`` ``x`` without the whole Gram, each inner product computed
    once: row block ``I`` (``rows`` rows) is multiplied only against the columns from its first
    row on (about half the multiply-adds of full row blocks). The block gives its own rows their
    candidates among those columns, and gives every later row its top ``k`` among ``I`` (the
    block's columns, read down); a row's lists are merged as its candidates arrive. Memory: one
    ``rows x N`` block, the ``N x k`` lists and one merge's temporaries (``symmetric_search_pays``
    bounds them). Every candidate list is its columns' top ``k`` under the total order
    (``ranked_topk``) and so is every merge, so the merged lists are the whole row's: a tied entry
    a block leaves out is outranked by ``k`` entries that stay."""
    n = int(x.shape[0])
    values = torch.full((n, k), float("-inf"), dtype=x.dtype, device=x.device)
    indices = torch.zeros((n, k), dtype=torch.int64, device=x.device)
    for start, stop in row_blocks(n, rows):  # no last block of a few rows: its products would round
        # otherwise than the earlier blocks' products of the same pairs, which give those rows candidates
        block = x[start:stop] @ x[start:].T  # (rows, N - start): columns start..N-1
        if exclude_self:
            r = torch.arange(stop - start, device=x.device)
            block[r, r] = float("-inf")
        v, i = ranked_topk(block, k)  # positions in the block's columns follow the indices
        _merge_candidates(values[start:stop], indices[start:stop], v, i + start)
        if stop < n:  # the rows after the block: their candidates among its rows (read down)
            v, i = ranked_topk(block[:, stop - start:].T, k)
            _merge_candidates(values[stop:], indices[stop:], v, i + start)
        del block, v, i  # one block alive at a time
    return values, indices


def _merge_candidates(values: torch.Tensor, indices: torch.Tensor, new_values: torch.Tensor,
                      new_indices: torch.Tensor) -> None:
    """Keep in ``values``/``indices`` ``(R, k)`` (sorted, in place) the top ``k`` of their own
    entries and the candidates ``(R, c)`` under the total order (ties by lowest index,
    ``ranked_topk``); the candidates of different blocks are different samples, so nothing is
    counted twice. On a GPU (``batched_device``) the ``(R, k + c)`` candidates are put in that
    order by two sorts (``ties_in_index_order``) and cut to ``k``: the same lists without the
    host sync of ``ranked_topk``'s tie check (two syncs fewer per block of ``_symmetric_search``)."""
    both_values, both_indices = torch.cat([values, new_values], dim=1), torch.cat([indices, new_indices], dim=1)
    k = values.shape[1]
    if batched_device(values.device):
        top_values, top_indices = ties_in_index_order(both_values, both_indices)
        top_values, top_indices = top_values[:, :k], top_indices[:, :k]
    else:
        top_values, top_indices = ranked_topk(both_values, k, ids=both_indices)
    indices.copy_(top_indices)
    values.copy_(top_values)


def stacked_topk_neighbors(layers: list[torch.Tensor], k: int, *, exclude_self: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_neighbors(x, k)`` of several ``(N, D)`` layers of one width at once, each layer's
    whole Gram in one block (``N * N <= block_elements``): ``(G, N, k)`` values and indices, the
    same lists (the same Gram matrices, ``gram.gram_stack``, and one ``topk`` over their rows).
    The stack's ``G`` Gram matrices are alive at once: callers bound ``G * N * N``."""
    n = int(layers[0].shape[0])
    kmax = n - 1 if exclude_self else n
    if not 1 <= k <= kmax:
        raise ValueError(f"topk must be in [1, {kmax}] for N={n}, got {k}")
    gram = gram_stack(layers)
    if exclude_self:
        gram.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    v, i = ranked_topk(gram.reshape(-1, n), k, ordered=True)
    return v.reshape(-1, n, k), i.reshape(-1, n, k)


def candidate_depth(k: int, n: int, m: int, kmax: int) -> int:
    """How deep a full-sample list must be for ``restrict_lists`` to find ``k`` members of an
    ``m``-row subset in almost every row: about ``3k`` expected members plus a margin (a row
    with fewer is recomputed, so this only sets the speed), at most ``kmax``."""
    return min(kmax, int(math.ceil(3 * k * n / max(m, 1))) + 16)


def restrict_lists(values: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor, n: int, k: int,
                   complete: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` lists within a row subset, read off deeper lists of the full sample.

    A sample's nearest neighbours among the rows of a subset are the first ``k`` subset members
    of its full-sample list, as long as the list holds ``k`` of them: every subset row beyond
    the list is no more similar than the list's last entry. Where the ``k``-th member's
    similarity ties with the next member's, the lowest subset positions among the members of that
    similarity are listed (the rule of ``ranked_topk`` in the subset's own indices, whatever
    order the full-sample list gave the tied samples); where it equals the list's last
    similarity, tied samples may lie beyond the list, and the row is marked to be searched again.

    Args:
        values: ``(..., N, K)`` similarities of the full-sample lists, decreasing per row (any
            leading dimensions, e.g. layers).
        indices: ``(..., N, K)`` int64 or int32 neighbours (full-sample indices), ``K >= k``.
        rows: ``(m,)`` int64 distinct subset rows (full-sample indices), in subset order.
        n: ``N``, the full sample size.
        k: neighbours wanted per row.
        complete: the lists hold every candidate of their row (``K`` is ``N - 1`` without self,
            ``N`` with it): nothing lies beyond them.

    Returns:
        ``(values, indices, short)``: ``(..., m, k)`` similarities and ``(..., m, k)`` int64
        neighbours as positions in ``rows`` (descending similarity; tied ones in any order), and
        ``(..., m)`` bool marking the rows whose list cannot settle them (fewer than ``k`` subset
        members, or a tie that may run past the list): their entries are placeholders to
        recompute.
    """
    m, depth = int(rows.numel()), indices.shape[-1]
    position = torch.full((n,), -1, dtype=torch.int64, device=indices.device)
    position[rows] = torch.arange(m, device=indices.device)
    deep = indices.index_select(-2, rows)  # (..., m, K) the subset rows' full-sample lists
    # members so far along each list, from a bool lookup (the subset positions of all K entries,
    # int64, had cost more than the rest; only the chosen entries' are looked up, below)
    count = (position >= 0).index_select(0, deep.reshape(-1)).view_as(deep).cumsum(-1, dtype=torch.int32)
    want = min(k + 1, depth)  # one member more than k, where the list is deep enough: a tie shows
    found = count[..., -1]
    # the list positions of the first k (+1) members, in order: where the count first reaches 1, 2,
    # ... (the count grows by one at each member); past the last member (fewer found), the last
    # position, a placeholder that ``found`` marks (a top-k of the member positions took 3.7 ms
    # for 23 layers at N=1024, a half-size subsample, 76-deep lists; this 1.2-1.5)
    reach = torch.arange(1, want + 1, device=indices.device, dtype=torch.int32).expand(*count.shape[:-1], want)
    order = torch.searchsorted(count, reach.contiguous()).clamp_(max=depth - 1)
    deep_values = values.index_select(-2, rows)  # (..., m, K)
    vals = deep_values.gather(-1, order)
    idx = position.index_select(0, deep.gather(-1, order).reshape(-1)).view(order.shape)  # subset positions
    kth = vals[..., k - 1]
    short = found < k
    if not complete:  # members tied with the k-th may lie beyond the list
        short |= deep_values[..., -1] == kth
    if want > k:
        tied = (found > k) & (vals[..., k] == kth) & ~short
        if bool(tied.any()):  # settled among the list's members, by subset position
            flat = tied.reshape(-1).nonzero().squeeze(1)
            listed = deep_values.reshape(-1, depth).index_select(0, flat)
            ids = position.index_select(0, deep.reshape(-1, depth).index_select(0, flat).reshape(-1)).view(-1, depth)
            v, i = settle_ties(torch.where(ids >= 0, listed, float("-inf")), ids,
                               vals.reshape(-1, want).index_select(0, flat),
                               idx.reshape(-1, want).index_select(0, flat), k)
            vals, idx = vals[..., :k].contiguous(), idx[..., :k].contiguous()
            vals.view(-1, k)[flat], idx.view(-1, k)[flat] = v, i
    return vals[..., :k], idx[..., :k].clamp(min=0), short


def permute_lists(idx: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Neighbour lists of the row-permuted features ``y[perm]``. ``idx``: ``(..., N, k)``."""
    return inv[idx.index_select(-2, perm)]


def is_member(sorted_lists: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``queries[..., i, t] in sorted_lists[..., i, :]`` elementwise.

    ``sorted_lists``: ``(..., N, k)`` int64 ascending per row; ``queries``: ``(..., N, m)`` int64.
    Returns ``(..., N, m)`` bool.
    """
    k = sorted_lists.shape[-1]
    pos = torch.searchsorted(sorted_lists, queries).clamp_(max=k - 1)
    return sorted_lists.gather(-1, pos) == queries


def lcs_lengths(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Longest-common-subsequence lengths of the rows of ``x`` ``(R, k1)`` and ``y`` ``(R, k2)``.

    Classic DP, vectorised over ``R``; the equalities ``x[r, s] == y[r, :]`` are formed one ``s``
    at a time (``R k2`` at once, never the ``(R, k1, k2)`` tensor: 800 MB at N=20,000, k=200).
    Returns ``(R,)`` int64.
    """
    R, k1 = x.shape
    k2 = y.shape[1]
    prev = torch.zeros((R, k2 + 1), dtype=torch.int32, device=x.device)
    for s in range(k1):
        cur = torch.zeros_like(prev)
        e = x[:, s, None] == y
        for t in range(1, k2 + 1):
            cur[:, t] = torch.where(e[:, t - 1], prev[:, t - 1] + 1,
                                    torch.maximum(prev[:, t], cur[:, t - 1]))
        prev = cur
    return prev[:, k2].to(torch.int64)


def edit_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Levenshtein distances (unit insert/delete/substitute) between the rows of ``x`` ``(R, k1)``
    and ``y`` ``(R, k2)``, the equalities formed one row position at a time (``lcs_lengths``).
    Returns ``(R,)`` int64. Same definition as ``torchaudio.functional.edit_distance`` used by the
    paper.
    """
    R, k1 = x.shape
    k2 = y.shape[1]
    prev = torch.arange(k2 + 1, device=x.device, dtype=torch.int32).expand(R, -1).clone()
    for s in range(1, k1 + 1):
        cur = torch.empty_like(prev)
        cur[:, 0] = s
        e = x[:, s - 1, None] == y
        for t in range(1, k2 + 1):
            sub = prev[:, t - 1] + (~e[:, t - 1]).to(torch.int32)
            cur[:, t] = torch.minimum(torch.minimum(prev[:, t] + 1, cur[:, t - 1] + 1), sub)
        prev = cur
    return prev[:, k2].to(torch.int64)
