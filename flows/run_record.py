"""The record a flow run keeps in the store while it runs and after it ends.

``prh-pipeline`` keeps ``runs/<run_id>.json`` (the catalog's ``runs`` view), ``prh-extract``
``runs/extractions/<run_id>.json``. Both are written ``RUNNING`` when the run starts, renew a sign
of life while it runs (``storage.runs.RunHeartbeat``), and are written again with the outcome and
``finished_at`` whatever happens: that is how ``prh gc`` and the next run tell a live run from a
dead one, and which versions a run used.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from typing import Any, Iterator

from prefect.exceptions import TerminationSignal

from storage.owner import current_owner
from storage.runs import CANCELLED, FAILED, RUN_HEARTBEAT_SECONDS, RUNNING, RunHeartbeat
from storage.store import Store, utc_now
from storage.versioning import code_version
from tasks.params import PipelineConfig


def one_line(error: BaseException) -> str:
    """``Type: message`` of ``error`` on one line, as records and logs show it."""
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
    published); when it raises, ``status`` becomes ``CANCELLED`` (stopped: Ctrl-C, cancelled from
    the UI) or ``FAILED``, with the error on one line."""
    target.write_json(key, record)
    with RunHeartbeat(target, str(record["run_id"])):  # removed after the final record is written
        try:
            yield record
        except BaseException as error:
            stopped = isinstance(error, (KeyboardInterrupt, TerminationSignal))
            record.update(status=CANCELLED if stopped else FAILED, error=one_line(error))
            raise
        finally:
            record["finished_at"] = utc_now()
            target.write_json(key, record)
