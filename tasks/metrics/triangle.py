"""Strict upper triangles of symmetric ``(N, N)`` matrices, packed, and their row permutations.

For symmetric ``A`` and ``B``, ``<A, B>_F = 2 sum_{i<j} A_ij B_ij + sum_i A_ii B_ii``: kernel
metrics store a layer as its packed strict upper triangle (row-major, ``M = N(N-1)/2`` numbers)
plus, when needed, its diagonal, and take inner products of half the length.

A sample permutation ``perm`` (``y' = y[perm]``) sends entry ``(i, j)`` to
``(perm[i], perm[j])``; ``permuted_positions(perm)`` gives, for every packed position of the
permuted matrix, its source position, so ``packed[..., permuted_positions(perm)]`` is the packed
triangle of ``A[perm][:, perm]``. ``source_positions`` computes the same positions for several
permutations and a range of packed positions at once, arithmetically (``base[min] + max`` of the
permuted row and column), for the batched CKA null.
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


def packed_flat(n: int, device: torch.device) -> torch.Tensor:
    """Flat indices ``i*N + j`` ``(M,)`` int64 of the packed entries (``pack`` reads them)."""
    return _tables(n, str(device))[0]


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


@functools.lru_cache(maxsize=2)
def _offsets(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, base)`` in the index dtype: the packed entries' ``i`` and ``j`` ``(M,)`` and
    ``base[a]`` ``(N,)`` with ``base[a] + b`` the packed position of ``(a, b)``, ``a < b``."""
    dtype = index_dtype(n)
    i, j = _pairs(n, device)
    a = torch.arange(n, device=device, dtype=torch.int64)
    base = a * n - a * (a + 1) // 2 - a - 1
    return i.to(dtype), j.to(dtype), base.to(dtype)


def index_dtype(n: int) -> torch.dtype:
    """int32 when every packed position of an ``(N, N)`` triangle fits in it, else int64."""
    return torch.int32 if n * n < 2**31 else torch.int64


def source_positions(perms_t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Packed source positions for several permutations at once, for a range of packed positions.

    Args:
        perms_t: ``(N, B)`` permutations as columns, in ``index_dtype(N)``.
        start, stop: range of packed positions of the permuted matrices.

    Returns:
        ``(stop - start, B)``: column ``b`` equals ``permuted_positions(perms_t[:, b])[start:stop]``.
    """
    n = perms_t.shape[0]
    rows, cols, base = _offsets(n, str(perms_t.device))
    pi = perms_t.index_select(0, rows[start:stop])
    pj = perms_t.index_select(0, cols[start:stop])
    lo = torch.minimum(pi, pj)
    return base.index_select(0, lo.view(-1)).view_as(lo).add_(torch.maximum(pi, pj))
