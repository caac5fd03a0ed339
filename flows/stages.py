"""The pipeline split over two work pools: extraction on a GPU pool, alignment on a CPU pool.

- ``prh-extract`` (deployed on the GPU pool): the dataset and every model's features, nothing else.
- ``prh-pipeline`` (deployed on the CPU pool): the whole pipeline; after ``prh-extract`` every
  feature version is already in the store, so it only aligns (and publishes the run record and
  the artifacts).
- ``prh-staged``: runs the two deployments one after the other with ``run_deployment``; each is
  its own flow run, on its own pool's workers, linked to this one as a sub-flow in the UI.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from flows.pipeline import ZooFailures, collect_features, log_failures, log_recovery, submit_extractions
from flows.runners import make_task_runner
from storage.runs import open_for_run
from storage.store import DEFAULT_STORE, Store
from tasks.dataset_task import load_dataset
from tasks.params import PipelineConfig


@flow(name="prh-extract", description="Extract every model's features (the GPU stage).", task_runner=make_task_runner())
def prh_extract(config: PipelineConfig, store: str = DEFAULT_STORE) -> dict[str, Any]:
    """Publish the dataset and every model's features; reuse what is stored.

    Args:
        config: The run (only its dataset and models matter here).
        store: Where results go: a folder, file://..., or s3://bucket/prefix.
    """
    logger = get_run_logger()
    target = Store(store)
    store_url = target.url
    log_recovery(*open_for_run(target))
    dataset = load_dataset(config.dataset, store_url, alignment=config.alignment)
    extracting, failures = submit_extractions(config, store_url, dataset)
    manifests = collect_features(extracting, failures)
    summary = {
        "dataset_version": dataset["catalog"]["dataset_version"],
        "feature_versions": {name: m["catalog"]["feature_version"] for name, m in manifests.items()},
        "extracted": sorted(name for name, m in manifests.items() if not m.get("reused")),
        "reused": sorted(name for name, m in manifests.items() if m.get("reused")),
    }
    logger.info("extracted: %s; reused: %s", ", ".join(summary["extracted"]) or "none", ", ".join(summary["reused"]) or "none")
    if failures:  # the other models' features are published; the flow run fails naming these
        log_failures(failures)
        raise ZooFailures(f"{len(failures)} of {len(config.models)} models failed (the others' features are published): "
                          + "; ".join(f"{f['item']}: {f['error']}" for f in failures))
    return summary


@flow(name="prh-staged", description="Extraction on the GPU pool, then alignment on the CPU pool.")
def prh_staged(
    config: PipelineConfig,
    store: str = DEFAULT_STORE,
    extract_deployment: str = "prh-extract/gpu",
    align_deployment: str = "prh-pipeline/cpu",
) -> dict[str, Any]:
    """Run ``extract_deployment`` then ``align_deployment`` with the same config and store.

    The alignment stage runs even when some models failed in the extraction stage: it aligns the
    models whose features are stored and records the others as failures (``extract_missing``
    False: nothing is extracted on the CPU pool); the staged run then fails naming both stages.

    Args:
        config: The run: dataset, model zoo, metrics.
        store: A store every worker of both pools can reach (s3://... across machines).
        extract_deployment: `flow-name/deployment-name` of the extraction stage (GPU pool).
        align_deployment: `flow-name/deployment-name` of the alignment stage (CPU pool).
    """
    parameters = {"config": config.model_dump(mode="json"), "store": store}
    runs, failed = {}, []
    for stage, name, extra in (("extract", extract_deployment, {}), ("align", align_deployment, {"extract_missing": False})):
        try:
            run = run_deployment(name, parameters={**parameters, **extra}, timeout=None, poll_interval=2, as_subflow=True)
        except ObjectNotFound:
            raise ValueError(f"{stage} stage: no deployment {name!r} (flow-name/deployment-name, e.g. "
                             f"{'prh-extract/gpu' if stage == 'extract' else 'prh-pipeline/cpu'}; see prefect.yaml)") from None
        state = run.state
        runs[stage] = str(run.id)
        if state is None or not state.is_completed():
            failed.append(f"{stage} stage ({name}) ended {state.name if state else 'without a state'}: flow run {run.id}")
            if stage == "extract" and (state is None or state.type.value in ("CRASHED", "CANCELLED")):
                break  # no model's fate is known: nothing to align
    if failed:
        raise RuntimeError("; ".join(failed))
    return {"flow_runs": runs, "store": Store(store).display_url}
