"""A model aligned with several partners shares its work across the pairs (tasks.alignment
PreparedModel): its degenerate-layer check, Gram matrices, neighbour lists and metric encodings
are computed once, and every pair scores as if computed on its own (DESIGN: a Gram or a kNN list
once per model and layer, shared by every partner)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import tasks.metrics.representation as representation
from tasks import metrics
from tasks.alignment import MetricRequest, PreparedModel, align_layers, prepare_layers

REQUESTS = [MetricRequest("mutual_knn", {"topk": 5}), MetricRequest("cka"), MetricRequest("cknna", {"topk": 5})]


def _model(seed: int, n: int = 60, widths=(8, 12, 12)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = np.random.default_rng(99).normal(size=(n, 4))
    return prepare_layers([(shared @ rng.normal(size=(4, w)) + rng.normal(size=(n, w))).astype(np.float32) for w in widths])


def _fields(results) -> list:
    return [(r.metric.name, np.nan_to_num(r.matrix, nan=-9.0).tolist(), r.best, r.best_layers, r.p_value, r.calibrated, r.ci_low, r.ci_high,
             r.excluded_a, r.excluded_b) for r in results]


def test_a_shared_model_scores_every_partner_as_alone_with_its_grams_computed_once(monkeypatch):
    vit = _model(1)
    vit[0] = np.repeat(vit[0][:1], len(vit[0]), axis=0)  # a degenerate layer: excluded alike
    partners = [_model(2), _model(3, widths=(16,))]
    alone = [_fields(align_layers(vit, p, REQUESTS, permutations=19, bootstrap=8)) for p in partners]
    grams, real = [], representation.gram_full
    monkeypatch.setattr(representation, "gram_full", lambda x, *a, **k: (grams.append(tuple(x.shape)), real(x, *a, **k))[1])
    shared = PreparedModel(vit)
    assert list(shared.degenerate) == [0] and shared.kept == [1, 2]
    together = [_fields(align_layers(shared, PreparedModel(p), REQUESTS, permutations=19, bootstrap=8)) for p in partners]
    assert together == alone
    # the shared model's two kept layers once, each partner's layers once
    assert sorted(grams) == sorted([(60, 12)] * 2 + [(60, 8), (60, 12), (60, 12), (60, 16)])


def test_pairs_in_threads_share_a_model_and_score_as_alone():
    vit, partners = _model(1), [_model(s) for s in (2, 3, 4)]
    alone = [_fields(align_layers(vit, p, REQUESTS, permutations=9)) for p in partners]
    shared, got = PreparedModel(vit), {}

    def pair(i):
        got[i] = _fields(align_layers(shared, partners[i], REQUESTS, permutations=9))

    threads = [threading.Thread(target=pair, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(3)] == alone and len(shared._representations) == 1


def test_what_a_representation_holds_is_counted_once_per_buffer():
    x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    rep = metrics.Representation([x, x[:, :3]])  # two layers; the second a copy made by to_tensor
    layers = rep.nbytes
    assert layers >= x.nbytes
    rep.cache_grams()
    assert rep.nbytes == layers + 2 * 50 * 50 * 4
    rep.knn(0, 5)
    assert rep.nbytes == layers + 2 * 50 * 50 * 4 + 50 * 5 * (4 + 8)  # values (float32) and indices (int64)
    sub = rep.subset(torch.arange(10))
    assert sub.nbytes == 0  # nothing copied yet: its parent's buffers are the parent's
    sub.layers[0]
    assert sub.nbytes == 10 * 7 * 4
    prepared = PreparedModel([x, x])
    assert prepared.nbytes == x.nbytes  # one buffer listed twice
    assert prepared.expected_nbytes == x.nbytes + 2 * 50 * 50 * 4  # what the cache admits it by: its Grams to come
    prepared.representation(4096)
    assert prepared.nbytes == x.nbytes + 2 * 50 * 50 * 4  # the representation views the prepared arrays
    prepared.representation(0)  # a pair whose Grams are not kept: the same layers, no more Grams
    assert prepared.expected_nbytes == prepared.nbytes == x.nbytes + 2 * 50 * 50 * 4  # measured once used
    # the review: a model whose own Grams exceed the pairs' Gram budget keeps none; it was charged for them
    import tasks.alignment as alignment

    alignment.GRAM_CACHE_MAX_BYTES, budget = 2 * 50 * 50 * 4 - 1, alignment.GRAM_CACHE_MAX_BYTES
    try:
        assert PreparedModel([x, x]).expected_nbytes == x.nbytes
    finally:
        alignment.GRAM_CACHE_MAX_BYTES = budget


def test_a_model_of_other_samples_is_refused_as_unpaired():
    with pytest.raises(ValueError, match="rows must be paired"):
        align_layers(PreparedModel(_model(1)), PreparedModel(_model(2, n=61)), REQUESTS)


def test_the_zoo_alignment_benchmark_runs_at_ci_size(capsys):
    """bench/bench_zoo_alignment.py checks both paths store the same results on every pair, counts
    the preparations and restores the task module it counts them in."""
    import re

    import tasks.align_task as align_task
    from tests.bench_scripts import load_bench

    prepare, keep = align_task.prepare_layers, align_task.kept_for_later_pairs
    assert load_bench("bench_zoo_alignment").main(["--vision", "2", "--language", "3", "--n", "40", "--layers", "2",
                                                   "--dim", "6", "--permutations", "9", "--bootstrap", "4"]) == 0
    out = capsys.readouterr().out
    assert "zoo 2 vision x 3 language (6 pairs)" in out and "same stored scores on every pair" in out
    assert re.search(r"^\| per pair \| [\d.]+ \| 12 \| [\d.]+ \|$", out, re.M)
    assert re.search(r"^\| reads shared \(session 25\) \| [\d.]+ \| 12 \| [\d.]+ \|$", out, re.M)
    assert re.search(r"^\| shared \| [\d.]+ \| 5 \| 1.00 \|$", out, re.M)  # each model prepared once
    assert align_task.prepare_layers is prepare and align_task.kept_for_later_pairs is keep


def test_a_user_metrics_error_names_the_models_own_layers():
    """The plugin hunt: with a constant layer 0 left out, a user function failing on the model's
    layer 1 was reported as "layer 0 of x" (the engine sees only the layers that remain)."""
    from tasks.metrics import METRICS, MetricFunctionError, register_metric

    vit, lm = _model(1), _model(2)
    vit[0] = np.repeat(vit[0][:1], len(vit[0]), axis=0)
    marker = float(vit[1][0, 0])

    def picky(x, y):
        if float(x[0, 0]) == marker:
            raise RuntimeError("cannot score this one")
        return 0.5

    register_metric("test_picky", picky, overwrite=True)
    try:
        with pytest.raises(MetricFunctionError, match=r"raised RuntimeError: cannot score this one.* \(layer pair \(1, 0\): "
                                                      r"vit layer 1, lm layer 0\)") as caught:
            align_layers(vit, lm, [MetricRequest("test_picky")], names=("vit", "lm"))
        assert isinstance(caught.value.__cause__, RuntimeError)
    finally:
        METRICS._specs.pop("test_picky", None)


def test_held_bytes_does_not_walk_into_modules_classes_or_functions():
    """An encoding holding a module (or a class, a function) would have counted everything that
    module reaches; only the encoding's own arrays count."""
    import types as _types

    from tasks.metrics.representation import held_bytes

    array = np.zeros(100, np.float32)
    module = _types.ModuleType("prh_test_holder")
    module.table = np.zeros(1000)  # a module's own arrays are not the encoding's

    class Kind:
        table = np.zeros(500)

    def fn():
        return None

    fn.table = np.zeros(300)
    holder = _types.SimpleNamespace(values=array, module=module, kind=Kind, fn=fn, obj=_types.SimpleNamespace(a=array))
    assert held_bytes(holder) == array.nbytes


def test_a_model_is_charged_for_its_grams_up_to_n_4096_and_not_beyond():
    """``expected_nbytes`` before any pair: one ``(N, N)`` Gram per kept layer while ``N`` is at most
    ``KEEP_GRAM_MAX_N`` (4096; the engine keeps Grams for ``N <= keep_gram_max_n``), none above."""
    rng = np.random.default_rng(0)
    at, above = (rng.standard_normal((n, 2)).astype(np.float32) for n in (4096, 4097))
    assert PreparedModel([at]).expected_nbytes == at.nbytes + 4096 * 4096 * 4
    assert PreparedModel([above]).expected_nbytes == above.nbytes
