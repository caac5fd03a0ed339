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
from tests.storage import test_catalog_pairing


def _publish_features(store, model, ids, layers):
    """As the pipeline publishes them: the catalog names the samples and widths (the cache's size check)."""
    manifest = test_catalog_pairing._publish_features(store, model, ids, layers)
    manifest["catalog"]["n_samples"] = len(ids)
    return manifest


@pytest.fixture
def zoo(tmp_path):
    """2 vision and 2 language models over partly different samples, one stored shuffled."""
    yield from _zoo(str(tmp_path / "store"))


def _zoo(url: str):
    clear_feature_cache()
    store = Store(url)
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


@pytest.fixture
def zoo_anywhere(store_url):
    """The zoo on a local folder and on the loopback S3 endpoint."""
    yield from _zoo(store_url)


def test_every_model_is_read_once_for_all_its_pairs_and_the_pairs_are_right(zoo_anywhere, monkeypatch):
    store, manifests, arrays = zoo_anywhere
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
    with shared_features(store.url, PAIRS):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        paired_features(store, manifests["vis1"], manifests["lang0"])
        assert [k[1] for k in pairing._CACHE._items] == ["vis1"]  # vis1 pushed vis0 out; lang0's last pair let it go
        paired_features(store, manifests["vis0"], manifests["lang1"])  # vis0's last pair: its rows only
        paired_features(store, manifests["vis1"], manifests["lang1"])
    assert reads == ["vis0", "lang0", "vis1", "lang1"]
    monkeypatch.setenv("PRH_FEATURE_CACHE_MB", "0")
    reads.clear()
    with shared_features(store.url, PAIRS):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        paired_features(store, manifests["vis0"], manifests["lang0"])
    assert reads == []
    monkeypatch.setenv("PRH_FEATURE_CACHE_MB", "lots")
    paired_features(store, manifests["vis0"], manifests["lang0"])  # outside a block it is not read
    with pytest.raises(ValueError, match="^PRH_FEATURE_CACHE_MB='lots' is not a number of MiB, 0 or more"):
        with shared_features(store.url, PAIRS):
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

    read_model, layer_files = pairing._read_model, pairing._local_layer_files
    assert load_bench("bench_zoo_pairing").main(["--vision", "2", "--language", "3", "--n", "40", "--layers", "2",
                                                 "--dim", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "zoo 2 vision x 3 language (6 pairs)" in out
    assert re.search(r"^\| per pair \| [\d.]+ \| 0 \| 12 \| [\d.]+ \|$", out, re.M)
    assert re.search(r"^\| shared \| [\d.]+ \| 5 \| 0 \| 1.00 \|$", out, re.M)  # each model read once, whole
    # its counting is undone after each measured pass (the first version patched the module on import)
    assert (pairing._read_model, pairing._local_layer_files) == (read_model, layer_files)


def test_a_model_bigger_than_the_budget_is_never_read_whole(zoo, monkeypatch):
    """The review: a model over the budget was read whole by each of its pairs, then dropped:
    twice the memory of reading its common rows, for the largest models."""
    store, manifests, _ = zoo
    reads = _reads(monkeypatch)
    monkeypatch.setenv("PRH_FEATURE_CACHE_MB", str(0.5 * 30 * 10 * 4 / 2**20))  # half a model
    with shared_features(store.url, PAIRS):
        for a in ("vis0", "vis1"):
            for b in ("lang0", "lang1"):
                paired_features(store, manifests[a], manifests[b])
    assert reads == []


def test_a_reused_pair_releases_its_models_and_a_pair_that_ends_last_keeps_nothing(zoo, monkeypatch):
    """The review: a pair whose alignment is stored never reads features, yet counted: its models
    were read whole for nothing and kept to the end of the stage. A thread's whole read that a
    later pair had meanwhile made the last was kept for no one."""
    store, manifests, _ = zoo
    reads = _reads(monkeypatch)
    with shared_features(store.url, {"vis0": 2, "lang0": 1, "lang1": 1}):
        pairing.release_features(store, manifests["vis0"], manifests["lang0"])  # vis0 x lang0 is stored
        paired_features(store, manifests["vis0"], manifests["lang1"])  # vis0's last pair: its rows only
        assert reads == [] and not pairing._CACHE._items
    real = pairing._read_model

    def the_other_pair_meanwhile(store_, manifest):  # another thread's pair of vis0 runs while this one reads
        assert paired_features(store, manifests["vis0"], manifests["lang1"]).sample_ids
        return real(store_, manifest)

    monkeypatch.setattr(pairing, "_read_model", the_other_pair_meanwhile)
    with shared_features(store.url, {"vis0": 2, "lang0": 1, "lang1": 1}):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        assert not pairing._CACHE._items  # nothing left for a pair that will never come


def test_a_layer_missing_samples_is_refused_alike_whether_read_whole_or_not(tmp_path):
    """The review: read whole, a layer lacking a sample its layer 0 has failed the pair; read for the
    common rows, it passed when the other model lacked that sample too: the outcome depended on
    how many pairs the model had."""
    from storage import layout
    from storage.features import FeatureError, layer_table
    from storage.store import table_to_parquet_bytes

    clear_feature_cache()
    store = Store(str(tmp_path / "store"))
    rng = np.random.default_rng(3)
    ids = [f"s{i}" for i in range(10)]
    manifests = {"b": _publish_features(store, "b", ids[:9], [rng.normal(size=(9, 3)).astype(np.float32)])}
    a = _publish_features(store, "a", ids, [rng.normal(size=(10, 3)).astype(np.float32)] * 2)
    key = a["key"]
    # layer 1 of a lacks s9, which b lacks too; then (the sharing hunt) layer 1 holding as many rows,
    # one id swapped (s9 for zzz): refused read whole, it passed read for the common rows
    for layer_ids in (ids[:9], ids[:9] + ["zzz"]):
        store.fs.pipe(store.path(f"{key}/{layout.layer_file(1)}"), table_to_parquet_bytes(
            layer_table("a", "fv-a", 1, layer_ids, rng.normal(size=(len(layer_ids), 3)).astype(np.float32))))
        message = (rf"layer 1 .*{len(layer_ids)} samples, its model's layer 0 holds 10 \(missing e.g. s9; the model's layers "
                   r"must hold the same samples\)")
        with pytest.raises(FeatureError, match=message):
            paired_features(store, a, manifests["b"])
        with pytest.raises(FeatureError, match=message):
            with shared_features(store.url, {"a": 2, "b": 2}):
                paired_features(store, a, manifests["b"])
    clear_feature_cache()


def test_a_retried_pair_counts_once(zoo, monkeypatch):
    """The cache hunt: align_pair retries (transient errors); each retry took again and counted
    its models off twice, so their later pairs found them gone and read their files."""
    store, manifests, _ = zoo
    with shared_features(store.url, {"vis0": 2, "lang0": 1, "lang1": 1}):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        paired_features(store, manifests["vis0"], manifests["lang0"])  # the same pair, retried
        assert pairing._CACHE._left[(store.url, "vis0")] == 1 and [k[1] for k in pairing._CACHE._items] == ["vis0"]
        paired_features(store, manifests["vis0"], manifests["lang1"])
        assert not pairing._CACHE._items


def test_a_pair_waiting_for_another_threads_read_reads_nothing_whole_when_no_pair_is_left(zoo, monkeypatch):
    """The cache hunt: pair A read a model whole while pair B waited for that read and pair C, the
    last, read its rows; A kept nothing (no pair left), and B then read the whole model again."""
    import threading
    import time

    store, manifests, _ = zoo
    reads, real, waiting = [], pairing._read_model, []

    def meanwhile(store_, manifest):
        reads.append(manifest["catalog"]["model"])
        if len(reads) == 1:  # A's read of vis0: B arrives and waits for it, C runs to its end
            waiting.append(threading.Thread(target=paired_features, args=(store, manifests["vis0"], manifests["lang1"])))
            waiting[0].start()
            while pairing._CACHE._left[(store.url, "vis0")] != 1:
                time.sleep(0.01)
            time.sleep(0.2)  # B is now blocked on the version's read
            paired_features(store, manifests["vis0"], manifests["vis1"])
        return real(store_, manifest)

    monkeypatch.setattr(pairing, "_read_model", meanwhile)
    with shared_features(store.url, {"vis0": 3, "lang0": 1, "lang1": 1, "vis1": 1}):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        waiting[0].join()
        assert not pairing._CACHE._items
    assert reads == ["vis0"]


class _Derived:
    """A stand-in for a prepared model: its size may grow after it is kept (encodings added)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def _builder(built: list, nbytes: int = 1000):
    def build():
        built.append(1)
        return _Derived(nbytes)
    return build


def test_work_derived_from_a_model_is_built_once_for_its_pairs_and_let_go_by_the_last(zoo):
    """kept_for_later_pairs: what a pair computes from a model's features (its prepared layers,
    Grams, neighbour lists) is handed to the model's later pairs over the same samples, not
    computed again (DESIGN: once per model and layer across partners), and let go by the last."""
    from storage.pairing import kept_for_later_pairs

    store, manifests, _ = zoo
    built, other = [], []
    with shared_features(store.url, {"vis0": 3, "lang0": 1, "lang1": 1, "vis1": 1}):
        got = []
        for partner in ("lang0", "lang1", "vis1"):
            paired_features(store, manifests["vis0"], manifests[partner])
            got.append(kept_for_later_pairs(store, manifests["vis0"], ("prepared", "same samples"), _builder(built)))
            if partner == "lang0":  # another sample set is another item
                kept_for_later_pairs(store, manifests["vis0"], ("prepared", "other samples"), _builder(other))
                kept_for_later_pairs(store, manifests["vis0"], ("prepared", "other samples"), _builder(other))
        assert len(built) == 1 and got[0] is got[1] is got[2] and len(other) == 1
        # the last pair let it go, and the other sample set's item with it (the sharing hunt: kept to the block's end)
        assert not [k for k in pairing._CACHE._items if k[1] == "vis0"]
    assert not pairing._CACHE._items and not pairing._CACHE._left
    built.clear()
    for _ in range(2):  # outside a block: built for each pair, nothing kept
        paired_features(store, manifests["vis0"], manifests["lang0"])
        kept_for_later_pairs(store, manifests["vis0"], ("prepared", "same samples"), _builder(built))
    assert len(built) == 2 and not pairing._CACHE._items


def test_derived_work_counts_in_the_budget_as_it_grows(zoo, monkeypatch):
    """The sharing hunt: a prepared model was admitted at its size before its Grams (50-100x
    smaller), then its growth made the next look drop every item by age, the arrays the next pair
    wanted among them (read whole again). An item is admitted by what it will hold
    (``expected_nbytes``), and one that grew past the budget goes first, alone."""
    from storage.pairing import kept_for_later_pairs

    store, manifests, _ = zoo
    reads = _reads(monkeypatch)
    monkeypatch.setenv("PRH_FEATURE_CACHE_MB", str(5000 / 2**20))  # 5000 bytes: vis0's arrays and a small item
    built = []
    with shared_features(store.url, {"vis0": 4, "lang0": 1, "lang1": 1, "vis1": 1, "x": 1}):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        item = kept_for_later_pairs(store, manifests["vis0"], ("p",), _builder(built))
        assert "p" in [k[-1] for k in pairing._CACHE._items]
        item.nbytes = 6000  # its encodings grew past the budget: let go at the next look, alone
        paired_features(store, manifests["vis0"], manifests["lang1"])
        assert reads == ["vis0"] and [k[1] for k in pairing._CACHE._items] == ["vis0"]  # the arrays stayed
        assert kept_for_later_pairs(store, manifests["vis0"], ("p",), _builder(built)) is not item and len(built) == 2
        paired_features(store, manifests["vis0"], manifests["vis1"])
        kept_for_later_pairs(store, manifests["vis0"], ("big",), _builder(built, 6000))  # too big to keep at all
        expecting = _Derived(100)
        expecting.expected_nbytes = 6000  # small now, too big once used: not kept either
        kept_for_later_pairs(store, manifests["vis0"], ("grows",), lambda: (built.append(1), expecting)[1])
        assert not [k for k in pairing._CACHE._items if k[-1] in ("big", "grows")]
    assert len(built) == 4 and not pairing._CACHE._items


def test_a_failing_build_leaves_nothing_behind_and_pairs_not_coming_let_go(zoo):
    """The sharing hunt: a build that raised left its entry in the cache's building table past the
    block (and past clear_feature_cache); the pairs of a model whose extraction failed kept their
    partners' items to the block's end."""
    from storage.pairing import kept_for_later_pairs, pairs_not_coming

    store, manifests, _ = zoo

    def failing():
        raise MemoryError("no room")

    with shared_features(store.url, {"vis0": 3, "lang0": 1, "lang1": 1, "lang9": 1}):
        paired_features(store, manifests["vis0"], manifests["lang0"])
        with pytest.raises(MemoryError):
            kept_for_later_pairs(store, manifests["vis0"], ("p",), failing)
        assert not pairing._CACHE._building
        kept_for_later_pairs(store, manifests["vis0"], ("p",), lambda: _Derived(10))
        paired_features(store, manifests["vis0"], manifests["lang1"])
        assert [k[1] for k in pairing._CACHE._items] == ["vis0", "vis0"]
        pairs_not_coming(store.url, {"vis0": 1, "lang9": 1})  # lang9 failed: its pair with vis0 never runs
        assert not pairing._CACHE._items and (store.url, "vis0") not in pairing._CACHE._left


def test_two_threads_asking_for_the_same_derived_work_wait_for_one_build(zoo):
    import threading
    import time

    from storage.pairing import kept_for_later_pairs

    store, manifests, _ = zoo
    built, got = [], []

    def slow():
        # the build lasts until the other thread asks (both ask at once, whatever the load: a
        # fixed 0.3 s let the second thread's pairing on a busy machine start after it); 10 s
        # at most, so that a cache that does not make it wait fails by two builds, not a hang
        built.append(1)
        deadline = time.monotonic() + 10
        while not any(b.waiting for b in pairing._CACHE._building.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return _Derived(10)

    def pair(partner):
        paired_features(store, manifests["vis0"], manifests[partner])
        got.append(kept_for_later_pairs(store, manifests["vis0"], ("p",), slow))

    with shared_features(store.url, {"vis0": 2, "lang0": 1, "lang1": 1}):
        threads = [threading.Thread(target=pair, args=(partner,)) for partner in ("lang0", "lang1")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(built) == 1 and got[0] is got[1]
        assert not pairing._CACHE._items and not pairing._CACHE._building
