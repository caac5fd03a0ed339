"""Features with NaN/Inf are never published: a tiny causal LM whose embedding of one letter is
scaled by 1e38 overflows on exactly the captions with that letter; extraction stops at the shard,
stores nothing and names the model, the layer, the count of bad rows and some sample ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storage import layout
from storage.shards import PARTIAL, write_shard
from storage.store import Store
from tasks.dataset_task import publish_dataset
from tasks.extract import NonFiniteFeaturesError
from tasks.extract.finite import check_finite
from tasks.extract.spec import ModelSpec
from tasks.extract_task import extract_to_store, feature_version
from tasks.params import DatasetParams


def test_check_finite_names_layer_rows_and_ids():
    ok = np.zeros((8, 3), np.float32)
    bad = ok.copy()
    bad[[1, 4, 5, 6, 7, 2], 0] = [np.nan, np.inf, -np.inf, np.nan, np.nan, np.nan]
    ids = [f"s{i}" for i in range(8)]
    check_finite("m", ["a", "b"], [ok, ok], ids)
    with pytest.raises(NonFiniteFeaturesError) as info:
        check_finite("m", ["a", "b", "c"], [ok, bad, bad[:, :2]], ids)
    err = info.value
    assert (err.model, err.layer, err.bad_rows, err.total_rows) == ("m", "b", 6, 8)
    assert err.sample_ids == ["s1", "s2", "s4", "s5", "s6"] and err.bad_layers == {"b": 6, "c": 6}
    assert "layer 'b' has NaN/Inf values in 6 of 8 rows" in str(err) and "'s1'" in str(err)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    store_url = str(tmp_path_factory.mktemp("store"))
    manifest = publish_dataset(DatasetParams(kind="openmoji", n=40, image_size=16), store_url)
    table = Store(store_url).read_table(f"{manifest['key']}/{layout.SAMPLES_FILE}", columns=["sample_id", "text"])
    return store_url, manifest, table.column("sample_id").to_pylist(), table.column("text").to_pylist()


def _overflowing_lm(path, letter: str) -> None:
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=384, n_positions=256,
                                       bos_token_id=1, eos_token_id=1))
    tok = ByT5Tokenizer()
    with torch.no_grad():
        model.transformer.wte.weight[tok.convert_tokens_to_ids(letter)] *= 1e38  # overflows in the first block
    model.save_pretrained(path)
    tok.save_pretrained(path)


def test_overflowing_model_is_not_published(dataset, tmp_path):
    store_url, manifest, ids, texts = dataset
    present = {c: [i for i, t in zip(ids, texts) if c in t] for c in "abcdefghijklmnopqrstuvwxyz"}
    letter = min((c for c, rows in present.items() if 2 <= len(rows) < len(ids) // 2), key=lambda c: (len(present[c]), c))
    bad_ids = present[letter]
    _overflowing_lm(tmp_path / "lm", letter)
    spec = ModelSpec(name="overflow-lm", loader="hf", id=str(tmp_path / "lm"), modality="language", max_length=128)

    with pytest.raises(NonFiniteFeaturesError) as info:
        extract_to_store(store_url, manifest, spec, shard_size=len(ids))
    err = info.value
    assert err.model == "overflow-lm" and err.layer == "layer.01"
    assert err.bad_rows == len(bad_ids) and err.total_rows == len(ids)  # exactly the captions with that letter
    assert set(err.sample_ids) <= set(bad_ids) and len(err.sample_ids) == min(5, len(bad_ids))
    assert "overflow-lm" in str(err) and "not published" in str(err)
    key = layout.features_key(manifest["catalog"]["dataset_version"], spec.name,
                              feature_version(manifest["catalog"]["dataset_version"], spec))
    store = Store(store_url)
    assert store.manifest(key) is None
    assert not store.exists(f"{key}/{PARTIAL}/shard-00000.parquet")  # not even a partial shard


def test_non_finite_stored_shard_is_not_published(dataset):
    """A stored shard holding NaN (written by an older run) is refused at publish time."""
    store_url, manifest, ids, _ = dataset
    spec = ModelSpec(name="tiny-gpt", loader="random_hf", id="GPT2Config", modality="language",
                     config={"n_embd": 16, "n_layer": 1, "n_head": 2})
    dv = manifest["catalog"]["dataset_version"]
    key = layout.features_key(dv, spec.name, feature_version(dv, spec))
    layers = [np.zeros((len(ids), 16), np.float32) for _ in range(2)]
    layers[1][3, 5] = np.nan
    write_shard(Store(store_url), key, 0, layers, {})
    with pytest.raises(NonFiniteFeaturesError, match="layer 'layer.01' has NaN/Inf values in 1 of"):
        extract_to_store(store_url, manifest, spec, shard_size=len(ids))
    assert Store(store_url).manifest(key) is None
