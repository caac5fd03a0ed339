"""Strict upper triangles of symmetric ``(N, N)`` matrices, packed, and their row permutations.

For symmetric ``A`` and ``B``, ``<A, B>_F = 2 sum_{i<j} A_ij B_ij + sum_i A_ii B_ii``: kernel
metrics store a layer as its packed strict upper triangle (row-major, ``M = N(N-1)/2`` numbers)
plus, when needed, its diagonal, and take inner products of half the length.

A sample permutation ``perm`` (``y' = y[perm]``) sends entry ``(i, j)`` to
``(perm[i], perm[j])``; ``permuted_positions(perm)`` gives, for every packed position of the
permuted matrix, its source position, so ``packed[..., permuted_positions(perm)]`` is the packed
triangle of ``A[perm][:, perm]``.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=2)
def _tables(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat, table)``: flat indices ``i*N + j`` of the packed entries ``(M,)`` and the
    symmetric ``(N, N)`` table of packed positions (diagonal: 0, never read)."""
    iu = torch.triu_indices(n, n, 1, device=device)
    flat = (iu[0] * n + iu[1]).contiguous()
    dtype = torch.int32 if n * n < 2**31 else torch.int64
    table = torch.zeros((n, n), dtype=dtype, device=device)
    positions = torch.arange(flat.numel(), device=device, dtype=dtype)
    table.view(-1).index_copy_(0, flat, positions)
    table.view(-1).index_copy_(0, (iu[1] * n + iu[0]).contiguous(), positions)
    return flat, table


@functools.lru_cache(maxsize=2)
def _pairs(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    iu = torch.triu_indices(n, n, 1, device=device)
    return iu[0].contiguous(), iu[1].contiguous()


def triangle_pairs(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``(M,)`` int64 of the packed entries (``i < j``, row-major)."""
    return _pairs(n, str(device))


def pack(a: torch.Tensor) -> torch.Tensor:
    """Packed strict upper triangle ``(M,)`` of ``a`` ``(N, N)`` (row-major order)."""
    flat, _ = _tables(a.shape[0], str(a.device))
    return a.reshape(-1).index_select(0, flat)


def permuted_positions(perm: torch.Tensor) -> torch.Tensor:
    """Source positions ``(M,)`` such that ``packed[pos]`` is the packed ``A[perm][:, perm]``."""
    n = perm.numel()
    flat, table = _tables(n, str(perm.device))
    moved = table.index_select(0, perm).index_select(1, perm)
    return moved.reshape(-1).index_select(0, flat)
