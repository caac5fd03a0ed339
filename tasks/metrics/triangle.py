"""Strict upper triangles of symmetric ``(N, N)`` matrices, packed, and their row permutations.

For symmetric ``A`` and ``B``, ``<A, B>_F = 2 sum_{i<j} A_ij B_ij + sum_i A_ii B_ii``: kernel
metrics store a layer as its packed strict upper triangle (``M = N(N-1)/2`` numbers) plus, when
needed, its diagonal, and take inner products of half the length.

The packed order follows the row blocks of ``gram.row_blocks(N, PACK_BLOCK)`` (those of
``gram.gram_upper`` off a GPU): first, block by block, the rectangle of each block's rows and the
columns after the block (row-major, one strided copy each), then, block by block, the strict
upper triangle of each diagonal block (row-major). Any fixed order would do for the inner
products; this one is packed by a few strided copies and one small gather instead of a gather of
all ``M`` entries (13 kernels at N=1024: 3.5 ms against 8.8 ms, 2 cores).

A sample permutation ``perm`` (``y' = y[perm]``) sends entry ``(i, j)`` to
``(perm[i], perm[j])``; ``permuted_positions(perm)`` gives, for every packed position of the
permuted matrix, its source position, so ``packed[..., permuted_positions(perm)]`` is the packed
triangle of ``A[perm][:, perm]``. ``source_positions`` computes the same positions for several
permutations and a range of packed positions at once, arithmetically, in the row-major order
(``row_major_positions``: the base of the smaller of the permuted row and column, plus the
larger), for the batched CKA null.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .gram import CPU_BLOCK, batched_device, row_blocks

#: rows of the blocks the packed order is made of (``gram.gram_upper``'s off a GPU, though the
#: packing reads its buffer only once it is whole: any fixed size would do; 128 rows make a few
#: large strided copies and diagonal triangles of 8,128 entries)
PACK_BLOCK = CPU_BLOCK


@dataclass(frozen=True)
class Layout:
    """The packed order of an ``(N, N)`` strict upper triangle: ``blocks`` ``[(i0, i1)]`` the row
    blocks; ``rect`` ``[(start, stop)]`` packed positions of each block's rectangle (rows
    ``i0:i1``, columns ``i1:N``); ``tri_start`` the position of the diagonal blocks' triangles."""

    n: int
    blocks: tuple[tuple[int, int], ...]
    rect: tuple[tuple[int, int], ...]
    tri_start: int


@functools.lru_cache(maxsize=8)
def layout(n: int) -> Layout:
    """The packed order of an ``(N, N)`` strict upper triangle (module docstring)."""
    blocks = tuple(row_blocks(n, PACK_BLOCK)) if n > 0 else ()
    rect, pos = [], 0
    for i0, i1 in blocks:
        rect.append((pos, pos + (i1 - i0) * (n - i1)))
        pos = rect[-1][1]
    return Layout(n, blocks, tuple(rect), pos)


@functools.lru_cache(maxsize=2)
def _tables(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat, table)``: flat indices ``i*N + j`` of the packed entries ``(M,)`` int64 and the
    symmetric ``(N, N)`` table of packed positions (diagonal: 0, never read), built a block at a
    time (no ``M``-long temporaries beyond ``flat`` and one position range)."""
    lay = layout(n)
    flat = torch.empty(n * (n - 1) // 2, dtype=torch.int64)
    tri = lay.tri_start
    for (i0, i1), (r0, r1) in zip(lay.blocks, lay.rect):
        rows = torch.arange(i0, i1, dtype=torch.int64)[:, None] * n
        flat[r0:r1] = (rows + torch.arange(i1, n, dtype=torch.int64)[None, :]).view(-1)
        iu = torch.triu_indices(i1 - i0, i1 - i0, 1)
        flat[tri:tri + iu.shape[1]] = (iu[0] + i0) * n + iu[1] + i0
        tri += iu.shape[1]
    dtype = torch.int32 if n * n < 2**31 else torch.int64
    table = torch.zeros(n * n, dtype=dtype)
    table[flat] = torch.arange(flat.numel(), dtype=dtype)
    table = table.view(n, n)
    table = table + table.T  # each entry is on one side of the diagonal: the other holds 0
    return flat.to(device), table.to(device)


def _block_pairs(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``(M,)`` in ``dtype`` of the packed entries (packed order), on the
    CPU, written a block at a time (no ``M``-long temporaries)."""
    lay = layout(n)
    m = n * (n - 1) // 2
    rows, cols = torch.empty(m, dtype=dtype), torch.empty(m, dtype=dtype)
    tri = lay.tri_start
    for (i0, i1), (r0, r1) in zip(lay.blocks, lay.rect):
        rows[r0:r1].view(i1 - i0, n - i1).copy_(torch.arange(i0, i1, dtype=dtype)[:, None])
        cols[r0:r1].view(i1 - i0, n - i1).copy_(torch.arange(i1, n, dtype=dtype)[None, :])
        iu = torch.triu_indices(i1 - i0, i1 - i0, 1).to(dtype).add_(i0)
        rows[tri:tri + iu.shape[1]], cols[tri:tri + iu.shape[1]] = iu[0], iu[1]
        tri += iu.shape[1]
    return rows, cols


@functools.lru_cache(maxsize=2)
def _pairs(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = _block_pairs(n, torch.int64)
    return rows.to(device), cols.to(device)


@functools.lru_cache(maxsize=2)
def _triangle_flat(n: int, device: str) -> torch.Tensor:
    """Flat indices ``i*N + j`` ``(T,)`` int64 of the diagonal blocks' triangles, in packed order:
    a copy (a view would keep the whole ``M``-long ``flat`` alive after ``_tables`` let it go)."""
    return _tables(n, device)[0][layout(n).tri_start:].clone()


def triangle_pairs(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``(M,)`` int64 of the packed entries (``i < j``, packed order)."""
    return _pairs(n, str(device))


def packed_flat(n: int, device: torch.device) -> torch.Tensor:
    """Flat indices ``i*N + j`` ``(M,)`` int64 of the packed entries (``pack`` reads them)."""
    return _tables(n, str(device))[0]


def pack(a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Packed strict upper triangles of ``a`` ``(N, N)`` or ``(G, N, N)``: ``(M,)`` or ``(G, M)``
    (into ``out`` when given, of that shape). Reads only entries ``j > i``, so ``a`` may hold
    ``gram.gram_upper``'s undefined lower blocks. A strided copy per row block's rectangle and
    one gather of the diagonal blocks' triangles; on a GPU (``gram.batched_device``) one gather."""
    n = int(a.shape[-1])
    stack = a if a.dim() == 3 else a[None]
    g = int(stack.shape[0])
    if out is None:
        out = torch.empty((g, n * (n - 1) // 2) if a.dim() == 3 else (n * (n - 1) // 2,), dtype=a.dtype, device=a.device)
    dest = out if out.dim() == 2 else out[None]
    if batched_device(a.device):  # one launch: a gather of every entry
        torch.index_select(stack.reshape(g, n * n), 1, packed_flat(n, a.device), out=dest)
        return out
    lay = layout(n)
    for (i0, i1), (r0, r1) in zip(lay.blocks, lay.rect):
        if r1 > r0:
            dest[:, r0:r1].view(g, i1 - i0, n - i1).copy_(stack[:, i0:i1, i1:])
    tri = _triangle_flat(n, str(a.device))
    if g == 1:  # straight into place
        torch.index_select(stack.reshape(-1), 0, tri, out=dest[0, lay.tri_start:])
    else:
        dest[:, lay.tri_start:] = stack.reshape(g, n * n).index_select(1, tri)
    return out


def permuted_positions(perm: torch.Tensor) -> torch.Tensor:
    """Source positions ``(M,)`` such that ``packed[pos]`` is the packed ``A[perm][:, perm]``."""
    n = perm.numel()
    flat, table = _tables(n, str(perm.device))
    moved = table.index_select(0, perm).index_select(1, perm)
    return moved.reshape(-1).index_select(0, flat)


@functools.lru_cache(maxsize=2)
def _row_major(n: int, device: str) -> torch.Tensor:
    """Packed positions ``(M,)`` (``index_dtype``) of the entries ``(i, j)``, ``i < j``, in
    row-major order, read off the table a row block at a time: one ``masked_select`` of the whole
    table (an ``(N, N)`` mask and the selection's index temporaries) had peaked 9 to 18 bytes per
    ``N^2`` above the tables (453 MiB at N=5000, 2 threads), in a pair's first null."""
    table = _tables(n, device)[1]
    out = torch.empty(n * (n - 1) // 2, dtype=table.dtype, device=table.device)
    pos = 0
    for i0, i1 in layout(n).blocks:
        rows = table[i0:i1, i0:]  # the block's rows from its diagonal on: (i1 - i0, N - i0)
        upper = torch.ones(rows.shape, dtype=torch.bool, device=table.device).triu_(1)
        count = (i1 - i0) * (n - i0) - (i1 - i0) * (i1 - i0 + 1) // 2
        torch.masked_select(rows, upper, out=out[pos:pos + count])
        pos += count
    return out.to(index_dtype(n))


def row_major_positions(n: int, device: torch.device) -> torch.Tensor:
    """Packed positions ``(M,)`` (``index_dtype(N)``) of the strict upper entries in row-major order: ``packed[...,
    row_major_positions(n)]`` lists the entries row by row (the order ``source_positions`` reads)."""
    return _row_major(n, str(device))


@functools.lru_cache(maxsize=2)
def _offsets(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, base)`` in the index dtype: the packed entries' ``i`` and ``j`` ``(M,)``
    and ``base[a]`` ``(N,)`` with ``base[a] + b`` the row-major position of ``(a, b)``, ``a < b``."""
    dtype = index_dtype(n)
    # built in the index dtype, not from ``_pairs``: the biased null kept ``_pairs``' int64 copies
    # cached beside these for nothing (8 bytes per N^2: 69 MiB at N=3000), and its peak passed the
    # encoding's, which ``alignment.QUADRATIC_MEMORY`` counts (RBF CKA, 2 + 2 layers, N=3000: 358
    # against 332 MiB, one thread)
    i, j = _block_pairs(n, dtype)
    a = torch.arange(n, dtype=torch.int64)
    base = a * n - a * (a + 1) // 2 - a - 1
    return i.to(device), j.to(device), base.to(dtype).to(device)


def index_dtype(n: int) -> torch.dtype:
    """int32 when every packed position of an ``(N, N)`` triangle fits in it, else int64."""
    return torch.int32 if n * n < 2**31 else torch.int64


def source_positions(perms_t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Source positions for several permutations at once, for a range of packed positions, in
    row-major order: arithmetic on the smaller and larger permuted index (one table lookup), where
    the packed order's two bases per row would take three (the CKA null 18% slower).

    Args:
        perms_t: ``(N, B)`` permutations as columns, in ``index_dtype(N)``.
        start, stop: range of packed positions of the permuted matrices.

    Returns:
        ``(stop - start, B)`` row-major positions: ``row_major_positions(N)`` of column ``b``
        equals ``permuted_positions(perms_t[:, b])[start:stop]``, so a row-major copy of the
        packed triangles (``packed[..., row_major_positions(N)]``) read at them gives the
        permuted triangles' entries ``start:stop`` in packed order.
    """
    n = perms_t.shape[0]
    rows, cols, base = _offsets(n, str(perms_t.device))
    pi = perms_t.index_select(0, rows[start:stop])
    pj = perms_t.index_select(0, cols[start:stop])
    lo = torch.minimum(pi, pj)
    return base.index_select(0, lo.view(-1)).view_as(lo).add_(torch.maximum(pi, pj))
