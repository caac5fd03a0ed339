"""CKNNA (the paper's "CKA with nearest-neighbour attention"), all layer pairs from kNN lists.

The paper's ``cknna`` with ``K = X X^T``, ``L = Y Y^T``:

- ``mask_K[i, j] = 1`` iff ``j`` is among the ``topk`` largest entries of row ``i`` of ``K``
  (diagonal set to ``-inf`` first when ``unbiased``; included as a candidate otherwise), same for
  ``mask_L``; ``M = mask_K * mask_L`` (elementwise: per-row intersection, not symmetrised);
- ``sim(K, L) = HSIC(M * K, M * L)`` with the unbiased (default) or biased HSIC on these
  non-symmetric masked kernels — ``tr(K'L')`` pairs entry ``(i, j)`` with ``(j, i)``;
- ``cknna = sim(K, L) / (sqrt(sim(K, K) sim(L, L)) + 1e-6)`` where ``sim(K, K)`` uses ``mask_K``.

Everything is computed from the ``(N, k)`` neighbour lists and the kernel values on them; the
masked kernels are never formed: row sums, column sums (scatter-add), totals and the trace term
(entries whose transpose is also in the mask) give both HSIC estimators exactly.

Differences from the paper's code (documented in ``docs/metrics.md``):

- ``topk=None``: the paper raises ``TypeError`` (it compares ``None < 2`` before replacing it by
  ``N - 1``). Here ``topk=None`` means "all neighbours": the mask keeps every off-diagonal entry
  (unbiased) or every entry (biased), so CKNNA equals ``unbiased_cka`` / ``cka`` with the linear
  kernel, and that is how it is computed.
- ``distance_agnostic=True``: the paper returns a matrix and then fails on ``.item()``. Here the
  kernel values are replaced by 1 on the mask (``sim = HSIC(M, M')``), i.e. only the mutual
  neighbourhood structure counts.
- The ``sqrt`` of a negative product (possible for masked unbiased HSIC) gives ``nan`` as in the
  paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .engine import Engine
from .hsic import unbiased_from_parts
from .kernel_metrics import EPS, CkaEngine
from .neighbors import is_member, permute_lists
from .representation import Representation

#: elements of the (A, B, N, k) tensors processed at once
CHUNK_ELEMENTS = 1 << 23
#: build a dense (L, N*N) uint8 slot table per side when it has at most this many entries
SLOT_TABLE_MAX_ELEMENTS = 1 << 26


@dataclass
class CknnaState:
    """``idx`` ``(L, N, k)`` lists; ``vals`` ``(L, N, k)`` kernel values on them (computation dtype);
    ``sorted_idx``/``order``: rows sorted ascending and the sorting permutation
    (``sorted_idx = idx.gather(-1, order)``); ``rev`` ``(L, N, k)`` bool: ``i ∈ kNN(idx[i, t])``;
    ``self_sim`` ``(L,)`` float64 ``sim(K, K)``."""

    idx: torch.Tensor
    vals: torch.Tensor
    sorted_idx: torch.Tensor
    order: torch.Tensor
    rev: torch.Tensor
    self_sim: torch.Tensor
    slots: torch.Tensor | None = None

    def with_slots(self) -> "CknnaState":
        """Add the dense slot table ``(L, N*N)`` uint8 (``1 + t`` where ``idx[l, i, t] == j`` at
        ``i*N + j``, else 0) when it is small enough; lookups then cost one gather."""
        L, n, k = self.idx.shape
        if L * n * n <= SLOT_TABLE_MAX_ELEMENTS and k < 255:
            slots = torch.zeros((L, n * n), dtype=torch.uint8, device=self.idx.device)
            rows = torch.arange(n, device=self.idx.device).view(1, n, 1) * n
            ranks = torch.arange(1, k + 1, dtype=torch.uint8, device=self.idx.device)
            slots.scatter_(1, (rows + self.idx).reshape(L, -1), ranks.repeat(L, n).view(L, -1))
            self.slots = slots
        return self


@dataclass
class FullMaskState:
    """``topk=None``: CKNNA is CKA with the linear kernel (``inner`` holds the CKA encoding)."""

    inner: Any
    n: int
    layers: int


class CknnaEngine(Engine):
    """Parameters ``topk`` (int >= 2, or None), ``distance_agnostic``, ``unbiased``."""

    encode_params = ("topk", "distance_agnostic", "unbiased")
    variant = "cknna"

    def __init__(self) -> None:
        self._cka = CkaEngine()

    def _full(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"kernel_metric": "ip", "unbiased": bool(params.get("unbiased", True))}

    def encode(self, rep: Representation, params: dict[str, Any]) -> CknnaState | FullMaskState:
        topk = params.get("topk")
        unbiased = bool(params.get("unbiased", True))
        if topk is not None and (isinstance(topk, bool) or int(topk) != topk or topk < 2):
            raise ValueError(f"CKNNA requires topk >= 2 (or None for all neighbours), got {topk!r}")
        if unbiased and rep.n < 4:
            raise ValueError("unbiased CKNNA needs N >= 4")
        full_k = rep.n - 1 if unbiased else rep.n
        if topk is None or topk >= full_k:
            if params.get("distance_agnostic"):
                return FullMaskState(None, rep.n, len(rep))
            return FullMaskState(self._cka.encode_cached(rep, self._full(params)), rep.n, len(rep))
        k = int(topk)
        vals, idx = [], []
        for l in range(len(rep)):
            v, i = rep.knn(l, k, exclude_self=unbiased)
            vals.append(v)
            idx.append(i)
        idx_t = torch.stack(idx)
        vals_t = torch.stack(vals)
        if params.get("distance_agnostic"):
            vals_t = torch.ones_like(vals_t)
        sorted_idx, order = idx_t.sort(-1)
        state = CknnaState(idx_t, vals_t, sorted_idx, order, torch.empty(0), torch.empty(0))
        state.with_slots()
        state.rev = _reverse_membership(state)
        state.self_sim = torch.cat([masked_sim(state, slice(l, l + 1), state, slice(l, l + 1),
                                               unbiased)[0] for l in range(len(rep))])
        return state

    def permute(self, state, perm: torch.Tensor, inv: torch.Tensor):
        if isinstance(state, FullMaskState):
            inner = None if state.inner is None else self._cka.permute(state.inner, perm, inv)
            return FullMaskState(inner, state.n, state.layers)
        idx = permute_lists(state.idx, perm, inv)
        sorted_idx, order = idx.sort(-1)
        return CknnaState(idx, state.vals[:, perm], sorted_idx, order, state.rev[:, perm],
                          state.self_sim).with_slots()

    def matrix(self, a, b, params: dict[str, Any]) -> torch.Tensor:
        unbiased = bool(params.get("unbiased", True))
        if isinstance(a, FullMaskState):
            if a.inner is None:  # distance-agnostic full mask: constant kernels, HSIC 0
                return torch.zeros((a.layers, b.layers), dtype=torch.float64)
            return self._cka.matrix(a.inner, b.inner, self._full(params))
        La, n, k = a.idx.shape
        Lb = b.idx.shape[0]
        sim = torch.empty((La, Lb), dtype=torch.float64, device=a.idx.device)
        rows = max(1, CHUNK_ELEMENTS // (n * k * Lb))  # x-layers per call
        for a0 in range(0, La, rows):
            a1 = min(La, a0 + rows)
            sim[a0:a1] = masked_sim(a, slice(a0, a1), b, slice(0, Lb), unbiased)
        return sim / (torch.sqrt(a.self_sim[:, None] * b.self_sim[None, :]) + EPS)


def _reverse_membership(state: CknnaState) -> torch.Tensor:
    """``(L, N, k)`` bool: is ``i`` among the neighbours of its neighbour ``idx[l, i, t]``?"""
    L, n, k = state.idx.shape
    ar = torch.arange(n, device=state.idx.device)
    if state.slots is not None:
        flat = (state.idx * n + ar.view(1, n, 1)).reshape(L, -1)
        return (state.slots.gather(1, flat) > 0).view(L, n, k)
    targets = ar.view(n, 1, 1).expand(n, k, 1).reshape(-1, 1)
    return torch.stack([is_member(s[i.reshape(-1)], targets).view(n, k)
                        for s, i in zip(state.sorted_idx, state.idx)])


def masked_sim(a: CknnaState, la: slice, b: CknnaState, lb: slice, unbiased: bool) -> torch.Tensor:
    """``HSIC(M*K, M*L)`` for the x-layers ``la`` of ``a`` against the y-layers ``lb`` of ``b``.

    Works on ``(A, B, N, k)`` tensors only: each x-neighbour ``j = idx_a[i, t]`` is looked up in
    the sorted y-list of ``i`` (binary search), giving whether ``(i, j)`` is in the mask, the
    kernel value ``L[i, j]`` and whether ``i`` is also a y-neighbour of ``j`` (the y-layer's
    ``rev`` at that slot). Returns ``(A, B)`` float64.
    """
    idx_a, val_a, rev_a = a.idx[la][:, None], a.vals[la][:, None], a.rev[la][:, None]
    sorted_b, order_b = b.sorted_idx[lb][None], b.order[lb][None]
    A, n, k = idx_a.shape[0], idx_a.shape[2], idx_a.shape[3]
    B = sorted_b.shape[1]
    shape = (A, B, n, k)
    if b.slots is not None:  # dense table: one gather
        rows = torch.arange(n, device=idx_a.device).view(1, 1, n, 1) * n
        flat = (rows + idx_a).reshape(A, 1, n * k).expand(A, B, n * k)
        found = b.slots[lb][None].expand(A, B, n * n).gather(2, flat).view(shape)
        inter = found > 0  # (i, idx_a[i, t]) in the mask
        slot = (found.to(torch.int64) - 1).clamp_(min=0)  # its position in the y-list of i
    else:  # sorted lists: binary search
        q = idx_a.expand(shape).contiguous()
        pos = torch.searchsorted(sorted_b.expand(shape).contiguous(), q).clamp_(max=k - 1)
        inter = sorted_b.expand(shape).gather(-1, pos) == q
        slot = order_b.expand(shape).gather(-1, pos)
    kv = val_a * inter  # (M*K)[i, idx_a[i, t]]
    lv = torch.where(inter, b.vals[lb][None].expand(shape).gather(-1, slot), 0.0)  # (M*L)[i, .]
    # (j, i) also in the mask: i in kNN_a(j) (rev_a) and i in kNN_b(j) (rev_b at the slot)
    mutual = inter & rev_a & b.rev[lb][None].expand(shape).gather(-1, slot)
    cols = idx_a.reshape(A, 1, n * k).expand(A, B, n * k)
    # element products in the computation dtype, every sum accumulated in float64
    col_k = torch.zeros((A, B, n), dtype=kv.dtype, device=kv.device).scatter_add_(
        2, cols, kv.reshape(A, B, n * k)).to(torch.float64)
    col_l = torch.zeros((A, B, n), dtype=kv.dtype, device=kv.device).scatter_add_(
        2, cols, lv.reshape(A, B, n * k)).to(torch.float64)
    row_k = kv.sum(-1, dtype=torch.float64)  # (A, B, N)
    row_l = lv.sum(-1, dtype=torch.float64)
    tot_k, tot_l = row_k.sum(-1), row_l.sum(-1)
    trace = (kv * lv * mutual).sum((-1, -2), dtype=torch.float64)
    if unbiased:
        return unbiased_from_parts(trace, tot_k, tot_l, (col_k * row_l).sum(-1), n)
    cross = ((col_l * row_k).sum(-1) + (col_k * row_l).sum(-1)) / n
    return trace - cross + tot_k * tot_l / (n * n)
