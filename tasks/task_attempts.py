"""What each failed attempt of a retried Prefect task said, for the run record.

Prefect retries a task run whose error is transient (``tasks.retries``) inside the same task engine
call, so in the same process and thread, and keeps no error of the attempts it retried: their
``AwaitingRetry`` states carry none, and the flow's ``future.result()`` raises the last attempt's
error only. A model whose extraction failed three times over (a connection reset, a read timeout,
then a disk error) was recorded with the disk error alone, and a model that failed once and then
succeeded left no trace in the record at all (one INFO line of Prefect's in the task's log).

:func:`note_failed_attempt`, called by a task's body as an attempt fails (``tasks.stopped_task.
run_in_flight``), keeps the attempt's number, time and error (one line) under its task run's id,
and hangs the attempts so far, its own last, on the error (:data:`ATTEMPTS`, an attribute that
travels with the error when a Dask worker sends it back). The flow then reads them from the error
(:func:`attempts_of_failure`) or, for a task run that succeeded after failed attempts, from this
process (:func:`failed_attempts`: runs of the sequential and thread runners; a task on a Dask
worker keeps them in the worker's process, and its success is not annotated).

Pure: no storage; Prefect's task run context only (outside a task run nothing is kept).
"""

from __future__ import annotations

import threading
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

#: The attribute of an error that holds the failed attempts of its task run, the one that raised it last.
ATTEMPTS = "prh_attempts"
#: Task runs whose failed attempts this process keeps (the oldest are forgotten first).
KEPT_TASK_RUNS = 4096

_FAILED: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_LOCK = threading.Lock()


def error_line(error: BaseException) -> str:
    """``Type: message`` of ``error``, as the run record writes errors (the message may hold line breaks;
    ``flows.run_record.one_line`` is this but for Prefect's cancel and pause signals)."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def _task_run() -> tuple[str, int] | None:
    """(id, attempt number from 1) of the Prefect task run this code runs in; None outside one."""
    try:
        from prefect.context import TaskRunContext
    except ImportError:
        return None
    context = TaskRunContext.get()
    run = getattr(context, "task_run", None)
    if run is None or getattr(run, "id", None) is None:
        return None
    count = getattr(run, "run_count", None)
    return str(run.id), int(count) if isinstance(count, int) and count > 0 else 0


def note_failed_attempt(error: BaseException) -> list[dict[str, Any]]:
    """Keep ``error`` as the failed attempt of the current task run (``{"attempt", "at",
    "error"}``; ``attempt`` 0 where Prefect does not say) and set the failed attempts of that task
    run so far, this one last, on ``error`` (:data:`ATTEMPTS`); returns them. Nothing is kept
    outside a task run, and an error that takes no attribute is left as it is."""
    run = _task_run()
    if run is None:
        return []
    run_id, attempt = run
    entry = {"attempt": attempt, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "error": error_line(error)}
    with _LOCK:
        kept = _FAILED.pop(run_id, [])
        earlier = [a for a in kept if a["attempt"] != attempt or not attempt]
        _FAILED[run_id] = [*earlier, entry]
        while len(_FAILED) > KEPT_TASK_RUNS:
            _FAILED.popitem(last=False)
    attempts = [*earlier, entry]
    try:
        setattr(error, ATTEMPTS, [dict(a) for a in attempts])
    except (AttributeError, TypeError):
        pass
    return attempts


@contextmanager
def noting_failed_attempts() -> Iterator[None]:
    """While the block runs, an error raised out of it is noted as a failed attempt of the
    current task run (:func:`note_failed_attempt`) and raised on."""
    try:
        yield
    except Exception as error:
        note_failed_attempt(error)
        raise


def failed_attempts(task_run_id: Any) -> list[dict[str, Any]]:
    """The failed attempts this process kept of task run ``task_run_id`` (oldest first), and
    forgets them: read once the task run ended (a success after them: the attempts it took)."""
    with _LOCK:
        return [dict(a) for a in _FAILED.pop(str(task_run_id), [])]


def attempts_of_failure(error: BaseException) -> list[dict[str, Any]] | None:
    """Every attempt of the task run that ended with ``error`` (oldest first, its own last), as
    :func:`note_failed_attempt` set them on it; None when it failed at its first and only
    attempt (nothing to add to its one error)."""
    found = getattr(error, ATTEMPTS, None)
    attempts = [dict(a) for a in found if isinstance(a, dict)] if isinstance(found, list) else []
    return attempts if len(attempts) > 1 else None


def attempts_said(attempts: list[dict[str, Any]]) -> str:
    """``attempt 1: ConnectionResetError: reset; attempt 2: TimeoutError: ...``: what each of
    ``attempts`` said, on one line (line breaks in a message as spaces)."""
    return "; ".join(f"attempt {a.get('attempt') or '?'}: {' '.join(str(a.get('error')).split())}" for a in attempts)
