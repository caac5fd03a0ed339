"""``rsa_spearman`` (beyond the paper): representational similarity analysis.

Each layer's representational dissimilarity matrix is the Euclidean distance between samples
(for L2-normalised features, a monotone function of cosine distance); the score is Spearman's
rank correlation between the two matrices' upper triangles (``i < j``; ties get average ranks).

Per layer the ``N(N-1)/2`` ranks are computed once, centred and scaled to unit norm, so all layer
pairs are one matrix product; a row permutation of the samples re-indexes the cached ranks (the
permutation null reads them at the permuted positions a block at a time, without a copy).
Memory is ``O(L N^2)``.

Distances are computed from exact pairwise differences in float64 (``scipy.spatial.distance.pdist``
on the layer's values, on the CPU), not from a Gram matrix: ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` in
float32 cancels catastrophically when the rows share an offset (offset 1000: 0.4928 instead of
0.5241; width 15: 0.064 instead of 0.327), and even a float64 Gram of centred features breaks the
exact ties that Spearman's average ranks depend on (one-hot rows). A difference of two float32
values is exact in float64, so the score of float32 input is translation invariant.

Spearman's correlation is undefined when one side's distances are all equal (its ranks are
constant): ``N = 2`` (a single distance), or rows at equal mutual distances (one-hot rows, a
regular simplex). Such a layer is refused with ``ValueError`` naming it, as other undefined inputs
are (a constant layer, SVCCA's ``cca_dim`` above a layer's rank); it used to score 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .engine import TIE_RTOL, Engine
from .representation import Representation


@dataclass
class RankState:
    """``ranks`` ``(L, M)`` float64 centred unit-norm ranks of the upper-triangle distances."""

    ranks: torch.Tensor
    n: int


def _triangle(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    iu = torch.triu_indices(n, n, 1, device=device)
    return iu[0], iu[1]


def _row_pairs(n: int, r0: int, r1: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i, j)`` int64 of the upper-triangle pairs of rows ``r0:r1``, in row-major order: the
    positions ``_row_start(n, r0)`` to ``_row_start(n, r1)`` of the ranks."""
    i = torch.arange(r0, r1, device=device)[:, None].expand(r1 - r0, n)
    j = torch.arange(n, device=device)[None, :].expand(r1 - r0, n)
    upper = j > i
    return i[upper], j[upper]


def _row_start(n: int, r: int) -> int:
    """Row-major position of the first pair ``(r, r + 1)`` of row ``r`` (``M`` for ``r = N - 1``)."""
    return r * n - r * (r + 1) // 2


#: permutations whose ranks are gathered together in ``RsaEngine.null_matrices``
NULL_PERMUTATIONS = 8
#: (positions x permutations) of one gather of the permuted y ranks (per y-layer), float64
NULL_BLOCK_ELEMENTS = 1 << 18


def _pair_index(i: torch.Tensor, j: torch.Tensor, n: int) -> torch.Tensor:
    """Position of pair ``(min(i,j), max(i,j))`` in the row-major upper triangle (``i != j``)."""
    a, b = torch.minimum(i, j), torch.maximum(i, j)
    return a * n - a * (a + 1) // 2 + (b - a - 1)


class RsaEngine(Engine):
    """Spearman correlation between distance matrices (no parameters)."""

    variant = "rsa_spearman"

    def quadratic_memory(self, params: dict[str, Any]) -> str | None:
        """``'rsa'``: every layer's float64 ranks of its ``N (N - 1) / 2`` distances."""
        return "rsa"

    def encode(self, rep: Representation, params: dict[str, Any]) -> RankState:
        from scipy.spatial.distance import pdist  # local: keeps the package import light
        from scipy.stats import rankdata

        n = rep.n
        # one (L, M) buffer filled layer by layer: a list of rows then stacked held each layer's
        # ranks twice at the end (8 bytes per N^2 per layer instead of 4)
        ranks = torch.empty((len(rep.layers), n * (n - 1) // 2), dtype=torch.float64, device=rep.device)
        for l, x in enumerate(rep.layers):
            # squared distances from exact float64 differences, upper triangle in row-major order
            # (the order of _triangle); squaring keeps the order and the ties of the distances
            d2 = pdist(x.detach().to(device="cpu", dtype=torch.float64).numpy(), "sqeuclidean")
            r = rankdata(d2, method="average")
            if r.min() == r.max():  # average ranks of all-equal distances are all (M + 1) / 2
                what = ("N=2 samples give a single pairwise distance" if n == 2 else
                        f"all {d2.size} pairwise distances are equal ({float(d2[0]) ** 0.5:.6g})")
                raise ValueError(f"layer {l}: {what}: their Spearman correlation is undefined")
            del d2
            r -= r.mean()  # in place: no second (M,) copy
            row = ranks[l]
            row.copy_(torch.from_numpy(r))
            del r
            row /= row.norm()
        return RankState(ranks, n)

    def tie_rtol(self, params: dict[str, Any]) -> float:
        """``TIE_RTOL[torch.float64]``: the ranks and their products are float64 whatever the
        features' dtype (float32's ``1e-5`` would count near-miss null draws as ties)."""
        return TIE_RTOL[torch.float64]

    def permute(self, state: RankState, perm: torch.Tensor, inv: torch.Tensor) -> RankState:
        iu, ju = _triangle(state.n, state.ranks.device)
        idx = _pair_index(perm[iu], perm[ju], state.n)
        return RankState(state.ranks[:, idx], state.n)

    def matrix(self, a: RankState, b: RankState, params: dict[str, Any]) -> torch.Tensor:
        return a.ranks @ b.ranks.T

    def null_matrices(self, a: RankState, b: RankState, perms: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """``(B, La, Lb)`` float64 ``matrix(a, permute(b, perm))`` for each row ``perm`` of ``perms``
        ``(B, N)``, without the permuted copies: a block of rows' pairs at a time, the permuted
        pairs' source positions computed for ``NULL_PERMUTATIONS`` permutations at once, their
        ranks gathered from ``b`` and multiplied with ``a``'s block. Memory ``O(Lb x block)``,
        where ``permute`` copies all of ``b``'s ranks per permutation (4 bytes per ``N^2`` and
        layer: 12 y-layers at N=3,000 had peaked 61 bytes per ``N^2`` above the encodings). The
        values of ``matrix`` of ``permute`` up to the order of the float64 sums."""
        n = a.n
        dev = a.ranks.device
        rows_base = torch.arange(n, device=dev)
        # + j: the position of (i, j), i < j, as ``_pair_index`` computes it (a lookup of the row's
        # base: its arithmetic over every pair made the null 20% slower)
        rows_base = rows_base * n - rows_base * (rows_base + 1) // 2 - rows_base - 1
        out = []
        for s0 in range(0, perms.shape[0], NULL_PERMUTATIONS):
            ps = perms[s0:s0 + NULL_PERMUTATIONS]
            count = ps.shape[0]
            acc = torch.zeros((count, a.ranks.shape[0], b.ranks.shape[0]), dtype=torch.float64, device=dev)
            step = max(1, NULL_BLOCK_ELEMENTS // (n * count))  # rows per block: at most step * N pairs
            for r0 in range(0, n - 1, step):
                r1 = min(n - 1, r0 + step)
                i, j = _row_pairs(n, r0, r1, dev)
                pi, pj = ps[:, i], ps[:, j]  # (count, C): the permuted matrix's entry (i, j) is b's (pi, pj)
                src = rows_base[torch.minimum(pi, pj)] + torch.maximum(pi, pj)
                gathered = b.ranks.index_select(1, src.view(-1)).view(-1, count, i.numel())  # (Lb, count, C)
                block = a.ranks[:, _row_start(n, r0):_row_start(n, r1)]  # (La, C)
                acc += torch.matmul(block, gathered.permute(1, 2, 0))  # (count, La, Lb)
            out.append(acc)
        return torch.cat(out)


def register() -> None:
    from .registry import register_metric

    from .calibration import zero_chance

    # independent representations: the two distance matrices are independent, so their ranks are
    # and the expected Spearman correlation is 0
    register_metric("rsa_spearman", engine=RsaEngine(), bounds=(-1.0, 1.0), symmetric=True,
                    locality="global", overwrite=True, chance=zero_chance,
                    description="Spearman correlation between Euclidean distance matrices (RSA)")



