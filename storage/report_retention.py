"""Stored run reports kept by ``prh gc --keep-reports N``.

Every run with model-pair results stores its self-contained page under ``reports/<run_id>/`` (about
1-2 MB for the demo, 20 MB for a 30-model zoo: the figures are inlined), also a run that computed
nothing new (its pairs reused); a one-model zoo's run stores none. They are
views of published results (``prh report --run ID`` builds any of them again), so ``prh gc`` may
keep only the newest ones. The figure cache (``reports/figures/``) is not a report.
"""

from __future__ import annotations

from storage.figure_cache import FIGURES
from storage.runs import run_records
from storage.store import Store

#: Where each run's page is stored: ``reports/<run_id>/report.html`` (``flows.report.report_key``).
REPORTS = "reports"


def stale_reports(store: Store, keep: int) -> list[str]:
    """Keys of the ``reports/<run_id>`` folders beyond the ``keep`` newest (by their run's start
    time; a folder whose run record is gone or damaged counts as oldest), oldest first."""
    if keep < 0:
        raise ValueError(f"keep must be 0 or more, got {keep}")
    folders = [e["key"] for e in store.entries(REPORTS) if e["type"] == "directory"]
    started = {str(r.get("run_id")): str(r.get("started_at") or "") for r in run_records(store, damaged=[])}
    runs = sorted((key for key in folders if key != FIGURES),
                  key=lambda key: (started.get(key.rsplit("/", 1)[-1], ""), key))
    return runs[: max(len(runs) - keep, 0)]


def remove_stale_reports(store: Store, keep: int, dry_run: bool = False,
                         sizes: dict[str, int] | None = None) -> list[str]:
    """Remove (with ``dry_run`` only list) the reports beyond the ``keep`` newest; returns their keys.
    ``sizes``, when given, receives ``key -> bytes`` of each report folder, measured before
    removing it."""
    return store.remove_trees(stale_reports(store, keep), dry_run, sizes)

