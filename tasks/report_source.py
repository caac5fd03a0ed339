"""Read what a run's report shows from a store's DuckDB catalog.

``load_report_input(store, run_id)`` selects the run (default: the latest run that published results), takes
exactly the alignment versions that run produced or reused, the models of its feature versions,
and nearest-neighbour examples of one model pair at its best layers, and returns a
:class:`tasks.report.ReportInput` for the pure report code.
"""

from __future__ import annotations

import json
import re
from typing import Any

import duckdb
import pyarrow as pa

from storage.catalog import LATEST_OF_ALL_RUNS_SQL, LATEST_RUN_SQL, QueryError, connect, read_failure_hint
from storage.features import vectors_from_arrow
from storage.runs import COMPLETED, PARTIAL_ALIGNMENTS, RUNNING
from storage.store import Store
from tasks.image_rows import image_rows, mean_rows
from tasks.report.neighbours import NeighbourExamples, Sample, select_examples
from tasks.report.tables import ReportInput, best_row, describe_dataset, metrics_of, scored

NEIGHBOUR_METRIC = "mutual_knn"


def select_run(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> dict[str, Any]:
    """The run record ``run_id`` (or the one run whose id starts with it), or the latest run that
    published results: COMPLETED, or FAILED with some models or pairs failing and the rest
    published (its report lists the failures), or CANCELLED after its results were recorded, or
    CRASHED still listing an earlier attempt's whole grid (a retry killed before its end), with
    some alignment versions (a one-model zoo's
    run, features only, has none); ValueError if there is none."""
    if run_id is not None:
        found = con.sql("select * from runs where run_id = ?", params=[run_id]).to_arrow_table().to_pylist()
        if not found and run_id:  # a unique prefix (the queries of docs/queries.md show 8 characters)
            found = con.sql("select * from runs where starts_with(run_id, ?) order by started_at desc",
                            params=[run_id]).to_arrow_table().to_pylist()
            if len(found) > 1:
                raise ValueError(f"run id {run_id!r} is the start of {len(found)} runs' ids "
                                 f"({', '.join(str(r['run_id']) for r in found[:10])}): give more of it")
        if not found:
            known = [r[0] for r in con.execute("select run_id from runs order by started_at desc limit 10").fetchall()]
            raise ValueError(f"no run {run_id!r} in the store (recent runs: {', '.join(known) or 'none'})")
        return found[0]
    found = con.sql(LATEST_RUN_SQL).to_arrow_table().to_pylist()  # the run of the *_latest views
    if not found:
        latest = con.sql(LATEST_OF_ALL_RUNS_SQL).to_arrow_table().to_pylist()
        if not latest:
            raise ValueError("the store has no run that published results: run `prh run` first, or pass --run ID")
        # a store whose runs published no pair (a one-model zoo's run, a run still going or that failed early)
        raise ValueError(f"the store has no run that published results; the latest: {no_results_reason(latest[0])}")
    return found[0]


def named_versions(record: dict[str, Any]) -> set[str]:
    """Keys of the versions a run record names: its dataset, its feature versions
    (``features/<dataset>/<model>/<version>``) and its alignment versions."""
    dataset = record.get("dataset_version")
    keys = {f"datasets/{dataset}"} if dataset else set()
    selection = feature_selection(record).to_pydict()
    keys |= {f"features/{dataset}/{m}/{v}" for m, v in zip(selection["model"], selection["feature_version"])}
    return keys | {str(key) for key in record.get("alignment_versions") or []}


def missing_versions(con: duckdb.DuckDBPyConnection, record: dict[str, Any]) -> list[str]:
    """Keys of the versions the run record names (:func:`named_versions`) that the catalog does
    not hold: removed since (``prh gc --keep-runs``, ``prh verify --remove-damaged``) or left out
    as damaged."""
    held = {row[0] for row in con.sql(
        "select 'datasets/' || dataset_version from datasets union all "
        "select concat_ws('/', 'features', dataset_version, model, feature_version) from models union all "
        "select distinct concat_ws('/', 'alignment', dataset_version, model_a || '__' || model_b, alignment_version) "
        "from alignment_best_all").fetchall()}
    return sorted(named_versions(record) - held)


def run_failures(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The models and pairs that failed in the run (``stage``, ``item``, ``error``): the record's
    ``failures``, a list in the pipeline's record and JSON text in the ``runs`` view."""
    failures = record.get("failures")
    if isinstance(failures, str):
        try:
            failures = json.loads(failures)
        except ValueError:
            return [{"stage": "?", "item": "?", "error": failures}]
    return [f for f in failures or [] if isinstance(f, dict)]


def alignment_selection(record: dict[str, Any]) -> pa.Table:
    """(alignment_version, model_a, model_b) of every alignment key the run lists, each once (a
    hand-edited or merged record listing one twice would show its rows twice)."""
    versions, models_a, models_b = [], [], []
    for key in dict.fromkeys(record.get("alignment_versions") or []):
        parts = key.split("/")
        if len(parts) < 4 or "__" not in parts[-2]:
            raise ValueError(f"run {record.get('run_id')}: unexpected alignment key {key!r}")
        model_a, model_b = parts[-2].split("__", 1)
        versions.append(parts[-1])
        models_a.append(model_a)
        models_b.append(model_b)
    return pa.table({"alignment_version": pa.array(versions, pa.string()), "model_a": pa.array(models_a, pa.string()),
                     "model_b": pa.array(models_b, pa.string())})


def feature_selection(record: dict[str, Any]) -> pa.Table:
    """(model, feature_version) of the run's feature versions. ValueError naming the run when its
    record's ``feature_versions`` is not an object of model name -> version text (a hand edit)."""
    versions = record.get("feature_versions") or {}
    if isinstance(versions, str):
        try:
            versions = json.loads(versions)
        except ValueError:
            versions = None
    if not (isinstance(versions, dict) and all(isinstance(v, str) for v in versions.values())):
        raise ValueError(f"run {record.get('run_id')}'s record is damaged: its feature_versions is not an object of "
                         "model name -> feature version (edited by hand?); `prh run` with the run's config records a new run")
    return pa.table({"model": pa.array(list(versions), pa.string()), "feature_version": pa.array(list(versions.values()), pa.string())})


def load_report_input(
    store: Store | str,
    run_id: str | None = None,
    record: dict[str, Any] | None = None,
    pair: tuple[str, str] | None = None,
    k: int = 5,
    n_examples: int = 4,
) -> ReportInput:
    """Everything the report of one run shows.

    ``record``: a run record given directly (the pipeline passes its own, before the run is
    marked COMPLETED; the store's run records are then not read: ``connect(runs=False)``);
    otherwise ``run_id`` or the latest run that published results. ``pair``: the model
    pair of the nearest-neighbour examples (default: the best-aligned pair under mutual k-NN).

    The modules of ``$PRH_METRIC_MODULES`` are imported first (:func:`load_metric_plugins`), so
    that the report knows the direction of the user metrics they register.
    """
    plugin_notes = load_metric_plugins()
    # given its record (the report at a run's end), the report queries no run nor view computed
    # from runs: the run history (one GET per record on S3, a record per run the store ever ran)
    # is not read; choosing a run (`prh report`) needs it
    con = connect(store, runs=record is None)
    try:
        if record is None:
            record = select_run(con, run_id)
            missing = missing_versions(con, record)
            if missing:
                raise ValueError(
                    f"run {record.get('run_id')}'s results are no longer all in the store: {len(missing)} of the "
                    f"{len(named_versions(record))} versions it "
                    f"names are gone ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): removed by `prh gc --keep-runs` "
                    "(which keeps the versions of the newest runs only) or, if `prh verify` names them, damaged; `prh run` with the "
                    "run's config computes them again")
        record = dict(record)
        dataset = con.sql("select name, source, n_rejected from datasets where dataset_version = ?",
                          params=[record.get("dataset_version")]).fetchall()
        if dataset:
            record.setdefault("dataset_description", describe_dataset(*dataset[0]))
        con.register("_report_alignments", alignment_selection(record))
        con.register("_report_features", feature_selection(record))
        join = "join _report_alignments s using (alignment_version, model_a, model_b)"
        best = con.sql(f"select t.* from alignment_best_all t {join} order by metric, model_a, model_b").to_arrow_table()
        scores = con.sql(f"select t.* from alignment_all t {join} order by metric, model_a, model_b, layer_a, layer_b").to_arrow_table()
        models = con.sql("select m.* from models m join _report_features s using (model, feature_version) order by model").to_arrow_table()
        notes = [f"failed in this run ({f.get('stage')}): {f.get('item')}: {f.get('error')}" for f in run_failures(record)]
        notes += stopped_run_notes(record)
        notes += plugin_notes
        notes += excluded_layer_notes(store if isinstance(store, Store) else Store(store), record)
        if best.num_rows == 0:
            notes.append(f"run {record.get('run_id')} lists no published alignment")
        examples = None
        try:
            examples = _examples(con, best.to_pylist(), models.to_pylist(), record.get("dataset_version"), pair, k, n_examples)
        except ValueError as error:
            notes.append(f"nearest-neighbour examples left out: {error}")
        except duckdb.Error as error:  # a stored file that does not read (damaged mid-file)
            notes.append(f"nearest-neighbour examples left out: {str(error).splitlines()[0]} (a damaged file? "
                         "`prh verify` names it)")
        if examples is not None:
            unseen = [i for i in examples.sample_ids() if i not in examples.samples]
            if unseen:
                notes.append(f"nearest-neighbour examples: {len(unseen)} of {len(examples.sample_ids())} are shown by id "
                             f"only (e.g. {unseen[0]}): their captions and images are not in the store's samples "
                             "(the dataset's samples.parquet is missing or damaged? `prh verify` names it)")
        return ReportInput(run=record, best=best, scores=scores, models=models, examples=examples, notes=notes)
    except duckdb.Error as error:  # a file that does not read, too few file descriptors: one line, not a traceback
        raise QueryError(f"reading the run's results from {_shown_store(store)} failed: {str(error).splitlines()[0]}"
                         f"{read_failure_hint(error)}") from error
    finally:
        con.close()


def _shown_store(store: Store | str) -> str:
    """The store as messages name it (credentials removed)."""
    return (store if isinstance(store, Store) else Store(store)).display_url


def excluded_layer_notes(store: Store, record: dict[str, Any], shown: int = 3) -> list[str]:
    """One note per model with layers left out of its scores in the run's alignments (the
    manifests' ``degenerate_layers``: a constant or rank-1 layer, or one a metric refused): which
    layers, why and for which metrics. Their rows or columns of the layer heatmaps are blank and the
    best score is over the other layer pairs; a reader had no way to tell why."""
    by_model: dict[str, dict[tuple[int, str], tuple[str, set[str]]]] = {}
    for key in dict.fromkeys(record.get("alignment_versions") or []):
        try:
            manifest = store.manifest(str(key))
        except Exception:  # noqa: BLE001 - a damaged manifest: `prh verify` names it; the report goes on
            continue
        for entry in (manifest or {}).get("degenerate_layers") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("layer"), int):
                continue
            name = entry.get("layer_name")
            layer = (entry["layer"], f" {name!r}" if isinstance(name, str) else "")
            # one layer once, whatever its pairs: the problem's figures (samples, RMS) differ by pair; the first is shown
            problem, metrics = by_model.setdefault(str(entry.get("model")), {}).setdefault(layer, (str(entry.get("problem")), set()))
            metrics.update(str(m) for m in entry.get("metrics") or [])
    notes = []
    for model, layers in sorted(by_model.items()):
        items = sorted(layers.items())
        described = "; ".join(f"layer {index}{name} ({', '.join(sorted(metrics)) or 'every metric'}): {problem}"
                              for (index, name), (problem, metrics) in items[:shown])
        more = f"; and {len(items) - shown} more" if len(items) > shown else ""
        notes.append(f"{model}: {len(items)} layer(s) left out of its scores (blank in its layer heatmaps; its best scores are "
                     f"over the other layer pairs): {described}{more}")
    return notes


#: How a run record's ``error`` starts when the run went to its end with some models or pairs
#: failed and the rest published (``flows.pipeline.ZooFailures``, as ``flows.run_record.one_line``
#: writes it; ``pipeline.ZooFailures`` where a deployment's worker loaded flows/pipeline.py by its
#: path): the failures are the record's ``failures``, each noted on its own.
ZOO_FAILURES = re.compile(r"(?:[\w.]+\.)?ZooFailures:")


def stopped_run_notes(record: dict[str, Any]) -> list[str]:
    """What the report says of a run that did not finish (``CANCELLED``: stopped; ``CRASHED``:
    its process died; ``FAILED`` with an ``error`` of its own): its status and error, and that
    versions it published without listing them (a pair aligned as it stopped) are not shown.
    None for a run that failed only for some models or pairs (its ``error`` is the summary of its
    ``failures``, :data:`ZOO_FAILURES`): it did finish, listing every pair it published, and each
    failure has a note of its own (the page ``prh report`` drew later had said it "stopped", with
    every failure repeated, where the page stored with the run had not)."""
    status, error = record.get("status"), record.get("error")
    if status not in ("CANCELLED", "CRASHED") and not error:
        return []
    if status == "FAILED" and ZOO_FAILURES.match(str(error)) and run_failures(record):
        return []
    why = f": {error}" if error else ""
    return [f"run {record.get('run_id')} ended {status}{why}; it lists the results it had finished when it stopped: any "
            "its tasks in flight published as it stopped (a pair being published) are in the store but not in this "
            "report (alignment_best shows them)"]


def no_results_reason(record: dict[str, Any], shown: int = 3) -> str:
    """Why the run of ``record`` (a row of the ``runs`` view) has no alignment results to report,
    in one line for ``prh report --run ID``: still ``RUNNING`` (a run known to have stopped
    without writing its end reads ``CRASHED`` in the view, its reason as ``error``:
    ``storage.runs.runs_as_known``), ``COMPLETED`` without a model pair (a zoo of one model,
    features only), or ended ``FAILED``/``CANCELLED``/``CRASHED`` with its error (else its first
    ``shown`` failures), and the pairs it had aligned when it ended (its
    ``partial_alignment_versions``: in the store, reused by a rerun of its config)."""
    run_id, status = record.get("run_id"), record.get("status")
    if status == RUNNING:
        why = (f"it is still RUNNING (started {record.get('started_at')}): its record lists its results once every pair "
               "is aligned; report it then")
    elif status == COMPLETED:
        why = (f"it COMPLETED without aligning a model pair (its record lists features of "
               f"{len(feature_selection(record))} model(s) and no alignment version: a zoo with no pair to align)")
    else:
        ended = f"it ended {status}" if status else "its record gives no status (edited by hand?)"
        failures = run_failures(record)
        if record.get("error"):
            why = f"{ended}: {record['error']}"
        elif failures:
            listed = "; ".join(f"{f.get('stage')} {f.get('item')}: {f.get('error')}" for f in failures[:shown])
            why = f"{ended}: {listed}{'; ...' if len(failures) > shown else ''}"
        else:
            why = f"{ended} (its record gives no error)"
    partial = list(dict.fromkeys(record.get(PARTIAL_ALIGNMENTS) or []))
    if partial:
        when = "so far" if status == RUNNING else "before it ended"
        why += (f"; it had aligned {len(partial)} model pair(s) {when} ({PARTIAL_ALIGNMENTS}): they are in the "
                "store (alignment_best_all shows them) and `prh run` with the run's config reuses them")
    return f"run {run_id} has no alignment results to report: {why}"


def load_metric_plugins() -> list[str]:
    """Import the modules of ``$PRH_METRIC_MODULES`` (``tasks.metric_plugins``; a no-op for those
    already imported, as in the pipeline's process), so that their metrics' directions
    (``higher_is_better``) are known. A module that fails to import does not stop the report (a
    view of published results): returns a note naming the failure, else no note."""
    from tasks.metric_plugins import load_metric_modules

    try:
        load_metric_modules()
    except ValueError as error:
        return [f"{error} (the report goes on without it: the metrics it registers count as not registered)"]
    return []


def _examples(con: duckdb.DuckDBPyConnection, best: list[dict[str, Any]], models: list[dict[str, Any]], dataset_version: str | None,
              pair: tuple[str, str] | None, k: int, n_examples: int) -> NeighbourExamples | None:
    """Neighbour examples of ``pair`` (or the best-aligned pair: the largest score, the smallest
    for a metric where lower is better, ``tables.best_row``) at its best layers: under
    ``mutual_knn`` where it has a finite score, else the first metric that does (rows without a
    finite score have no best layers and are skipped)."""
    if not best:
        return None
    candidates = best
    if pair is not None:
        candidates = [r for r in best if (r["model_a"], r["model_b"]) in (pair, pair[::-1])]
        if not candidates:
            raise ValueError(f"the run has no pair {pair[0]} × {pair[1]}")
    candidates = [r for r in candidates if scored(r)]
    if not candidates:
        what = f"{pair[0]} × {pair[1]} has no" if pair is not None else "no model pair has a"
        raise ValueError(f"{what} finite best score under any metric (no best layers to show)")
    metrics = metrics_of(candidates)
    metric = NEIGHBOUR_METRIC if NEIGHBOUR_METRIC in metrics else metrics[0]
    row = best_row(candidates, metric)  # the largest score, the smallest where lower is better
    if row is None:  # not reached: every candidate has a finite score
        raise ValueError(f"no model pair has a finite best score under {metric}")
    versions = {m["model"]: m["feature_version"] for m in models}
    if row["model_a"] not in versions or row["model_b"] not in versions:
        raise ValueError(f"no feature version recorded for {row['model_a']} or {row['model_b']}")
    table = con.sql(
        """
        with a as (select sample_id, vector from features where model = ? and feature_version = ? and layer = ?),
             b as (select sample_id, vector from features where model = ? and feature_version = ? and layer = ?)
        select a.sample_id, a.vector as va, b.vector as vb from a join b using (sample_id) order by sample_id
        """,
        params=[row["model_a"], versions[row["model_a"]], row["layer_a"], row["model_b"], versions[row["model_b"]], row["layer_b"]],
    ).to_arrow_table()
    if table.num_rows < 2:
        for side in ("a", "b"):
            model, layer = row[f"model_{side}"], row[f"layer_{side}"]
            held = con.execute("select count(*) from features where model = ? and feature_version = ? and layer = ?",
                               [model, versions[model], layer]).fetchone()[0]
            if held == 0:
                raise ValueError(f"no features of {model} layer {layer} ({row[f'layer_name_{side}']}) are in the store: its "
                                 "layer file is missing or damaged (`prh verify` names it)")
        raise ValueError(f"{row['model_a']} × {row['model_b']}: fewer than 2 common samples with features")
    ids = table.column("sample_id").to_pylist()
    names = (row["model_a"], row["model_b"], str(row["layer_name_a"]), str(row["layer_name_b"]))
    xa, xb = vectors_from_arrow(table.column("va")), vectors_from_arrow(table.column("vb"))
    dataset = row.get("dataset_version") or dataset_version
    unit = row.get("unit") or "sample"
    if unit == "image":  # the rows the alignment scored: one per image, the mean of its captions' rows
        image_of = dict(con.execute("select sample_id, image_id from samples where dataset_version = ?", [dataset]).fetchall())
        rows = image_rows(ids, image_of)
        ids, xa, xb = rows.image_ids, mean_rows(xa, rows), mean_rows(xb, rows)
    examples = select_examples(ids, xa, xb, names, k, n_examples)
    key = "image_id" if unit == "image" else "sample_id"
    con.register("_report_samples", pa.table({key: pa.array(examples.sample_ids(), pa.string())}))
    shown = con.sql(  # an image: its first caption (by sample id) and how many more it has
        f"select s.{key} as id, first(s.text order by s.sample_id) as text, first(s.image order by s.sample_id) as image, "
        f"count(*) as n from samples s join _report_samples using ({key}) where s.dataset_version = ? group by s.{key}",
        params=[dataset],
    ).to_arrow_table().to_pylist()
    samples = {r["id"]: Sample((r["text"] or "") + (f" (+{r['n'] - 1} more captions)" if unit == "image" and r["n"] > 1 else ""),
                               r["image"]) for r in shown}
    return NeighbourExamples(**{**examples.__dict__, "samples": samples, "unit": unit})
