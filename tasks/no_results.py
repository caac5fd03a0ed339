"""prh's Prefect tasks and flows keep no Prefect results: the store is prh's only cache.

Prefect 3 can persist what a task or a flow returns (pickled with cloudpickle by default, into
``$PREFECT_HOME/storage`` or a result storage block) and serve a task from that record instead of
running it: under its default cache policy (inputs + task source + flow run id) a retried flow run
(the flow's ``retries``, ``PREFECT_FLOWS_DEFAULT_RETRIES``, *Retry* in the UI) took its task's
outcome back from the first attempt's record. Whether it does depends on settings prh does not
control (``PREFECT_RESULTS_PERSIST_BY_DEFAULT``, ``PREFECT_TASKS_DEFAULT_PERSIST_RESULT``, a
``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``, a profile in ``PREFECT_HOME``, a deployment's job
variables), so every prh task says it itself: ``persist_result=False`` (nothing written, whatever
the settings) and ``cache_policy=NO_CACHE`` (no cache key, so no record is looked up or
unpickled). Each task finds its content-addressed version in the store instead, and a rerun
that finds it stored computes nothing anyway. See docs/orchestration.md.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.cache_policies import NO_CACHE

#: Options of every prh ``@task`` (and of a task given new options with ``with_options``).
TASK_OPTIONS: dict[str, Any] = {"persist_result": False, "cache_policy": NO_CACHE}
#: Options of every prh ``@flow``: its return value (the run record) is not written either. A
#: failed flow run's exception is written to the result storage whatever ``persist_result`` says
#: (Prefect 3.9's flow engine, for a client that reads the state back): as JSON text (its class
#: name and message), not pickled as Prefect's default serializer would.
FLOW_OPTIONS: dict[str, Any] = {"persist_result": False, "result_serializer": "json"}

T = TypeVar("T")


def without_results(task: T, **options: Any) -> T:
    """``task.with_options(**options)`` that also persists no result and is served from no cache:
    for a task defined where its decorator cannot change (``tasks.align_task.align_pair``, whose
    module is part of every alignment version)."""
    return task.with_options(**{**options, **TASK_OPTIONS})  # type: ignore[attr-defined]
