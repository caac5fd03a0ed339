"""The record a flow run keeps in the store while it runs and after it ends.

``prh-pipeline`` keeps ``runs/<run_id>.json`` (the catalog's ``runs`` view), ``prh-extract``
``runs/extractions/<run_id>.json``. Both are written ``RUNNING`` when the run starts, renew a sign
of life while it runs (``storage.runs.RunHeartbeat``), and are written again with the outcome and
``finished_at`` whatever happens: that is how ``prh gc`` and the next run tell a live run from a
dead one, and which versions a run used.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from prefect.exceptions import Pause, TerminationSignal

from storage.figure_cache import REPORT_CODE, drawing_version
from storage.owner import current_owner
from storage.runs import (CANCELLED, CRASHED, FAILED, ORDERED_AT, PARTIAL_ALIGNMENTS, RUN_HEARTBEAT_SECONDS, RUNNING,
                          RecordsRead, RunHeartbeat, latest_placed, place_after)
from storage.store import Store, utc_now
from storage.store_errors import StoreNotWritable
from storage.versioning import code_version
from tasks.params import PipelineConfig
from tasks.stop_request import RunScope, current_scope, remote_stop_name, run_scope
from tasks.task_attempts import attempts_of_failure, error_line

#: seconds a stopped run waits for its tasks in flight to reach a safe point before its record
#: says it ended (Prefect's process worker kills a cancelled flow run's process 30 s after its
#: SIGTERM)
STOP_GRACE_S = 20.0


#: The error of a run paused (suspended) from the Prefect UI or API: Prefect's ``Pause``, raised
#: in the flow once the engine sees the state, carries no message (the record had read ``FAILED``,
#: ``prefect.exceptions.Pause``). Prefect 3.9's Resume of such a run sets it ``RUNNING`` and starts
#: nothing (measured through a process worker)
PAUSED_ERROR = ("Pause: the flow run was paused (suspended) in Prefect, which ended its process; Resume would only show "
                "it RUNNING with nothing running it: cancel it, then Retry it (it runs again from the start, reusing "
                "what is stored)")


def one_line(error: BaseException) -> str:
    """``Type: message`` of ``error`` on one line, as records and logs show it. Prefect's
    ``TerminationSignal`` (a cancel from the UI: the worker's SIGTERM) carries no message (it is
    raised as ``TerminationSignal(signal=n)``; the runs view had shown
    ``prefect.exceptions.TerminationSignal``, or ``...: 15``): it reads ``TerminationSignal: SIGTERM``.
    Prefect's ``Pause`` (the run paused from the UI or API) reads :data:`PAUSED_ERROR`."""
    if isinstance(error, TerminationSignal):
        number = getattr(error, "signal", None)
        try:
            name = signal.Signals(number).name
        except (TypeError, ValueError):
            name = f"signal {number}"
        return f"TerminationSignal: {name}"
    if isinstance(error, Pause):
        return PAUSED_ERROR
    return error_line(error)


#: How the id of a run without a Prefect flow run of its own starts (:func:`local_run_id`).
LOCAL_RUN_PREFIX = "local-"


def local_run_id(now: datetime | None = None) -> str:
    """A new id for a run that has no Prefect flow run of its own (:func:`run_id_of`):
    ``local-<UTC start, YYYYmmddTHHMMSSZ>-<8 random hex digits>``, e.g.
    ``local-20261206T150133Z-3f9a1c2b``: readable, sorted by start to the second, and apart from
    every other run's (32 random bits: two runs started in one second differ but for one chance
    in 4e9). Every such run had the id ``local``: a second one took the first one's record
    (``runs/local.json``) for its own earlier attempt, continued it and rewrote it, and its report
    page (``reports/local/``)."""
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{LOCAL_RUN_PREFIX}{moment:%Y%m%dT%H%M%S}Z-{secrets.token_hex(4)}"


def run_id_of(flow: Any) -> str:
    """The run id of a run of ``flow`` (prh's Prefect ``Flow``), asked from the flow's body: its
    Prefect flow run's id when the body runs as a flow run of ``flow`` (`prh run`, a deployment, a
    schedule, a sub-flow call; a retry runs again under that id, and continues its record), else
    a new :func:`local_run_id`. Else: the flow's function called directly (``flow.fn(...)``) in
    a task outside any flow (Prefect gave no id: the run was ``local``) or inside another flow
    (the id was that flow's: two such calls from one flow shared a record and a report page, the
    second taking the first for its own earlier attempt)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run, running = getattr(context, "flow_run", None), getattr(context, "flow", None)
    # the function, for a copy made by with_options; the name, for a flow loaded again from its file
    if run is not None and running is not None and (getattr(running, "fn", None) is flow.fn
                                                    or getattr(running, "name", None) == flow.name):
        return str(run.id)
    run_id = local_run_id()
    _run_logger().info("run %s: %s runs outside a flow run of its own (its function called directly), under a new "
                       "run id", run_id, flow.name)
    return run_id


def _enclosing_flow_run_id() -> str | None:
    """The id of the Prefect flow run this code runs in (a task's: its flow's), None outside any."""
    from prefect.context import FlowRunContext

    run = getattr(FlowRunContext.get(), "flow_run", None)
    return str(run.id) if run is not None else None


def new_record(target: Store, config: PipelineConfig, run_id: str, flow: str) -> dict[str, Any]:
    """A ``RUNNING`` record of flow run ``run_id`` of ``flow`` (``prh-pipeline``, ``prh-extract``)
    on ``config`` against ``target``: its process (to tell it died on this host), start time,
    store, config, code version, report code version (``storage.figure_cache.REPORT_CODE``: the
    figure-cache namespace its report draws into, which ``prh gc`` keeps while the run is alive)
    and heartbeat interval. ``flow_run_id`` is ``run_id``, but for a
    run without a flow run of its own (a :func:`local_run_id`): the flow run it ran in, whose page
    holds its logs and artifacts, or None (a task outside any flow)."""
    return {
        "run_id": run_id,
        "flow_run_id": _enclosing_flow_run_id() if run_id.startswith(LOCAL_RUN_PREFIX) else run_id,
        "flow": flow,
        "status": RUNNING,
        "process": current_owner(),
        "started_at": utc_now(),
        "store": target.display_url,
        "config": config.model_dump(mode="json"),
        "code_version": code_version("tasks", "storage", watch=False),  # names the code; keys no result
        REPORT_CODE: drawing_version(),  # the figure-cache namespace it draws into: gc keeps it while the run is alive
        "heartbeat_s": RUN_HEARTBEAT_SECONDS,
    }


@contextmanager
def recorded(target: Store, key: str, record: dict[str, Any], read: RecordsRead | None = None) -> Iterator[dict[str, Any]]:
    """Write ``record`` at ``key`` and keep the run's sign of life while the block runs; at the end
    write it again with ``finished_at``. The block sets the outcome (``status`` and what it
    published); when it raises, ``status`` becomes ``CANCELLED`` (stopped: Ctrl-C, SIGTERM,
    cancelled or paused from the UI), ``CRASHED`` (``SystemExit``: the process made to exit, as when its
    worker is killed; Prefect says CRASHED too) or ``FAILED``, with the error on one line. A stopped (or failed) run
    first tells its tasks in flight (in this process) to stop at their next safe point and waits up to
    ``STOP_GRACE_S`` for them (:func:`stop_tasks_in_flight`; the block may have waited already,
    to list what they published meanwhile), so that its end and sign of life cover
    what they write; a second signal ends the wait at once. ``ordered_at`` places the run after
    every run recorded before it started (``storage.runs.place_after``: a record dated ahead by a
    host's clock stays the latest run only until a run started after it ends). Tasks the block submits run in its
    ``run_scope``. A retry of the flow run (same run id, same ``key``) lists the earlier attempts
    in the record's ``attempts`` and keeps the work they did (:func:`carry_over_work`). ``read``: the
    records the run's start read (``storage.runs.open_for_run``), which it is placed after without
    reading them again; the folder's records are read here when ``read`` lacks them."""
    earlier = earlier_attempt(target, key, record)
    if earlier is not None:
        record["attempts"] = attempts_before(earlier)
        last = record["attempts"][-1]
        _run_logger().info("run %s runs again (attempt %d; the last one, started %s, ended %s): continuing it, its record "
                           "keeps what the earlier attempts extracted and aligned", record.get("run_id"),
                           len(record["attempts"]) + 1, last.get("started_at"), last.get("status"))
    folder = key.rsplit("/", 1)[0]
    latest = latest_placed(target, folder, str(record["run_id"]), (read or {}).get(folder))
    target.write_json(key, _with_earlier_work(record, earlier))
    raised: BaseException | None = None
    # removed after the final record is written
    with RunHeartbeat(target, str(record["run_id"])), run_scope() as scope:
        try:
            _RECORDING[id(record)] = (target, key, earlier)  # what write_progress needs, until the end
            yield record
        except BaseException as error:
            raised = error
            stopped = isinstance(error, (KeyboardInterrupt, TerminationSignal, Pause))  # Pause: paused in the UI
            exiting = isinstance(error, SystemExit)  # the process made to exit (its worker killed): Prefect's CRASHED
            record.update(status=CANCELLED if stopped else CRASHED if exiting else FAILED, error=one_line(error))
            attempts = attempts_of_failure(error)  # a task of the run's own (its dataset's) retried: what each attempt said
            if attempts:
                record["error_attempts"] = attempts
            # the models and pairs that failed: those the block listed by then, else none (a run that
            # failed before any model, on its dataset, had no `failures` where a completed run has `[]`)
            record.setdefault("failures", [])
            stop_tasks_in_flight(scope=scope)  # at once when the block already waited (to list what they published)
            raise
        finally:
            _RECORDING.pop(id(record), None)
            record["finished_at"] = utc_now()
            record[ORDERED_AT] = place_after(record["finished_at"], latest)
            if earlier is not None:
                carry_over_work(record, earlier)
            write_outcome(target, key, record, raised)


#: The records of the runs in flight in this process (``id(record)`` -> (store, key, earlier
#: attempt's record or None)), from :func:`recorded`'s start to its end: :func:`write_progress`.
_RECORDING: dict[int, tuple[Store, str, dict[str, Any] | None]] = {}


def write_progress(record: dict[str, Any]) -> None:
    """Write the ``RUNNING`` ``record`` of a run in flight (inside :func:`recorded`) as it stands,
    with its earlier attempts' work for a retry (as its start did): what it has settled so far
    (its dataset version, then the models' feature versions) stays in the store should the run be
    killed (kill -9, the OOM killer, a lost machine), whose record is then marked ``CRASHED`` as
    it was last written. A killed run's record had kept only what its start wrote: no dataset
    version, no model, nothing to say what it had been working on. A write that fails (the store
    unreachable, the disk full) only logs a warning: the run goes on, and its end writes the
    record again. Nothing for a record that no :func:`recorded` block holds."""
    recording = _RECORDING.get(id(record))
    if recording is None or record.get("status") != RUNNING:
        return
    target, key, earlier = recording
    try:
        target.write_json(key, _with_earlier_work(record, earlier))
    except Exception as error:  # noqa: BLE001 - see the docstring
        logging.getLogger("prh.run").warning("could not write the progress of run %s to %s (%s): its end writes it",
                                             record.get("run_id"), key, one_line(error))


#: seconds a stopped run then waits for the futures of its tasks that ended to turn final (the task
#: has returned; Prefect sets its state through the API after that), within ``STOP_GRACE_S``
FINAL_STATE_S = 5.0


def stop_tasks_in_flight(futures: Iterable[Any] = (), scope: RunScope | None = None) -> None:
    """Ask the tasks in flight of a stopped (or failed) run (``scope``, default the current run's:
    ``tasks.stop_request``) to stop at their next safe point and wait up to ``STOP_GRACE_S`` for
    them, then up to ``FINAL_STATE_S`` more (within ``STOP_GRACE_S``) for ``futures`` (Prefect's,
    of the run's tasks) to be final, so that what a task published meanwhile (a pair past its last
    safe point) is among the finished futures. Only the first call waits (:meth:`RunScope.first_wait`:
    the flow's, before it lists what its tasks published; then :func:`recorded`'s); a second
    signal ends the wait at once. Nothing to wait for outside a run."""
    scope = current_scope() if scope is None else scope
    if scope is None:
        return
    scope.stop()  # stays set: a task still running after the wait stops before publishing
    stop_remote_tasks()
    if not scope.first_wait():
        return
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        if not scope.wait_until_idle(0):
            logging.getLogger("prh.run").warning(
                "stopping: waiting up to %.0f s for the tasks in flight to reach a safe point (stop again "
                "to end now)", STOP_GRACE_S)
            if not scope.wait_until_idle(STOP_GRACE_S):
                return
        final_by = min(deadline, time.monotonic() + FINAL_STATE_S)
        for future in futures:
            left = final_by - time.monotonic()
            if future is None or left <= 0:
                continue
            try:
                future.wait(left)
            except Exception:  # noqa: BLE001 - its state unknown: not listed as finished
                continue
    except (KeyboardInterrupt, TerminationSignal):
        pass  # asked twice: the record now


def stop_remote_tasks() -> None:
    """Ask the run's tasks on a Dask cluster (the flow's task runner a ``DaskTaskRunner`` that
    has submitted work) to stop at their next safe point: set the Dask ``Event`` of this attempt of
    the run (``tasks.stop_request.remote_stop_name``: a retry of the run has its own), which
    their :class:`tasks.stop_request.RemoteRunScope` looks at. Closing the Dask client as the flow
    ends releases the tasks still queued, but a task running on a worker ran on to its end, and
    published, after the run had ended. Nothing for another task runner; a scheduler that does not
    answer within ``REMOTE_STOP_WAIT_S`` is logged, not raised or waited for (the run is stopping
    already: a lost scheduler had held it up for Dask's 30 s connect timeout)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    client = getattr(getattr(context, "task_runner", None), "_client", None)  # prefect_dask: set once it submitted
    flow_run = getattr(context, "flow_run", None)
    if client is None or flow_run is None:
        return
    failed: list[BaseException] = []

    def tell() -> None:
        try:
            from distributed import Event

            Event(remote_stop_name(str(flow_run.id), flow_run.run_count), client=client).set()
        except Exception as error:  # noqa: BLE001 - see the docstring
            failed.append(error)

    sender = threading.Thread(target=tell, name="prh-stop-remote-tasks", daemon=True)
    sender.start()
    sender.join(REMOTE_STOP_WAIT_S)
    if sender.is_alive() or failed:
        why = one_line(failed[0]) if failed else f"the scheduler did not answer within {REMOTE_STOP_WAIT_S:g} s"
        logging.getLogger("prh.run").warning("stopping: could not tell the run's tasks on the Dask cluster to stop: %s", why)


#: Seconds :func:`stop_remote_tasks` waits for the Dask scheduler to take the stop request (it
#: answers in milliseconds; one that is gone would hold the stop up for its 30 s connect timeout).
REMOTE_STOP_WAIT_S = 5.0


#: What :func:`attempts_before` keeps of each earlier attempt of a flow run.
ATTEMPT_FIELDS = ("started_at", "finished_at", "status", "error")
#: Counts of new work a record keeps, summed over the attempts of one flow run (``carry_over_work``).
WORK_COUNTS = ("aligned", "metrics_computed", "metrics_copied")


def earlier_attempt(target: Store, key: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """The record an earlier attempt of the same flow run left at ``key``: a run retried from the
    Prefect UI (or the API: ``Scheduled`` set on a failed, crashed, cancelled or completed flow
    run) runs again under the same run id, so the same record. None when there is none (a first
    attempt), or it does not read as a record of this run (damaged: it is replaced, as before)."""
    try:
        earlier = target.read_json(key)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(earlier, dict) or str(earlier.get("run_id")) != str(record.get("run_id")):
        return None
    return earlier


#: The error of an earlier attempt whose record still said ``RUNNING`` when its flow run ran again.
UNFINISHED_ATTEMPT = ("the attempt stopped without writing its end (its process, container or machine ended) and the "
                      "flow run was retried")


def attempts_before(earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``attempts`` of a retried run's record: the earlier attempts' own ``attempts`` and then
    the last one's start, end, status and error, oldest first. A last attempt whose record still
    says ``RUNNING`` (killed: a flow run is retried only once it ended) is ``CRASHED``
    (:data:`UNFINISHED_ATTEMPT`), as the next run would have marked it."""
    kept = [a for a in earlier.get("attempts") or [] if isinstance(a, dict)]
    last = {field: earlier.get(field) for field in ATTEMPT_FIELDS}
    if last["status"] == RUNNING:
        last.update(status=CRASHED, error=UNFINISHED_ATTEMPT)
    return [*kept, last]


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (its lines in the Prefect UI) inside a flow run, else ``prh.run``."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prh.run")


def carry_over_work(record: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Keep in a retried run's final ``record`` the work its earlier attempts did (``earlier``:
    their record). The retry finds stored what they published and counts it reused: a completed
    run retried from the UI had its record rewritten to say it extracted and aligned nothing,
    and no record said which run had.

    A model an earlier attempt extracted stays ``extracted`` (not ``reused``) where this attempt
    used the same feature version. A model this attempt did not reach (it failed or stopped
    first, on the same dataset version or before it had one) keeps the earlier attempts' feature
    version, ``extracted`` or ``reused`` (and the record their dataset version): a retry that
    failed before any model had dropped them. ``aligned`` and the metric counts add the earlier
    attempts' on the same dataset version: an attempt counts only what it did not find stored,
    so never what an earlier one published (they had been added only where this attempt listed
    every version the earlier ones listed: a completed run retried and cancelled after one pair,
    then retried again, ended counting nothing of its first attempt). A whole grid an earlier
    attempt listed (``alignment_versions``) stays the run's results when this attempt lists none
    of its own, on the same dataset version (a completed run retried and failing early had
    dropped out of the ``*_latest`` views and ``prh report``); otherwise the pairs the attempts
    aligned before stopping add up in ``partial_alignment_versions`` (earlier ones first)."""
    mine = record.get("feature_versions") if isinstance(record.get("feature_versions"), dict) else {}
    before = earlier.get("feature_versions") if isinstance(earlier.get("feature_versions"), dict) else {}
    same_dataset = record.get("dataset_version") in (None, earlier.get("dataset_version"))
    unreached = {name: version for name, version in before.items()
                 if name not in mine and isinstance(version, str)} if same_dataset else {}
    theirs = {name for name in _names(earlier.get("extracted"))
              if name in unreached or (name in mine and mine.get(name) == before.get(name))}
    if unreached:
        if record.get("dataset_version") is None:
            record["dataset_version"] = earlier.get("dataset_version")
        record["feature_versions"] = {**mine, **unreached}
        record["reused"] = sorted(set(_names(record.get("reused")))
                                  | (set(_names(earlier.get("reused"))) & set(unreached)))
    if theirs:
        record["extracted"] = sorted(set(_names(record.get("extracted"))) | theirs)
        record["reused"] = sorted(set(_names(record.get("reused"))) - theirs)
    if same_dataset:  # an attempt counts only what it found unstored: never a pair an earlier one published
        for count in WORK_COUNTS:
            now, then = record.get(count), earlier.get(count)
            if _is_count(then) and (_is_count(now) or now is None):
                record[count] = (now if _is_count(now) else 0) + then
    whole, listed = _names(earlier.get("alignment_versions")), aligned_versions(earlier)
    if whole and same_dataset and not _names(record.get("alignment_versions")):  # still this run's results
        record["alignment_versions"] = whole
    elif listed and same_dataset and not _names(record.get("alignment_versions")):
        record[PARTIAL_ALIGNMENTS] = list(dict.fromkeys(listed + _names(record.get(PARTIAL_ALIGNMENTS))))


def _with_earlier_work(record: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """What a run writes when it starts: ``record``, and for a retry a copy that already keeps
    its earlier attempts' work (:func:`carry_over_work`; ``record`` itself gets it at the end). An
    attempt killed without writing its end had left a record without it, and the next retry,
    carrying over from that record, dropped what the first attempt had extracted and aligned."""
    if earlier is None:
        return record
    started = {**record}
    carry_over_work(started, earlier)
    return started


def aligned_versions(record: dict[str, Any]) -> list[str]:
    """The alignment versions ``record`` lists: its grid's (``alignment_versions``), else those of
    a run that ended before it (:data:`PARTIAL_ALIGNMENTS`); none when it lists neither."""
    return _names(record.get("alignment_versions")) or _names(record.get(PARTIAL_ALIGNMENTS))


def _names(value: Any) -> list[str]:
    """The strings of a record's list field; none when it is not a list (damaged, absent)."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _is_count(value: Any) -> bool:
    """Whether a record's field holds a count (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


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
