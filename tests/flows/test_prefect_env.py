"""`prh run` with a Prefect environment that cannot work: a `PREFECT_API_URL` that no server
answers at, a `PREFECT_HOME` that cannot be written. Run as a user's shell runs it: a `prh`
process with that environment (the variables are read when Prefect is imported)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.prefect_env import check_prefect_home
from tests.storage.small_disk import remount_read_only, tmpfs

ROOT = Path(__file__).resolve().parents[2]


def _prh_run(tmp_path: Path, **variables: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``prh run`` of the embedded demo into a fresh store under ``tmp_path``, with ``variables``
    set (no other ``PREFECT_API_URL``): its result and how long it took."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(ROOT), **variables)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--store", str(tmp_path / "store")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=150)
    return done, time.monotonic() - started


def test_an_api_url_no_server_answers_at_is_one_line_before_anything_runs(tmp_path):
    """The environment hunt: `PREFECT_API_URL=junk` (or a server since stopped) ended `prh run`
    with Prefect's traceback, `RuntimeError: Failed to reach API at junk/`, and exit 1 (the code
    of "some models failed")."""
    with socket.socket() as closed:  # a loopback port with nothing behind it
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for url in ("junk", f"http://127.0.0.1:{port}/api"):
        done, _ = _prh_run(tmp_path, PREFECT_API_URL=url)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        (line,) = [line for line in done.stderr.splitlines() if line.startswith("prh run: error:")]
        assert f"PREFECT_API_URL={url!r}: Prefect's API does not answer there" in line
        assert not (tmp_path / "store").exists()  # refused before the store is touched


def test_a_prefect_home_that_cannot_be_written_is_one_line_in_seconds(tmp_path):
    """The environment hunt: `PREFECT_HOME=/etc/passwd/x` (a path under a file; a read-only disk
    does the same) restarted Prefect's temporary server for 3 minutes, about 90 tracebacks, then
    `Timed out while attempting to connect to ephemeral Prefect API server` and exit 1."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    done, took = _prh_run(tmp_path, PREFECT_HOME=str(blocker / "home"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("prh run: error:")]
    assert f"PREFECT_HOME={str(blocker / 'home')!r}: cannot write there (Not a directory)" in line
    assert took < 60  # the temporary server never started
    assert not (tmp_path / "store").exists()


def test_a_writable_prefect_home_is_created_and_left_as_it_was(tmp_path):
    """A home that does not exist yet is what Prefect creates: allowed, and the probe file is gone."""
    home = tmp_path / "new" / "home"
    check_prefect_home(home)
    assert home.is_dir() and list(home.iterdir()) == []


def test_a_prefect_home_on_a_read_only_disk_is_refused_naming_it(tmp_path):
    """A checkout on a read-only disk (a container image) holds the default PREFECT_HOME, `.prefect`."""
    with tmpfs(tmp_path / "disk", 64) as disk:
        (disk / "home").mkdir()
        remount_read_only(disk)
        with pytest.raises(ValueError, match=r"PREFECT_HOME='.*/disk/home': cannot write there \(Read-only file system\)"):
            check_prefect_home(disk / "home")
