"""A task run that ends because its run is being stopped shows ``Cancelled`` in Prefect, not
``Failed`` (``tasks.stopped_task``): the extraction, reuse and alignment tasks, read back through
the Prefect API; not retried; the flow still gets the ``RunStopped`` from ``future.result()``."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow, task

from tasks.stop_request import RunStopped, run_scope
from tasks.stopped_task import run_in_flight
from tests.flows.test_pipeline import TINY_BERT, TINY_VIT, _config


def _task_runs(flow_run_id: Any, names: set[str] | None = None, wait_s: float = 30.0) -> dict[str, Any]:
    """The task runs of flow run ``flow_run_id`` as the Prefect API has them, by name; with
    ``names``, read again (up to ``wait_s``) until those are the runs' names and every state is
    final: the server records task runs from the events the client sends, so a read right after the
    flow may find a run under its default name (``extract-features-1cf``) or not yet final."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            runs = {run.name: run for run in
                    client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}
            settled = set(runs) == names and all(run.state is not None and run.state.is_final() for run in runs.values())
            if names is None or settled or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


@pytest.mark.usefixtures("prefect_harness")
def test_the_tasks_of_a_stopped_run_end_cancelled_not_failed(tmp_path):
    """Queued when their run was stopped (a one-thread runner holds the other models and pairs):
    each task gives up as it starts. They showed red ``Failed`` (``RunStopped: the run is being
    stopped ...``) under a run shown ``Cancelled``, which operators read as a fault."""
    from prefect.context import FlowRunContext

    from tasks.align_task import align_pair
    from tasks.extract_task import extract_features, reuse_features

    config = _config([TINY_VIT, TINY_BERT], permutations=0)
    vit, bert = config.models
    store = str(tmp_path / "store")
    dataset = {"catalog": {"dataset_version": "0123456789abcdef"}}  # never read: the tasks stop first

    @flow
    def stopped() -> tuple[str, list[BaseException]]:
        with run_scope() as scope:  # as the run's record opens it (flows.run_record.recorded)
            scope.stop()
            futures = [extract_features.submit(store, dataset, vit), reuse_features.submit(store, dataset, bert),
                       align_pair.submit(store, {}, {}, config.alignment, "tiny-vit", "tiny-bert")]
            raised = []
            for future in futures:
                with pytest.raises(RunStopped) as error:  # as before: what the flow's handling expects
                    future.result()
                raised.append(error.value)
        return str(FlowRunContext.get().flow_run.id), raised

    run_id, raised = stopped()
    runs = _task_runs(run_id, {"align-tiny-vit-tiny-bert", "extract-tiny-vit", "reuse-tiny-bert"})
    assert sorted(runs) == ["align-tiny-vit-tiny-bert", "extract-tiny-vit", "reuse-tiny-bert"]
    for name, what in [("extract-tiny-vit", "extracting tiny-vit"), ("reuse-tiny-bert", "reusing tiny-bert's features"),
                       ("align-tiny-vit-tiny-bert", "aligning tiny-vit x tiny-bert")]:
        state = runs[name].state
        assert state.type.value == "CANCELLED", (name, state)
        assert state.message == f"{what}: cancelled, the run is being stopped: {what} left undone", state.message
        assert runs[name].run_count == 1, (name, runs[name].run_count)  # not retried
    assert [str(e) for e in raised] == [f"the run is being stopped: {w} left undone" for w in
                                        ("extracting tiny-vit", "reusing tiny-bert's features", "aligning tiny-vit x tiny-bert")]


@task
def _count(calls: list[int], key: int) -> int:
    """Runs one step of work in flight (``run_in_flight``); appends to ``calls`` when it runs."""
    def work() -> int:
        calls.append(key)
        return key

    return run_in_flight(f"counting {key}", work)


@pytest.mark.usefixtures("prefect_harness")
def test_a_cancelled_task_is_not_cached_for_a_retry_of_its_run():
    """With results persisted (``PREFECT_RESULTS_PERSIST_BY_DEFAULT``) a task's result is cached by
    its inputs and flow run id: a Retry of the flow run (same id) reuses it. A stopped task's
    ``Cancelled`` is no result: the same task with the same inputs in the same flow run runs."""
    from prefect.settings import PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

    calls: list[int] = []

    @flow
    def twice() -> tuple[Any, int]:
        with run_scope() as scope:
            scope.stop()
            future = _count.submit(calls, 7)  # cancelled: the run is being stopped
            future.wait()
        return future.state, _count(calls, 7)  # the run's next attempt, not stopped

    with temporary_settings({PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
        first, second = twice()
    assert first.is_cancelled() and isinstance(first.result(raise_on_failure=False), RunStopped), first
    assert (second, calls) == (7, [7])
