"""A local store's file views read the files of one schema fingerprint together (bound from the
first file of each group, so that a query or a view over them does not read every footer again),
after every footer was bound once when the catalog opened. The views must hold what the files
hold: the references here read each file on its own with pyarrow and take the lineage from the
manifests, not from the catalog."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage import layout
from storage.catalog import _EMPTY_VIEWS, connect, query
from storage.export import export_catalog
from storage.features import layer_tables
from storage.store import MANIFEST, Store
from tests.storage.catalog_store import DATASET, build_catalog_store

FILE_VIEWS = {"features": (layout.FEATURES, None), "alignment_all": (layout.ALIGNMENT, layout.SCORES_FILE),
              "alignment_best_all": (layout.ALIGNMENT, layout.BEST_FILE)}


def _rewrite_manifest(store: Store, key: str, change) -> None:
    manifest = json.loads(store.read_bytes(f"{key}/{MANIFEST}"))
    change(manifest)
    store.write_json(f"{key}/{MANIFEST}", manifest)


def _mixed_store(root) -> Store:
    """The catalog test store plus: an old ``best.parquet`` without the bootstrap columns nor
    ``unit`` and without fingerprints, published before the others' files; a feature version whose
    ``layer`` is int32 (a second fingerprint among the layer files)."""
    store = build_catalog_store(str(root))
    [(first, _)] = list(store.manifests(layout.ALIGNMENT))[:1]
    best = store.read_table(f"{first}/{layout.BEST_FILE}").drop_columns(["ci_low", "ci_high", "bootstrap", "unit"])
    for column, value in (("alignment_version", "al-old"), ("model_b", "lm-old")):
        best = best.set_column(best.schema.get_field_index(column), column, pa.array([value] * best.num_rows))
    key = layout.alignment_key(DATASET, best.column("model_a")[0].as_py(), "lm-old", "al-old")
    store.publish(key, {layout.BEST_FILE: best},
                  {"kind": "alignment", "lineage": {"features": {best.column("model_a")[0].as_py(): "fv-a", "lm-old": "fv-old"}}})
    _rewrite_manifest(store, key, lambda m: [entry.pop("schema", None) for entry in m["files"].values()])
    ids = [f"s{i:02d}" for i in range(8)]
    vectors = [np.random.default_rng(3).normal(size=(8, d)).astype(np.float32) for d in (3, 5)]
    tables = {name: t.set_column(2, "layer", t.column("layer").cast(pa.int32()))
              for name, t in layer_tables("lm-int32", "fv-int32", ids, vectors).items()}
    store.publish(layout.features_key(DATASET, "lm-int32", "fv-int32"), tables,
                  {"kind": "features", "catalog": {"model": "lm-int32", "feature_version": "fv-int32"}})
    return store


def _file_rows(store: Store, view: str) -> list[tuple]:
    """Every row of the view's files, each file read on its own (pyarrow), in the columns of
    ``_EMPTY_VIEWS[view]`` (a column a file lacks: None; ``unit`` None: ``'sample'``), sorted."""
    prefix, name = FILE_VIEWS[view]
    columns = [c.split(" ", 1)[0] for c in _EMPTY_VIEWS[view].split(", ")]
    rows = []
    for key, manifest in store.manifests(prefix):
        for file in sorted(manifest["files"]):
            if not file.endswith(".parquet") or (name is not None and file != name):
                continue
            for row in pq.read_table(store.path(f"{key}/{file}")).to_pylist():
                values = {c: row.get(c) for c in columns}
                if view == "features":
                    values["dataset_version"] = key.split("/")[1]
                if "unit" in values and values["unit"] is None:
                    values["unit"] = "sample"
                rows.append(tuple(json.dumps(v) if isinstance(v, list) else v for v in values.values()))
    return sorted(rows, key=repr)


def _view_rows(con, view: str) -> list[tuple]:
    columns = [c.split(" ", 1)[0] for c in _EMPTY_VIEWS[view].split(", ")]
    if view == "features":
        columns.append("dataset_version")
    rows = query(con, f"select {', '.join(columns)} from {view}").to_pylist()
    return sorted((tuple(json.dumps(v) if isinstance(v, list) else v for v in r.values()) for r in rows), key=repr)


def test_local_views_hold_every_files_rows_read_one_by_one(tmp_path):
    store = _mixed_store(tmp_path / "store")
    con = connect(store)
    for view in FILE_VIEWS:
        expected = _file_rows(store, view)
        assert expected and _view_rows(con, view) == expected, view
    old = query(con, "select count(*) n, count(ci_low) c, min(unit) u from alignment_best_all "
                     "where alignment_version = 'al-old'").to_pylist()
    assert old == [{"n": 2, "c": 0, "u": "sample"}]
    # the local views read by schema fingerprint (features: two groups; best: one, and the old files)
    sql = dict(con.execute("select view_name, sql from duckdb_views() where not internal").fetchall())
    assert sql["features"].count("union_by_name = false") == 2
    assert "union_by_name = true" in sql["alignment_best_all"] and "union_by_name = false" in sql["alignment_best_all"]


def test_a_file_whose_schema_is_not_its_fingerprint_is_read_with_all_its_columns(tmp_path):
    """A best file rewritten by hand with one more column, its manifest's size and digest updated
    and the fingerprint of the files beside it kept: the view shows that column (as one read of
    every file by name does), not the columns of its group's first file only."""
    store = build_catalog_store(str(tmp_path / "store"))
    keys = [key for key, _ in store.manifests(layout.ALIGNMENT)]
    last = f"{keys[-1]}/{layout.BEST_FILE}"
    table = store.read_table(last)
    table = table.append_column("reviewer_note", pa.array(["checked"] * table.num_rows))
    path = store.path(last)
    pq.write_table(table, path)
    data = open(path, "rb").read()

    def listed(manifest):
        manifest["files"][layout.BEST_FILE].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    _rewrite_manifest(store, keys[-1], listed)
    con = connect(store)
    notes = query(con, "select alignment_version, reviewer_note from alignment_best_all order by all").to_pylist()
    assert {(r["alignment_version"], r["reviewer_note"]) for r in notes} == (
        {(k.split("/")[-1], None) for k in keys[:-1]} | {(keys[-1].split("/")[-1], "checked")})
    assert len(notes) == 2 * len(keys)


def test_lineage_text_reaches_the_views_exactly_in_the_catalog_and_its_export(tmp_path):
    """The lineage the alignment views join (feature versions, published_at) is written into the
    views; any text a manifest holds comes back as written, a published_at that is not a time is NULL."""
    store = build_catalog_store(str(tmp_path / "store"))
    keys = [key for key, _ in store.manifests(layout.ALIGNMENT)]
    odd = {keys[0]: " fv-é'\"\\\n😀 [x] %\t", keys[1]: "fv-' OR ''='"}
    times = {keys[0]: "2026-03-04T05:06:07.123456+02:00", keys[1]: "not a time"}
    for key in keys[:2]:
        def change(manifest, key=key):
            model_a = key.split("/")[2].split("__")[0]
            manifest["lineage"]["features"][model_a] = odd[key]
            manifest["published_at"] = times[key]
        _rewrite_manifest(store, key, change)
    expected = {}  # version -> (feature version of model_a, of model_b, published_at)
    for key, published in zip(keys[:2], (datetime(2026, 3, 4, 3, 6, 7, 123456, tzinfo=timezone.utc), None)):
        model_a, model_b = key.split("/")[2].split("__")
        features = store.manifest(key)["lineage"]["features"]
        expected[key.split("/")[-1]] = (features[model_a], features[model_b], published)
    assert [v[0] for v in expected.values()] == [odd[keys[0]], odd[keys[1]]]
    export = export_catalog(store, tmp_path / "catalog.duckdb").path
    fresh = duckdb.connect(str(export), read_only=True)
    versions = ", ".join(f"'{v}'" for v in expected)
    for con, run in ((connect(store), query), (fresh, lambda c, sql: c.sql(sql).to_arrow_table())):
        for view in ("alignment_all", "alignment_best_all"):
            rows = run(con, f"select distinct alignment_version, feature_version_a, feature_version_b, published_at "
                            f"from {view} where alignment_version in ({versions})").to_pylist()
            assert {r["alignment_version"]: (r["feature_version_a"], r["feature_version_b"], r["published_at"])
                    for r in rows} == expected, view
            assert len(rows) == 2, view
