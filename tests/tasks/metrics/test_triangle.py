"""The packed order of strict upper triangles (``tasks.metrics.triangle``): row blocks' rectangles,
then the diagonal blocks' triangles; every reader of it agrees with every other."""

from __future__ import annotations

import pytest
import torch

from tasks.metrics import gram
from tasks.metrics.triangle import (
    PACK_BLOCK,
    index_dtype,
    layout,
    pack,
    packed_flat,
    permuted_positions,
    row_major_positions,
    source_positions,
    triangle_pairs,
)

CPU = torch.device("cpu")
# one block, a block and a row, several blocks with a short last one, a tail of fewer than
# gram.MIN_TAIL_ROWS rows (row_blocks splits the last two blocks), whole blocks
SIZES = [2, 3, 37, PACK_BLOCK, PACK_BLOCK + 1, 263, 300, 8 * PACK_BLOCK + 6, 4 * PACK_BLOCK]


def _row_major_flat(n: int) -> torch.Tensor:
    iu = torch.triu_indices(n, n, 1)
    return iu[0] * n + iu[1]


@pytest.mark.parametrize("n", SIZES)
def test_packed_order_is_every_strict_upper_entry_once(n: int) -> None:
    flat = packed_flat(n, CPU)
    assert torch.equal(flat.sort().values, _row_major_flat(n))
    i, j = triangle_pairs(n, CPU)
    assert torch.equal(i * n + j, flat) and bool((i < j).all())
    assert torch.equal(packed_flat(n, CPU)[row_major_positions(n, CPU)], _row_major_flat(n))


@pytest.mark.parametrize("n", SIZES)
def test_rectangles_come_first_then_the_diagonal_triangles(n: int) -> None:
    """Each row block's rectangle (its rows, the columns after it) is one strided block of the
    packed row, in block order; the diagonal blocks' triangles follow, row-major each."""
    a = torch.randn(n, n)
    packed = pack(a)
    lay = layout(n)
    assert list(lay.blocks) == gram.row_blocks(n, PACK_BLOCK)
    for (i0, i1), (r0, r1) in zip(lay.blocks, lay.rect):
        assert torch.equal(packed[r0:r1].view(i1 - i0, n - i1), a[i0:i1, i1:])
    tri = lay.tri_start
    for i0, i1 in lay.blocks:
        size = i1 - i0
        iu = torch.triu_indices(size, size, 1)
        count = iu.shape[1]
        assert torch.equal(packed[tri:tri + count], a[i0:i1, i0:i1][iu[0], iu[1]])
        tri += count
    assert tri == n * (n - 1) // 2


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("batched", [False, True])
def test_pack_equals_the_gather_for_matrices_stacks_and_buffers(n: int, batched: bool, monkeypatch) -> None:
    if batched:  # the GPU path (one gather) on the CPU
        monkeypatch.setattr(gram, "BATCHED_DEVICE_TYPES", {"cuda", "cpu"})
    stack = torch.randn(3, n, n)
    stack[:, *torch.tril_indices(n, n)] = float("nan")  # below the diagonal and on it: never read
    flat = packed_flat(n, CPU)
    expected = stack.reshape(3, -1)[:, flat]
    assert torch.equal(pack(stack), expected)
    assert torch.equal(pack(stack[1]), expected[1])
    out = torch.empty(5, n * (n - 1) // 2)
    pack(stack, out=out[1:4])
    pack(stack[2], out=out[4])
    assert torch.equal(out[1:4], expected) and torch.equal(out[4], expected[2])


@pytest.mark.parametrize("n", [37, 263, 8 * PACK_BLOCK + 6])
def test_permuted_and_source_positions_give_the_permuted_matrix(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g)
    a = a + a.T
    perms = torch.stack([torch.randperm(n, generator=g) for _ in range(3)])
    m = n * (n - 1) // 2
    got = source_positions(perms.T.contiguous().to(index_dtype(n)), 0, m)
    row_major = pack(a)[row_major_positions(n, CPU)]
    for b, perm in enumerate(perms):
        permuted = pack(a[perm][:, perm])
        assert torch.equal(pack(a)[permuted_positions(perm)], permuted)
        assert torch.equal(row_major[got[:, b].long()], permuted)


def test_row_major_positions_need_no_quadratic_temporaries() -> None:
    """Building ``row_major_positions`` (with the tables it reads) peaks at the cached tables plus
    its own ``M`` positions and small blocks: one ``masked_select`` over the whole ``(N, N)``
    table had peaked 18 bytes per ``N^2`` above them (453 MiB at N=5000, a spike in the first null
    of a pair, above the estimate ``alignment.QUADRATIC_MEMORY`` reserves)."""
    from tests.tasks.metrics.peak_memory import peak_growth

    n = 3000
    measured = (f"from tasks.metrics import triangle as t\nrm = t.row_major_positions({n}, torch.device('cpu'))\n"
                f"flat, table = t._tables({n}, 'cpu')\n"
                "extra = [sum(x.numel() * x.element_size() for x in (rm, flat, table))]")
    growth, held = peak_growth("import torch", measured)
    assert growth <= 1.3 * held, (growth, held)  # 1.16 (1.67 with one masked_select, one thread)


def test_the_cached_diagonal_triangles_hold_only_their_own_indices() -> None:
    """``pack``'s cached gather indices are a copy of the diagonal blocks' part of ``packed_flat``:
    a view kept all ``M`` int64 indices alive (100 MB at N=5000) once ``_tables`` let them go."""
    from tasks.metrics.triangle import _triangle_flat

    n = 8 * PACK_BLOCK + 6
    tri = _triangle_flat(n, "cpu")
    assert torch.equal(tri, packed_flat(n, CPU)[layout(n).tri_start:])
    assert tri.untyped_storage().nbytes() == tri.numel() * tri.element_size()
