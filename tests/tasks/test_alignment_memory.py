"""The pipeline keeps a pair's Gram matrices only within a memory budget (tasks.alignment
gram_cache_limit): 33 + 25 layers at N = 4096 kept 3.6 GiB of Grams, and one more sample
(N = 4097) dropped them all."""

from __future__ import annotations

import numpy as np
import pytest

import tasks.alignment as alignment
from tasks.alignment import MetricRequest, align_layers, gram_cache_limit, prepare_layers
from tasks.metrics.representation import KEEP_GRAM_MAX_N


def test_the_limit_counts_every_layer_of_both_sides() -> None:
    f32 = [np.zeros((2, 3), np.float32)]
    assert gram_cache_limit(f32 * 26, 4096) == KEEP_GRAM_MAX_N  # the default zoo: 1.6 GiB of Grams
    assert gram_cache_limit(f32 * 58, 4096) == 0  # a LLaMA-7B-shaped side against a 24-block ViT
    assert gram_cache_limit(f32 * 58, 2048) == KEEP_GRAM_MAX_N
    assert gram_cache_limit(f32 * 2, 100, budget=2 * 100 * 100 * 4) == KEEP_GRAM_MAX_N
    assert gram_cache_limit(f32 * 2, 100, budget=2 * 100 * 100 * 4 - 1) == 0
    assert gram_cache_limit([np.zeros((2, 3))] * 2, 100, budget=2 * 100 * 100 * 4) == 0  # float64: 8 bytes


def test_without_cached_grams_the_scores_are_the_same(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 6))
    xs = prepare_layers([base @ rng.standard_normal((6, w)) + 0.3 * rng.standard_normal((300, w)) for w in (16, 24)])
    ys = prepare_layers([base @ rng.standard_normal((6, w)) + 0.3 * rng.standard_normal((300, w)) for w in (8, 12, 20)])
    requests = [MetricRequest("mutual_knn", {"topk": 5}), MetricRequest("cka"), MetricRequest("cknna", {"topk": 5})]
    kept = align_layers(xs, ys, requests, permutations=9, seed=3)
    built = []
    original = alignment.metrics.Representation

    def spy(*args, **kwargs):
        rep = original(*args, **kwargs)
        built.append(rep)
        return rep

    monkeypatch.setattr(alignment, "GRAM_CACHE_MAX_BYTES", 0)
    monkeypatch.setattr(alignment.metrics, "Representation", spy)
    dropped = align_layers(xs, ys, requests, permutations=9, seed=3)
    assert built and not any(rep.keep_gram for rep in built)
    for a, b in zip(kept, dropped):
        exact = a.metric.name != "cka"  # neighbour counts are exact; CKA's two paths differ by rounding
        np.testing.assert_allclose(b.matrix, a.matrix, rtol=0, atol=0 if exact else 1e-6)
        assert b.best_layers == a.best_layers
        assert b.p_value == a.p_value and b.null_mean == pytest.approx(a.null_mean, abs=0 if exact else 1e-6)
