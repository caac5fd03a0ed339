"""The Dask task runner option: the pipeline fans out over a local Dask cluster on loopback and
stores the same results as the default runner; the runner names parse; a run that fails stops
its tasks on an external scheduler."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import prh_pipeline
from flows.runners import make_task_runner
from storage.catalog import connect, query
from tests.flows.test_pipeline import TINY_BERT, TINY_GPT, TINY_VIT
from tasks.params import PipelineConfig



def _mark_every_50_ms(name: str, marker: str, seconds: float) -> Any:
    """A task's work for ``seconds``: a safe point (``raise_if_stopped``) then a mark appended to
    the file ``marker`` every 0.05 s, run as the project's tasks run theirs (``run_in_flight``:
    counted as a task of the run; a stop ends it ``Cancelled``); returns the marks."""
    from tasks.stop_request import raise_if_stopped
    from tasks.stopped_task import run_in_flight

    path = Path(marker)

    def work() -> int:
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            raise_if_stopped(f"{name} {path.name}: mark {count}")
            with path.open("a") as handle:
                handle.write(".")
            count += 1
            time.sleep(0.05)
        return count

    return run_in_flight(f"{name} {path.name}", work)

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


def _marks(path) -> int:
    """How many marks the probe task wrote to ``path`` (0 before it started)."""
    return len(path.read_text()) if path.exists() else 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_run_stops_its_tasks_on_an_external_dask_scheduler(tmp_path):
    """A run on an external scheduler (``PRH_TASK_RUNNER=dask:tcp://...``) that failed or was
    cancelled closed its Dask client, which released the tasks still queued, but a task already
    running on a worker (another process: the run's stop request, a ``ContextVar``, never reached
    it) ran on to its end after the flow had ended, and published. The flow now tells the run's
    tasks on the cluster to stop (a Dask ``Event`` named by the flow run); each stops at its next
    safe point, as a task in the flow's process does, and a queued one never starts."""
    import distributed
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from flows.run_record import stop_tasks_in_flight
    from tasks.stop_request import RunStopped, run_scope

    @task
    def busy(marker: str, seconds: float) -> int:
        """A task with a safe point every 0.05 s that marks ``marker`` at each: runs ``seconds``."""
        return _mark_every_50_ms("busy", marker, seconds)

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                                       dashboard_address=None)
    running, queued = tmp_path / "running", tmp_path / "queued"
    outcome: dict[str, object] = {}

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def failing() -> None:
        with run_scope():  # as the run's record opens it (flows.run_record.recorded)
            futures = [busy.submit(str(running), 20.0), busy.submit(str(queued), 20.0)]
            while _marks(running) < 3:
                time.sleep(0.05)
            try:
                raise RuntimeError("a model failed")
            except RuntimeError:
                stop_tasks_in_flight(futures)  # what run_zoo does as the run stops or fails
                outcome["state"] = futures[0].state
                raise

    with cluster:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="a model failed"):
            failing()
        ended = time.monotonic() - started
        at_end = _marks(running)
        time.sleep(1.0)
        assert _marks(running) == at_end, "the task on the Dask worker ran on after its run ended"
        assert not queued.exists()  # the queued task never started
    assert ended < 15, ended  # the running task stopped at a safe point, not after its 20 s
    state = outcome["state"]
    # Cancelled, not Failed: the stop reached the task on the worker (tasks.stopped_task)
    assert state.is_cancelled() and isinstance(state.result(raise_on_failure=False), RunStopped), state


@pytest.mark.usefixtures("prefect_harness")
def test_a_retried_flow_run_is_not_stopped_by_its_earlier_attempts_stop_request(tmp_path):
    """A flow run retried (Prefect's flow ``retries``, or *Retry* in the UI) runs again under the same
    flow run id on the same external scheduler, where the stop request of its failed first attempt
    stays set (a Dask ``Event`` lives on the scheduler until cleared): the request must stop that
    attempt's tasks only, not every task of the next attempt before it starts its work."""
    import distributed
    from prefect import flow, task
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    from flows.run_record import stop_tasks_in_flight
    from tasks.stop_request import RunStopped, run_scope

    @task
    def marks(marker: str, seconds: float) -> int:
        """Marks ``marker`` every 0.05 s for ``seconds``, a safe point before each mark; returns how many."""
        return _mark_every_50_ms("marks", marker, seconds)

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                                       dashboard_address=None)
    attempts: list[int] = []

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address), retries=1, retry_delay_seconds=0)
    def retried() -> int:
        attempts.append(FlowRunContext.get().flow_run.run_count)
        with run_scope():  # as the run's record opens it (flows.run_record.recorded)
            if len(attempts) == 1:
                futures = [marks.submit(str(first), 20.0)]
                while _marks(first) < 3:
                    time.sleep(0.05)
                try:
                    raise RuntimeError("a model failed")
                except RuntimeError:
                    stop_tasks_in_flight(futures)
                    raise
            done = marks.submit(str(second), 0.3).result()
            stopped = [marks.submit(str(third), 20.0)]  # and a stop of this attempt still reaches its tasks
            while _marks(third) < 3:
                time.sleep(0.05)
            stop_tasks_in_flight(stopped)
            outcome["state"] = stopped[0].state
            return done

    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    outcome: dict[str, object] = {}
    with cluster:
        done = retried()
    assert len(attempts) == 2 and attempts[0] != attempts[1], attempts
    assert done > 0 and _marks(second) == done  # the second attempt's task ran its work
    state = outcome["state"]
    # Cancelled, not Failed: the stop reached the task on the worker (tasks.stopped_task)
    assert state.is_cancelled() and isinstance(state.result(raise_on_failure=False), RunStopped), state


@pytest.mark.usefixtures("prefect_harness")
def test_telling_a_lost_scheduler_to_stop_does_not_hold_up_the_stopping_run():
    """A run whose scheduler is gone (the cluster died, often why the run fails) stops at once: the
    stop request it sends there waited out Dask's 30 s connect timeout before the run could wait
    for its tasks and write its record (Prefect kills a cancelled run's process 30 s after asking)."""
    import distributed
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from flows.run_record import stop_tasks_in_flight
    from tasks.stop_request import run_scope

    @task
    def one() -> int:
        return 1

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                                       dashboard_address=None)
    address = cluster.scheduler_address  # the flow holds the address only: its context is sent with each task
    took: list[float] = []

    @flow(task_runner=DaskTaskRunner(address=address))
    def lost() -> None:
        with run_scope():
            assert one.submit().result() == 1  # the task runner's client exists
            with distributed.Client(address) as other:
                other.shutdown()  # the scheduler and its worker end
            started = time.monotonic()
            stop_tasks_in_flight()
            took.append(time.monotonic() - started)

    try:
        lost()
    except Exception:  # noqa: BLE001 - closing the runner's client on a dead scheduler may fail: not what is tested
        pass
    finally:
        try:  # its scheduler is gone: a plain close waits 30 s for it (the test's own time, not the run's)
            cluster.close(timeout=2)
        except Exception:  # noqa: BLE001 - TimeoutError: nothing left to close that the test reads
            pass
    assert took and took[0] < 10, took
