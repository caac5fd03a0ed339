"""An independent Benjamini–Hochberg reference from its definition, for the q-value tests of the
grid (tasks.grid_fdr), the catalog view alignment_fdr and the report's q column."""

from __future__ import annotations


def brute_force_bh(p: list[float]) -> list[float]:
    """q_i = min over every j whose p_j >= p_i of m * p_j / rank_j (rank among the sorted p,
    ties in any order), capped at 1: the step-up procedure's adjusted p-values. O(m^2)."""
    m = len(p)
    ranked = sorted(p)
    return [min(1.0, min(m * ranked[j] / (j + 1) for j in range(m) if ranked[j] >= pi)) for pi in p]
