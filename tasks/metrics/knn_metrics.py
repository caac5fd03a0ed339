"""Neighbour-list metrics of the paper (and Jaccard), all layer pairs from shared kNN lists.

Definitions (``A = kNN_x(i)``, ``B = kNN_y(i)``: the ``k`` inner-product neighbours of sample
``i``, self excluded, ordered by decreasing similarity):

- ``mutual_knn``: mean over ``i`` of ``|A ∩ B| / k``;
- ``jaccard_knn``: mean over ``i`` of ``|A ∩ B| / |A ∪ B|``;
- ``cycle_knn``: share of samples ``i`` that are among the x-neighbours of one of their
  y-neighbours (``i ∈ ∪_{j ∈ B} kNN_x(j)``; the paper's ``knn_A[knn_B]``);
- ``lcs_knn``: mean length of the longest common subsequence of the ordered lists (in ``[0, k]``,
  not divided by ``k``);
- ``edit_distance_knn``: ``1 - mean(Levenshtein(A, B)) / k`` (computed as ``1 - total / (N k)``).

Each side's lists are computed once per layer (``Representation.knn``); the pair computations
are set/sequence operations on ``(N, k)`` integer lists, and overlaps are counted in integers.

Parameters: ``topk`` (default 10) and ``knn_precision`` (default ``'exact'``: neighbours in the
computation dtype). Opt-in ``'bf16'``: bfloat16 similarity search (faster on GPUs / AMX CPUs;
approximate lists: measured at width 1024, k=10, N=2,000-20,000, 10-25% of the lists differ from
exact (1-2.5% of the entries), moving ``mutual_knn`` by up to 7.9e-4); ``'bf16-refine'``:
bfloat16 candidates re-ranked exactly with a certified error bound, lists equal to the exact
ones (measured: none differ). See ``bf16_neighbors`` and ``docs/metrics.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .bf16_neighbors import check_knn_precision
from .engine import TIE_RTOL, Engine
from .knn_hits import ListTable, build_list_table, inverse_permutations, member_counts, pair_keys, permuted_hits
from .neighbors import edit_distances, is_member, lcs_lengths, permute_lists
from .representation import Representation

#: one chunk of the sequence metrics: the y-layers whose ``N x k`` lists, times 4 (the DP's int32
#: buffers and a row of equalities), hold at most this many elements
SEQUENCE_CHUNK_ELEMENTS = 1 << 24
#: (permutations x layer pairs x N), and (permutations x Lb x N x k), of one null batch of
#: ``mutual_knn``/``jaccard_knn``
NULL_COUNT_ELEMENTS = 1 << 22


@dataclass
class KnnState:
    """Neighbour lists of every layer: ``idx`` ``(L, N, k)`` int64; ``table`` the bitmask table of
    ``knn_hits`` (built on first use; the x side's overlaps, cycle hits and nulls read it)."""

    idx: torch.Tensor
    table: ListTable | None = None

    def list_table(self) -> ListTable:
        """Bitmask table of the lists (``knn_hits``), built on first use and kept."""
        if self.table is None:
            self.table = build_list_table(self.idx)
        return self.table

    @property
    def n(self) -> int:
        return int(self.idx.shape[1])


class KnnEngine(Engine):
    """Engine for the list metrics; ``variant`` is one of the names above."""

    encode_params = ("topk", "knn_precision")

    def __init__(self, variant: str) -> None:
        if variant not in ("mutual_knn", "jaccard_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"):
            raise ValueError(variant)
        self.variant = variant

    def encode_key(self, params: dict[str, Any]) -> tuple:
        if type(self).encode is not KnnEngine.encode:  # a subclass encoding its own way
            return super().encode_key(params)
        # shared by all list metrics; lists of different precisions never share a cache entry
        return ("knn-lists", params.get("topk"),
                check_knn_precision(params.get("knn_precision", "exact")))

    def tie_rtol(self, params: dict[str, Any]) -> float:
        """``mutual_knn``, ``cycle_knn``, ``lcs_knn``, ``edit_distance_knn``: 0, their values are
        integer totals (overlaps, hits, LCS lengths, edit distances, exact in float64 in any order)
        divided once, so equal totals give equal floats and the nearest other value is ``1/(N k)``
        (``1/N``) away, closer than float32's ``1e-5`` once ``N k > 1e5``. ``jaccard_knn``: float64
        means of rational per-sample terms, summed in different orders by ``matrix`` and
        ``null_matrices``: float64 rounding, whatever the features' dtype."""
        if self.variant in ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"):
            return 0.0
        return TIE_RTOL[torch.float64]

    def encode(self, rep: Representation, params: dict[str, Any]) -> KnnState:
        k = _check_topk(params.get("topk"), rep.n)
        precision = check_knn_precision(params.get("knn_precision", "exact"))
        return KnnState(rep.knn_indices(k, precision=precision))

    def permute(self, state: KnnState, perm: torch.Tensor, inv: torch.Tensor) -> KnnState:
        return KnnState(permute_lists(state.idx, perm, inv))

    def per_sample(self, a: KnnState, b: KnnState, params: dict[str, Any]) -> torch.Tensor:
        """``(La, Lb, N)`` float64 per-sample terms whose mean over samples is the score."""
        k = a.idx.shape[-1]
        v = self.variant
        if v in ("mutual_knn", "jaccard_knn"):  # |A ∩ B|: y's entries (i, j) held by the x-lists
            c = member_counts(a.list_table(), pair_keys(b.idx)).to(torch.float64)
            return c / k if v == "mutual_knn" else c / (2 * k - c)
        if v == "cycle_knn":  # is (j, i) an x-entry for one of i's y-neighbours j?
            return member_counts(a.list_table(), pair_keys(b.idx, reverse=True), "any").to(torch.float64)
        lengths = _sequence_lengths(a.idx, b.idx, v)
        return lengths if v == "lcs_knn" else 1.0 - lengths / k

    def null_matrices(self, a: KnnState, b: KnnState, perms: torch.Tensor,
                      params: dict[str, Any]) -> torch.Tensor:
        """``mutual_knn``/``jaccard_knn``: overlaps counted from the shared entries present under
        each permutation only (``knn_hits``), exact integers; other variants: ``permute`` +
        ``matrix`` per permutation."""
        if self.variant not in ("mutual_knn", "jaccard_knn"):
            return super().null_matrices(a, b, perms, params)
        La, n, k = a.idx.shape
        Lb = b.idx.shape[0]
        pairs = La * Lb
        step = max(1, NULL_COUNT_ELEMENTS // (n * max(pairs, Lb * k)))  # counts and (B, Lb, N, k) hit keys
        invs = inverse_permutations(perms)
        out = []
        for s0 in range(0, perms.shape[0], step):
            inv = invs[s0:s0 + step]
            h = permuted_hits(a.list_table(), b.idx, inv)
            pair = (h.batch * La + h.layer_a) * Lb + h.layer_b
            if self.variant == "mutual_knn":  # integer counts, one division: exact
                counts = torch.bincount(pair, minlength=inv.shape[0] * pairs)
                out.append(counts.to(torch.float64) / (n * k))
            else:  # per (pair, sample) counts c > 0 only; samples with c = 0 add 0
                keys, c = torch.unique(pair * n + h.row, return_counts=True)
                c = c.to(torch.float64)
                out.append(torch.zeros(inv.shape[0] * pairs, dtype=torch.float64, device=c.device)
                           .index_add_(0, keys // n, c / (2 * k - c)) / n)
        return torch.cat(out).view(-1, La, Lb)

    def matrix(self, a: KnnState, b: KnnState, params: dict[str, Any]) -> torch.Tensor:
        if self.variant == "mutual_knn":  # integer sum, one division: exact
            k = a.idx.shape[-1]
            counts = member_counts(a.list_table(), pair_keys(b.idx), "total")
            return counts.to(torch.float64) / (a.n * k)
        if self.variant == "edit_distance_knn":  # integer total, one division: equal totals, equal scores
            k = a.idx.shape[-1]
            return 1.0 - _sequence_lengths(a.idx, b.idx, self.variant).sum(-1) / (a.n * k)
        return self.per_sample(a, b, params).mean(-1)


def _check_topk(topk: Any, n: int) -> int:
    if topk is None or isinstance(topk, bool) or int(topk) != topk:
        raise ValueError(f"topk must be an integer, got {topk!r}")
    k = int(topk)
    if not 1 <= k <= n - 1:
        raise ValueError(f"topk must be in [1, N-1] = [1, {n - 1}], got {k}")
    return k


def _sequence_lengths(idx_a: torch.Tensor, idx_b: torch.Tensor, variant: str) -> torch.Tensor:
    """Per-sample LCS lengths (``lcs_knn``) or edit distances (``edit_distance_knn``) of the
    ordered lists: ``(La, Lb, N)`` float64 holding integers."""
    La, n, k = idx_a.shape
    Lb = idx_b.shape[0]
    out = torch.empty((La, Lb, n), dtype=torch.float64, device=idx_a.device)
    step = max(1, SEQUENCE_CHUNK_ELEMENTS // (n * k * 4))  # y-layers per chunk: the DP's (rows, k) buffers
    lengths = lcs_lengths if variant == "lcs_knn" else edit_distances
    for a in range(La):
        for b0 in range(0, Lb, step):
            b1 = min(Lb, b0 + step)
            x = idx_a[a].expand(b1 - b0, n, k).reshape(-1, k)
            vals = lengths(x, idx_b[b0:b1].reshape(-1, k)).to(torch.float64)
            out[a, b0:b1] = vals.view(b1 - b0, n)
    return out


__all__ = ["KnnEngine", "KnnState", "is_member"]
