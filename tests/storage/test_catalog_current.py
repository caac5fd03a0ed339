"""``alignment_best`` / ``alignment``: the current result of each model pair and metric, one row
per metric × model pair whatever the store's history (the history is in ``alignment_best_all`` /
``alignment_all``).

Current: from the version listed by the latest run with results that lists one for that pair and
metric, on whichever dataset it used; a version that no such run lists only where none is
listed, the last published first."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from storage import layout
from storage.catalog import connect, query
from storage.export import export_catalog, open_catalog
from storage.store import MANIFEST, Store
from tests.storage.catalog_store import CAPTIONS, DATASET, MODELS, _alignment_rows, build_catalog_store

PAIR = ("vit-small", "lm-small")
OTHER_PAIRS = [(a, b) for a in ("vit-small", "vit-large") for b in ("lm-small", "lm-large") if (a, b) != PAIR]


def _publish(store: Store, version: str, dataset: str = DATASET, metrics: tuple[str, ...] = ("mutual_knn", "cka"),
             published_at: str | None = None, pair: tuple[str, str] = PAIR) -> str:
    """An alignment version of ``pair`` on ``dataset`` holding ``metrics``; returns its key."""
    a, b = pair
    tables = []
    for table in _alignment_rows(a, b, version, len(CAPTIONS)):
        table = table.set_column(table.column_names.index("dataset_version"), "dataset_version",
                                 pa.array([dataset] * table.num_rows))
        tables.append(table.filter(pc.is_in(table.column("metric"), pa.array(list(metrics)))))
    key = layout.alignment_key(dataset, a, b, version)
    store.publish(key, {layout.SCORES_FILE: tables[0], layout.BEST_FILE: tables[1]},
                  {"kind": "alignment", "lineage": {"dataset_version": dataset, "features": {a: f"fv-{a}", b: f"fv-{b}"}}})
    if published_at is not None:  # publish has seconds precision: set the order the test needs
        manifest = store.manifest(key)
        store.write_json(f"{key}/{MANIFEST}", {**manifest, "published_at": published_at})
    return key


def _dataset(store: Store, version: str, name: str) -> None:
    samples = pa.table({"dataset_version": [version], "sample_id": ["s00"], "image_id": ["i00"], "text": ["x"], "image": [b"x"]})
    store.publish(layout.dataset_key(version), {layout.SAMPLES_FILE: samples},
                  {"kind": "dataset", "catalog": {"dataset_version": version, "name": name, "n_samples": 1}})


def _run(store: Store, run_id: str, day: int, keys: list[str], status: str = "COMPLETED") -> None:
    store.write_json(layout.run_key(run_id), {"run_id": run_id, "status": status, "started_at": f"2026-02-{day:02d}T00:00:00+00:00",
                                              "finished_at": f"2026-02-{day:02d}T00:05:00+00:00", "alignment_versions": keys})


def _current(con, view: str = "alignment_best") -> dict[tuple[str, str, str, str], set[str]]:
    """(dataset_version, model_a, model_b, metric) -> the alignment versions of ``view``'s rows."""
    found: dict[tuple[str, str, str, str], set[str]] = {}
    for r in query(con, f"select dataset_version, model_a, model_b, metric, alignment_version from {view}").to_pylist():
        found.setdefault((r["dataset_version"], r["model_a"], r["model_b"], r["metric"]), set()).add(r["alignment_version"])
    return found


def _of_pair(current: dict, pair: tuple[str, str] = PAIR) -> dict[tuple[str, str], set[str]]:
    return {(k[0], k[3]): v for k, v in current.items() if k[1:3] == pair}


def test_a_later_run_with_other_parameters_replaces_the_pairs_rows_and_history_keeps_both(tmp_path):
    store = build_catalog_store(str(tmp_path / "store"))  # run-0/run-1 (January): al-<a>-<b> for all four pairs
    new = _publish(store, "al-new")
    _run(store, "run-new", 1, [new])
    con = connect(store)
    current = _current(con)
    assert all(len(v) == 1 for v in current.values()) and len(current) == 4 * 2  # one row per pair x metric
    assert _of_pair(current) == {(DATASET, "mutual_knn"): {"al-new"}, (DATASET, "cka"): {"al-new"}}
    for a, b in OTHER_PAIRS:  # pairs the later run did not score keep their rows
        assert _of_pair(current, (a, b)) == {(DATASET, m): {f"al-{a}-{b}"} for m in ("mutual_knn", "cka")}
    assert _of_pair(_current(con, "alignment_best_all")) == {(DATASET, m): {"al-new", "al-vit-small-lm-small"}
                                                             for m in ("mutual_knn", "cka")}
    # alignment: every layer pair of the current rows, no more
    scores = _current(con, "alignment")
    assert scores == current
    n_layers = MODELS[PAIR[0]][2] * MODELS[PAIR[1]][2]
    assert query(con, "select count(*) n from alignment where model_a = 'vit-small' and model_b = 'lm-small'").to_pylist() == \
        [{"n": 2 * n_layers}]


def test_a_metric_the_latest_run_dropped_stays_as_its_last_run_had_it(tmp_path):
    store = build_catalog_store(str(tmp_path / "store"))
    only_knn = _publish(store, "al-knn-only", metrics=("mutual_knn",))
    _run(store, "run-knn", 1, [only_knn])
    current = _of_pair(_current(connect(store)))
    assert current == {(DATASET, "mutual_knn"): {"al-knn-only"}, (DATASET, "cka"): {"al-vit-small-lm-small"}}


def test_a_run_on_another_dataset_gives_the_pairs_it_scored_their_current_rows(tmp_path):
    """One row per metric x model pair whatever datasets the store holds (names are no identity: two
    folders named ``val`` are two datasets, and OpenMoji's name holds ``n``): the latest run that
    scored a pair decides, and ``dataset_version`` says on which dataset; without dataset
    manifests (damaged, left out) the same."""
    for with_manifests in (True, False):
        store = build_catalog_store(str(tmp_path / f"store-{with_manifests}"))  # DATASET is named "toy"
        if with_manifests:
            _dataset(store, "ds-other", "other")
            _dataset(store, "ds-toy-2", "toy")
        _run(store, "run-other", 1, [_publish(store, "al-other", dataset="ds-other")])
        current = _current(connect(store))
        assert all(len(v) == 1 for v in current.values()) and len({k[1:] for k in current}) == len(current) == 8
        assert _of_pair(current) == {("ds-other", m): {"al-other"} for m in ("mutual_knn", "cka")}
        assert all(k[0] == DATASET for k in current if k[1:3] != PAIR)  # the pairs it did not score keep theirs
        _run(store, "run-toy-2", 2, [_publish(store, "al-toy-2", dataset="ds-toy-2")])
        current = _current(connect(store))
        assert _of_pair(current) == {("ds-toy-2", m): {"al-toy-2"} for m in ("mutual_knn", "cka")} and len(current) == 8
        history = _of_pair(_current(connect(store), "alignment_best_all"))
        assert set(history) == {(d, m) for d in (DATASET, "ds-other", "ds-toy-2") for m in ("mutual_knn", "cka")}


def test_a_version_no_run_lists_counts_only_where_none_is_listed(tmp_path):
    store = build_catalog_store(str(tmp_path / "store"))
    # published after the runs, by a run that crashed (killed before its record listed its grid) or without a record
    _publish(store, "al-orphan", published_at="2026-03-01T00:00:00+00:00")
    _run(store, "run-crashed", 3, [], status="CRASHED")
    assert _of_pair(_current(connect(store))) == {(DATASET, m): {"al-vit-small-lm-small"} for m in ("mutual_knn", "cka")}
    # a store without run records: the last published version
    bare = Store(str(tmp_path / "bare"))
    _publish(bare, "al-late", published_at="2026-03-02T00:00:00+00:00")
    _publish(bare, "al-early", published_at="2026-03-01T00:00:00+00:00")
    _publish(bare, "al-z-untimed", published_at="not a time")
    assert _of_pair(_current(connect(bare))) == {(DATASET, m): {"al-late"} for m in ("mutual_knn", "cka")}
    published = query(connect(bare), "select distinct alignment_version, published_at::VARCHAR p from alignment_best_all "
                                     "order by 1").to_pylist()
    assert published == [{"alignment_version": "al-early", "p": "2026-03-01 00:00:00+00"},
                         {"alignment_version": "al-late", "p": "2026-03-02 00:00:00+00"},
                         {"alignment_version": "al-z-untimed", "p": None}]


def test_a_later_failed_run_with_results_counts_and_one_without_does_not(tmp_path):
    store = build_catalog_store(str(tmp_path / "store"))
    partly = _publish(store, "al-partly")
    _run(store, "run-partly", 1, [partly], status="FAILED")
    _run(store, "run-nothing", 2, [], status="FAILED")
    assert _of_pair(_current(connect(store))) == {(DATASET, m): {"al-partly"} for m in ("mutual_knn", "cka")}


def test_a_run_stopped_after_recording_its_results_counts_and_one_stopped_before_does_not(tmp_path):
    """A run's record lists its alignment versions once every pair is aligned; Ctrl-C (or a cancel
    from the UI) while its report was then written made it CANCELLED with every result listed,
    and its results were never current nor latest, nor kept by gc --keep-runs."""
    from storage.run_retention import newest_runs
    from storage.runs import run_records
    from tasks.report_source import select_run

    store = build_catalog_store(str(tmp_path / "store"))
    done = _publish(store, "al-done")
    _run(store, "run-stopped-late", 1, [done], status="CANCELLED")
    _run(store, "run-stopped-early", 2, [], status="CANCELLED")
    con = connect(store)
    assert _of_pair(_current(con)) == {(DATASET, m): {"al-done"} for m in ("mutual_knn", "cka")}
    assert select_run(con)["run_id"] == "run-stopped-late"
    assert _of_pair(_current(con, "alignment_best_latest")) == {(DATASET, m): {"al-done"} for m in ("mutual_knn", "cka")}
    assert [r["run_id"] for r in newest_runs(run_records(store), 5)][0] == "run-stopped-late"


def test_an_exported_catalog_has_the_same_current_rows(tmp_path):
    store = build_catalog_store(str(tmp_path / "store"))
    _run(store, "run-new", 1, [_publish(store, "al-new")])
    con = connect(store)
    exported = open_catalog(export_catalog(store, tmp_path / "catalog.duckdb").path)
    for view in ("alignment_best", "alignment", "alignment_best_all", "alignment_all"):
        sql = f"select * from {view} order by all"
        assert query(exported, sql).equals(query(con, sql)), view
    assert json.loads(query(exported, "select params from alignment_best where metric = 'mutual_knn' limit 1").column(0)[0].as_py())


def test_a_published_at_past_the_range_of_a_datetime_is_null_not_an_error(tmp_path):
    """Year 9999 at -05:00 is past datetime's range in UTC (OverflowError in astimezone): every
    command that opens the catalog failed; the docstring promises NULL for a value that is not a time."""
    store = build_catalog_store(str(tmp_path / "store"))
    _publish(store, "al-far", published_at="9999-12-31T23:59:59-05:00")
    _publish(store, "al-early", published_at="0001-01-01T00:00:00+05:00", pair=("vit-large", "lm-small"))
    rows = query(connect(store), "select distinct alignment_version, published_at from alignment_best_all "
                                 "where alignment_version in ('al-far', 'al-early') order by 1").to_pylist()
    assert rows == [{"alignment_version": "al-early", "published_at": None}, {"alignment_version": "al-far", "published_at": None}]


def test_one_version_id_in_two_dataset_folders_is_joined_to_its_own_lineage(tmp_path):
    """The same version id under two dataset folders (a folder copied by hand), one with a
    published_at that is not a time: the lineage join matched on version and model names only, so
    each row came twice (with both times), and sorting the lineage compared None with text."""
    store = build_catalog_store(str(tmp_path / "store"))
    _publish(store, "al-twin", dataset="ds-one", published_at="2026-03-01T00:00:00+00:00")
    _publish(store, "al-twin", dataset="ds-two", published_at="not a time")
    rows = query(connect(store), "select dataset_version, metric, published_at::VARCHAR p, count(*) n from alignment_best_all "
                                 "where alignment_version = 'al-twin' group by all order by all").to_pylist()
    assert rows == [{"dataset_version": d, "metric": m, "p": p, "n": 1} for d, p in (("ds-one", "2026-03-01 00:00:00+00"),
                                                                                   ("ds-two", None)) for m in ("cka", "mutual_knn")]
    n_layers = MODELS[PAIR[0]][2] * MODELS[PAIR[1]][2]
    assert query(connect(store), "select count(*) n from alignment_all where alignment_version = 'al-twin'").to_pylist() == \
        [{"n": 2 * 2 * n_layers}]


def _feature_version(store: Store, model: str, version: str, code_version: str, dataset: str = DATASET,
                     published_at: str | None = None) -> None:
    """Publish ``model``'s features again as ``version`` (a copy of its first version's files)."""
    (key, manifest), = [(k, m) for k, m in store.manifests(layout.FEATURES)
                        if m["catalog"]["model"] == model and m["catalog"]["feature_version"] == f"fv-{model}"]
    files = {name: store.read_table(f"{key}/{name}") for name in manifest["files"] if name.endswith(".parquet")}
    new_key = layout.features_key(dataset, model, version)
    store.publish(new_key, files, {"kind": "features", "catalog": {**manifest["catalog"], "feature_version": version,
                                                                   "dataset_version": dataset, "code_version": code_version}})
    if published_at is not None:
        store.write_json(f"{new_key}/{MANIFEST}", {**store.manifest(new_key), "published_at": published_at})


def _models_current(con) -> dict[tuple[str, str], str]:
    rows = query(con, "select dataset_version, model, feature_version from models_current").to_pylist()
    current = {(r["dataset_version"], r["model"]): r["feature_version"] for r in rows}
    assert len(current) == len(rows)  # one row per model name and dataset
    return current


def test_models_current_holds_the_feature_version_the_latest_run_used(tmp_path):
    """After an upgrade re-extracted a model (new code version), ``models`` holds both feature
    versions and ``models_current`` the one the latest run to use that model used; a model the
    latest run left out keeps the version of the run that last used it; a version no run record
    names counts only where none is named; another dataset keeps its own row."""
    store = build_catalog_store(str(tmp_path / "store"))
    first = {(DATASET, m): f"fv-{m}" for m in MODELS}
    assert _models_current(connect(store)) == first  # both runs used the only versions
    _feature_version(store, "vit-small", "fv-vit-small-c3", "c3", published_at="2026-01-01T00:00:00+00:00")
    _feature_version(store, "lm-small", "fv-lm-small-c3", "c3")
    con = connect(store)
    assert query(con, "select count(*) n from models where model = 'vit-small'").to_pylist() == [{"n": 2}]
    assert _models_current(con) == first  # newer files that no run used yet do not replace what runs use
    store.write_json(layout.run_key("run-9"), {
        "run_id": "run-9", "status": "FAILED", "started_at": "2026-03-01T00:00:00+00:00",
        "finished_at": "2026-03-01T00:05:00+00:00", "dataset_version": DATASET,
        "feature_versions": {"vit-small": "fv-vit-small-c3", "lm-small": "fv-lm-small"}, "alignment_versions": []})
    assert _models_current(connect(store)) == {**first, (DATASET, "vit-small"): "fv-vit-small-c3"}
    # a version on another dataset, named by no run, is that dataset's current one
    _feature_version(store, "lm-large", "fv-lm-large-other", "c2", dataset="other-dataset")
    store.write_json(layout.run_key("run-bad"), {"run_id": "run-bad", "status": "COMPLETED", "started_at": "2026-04-01T00:00:00+00:00",
                                                 "dataset_version": DATASET, "feature_versions": ["not", "an", "object"]})
    con = connect(store)
    assert _models_current(con) == {**first, (DATASET, "vit-small"): "fv-vit-small-c3",
                                    ("other-dataset", "lm-large"): "fv-lm-large-other"}
    columns = lambda view: [r["column_name"] for r in query(con, f"select column_name from (describe {view})").to_pylist()]  # noqa: E731
    assert columns("models_current") == columns("models")
    exported = open_catalog(export_catalog(store, tmp_path / "catalog.duckdb").path)
    sql = "select * from models_current order by all"
    assert query(exported, sql).equals(query(con, sql))


def test_models_current_follows_the_latest_run_back_to_an_older_version_and_else_the_last_published(tmp_path):
    """A model whose latest run went back to its first feature version (a checkpoint update rolled
    back) has that version current, though a run in between used another; where no run names a
    version, the last published is current."""
    store = build_catalog_store(str(tmp_path / "store"))
    _feature_version(store, "vit-small", "fv-vit-small-c3", "c3")
    for run_id, month, used in (("run-9", 3, "fv-vit-small-c3"), ("run-10", 4, "fv-vit-small")):
        store.write_json(layout.run_key(run_id), {
            "run_id": run_id, "status": "COMPLETED", "started_at": f"2026-{month:02d}-01T00:00:00+00:00",
            "finished_at": f"2026-{month:02d}-01T00:05:00+00:00", "dataset_version": DATASET,
            "feature_versions": {"vit-small": used}, "alignment_versions": []})
    _feature_version(store, "lm-large", "fv-lm-large-old", "c2", dataset="other-dataset", published_at="2026-01-01T00:00:00+00:00")
    _feature_version(store, "lm-large", "fv-lm-large-new", "c3", dataset="other-dataset", published_at="2026-01-02T00:00:00+00:00")
    current = _models_current(connect(store))
    assert current[(DATASET, "vit-small")] == "fv-vit-small"
    assert current[("other-dataset", "lm-large")] == "fv-lm-large-new"


def _operator_rows(con, sql: str, kind: str) -> list[int]:
    """The rows each operator of type ``kind`` (``WINDOW``) of ``sql``'s plan handled, as DuckDB's
    EXPLAIN ANALYZE counts them."""
    plan = json.loads(con.execute(f"EXPLAIN (ANALYZE, FORMAT json) {sql}").fetchall()[0][1])
    found, todo = [], list(plan["operator"] if isinstance(plan.get("operator"), list) else [plan])
    while todo:
        node = todo.pop()
        if node.get("type") == kind:
            found.append(int(node.get("operator_cardinality", node.get("intermediate_rows"))))
        todo.extend(node.get("children", []))
    return found


def test_the_current_rows_rank_each_version_once_however_many_runs_list_it(tmp_path):
    """A year of nightly runs lists each version hundreds of times: ``alignment_best`` ranked one
    row per listing (runs x pairs x metrics, 750,000 rows for 400 runs of a 625-pair zoo) to keep one
    per pair and metric. Its ranking now handles one row per best row, whatever the number of runs."""
    store = build_catalog_store(str(tmp_path / "store"))
    listed = store.read_json(layout.run_key("run-1"))["alignment_versions"]
    for day in range(1, 31):  # 30 more nightly runs that found every pair stored
        _run(store, f"nightly-{day:02d}", day, listed)
    con = connect(store)
    best_rows = con.execute("select count(*) from alignment_best_all").fetchone()[0]
    runs = con.execute("select count(*) from runs").fetchone()[0]
    assert (best_rows, runs) == (8, 32)  # 4 pairs x 2 metrics, one version each
    windows = _operator_rows(con, "select * from alignment_best", "WINDOW")
    assert windows and max(windows) <= max(best_rows, runs), windows  # was 32 x 8 = 256 rows ranked
    assert _of_pair(_current(con)) == {(DATASET, m): {f"al-{PAIR[0]}-{PAIR[1]}"} for m in ("mutual_knn", "cka")}
