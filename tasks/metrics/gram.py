"""Gram matrices ``x @ x.T`` computed by row blocks, using their symmetry.

Row block ``I`` is multiplied only against columns ``I0:`` (the blocks on and above the
diagonal): about 60% of the multiply-adds of a plain ``x @ x.T`` at ``N = 1024``. ``gram_upper``
stops there (the blocks below the diagonal are left uninitialised: callers that read only the
upper triangle, like the packed CKA kernels, need nothing more); ``gram_full`` mirrors them.
``center_gram_`` centres a symmetric kernel in place (``H K H``); ``centre_columns`` centres
features (``H X``) so that the result's column means are zero to the rounding of its spread.
"""

from __future__ import annotations

import functools

import torch

BLOCK = 256


def gram_upper(x: torch.Tensor, block: int = BLOCK, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, N)`` with the entries ``(i, j)`` of ``x @ x.T`` for every block on or above the
    diagonal (so at least all ``j >= i``); entries of blocks below it are undefined. On CUDA one
    plain product (one launch; the row blocks only multiplied the kernel launches there). ``out``:
    an ``(N, N)`` buffer to write into (e.g. one slot of a stacked batch)."""
    n = x.shape[0]
    if n <= 2 * block or x.device.type == "cuda":  # one launch (cuBLAS: no gain from blocks)
        return x @ x.T if out is None else torch.matmul(x, x.T, out=out)
    out = torch.empty((n, n), dtype=x.dtype, device=x.device) if out is None else out
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
    if x.device.type == "cuda":  # cuBLAS need not be bit-symmetric either: one masked copy
        return symmetrise(out)
    step = n if n <= 2 * block else block
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        diag = out[i0:i1, i0:i1]
        lower = torch.ones_like(diag, dtype=torch.bool).tril_(-1)
        diag.copy_(torch.where(lower, diag.T, diag))
        if i1 < n:
            out[i1:, i0:i1] = out[i0:i1, i1:].T
    return out


def symmetrise(upper: torch.Tensor) -> torch.Tensor:
    """``(..., N, N)`` exactly symmetric matrices holding the entries ``j >= i`` of ``upper`` (those
    below the diagonal mirrored from above it; ``upper``'s own lower entries are not read): one
    ``where`` for a whole stack, a new tensor. Entry for entry what ``gram_full`` builds from the
    same upper triangle."""
    return torch.where(_upper_mask(upper.shape[-1], str(upper.device)), upper, upper.mT)


@functools.lru_cache(maxsize=4)
def _upper_mask(n: int, device: str) -> torch.Tensor:
    """``(N, N)`` bool, true on and above the diagonal."""
    return torch.ones((n, n), dtype=torch.bool, device=device).triu_()


def gram_stack(layers: list[torch.Tensor], block: int = BLOCK) -> torch.Tensor:
    """``(G, N, N)``: ``gram_full`` of each ``(N, D)`` layer of one width, entry for entry, with
    the symmetrisation done once for the stack (a batched product on CUDA when the layers are
    views of one stacked tensor)."""
    n = layers[0].shape[0]
    stacked = stacked_view(layers)
    if stacked is not None and stacked.device.type == "cuda":
        return symmetrise(torch.bmm(stacked, stacked.mT))
    out = torch.empty((len(layers), n, n), dtype=layers[0].dtype, device=layers[0].device)
    for g, x in enumerate(layers):
        gram_upper(x, block, out=out[g])
    return symmetrise(out)


def stacked_view(layers: list[torch.Tensor]) -> torch.Tensor | None:
    """The ``(G, N, D)`` tensor whose slices ``[g]`` are ``layers`` (contiguous ``(N, D)`` views
    of one storage, one after another, as ``unbind`` of a stacked tensor gives), or ``None``."""
    first = layers[0]
    if first.dim() != 2 or not first.is_contiguous():
        return None
    size = first.numel()
    ptr, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for g, x in enumerate(layers):
        if (x.shape != first.shape or x.dtype != first.dtype or x.device != first.device or not x.is_contiguous()
                or x.untyped_storage().data_ptr() != ptr or x.storage_offset() != offset + g * size):
            return None
    return first.as_strided((len(layers), *first.shape), (size, *first.stride()), offset)


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
