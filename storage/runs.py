"""Run records (``runs/<run_id>.json``) and what a new run cleans up after killed ones.

A run killed without a chance to write its end (kill -9, OOM killer) would stay ``RUNNING`` for
ever in the catalog's ``runs`` view. The record names its process (``storage.owner``); the next
run on the same host marks such records ``CRASHED``, and removes the files of versions that a
dead writer left unpublished (``Store.sweep_abandoned``).
"""

from __future__ import annotations

import json
from typing import Any

from storage import layout
from storage.owner import owner_is_dead
from storage.store import Store, utc_now

RUNNING, COMPLETED, FAILED, CRASHED, CANCELLED = "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"


def run_records(store: Store) -> list[dict[str, Any]]:
    """Every readable run record in the store, sorted by run id."""
    base = store.path(layout.RUNS)
    if not store.fs.exists(base):
        return []
    records = []
    paths = sorted(store.glob(layout.RUNS, "*.json"))
    for raw in store.read_many(paths, layout.RUNS):
        try:
            record = json.loads(raw) if raw is not None else None
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def mark_crashed_runs(store: Store, dry_run: bool = False) -> list[str]:
    """Mark ``CRASHED`` every ``RUNNING`` record whose process is known to have died; returns
    their run ids (``dry_run``: only those ids). Records of live processes, or of other hosts,
    are left alone."""
    crashed = []
    for record in run_records(store):
        if record.get("status") != RUNNING or not owner_is_dead(record.get("process")):
            continue
        run_id = str(record.get("run_id"))
        crashed.append(run_id)
        if dry_run:
            continue
        record.update(status=CRASHED, error="the run's process ended without finishing it (killed or crashed)",
                      finished_at=None, marked_crashed_at=utc_now())
        store.write_json(layout.run_key(run_id), record)
    return crashed


def open_for_run(store: Store, min_free_mb: float | None = None) -> tuple[list[str], list[str]]:
    """Get a store ready for a run: fail fast if it cannot take writes
    (:meth:`Store.check_writable`; ``min_free_mb``: the free space wanted, default
    ``PRH_MIN_FREE_MB``; ``prh gc`` wants none, since freeing space is its job), mark dead runs
    ``CRASHED`` and sweep versions their writers left unpublished. Returns (crashed run ids,
    swept version keys)."""
    store.check_writable(min_free_mb)
    return mark_crashed_runs(store), store.sweep_abandoned()
