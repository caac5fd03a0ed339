"""What the catalog's views hold after a store's history: the latest run's results
(``alignment_latest`` / ``alignment_best_latest``), the dataset version of each feature row,
times as ``TIMESTAMPTZ``, and rows written by an older prh (no ``unit`` column)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from storage import layout
from storage.catalog import _EMPTY_VIEWS, connect, query
from storage.export import export_catalog, open_catalog
from storage.features import layer_tables
from storage.store import Store
from tasks.report_source import select_run
from tests.storage.catalog_store import CAPTIONS, DATASET, MODELS, _alignment_rows, build_catalog_store

UTC = timezone.utc
PAIRS = [(a, b) for a in MODELS if MODELS[a][0] == "vision" for b in MODELS if MODELS[b][0] == "language"]
METRICS = ("mutual_knn", "cka")


def _publish_topk3(store: Store, pairs: list[tuple[str, str]]) -> list[str]:
    """Alignment versions of ``pairs`` with another ``topk`` (another version id each, as a run
    with other parameters publishes); returns their keys."""
    keys = []
    for a, b in pairs:
        version = f"topk3-{a}-{b}"
        tables = []
        for table in _alignment_rows(a, b, version, len(CAPTIONS)):
            params = [json.dumps({"topk": 3}) if m == "mutual_knn" else p
                      for m, p in zip(table.column("metric").to_pylist(), table.column("params").to_pylist())]
            tables.append(table.set_column(table.column_names.index("params"), "params", pa.array(params)))
        key = layout.alignment_key(DATASET, a, b, version)
        store.publish(key, {layout.SCORES_FILE: tables[0], layout.BEST_FILE: tables[1]},
                      {"kind": "alignment", "lineage": {"features": {a: f"fv-{a}", b: f"fv-{b}"}}})
        keys.append(key)
    return keys


def _record(store: Store, run_id: str, status: str, started: str, finished: str | None, keys: list[str]) -> None:
    store.write_json(layout.run_key(run_id), {"run_id": run_id, "status": status, "started_at": started,
                                              "finished_at": finished, "alignment_versions": keys})


def _keys_of(rows: list[dict]) -> set[str]:
    return {f"alignment/{r['dataset_version']}/{r['model_a']}__{r['model_b']}/{r['alignment_version']}" for r in rows}


def _check_current(con, keys: list[str]) -> None:
    """``alignment_best`` / ``alignment`` hold exactly the versions ``keys`` (one per pair): one
    row per metric × pair, and every layer pair of each of those rows."""
    best = query(con, "select * from alignment_best").to_pylist()
    assert _keys_of(best) == set(keys)
    pairs = [tuple(k.split("/")[2].split("__")) for k in keys]
    assert sorted((r["metric"], r["model_a"], r["model_b"]) for r in best) == sorted((m, a, b) for m in METRICS for a, b in pairs)
    scores = query(con, "select * from alignment").to_pylist()
    assert _keys_of(scores) == set(keys)
    expected = sorted((m, a, b, i, j) for m in METRICS for a, b in pairs for i in range(MODELS[a][2]) for j in range(MODELS[b][2]))
    assert sorted((r["metric"], r["model_a"], r["model_b"], r["layer_a"], r["layer_b"]) for r in scores) == expected


def _check_latest(con, keys: list[str], run_id: str) -> None:
    """The latest views hold exactly the alignment versions ``keys`` (of run ``run_id``): one best
    row per metric × pair, one row per metric × pair × layer pair; ``prh report`` picks that run."""
    pairs = [tuple(k.split("/")[2].split("__")) for k in keys]
    best = query(con, "select * from alignment_best_latest").to_pylist()
    assert _keys_of(best) == set(keys)
    assert sorted((r["metric"], r["model_a"], r["model_b"]) for r in best) == sorted((m, a, b) for m in METRICS for a, b in pairs)
    scores = query(con, "select * from alignment_latest").to_pylist()
    assert _keys_of(scores) == set(keys)
    expected = sorted((m, a, b, i, j) for m in METRICS for a, b in pairs for i in range(MODELS[a][2]) for j in range(MODELS[b][2]))
    assert sorted((r["metric"], r["model_a"], r["model_b"], r["layer_a"], r["layer_b"]) for r in scores) == expected
    assert select_run(con)["run_id"] == run_id  # the report's default run is the views' run


def test_the_latest_views_hold_the_latest_run_with_results_after_any_history(tmp_path):
    url = str(tmp_path / "store")
    store = build_catalog_store(url)  # run-0, run-1: COMPLETED, the four vision × language pairs
    first = sorted(k for k, _ in store.manifests(layout.ALIGNMENT))
    con = connect(url)
    _check_latest(con, first, "run-1")
    _check_current(con, first)

    second = _publish_topk3(store, PAIRS)  # a run with another topk: a second version of every pair
    _record(store, "run-topk3", "COMPLETED", "2026-01-05T00:00:00+00:00", "2026-01-05T00:10:00+00:00", second)
    con = connect(url)
    n = query(con, "select count(*) n, count(distinct (metric, model_a, model_b)) k from alignment_best_all").to_pylist()
    assert n == [{"n": 2 * len(METRICS) * len(PAIRS), "k": len(METRICS) * len(PAIRS)}]  # alignment_best_all keeps every version
    _check_latest(con, second, "run-topk3")
    _check_current(con, second)  # alignment_best: one row per metric x pair, the latest run's
    best = query(con, "select distinct params from alignment_best_latest where metric = 'mutual_knn'").to_pylist()
    assert best == [{"params": json.dumps({"topk": 3})}]

    # a nightly run with one broken model: FAILED, two pairs published -> its two pairs
    _record(store, "run-partly", "FAILED", "2026-01-06T00:00:00+00:00", "2026-01-06T00:10:00+00:00", first[:2])
    # later runs without results do not count: FAILED before publishing, crashed (killed before its
    # record listed its grid: a CRASHED record that lists one is a retry's, whose earlier attempt
    # completed, and counts), still running
    _record(store, "run-nothing", "FAILED", "2026-01-07T00:00:00+00:00", "2026-01-07T00:01:00+00:00", [])
    _record(store, "run-crashed", "CRASHED", "2026-01-08T00:00:00+00:00", None, [])
    con = connect(url)
    _check_latest(con, first[:2], "run-partly")
    # current: run-partly's two pairs, run-topk3's for the other two
    by_pair = {k.split("/")[2]: k for k in second} | {k.split("/")[2]: k for k in first[:2]}
    _check_current(con, list(by_pair.values()))

    exported = open_catalog(export_catalog(url, tmp_path / "catalog.duckdb").path)  # the exported file has the views
    for view in ("alignment_latest", "alignment_best_latest", "alignment", "alignment_best", "alignment_all",
                 "alignment_best_all"):
        sql = f"select * from {view} order by all"
        assert query(exported, sql).equals(query(con, sql)), view


def test_the_latest_run_is_the_last_to_finish_in_time_not_in_text(tmp_path):
    """Two runs whose records carry other UTC offsets: ``2026-01-02T01:00+05:00`` is 20:00 UTC on
    the 1st, before ``2026-01-01T21:00+00:00``; as text it sorted last."""
    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    keys = sorted(k for k, _ in store.manifests(layout.ALIGNMENT))
    _record(store, "run-0", "COMPLETED", "2026-01-01T00:00:00+00:00", "2026-01-01T21:00:00+00:00", keys[:1])
    _record(store, "run-1", "COMPLETED", "2026-01-02T00:30:00+05:00", "2026-01-02T01:00:00+05:00", keys[1:])
    con = connect(url)
    _check_latest(con, keys[:1], "run-0")


def test_features_name_their_dataset_version_and_join_samples_once(tmp_path):
    """A second dataset version holding the same sample ids (OpenMoji n=40 is a subset of n=60),
    with one model's features on it: the features ⋈ samples join on both ids gives one row per
    feature row, with that dataset's captions."""
    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    other = "ds-other-version"
    ids = [f"s{i:02d}" for i in range(4)]
    samples = pa.table({"dataset_version": [other] * 4, "sample_id": ids, "image_id": ids,
                        "text": [f"other caption {i}" for i in range(4)], "image": [b"x"] * 4})
    store.publish(layout.dataset_key(other), {layout.SAMPLES_FILE: samples},
                  {"kind": "dataset", "catalog": {"dataset_version": other, "name": "other", "n_samples": 4}})
    vectors = [np.arange(8, dtype=np.float32).reshape(4, 2)]
    store.publish(layout.features_key(other, "lm-small", "fv-lm-small-other"), layer_tables("lm-small", "fv-lm-small-other", ids, vectors),
                  {"kind": "features", "catalog": {"model": "lm-small", "feature_version": "fv-lm-small-other", "dataset_version": other}})
    con = connect(url)
    columns = [r["column_name"] for r in query(con, "describe features").to_pylist()]
    assert columns == [c.split(" ")[0] for c in _EMPTY_VIEWS["features"].split(", ")] + ["dataset_version"]
    by_version = {r["feature_version"]: r["d"] for r in
                  query(con, "select feature_version, list(distinct dataset_version) d from features group by all").to_pylist()}
    assert by_version == {**{f"fv-{m}": [DATASET] for m in MODELS}, "fv-lm-small-other": [other]}
    n_features = query(con, "select count(*) n from features").to_pylist()[0]["n"]
    joined = query(con, "select f.feature_version, s.text from features f join samples s using (dataset_version, sample_id)").to_pylist()
    assert len(joined) == n_features
    assert {r["text"] for r in joined if r["feature_version"] == "fv-lm-small-other"} == {f"other caption {i}" for i in range(4)}
    # on sample_id alone, each feature row of s00-s03 (17 layer files × 4 ids) meets two captions
    n_layer_files = sum(n_layers for _, _, n_layers, _ in MODELS.values()) + 1
    assert query(con, "select count(*) n from features f join samples s using (sample_id)").to_pylist()[0]["n"] == \
        n_features + n_layer_files * len(ids)


def test_an_empty_store_has_every_added_column():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        store = Store(str(Path(folder) / "store"))
        store.write_json(layout.run_key("r1"), {"run_id": "r1", "status": "RUNNING", "started_at": "2026-01-01T00:00:00+00:00"})
        con = connect(store)
        assert "dataset_version" in [r["column_name"] for r in query(con, "describe features").to_pylist()]
        for view in ("alignment_latest", "alignment_best_latest"):
            assert query(con, f"select * from {view}").num_rows == 0
            assert [r["column_name"] for r in query(con, f"describe {view}").to_pylist()] == \
                [r["column_name"] for r in query(con, f"describe {view.replace('_latest', '')}").to_pylist()]


def test_the_catalog_lists_only_its_views(tmp_path):
    """`SHOW TABLES`, `SHOW ALL TABLES`, `information_schema.tables` and `duckdb_views()` name
    the documented views and nothing else: the internal `_datasets_table`, `_models_table` and
    `_runs_table` (registered Arrow tables the metadata views read) were listed beside them. The
    metadata views still hold the stored rows, and the exported file has the same names."""
    url = str(tmp_path / "store")
    build_catalog_store(url)
    con = connect(url)
    views = {"datasets", "samples", "rejected_samples", "models", "features", "alignment", "alignment_best", "alignment_all",
             "alignment_best_all", "alignment_latest", "alignment_best_latest", "alignment_fdr", "runs", "models_current"}
    listed = {
        "show tables": {r["name"] for r in query(con, "show tables").to_pylist()},
        "show all tables": {r["name"] for r in query(con, "show all tables").to_pylist()},
        "information_schema": {r["table_name"] for r in query(con, "select table_name from information_schema.tables").to_pylist()},
        "duckdb_views": {r["view_name"] for r in query(con, "select view_name from duckdb_views() where not internal").to_pylist()},
    }
    assert listed == dict.fromkeys(listed, views)
    counts = query(con, "select (select count(*) from datasets) d, (select count(*) from models) m, "
                        "(select count(*) from runs) r, (select count(*) from models_current) c").to_pylist()[0]
    assert counts == {"d": 1, "m": len(MODELS), "r": 2, "c": len(MODELS)}
    export_catalog(url, tmp_path / "prh.duckdb")
    exported = open_catalog(tmp_path / "prh.duckdb")
    assert {r["name"] for r in query(exported, "show tables").to_pylist()} == views | {"prh_catalog"}


def test_a_catalog_without_runs_has_neither_runs_nor_a_view_computed_from_them(tmp_path):
    """``connect(runs=False)`` (the report at a run's end, which has its own record) reads no run
    record: ``runs`` and every view computed from it are left out, so a query naming one fails
    saying so, never an empty ``runs`` or ``alignment_best`` that looks like a store without
    history; the other views hold what the full catalog's hold."""
    import duckdb

    from storage.catalog import DERIVED_VIEWS, QueryError

    url = str(tmp_path / "store")
    build_catalog_store(url)
    full, lean = connect(url), connect(url, runs=False)
    left_out = {"runs", *DERIVED_VIEWS}
    assert {r["name"] for r in query(lean, "show tables").to_pylist()} == \
        {r["name"] for r in query(full, "show tables").to_pylist()} - left_out == \
        {"datasets", "samples", "rejected_samples", "models", "features", "alignment_all", "alignment_best_all"}
    for view in sorted(left_out):
        with pytest.raises(QueryError, match=f"{view} does not exist"):
            query(lean, f"select count(*) from {view}")
    for view in ("datasets", "models", "samples", "rejected_samples", "features", "alignment_all", "alignment_best_all"):
        assert query(lean, f"select * from {view} order by all").equals(query(full, f"select * from {view} order by all"))
    assert query(full, "select count(*) n from runs").to_pylist() == [{"n": 2}]  # the default: every run
    # every derived view reads runs (directly, or through alignment_best): none could be kept
    bare = connect(url, runs=False, read_only=False)
    for name, select in DERIVED_VIEWS.items():
        with pytest.raises(duckdb.CatalogException):
            bare.execute(f"CREATE VIEW {name} AS {select}")


@pytest.mark.parametrize("text, expected", [
    ("2026-01-01T00:00:00.000250+00:00", datetime(2026, 1, 1, 0, 0, 0, 250, tzinfo=UTC)),  # what prh writes (utc_now)
    ("2026-01-01T00:00:00+00:00", datetime(2026, 1, 1, tzinfo=UTC)),        # what prh wrote before (seconds)
    ("2026-01-01T05:30:00+05:30", datetime(2026, 1, 1, tzinfo=UTC)),        # another offset: the same moment
    ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
    ("2026-01-01 00:00:00.250", datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)),  # no offset: UTC
    ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
    ("yesterday", None), ("", None), (1767225600, None), (None, None),     # hand-edited: NULL, not an error
])
def test_times_are_utc_timestamps_and_unreadable_ones_null(tmp_path, text, expected):
    store = Store(str(tmp_path / "store"))
    store.write_json(layout.run_key("r1"), {"run_id": "r1", "status": "COMPLETED", "started_at": text, "finished_at": text})
    con = connect(store)
    assert query(con, "select started_at, finished_at from runs").to_pylist() == [{"started_at": expected, "finished_at": expected}]


def test_every_time_column_is_a_timestamptz_and_compares_with_now(tmp_path):
    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    _record(store, "run-now", "COMPLETED", datetime.now(UTC).isoformat(), None, [])
    con = connect(url)
    for view, column in (("runs", "started_at"), ("runs", "finished_at"), ("datasets", "published_at"), ("models", "published_at")):
        kind = query(con, f"select column_type from (describe {view}) where column_name = '{column}'").to_pylist()
        assert kind == [{"column_type": "TIMESTAMP WITH TIME ZONE"}], (view, column)
    recent = query(con, "select run_id from runs where started_at > now() - interval 7 day").to_pylist()
    assert recent == [{"run_id": "run-now"}]  # run-0 and run-1 started in January 2026
    took = query(con, "select epoch(finished_at - started_at) s from runs where run_id = 'run-0'").to_pylist()
    assert took == [{"s": 300.0}]  # 00:00 to 00:05 (catalog_store)
    published = query(con, "select min(published_at) t from models").to_pylist()[0]["t"]
    assert timedelta(0) <= datetime.now(UTC) - published < timedelta(hours=1)
    path = export_catalog(url, tmp_path / "catalog.duckdb").path
    exported = open_catalog(path)
    kind = query(exported, "select typeof(exported_at) t, typeof(started_at) s from prh_catalog, runs limit 1").to_pylist()
    assert kind == [{"t": "TIMESTAMP WITH TIME ZONE", "s": "TIMESTAMP WITH TIME ZONE"}]


def _without_unit(store: Store, key: str, version: str, model_b: str) -> str:
    """``key``'s alignment files as an older prh wrote them (no ``unit`` column), published as
    ``version`` of the pair with ``model_b``; returns the new key."""
    tables = {}
    for name in (layout.SCORES_FILE, layout.BEST_FILE):
        table = store.read_table(f"{key}/{name}").drop_columns(["unit"])
        for column, value in (("alignment_version", version), ("model_b", model_b)):
            table = table.set_column(table.column_names.index(column), column, pa.array([value] * table.num_rows))
        tables[name] = table
    model_a = tables[layout.BEST_FILE].column("model_a")[0].as_py()
    new = layout.alignment_key(DATASET, model_a, model_b, version)
    store.publish(new, tables, {"kind": "alignment", "lineage": {"features": {model_a: f"fv-{model_a}", model_b: f"fv-{model_b}"}}})
    return new


def test_rows_written_before_the_unit_column_show_sample(tmp_path):
    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    [first, *_] = sorted(k for k, _ in store.manifests(layout.ALIGNMENT))
    _without_unit(store, first, "al-old", "lm-old")
    con = connect(url)
    for view in ("alignment", "alignment_best"):
        units = query(con, f"select alignment_version = 'al-old' old, unit, count(*) n from {view} group by all order by all").to_pylist()
        assert [(u["old"], u["unit"]) for u in units] == [(False, "sample"), (True, "sample")], view
        assert query(con, f"select count(*) n from {view} where unit is null").to_pylist() == [{"n": 0}]


def test_a_store_of_old_files_only_has_the_unit_column(tmp_path):
    old = Store(str(tmp_path / "old"))
    source = build_catalog_store(str(tmp_path / "source"))
    for key, _ in source.manifests(layout.ALIGNMENT):
        tables = {n: source.read_table(f"{key}/{n}").drop_columns(["unit"]) for n in (layout.SCORES_FILE, layout.BEST_FILE)}
        old.publish(key, tables, {"kind": "alignment"})
    con = connect(old)
    for view in ("alignment", "alignment_best", "alignment_all", "alignment_best_all"):
        files = view if view.endswith("_all") else f"{view}_all"  # the current rows have the history's columns
        names = [r["column_name"] for r in query(con, f"describe {view}").to_pylist()]
        assert names == [c.split(" ")[0] for c in _EMPTY_VIEWS[files].split(", ")] + [
            "feature_version_a", "feature_version_b", "published_at"]
        assert query(con, f"select distinct unit from {view}").to_pylist() == [{"unit": "sample"}]


def test_bits_per_byte_stored_as_the_pooled_figure_by_an_older_prh_is_shown_as_pooled(tmp_path):
    """Features extracted before the per-caption mean (no ``bits_per_byte_pooled`` in the manifest,
    ``extras`` without ``bpb_sum``) hold the pooled figure under ``bits_per_byte``: the ``models``
    view (and an exported catalog) shows it as ``bits_per_byte_pooled``, its ``bits_per_byte``
    null, beside the re-extracted version of the same model; a version of today keeps both."""
    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    ids = [f"s{i:02d}" for i in range(len(CAPTIONS))]
    layers = [np.random.default_rng(3).normal(size=(len(ids), 4)).astype(np.float32)]
    base = {"model": "gpt", "dataset_version": DATASET, "modality": "language", "loader": "toy", "model_id": "toy/gpt",
            "pooling": "avg", "dtype": "float32", "param_count": 10, "n_layers": 1, "layer_names": ["embeddings"],
            "layer_widths": [4], "n_samples": len(ids), "device": "cpu"}
    # an older prh's manifest, written by hand: bits_per_byte = nll_nats / ln 2 / text_bytes (pooled)
    old = {**base, "feature_version": "fv-gpt-old", "code_version": "c-old", "bits_per_byte": 3.0156}
    old_extras = {"nll_nats": 1599.02, "text_bytes": 765, "bpb_truncated_texts": 0}
    new = {**base, "feature_version": "fv-gpt-new", "code_version": "c-new", "bits_per_byte": 3.0848, "bits_per_byte_pooled": 3.0173}
    new_extras = {**old_extras, "bpb_sum": 197.43, "bpb_texts": 64, "bits_per_byte_pooled": 3.0173}
    for catalog, extras in ((old, old_extras), (new, new_extras)):
        key = layout.features_key(DATASET, "gpt", catalog["feature_version"])
        store.publish(key, layer_tables("gpt", catalog["feature_version"], ids, layers),
                      {"kind": "features", "catalog": catalog, "extras": extras})
    sql = "select feature_version, bits_per_byte, bits_per_byte_pooled from models where model = 'gpt' order by 1"
    expected = [{"feature_version": "fv-gpt-new", "bits_per_byte": 3.0848, "bits_per_byte_pooled": 3.0173},
                {"feature_version": "fv-gpt-old", "bits_per_byte": None, "bits_per_byte_pooled": 3.0156}]
    assert query(connect(url), sql).to_pylist() == expected
    export_catalog(url, tmp_path / "cat.duckdb")
    assert query(open_catalog(tmp_path / "cat.duckdb"), sql).to_pylist() == expected
    # models without a causal LM's loss keep their (null or hand-written) figures as they are
    others = query(connect(url), "select count(*) n from models where model <> 'gpt' and bits_per_byte_pooled is not null")
    assert others.to_pylist() == [{"n": 0}]


def test_json_columns_keep_non_ascii_text_as_written(tmp_path):
    """The environment hunt: a dataset folder `dätä 数据` was shown in `datasets.source` (and a
    path in `runs.config`, a message in `runs.failures`) as `d\\u00e4t\\u00e4 \\u6570\\u636e`,
    so `where source like '%dätä%'` found nothing. A lone surrogate (a hand-edited record) still
    stays its JSON escape instead of failing the catalog."""
    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    folder = "/data/dätä 数据/imgs-é 😀"
    record = {"run_id": "run-x", "status": "FAILED", "started_at": "2026-01-03T00:00:00+00:00",
              "finished_at": "2026-01-03T00:05:00+00:00", "config": {"dataset": {"kind": "path", "path": folder}},
              "failures": [{"model": "vit-small", "error": f"cannot read {folder}/ímg01.png"}], "alignment_versions": []}
    store.write_json(layout.run_key("run-x"), record)
    store.write_json(layout.run_key("run-y"), {**record, "run_id": "run-y", "failures": [], "config": {"dataset": {"path": "cut \ud83d"}}})
    con = connect(url)
    assert query(con, f"select run_id from runs where config like '%{folder}%'").to_pylist() == [{"run_id": "run-x"}]
    assert query(con, "select run_id from runs where failures like '%ímg01.png%'").to_pylist() == [{"run_id": "run-x"}]
    assert query(con, "select config->>'$.dataset.path' p from runs where run_id = 'run-x'").to_pylist() == [{"p": folder}]
    assert query(con, "select config from runs where run_id = 'run-y'").to_pylist() == [{"config": json.dumps(
        {"dataset": {"path": "cut \ud83d"}})}]


def _pets_with_bad_rows(folder: Path) -> Path:
    """A CSV of 9 rows over a folder of PNGs: 3 valid, 6 refused for 5 reasons (two empty
    captions). Returns the CSV."""
    from tests.tasks.data.sample_images import png_bytes

    folder.mkdir(parents=True)
    for colour in ("red", "blue", "green", "white"):
        (folder / f"{colour}.png").write_bytes(png_bytes(colour))
    (folder / "broken.png").write_bytes(b"not a png")
    lines = ["sample_id,image,text",
             "r,red.png,a red square",        # row 0: kept
             "b,blue.png,a blue square",      # row 1: kept
             "x,missing.png,gone",            # row 2: no such file
             "g,green.png,",                  # row 3: empty caption
             "r,white.png,a white square",    # row 4: r again
             "k,broken.png,a broken one",     # row 5: not an image
             "e,green.png,   ",               # row 6: blank caption
             "w,white.png,a white square",    # row 7: kept
             "../up,white.png,a path id"]     # row 8: an id that is no safe name
    table = folder / "pairs.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


#: (row, sample_id, reason) of each row of ``_pets_with_bad_rows`` that the load refuses, by hand
REFUSED = [(2, "x", "image_missing"), (3, "g", "text_empty"), (4, "r", "sample_id_duplicate"),
           (5, "k", "image_unreadable"), (6, "e", "text_empty"), (8, "../up", "sample_id_unsafe")]


def _rejection_query() -> str:
    """The example of docs/queries.md (query 9's section): rejections per reason per dataset."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "queries.md").read_text(encoding="utf-8")
    return re.search(r'prh sql "(SELECT [^"]*FROM rejected_samples[^"]*)"', text).group(1)


def test_rejected_samples_hold_the_rows_each_dataset_refused(store_url, tmp_path):
    """Three dataset versions published through the dataset task, one from a table with bad rows
    of five reasons, one with one bad row, one without any (no rejected file): ``rejected_samples``
    holds exactly the refused rows, each with its dataset version, on a local store and on S3
    (two files of one schema: one group there), in ``connect``, ``connect(runs=False)`` and an
    exported catalog; the docs' example counts them per reason."""
    from tasks.dataset_task import publish_dataset
    from tasks.params import DatasetParams

    bad = publish_dataset(DatasetParams(kind="path", path=str(_pets_with_bad_rows(tmp_path / "pets"))), store_url)
    clean_csv = tmp_path / "pets" / "clean.csv"
    clean_csv.write_text("image,text\nred.png,red\nblue.png,blue\n")
    clean = publish_dataset(DatasetParams(kind="path", path=str(clean_csv)), store_url)
    few_csv = tmp_path / "pets" / "few.csv"
    few_csv.write_text("image,text\nred.png,a red one\nblue.png,a blue one\nnowhere.png,lost\n")  # row 2: no such file, no id
    few = publish_dataset(DatasetParams(kind="path", path=str(few_csv)), store_url)
    version, other = bad["catalog"]["dataset_version"], few["catalog"]["dataset_version"]
    assert len({version, other, clean["catalog"]["dataset_version"]}) == 3
    con = connect(store_url)
    rows = query(con, f"select * from rejected_samples where dataset_version = '{version}' order by row").to_pylist()
    assert [(r["dataset_version"], r["row"], r["sample_id"], r["reason"]) for r in rows] == \
        [(version, row, sample_id, reason) for row, sample_id, reason in REFUSED]
    assert query(con, f"select dataset_version, row, sample_id, reason from rejected_samples where dataset_version <> "
                      f"'{version}'").to_pylist() == [{"dataset_version": other, "row": 2, "sample_id": None,
                                                       "reason": "image_missing"}]
    # each detail names the row and its line in the file (the header is line 1)
    assert all(r["detail"].startswith(f"row {r['row']} (line {r['row'] + 2})") for r in rows), rows
    assert "missing.png" in rows[0]["detail"]
    assert [(r["column_name"], r["column_type"]) for r in query(con, "describe rejected_samples").to_pylist()] == [
        ("dataset_version", "VARCHAR"), ("row", "BIGINT"), ("sample_id", "VARCHAR"), ("reason", "VARCHAR"),
        ("detail", "VARCHAR")]
    counted = query(con, "select d.name, d.n_rejected, count(r.row) n from datasets d "
                         "left join rejected_samples r using (dataset_version) group by all order by all").to_pylist()
    assert counted == [{"name": "clean", "n_rejected": 0, "n": 0}, {"name": "few", "n_rejected": 1, "n": 1},
                       {"name": "pairs", "n_rejected": 6, "n": 6}]
    per_reason = query(con, _rejection_query()).to_pylist()
    assert [(r["name"], r["dataset_version"], r["reason"], r["n_rows"]) for r in per_reason] == [
        ("few", other, "image_missing", 1), ("pairs", version, "text_empty", 2), ("pairs", version, "image_missing", 1),
        ("pairs", version, "image_unreadable", 1), ("pairs", version, "sample_id_duplicate", 1),
        ("pairs", version, "sample_id_unsafe", 1)]
    # not computed from runs: the catalog without them has it; the exported file has the same rows
    sql = "select * from rejected_samples order by all"
    assert query(connect(store_url, runs=False), sql).equals(query(con, sql))
    exported = open_catalog(export_catalog(store_url, tmp_path / "catalog.duckdb").path)
    assert query(exported, sql).equals(query(con, sql))


def test_a_store_without_rejected_rows_has_an_empty_typed_rejected_samples_view(tmp_path):
    url = str(tmp_path / "store")
    build_catalog_store(url)  # a dataset without a rejected file
    con = connect(url)
    assert query(con, "select count(*) n from rejected_samples").to_pylist() == [{"n": 0}]
    assert [(r["column_name"], r["column_type"]) for r in query(con, "describe rejected_samples").to_pylist()] == [
        ("dataset_version", "VARCHAR"), ("row", "BIGINT"), ("sample_id", "VARCHAR"), ("reason", "VARCHAR"),
        ("detail", "VARCHAR")]
    assert query(con, "select reason, count(*) n from rejected_samples group by reason").num_rows == 0


def test_a_damaged_rejected_file_is_left_out_with_a_warning_and_the_rest_kept(store_url, tmp_path, caplog):
    """A ``rejected.parquet`` cut short after it was published: left out of ``rejected_samples``
    with a warning naming it, as a damaged file of any other view; the other dataset's rejected
    rows and the samples of both stay readable."""
    import logging

    from tasks.dataset_task import publish_dataset
    from tasks.params import DatasetParams

    bad = publish_dataset(DatasetParams(kind="path", path=str(_pets_with_bad_rows(tmp_path / "pets"))), store_url)
    other_csv = tmp_path / "pets" / "other.csv"
    other_csv.write_text("image,text\nred.png,red\nblue.png,blue\nnowhere.png,lost\n")
    other = publish_dataset(DatasetParams(kind="path", path=str(other_csv)), store_url)
    store = Store(store_url)
    damaged = f"{bad['key']}/rejected.parquet"
    store.fs.pipe_file(store.path(damaged), store.read_bytes(damaged)[:40])
    store.fs.invalidate_cache()
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        con = connect(store_url)
    assert f"{bad['key']}/rejected.parquet" in caplog.text and "left out of the rejected_samples view" in caplog.text
    rows = query(con, "select dataset_version, row, sample_id, reason from rejected_samples").to_pylist()
    assert rows == [{"dataset_version": other["catalog"]["dataset_version"], "row": 2, "sample_id": None,
                     "reason": "image_missing"}]
    assert query(con, "select count(*) n from samples").to_pylist() == [{"n": 3 + 2}]


def test_a_completed_run_recorded_before_prh_listed_failures_had_none(tmp_path):
    """Run records as the first prh wrote them (2026-11-28: no ``failures``, ``ordered_at``,
    ``heartbeat_s`` or ``process``; a model that failed then failed the whole run). A completed
    one had no failures, so it shows ``[]`` as a completed run does now (it showed NULL, and
    ``where failures = '[]'`` left the store's oldest clean runs out); a failed or crashed one
    of then keeps NULL: which of its models failed was not recorded."""
    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    old = {"aligned": 2, "alignment_versions": [], "code_version": "0b3ad479455a79c4", "config": {},
           "dataset_version": DATASET, "extracted": ["vit"], "feature_versions": {}, "finished_at": "2026-11-28T13:38:08+00:00",
           "flow_run_id": "old-ok", "reused": [], "run_id": "old-ok", "started_at": "2026-11-28T13:37:50+00:00",
           "status": "COMPLETED", "store": url}
    store.write_json(layout.run_key("old-ok"), old)
    store.write_json(layout.run_key("old-failed"), {**old, "run_id": "old-failed", "flow_run_id": "old-failed", "status": "FAILED",
                                                     "error": "RuntimeError: boom"})
    sql = "select run_id, failures, json_array_length(failures) n from runs where run_id like 'old-%' order by run_id"
    expected = [{"run_id": "old-failed", "failures": None, "n": None}, {"run_id": "old-ok", "failures": "[]", "n": 0}]
    assert query(connect(url), sql).to_pylist() == expected
    export_catalog(url, tmp_path / "cat.duckdb")
    assert query(open_catalog(tmp_path / "cat.duckdb"), sql).to_pylist() == expected
