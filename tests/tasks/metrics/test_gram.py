"""Block-symmetric Gram computation and the paths that use it (N above one block)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.metrics import layer_matrix
from tasks.metrics.gram import MIN_TAIL_ROWS, gram_full, gram_upper, row_blocks
from tasks.metrics.triangle import pack, permuted_positions

from . import reference as ref


def test_gram_blocks_equal_plain_product() -> None:
    x = torch.randn(700, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = x @ x.T
    torch.testing.assert_close(gram_full(x), plain, rtol=0, atol=1e-12)
    assert torch.equal(gram_full(x), gram_full(x).T)
    torch.testing.assert_close(gram_upper(x).triu(), plain.triu(), rtol=0, atol=1e-12)


def test_packed_permutation_matches_permuting_the_matrix() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(9, 9, generator=g)
    a = a + a.T
    perm = torch.randperm(9, generator=g)
    assert torch.equal(pack(a)[permuted_positions(perm)], pack(a[perm][:, perm]))


def test_large_n_metrics_against_references() -> None:
    """N = 600 > two Gram blocks: kNN lists and CKA through the blocked code paths."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(600, 5))
    x = ref.normalize_rows(z @ rng.normal(size=(5, 20)) + rng.normal(size=(600, 20)))
    y = ref.normalize_rows(z @ rng.normal(size=(5, 16)) + rng.normal(size=(600, 16)))
    lists = ref.knn_lists(x, 5)
    from tasks.metrics.neighbors import topk_neighbors

    np.testing.assert_array_equal(topk_neighbors(torch.from_numpy(x), 5)[1].numpy(), lists)
    a, b = ref.knn_lists(x, 5), ref.knn_lists(y, 5)
    expected = np.mean([len(set(a[i]) & set(b[i])) / 5 for i in range(600)])
    assert layer_matrix("mutual_knn", [x], [y], topk=5)[0, 0] == pytest.approx(expected, abs=1e-12)
    for unbiased in (False, True):
        metric = "unbiased_cka" if unbiased else "cka"
        got = layer_matrix(metric, [x], [y])[0, 0]
        assert got == pytest.approx(ref.cka(x, y, unbiased=unbiased), abs=1e-10)


def test_row_blocks_cover_every_row_once_within_the_block_size() -> None:
    """``row_blocks(n, block)`` covers rows ``0..n-1`` in order, once each, with no last block of
    fewer than ``MIN_TAIL_ROWS`` rows, and (for ``block >= 2 * MIN_TAIL_ROWS``, all that real
    searches use) no block of more than ``block`` rows: a short tail that joined the block before
    it made that one up to ``MIN_TAIL_ROWS - 1`` rows larger than the caller's memory budget."""
    for block in range(1, 3 * MIN_TAIL_ROWS):
        for n in range(0, 5 * block + MIN_TAIL_ROWS + 2):
            blocks = row_blocks(n, block)
            assert [i for start, stop in blocks for i in range(start, stop)] == list(range(n)), (n, block)
            sizes = [stop - start for start, stop in blocks]
            assert all(size >= 1 for size in sizes)
            if len(blocks) > 1 and block >= MIN_TAIL_ROWS:
                assert sizes[-1] >= MIN_TAIL_ROWS, (n, block, blocks)
            if block >= 2 * MIN_TAIL_ROWS:
                assert max(sizes, default=0) <= block, (n, block, blocks)


@pytest.mark.parametrize("n", [200, 257, 640, 1031])  # one block; a shorter last block; equal blocks; both
def test_gram_full_mirrors_every_block_into_any_buffer(n):
    """``gram_full`` mirrors the diagonal blocks as one strided view when its buffer is contiguous,
    block by block otherwise: the same exactly symmetric matrix, whose upper triangle is the
    product's, in a fresh tensor, a slot of a stack or a strided buffer."""
    from tasks.metrics.gram import symmetrise

    x = torch.from_numpy(np.random.default_rng(n).normal(size=(n, 24)).astype(np.float32))
    want = symmetrise(gram_upper(x))
    stack = torch.full((2, n, n), float("nan"))
    strided = torch.full((n, n + 5), float("nan"))[:, :n]
    for got in (gram_full(x), gram_full(x, out=stack[1]), gram_full(x, out=strided)):
        assert torch.equal(got, want) and torch.equal(got, got.T)
