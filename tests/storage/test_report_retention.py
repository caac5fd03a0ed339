"""`prh gc --keep-reports N`: stored run reports beyond the N newest removed, nothing else."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from flows.cli import main
from storage.figure_cache import drawing_version
from storage.report_retention import stale_reports
from storage.store import Store


def test_gc_keeps_the_newest_reports_and_everything_else(tmp_path, capsys):
    url = str(tmp_path / "store")
    store = Store(url)
    for i in range(5):
        store.write_bytes(f"runs/run-{i}.json", json.dumps({"run_id": f"run-{i}", "status": "COMPLETED",
                                                             "started_at": f"2026-01-0{i + 1}T00:00:00+00:00"}).encode())
        store.write_bytes(f"reports/run-{i}/report.html", b"<html></html>")
    store.write_bytes("reports/orphan/report.html", b"<html></html>")  # its run record is gone: oldest
    figure = f"reports/figures/{drawing_version()}/abc.png"  # the current drawing code's cache
    store.write_bytes(figure, b"\x89PNG\r\n\x1a\n")
    store.publish("datasets/d1", {"samples.parquet": b"x"}, {"catalog": {}})
    assert stale_reports(store, 2) == ["reports/orphan", "reports/run-0", "reports/run-1", "reports/run-2"]
    assert main(["gc", "--store", url, "--keep-reports", "2", "--dry-run"]) == 0
    assert "would remove reports/run-0: a run report older than the 2 kept" in capsys.readouterr().out
    assert store.exists("reports/run-0/report.html")
    assert main(["gc", "--store", url, "--keep-reports", "2"]) == 0
    kept = sorted(p.name for p in (tmp_path / "store" / "reports").iterdir())
    assert kept == ["figures", "run-3", "run-4"]
    assert store.exists(figure) and store.manifest("datasets/d1") is not None
    assert len(list((tmp_path / "store" / "runs").iterdir())) == 5
    assert main(["gc", "--store", url, "--keep-reports", "-1"]) == 2
    assert "--keep-reports must be 0 or more" in capsys.readouterr().err
    assert main(["gc", "--store", url]) == 0 and sorted(p.name for p in (tmp_path / "store" / "reports").iterdir()) == kept


def test_keep_zero_removes_every_report_and_keeping_more_than_there_are_removes_none(tmp_path) -> None:
    """``--keep-reports 0`` keeps no report (the figure cache is not one); keeping more reports
    than are stored removes nothing."""
    store = Store(str(tmp_path / "store"))
    for i in range(3):
        store.write_bytes(f"runs/run-{i}.json", json.dumps({"run_id": f"run-{i}", "status": "COMPLETED",
                                                             "started_at": f"2026-02-0{i + 1}T00:00:00+00:00"}).encode())
        store.write_bytes(f"reports/run-{i}/report.html", b"<html></html>")
    store.write_bytes(f"reports/figures/{drawing_version()}/abc.png", b"\x89PNG\r\n\x1a\n")
    assert stale_reports(store, 0) == ["reports/run-0", "reports/run-1", "reports/run-2"]
    for keep in (3, 4, 10):
        assert stale_reports(store, keep) == [], keep


def test_reports_are_ordered_by_their_runs_start_not_by_name(tmp_path) -> None:
    """The newest reports are those of the runs that started last, whatever their ids; a report
    whose run record is gone is the oldest."""
    store = Store(str(tmp_path / "store"))
    for run_id, day in (("zeta", 1), ("alpha", 2), ("mu", 3)):
        store.write_bytes(f"runs/{run_id}.json", json.dumps({"run_id": run_id, "status": "COMPLETED",
                                                             "started_at": f"2026-03-0{day}T00:00:00+00:00"}).encode())
        store.write_bytes(f"reports/{run_id}/report.html", b"<html></html>")
    store.write_bytes("reports/zz-orphan/report.html", b"<html></html>")
    assert stale_reports(store, 1) == ["reports/zz-orphan", "reports/zeta", "reports/alpha"]
    assert stale_reports(store, 3) == ["reports/zz-orphan"]


def test_gc_keep_reports_zero_is_accepted_and_removes_every_report(tmp_path, capsys) -> None:
    """``--keep-reports`` takes 0 or more: 0 removes every stored report, not the figure cache."""
    url = str(tmp_path / "store")
    store = Store(url)
    store.write_bytes("runs/run-0.json", json.dumps({"run_id": "run-0", "status": "COMPLETED",
                                                      "started_at": "2026-01-01T00:00:00+00:00"}).encode())
    store.write_bytes("reports/run-0/report.html", b"<html></html>")
    figure = f"reports/figures/{drawing_version()}/abc.png"
    store.write_bytes(figure, b"\x89PNG\r\n\x1a\n")
    assert main(["gc", "--store", url, "--keep-reports", "0"]) == 0
    assert "removed reports/run-0: a run report older than the 0 kept" in capsys.readouterr().out
    assert not store.exists("reports/run-0/report.html") and store.exists(figure)


KILLED_WRITER = """
import os, signal, sys
from storage.store import Store
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # killed between writing and renaming
Store(sys.argv[1]).write_bytes(sys.argv[2], b"<html>" * 1000)
"""


def test_gc_removes_the_temporary_files_of_killed_report_writers(tmp_path, capsys) -> None:
    """A run killed (SIGKILL) while storing its report page, or a figure into the cache, left
    `reports/<run_id>/.report.html.tmp-<uuid>` (`reports/figures/<ns>/.<digest>.png.tmp-<uuid>`) for
    good: `prh gc` swept only the temporary files of claims and manifests. It removes those older
    than 5 minutes now; a younger one may be a writer's in flight and stays."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    url = str(tmp_path / "store")
    store = Store(url)
    store.write_bytes("runs/run-1.json", json.dumps({"run_id": "run-1", "status": "COMPLETED"}).encode())
    root = Path(__file__).resolve().parents[2]
    figure = f"reports/figures/{drawing_version()}/abc.png"
    for key in ("reports/run-1/report.html", figure):
        assert subprocess.run([sys.executable, "-c", KILLED_WRITER, url, key], cwd=root).returncode == -9
    left = sorted((tmp_path / "store" / "reports").rglob("*.tmp-*"))
    assert [p.name.split(".tmp-")[0] for p in left] == [".abc.png", ".report.html"]
    old = time.time() - 600
    for path in left:
        os.utime(path, (old, old))
    in_flight = tmp_path / "store" / "reports" / "run-1" / f".report.html.tmp-{'0' * 32}"
    in_flight.write_bytes(b"being written")
    assert main(["gc", "--store", url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("a temporary file of a report or cached figure (its writer was killed writing it), 6,000 bytes") == 2
    assert "2 report temporary file(s) of dead writers 12,000 bytes" in out and "cached report figure" not in out
    assert sorted((tmp_path / "store" / "reports").rglob("*.tmp-*")) == sorted([*left, in_flight])
    assert main(["gc", "--store", url]) == 0
    assert sorted((tmp_path / "store" / "reports").rglob("*.tmp-*")) == [in_flight]
    assert "removed reports/run-1/.report.html.tmp-" in capsys.readouterr().out


def _record(store: Store, run_id: str, **fields: object) -> None:
    store.write_bytes(f"runs/{run_id}.json", json.dumps({"run_id": run_id, "status": "COMPLETED", **fields}).encode())
    store.write_bytes(f"reports/{run_id}/report.html", b"<html></html>")


def test_the_latest_runs_report_is_kept_when_another_hosts_clock_ran_ahead(tmp_path) -> None:
    """Host A's clock ran 30 minutes ahead: its run recorded a start of 10:30 (10:00 real) and an
    end of 10:40. Host B (right clock) then started a run at 10:12 that ended at 10:15; B read A's
    record as it started and placed itself just after it (``ordered_at`` 10:40:00.000001), so B's
    is the latest run (the ``*_latest`` views, ``prh report``). ``--keep-reports 1`` kept A's
    report by start time and removed B's: the report of the latest run."""
    store = Store(str(tmp_path / "store"))
    _record(store, "a-ahead", started_at="2026-03-02T10:30:00.000000+00:00", finished_at="2026-03-02T10:40:00.000000+00:00",
            ordered_at="2026-03-02T10:40:00.000000+00:00")
    _record(store, "b-latest", started_at="2026-03-02T10:12:00.000000+00:00", finished_at="2026-03-02T10:15:00.000000+00:00",
            ordered_at="2026-03-02T10:40:00.000001+00:00")
    _record(store, "c-yesterday", started_at="2026-03-01T10:00:00.000000+00:00", finished_at="2026-03-01T10:05:00.000000+00:00",
            ordered_at="2026-03-01T10:05:00.000000+00:00")
    assert stale_reports(store, 1) == ["reports/c-yesterday", "reports/a-ahead"]
    assert stale_reports(store, 2) == ["reports/c-yesterday"]


def test_reports_are_kept_in_the_order_of_the_latest_run(tmp_path) -> None:
    """The newest reports are those of the runs placed last (``ordered_at``, else ``finished_at``,
    else ``started_at``; then start, then run id), as the catalog orders "the latest run": a long
    run that started first and ended last is the latest, not the short run that started during
    it. Times are read as times, whatever offset a record was written with (a hand-edited or
    copied record in ``-05:00`` sorted by its text). Two runs of one whole second go by run id. A
    run still alive (writing its report now) counts as newer than every ended one: it will end
    after them; one that crashed without being marked ``CRASHED`` does not."""
    store = Store(str(tmp_path / "store"))
    _record(store, "long", started_at="2026-03-03T10:00:00+00:00", finished_at="2026-03-03T12:00:00+00:00")
    _record(store, "short", started_at="2026-03-03T10:30:00+00:00", finished_at="2026-03-03T10:45:00+00:00")
    assert stale_reports(store, 1) == ["reports/short"]
    # 06:45 UTC written at -05:00 ends after a run ending 06:40 UTC (its text sorts first)
    _record(store, "ny", started_at="2026-03-04T01:30:00-05:00", finished_at="2026-03-04T01:45:00-05:00")
    _record(store, "utc", started_at="2026-03-04T06:30:00+00:00", finished_at="2026-03-04T06:40:00+00:00")
    assert stale_reports(store, 1) == ["reports/short", "reports/long", "reports/utc"]
    _record(store, "same-2", started_at="2026-03-05T08:00:00+00:00", finished_at="2026-03-05T08:00:09+00:00")
    _record(store, "same-1", started_at="2026-03-05T08:00:00+00:00", finished_at="2026-03-05T08:00:09+00:00")
    assert stale_reports(store, 1)[-2:] == ["reports/ny", "reports/same-1"]
    # a run crashed without being marked (RUNNING, started long ago, no sign of life) is not alive:
    # placed by its start, it had counted as newest for ever
    _record(store, "crashed", status="RUNNING", started_at="2026-03-05T07:00:00+00:00")
    assert stale_reports(store, 1)[-2:] == ["reports/crashed", "reports/same-1"]
    started = datetime.now(timezone.utc) - timedelta(minutes=1)  # alive: started a minute ago
    _record(store, "running", status="RUNNING", started_at=started.isoformat())
    assert stale_reports(store, 1)[-2:] == ["reports/same-1", "reports/same-2"]
