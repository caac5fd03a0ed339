"""Per-layer work batched over stacks of same-width layers gives the per-layer results exactly."""

import numpy as np
import pytest
import torch

from tasks.metrics import Representation, layer_matrix, score
from tasks.metrics.gram import gram_full, gram_stack
from tasks.metrics.representation import layer_stacks


def _layers(widths, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, w)).astype(np.float32) for w in widths]


@pytest.mark.parametrize("metric", ["mutual_knn", "cka", "unbiased_cka", "cknna"])
def test_interleaved_widths_equal_per_pair_scores(metric):
    xs, ys = _layers([8, 16, 8, 8, 16]), _layers([5, 5, 12], seed=1)
    m = layer_matrix(metric, xs, ys, topk=5)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            # the CKA family's (La, Lb) float64 product rounds by its shape (as before the stacks)
            assert m[i, j] == pytest.approx(score(metric, x, y, topk=5), rel=1e-12, abs=1e-15)


def test_stacked_input_equals_list_input():
    x = np.stack(_layers([8] * 6, n=600))  # N > 512: the blocked products
    for metric in ("mutual_knn", "cka", "cknna"):
        a = layer_matrix(metric, x, x[::-1].copy(), topk=7)
        b = layer_matrix(metric, list(x), list(x[::-1].copy()), topk=7)
        assert np.array_equal(a, b)


def test_gram_stack_equals_gram_full():
    xs = [torch.from_numpy(x) for x in _layers([9] * 3, n=600)]
    for g, x in zip(gram_stack(xs), xs):
        assert torch.equal(g, gram_full(x))
    stacked = torch.stack(xs)
    assert torch.equal(gram_stack(list(stacked.unbind(0))), gram_stack(xs))


def test_layer_stacks_bounds_and_order():
    layers = [torch.zeros(4, w) for w in (2, 3, 2, 2, 3)]
    assert layer_stacks(layers) == [[0, 2, 3], [1, 4]]
    assert layer_stacks(layers, consecutive=True) == [[0], [1], [2, 3], [4]]
    assert layer_stacks(layers, max_elements=16) == [[0, 2], [3], [1], [4]]


def test_constant_and_nonfinite_layers_named_in_stacks():
    x = np.stack(_layers([4] * 3))
    x[1] = 1.0
    with pytest.raises(ValueError, match="layer 1 is constant"):
        Representation(x)
    x[1] = 0.5 * x[0]
    x[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="layer 2 has non-finite values"):
        Representation(x)
