"""Gram matrices ``x @ x.T`` computed by row blocks, using their symmetry.

Row block ``I`` is multiplied only against columns ``I0:`` (the blocks on and above the
diagonal): about 60% of the multiply-adds of a plain ``x @ x.T`` at ``N = 1024``. ``gram_upper``
stops there (the blocks below the diagonal are left uninitialised: callers that read only the
upper triangle, like the packed CKA kernels, need nothing more); ``gram_full`` mirrors them.
``center_gram_`` centres a symmetric kernel in place (``H K H``); ``centre_columns`` centres
features (``H X``) so that the result's column means are zero to the rounding of its spread.
"""

from __future__ import annotations

import torch

BLOCK = 256


def gram_upper(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``(N, N)`` with the entries ``(i, j)`` of ``x @ x.T`` for every block on or above the
    diagonal (so at least all ``j >= i``); entries of blocks below it are undefined."""
    n = x.shape[0]
    if n <= 2 * block:
        return x @ x.T
    out = torch.empty((n, n), dtype=x.dtype, device=x.device)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        torch.matmul(x[i0:i1], x[i0:].T, out=out[i0:i1, i0:])
    return out


def gram_full(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``x @ x.T`` ``(N, N)``, exactly symmetric: upper blocks computed, lower blocks mirrored,
    and the lower triangle of each diagonal block copied from its upper triangle (a BLAS
    product need not be bit-symmetric, depending on the CPU's kernels)."""
    n = x.shape[0]
    out = gram_upper(x, block)
    step = n if n <= 2 * block else block
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        diag = out[i0:i1, i0:i1]
        lower = torch.ones_like(diag, dtype=torch.bool).tril_(-1)
        diag.copy_(torch.where(lower, diag.T, diag))
        if i1 < n:
            out[i1:, i0:i1] = out[i0:i1, i1:].T
    return out


def center_gram_(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` in place for a symmetric ``(N, N)`` kernel (``H = I - 11^T/N``); returns ``k``."""
    row = k.mean(dim=1)
    k.sub_(row[:, None]).sub_(row[None, :]).add_(row.mean())
    return k


def centre_columns(x: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` ``X - 1 m^T`` (``m`` the mean row), in ``x``'s dtype, with column means zero up
    to the rounding of the centred values (not of the offset). One pass leaves a mean as large as
    the offset's rounding (float32 columns near 1e6: |mean| up to 0.13, which a caller taking
    the result for centred adds to every kernel entry); a second pass over the centred values
    removes it."""
    xc = x - x.mean(0, keepdim=True)
    return xc - xc.mean(0, keepdim=True)
