"""Stored run reports kept by ``prh gc --keep-reports N``.

Every run with model-pair results stores its self-contained page under ``reports/<run_id>/`` (about
1-2 MB for the demo, 20 MB for a 30-model zoo: the figures are inlined), also a run that computed
nothing new (its pairs reused); a one-model zoo's run stores none. They are
views of published results (``prh report --run ID`` builds any of them again), so ``prh gc`` may
keep only the newest ones. The figure cache (``reports/figures/``) is not a report.
"""

from __future__ import annotations

from typing import Any

from storage.figure_cache import FIGURES
from storage.runs import live_records, place_key, run_records
from storage.store import Store

#: Where each run's page is stored: ``reports/<run_id>/report.html`` (``flows.report.report_key``).
REPORTS = "reports"


def stale_reports(store: Store, keep: int) -> list[str]:
    """Keys of the ``reports/<run_id>`` folders beyond the ``keep`` newest, oldest first. Newest:
    a run still alive (``storage.runs.live_records``: writing its report now; it ends after every
    run that has ended; a run that crashed without being marked, ``RUNNING`` in its record, is not:
    it had taken a slot for ever), then
    the runs in the catalog's order of "the latest run" (``storage.runs.place_key``: ``ordered_at``,
    else finish, else start; then start, then run id), so that the report of the run ``prh
    report`` and the ``*_latest`` views show is kept. They had been ordered by the text of their
    start: a run whose host's clock ran ahead kept its report and the latest run's went, and so
    did a long run's that ended last. A folder whose run record is gone or damaged counts as
    oldest."""
    if keep < 0:
        raise ValueError(f"keep must be 0 or more, got {keep}")
    folders = [e["key"] for e in store.entries(REPORTS) if e["type"] == "directory"]
    records = {str(r.get("run_id")): r for r in run_records(store, damaged=[])}
    alive = {str(r.get("run_id")) for r in live_records(store, list(records.values()))}

    def place(key: str) -> tuple[Any, ...]:
        run_id = key.rsplit("/", 1)[-1]
        record = records.get(run_id)
        if record is None:
            return (False, False, (), key)
        return (True, run_id in alive, place_key(record), key)

    runs = sorted((key for key in folders if key != FIGURES), key=place)
    return runs[: max(len(runs) - keep, 0)]


def remove_stale_reports(store: Store, keep: int, dry_run: bool = False,
                         sizes: dict[str, int] | None = None) -> list[str]:
    """Remove (with ``dry_run`` only list) the reports beyond the ``keep`` newest; returns their keys.
    ``sizes``, when given, receives ``key -> bytes`` of each report folder, measured before
    removing it."""
    return store.remove_trees(stale_reports(store, keep), dry_run, sizes)

