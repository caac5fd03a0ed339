"""Run records (``runs/<run_id>.json``; the extraction stage's: ``runs/extractions/<run_id>.json``)
and what a new run cleans up after killed ones.

A run killed without a chance to write its end (kill -9, OOM killer, a container or machine
that stopped) would stay ``RUNNING`` for ever in the catalog's ``runs`` view. Two signs tell
that it is gone: its process (``storage.owner``), when it ran on this host and in this pid
namespace, no longer exists; or, wherever it ran, its sign of life (``runs/alive/<run_id>.json``,
renewed every ``RUN_HEARTBEAT_SECONDS`` while it runs) is older than ``STALE_RUN_SECONDS``. The
next run marks such records ``CRASHED`` and removes the files of versions that a dead writer left
unpublished (``Store.sweep_abandoned``); the catalog shows them ``CRASHED`` at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from storage import layout
from storage.keys import safe_component
from storage.owner import owner_is_alive, owner_is_dead
from storage.store import Store, modified_at, parse_json, utc_now
from storage.store_errors import StoreNotWritable, out_of_room
from storage.times import utc_time

log = logging.getLogger(__name__)

RUNNING, COMPLETED, FAILED, CRASHED, CANCELLED = "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"
#: Folder of the runs' signs of life, beside their records (``*.json`` directly under ``runs/``).
ALIVE = "alive"
#: A running run renews its sign of life this often.
RUN_HEARTBEAT_SECONDS = 60.0
#: A ``RUNNING`` record whose last sign of life is older than this is a run that stopped without
#: writing its end: 15 missed heartbeats, and room for minutes of clock skew between hosts.
STALE_RUN_SECONDS = 900.0
#: A ``RUNNING`` record without signs of life (written by a prh before they existed) that its
#: process cannot judge (another host, another container) is gone once started this long ago:
#: no run of the pipeline takes days, and until then it holds back ``prh gc``.
LEGACY_RUN_SECONDS = 3 * 86400.0


def alive_key(run_id: str) -> str:
    """Where run ``run_id`` leaves its sign of life while it runs."""
    return Store.key(layout.RUNS, ALIVE, f"{run_id}.json")


class RunHeartbeat:
    """While its ``with`` block runs, writes run ``run_id``'s sign of life (``{"run_id",
    "heartbeat_at": epoch seconds}`` at :func:`alive_key`) at once and then every ``interval``
    s; removes it at the end. A failed write (endpoint trouble) is tried again at the next beat:
    a run is only judged gone after ``STALE_RUN_SECONDS`` without one."""

    def __init__(self, store: Store, run_id: str, interval: float = RUN_HEARTBEAT_SECONDS) -> None:
        self._store, self._key, self._run_id, self._interval = store, alive_key(run_id), run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"run-heartbeat {run_id}", daemon=True)

    def __enter__(self) -> "RunHeartbeat":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60.0)
        try:
            self._store.delete(self._key)
        except Exception:  # noqa: BLE001 - a leftover sign of life only delays nothing: the record is final
            pass

    def _write(self) -> None:
        try:
            self._store.write_json(self._key, {"run_id": self._run_id, "heartbeat_at": time.time()})
        except Exception:  # noqa: BLE001 - the next beat tries again
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            self._write()


def epoch_seconds(timestamp: Any) -> float | None:
    """Seconds since the epoch of a stored time (``utc_now``'s ISO 8601, read as the catalog and
    the order of runs read it: ``storage.times.utc_time``), or None if it is not one. A reading of
    its own had taken a time with spaces around it for none (``prh gc --keep-runs`` refused a run
    it had just ordered as the newest) and one past ``datetime``'s range in UTC for a time."""
    moment = utc_time(timestamp)
    return None if moment is None else moment.timestamp()


def last_beat(store: Store, run_id: str, now: float) -> float | None:
    """When the run ``run_id`` last gave a sign of life (``runs/alive/<run_id>.json``, epoch
    seconds), None when it has none. A sign of life that does not read (cut short by a partial
    copy or sync, edited: ``heartbeat_at`` text, NaN) or lies far ahead (more than
    ``STALE_RUN_SECONDS``: edited, a clock years off) is judged by when its file was last written,
    as a publishing claim is: ignored, a live run's was taken for silence (its run marked
    ``CRASHED`` and its sign of life removed), and one far ahead kept a run alive for ever (`prh gc`
    never swept what was written after its start)."""
    try:
        key = alive_key(run_id)
    except ValueError:  # a run id that is no store key (an edited record): it has no sign of life
        return None
    try:
        beat = float(store.read_json(key)["heartbeat_at"])
        if math.isfinite(beat) and beat <= now + STALE_RUN_SECONDS:
            return beat
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        pass
    try:
        store.fs.invalidate_cache(store.path(key))
        return modified_at(store.fs.info(store.path(key)))
    except FileNotFoundError:
        return None


def gone_reason(store: Store, record: dict[str, Any], now: float | None = None) -> str | None:
    """Why the ``RUNNING`` run of ``record`` is known to have stopped without writing its end, or
    None while it may still run (or the record is not ``RUNNING``). A run whose process can be
    looked up (this host, this pid namespace) is judged by it alone: gone once it ended, never
    while it runs, however long its signs of life have been missing (a full disk that refused
    them, a clock set forward: such a live run had been marked ``CRASHED``). Elsewhere by its
    signs of life; a record written before runs had them (no ``heartbeat_s``) by its age: gone
    once started more than ``LEGACY_RUN_SECONDS`` ago."""
    if record.get("status") != RUNNING:
        return None
    if owner_is_dead(record.get("process")):
        return "the run's process ended without finishing it (killed or crashed)"
    if owner_is_alive(record.get("process")):
        return None
    now = time.time() if now is None else now
    if not record.get("heartbeat_s"):
        started = epoch_seconds(record.get("started_at"))
        if started is None or now - started <= LEGACY_RUN_SECONDS:
            return None
        return (f"started {(now - started) / 86400:.0f} days ago by a prh that left no signs of life, and never "
                "finished: its process, container or machine stopped without finishing it")
    last = epoch_seconds(record.get("started_at")) or 0.0
    beat = last_beat(store, str(record.get("run_id")), now)
    if beat is not None:
        last = max(last, beat)
    silent = now - last
    if silent <= STALE_RUN_SECONDS:
        return None
    since = datetime.fromtimestamp(last, timezone.utc).replace(microsecond=0).isoformat() if last else "its start"
    return (f"no sign of life from the run for {silent / 60:.0f} min (last at {since}): its process, "
            "container or machine stopped without finishing it")


#: The field of a run record that places the run among the store's runs (ISO 8601, UTC): its end
#: (``finished_at``), or just after the latest place of the runs recorded before it started when that is
#: later (:func:`place_after`). What "the latest run" orders by: the catalog's ``*_latest`` views,
#: ``prh report``'s default run, ``prh gc --keep-runs``.
ORDERED_AT = "ordered_at"
#: The field of a run record that lists the alignment versions of a run that ended before its
#: record listed its grid (``alignment_versions``, which makes it a run with results: the
#: catalog's ``*_latest`` views): those it had aligned (new or reused) when it stopped or failed,
#: or that an earlier attempt of the run listed when this one got no further
#: (``flows.run_record.carry_over_work``). The ``runs`` view's column of that name; ``prh gc
#: --keep-runs`` keeps them (``storage.run_retention``).
PARTIAL_ALIGNMENTS = "partial_alignment_versions"
#: How far after the latest run before it a run is placed when that run is dated later than its end.
ORDER_STEP = timedelta(microseconds=1)


def order_time(record: dict[str, Any]) -> datetime | None:
    """Where ``record``'s run stands among the store's runs (aware UTC): its :data:`ORDERED_AT`,
    else (a record written before prh placed runs, one not ended) its ``finished_at``, else its
    ``started_at``; None when none of them is an ISO 8601 time."""
    for field in (ORDERED_AT, "finished_at", "started_at"):
        moment = utc_time(record.get(field))
        if moment is not None:
            return moment
    return None


#: Where :func:`place_key` puts a run without a time: the oldest (the catalog's ``NULLS LAST``, newest first).
NO_TIME = datetime.min.replace(tzinfo=timezone.utc)


def place_key(record: dict[str, Any]) -> tuple[bool, datetime, bool, datetime, str]:
    """The key that sorts run records oldest first as the catalog orders "the latest run"
    (``storage.catalog.LATEST_RUN_SQL``): :func:`order_time`, then start time, then run id (records
    written before prh kept microseconds have whole seconds: two runs of one second are still ordered
    alike by both). Times compare to the microsecond, read as the catalog reads them
    (``storage.times.utc_time``), whatever offset they were written with; one that is no time
    sorts first (the catalog's ``NULLS LAST`` when newest first). ``prh gc --keep-runs``
    (``storage.run_retention.newest_runs``) and ``--keep-reports``
    (``storage.report_retention.stale_reports``) keep the newest by it."""
    placed, started = order_time(record), utc_time(record.get("started_at"))
    return (placed is not None, placed or NO_TIME, started is not None, started or NO_TIME, str(record.get("run_id") or ""))


def latest_placed(store: Store, folder: str, run_id: str, records: list[dict[str, Any]] | None = None) -> datetime | None:
    """The latest :func:`order_time` of the records in ``folder`` other than run ``run_id``'s
    (its own, when it has one, is its earlier attempt's), read when the run starts; None when
    there is none (a damaged record does not count). ``records``: those of ``folder`` that
    :func:`open_for_run` read as this run started (:data:`RecordsRead`), not read again (each
    cost a request on an object store, every run start, for every run the store ever held); read
    here when None. A store whose records cannot be listed or read raises, as
    :func:`open_for_run` does just before over the same records: the run fails before it writes
    its record (it had been placed at its own end without a word)."""
    if records is None:
        records = run_records(store, folder, damaged=[])
    return max((t for t in (order_time(r) for r in records if str(r.get("run_id")) != run_id) if t is not None),
               default=None)


def place_after(finished_at: str, latest: datetime | None) -> str:
    """The :data:`ORDERED_AT` of a run that ends at ``finished_at`` (ISO 8601): ``finished_at``, or
    :data:`ORDER_STEP` after ``latest`` (:func:`latest_placed`, the runs recorded before it) when
    that is not earlier. A run recorded while a host's clock ran ahead (set forward, then
    corrected) had stayed "the latest run" (the ``*_latest`` views, ``prh report``) until real
    time passed its dates; each run that starts after it now ends after it, whatever its own clock
    says."""
    mine = utc_time(finished_at)
    if mine is None or latest is None or latest < mine:
        return finished_at
    try:
        return (latest + ORDER_STEP).isoformat(timespec="microseconds")
    except OverflowError:  # a record dated at the end of time (hand-edited): no run can come after it
        return finished_at


def run_records(store: Store, folder: str = layout.RUNS, damaged: list[DamagedRecord] | None = None) -> list[dict[str, Any]]:
    """Every readable run record directly in ``folder`` (the pipeline runs'; the extraction
    stage's: :func:`extraction_records`), sorted by run id. A record that is not a JSON object
    (cut short, edited by hand) is left out and named (:class:`DamagedRecord`): appended to
    ``damaged`` when given, else logged as a warning.

    Copies that a copy or sync of the store adds beside the records are left out with a warning
    (never damaged: they do not stop ``prh gc``): a file whose name prh never gives a record
    (``<run_id>.json``, the id a safe key: :func:`storage.keys.safe_component`) that does not
    read (macOS's ``._<run_id>.json``), and a second record of a run whose own
    ``<run_id>.json`` is there (a sync conflict's ``<run_id> (conflicted copy).json``, Finder's
    ``<run_id> 2.json``, Syncthing's ``<run_id>.sync-conflict-....json``), which listed the run
    twice in the ``runs`` view. A readable copy is the run's record when its own file is missing."""
    records: list[tuple[str, dict[str, Any]]] = []  # (key, record) of each readable one
    found = _json_entries(store, folder)
    for key in sorted(e["key"] for e in found if e["type"] == "directory"):  # read_many raised IsADirectoryError
        problem = "a folder, not a file"
        if damaged is not None:
            damaged.append(DamagedRecord(key, problem, store.display_url))
        else:
            log.warning("%s; left out", DamagedRecord(key, problem, store.display_url))
    paths = sorted(store.path(e["key"]) for e in found if e["type"] != "directory")
    named: dict[str, str] = {}  # run id -> the key of the record read under its own name
    for path, raw in zip(paths, store.read_many(paths, folder)):
        if raw is None:  # removed since the listing
            continue
        try:
            record = parse_json(raw)
        except ValueError as error:
            problem: str | None = f"not JSON: {error}"
        else:
            problem = None if isinstance(record, dict) else "not a JSON object"
        key = store.key_of(path)
        if problem is None:
            records.append((key, record))
            if _stem(key) == record.get("run_id"):
                named[_stem(key)] = key
        elif not _record_name(key):
            _warn_once(store, key, f"{key} in store {store.display_url} is not a run record ({problem}; prh names each "
                                   "record <run_id>.json): left out, a file that a copy or sync of the store added? Remove it")
        elif damaged is not None:
            damaged.append(DamagedRecord(key, problem, store.display_url))
        else:
            log.warning("%s; left out", DamagedRecord(key, problem, store.display_url))
    kept = []
    for key, record in records:
        run_id = record.get("run_id")
        if isinstance(run_id, str) and named.get(run_id, key) != key:
            _warn_once(store, key, f"{key} in store {store.display_url} is a copy of run {run_id}'s record "
                                   f"{named[run_id]} (made by a copy or sync of the store?): left out; remove it")
            continue
        kept.append(record)
    return kept


def _json_entries(store: Store, folder: str) -> list[dict[str, Any]]:
    """The ``*.json`` names directly in ``folder`` (:meth:`Store.entries`: files and folders), from
    one listing (on S3 one LIST request per 1,000 names; an existence check and a glob had been
    six): nothing when the folder, or the bucket, does not exist."""
    return [entry for entry in store.entries(folder) if entry["name"].endswith(".json")]


#: (store, key) of the stray files :func:`run_records` warned about: one command lists the records
#: several times (gc: the crashed runs, the live ones, retention), and says so once.
_WARNED: set[tuple[str, str]] = set()


def _warn_once(store: Store, key: str, message: str) -> None:
    """Log ``message`` about the file ``key`` of ``store`` as a warning, the first time only."""
    if (store.url, key) not in _WARNED:
        _WARNED.add((store.url, key))
        log.warning("%s", message)


def _stem(key: str) -> str:
    """The name of the record file ``key`` without its folder and ``.json``."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def _record_name(key: str) -> bool:
    """Whether ``key`` is named as prh names a run record: ``<run_id>.json``, a safe key."""
    try:
        safe_component(_stem(key), "run id")
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class DamagedRecord:
    """A run record that cannot be read: its ``key``, the ``problem`` and the ``store`` shown."""

    key: str
    problem: str
    store: str

    def __str__(self) -> str:
        return (f"run record {self.key} in store {self.store} is damaged ({self.problem}); which versions its run "
                "published or reused is unknown: repair or remove that file")


def extraction_records(store: Store, damaged: list[DamagedRecord] | None = None) -> list[dict[str, Any]]:
    """Every readable record of the extraction stage (``prh-extract``, ``runs/extractions/``);
    ``damaged`` as for :func:`run_records`."""
    return run_records(store, Store.key(layout.RUNS, layout.EXTRACTIONS), damaged)


#: The run records a run start read, by folder (``runs``, ``runs/extractions``): each readable
#: record as :func:`mark_crashed_runs` left it (one it marked ``CRASHED``, as marked; one it read
#: again, as read again; one that no longer read when read again, removed or damaged since the
#: listing, as listed: it was a record as of the start, and a stray copy read in place of a
#: missing record fails the same reading again). What the same start then places itself after
#: (:func:`latest_placed`), in the same process, without reading the records again. Never kept
#: past the start: the catalog and ``prh gc`` read the records afresh.
RecordsRead = dict[str, list[dict[str, Any]]]


def mark_crashed_runs(store: Store, dry_run: bool = False, retrying: str | None = None,
                      read: RecordsRead | None = None) -> list[str]:
    """Mark ``CRASHED`` every ``RUNNING`` record (of a pipeline run or an extraction stage) of a
    run known to have stopped (:func:`gone_reason`: its process died on this host, or it gave no
    sign of life for ``STALE_RUN_SECONDS``); returns their run ids (``dry_run``: only those ids).
    Other records are left alone, and so are the records of run ``retrying``: the run that opens
    the store, whose record, when it has one, is its own earlier attempt's (a flow run retried
    from the Prefect UI runs again under its id), not another run's (it had been marked and
    logged as an earlier run that crashed; ``flows.run_record.recorded`` lists it in
    ``attempts``). Each record is read again just before it is marked: a run that
    wrote its end meanwhile (and then exited, so that its process is gone) keeps what it wrote
    (the copy read first said ``RUNNING``, and writing it back made a completed run ``CRASHED``).
    ``read``, when given, receives the records as this left them (:data:`RecordsRead`)."""
    crashed: list[str] = []
    quiet: list[DamagedRecord] = []  # a damaged record is named by the catalog, prh verify and gc --keep-runs
    for folder, records, key_of in ((layout.RUNS, run_records(store, damaged=quiet), layout.run_key),
                                    (Store.key(layout.RUNS, layout.EXTRACTIONS), extraction_records(store, quiet),
                                     layout.extraction_key)):
        left: list[dict[str, Any]] = []
        for listed in records:
            record, marked = _mark_if_gone(store, listed, key_of, retrying, dry_run)
            left.append(record)
            if marked is not None:
                crashed.append(marked)
        if read is not None:
            read[folder] = left
    return crashed


def _mark_if_gone(store: Store, listed: dict[str, Any], key_of: Callable[[str], str], retrying: str | None,
                  dry_run: bool) -> tuple[dict[str, Any], str | None]:
    """:func:`mark_crashed_runs` for one record ``listed`` (stored at ``key_of(run_id)``): the
    record as it leaves it (read again, and marked when still gone; ``listed`` when it was not
    read again, or no longer reads: removed or damaged since the listing), and the run id it
    marks (``dry_run``: would mark), or None."""
    run_id = str(listed.get("run_id"))
    if (retrying is not None and run_id == retrying) or gone_reason(store, listed) is None:
        return listed, None
    record = listed
    if not dry_run:
        try:
            record = store.read_json(key_of(run_id))
        except (FileNotFoundError, ValueError):
            return listed, None
        if not isinstance(record, dict):
            return listed, None
    reason = gone_reason(store, record)
    if reason is None:
        return record, None
    if not dry_run:
        record.update(status=CRASHED, error=reason, finished_at=None, marked_crashed_at=utc_now())
        store.write_json(key_of(run_id), record)
        store.delete(alive_key(run_id))
    return record, run_id


#: The statuses a run writes at its end (``CRASHED`` is not one: a run marked so may beat again, :func:`resumed`).
ENDED = (COMPLETED, FAILED, CANCELLED)


def signs_of_ended_runs(store: Store, dry_run: bool = False) -> dict[str, tuple[str, int]]:
    """Remove (with ``dry_run`` only list) the signs of life (``runs/alive/<run_id>.json``) of runs
    whose record (``runs/<run_id>.json`` or ``runs/extractions/<run_id>.json``) says they ended:
    ``COMPLETED``, ``FAILED`` or ``CANCELLED``, with a last sign of life no later than one heartbeat
    after its ``finished_at``. A run killed between writing its end and removing its sign
    (:class:`RunHeartbeat`) left it for good. Each sign is read before its record: a retry of the
    run (same id) writes its record ``RUNNING`` before its first sign of life, so a sign seen
    beside an ended record is the ended attempt's. Returns ``key -> (status, bytes)``, by key."""
    found: dict[str, tuple[str, int]] = {}
    now = time.time()
    for entry in sorted(_json_entries(store, Store.key(layout.RUNS, ALIVE)), key=lambda e: e["key"]):
        key = entry["key"]
        run_id = _stem(key)
        if entry.get("type") != "file" or not _record_name(key):
            continue
        beat = last_beat(store, run_id, now)
        if beat is None:  # removed meanwhile
            continue
        records = []
        for record_key in (layout.run_key(run_id), layout.extraction_key(run_id)):
            try:
                records.append(store.read_json(record_key))
            except (FileNotFoundError, ValueError):
                continue
        ends = [epoch_seconds(r.get("finished_at")) if isinstance(r, dict) and r.get("status") in ENDED else None
                for r in records]
        if not ends or any(end is None or beat > end + RUN_HEARTBEAT_SECONDS for end in ends):
            continue  # no record, a live (or crashed) one, or a sign newer than the end
        found[key] = (str(records[0].get("status")), int(entry.get("size") or 0))
        if not dry_run:
            store.delete(key)
    return found


def sweep_ended_signs(store: Store) -> dict[str, tuple[str, int]]:
    """:func:`signs_of_ended_runs` as a run starts (``flows.pipeline``, ``flows.stages``): the
    signs of life of ended runs killed before removing them went only with `prh gc`. Never a live
    run's (its record says ``RUNNING``), a ``CRASHED`` one's (it may beat again: :func:`resumed`)
    or a retry's (its record says ``RUNNING`` before its first sign); the run's own earlier
    attempt's goes (its new sign is written after this). Costs one listing of ``runs/alive/``
    and a few reads per sign there. A store error only logs a warning: a leftover sign of life
    holds nothing back, and the run that starts is not to fail over one (`prh gc` removes it).
    Returns what :func:`signs_of_ended_runs` removed."""
    try:
        return signs_of_ended_runs(store)
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.warning("could not remove the signs of life of ended runs in store %s (%s): `prh gc` removes them",
                    store.display_url, error)
        return {}


def live_records(store: Store, records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The records of the runs that may still be running (``RUNNING``, not known gone:
    :func:`gone_reason`; or :func:`resumed`) among ``records`` (default: every pipeline run and
    extraction stage)."""
    if records is None:
        quiet: list[DamagedRecord] = []
        records = run_records(store, damaged=quiet) + extraction_records(store, quiet)
    back = resumed_runs(store, records)
    return [r for r in records if (r.get("status") == RUNNING and gone_reason(store, r) is None)
            or str(r.get("run_id")) in back]


def resumed_runs(store: Store, records: list[dict[str, Any]]) -> set[str]:
    """Ids of the ``CRASHED`` runs among ``records`` that beat again (:func:`resumed`); one listing
    of the signs of life, and only when some record is ``CRASHED``."""
    crashed = [r for r in records if r.get("status") == CRASHED]
    beating = _beating_runs(store) if crashed else set()
    return {str(r.get("run_id")) for r in crashed if str(r.get("run_id")) in beating and resumed(store, r)}


def _beating_runs(store: Store) -> set[str]:
    """Ids of the runs with a sign of life (``runs/alive/<run_id>.json``), from one listing."""
    return {_stem(entry["key"]) for entry in _json_entries(store, Store.key(layout.RUNS, ALIVE))}


def resumed(store: Store, record: dict[str, Any], now: float | None = None) -> bool:
    """Whether the run of a ``CRASHED`` record is beating again: marked for its silence (a process
    stopped for longer than ``STALE_RUN_SECONDS``: a suspended machine, SIGSTOP) and then resumed,
    it writes its sign of life again (marking it removed the old one) and will write its end.
    Until then it is a live run: what it may be writing or reusing is not cleaned up."""
    if record.get("status") != CRASHED:
        return False
    now = time.time() if now is None else now
    beat = last_beat(store, str(record.get("run_id")), now)
    if beat is None:
        return False
    marked = epoch_seconds(record.get("marked_crashed_at")) or 0.0
    return beat > marked and now - beat <= STALE_RUN_SECONDS


#: Times read from another clock than this host's (a run's start on another host, an object
#: store's ``LastModified``, whole seconds) may be this far off: what gc keeps as a live run's or
#: a kept run's is kept from this much earlier (as ``STALE_RUN_SECONDS``).
CLOCK_SKEW_SECONDS = 900.0


def live_runs_since(store: Store) -> float | None:
    """The start (epoch seconds) of the earliest run (pipeline or extraction stage) not known to
    have stopped (:func:`live_records`), less :data:`CLOCK_SKEW_SECONDS`, or None when no run is
    alive: what such a run may still be writing (its extraction shards, its uploads) is not to be
    cleaned up. Less the skew: the run's clock is not the store's, and an object store's
    ``LastModified`` has whole seconds (a shard written in the second its run started dates from
    before the start's microseconds)."""
    starts = [epoch_seconds(r.get("started_at")) for r in live_records(store)]
    known = [t for t in starts if t is not None]
    if not starts:
        return None
    return (min(known) if known else time.time()) - CLOCK_SKEW_SECONDS


def runs_as_known(store: Store) -> list[dict[str, Any]]:
    """:func:`run_records`, with every run known to have stopped shown ``CRASHED`` (its reason as
    ``error``) though no run has marked it yet, and every run marked ``CRASHED`` that beats again
    (:func:`resumed`) shown ``RUNNING``: what the catalog's ``runs`` view shows. Writes nothing."""
    records = run_records(store)
    back = resumed_runs(store, records)
    for record in records:
        reason = gone_reason(store, record)
        if reason is not None:
            record.update(status=CRASHED, error=reason)
        elif str(record.get("run_id")) in back:
            record.update(status=RUNNING, error=None)
    return records


#: Stores (:func:`_probe_key`) whose write probe the caller of :func:`probe_made` just made, while its block runs.
_PROBED: set[tuple[str, str, str]] = set()
_PROBED_LOCK = threading.Lock()


def _probe_key(store: Store) -> tuple[str, str, str]:
    """What makes a probe of ``store`` one of another Store object: its URL (with any user part),
    its filesystem class and the options it was opened with (endpoint, retries; credentials come
    from this process's environment, the same for both)."""
    fs = store.fs
    return store.url, f"{type(fs).__module__}.{type(fs).__qualname__}", repr(sorted(fs.storage_options.items()))


@contextlib.contextmanager
def probe_made(store: Store) -> Iterator[None]:
    """While the block runs, the first :func:`open_for_run` in this process of the store ``store``
    opens (same URL, filesystem and options; its default free space) skips its write probe
    (:meth:`Store.check_writable`): the caller has just made it. `prh run` probes before
    Prefect's server starts; its flow, run in the same process, then opens the store. A flow run
    from the UI or a schedule runs in a worker's process and probes; so does a second opening
    (a retry of the flow) and any opening after the block. No parameter or environment variable
    carries it: nothing else can ask to skip a probe."""
    key = _probe_key(store)
    with _PROBED_LOCK:
        _PROBED.add(key)
    try:
        yield
    finally:
        with _PROBED_LOCK:
            _PROBED.discard(key)


def _probe_taken(store: Store) -> bool:
    """Whether a :func:`probe_made` block stands for ``store``'s probe; it is used up."""
    key = _probe_key(store)
    with _PROBED_LOCK:
        found = key in _PROBED
        _PROBED.discard(key)
    return found


def open_for_run(store: Store, min_free_mb: float | None = None, swept_sizes: dict[str, int] | None = None,
                 run_id: str | None = None, read: RecordsRead | None = None) -> tuple[list[str], list[str]]:
    """Get a store ready for a run: fail fast if it cannot take writes
    (:meth:`Store.check_writable`; ``min_free_mb``: the free space wanted, default
    ``PRH_MIN_FREE_MB``; ``prh gc`` wants none, since freeing space is its job; skipped once
    where the caller just probed, :func:`probe_made`), mark dead runs
    ``CRASHED`` (not the record of ``run_id``, the run opening the store: a retry's own earlier
    attempt, see :func:`mark_crashed_runs`) and sweep versions their writers left unpublished.
    Returns (crashed run ids, swept version keys); ``swept_sizes`` receives the bytes removed from
    each swept version, ``read`` the run records as marking left them (:data:`RecordsRead`: the
    run then places itself after them, :func:`latest_placed`, without reading them again)."""
    if min_free_mb is not None or not _probe_taken(store):
        store.check_writable(min_free_mb)
    return mark_crashed_runs(store, retrying=run_id, read=read), store.sweep_abandoned(sizes=swept_sizes)


def open_for_gc(store: Store, swept_sizes: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """:func:`open_for_run` for ``prh gc``, which wants no free space (freeing it is its job) and
    also opens a store whose disk has no room left at all (``ENOSPC``, ``EDQUOT``: its probe write
    failed, but files can still be removed): it then sweeps first, and leaves a dead run's record
    ``RUNNING`` when there is still no room to mark it ``CRASHED`` (the catalog shows it
    ``CRASHED`` anyway; the next run marks it). A read-only or unreachable store still fails."""
    try:
        return open_for_run(store, min_free_mb=0, swept_sizes=swept_sizes)
    except StoreNotWritable as error:
        if not out_of_room(error):
            raise
        log.warning("%s; removing what gc removes all the same", error)
    swept = store.sweep_abandoned(sizes=swept_sizes)
    try:
        crashed = mark_crashed_runs(store)
    except StoreNotWritable as error:
        if not out_of_room(error):
            raise
        log.warning("dead runs not marked CRASHED yet (%s): the next run or gc marks them", error)
        crashed = []
    return crashed, swept
