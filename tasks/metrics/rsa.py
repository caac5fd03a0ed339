"""``rsa_spearman`` (beyond the paper): representational similarity analysis.

Each layer's representational dissimilarity matrix is the Euclidean distance between samples
(for L2-normalised features, a monotone function of cosine distance); the score is Spearman's
rank correlation between the two matrices' upper triangles (``i < j``; ties get average ranks).

Per layer the ``N(N-1)/2`` ranks are computed once, centred and scaled to unit norm, so all layer
pairs are one matrix product; a row permutation of the samples re-indexes the cached ranks.
Memory is ``O(L N^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .engine import Engine
from .representation import Representation


@dataclass
class RankState:
    """``ranks`` ``(L, M)`` float64 centred unit-norm ranks of the upper-triangle distances."""

    ranks: torch.Tensor
    n: int


def _triangle(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    iu = torch.triu_indices(n, n, 1, device=device)
    return iu[0], iu[1]


def _pair_index(i: torch.Tensor, j: torch.Tensor, n: int) -> torch.Tensor:
    """Position of pair ``(min(i,j), max(i,j))`` in the row-major upper triangle (``i != j``)."""
    a, b = torch.minimum(i, j), torch.maximum(i, j)
    return a * n - a * (a + 1) // 2 + (b - a - 1)


class RsaEngine(Engine):
    """Spearman correlation between distance matrices (no parameters)."""

    variant = "rsa_spearman"

    def encode(self, rep: Representation, params: dict[str, Any]) -> RankState:
        from scipy.stats import rankdata  # local: keeps the package import light

        n = rep.n
        iu, ju = _triangle(n, rep.device)
        rows = []
        for l in range(len(rep)):
            g = rep.gram(l).to(torch.float64)
            sq = torch.diagonal(g)
            d2 = (sq[iu] + sq[ju] - 2.0 * g[iu, ju]).clamp_min(0.0)
            r = torch.from_numpy(rankdata(d2.cpu().numpy(), method="average")).to(rep.device)
            r = r - r.mean()
            rows.append(r / r.norm().clamp_min(1e-300))
        return RankState(torch.stack(rows), n)

    def permute(self, state: RankState, perm: torch.Tensor, inv: torch.Tensor) -> RankState:
        iu, ju = _triangle(state.n, state.ranks.device)
        idx = _pair_index(perm[iu], perm[ju], state.n)
        return RankState(state.ranks[:, idx], state.n)

    def matrix(self, a: RankState, b: RankState, params: dict[str, Any]) -> torch.Tensor:
        return a.ranks @ b.ranks.T


def register() -> None:
    from .registry import register_metric

    register_metric("rsa_spearman", engine=RsaEngine(), bounds=(-1.0, 1.0), symmetric=True,
                    locality="global", overwrite=True,
                    description="Spearman correlation between Euclidean distance matrices (RSA)")



