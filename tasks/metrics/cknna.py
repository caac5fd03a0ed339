"""CKNNA (the paper's "CKA with nearest-neighbour attention"), all layer pairs from kNN lists.

The paper's ``cknna`` with ``K = X X^T``, ``L = Y Y^T``:

- ``mask_K[i, j] = 1`` iff ``j`` is among the ``topk`` largest entries of row ``i`` of ``K``
  (diagonal set to ``-inf`` first when ``unbiased``; included as a candidate otherwise), same for
  ``mask_L``; ``M = mask_K * mask_L`` (elementwise: per-row intersection, not symmetrised);
- ``sim(K, L) = HSIC(M * K, M * L)`` with the unbiased (default) or biased HSIC on these
  non-symmetric masked kernels — ``tr(K'L')`` pairs entry ``(i, j)`` with ``(j, i)``;
- ``cknna = sim(K, L) / (sqrt(sim(K, K) sim(L, L)) + 1e-6)`` where ``sim(K, K)`` uses ``mask_K``.

Everything is computed from the ``(N, k)`` neighbour lists and the kernel values on them; the
masked kernels are never formed: row sums, the column sums' products with the other side's row
sums (a sum over the mask's entries), totals and the trace term (entries whose transpose is also
in the mask) give both HSIC estimators exactly, in float64. A matrix whose masks hold few
entries is summed over those entries only (``hit_sim``, as the permutation nulls are), else over
every x-entry for every y-layer (``masked_sim``).

Differences from the paper's code (documented in ``docs/metrics.md``):

- ``topk=None``: the paper raises ``TypeError`` (it compares ``None < 2`` before replacing it by
  ``N - 1``). Here ``topk=None`` means "all neighbours": the mask keeps every off-diagonal entry
  (unbiased) or every entry (biased), so CKNNA equals ``unbiased_cka`` / ``cka`` with the linear
  kernel, and that is how it is computed. Biased, the paper's ``N - 1`` (once its order is fixed)
  is another value: ``N - 1`` of the ``N`` candidates leave each row's least similar sample out
  (0.767 against 0.800 at N=100); ``topk=N - 1`` gives it.
- An integer ``topk`` must be in ``[2, N - 1]`` (unbiased: self excluded, ``N - 1`` candidates) or
  ``[2, N]`` (biased: self is a candidate); the paper's ``torch.topk`` fails beyond ``N`` (at
  ``topk=N``, unbiased, it also selects the ``-inf`` diagonal, which the unbiased HSIC zeroes:
  the full-mask value, refused here as above the ``N - 1`` candidates). At the
  upper end every candidate is a neighbour, the mask is the full one and the value is that of
  ``topk=None`` (computed the same way). A larger ``topk`` used to be read as "all neighbours"
  silently, so a bootstrap subsample of ``m <= topk`` rows scored a different statistic
  (``unbiased_cka``) where the k-NN metrics raise.
- ``distance_agnostic=True``: the paper returns a matrix and then fails on ``.item()``. Here the
  kernel values are replaced by 1 on the mask (``sim = HSIC(M, M')``), i.e. only the mutual
  neighbourhood structure counts. With the full mask (``topk=None`` or every candidate) the
  kernels are constant and ``sim(K, K) = 0``: refused, like any such layer (below).
- A layer whose masked self-similarity ``sim(K, K)`` is not above 0 beyond rounding (it can be
  negative: the masked kernels are not symmetric) is refused (``ValueError`` naming the layer,
  ``hsic.check_self_hsic``), as the CKA family refuses a zero unbiased self-HSIC: the paper's
  ``sqrt`` of a negative product gives ``nan`` there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .engine import Engine
from .gram import batched_device
from .hsic import check_self_hsic, unbiased_from_parts, unbiased_terms_size
from .kernel_metrics import EPS, CkaEngine
from .knn_hits import Hits, ListTable, build_list_table, inverse_permutations, pair_keys, permuted_hits
from .neighbors import permute_lists
from .representation import Representation

#: elements of the (A, B, N, k) tensors processed at once on a GPU (``gram.batched_device``)
CHUNK_ELEMENTS = 1 << 23
#: the same elsewhere: a CPU gains from temporaries that stay in its caches (one x-layer against
#: 13 y-layers at N=1024, k=10: 30 ms for the 13 x 13 matrix and the encodings against 49 ms all
#: at once)
CPU_CHUNK_ELEMENTS = 1 << 18


def chunk_elements(device: torch.device) -> int:
    """Elements of the ``(A, B, N, k)`` tensors to process at once on ``device``."""
    return CHUNK_ELEMENTS if batched_device(device) else CPU_CHUNK_ELEMENTS


#: build a dense (L, N*N) uint8 slot table per side when it has at most this many entries
SLOT_TABLE_MAX_ELEMENTS = 1 << 26
#: ``matrix``'s dense sums look the x-entries up in a buffer of y-layers' slot tables
#: (``y_slot_tables``) of at most this many entries, else in the sorted lists; on a GPU
#: ``SLOT_TABLE_MAX_ELEMENTS``. One layer's table of N=4096 (16 MiB) paid on a CPU (13 x 13
#: layers, k=10, 1 thread: 275 ms against 477 binary-searching); of N=8000 (61 MiB), read from
#: memory, it did not (627 against 552 ms, 3 x 3 layers)
CPU_SLOT_SCRATCH_MAX_ELEMENTS = 1 << 24
#: (permutations x layer pairs x N), and (permutations x Lb x N x k), of one null batch; above
#: it per-row sums go sparse
NULL_ROW_ELEMENTS = 1 << 21
#: ``matrix`` sums over the mask's entries only (``hit_sim``) when they are at most this share of
#: the ``La * Lb * N * k`` (x-layer, y-layer, x-entry) combinations that the dense path visits:
#: per entry the sparse path costs about 10 times as much (N=1024, k=10, 13 x 13 layers, 1
#: thread, dense 25.6 ms whatever the data: independent layers, 1% of the combinations in the
#: mask, 3.6 ms sparse; each y-layer also an x-layer, 8.6%, 23.8 ms; layers sharing a latent,
#: 54%, 120 ms)
SPARSE_MAX_SHARE = 0.08
#: bytes the sparse sums hold per hit over those one dense call holds per (x-entry, y-layer)
#: element, rounded up: ``matrix`` goes sparse only for hits that fit one dense call's memory (a
#: representation against itself, N=20,000, k=10, 13 layers, 1 thread: 416 MiB sparse for
#: 2.6 M hits, 160 MiB dense in calls of one x-layer against the 13 y-layers; 70 layers a side
#: could have held 0.08 x 70 = 5.6 times one call's hits)
SPARSE_MEMORY_RATIO = 4


@dataclass
class CknnaState:
    """``idx`` ``(L, N, k)`` lists; ``vals`` ``(L, N, k)`` kernel values on them (computation
    dtype); ``rev`` ``(L, N, k)`` bool: ``i ∈ kNN(idx[l, i, t])``; ``self_sim`` ``(L,)`` float64
    ``sim(K, K)``. The lookup structures are built on first use and kept: ``list_table`` (bitmask
    of the layers holding each pair), ``slot_table`` (position of each pair in its list),
    ``entry_keys`` (each entry's pair key),
    ``sorted_lists`` and ``sorted_keys`` (for binary search where the slot table is too large) and
    ``padded``."""

    idx: torch.Tensor
    vals: torch.Tensor
    rev: torch.Tensor | None = None
    self_sim: torch.Tensor | None = None
    table: ListTable | None = None
    slots: torch.Tensor | None = None
    sorted_pair: tuple[torch.Tensor, torch.Tensor] | None = None
    sorted_key: tuple[torch.Tensor, torch.Tensor] | None = None
    padded_lists: tuple[torch.Tensor, torch.Tensor] | None = None
    vals64: torch.Tensor | None = None
    mutual64: torch.Tensor | None = None
    keys: torch.Tensor | None = None

    def list_table(self) -> ListTable:
        """Bitmask table of the lists (``knn_hits``), built on first use and kept."""
        if self.table is None:
            self.table = build_list_table(self.idx)
        return self.table

    def entry_keys(self) -> torch.Tensor:
        """``(L, N, k)`` int64 keys ``i*N + idx[l, i, t]`` of the entries (``knn_hits.pair_keys``),
        made once and kept: every dense call looks the x-entries up by them."""
        if self.keys is None:
            self.keys = pair_keys(self.idx)
        return self.keys

    def sorted_lists(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sorted_idx, order)``: each list sorted ascending and the sorting permutation
        (``sorted_idx = idx.gather(-1, order)``), built on first use and kept."""
        if self.sorted_pair is None:
            self.sorted_pair = self.idx.sort(-1)
        return self.sorted_pair

    def sorted_keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys, order)`` ``(L*N*k,)`` int64: the entries of ``sorted_lists`` as flat keys
        ``(l*N + i)*N + j``, ascending (rows in order, each sorted), and the position in its list
        of each (``order`` flattened), for one binary search of any pair in all layers; built on
        first use and kept."""
        if self.sorted_key is None:
            sorted_idx, order = self.sorted_lists()
            L, n, _ = sorted_idx.shape
            rows = torch.arange(L * n, device=sorted_idx.device).view(L, n, 1) * n
            self.sorted_key = ((rows + sorted_idx).reshape(-1), order.reshape(-1))
        return self.sorted_key

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``vals`` and ``vals * rev`` (the value where the entry is mutual, else 0) in float64,
        ``(L, N, 1 + k)``, behind a first column of zeros, so that the slot table's entries
        (``1 + t``, 0 where absent) index them without a mask test; built once and kept."""
        if self.padded_lists is None:
            L, n, k = self.idx.shape
            vals = torch.zeros((2, L, n, k + 1), dtype=torch.float64, device=self.vals.device)
            vals[0, :, :, 1:] = self.values64()
            vals[1, :, :, 1:] = self.mutual_values64()
            self.padded_lists = (vals[0], vals[1])
        return self.padded_lists

    def values64(self) -> torch.Tensor:
        """``vals`` in float64 (the masked sums' dtype), made once and kept (itself when float64)."""
        if self.vals64 is None:
            self.vals64 = self.vals.to(torch.float64)
        return self.vals64

    def mutual_values64(self) -> torch.Tensor:
        """``vals * rev`` in float64: an entry's value where ``i`` is also a neighbour of its
        neighbour, else 0; made once and kept."""
        if self.mutual64 is None:
            self.mutual64 = self.values64() * self.reverse()
        return self.mutual64

    def reverse(self) -> torch.Tensor:
        """``rev``, computed on first use (``_reverse_membership``) and kept."""
        if self.rev is None:
            self.rev = _reverse_membership(self)
        return self.rev

    def slot_table(self) -> torch.Tensor | None:
        """The dense slot table ``(L, N*N)`` uint8 (``1 + t`` where ``idx[l, i, t] == j`` at
        ``i*N + j``, else 0), built on first use when small enough (else ``None``); lookups then
        cost one gather."""
        L, n, k = self.idx.shape
        if self.slots is None and L * n * n <= SLOT_TABLE_MAX_ELEMENTS and k < 255:
            slots = torch.zeros((L, n * n), dtype=torch.uint8, device=self.idx.device)
            ranks = torch.arange(1, k + 1, dtype=torch.uint8, device=self.idx.device)
            slots.scatter_(1, self.entry_keys().reshape(L, -1), ranks.repeat(L, n).view(L, -1))
            self.slots = slots
        return self.slots


@dataclass
class FullMaskState:
    """``topk=None``: CKNNA is CKA with the linear kernel (``inner`` holds the CKA encoding)."""

    inner: Any
    n: int
    layers: int


class CknnaEngine(Engine):
    """Parameters ``topk`` (int in ``[2, N - 1]``, ``[2, N]`` biased, or None), ``distance_agnostic``,
    ``unbiased``."""

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
        # candidates per row: the other N - 1 samples (unbiased), or all N with self (biased)
        full_k = rep.n - 1 if unbiased else rep.n
        if topk is not None and topk > full_k:
            bound = "N-1" if unbiased else "N"
            raise ValueError(f"topk must be in [2, {bound}] = [2, {full_k}] "
                             f"({'unbiased: self excluded' if unbiased else 'biased: self included'}; "
                             f"None for all neighbours), got {int(topk)}")
        if topk is None or topk == full_k:  # every candidate is a neighbour: the full mask
            if params.get("distance_agnostic"):  # kernels of ones: sim(K, K) = 0, refused as below
                raise ValueError(
                    f"distance_agnostic CKNNA with every candidate a neighbour (topk={topk!r}, N={rep.n}, "
                    f"{'unbiased' if unbiased else 'biased'}) masks nothing: every layer's kernel is constant, "
                    "its masked self-similarity sim(K, K) is 0 and the score undefined; use a smaller topk")
            return FullMaskState(self._cka.encode_cached(rep, self._full(params)), rep.n, len(rep))
        k = int(topk)
        vals_t, idx_t = rep.knn_stack(k, exclude_self=unbiased)
        if params.get("distance_agnostic"):
            vals_t = torch.ones_like(vals_t)
        state = CknnaState(idx_t, vals_t)
        state.self_sim, size = self_sims(state, unbiased)
        # distance-agnostic kernel values are exact ones: their sums carry no rounding of the input's
        check_self_hsic(state.self_sim, size, rep.n, torch.float64 if params.get("distance_agnostic") else rep.dtype,
                        ("unbiased" if unbiased else "biased") + " masked self-similarity sim(K, K)")
        return state

    def permute(self, state, perm: torch.Tensor, inv: torch.Tensor):
        if isinstance(state, FullMaskState):
            return FullMaskState(self._cka.permute(state.inner, perm, inv), state.n, state.layers)
        return CknnaState(permute_lists(state.idx, perm, inv), state.vals[:, perm],
                          state.reverse()[:, perm], state.self_sim)

    def null_matrices(self, a, b, perms: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """``(B, La, Lb)`` CKNNA of ``a`` against ``b`` row-permuted by each of ``perms``.

        Only the mask entries present under each permutation are visited (``knn_hits``: about
        ``k^2`` per layer pair and permutation instead of ``N k``), and the HSIC terms are sums
        over them: same mask, kernel values and estimator as ``matrix`` on ``permute(b, perm)``.
        """
        if isinstance(a, FullMaskState):
            return self._cka.null_matrices(a.inner, b.inner, perms, self._full(params))
        unbiased = bool(params.get("unbiased", True))
        La, n, k = a.idx.shape
        Lb = b.idx.shape[0]
        step = max(1, NULL_ROW_ELEMENTS // (n * max(La * Lb, Lb * k)))  # row sums and (B, Lb, N, k) hit keys
        invs = inverse_permutations(perms)
        table = a.list_table()
        # the x-slots of every batch's hits from the slot table where it fits: many batches' hits
        # add up (300 permutations, 13 x 13 layers, N=1024: 1.70 s with a binary search per hit
        # against 1.22 s), though each batch alone would not pay for building it (``hit_sim``)
        a.slot_table()
        out = []
        for s0 in range(0, perms.shape[0], step):
            hits = permuted_hits(table, b.idx, invs[s0:s0 + step])
            sim = hit_sim(a, b, hits, invs[s0:s0 + step].shape[0], unbiased)
            out.append(sim / (torch.sqrt(a.self_sim[:, None] * b.self_sim[None, :]) + EPS))
        return torch.cat(out)

    def matrix(self, a, b, params: dict[str, Any]) -> torch.Tensor:
        unbiased = bool(params.get("unbiased", True))
        if isinstance(a, FullMaskState):
            return self._cka.matrix(a.inner, b.inner, self._full(params))
        La, n, k = a.idx.shape
        Lb = b.idx.shape[0]
        # a dense call: as many x-layers as fit, then as many y-layers; the y-layers are the outer
        # loop, so that their lookup tables stay in cache while every x-layer reads them (13 x 13
        # layers, N=1024, k=10, 2 cores: 12.0 ms against 14.6 for one x-layer against every y-layer)
        chunk = chunk_elements(a.idx.device)
        rows = min(La, max(1, chunk // (n * k)))  # x-layers per dense call
        cols = min(Lb, max(1, chunk // (rows * n * k)))  # y-layers per dense call
        tables = slot_scratch_layers(n, k, a.idx.device)  # y-layers' slot tables that fit a buffer
        cols = min(cols, tables) if tables else cols
        # the mask's entries, unless they are too many for the sparse sums to pay, or to fit the
        # memory of a dense call of x-layers against every y-layer (at least one x-layer, as the
        # dense calls were before they took a few y-layers at a time): all of them are held at
        # once, at about SPARSE_MEMORY_RATIO times the bytes per hit that the dense call holds
        # per element
        whole_rows = min(La, max(1, chunk // (n * k * Lb)))
        max_hits = min(int(SPARSE_MAX_SHARE * La * Lb * n * k), whole_rows * Lb * n * k // SPARSE_MEMORY_RATIO)
        hits = permuted_hits(a.list_table(), b.idx, None, max_hits=max_hits)
        if hits is not None:
            sim = hit_sim(a, b, hits, 1, unbiased)[0]
        else:
            sim = torch.empty((La, Lb), dtype=torch.float64, device=a.idx.device)
            scratch = torch.zeros((cols, n * n), dtype=torch.uint8, device=a.idx.device) if tables else None
            for b0 in range(0, Lb, cols):
                b1 = min(Lb, b0 + cols)
                with y_slot_tables(b, slice(b0, b1), scratch) as slots:
                    for a0 in range(0, La, rows):
                        a1 = min(La, a0 + rows)
                        sim[a0:a1, b0:b1] = masked_sim(a, slice(a0, a1), b, slice(b0, b1), unbiased, slots)
        return sim / (torch.sqrt(a.self_sim[:, None] * b.self_sim[None, :]) + EPS)


def self_sims(state: CknnaState, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L,)`` float64 ``sim(K, K)`` of every layer (its own mask: every entry of its lists, the
    mutual ones where ``rev``), a chunk of layers at a time, and ``(L,)`` the size of its terms
    (``hsic_from_entries``'s ``with_size``)."""
    L, n, k = state.idx.shape
    step = max(1, chunk_elements(state.idx.device) // (n * k))
    parts = []
    for l0 in range(0, L, step):
        vals = state.values64()[l0:l0 + step, None]  # (A, 1, N, k): every entry is in its own mask
        trace = entry_dots(state.mutual_values64()[l0:l0 + step, None], vals)
        parts.append(hsic_from_entries(vals, vals, trace, state.idx[l0:l0 + step, None], unbiased, with_size=True))
    return torch.cat([v[:, 0] for v, _ in parts]), torch.cat([z[:, 0] for _, z in parts])


def _reverse_membership(state: CknnaState) -> torch.Tensor:
    """``(L, N, k)`` bool: is ``i`` among the neighbours of its neighbour ``idx[l, i, t]``? One
    lookup of the transposed pair ``(idx[l, i, t], i)`` in the lists' bitmask table (``knn_hits``:
    dense, or sorted keys at large N; memory ``O(N k)`` per layer beyond the table), a layer at
    a time."""
    table = state.list_table()
    out = torch.empty(state.idx.shape, dtype=torch.bool, device=state.idx.device)
    for g, (g0, count) in enumerate(table.groups):
        for l in range(g0, g0 + count):
            masks = table.lookup(g, pair_keys(state.idx[l:l + 1], reverse=True)[0])
            out[l] = torch.bitwise_and(masks, 1 << (l - g0)) != 0
    return out


def slot_scratch_layers(n: int, k: int, device: torch.device) -> int:
    """How many y-layers' slot tables of ``N*N`` entries one ``y_slot_tables`` buffer holds on
    ``device`` (``CPU_SLOT_SCRATCH_MAX_ELEMENTS``, ``SLOT_TABLE_MAX_ELEMENTS`` on a GPU); 0 where
    not even one (or ``k`` does not fit a byte): ``masked_sim`` then binary-searches the sorted
    lists."""
    limit = SLOT_TABLE_MAX_ELEMENTS if batched_device(device) else CPU_SLOT_SCRATCH_MAX_ELEMENTS
    return 0 if k >= 255 else limit // (n * n)


@contextmanager
def y_slot_tables(b: CknnaState, lb: slice, scratch: torch.Tensor | None) -> Iterator[torch.Tensor | None]:
    """The slot tables ``(B, N*N)`` uint8 of the y-layers ``lb`` of ``b`` (as
    ``CknnaState.slot_table``'s rows), written into the first rows of ``scratch`` (``(layers,
    N*N)`` uint8, zero; ``slot_scratch_layers``) for the block and cleared after it at the same
    entries, so that the buffer is zero again for the next block; ``None`` without a scratch.

    One y-layer's table (1 MiB at N=1024) stays in a CPU's cache while every x-layer reads it;
    every layer's table at once (13 MiB, kept with the state) had been built in memory and read
    from it: 13 x 13 layers, N=1024, k=10, 1 thread, 28 ms against 32 for the lookups and sums,
    and no 2.7 ms to build the tables. Tables of more layers than fit are not built at all (at
    N=4096 the dense sums had binary-searched every list)."""
    if scratch is None:
        yield None
        return
    B = len(range(*lb.indices(b.idx.shape[0])))
    n, k = b.idx.shape[1], b.idx.shape[2]
    tables, keys = scratch[:B], b.entry_keys()[lb].reshape(B, n * k)
    ranks = torch.arange(1, k + 1, dtype=torch.uint8, device=scratch.device).repeat(B, n)
    tables.scatter_(1, keys, ranks)
    try:
        yield tables
    finally:
        tables.scatter_(1, keys, 0)


def masked_sim(a: CknnaState, la: slice, b: CknnaState, lb: slice, unbiased: bool,
               slots: torch.Tensor | None) -> torch.Tensor:
    """``HSIC(M*K, M*L)`` ``(A, B)`` float64 for the x-layers ``la`` of ``a`` against the
    y-layers ``lb`` of ``b``, visiting every x-entry for every y-layer.

    Works on ``(A, B, N, k)`` tensors only: each x-neighbour ``j = idx_a[i, t]`` is looked up
    in the y-lists of ``i`` (``slots``: the y-layers' slot tables ``(B, N*N)`` uint8 from
    ``y_slot_tables``; ``None``: binary search in the sorted lists), giving whether ``(i, j)`` is
    in the mask, the kernel value ``L[i, j]`` and whether ``i`` is also a y-neighbour of ``j``
    (the y-layer's ``rev`` at that slot).
    """
    idx_a, val_a = a.idx[la][:, None], a.values64()[la][:, None]
    A, n, k = idx_a.shape[0], idx_a.shape[2], idx_a.shape[3]
    B = len(range(*lb.indices(b.idx.shape[0])))
    shape = (A, B, n, k)
    if slots is not None:  # dense table: one gather
        flat = a.entry_keys()[la].reshape(A, 1, n * k).expand(A, B, n * k)
        found = slots[None].expand(A, B, n * n).gather(2, flat).view(shape)
        inter = found > 0  # (i, idx_a[i, t]) in the mask
        # 1 + its position in the y-list of i, or 0: indexes the y-lists behind a column of
        # zeros, which gives the masked values without a mask test
        slot = found.to(torch.int64)
        vals_b, mutual_b = b.padded()
        lv = vals_b[lb][None].expand(A, B, n, k + 1).gather(-1, slot)  # (M*L)[i, .]
        # (j, i) also in the mask: i in kNN_a(j) (``a``'s mutual values) and i in kNN_b(j) (``b``'s
        # at the slot): K[i, j] L[i, j] there, 0 elsewhere
        trace = entry_dots(a.mutual_values64()[la][:, None],
                           mutual_b[lb][None].expand(A, B, n, k + 1).gather(-1, slot))
    else:  # sorted lists: binary search
        sorted_b, order_b = (t[lb][None] for t in b.sorted_lists())
        q = idx_a.expand(shape).contiguous()
        pos = torch.searchsorted(sorted_b.expand(shape).contiguous(), q).clamp_(max=k - 1)
        inter = sorted_b.expand(shape).gather(-1, pos) == q
        slot = order_b.expand(shape).gather(-1, pos)
        lv = torch.where(inter, b.values64()[lb][None].expand(shape).gather(-1, slot), 0.0)  # (M*L)[i, .]
        mutual = b.reverse()[lb][None].expand(shape).gather(-1, slot)  # as above, where inter
        trace = entry_dots(a.mutual_values64()[la][:, None], torch.where(mutual, lv, 0.0))
    return hsic_from_entries(val_a * inter, lv, trace, idx_a, unbiased)


def entry_dots(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(A, B)`` float64 sums of ``u * v`` over the ``(N, k)`` entries of ``(A, 1, N, k)`` ``u``
    (the x side, the same for every y-layer) and ``(A, B, N, k)`` ``v``. A reduction over each
    row, summed in the same order whatever ``A`` and ``B`` (a batched matrix-vector product
    rounded otherwise for another batch: a pair's score moved by an ulp with the chunking)."""
    A, B = v.shape[0], v.shape[1]
    return pair_sums(v.reshape(A, B, -1), u.reshape(A, 1, -1))


def pair_sums(v: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """``(A, B)`` float64 sums over the last dimension of ``(A, B, E)`` ``v`` (of ``v * u``, ``u``
    ``(A, 1 or B, E)``), each in the same order whatever ``A`` and ``B`` and the thread count.
    torch splits a reduction to one value of at least its grain (32,768 elements) between its
    threads, which rounds otherwise than the one-thread sums of a reduction to several values:
    a single layer pair (a side of one layer, the last of a chunked loop) is summed as the first
    of two identical ones (a stride-0 view: no copy; a thread each), else its score moved by an
    ulp with the layer counts and the chunk (N=1700, k=20)."""
    if v.shape[0] * v.shape[1] == 1:
        v = v.expand(2, 1, v.shape[2])
        u = None if u is None else u.expand(2, 1, u.shape[2])
        return pair_sums(v, u)[:1]
    return v.sum(-1) if u is None else torch.linalg.vecdot(v, u)


def hsic_from_entries(kv: torch.Tensor, lv: torch.Tensor, trace: torch.Tensor, idx_a: torch.Tensor,
                      unbiased: bool, with_size: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``HSIC(M*K, M*L)`` ``(A, B)`` float64 from the x-entries of ``A x B`` layer pairs.

    Args:
        kv: ``(A, B, N, k)`` float64 ``(M*K)[i, idx_a[i, t]]`` (0 outside the mask).
        lv: ``(A, B, N, k)`` float64 ``(M*L)[i, idx_a[i, t]]`` (0 outside the mask).
        trace: ``(A, B)`` float64 ``tr(K' L')``: the sum of ``K[i, j] L[i, j]`` over the mask's
            entries whose transposed entry ``(j, i)`` is in the mask too.
        idx_a: ``(A, 1 or B, N, k)`` int64 the x-lists (the entries' columns).
        unbiased: the estimator.
        with_size: also the size of the estimator's terms, same shape (absolute values;
            ``hsic.unbiased_terms_size``).

    Every sum is in float64, as ``hit_sim`` sums the same entries (a pair's score must not
    depend on which path its matrix took: float32 column sums had differed by 3e-10 relative),
    and so are the products of the two sides (a float32 product of kernel values above ~1.8e19
    each overflowed: inf * 0 = NaN scores). The column sums are never formed: ``sum_j
    colsum_K'(j) rowsum_L'(j)`` is the sum over the entries ``(i, j)`` of ``K'[i, j]
    rowsum_L'(j)``, a gather of the row sums (the scatter-adds of the column sums cost more).
    """
    A, B, n, k = kv.shape
    cols = idx_a.reshape(A, -1, n * k).expand(A, B, n * k)
    row_k = kv.sum(-1)  # (A, B, N)
    row_l = lv.sum(-1)
    tot_k, tot_l = pair_sums(row_k), pair_sums(row_l)
    kv_flat = kv.reshape(A, B, n * k)
    rows_dot = pair_sums(kv_flat, row_l.gather(2, cols))  # sum_j colsum_K'(j) rowsum_L'(j)
    if unbiased:
        value = unbiased_from_parts(trace, tot_k, tot_l, rows_dot, n)
        size = unbiased_terms_size(trace, tot_k, tot_l, rows_dot, n) if with_size else None
    else:
        cross = (pair_sums(lv.reshape(A, B, n * k), row_k.gather(2, cols)) + rows_dot) / n
        value = trace - cross + tot_k * tot_l / (n * n)
        size = trace.abs() + cross.abs() + (tot_k * tot_l).abs() / (n * n) if with_size else None
    return (value, size) if with_size else value


def hit_sim(a: CknnaState, b: CknnaState, hits: Hits, batch: int, unbiased: bool) -> torch.Tensor:
    """``HSIC(M*K, M*L')`` ``(B, La, Lb)`` float64 from the mask entries ``hits`` (y side
    permuted, see ``knn_hits.permuted_hits``); the same terms as ``masked_sim``, summed over the
    entries of the mask only.
    """
    La, n, k = a.idx.shape
    Lb = b.idx.shape[0]
    dev = a.idx.device
    l, i, j = hits.layer_a, hits.row, hits.col
    # slot of j in the x-list of i: from the slot table where it is built or worth building
    # (a fill of L N^2 bytes against a binary search in k entries per hit), else binary search
    slots = a.slots if a.slots is not None or l.numel() * k < La * n * n // 4 else a.slot_table()
    if slots is not None:
        slot = slots.view(-1).index_select(0, (l * n + i) * n + j).to(torch.int64) - 1
    else:  # one binary search per hit in the flat sorted keys (gathering each hit's sorted x-row
        # and its order made two (H, k) int64 tensors: 2.6 GB at N=6000, k=100, 13 x 13 layers)
        keys, order = a.sorted_keys()
        slot = order.index_select(0, torch.searchsorted(keys, (l * n + i) * n + j))
    entry_a = (l * n + i) * k + slot  # flat index of the x-entry
    kv = a.values64().reshape(-1).index_select(0, entry_a)
    lv = b.values64().reshape(-1).index_select(0, hits.entry)
    pairs = (hits.batch * La + l) * Lb + hits.layer_b  # (permutation, x-layer, y-layer)
    P = batch * La * Lb

    def total(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(P, dtype=torch.float64, device=dev).index_add_(0, pairs, v)

    at_row, at_col = pairs * n + i, pairs * n + j
    tot_k, tot_l = total(kv), total(lv)
    # (j, i) in the mask too: each side's mutual values (0 where i is not a neighbour of j), as
    # the dense sums read them
    trace = total(a.mutual_values64().reshape(-1).index_select(0, entry_a)
                  * b.mutual_values64().reshape(-1).index_select(0, hits.entry))
    # sum_j colsum_K'(j) rowsum_L'(j) = sum over entries (i, j) of K'[i, j] * rowsum_L'(j)
    cols_k_rows_l = total(kv * sums_at(at_row, lv, at_col, P * n))
    if unbiased:
        sim = unbiased_from_parts(trace, tot_k, tot_l, cols_k_rows_l, n)
    else:
        cols_l_rows_k = total(lv * sums_at(at_row, kv, at_col, P * n))
        sim = trace - (cols_l_rows_k + cols_k_rows_l) / n + tot_k * tot_l / (n * n)
    return sim.view(batch, La, Lb)


def sums_at(keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, size: int
            ) -> torch.Tensor:
    """For each query key, the sum of ``values`` whose key equals it (0 when none); keys in
    ``[0, size)``. Dense scatter when ``size <= NULL_ROW_ELEMENTS``, else over the distinct keys
    only (memory ``O(len(keys))``)."""
    if size <= NULL_ROW_ELEMENTS:
        dense = torch.zeros(size, dtype=values.dtype, device=values.device)
        return dense.index_add_(0, keys, values).index_select(0, queries)
    uniq, where = torch.unique(keys, sorted=True, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=values.dtype, device=values.device)
    sums.index_add_(0, where, values)
    if uniq.numel() == 0:
        return torch.zeros_like(queries, dtype=values.dtype)
    pos = torch.searchsorted(uniq, queries).clamp_(max=uniq.numel() - 1)
    return torch.where(uniq.index_select(0, pos) == queries, sums.index_select(0, pos), 0.0)
