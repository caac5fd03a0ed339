"""`prh verify` on a manifest whose file listing was edited: a file its readers open by name but
the listing leaves out (a feature version's layer, a pair's best rows), or a file in the version's
folder that the listing does not name. Found on a live store: with `layer-003.parquet` dropped
from a feature manifest, `prh verify` said "all match their manifests", the catalog's `features`
view showed 3 of the model's 4 layers, and a run aligned all 4 (pairing opens `layer-<i>` for i
below the catalog record's `n_layers`), reading the unlisted file unchecked."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pytest

from flows.cli import main
from storage.catalog import connect, query
from storage.store import MANIFEST, Store
from storage.verify import DamagedVersion, checked_for_reuse, verify_store

FEATURES = "features/d1/m/0123456789abcdef"
OTHER = "features/d1/n/fedcba9876543210"


def _layer(model: str, layer: int, n: int = 6) -> pa.Table:
    """A hand-built layer file: ``n`` samples, 2-wide vectors."""
    vectors = pa.FixedSizeListArray.from_arrays(pa.array([float(layer * 100 + i) for i in range(2 * n)], pa.float32()), 2)
    return pa.table({"model": [model] * n, "feature_version": ["v"] * n, "layer": pa.array([layer] * n, pa.int16()),
                     "sample_id": [f"s{i}" for i in range(n)], "vector": vectors})


def _publish_features(store: Store, key: str, layers: int) -> dict:
    files = {f"layer-{i:03d}.parquet": _layer(key.split("/")[2], i) for i in range(layers)}
    catalog = {"model": key.split("/")[2], "feature_version": key.rsplit("/", 1)[-1], "dataset_version": "d1",
               "n_layers": layers, "n_samples": 6}
    return store.publish(key, files, {"kind": "features", "catalog": catalog}).manifest


def _edit_manifest(store: Store, key: str, edit) -> None:
    manifest = store.read_json(f"{key}/{MANIFEST}")
    edit(manifest)
    store.fs.pipe(store.path(f"{key}/{MANIFEST}"), json.dumps(manifest).encode())
    store.fs.invalidate_cache()


def _files(store: Store) -> set[str]:
    return set(store.sizes("features"))


def test_a_layer_dropped_from_a_feature_manifest_is_named_and_nothing_else_goes(store_url, capsys, caplog):
    store = Store(store_url)
    _publish_features(store, FEATURES, 3)
    _publish_features(store, OTHER, 2)
    _edit_manifest(store, FEATURES, lambda m: m["files"].pop("layer-002.parquet"))
    before = _files(store)

    found = {check.key: check for check in verify_store(store)}
    assert found[OTHER].ok
    [problem] = found[FEATURES].problems
    assert "layer-002.parquet" in problem and "3 layers" in problem, problem
    assert main(["verify", "--store", store_url]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {FEATURES}: " in out and "layer-002.parquet" in out and "1 damaged" in out, out
    assert _files(store) == before  # reporting removes nothing

    # a run does not compute from it (pairing would open layer-002 by name, unchecked)
    with pytest.raises(DamagedVersion, match="layer-002.parquet"):
        checked_for_reuse(store, FEATURES, store.manifest(FEATURES), "the stored features of model 'm'")
    # the catalog leaves the whole version out, naming it, rather than show 2 of its 3 layers
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        rows = query(connect(store), "select model, count(*) n from features group by model order by model").to_pylist()
    assert rows == [{"model": "n", "n": 12}]
    assert FEATURES in caplog.text and "layer-002.parquet" in caplog.text

    assert main(["verify", "--store", store_url, "--remove-damaged"]) == 1
    assert f"removed {FEATURES}" in capsys.readouterr().out
    assert store.manifest(FEATURES) is None and store.manifest(OTHER) is not None
    assert _files(store) == {key for key in before if key.startswith(OTHER + "/")}


def test_a_file_the_listing_no_longer_names_is_named(tmp_path, capsys):
    """The listing and the layer count both edited down (3 to 2): the version reads as a 2-layer
    model everywhere, but its folder still holds the third layer, which no manifest names."""
    url = str(tmp_path / "store")
    store = Store(url)
    _publish_features(store, FEATURES, 3)

    def edit(manifest: dict) -> None:
        manifest["files"].pop("layer-002.parquet")
        manifest["catalog"]["n_layers"] = 2

    _edit_manifest(store, FEATURES, edit)
    [check] = verify_store(store)
    assert check.problems == ["layer-002.parquet: in the version's folder but not in its manifest's listing "
                              "(the manifest was edited, or the file added since it was published)"]
    assert [c.ok for c in verify_store(store, quick=True)] == [False]  # no file read to tell it


@pytest.mark.parametrize("key, files, dropped", [
    ("alignment/d1/a__b/0123456789abcdef", ("scores.parquet", "best.parquet"), "best.parquet"),
    ("alignment/d1/a__b/0123456789abcdef", ("scores.parquet", "best.parquet"), "scores.parquet"),
    ("datasets/0123456789abcdef", ("samples.parquet",), "samples.parquet"),
])
def test_a_pair_or_dataset_manifest_without_its_own_file_is_damaged(tmp_path, key, files, dropped):
    store = Store(str(tmp_path / "store"))
    kind = "alignment" if key.startswith("alignment/") else "dataset"
    store.publish(key, {name: pa.table({"x": [1.0, 2.0]}) for name in files}, {"kind": kind, "catalog": {}})
    assert [c.ok for c in verify_store(store)] == [True]
    _edit_manifest(store, key, lambda m: m["files"].pop(dropped))
    [check] = verify_store(store)
    assert any(dropped in problem and "listing" in problem for problem in check.problems), check.problems


def test_what_prh_itself_leaves_beside_a_published_version_is_no_damage(tmp_path):
    """A killed writer's temporary file or claim attempt (hidden names, removed by `prh gc`) and
    shards under `_partial/` (a run killed after publishing, before removing them) are not files
    of the version: verify still passes it."""
    store = Store(str(tmp_path / "store"))
    _publish_features(store, FEATURES, 2)
    for name in (".layer-000.parquet.tmp-0f0f", "..publishing.tmp-1e1e", "_partial/shard-00000.parquet"):
        store.fs.makedirs(store.path(f"{FEATURES}/{name}").rsplit("/", 1)[0], exist_ok=True)
        store.fs.pipe(store.path(f"{FEATURES}/{name}"), b"leftover")
    store.fs.invalidate_cache()
    assert [(c.ok, c.problems) for c in verify_store(store)] == [(True, [])]


@pytest.mark.parametrize("n_layers", ["3", -1, 2.5, True, None])
def test_a_layer_count_that_is_no_count_is_damaged(tmp_path, n_layers):
    """Pairing opens `layer-<i>` for i below `catalog.n_layers`: text ("3", which int() reads),
    a fraction, a boolean or null there is an edit, not a count."""
    store = Store(str(tmp_path / "store"))
    _publish_features(store, FEATURES, 3)
    _edit_manifest(store, FEATURES, lambda m: m["catalog"].__setitem__("n_layers", n_layers))
    [check] = verify_store(store)
    assert not check.ok and "n_layers" in check.problems[0], check.problems


def test_a_file_of_another_name_beside_intact_files_is_named_not_damage(tmp_path, capsys):
    """A sync tool's conflict copy or a note left in a version's folder: its listed files are intact
    and are what runs and the catalog read, so verify names the file and passes the version;
    `--remove-damaged` removes nothing for it (it had marked the version damaged and removed it)."""
    url = str(tmp_path / "store")
    store = Store(url)
    _publish_features(store, FEATURES, 2)
    for name in ("layer-000.sync-conflict-20261207.parquet", "notes.txt"):
        store.fs.pipe(store.path(f"{FEATURES}/{name}"), b"not prh's")
    store.fs.invalidate_cache()
    before = _files(store)
    [check] = verify_store(store)
    assert (check.ok, check.unlisted) == (True, ["layer-000.sync-conflict-20261207.parquet", "notes.txt"])
    assert main(["verify", "--store", url, "--remove-damaged"]) == 0
    out = capsys.readouterr().out
    assert f"note {FEATURES}: " in out and "notes.txt" in out and "all match their manifests" in out, out
    assert _files(store) == before
