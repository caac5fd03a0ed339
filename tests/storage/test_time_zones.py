"""The local time zone of the process (``TZ``) changes no stored time and no order: every time prh
writes is UTC with its offset, the catalog shows UTC, and runs, reports and local run ids order
alike. Each zone runs in a child process (DuckDB and the C library read ``TZ`` at start); the
expected values are written out by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
from datetime import datetime, timezone
from storage.catalog import LATEST_RUN_SQL, connect
from storage.report_retention import stale_reports
from storage.run_retention import newest_runs
from storage.runs import epoch_seconds, place_after, run_records
from storage.store import Store, utc_now
from storage.times import utc_time
from flows.run_record import local_run_id

store = Store(sys.argv[1])
store.publish("datasets/d1", {"samples.parquet": b"x"}, {"kind": "dataset", "catalog": {"dataset_version": "d1"}})
ahead = {"run_id": "a", "status": "COMPLETED", "alignment_versions": ["x"], "started_at": "2026-03-08T06:40:00+00:00",
         "finished_at": "2026-03-08T06:50:00+00:00", "ordered_at": "2026-03-08T06:50:00+00:00"}
# started at 01:45 New York time (06:45 UTC), ended before "a" by its clock: placed after it
later = {"run_id": "b", "status": "COMPLETED", "alignment_versions": ["y"], "started_at": "2026-03-08T01:45:00-05:00",
         "finished_at": "2026-03-08T06:48:00+00:00"}
later["ordered_at"] = place_after(later["finished_at"], utc_time(ahead["ordered_at"]))
naive = {"run_id": "c", "status": "COMPLETED", "alignment_versions": ["z"], "started_at": "2026-03-08T05:00:00",
         "finished_at": "2026-03-08T05:30:00"}
for record in (ahead, later, naive):
    store.write_json(f"runs/{record['run_id']}.json", record)
    store.write_bytes(f"reports/{record['run_id']}/report.html", b"<html></html>")
con = connect(sys.argv[1])
shown = con.execute("select run_id, started_at::VARCHAR, ordered_at::VARCHAR from runs order by run_id").fetchall()
print(json.dumps({
    "now": utc_now(), "published_at": store.manifest("datasets/d1")["published_at"],
    "catalog": shown, "latest": con.execute(LATEST_RUN_SQL).fetchall()[0][0],
    "newest": [r["run_id"] for r in newest_runs(run_records(store), 3)], "stale": stale_reports(store, 1),
    "epoch": epoch_seconds(naive["started_at"]),
    "local_id": local_run_id(datetime(2026, 3, 8, 6, 45, tzinfo=timezone.utc))[:-9],
}))
"""


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_the_local_time_zone_changes_no_stored_time_and_no_order(tmp_path, zone) -> None:
    before = time.time()
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "store")], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "TZ": zone}, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout)
    for written in (out["now"], out["published_at"]):  # this moment, in UTC with its offset
        assert written.endswith("+00:00") and before - 1 <= datetime.fromisoformat(written).timestamp() <= time.time() + 1
    assert out["catalog"] == [["a", "2026-03-08 06:40:00+00", "2026-03-08 06:50:00+00"],
                              ["b", "2026-03-08 06:45:00+00", "2026-03-08 06:50:00.000001+00"],
                              ["c", "2026-03-08 05:00:00+00", None]]
    assert out["latest"] == "b" and out["newest"] == ["b", "a", "c"]
    assert out["stale"] == ["reports/c", "reports/a"]
    assert out["epoch"] == 1772946000.0  # 2026-03-08T05:00:00Z: a time without an offset is UTC, not local
    assert out["local_id"] == "local-20260308T064500Z"
