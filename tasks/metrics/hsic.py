"""HSIC estimators in the forms the engine uses (the paper's normalisation, no 1/(N-1)^2).

Biased (the paper's ``hsic_biased``): ``HSIC(K, L) = trace(K H L H)``, ``H = I - 11^T/N``. For
symmetric kernels this is ``<HKH, HLH>_F``; with ``Kc = HKH`` precomputed per layer, all layer
pairs are one matrix product of packed ``Kc`` triangles. The usual ``1/(N-1)^2`` factor is omitted as in
the paper; it cancels in CKA except against the ``+1e-6`` of the denominator, which the paper adds
to this un-normalised value (so we do the same).

Unbiased (Song et al. 2012, eq. 5; the paper's ``hsic_unbiased``), ``K~`` = ``K`` with zero diagonal,
``m = N``::

    HSIC_u = [ tr(K~ L~) + 1^T K~ 1 · 1^T L~ 1 / ((m-1)(m-2)) - 2 · 1^T K~ L~ 1 / (m-2) ] / (m(m-3))

For symmetric kernels ``tr(K~ L~) = <K~, L~>_F`` and ``1^T K~ L~ 1 = r_K · r_L`` with ``r`` the row
sums, so a layer is summarised by its packed upper triangle, ``r`` and the total
(``kernel_metrics.GramState``). The ``*_dense`` functions are plain per-pair versions for general
(also non-symmetric) kernels.
"""

from __future__ import annotations

import torch


def unbiased_from_parts(trace: torch.Tensor, tot_k: torch.Tensor, tot_l: torch.Tensor,
                        rows_dot: torch.Tensor, m: int) -> torch.Tensor:
    """Combine the four terms of the unbiased estimator (broadcasting, float64)."""
    if m < 4:
        raise ValueError(f"unbiased HSIC needs N >= 4 samples, got {m}")
    return (trace + tot_k * tot_l / ((m - 1) * (m - 2)) - 2.0 * rows_dot / (m - 2)) / (m * (m - 3))


def hsic_biased_dense(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """``trace(K H L H)`` for general (possibly non-symmetric) ``(N, N)`` kernels."""
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
    return torch.trace(k @ h @ l @ h)


def hsic_unbiased_dense(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """The paper's ``hsic_unbiased`` for general ``(N, N)`` kernels (diagonals zeroed first)."""
    m = k.shape[0]
    kt = k.clone().fill_diagonal_(0)
    lt = l.clone().fill_diagonal_(0)
    return unbiased_from_parts((kt * lt.T).sum(), kt.sum(), lt.sum(), (kt @ lt).sum(), m)
