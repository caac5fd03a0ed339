"""Gram matrices ``x @ x.T`` computed by row blocks, using their symmetry.

Row block ``I`` is multiplied only against columns ``I0:`` (the blocks on and above the
diagonal): 56% of the multiply-adds of a plain ``x @ x.T`` at ``N = 1024`` in blocks of
``CPU_BLOCK`` rows. ``gram_upper``
stops there (the blocks below the diagonal are left uninitialised: callers that read only the
upper triangle, like the packed CKA kernels, need nothing more); ``gram_full`` mirrors them.
``center_gram_`` centres a symmetric kernel in place (``H K H``); ``centre_columns`` centres
features (``H X``) so that the result's column means are zero to the rounding of its spread.

On a GPU (``batched_device``) a single layer's Gram is one product, and the layers of one width
are multiplied as a stack, row strip by row strip (``stacked_gram_upper``): a few batched
products, each of them large enough to fill the device.
"""

from __future__ import annotations

import functools

import torch

#: rows of one strip of ``stacked_gram_upper`` (a GPU's batched products)
BLOCK = 256
#: rows of one block of ``gram_upper`` / ``gram_full`` off a GPU: the product wastes fewer
#: multiply-adds below the diagonal with smaller blocks, and 128 rows still fill a CPU's matrix
#: kernels (N=1024, width 768, 13 layers, 2 cores: 36 ms against 42 ms for 256 rows)
CPU_BLOCK = 128
#: fewest rows of the last block of ``gram_upper`` (and strip of ``stacked_gram_upper``): a product of 1 to 3 rows takes another BLAS
#: kernel (a matrix-vector one), whose rounding differs from that of the other blocks, so two equal
#: rows' inner products with a row of that block stopped tying exactly (duplicate samples' lists
#: then depended on ``N mod CPU_BLOCK``); a shorter tail shares the block before it (``row_blocks``)
MIN_TAIL_ROWS = 8
#: device types whose engine work is batched over stacks of same-width layers (a few large kernel
#: launches instead of many small ones); on a CPU per-layer blocks measured faster (1.16 x floor
#: against 1.41 for stacked neighbour search). Tests add "cpu" to run the GPU paths on a CPU.
BATCHED_DEVICE_TYPES = {"cuda"}


def batched_device(device: torch.device) -> bool:
    """Whether the engine batches its work over layer stacks on ``device`` (a GPU)."""
    return device.type in BATCHED_DEVICE_TYPES


def gram_upper(x: torch.Tensor, block: int = CPU_BLOCK, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, N)`` with the entries ``(i, j)`` of ``x @ x.T`` for every block on or above the
    diagonal (so at least all ``j >= i``); entries of blocks below it are undefined. On CUDA one
    plain product (one launch; the row blocks only multiplied the kernel launches there). ``out``:
    an ``(N, N)`` buffer to write into (e.g. one slot of a stacked batch)."""
    n = x.shape[0]
    if n <= 2 * block or batched_device(x.device):  # one launch (cuBLAS: no gain from blocks)
        return x @ x.T if out is None else torch.matmul(x, x.T, out=out)
    out = torch.empty((n, n), dtype=x.dtype, device=x.device) if out is None else out
    for i0, i1 in row_blocks(n, block):
        torch.matmul(x[i0:i1], x[i0:].T, out=out[i0:i1, i0:])
    return out


def row_blocks(n: int, block: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the row blocks of an ``N``-row product, in order: ``block`` rows each
    but the last two, where a tail of fewer than ``MIN_TAIL_ROWS`` rows would be left. The tail
    and the block before it are then split into two halves of at most ``block`` rows (the
    callers' memory budget) and at least ``MIN_TAIL_ROWS``; where they are too few for that
    (under ``2 * MIN_TAIL_ROWS`` rows together: only when ``block < 2 * MIN_TAIL_ROWS``) they form one block, at most ``MIN_TAIL_ROWS - 1`` rows
    over ``block``."""
    starts = list(range(0, n, block))
    if len(starts) > 1 and n - starts[-1] < MIN_TAIL_ROWS:  # a last block of a few rows: none
        starts.pop()
        both = n - starts[-1]
        if both >= 2 * MIN_TAIL_ROWS:
            starts.append(starts[-1] + (both + 1) // 2)
    return list(zip(starts, starts[1:] + [n]))


def gram_full(x: torch.Tensor, block: int = CPU_BLOCK, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ x.T`` ``(N, N)``, exactly symmetric: upper blocks computed, lower blocks mirrored,
    and the lower triangle of each diagonal block copied from its upper triangle (a BLAS
    product need not be bit-symmetric, depending on the CPU's kernels). ``out``: an ``(N, N)``
    buffer to write into (on a GPU the result is a new tensor all the same)."""
    n = x.shape[0]
    out = gram_upper(x, block, out=out)
    if batched_device(x.device):  # cuBLAS need not be bit-symmetric either: one masked copy
        return symmetrise(out)
    step = n if n <= 2 * block else block
    whole = n // step  # diagonal blocks of `step` rows; a shorter last one apart
    if out.is_contiguous():  # all of them as one strided view: one masked copy (8 had cost 0.22 ms, 1 0.08)
        diags = out.as_strided((whole, step, step), (step * (n + 1), n, 1))
        diags.copy_(torch.where(_strict_lower_mask(step, str(out.device)), diags.mT, diags))
        done = whole * step
    else:
        done = 0
    for i0 in range(done, n, step):
        diag = out[i0:i0 + step, i0:i0 + step]
        diag.copy_(torch.where(_strict_lower_mask(diag.shape[0], str(out.device)), diag.T, diag))
    for i0 in range(0, n - step, step):  # the blocks below the diagonal, a row block's columns at a time
        i1 = i0 + step
        out[i1:, i0:i1] = out[i0:i1, i1:].T
    return out


def symmetrise(upper: torch.Tensor) -> torch.Tensor:
    """``(..., N, N)`` exactly symmetric matrices holding the entries ``j >= i`` of ``upper`` (those
    below the diagonal mirrored from above it; ``upper``'s own lower entries are not read): one
    ``where`` for a whole stack, a new tensor. Entry for entry what ``gram_full`` builds from the
    same upper triangle."""
    return torch.where(_upper_mask(upper.shape[-1], str(upper.device)), upper, upper.mT)


@functools.lru_cache(maxsize=4)
def _strict_lower_mask(n: int, device: str) -> torch.Tensor:
    """``(N, N)`` bool, true below the diagonal."""
    return torch.ones((n, n), dtype=torch.bool, device=device).tril_(-1)


@functools.lru_cache(maxsize=4)
def _upper_mask(n: int, device: str) -> torch.Tensor:
    """``(N, N)`` bool, true on and above the diagonal."""
    return torch.ones((n, n), dtype=torch.bool, device=device).triu_()


def gram_stack(layers: list[torch.Tensor], block: int = BLOCK) -> torch.Tensor:
    """``(G, N, N)``: ``gram_full`` of each ``(N, D)`` layer of one width, with the
    symmetrisation done once for the stack. On a GPU (``batched_device``) the layers are
    multiplied as stacks (``stacked_gram_upper``, ``feature_chunks`` of them; a copy unless they
    are views of one stacked tensor; ``block``: the rows of their strips): the same matrices up
    to rounding. Elsewhere entry for entry."""
    first = layers[0]
    out = torch.empty((len(layers), first.shape[0], first.shape[0]), dtype=first.dtype, device=first.device)
    if batched_device(first.device):
        for start, stop in feature_chunks(layers):
            stacked_gram_upper(as_stack(layers[start:stop]), block, out=out[start:stop])
        return symmetrise(out)
    for g, x in enumerate(layers):
        gram_upper(x, out=out[g])
    return symmetrise(out)


#: elements of the layers multiplied as one stack on a GPU (``feature_chunks``): a stacked copy
#: and the centred temporaries of at most this many (512 MiB of float32) are alive at once.
STACK_FEATURE_ELEMENTS = 1 << 27


def feature_chunks(layers: list[torch.Tensor], max_elements: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of ``layers`` (one shape) of at most ``max_elements`` (default
    ``STACK_FEATURE_ELEMENTS``) feature elements each, at least one layer: the callers' stacks
    bound their Gram matrices (``G N^2``), not their features (``G N D``), which at a small ``N``
    could be the whole model."""
    limit = STACK_FEATURE_ELEMENTS if max_elements is None else max_elements
    size = max(1, limit // max(1, layers[0].numel()))
    return [(start, min(len(layers), start + size)) for start in range(0, len(layers), size)]


def stacked_gram_upper(stacked: torch.Tensor, block: int = BLOCK, out: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """``(G, N, N)``: ``gram_upper`` of each ``(N, D)`` slice of ``stacked`` ``(G, N, D)`` (entries
    of blocks below the diagonal undefined), one batched product per row strip: strip ``I`` of
    every layer against its columns ``I0:``, ``1/2 + block/(2N)`` of the multiply-adds of full
    products, in ``N / block`` launches (one when ``N <= 2 * block``). ``out``: a ``(G, N, N)``
    buffer to write into."""
    g, n, _ = stacked.shape
    out = torch.empty((g, n, n), dtype=stacked.dtype, device=stacked.device) if out is None else out
    if n <= 2 * block:
        return torch.bmm(stacked, stacked.mT, out=out)
    for i0, i1 in row_blocks(n, block):  # no strip of a few rows: another kernel, another rounding
        torch.bmm(stacked[:, i0:i1], stacked[:, i0:].mT, out=out[:, i0:i1, i0:])
    return out


def as_stack(layers: list[torch.Tensor]) -> torch.Tensor:
    """``(G, N, D)``: ``stacked_view`` of ``layers`` when they are views of one stacked tensor,
    else a stacked copy."""
    stacked = stacked_view(layers)
    return torch.stack(layers) if stacked is None else stacked


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
    """``(..., N, D)`` ``X - 1 m^T`` (``m`` the mean row, of each layer of a stack), in ``x``'s
    dtype, with column means zero up
    to the rounding of the centred values (not of the offset). One pass leaves a mean as large as
    the offset's rounding (float32 columns near 1e6: |mean| up to 0.13, which a caller taking
    the result for centred adds to every kernel entry); a second pass over the centred values
    removes it, in place (a second fresh array cost as much as the rest: its pages, 15 of 29 ms
    for 13 layers of 1024 x 768 on a 2-core CPU)."""
    xc = x - x.mean(-2, keepdim=True)
    return xc.sub_(xc.mean(-2, keepdim=True))
