"""The record a flow run keeps in the store while it runs and after it ends.

``prh-pipeline`` keeps ``runs/<run_id>.json`` (the catalog's ``runs`` view), ``prh-extract``
``runs/extractions/<run_id>.json``. Both are written ``RUNNING`` when the run starts, renew a sign
of life while it runs (``storage.runs.RunHeartbeat``), and are written again with the outcome and
``finished_at`` whatever happens: that is how ``prh gc`` and the next run tell a live run from a
dead one, and which versions a run used.
"""

from __future__ import annotations

import logging
import signal
import traceback
from contextlib import contextmanager
from typing import Any, Iterator

from prefect.exceptions import TerminationSignal

from storage.owner import current_owner
from storage.runs import CANCELLED, CRASHED, FAILED, RUN_HEARTBEAT_SECONDS, RUNNING, RunHeartbeat
from storage.store import Store, StoreNotWritable, utc_now
from storage.versioning import code_version
from tasks.params import PipelineConfig
from tasks.stop_request import run_scope

#: seconds a stopped run waits for its tasks in flight to reach a safe point before its record
#: says it ended (Prefect's process worker kills a cancelled flow run's process 30 s after its
#: SIGTERM)
STOP_GRACE_S = 20.0


def one_line(error: BaseException) -> str:
    """``Type: message`` of ``error`` on one line, as records and logs show it. Prefect's
    ``TerminationSignal`` (a cancel from the UI: the worker's SIGTERM) carries no message (it is
    raised as ``TerminationSignal(signal=n)``; the runs view had shown
    ``prefect.exceptions.TerminationSignal``, or ``...: 15``): it reads ``TerminationSignal: SIGTERM``."""
    if isinstance(error, TerminationSignal):
        number = getattr(error, "signal", None)
        try:
            name = signal.Signals(number).name
        except (TypeError, ValueError):
            name = f"signal {number}"
        return f"TerminationSignal: {name}"
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def new_record(target: Store, config: PipelineConfig, run_id: str, flow: str) -> dict[str, Any]:
    """A ``RUNNING`` record of flow run ``run_id`` of ``flow`` (``prh-pipeline``, ``prh-extract``)
    on ``config`` against ``target``: its process (to tell it died on this host), start time,
    store, config, code version and heartbeat interval."""
    return {
        "run_id": run_id,
        "flow_run_id": run_id,
        "flow": flow,
        "status": RUNNING,
        "process": current_owner(),
        "started_at": utc_now(),
        "store": target.display_url,
        "config": config.model_dump(mode="json"),
        "code_version": code_version("tasks", "storage"),
        "heartbeat_s": RUN_HEARTBEAT_SECONDS,
    }


@contextmanager
def recorded(target: Store, key: str, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Write ``record`` at ``key`` and keep the run's sign of life while the block runs; at the end
    write it again with ``finished_at``. The block sets the outcome (``status`` and what it
    published); when it raises, ``status`` becomes ``CANCELLED`` (stopped: Ctrl-C, SIGTERM,
    cancelled from the UI), ``CRASHED`` (``SystemExit``: the process made to exit, as when its
    worker is killed; Prefect says CRASHED too) or ``FAILED``, with the error on one line. A stopped (or failed) run
    first tells its tasks in flight (in this process) to stop at their next safe point and waits up to
    ``STOP_GRACE_S`` for them (``tasks.stop_request``), so that its end and sign of life cover
    what they write; a second signal ends the wait at once. Tasks the block submits run in its
    ``run_scope``."""
    target.write_json(key, record)
    raised: BaseException | None = None
    # removed after the final record is written
    with RunHeartbeat(target, str(record["run_id"])), run_scope() as scope:
        try:
            yield record
        except BaseException as error:
            raised = error
            stopped = isinstance(error, (KeyboardInterrupt, TerminationSignal))
            exiting = isinstance(error, SystemExit)  # the process made to exit (its worker killed): Prefect's CRASHED
            record.update(status=CANCELLED if stopped else CRASHED if exiting else FAILED, error=one_line(error))
            scope.stop()  # stays set: a task still running after the wait stops before publishing
            try:
                if not scope.wait_until_idle(0):
                    logging.getLogger("prh.run").warning(
                        "stopping: waiting up to %.0f s for the tasks in flight to reach a safe point (stop again "
                        "to end now)", STOP_GRACE_S)
                    scope.wait_until_idle(STOP_GRACE_S)
            except (KeyboardInterrupt, TerminationSignal):
                pass  # asked twice: the record now
            raise
        finally:
            record["finished_at"] = utc_now()
            write_outcome(target, key, record, raised)


class RunRecordNotWritten(StoreNotWritable):
    """A run did its work but its final record could not be written (a full disk, a store gone):
    the record still says ``RUNNING``. The message names the record, the store and the cause."""


def write_outcome(target: Store, key: str, record: dict[str, Any], raised: BaseException | None) -> None:
    """Write the run's final ``record`` at ``key``. When that fails, the run's own error
    (``raised``), if it has one, stays what the run ends with (a disk that filled up while
    publishing had its ``cannot write runs/<id>.json`` replace which models and pairs failed),
    and the missing record is logged; a run without one ends with :class:`RunRecordNotWritten`
    (it had ended with a bare store error, as if nothing had been published)."""
    try:
        target.write_json(key, record)
    except Exception as error:  # noqa: BLE001 - said below, with the run's own outcome
        status = record.get("status")
        ended = f"ended {status}" if status != RUNNING else "did its work"
        message = (f"run {record.get('run_id')} {ended}, but its record {key} could not be written: {error}. The record "
                   "still says RUNNING (shown CRASHED once this process ends); what the run published stays in the "
                   "store, and a rerun computes none of it again")
        if raised is None:
            raise RunRecordNotWritten(message) from error
        logging.getLogger("prh.run").error("%s", message)
