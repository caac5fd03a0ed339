"""prh keeps no Prefect results: whatever the Prefect settings say, no prh task or flow writes its
return value (pickled) into Prefect's result storage, and no task of a retried flow run is served
from Prefect's cache: each finds its version in the store (tasks/no_results.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.flows.test_pipeline import TINY_BERT, TINY_VIT

#: the cheapest run with a pair: two tiny random models, one metric, no permutations or resamples
CONFIG = {
    "dataset": {"kind": "openmoji", "n": 40, "seed": 0, "image_size": 32},
    "models": [TINY_VIT, TINY_BERT],
    "alignment": {"metrics": ["mutual_knn"], "topk": 5, "permutations": 0, "bootstrap": 0},
}


def test_every_task_and_flow_persists_nothing_and_uses_no_cache():
    """The options themselves, on every task a run submits (both forms of the pair's task) and
    every flow: Prefect's own defaults would let the settings decide."""
    from prefect.cache_policies import NO_CACHE

    from flows.pipeline import pair_task, prh_pipeline
    from flows.stages import prh_extract, prh_staged
    from tasks.align_task import align_pair
    from tasks.dataset_task import load_dataset, stored_dataset
    from tasks.extract_task import extract_features, reuse_features
    from tasks.params import AlignmentParams

    tasks = {"load-dataset": load_dataset, "stored-dataset": stored_dataset, "extract-features": extract_features,
             "reuse-features": reuse_features, "align-pair (cpu)": pair_task(AlignmentParams(device="cpu")),
             "align-pair (cuda)": pair_task(AlignmentParams(device="cuda"))}
    for name, task in tasks.items():
        assert task.persist_result is False, name
        assert task.cache_policy is NO_CACHE, name
    for flow in (prh_pipeline, prh_extract, prh_staged):
        assert flow.persist_result is False, flow.name
    # what the pair's task keeps of align_pair: its retries, its retry test and its run names
    cpu = tasks["align-pair (cpu)"]
    assert (cpu.fn, cpu.retries, cpu.retry_condition_fn, cpu.task_run_name, set(cpu.tags)) == \
        (align_pair.fn, 3, align_pair.retry_condition_fn, align_pair.task_run_name, {"prh-align"})


@pytest.mark.usefixtures("prefect_harness")
def test_a_retried_run_with_results_persisted_by_default_writes_none_and_rechecks_the_store(tmp_path, monkeypatch):
    """``PREFECT_RESULTS_PERSIST_BY_DEFAULT=true`` (a profile or a worker's environment) and a flow
    run that Prefect retries (its ``retries``, or *Retry* in the UI: the same flow run id). The
    first attempt fails after publishing everything, and the store then loses its dataset (a
    store restored from a backup, a folder removed by hand). Without prh's options every task
    and the flow pickled its result under the result storage, and the retry's ``load-dataset``
    was ``Cached``: its manifest unpickled from the first attempt's record, the store never
    looked at, and the run ended COMPLETED with its dataset missing from the store."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import (PREFECT_RESULTS_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT,
                                  PREFECT_TASKS_DEFAULT_PERSIST_RESULT, temporary_settings)

    import flows.pipeline
    import tasks.dataset_task
    from tasks.params import PipelineConfig

    store, results = tmp_path / "store", tmp_path / "prefect-results"
    published: list[bool] = []  # per call of the dataset's publishing: whether it wrote the dataset
    attempts: list[int] = []
    real_publish, real_best_rows = tasks.dataset_task._publish_dataset, flows.pipeline.best_rows

    def publish(*args, **kwargs):
        manifest, written = real_publish(*args, **kwargs)
        published.append(written)
        return manifest, written

    def fail_first(*args, **kwargs):  # after every task of the first attempt ended
        attempts.append(len(published))
        if len(attempts) == 1:
            shutil.rmtree(store / "datasets")
            raise RuntimeError("the first attempt fails")
        return real_best_rows(*args, **kwargs)

    monkeypatch.setattr(tasks.dataset_task, "_publish_dataset", publish)
    monkeypatch.setattr(flows.pipeline, "best_rows", fail_first)
    retried = flows.pipeline.prh_pipeline.with_options(retries=1, retry_delay_seconds=0)
    persisting = {PREFECT_RESULTS_PERSIST_BY_DEFAULT: True, PREFECT_TASKS_DEFAULT_PERSIST_RESULT: True,
                  PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}
    with temporary_settings(updates=persisting):
        state = retried(config=PipelineConfig.model_validate(CONFIG), store=str(store), report=False, return_state=True)
    assert state.is_completed(), state
    # Prefect writes a failed flow run's exception whatever the settings: the first attempt's, as
    # JSON text; nothing else, nothing pickled (there had been 9 pickles: each task run's result, the
    # first attempt's exception and the retry's record)
    written = [_read(p) for p in results.rglob("*") if p.is_file()] if results.exists() else []
    assert written == [{"__exc_type__": "builtins.RuntimeError", "message": "the first attempt fails"}], written
    # the retry looked in the store, found no dataset and published it again
    assert attempts == [1, 2] and published == [True, True]
    version = state.result(raise_on_failure=False)["dataset_version"]
    assert sorted(p.name for p in (store / "datasets" / version).iterdir()) == ["manifest.json", "samples.parquet"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert len(runs) == 8, [r.name for r in runs]  # load, two models, one pair: twice
    assert [r.name for r in runs if r.state.name == "Cached"] == []


def _read(path: Path) -> object:
    """A result file's JSON, or the start of its bytes where it is none (a pickle: never unpickled)."""
    try:
        return json.loads(path.read_bytes())
    except ValueError:
        return path.read_bytes()[:40]
