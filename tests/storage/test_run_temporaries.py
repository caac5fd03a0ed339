"""`prh gc` removes the temporary files that a writer killed under `runs/` left (run records,
extraction records, signs of life), as it does under `reports/`: only those older than the
stale limit, never one a live writer may still be renaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flows.cli import main
from storage.store import Store

ROOT = Path(__file__).resolve().parents[2]

#: Writes argv[2] the way storage does (argv[3]: "record" through ``Store.write_json``, "alive"
#: through ``RunHeartbeat``), killed (SIGKILL) between writing its temporary file and renaming it.
KILLED_WRITER = """
import os, signal, sys
from storage.runs import RunHeartbeat
from storage.store import Store
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
store, key, how = Store(sys.argv[1]), sys.argv[2], sys.argv[3]
if how == "alive":
    RunHeartbeat(store, key).__enter__()
else:
    store.write_json(key, {"run_id": "run-1", "status": "RUNNING", "pad": "x" * 500})
"""


def _kill_writer(url: str, key: str, how: str) -> None:
    assert subprocess.run([sys.executable, "-c", KILLED_WRITER, url, key, how], cwd=ROOT).returncode == -9


def _temporaries(root: Path) -> list[Path]:
    return sorted((root / "runs").rglob("*.tmp-*"))


def test_gc_removes_the_temporary_files_of_killed_run_writers_and_leaves_live_ones(tmp_path, capsys) -> None:
    """SIGKILL between writing and renaming a run record (`runs/.<id>.json.tmp-<uuid>`), an
    extraction record (`runs/extractions/...`) or a sign of life (`runs/alive/...`) left the file
    for good: gc swept such files under `reports/` only. Those older than 5 minutes go now, a
    dry run lists them and removes nothing, and a fresh one (a writer in flight) stays."""
    url = str(tmp_path / "store")
    store = Store(url)
    store.write_json("runs/run-1.json", {"run_id": "run-1", "status": "COMPLETED"})
    _kill_writer(url, "runs/run-2.json", "record")
    _kill_writer(url, "runs/extractions/ex-1.json", "record")
    _kill_writer(url, "run-3", "alive")
    left = _temporaries(tmp_path / "store")
    assert [(p.parent.name, p.name.split(".tmp-")[0]) for p in left] == \
        [("runs", ".run-2.json"), ("alive", ".run-3.json"), ("extractions", ".ex-1.json")]
    old = time.time() - 600
    for path in left:
        os.utime(path, (old, old))
    in_flight = tmp_path / "store" / "runs" / "alive" / f".run-4.json.tmp-{'0' * 32}"
    in_flight.write_bytes(b"being written")

    assert main(["gc", "--store", url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    for path in left:
        key = path.relative_to(tmp_path / "store").as_posix()
        assert f"would remove {key}: a temporary file of a run record or sign of life" in out
    assert in_flight.name not in out
    assert "3 run temporary file(s) of dead writers" in out
    assert _temporaries(tmp_path / "store") == sorted([*left, in_flight])

    assert main(["gc", "--store", url]) == 0
    out = capsys.readouterr().out
    assert _temporaries(tmp_path / "store") == [in_flight]
    assert "removed runs/.run-2.json.tmp-" in out
    assert json.loads((tmp_path / "store" / "runs" / "run-1.json").read_text())["status"] == "COMPLETED"


def test_a_temporary_file_is_kept_up_to_the_stale_limit_and_removed_after_it(tmp_path) -> None:
    """The age rule itself, for both folders: written exactly 300 s before `now` it stays (it may
    be in flight), 301 s before it goes; a dry run removes nothing; a file merely named like one
    outside the two folders is not touched."""
    from storage.temporaries import dead_temporaries

    store = Store(str(tmp_path / "store"))
    now = 1_000_000.0
    paths = {}
    for key, age in (("runs/.a.json.tmp-1", 300), ("runs/alive/.b.json.tmp-2", 301),
                     ("reports/r/.report.html.tmp-3", 301), ("datasets/.c.tmp-4", 900)):
        path = tmp_path / "store" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"12345")
        os.utime(path, (now - age, now - age))
        paths[key] = path
    assert dead_temporaries(store, "runs", dry_run=True, now=now) == {"runs/alive/.b.json.tmp-2": 5}
    assert all(path.exists() for path in paths.values())
    assert dead_temporaries(store, "runs", now=now) == {"runs/alive/.b.json.tmp-2": 5}
    assert dead_temporaries(store, "reports", now=now) == {"reports/r/.report.html.tmp-3": 5}
    assert sorted(k for k, p in paths.items() if p.exists()) == ["datasets/.c.tmp-4", "runs/.a.json.tmp-1"]


def test_a_stalled_writer_whose_temporary_file_gc_removed_still_writes_its_record(tmp_path, monkeypatch) -> None:
    """A live writer stopped (SIGSTOP, a suspended machine) for longer than the limit between
    writing its temporary file and renaming it loses nothing when gc removes that file meanwhile:
    the rename finds it gone and the write is made again."""
    import storage.store as store_module
    from storage.temporaries import dead_temporaries

    store = Store(str(tmp_path / "store"))
    real_replace, swept = os.replace, []

    def stalled_then_renamed(src: str, dst: str) -> None:
        if not swept:  # the first rename: gc runs while the writer is stopped, 10 minutes on
            swept.append(dead_temporaries(store, "runs", now=time.time() + 600))
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", stalled_then_renamed)
    store.write_json("runs/run-1.json", {"run_id": "run-1", "status": "RUNNING"})
    assert [key.split(".tmp-")[0] for key in swept[0]] == ["runs/.run-1.json"]
    assert store.read_json("runs/run-1.json") == {"run_id": "run-1", "status": "RUNNING"}
    assert _temporaries(tmp_path / "store") == []
