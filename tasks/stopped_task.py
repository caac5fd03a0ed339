"""A Prefect task of a run being stopped ends ``Cancelled``, not ``Failed``.

A task that gives up at a safe point because its run is being stopped (``tasks.stop_request``:
:class:`~tasks.stop_request.RunStopped`) had raised out of its task function, so Prefect showed it
red ``Failed`` (``RunStopped: the run is being stopped ...``) under a run shown ``Cancelled``, which
operators read as a fault. :func:`run_in_flight` runs a task's work as a task in flight of its
run and turns that stop into the task run's ``Cancelled`` state, saying what the task was doing.

The state keeps the :class:`~tasks.stop_request.RunStopped` as its data: ``future.result()`` in the
flow raises it as before (the flow's handling of a stopped run is unchanged), ``raise_on_failure=False``
returns it. A ``Cancelled`` state is not retried (Prefect retries a ``Failed`` one only), and it is
never written as the task's cached result (``PREFECT_RESULTS_PERSIST_BY_DEFAULT``: a Retry of the
flow run, same run id and inputs, would have read the stop back as the task's result).
"""

from __future__ import annotations

from typing import Callable, TypeVar

from prefect.states import Cancelled, State
from prefect.transactions import get_transaction

from tasks.stop_request import RunStopped, in_flight
from tasks.task_attempts import note_failed_attempt

R = TypeVar("R")


def run_in_flight(what: str, work: Callable[[], R]) -> R | State:
    """``work()``'s result, run as a task in flight of the current run (``in_flight(what)``:
    ``what`` says what the task does, e.g. ``extracting tiny-vit``); when the run is being stopped
    (``RunStopped``, at the start or at a safe point) a ``Cancelled`` state for the task run
    instead (:func:`cancelled_by_stop`). Any other error propagates (the task fails, or is
    retried, as before), noted first as a failed attempt of the task run
    (``tasks.task_attempts.note_failed_attempt``: the run record lists what each attempt of a
    retried task said; only the last one's error had reached it)."""
    try:
        with in_flight(what):
            return work()
    except RunStopped as stop:
        return cancelled_by_stop(what, stop)
    except Exception as error:
        note_failed_attempt(error)
        raise


def cancelled_by_stop(what: str, stop: RunStopped) -> State:
    """The ``Cancelled`` state of a task run that gave up because its run is being stopped:
    message ``<what>: cancelled, the run is being stopped: <step> left undone``, data ``stop``.
    Inside a task run, its transaction writes no cached result (see the module's docstring)."""
    transaction = get_transaction()
    if transaction is not None:
        transaction.write_on_commit = False
    return Cancelled(message=f"{what}: cancelled, {stop}", data=stop)
