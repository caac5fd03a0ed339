"""Run records: dead runs are marked CRASHED when a store is opened for a run (storage.runs)."""

from __future__ import annotations

import subprocess
import sys

from storage import layout
from storage.owner import current_owner
from storage.runs import CRASHED, RUNNING, mark_crashed_runs, run_records
from storage.store import Store


def test_dead_runs_are_marked_crashed_and_a_dry_run_only_lists_them(tmp_path):
    store = Store(str(tmp_path / "store"))
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    store.write_json(layout.run_key("dead"), {"run_id": "dead", "status": RUNNING,
                                              "process": {**current_owner(), "pid": dead_pid, "started": "0"}})
    store.write_json(layout.run_key("alive"), {"run_id": "alive", "status": RUNNING, "process": current_owner()})
    assert mark_crashed_runs(store, dry_run=True) == ["dead"]
    assert {r["run_id"]: r["status"] for r in run_records(store)} == {"dead": RUNNING, "alive": RUNNING}
    assert mark_crashed_runs(store) == ["dead"]
    records = {r["run_id"]: r for r in run_records(store)}
    assert records["dead"]["status"] == CRASHED and "killed or crashed" in records["dead"]["error"]
    assert records["alive"]["status"] == RUNNING and mark_crashed_runs(store) == []


def test_an_owner_in_another_pid_namespace_is_never_judged_dead():
    """Two containers sharing a host name (--network host) number their processes separately: a
    pid of the other one, looked up here, is absent or another process, and its live runs were
    marked CRASHED and its claims swept."""
    from storage.owner import owner_is_dead

    me = current_owner()
    assert me["pid_namespace"] and me["pid_namespace"].startswith("pid:[")
    gone = {**me, "pid": 2 ** 22 + 12345, "started": "0"}  # no such pid here
    assert owner_is_dead(gone)
    assert not owner_is_dead({**gone, "pid_namespace": "pid:[1]"})  # another container's process
    assert owner_is_dead({k: v for k, v in gone.items() if k != "pid_namespace"})  # records of older versions: as before
    assert not owner_is_dead(me)
