"""The pipeline split over two work pools: extraction on a GPU pool, alignment on a CPU pool.

- ``prh-extract`` (deployed on the GPU pool): the dataset and every model's features, nothing else.
- ``prh-pipeline`` (deployed on the CPU pool): the whole pipeline; after ``prh-extract`` every
  feature version is already in the store, so it only aligns (and publishes the run record and
  the artifacts).
- ``prh-staged``: runs the two deployments one after the other with ``run_deployment``; each is
  its own flow run, on its own pool's workers, linked to this one as a sub-flow in the UI. The
  extraction stage records the dataset version it published (its ``prh-extract-versions``
  artifact) and the alignment stage gets it as ``dataset_version``: it reads the dataset from the
  store, so the CPU box needs only the store, not the dataset's source (a table, a folder, the
  hub).
"""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from flows.pipeline import (ZooFailures, work_done, check_dataset_source, collect_features, failure_text, finished_by_name,
                            log_failures, log_recovery, note_retried_tasks, run_usage, submit_extractions)
from flows.progress import ResourceMeter, StageProgress, bytes_published, stage_logger
from flows.run_record import new_record, recorded, run_id_of, stop_tasks_in_flight, write_progress
from flows.run_store import run_store
from flows.runners import check_run_environment, flow_task_runner
from storage import layout
from storage.runs import COMPLETED, FAILED, RecordsRead, open_for_run, sweep_ended_signs
from storage.store import DEFAULT_STORE, Store
from tasks.dataset_task import load_dataset
from tasks.no_results import FLOW_OPTIONS
from tasks.params import PipelineConfig

#: The extraction stage's table artifact: the dataset version and the feature versions it published.
VERSIONS_ARTIFACT = "prh-extract-versions"


@flow(name="prh-extract", description="Extract every model's features (the GPU stage).", task_runner=flow_task_runner(),
      **FLOW_OPTIONS)  # its record is in the store, not pickled by Prefect (tasks/no_results.py)
def prh_extract(config: PipelineConfig, store: str = DEFAULT_STORE) -> dict[str, Any]:
    """Publish the dataset and every model's features; reuse what is stored.

    The versions are recorded in the run's ``prh-extract-versions`` table artifact (one row for
    the dataset, one per model), also when some models fail: ``prh-staged`` passes the dataset
    version on to the alignment stage from there. The stage keeps its record at
    ``runs/extractions/<run_id>.json`` (``RUNNING`` with a sign of life while it runs, then the
    outcome with the dataset and feature versions): ``prh gc`` waits for a live extraction and
    keeps what it published or reused for the alignment stage. The record says where the stage's
    time and memory went, as a pipeline run's does (``stage_seconds``: ``setup``, ``dataset``,
    ``extract``, ``publish``; ``task_seconds``; ``peak_rss_mb``, ``peak_gpu_mb``;
    ``bytes_published``, ``bytes_read``), and so does its last log line.

    Args:
        config: The run (only its dataset and models matter here).
        store: Where results go: a folder, file://..., or s3://bucket/prefix.
    """
    entered = time.perf_counter()  # the stage's `setup`: its checks, the store's, its record
    check_run_environment()  # a bad $PRH_TASK_RUNNER (or other setting) fails the run naming it (see flow_task_runner)
    target = run_store(store)  # memory:// (kept by no one) and URLs fsspec cannot open alone are refused, naming the store
    check_dataset_source(config.dataset)  # the demo's n beyond what its font draws, a path not there: refused first
    run_id = run_id_of(prh_extract)  # a flow run's id, or a new local one
    # a retry's own earlier attempt is no other run; ended runs' leftover signs of life go too. The
    # records read to mark dead runs are those the run is placed after: each is read once a start
    read: RecordsRead = {}
    log_recovery(*open_for_run(target, run_id=run_id, read=read), ended=sweep_ended_signs(target))
    with recorded(target, layout.extraction_key(run_id), new_record(target, config, run_id, "prh-extract"), read) as record:
        meter = ResourceMeter()
        meter.start()
        record["stage_seconds"] = {"setup": round(time.perf_counter() - entered, 3)}
        try:
            return _extract_recorded(config, target, record)
        finally:  # whatever ended the stage: what it used, for its record and its log (as a pipeline run's)
            record.update(meter.read())
            stage_logger().info("run %s: %s", run_id, run_usage(record))


def _extract_recorded(config: PipelineConfig, target: Store, record: dict[str, Any]) -> dict[str, Any]:
    """The body of :func:`prh_extract`: sets the outcome of ``record`` (the stage's, ``RUNNING``);
    :func:`flows.run_record.recorded` writes it whatever happens."""
    logger = get_run_logger()
    timings: dict[str, float] = record.setdefault("stage_seconds", {})  # as far as the stage got, in every record written
    started = time.perf_counter()
    dataset = load_dataset(config.dataset, target.url, alignment=config.alignment)
    timings["dataset"] = round(time.perf_counter() - started, 3)
    record["bytes_published"] = bytes_published([dataset])
    record["dataset_version"] = dataset["catalog"]["dataset_version"]  # also in the record of a stage stopped from here on
    write_progress(record)  # and of one killed from here on
    started = time.perf_counter()
    progress = StageProgress("extract", 0, "models", logger)  # the models' checks count in the stage, as in prh-pipeline
    extracting, failures = submit_extractions(config, target.url, dataset)
    progress.total = len(extracting)
    manifests: dict[str, dict[str, Any]] = {}
    retried: list[dict[str, Any]] = []
    try:
        try:
            collect_features(extracting, failures, manifests, progress)
        finally:
            timings["extract"] = round(time.perf_counter() - started, 3)
        note_retried_tasks("extract", list(extracting.items()), retried)
    except BaseException:
        # stopped (a cancel from the UI, the staged run cancelled): the record still names the
        # models whose features it had published or reused (it had named none, and a retry or the
        # next stage counted the features this stage extracted as reused), those published while
        # it waited for its tasks in flight too
        stop_tasks_in_flight(extracting.values())
        manifests.update({name: m for name, m in finished_by_name(extracting).items() if name not in manifests})
        record.update(_versions(dataset, manifests), failures=failures, retried=retried,  # and those that had failed by then
                      **work_done(dataset, manifests, []))
        raise
    publishing = time.perf_counter()
    summary = _versions(dataset, manifests)
    record.update(summary, status=FAILED if failures else COMPLETED, failures=failures, retried=retried,
                  **work_done(dataset, manifests, []))
    logger.info("extracted: %s; reused: %s", ", ".join(summary["extracted"]) or "none", ", ".join(summary["reused"]) or "none")
    _publish_versions(dataset, manifests, [spec.name for spec in config.models])
    timings["publish"] = round(time.perf_counter() - publishing, 3)
    if failures:  # the other models' features are published; the flow run fails naming these
        log_failures(failures)
        raise ZooFailures(f"{len(failures)} of {len(config.models)} models failed (the others' features are published): "
                          + "; ".join(f"{f['item']}: {failure_text(f)}" for f in failures))
    return summary


def _versions(dataset: dict[str, Any], manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The extraction stage's summary: its dataset version, and the feature version of each model
    done (``manifests``: model name -> feature manifest) and whether it was extracted or reused."""
    return {
        "dataset_version": dataset["catalog"]["dataset_version"],
        "feature_versions": {name: m["catalog"]["feature_version"] for name, m in manifests.items()},
        "extracted": sorted(name for name, m in manifests.items() if not m.get("reused")),
        "reused": sorted(name for name, m in manifests.items() if m.get("reused")),
    }


@flow(name="prh-staged", description="Extraction on the GPU pool, then alignment on the CPU pool.", **FLOW_OPTIONS)
def prh_staged(
    config: PipelineConfig,
    store: str = DEFAULT_STORE,
    extract_deployment: str = "prh-extract/gpu",
    align_deployment: str = "prh-pipeline/cpu",
) -> dict[str, Any]:
    """Run ``extract_deployment`` then ``align_deployment`` with the same config and store.

    The alignment stage gets the dataset version the extraction stage published
    (``dataset_version``): it reads the dataset from the store, never from its source, so the
    table, folder or hub dataset need exist only where extraction runs.

    The alignment stage runs even when some models failed in the extraction stage: it aligns the
    models whose features are stored and records the others as failures (``extract_missing``
    False: nothing is extracted on the CPU pool); the staged run then fails naming both stages.
    It does not run when the extraction stage published no dataset version (it failed before).

    Args:
        config: The run: dataset, model zoo, metrics.
        store: A store every worker of both pools can reach (s3://... across machines).
        extract_deployment: `flow-name/deployment-name` of the extraction stage (GPU pool).
        align_deployment: `flow-name/deployment-name` of the alignment stage (CPU pool).
    """
    logger = get_run_logger()
    # both names before the first stage runs: a typo in the second one had let the whole
    # extraction stage run (GPU hours) before the staged run failed on it
    stages = {"extract": extract_deployment, "align": align_deployment}
    for stage, name in stages.items():
        check_deployment_name(f"{stage}_deployment", name)
    # the store too: one no stage can keep results in (memory://, as each stage's process has its
    # own) had the extraction stage run, on its GPU, before the alignment stage failed on it
    run_store(store)
    for stage, name in stages.items():
        check_deployment_exists(stage, name)
    parameters = {"config": config.model_dump(mode="json"), "store": store}
    runs, failed = {}, []
    dataset_version = None
    for stage, name in stages.items():
        extra = {} if stage == "extract" else {"extract_missing": False, **({"dataset_version": dataset_version} if dataset_version else {})}
        try:
            run = run_deployment(name, parameters={**parameters, **extra}, timeout=None, poll_interval=2, as_subflow=True)
        except ObjectNotFound:  # removed since the check above
            raise ValueError(_no_deployment(stage, name)) from None
        state = run.state
        runs[stage] = str(run.id)
        completed = state is not None and state.is_completed()
        if not completed:
            message = getattr(state, "message", None)  # the child run's reason, so the staged run shows it
            why = f" ({' '.join(message.split())})" if message else ""
            failed.append(f"{stage} stage ({name}) ended {state.name if state else 'without a state'}{why}: flow run {run.id}")
            if stage == "extract" and (state is None or state.type.value in ("CRASHED", "CANCELLED")):
                break  # no model's fate is known: nothing to align
        if stage == "extract":
            dataset_version = published_dataset_version(run.id)
            if dataset_version is None and not completed:
                failed.append("align stage not run: the extraction stage published no dataset version")
                break
            if dataset_version is None:  # an extraction flow that records no versions: load the dataset as before
                logger.warning("the extraction stage (flow run %s) recorded no dataset version (artifact %s): the alignment "
                               "stage loads config.dataset from its source", run.id, VERSIONS_ARTIFACT)
            else:
                logger.info("extraction stage: dataset version %s; the alignment stage reads it from the store", dataset_version)
    if failed:
        raise RuntimeError("; ".join(failed))
    return {"flow_runs": runs, "store": Store(store).display_url, "dataset_version": dataset_version}


#: the example name of each stage's deployment in errors (prefect.yaml's)
_STAGE_EXAMPLES = {"extract": "prh-extract/gpu", "align": "prh-pipeline/cpu"}


def check_deployment_name(parameter: str, name: Any) -> None:
    """``ValueError`` naming ``parameter`` unless ``name`` reads ``flow-name/deployment-name``
    (one ``/`` between two non-empty parts; Prefect's own error did not say which parameter) or
    is a deployment id (a UUID, which ``run_deployment`` takes too)."""
    if _deployment_id(name) is not None:
        return
    parts = name.split("/") if isinstance(name, str) else []
    if len(parts) != 2 or not all(p.strip() for p in parts):
        example = _STAGE_EXAMPLES.get(parameter.removesuffix("_deployment"), "prh-pipeline/cpu")
        raise ValueError(f"{parameter} must be flow-name/deployment-name (e.g. {example}; see prefect.yaml), got {name!r}")


def check_deployment_exists(stage: str, name: str) -> None:
    """``ValueError`` unless the Prefect API knows the deployment ``name`` of ``stage``."""
    from prefect.client.orchestration import get_client

    deployment_id = _deployment_id(name)
    with get_client(sync_client=True) as client:
        try:
            if deployment_id is None:
                client.read_deployment_by_name(name)
            else:
                client.read_deployment(deployment_id)
        except ObjectNotFound:
            raise ValueError(_no_deployment(stage, name)) from None


def _deployment_id(name: Any) -> UUID | None:
    """``name`` as a deployment id, or None when it is no UUID."""
    try:
        return UUID(name) if isinstance(name, str) else None
    except ValueError:
        return None


def _no_deployment(stage: str, name: str) -> str:
    return (f"{stage} stage: no deployment {name!r} ({stage}_deployment: flow-name/deployment-name, e.g. "
            f"{_STAGE_EXAMPLES[stage]}; see prefect.yaml)")


def _publish_versions(dataset: dict[str, Any], manifests: dict[str, dict[str, Any]], models: list[str]) -> None:
    """The ``prh-extract-versions`` table artifact: the dataset version, then each model's
    feature version and whether it was extracted, reused or failed."""
    catalog = dataset["catalog"]
    rows = [{"box": "dataset", "name": catalog["name"], "version": catalog["dataset_version"], "status": "stored"}]
    for model in models:
        manifest = manifests.get(model)
        rows.append({"box": "features", "name": model,
                     "version": manifest["catalog"]["feature_version"] if manifest else None,
                     "status": "failed" if manifest is None else "reused" if manifest.get("reused") else "extracted"})
    create_table_artifact(key=VERSIONS_ARTIFACT, table=rows,
                          description=f"Dataset and feature versions published by this extraction stage "
                                      f"(dataset {catalog['dataset_version']})")


def published_dataset_version(flow_run_id: UUID | str) -> str | None:
    """The dataset version an extraction flow run recorded (its ``prh-extract-versions``
    artifact); None when it recorded none (it failed first) or the API cannot tell."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    try:
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[VERSIONS_ARTIFACT]), flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))])))
    except Exception as error:  # noqa: BLE001 - the caller decides what a missing version means
        get_run_logger().warning("could not read the versions of extraction flow run %s: %s", flow_run_id, error)
        return None
    for artifact in artifacts:
        rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and row.get("box") == "dataset" and row.get("version"):
                return str(row["version"])
    return None
