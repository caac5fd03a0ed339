"""The Dask task runner option: the pipeline fans out over a local Dask cluster on loopback and
stores the same results as the default runner; the runner names parse."""

from __future__ import annotations

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import prh_pipeline
from flows.runners import make_task_runner
from storage.catalog import connect, query
from tests.flows.test_pipeline import TINY_BERT, TINY_GPT, TINY_VIT
from tasks.params import PipelineConfig


def test_runner_names(monkeypatch):
    from prefect_dask import DaskTaskRunner

    assert isinstance(make_task_runner("sequential"), ThreadPoolTaskRunner)
    assert make_task_runner("sequential")._max_workers == 1
    assert make_task_runner("threads:3")._max_workers == 3
    monkeypatch.setenv("PRH_TASK_RUNNER", "threads")
    assert make_task_runner()._max_workers == 4
    assert isinstance(make_task_runner("dask"), DaskTaskRunner)
    assert isinstance(make_task_runner("dask:tcp://127.0.0.1:8786"), DaskTaskRunner)
    monkeypatch.setenv("PRH_DASK_CLUSTER_KWARGS", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        make_task_runner("dask")
    for bad in ("spark", "threads:0", "sequential:2", "threads:abc", "threads:2.5"):
        with pytest.raises(ValueError, match="PRH_TASK_RUNNER"):
            make_task_runner(bad)


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_on_a_local_dask_cluster(tmp_path):
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": False, "protocol": "tcp", "host": "127.0.0.1", "dashboard_address": None},
    )
    config = PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": 32, "seed": 0, "image_size": 32},
        "models": [TINY_VIT, TINY_BERT, TINY_GPT],
        "alignment": {"metrics": ["mutual_knn", "cka"], "topk": 4},
    })
    store = str(tmp_path / "store")
    # report=False: the report is drawn in the flow, not in a task: the task runner plays no part in it
    result = prh_pipeline.with_options(task_runner=runner)(config=config, store=store, report=False)
    assert result["status"] == "COMPLETED"
    assert result["extracted"] == ["tiny-bert", "tiny-gpt", "tiny-vit"] and result["aligned"] == 2
    scores = {(r["model_b"], r["metric"]): r["score"] for r in result["best"]}
    assert set(scores) == {(m, k) for m in ("tiny-bert", "tiny-gpt") for k in ("mutual_knn", "cka")}

    # The sequential runner reuses everything the Dask run stored and reads the same scores.
    again = prh_pipeline(config=config, store=store, report=False)
    assert again["extracted"] == [] and again["aligned"] == 0
    assert {(r["model_b"], r["metric"]): r["score"] for r in again["best"]} == scores
    rows = query(connect(store), "select count(*) n from alignment_best").to_pylist()
    assert rows == [{"n": 4}]
