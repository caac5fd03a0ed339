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


#: a self-HSIC within ``SELF_HSIC_ROUNDING_UNITS * N * eps`` of its terms' size
#: (``unbiased_terms_size``; ``eps`` the computation dtype's) counts as 0: the layer's CKA would be
#: 0/0. Measured on layers whose exact value is 0 (all rows but one identical, N = 5 to 2,000,
#: both paths, float32 and float64): at most ``0.18 N eps`` (distinct one-hot rows: 0.23, with the
#: Gram path's floor, ``kernel_metrics._formed_terms_size``); realistic layers (isotropic, low-rank,
#: clustered, one-hot, heavy-tailed, sharing a direction; N = 20 to 2,000; linear and RBF) have
#: at least 0.3 times the size
SELF_HSIC_ROUNDING_UNITS = 4.0


def unbiased_terms_size(trace: torch.Tensor, tot_k: torch.Tensor, tot_l: torch.Tensor,
                        rows_dot: torch.Tensor, m: int) -> torch.Tensor:
    """The size of the unbiased estimator's three terms (absolute values, same normalisation as
    ``unbiased_from_parts``): its rounding error is a few units of the dtype's eps times this."""
    return (trace.abs() + (tot_k * tot_l).abs() / ((m - 1) * (m - 2))
            + 2.0 * rows_dot.abs() / (m - 2)) / (m * (m - 3))


def check_self_hsic(self_hsic: torch.Tensor, size: torch.Tensor, n: int, dtype: torch.dtype,
                    what: str = "unbiased self-HSIC") -> None:
    """Raise ``ValueError`` naming the first layer whose ``self_hsic`` ``(L,)`` is at most
    ``SELF_HSIC_ROUNDING_UNITS * n * eps(dtype) * size`` (``size`` ``(L,)``: its terms' size,
    ``n`` samples): 0 up to rounding, or negative. Its CKA, ``HSIC / (sqrt(self_x self_y) + 1e-6)``,
    would be NaN (the square root of a negative number) or a quotient of rounding errors."""
    bad = self_hsic <= SELF_HSIC_ROUNDING_UNITS * n * torch.finfo(dtype).eps * size
    if bool(bad.any()):
        l = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"layer {l} has {with_article(what)} of {float(self_hsic[l]):.3g}, not above 0 beyond rounding "
            f"(its terms are of size {float(size[l]):.3g}): its score would be NaN or rounding "
            "noise (e.g. all rows but one identical); leave the layer out")


#: letters whose spoken name starts with a vowel sound ("an HSIC", "an SVD", "a CKA")
_VOWEL_SOUND_LETTERS = frozenset("AEFHILMNORSX")


def with_article(noun: str) -> str:
    """``noun`` after "a" or "an", chosen by its first word's sound: "an unbiased self-HSIC", "a
    biased masked self-similarity", "an HSIC" (an initialism is spoken letter by letter)."""
    word = noun.split(" ", 1)[0].split("-", 1)[0]
    if len(word) > 1 and word.isupper():
        vowel = word[0] in _VOWEL_SOUND_LETTERS
    else:
        vowel = word[:1].lower() in ("a", "e", "i", "o", "u")
    return f"{'an' if vowel else 'a'} {noun}"


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
