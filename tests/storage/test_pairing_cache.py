"""Within storage.pairing.shared_features (the pipeline's alignment stage), each model's feature
version is read once per process and shared by its pairs: a zoo of V × L pairs read 2·V·L
models' files before. Outside it, a pair reads its common rows only, as before."""

from __future__ import annotations

import re

import numpy as np
import pytest

import storage.pairing as pairing
from storage.pairing import clear_feature_cache, paired_features, shared_features
from storage.store import Store
from tests.storage.test_catalog_pairing import _publish_features


@pytest.fixture
def zoo(tmp_path):
    """2 vision and 2 language models over partly different samples, one stored shuffled."""
    clear_feature_cache()
    store = Store(str(tmp_path / "store"))
    rng = np.random.default_rng(1)
    manifests, arrays = {}, {}
    for i, model in enumerate(["vis0", "vis1", "lang0", "lang1"]):
        ids = [f"s{j:03d}" for j in range(i, 30 + i)]
        layers = [rng.normal(size=(30, w)).astype(np.float32) for w in (4, 6)]
        order = rng.permutation(30) if model == "lang1" else np.arange(30)
        manifests[model] = _publish_features(store, model, [ids[k] for k in order], [x[order] for x in layers])
        arrays[model] = dict(zip(ids, np.concatenate(layers, axis=1)))
    yield store, manifests, arrays
    clear_feature_cache()


PAIRS = {"vis0": 2, "vis1": 2, "lang0": 2, "lang1": 2}


def _reads(monkeypatch) -> list[str]:
    """The models read whole (into the cache)."""
    reads, real = [], pairing._read_model

    def counted(store, manifest):
        reads.append(manifest["catalog"]["model"])
        return real(store, manifest)

    monkeypatch.setattr(pairing, "_read_model", counted)
    return reads


def test_every_model_is_read_once_for_all_its_pairs_and_the_pairs_are_right(zoo, monkeypatch):
    store, manifests, arrays = zoo
    reads = _reads(monkeypatch)
    results = {}
    for shared in (True, False):
        with shared_features(store.url, PAIRS) if shared else __import__("contextlib").nullcontext():
            for a in ("vis0", "vis1"):
                for b in ("lang0", "lang1"):
                    pair = paired_features(store, manifests[a], manifests[b])
                    assert pair.sample_ids == sorted(set(arrays[a]) & set(arrays[b]))
                    assert (pair.only_a, pair.only_b) == (30 - len(pair.sample_ids),) * 2
                    for model, layers in ((a, pair.xs), (b, pair.ys)):
                        want = np.stack([arrays[model][i] for i in pair.sample_ids])
                        np.testing.assert_array_equal(np.concatenate(layers, axis=1), want)
                    results.setdefault((a, b), []).append(pair)
                    pair.xs[0][0, 0] = 99.0  # the caller's own arrays: changing them changes nothing stored
        if shared:
            assert sorted(reads) == ["lang0", "lang1", "vis0", "vis1"]  # each once
            assert not pairing._CACHE._items and not pairing._CACHE._left  # all gone after the last pair
    assert len(reads) == 4  # outside the block nothing is read whole
    for shared_pair, direct_pair in results.values():
        assert shared_pair.sample_ids == direct_pair.sample_ids and shared_pair.only_a == direct_pair.only_a
        for x, y in zip(shared_pair.xs[1:] + shared_pair.ys, direct_pair.xs[1:] + direct_pair.ys):
            np.testing.assert_array_equal(x, y)


def test_the_cache_keeps_at_most_its_budget_and_zero_turns_it_off(zoo, monkeypatch):
    store, manifests, _ = zoo
    reads = _reads(monkeypatch)
    one_model = pairing._read_model(store, manifests["vis0"]).nbytes
    reads.clear()
    monkeypatch.setenv("PRH_FEATURE_CACHE_MB", str(2.5 * one_model / 2**20))  # room for two models
    with shared_features(store.url, {"vis0": 3, "vis1": 2, "lang0": 5}):
        for a, b in (("vis0", "lang0"), ("vis1", "lang0"), ("vis0", "lang0"), ("vis1", "lang0"), ("vis0", "lang0")):
            paired_features(store, manifests[a], manifests[b])
    # vis1 pushed vis0 out (least recently used); vis1's last pair found it; vis0's last read it again
    assert reads == ["vis0", "lang0", "vis1", "vis0"]
    monkeypatch.setenv("PRH_FEATURE_CACHE_MB", "0")
    reads.clear()
    with shared_features(store.url, PAIRS):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        paired_features(store, manifests["vis0"], manifests["lang0"])
    assert reads == []
    monkeypatch.setenv("PRH_FEATURE_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="^PRH_FEATURE_CACHE_MB='lots' is not a number of MiB, 0 or more"):
        paired_features(store, manifests["vis0"], manifests["lang0"])


def test_cached_layers_cannot_be_changed_in_place(zoo):
    store, manifests, _ = zoo
    features = pairing._read_model(store, manifests["vis0"])
    with pytest.raises(ValueError, match="read-only"):
        features.layers[0][0, 0] = 1.0


def test_a_version_published_again_with_other_bytes_is_read_again(zoo, monkeypatch):
    store, manifests, _ = zoo
    reads = _reads(monkeypatch)
    with shared_features(store.url, {"vis0": 3, "lang0": 3}):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        assert store.unpublish(manifests["vis0"]["key"])
        rng = np.random.default_rng(9)
        new = _publish_features(store, "vis0", [f"s{j:03d}" for j in range(30)], [rng.normal(size=(30, 4)).astype(np.float32)])
        pair = paired_features(store, new, manifests["lang0"])
    assert reads == ["vis0", "lang0", "vis0"] and len(pair.xs) == 1


def test_the_zoo_pairing_benchmark_runs_at_ci_size(capsys):
    """bench/bench_zoo_pairing.py compares both paths' arrays on every pair and prints its table."""
    from tests.bench_scripts import load_bench

    assert load_bench("bench_zoo_pairing").main(["--vision", "2", "--language", "3", "--n", "40", "--layers", "2",
                                                 "--dim", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "zoo 2 vision x 3 language (6 pairs)" in out
    assert re.search(r"^\| per pair \| [\d.]+ \| 12 \| [\d.]+ \|$", out, re.M) and "| shared |" in out
