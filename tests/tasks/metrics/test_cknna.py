"""CKNNA against the dense mask-based reference of the paper's definition."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.metrics import Representation, layer_matrix, score

from . import reference as ref
from .conftest import layers, paired


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("k", [2, 5, 12])
def test_matches_reference(unbiased: bool, k: int) -> None:
    x, y = paired(n=36, noise=1.0, seed=k)
    got = score("cknna", x, y, topk=k, unbiased=unbiased)
    assert got == pytest.approx(ref.cknna(x, y, k, unbiased), abs=1e-12)


def test_unnormalised_features_biased_mask_with_self() -> None:
    """Biased variant keeps the diagonal as a candidate; self may or may not be a neighbour."""
    x, y = paired(n=30, seed=21, normalize=False)
    got = score("cknna", x, y, topk=6, unbiased=False)
    assert got == pytest.approx(ref.cknna(x, y, 6, unbiased=False), abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_distance_agnostic(unbiased: bool) -> None:
    x, y = paired(n=30, seed=22)
    got = score("cknna", x, y, topk=6, unbiased=unbiased, distance_agnostic=True)
    assert got == pytest.approx(ref.cknna(x, y, 6, unbiased, distance_agnostic=True), abs=1e-12)


def test_layer_matrix_equals_score() -> None:
    xs, ys = layers(seed=8), layers(seed=9, widths=(6, 25))
    m = layer_matrix("cknna", xs, ys, topk=7)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j] == score("cknna", x, y, topk=7)
            assert m[i, j] == pytest.approx(ref.cknna(x, y, 7), abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_topk_none_means_all_neighbours(unbiased: bool) -> None:
    """topk=None (a TypeError in the paper's code): full mask, i.e. linear (unbiased) CKA."""
    x, y = paired(n=20, seed=23)
    got = score("cknna", x, y, topk=None, unbiased=unbiased)
    assert got == pytest.approx(ref.cka(x, y, unbiased=unbiased), abs=1e-12)
    full = 19 if unbiased else 20
    assert score("cknna", x, y, topk=full - 1, unbiased=unbiased) == pytest.approx(
        ref.cknna(x, y, full - 1, unbiased), abs=1e-12)


def test_requires_topk_at_least_two() -> None:
    x, y = paired()
    with pytest.raises(ValueError):
        score("cknna", x, y, topk=1)


def test_large_n_path_without_gram() -> None:
    xs, ys = layers(seed=10), layers(seed=11)
    a = layer_matrix("cknna", Representation(xs, keep_gram_max_n=1),
                     Representation(ys, keep_gram_max_n=1), topk=5)
    np.testing.assert_allclose(a, layer_matrix("cknna", xs, ys, topk=5), atol=1e-12)


def test_binary_search_path_equals_slot_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large-N lookups (sorted lists) give the same numbers as the dense slot table."""
    import tasks.metrics.cknna as ck

    xs, ys = layers(seed=12), layers(seed=13, widths=(4, 19))
    dense = layer_matrix("cknna", xs, ys, topk=6)
    monkeypatch.setattr(ck, "SLOT_TABLE_MAX_ELEMENTS", 0)
    np.testing.assert_allclose(layer_matrix("cknna", xs, ys, topk=6), dense, atol=1e-12)
    for unbiased in (True, False):
        x, y = xs[0], ys[1]
        assert score("cknna", x, y, topk=6, unbiased=unbiased) == pytest.approx(
            ref.cknna(x, y, 6, unbiased), abs=1e-12)
