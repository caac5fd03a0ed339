"""`prh run` with a Prefect environment that cannot work: a `PREFECT_API_URL` that no server
answers at, a `PREFECT_HOME` that cannot be written or whose disk is full. Run as a user's shell
runs it: a `prh` process with that environment (the variables are read when Prefect is imported),
without the test session's PREFECT_API_URL (its server would be used instead of a temporary one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from flows.prefect_env import HOME_NOT_CREATED, PrefectHomeError, check_prefect_home, home_warning_held
from tests.flows.test_pipeline import TINY_BERT, TINY_VIT
from tests.storage.small_disk import fill, remount_read_only, tmpfs

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
    urls = ("junk", f"http://127.0.0.1:{port}/api")
    with ThreadPoolExecutor(max_workers=2) as pool:  # the two runs side by side (each refused after its imports)
        runs = list(pool.map(lambda url: _prh_run(tmp_path, PREFECT_API_URL=url)[0], urls))
    for url, done in zip(urls, runs):
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        (line,) = [line for line in done.stderr.splitlines() if line.startswith("prh run: error:")]
        assert f"PREFECT_API_URL={url!r}: Prefect's API does not answer there" in line
        assert not (tmp_path / "store").exists()  # refused before the store is touched


def test_a_prefect_home_that_cannot_be_written_is_one_line_in_seconds(tmp_path):
    """The environment hunt: `PREFECT_HOME=/etc/passwd/x` (a path under a file; a read-only disk
    does the same) restarted Prefect's temporary server for 3 minutes, about 90 tracebacks, then
    `Timed out while attempting to connect to ephemeral Prefect API server` and exit 1. The line
    is all it prints: Prefect's own two-line `UserWarning: Failed to create the Prefect home
    directory` (given when its settings are first read) came before it."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    done, took = _prh_run(tmp_path, PREFECT_HOME=str(blocker / "home"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("prh run: error:"), done.stderr
    assert f"PREFECT_HOME={str(blocker / 'home')!r}: cannot write there (Not a directory)" in line
    assert took < 60  # the temporary server never started
    assert not (tmp_path / "store").exists()


def test_a_writable_prefect_home_is_created_and_left_as_it_was(tmp_path):
    """A home that does not exist yet is what Prefect creates: allowed, and the probe file is gone."""
    home = tmp_path / "new" / "home"
    check_prefect_home(home, 0)
    assert home.is_dir() and list(home.iterdir()) == []


def test_a_prefect_home_on_a_read_only_disk_is_refused_naming_it(tmp_path):
    """A checkout on a read-only disk (a container image) holds the default PREFECT_HOME, `.prefect`."""
    with tmpfs(tmp_path / "disk", 64) as disk:
        (disk / "home").mkdir()
        remount_read_only(disk)
        with pytest.raises(ValueError, match=r"PREFECT_HOME='.*/disk/home': cannot write there \(Read-only file system\)"):
            check_prefect_home(disk / "home", 0)


def _child_env(home: Path, min_free_mb: str) -> dict[str, str]:
    """The environment of a `prh run` child that starts its own temporary server in ``home``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(home), "PRH_MIN_FREE_MB": min_free_mb,
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60"}
    env.pop("PREFECT_API_URL", None)
    return env


def test_run_with_prefect_home_on_a_full_disk_fails_at_once_naming_it(tmp_path):
    """The temporary server could not write its database: `prh run` waited out the server's
    start-up timeout, printed thousands of lines of its tracebacks and ended with `RuntimeError:
    Timed out while attempting to connect to ephemeral Prefect API server` (exit 1). Now it exits
    2 before any server starts, naming PREFECT_HOME and the reason; with a little room but less
    than PRH_MIN_FREE_MB, it names the free space. The store holds nothing of it."""
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"kind": "openmoji", "n": 24, "image_size": 32},
                                      "models": [TINY_VIT, TINY_BERT], "alignment": {"metrics": ["cka"]}}))
    command = [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--store", str(tmp_path / "store")]
    with tmpfs(tmp_path / "disk", 256) as disk:
        home = disk / ".prefect"
        filler = fill(disk)
        started = time.time()
        done = subprocess.run(command, env=_child_env(home, "0"), capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 2 and done.stderr.strip().startswith(
            f"prh run: error: PREFECT_HOME={str(home)!r}: cannot write there (No space left on device); Prefect's "
            "temporary API server of `prh run` keeps its database there"), done.stderr[-2000:]
        assert time.time() - started < 60
        filler.unlink()
        done = subprocess.run(command, env=_child_env(home, "1"), capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 2 and done.stderr.strip().startswith(
            f"prh run: error: PREFECT_HOME={str(home)!r}: 0 MiB free, less than the 1 MiB a run needs"), done.stderr[-2000:]
        assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]


FAILURE = """
from flows.prefect_env import prefect_out_of_room
for error in (RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server."),
              ValueError("a bad config")):
    print(prefect_out_of_room(error))
"""


def test_a_prefect_api_failure_on_a_full_disk_names_the_database_and_the_cause(tmp_path):
    """A disk shared by the store and PREFECT_HOME (the default: both in the checkout) that fills
    up mid-run failed the server's database writes, and `prh run` ended with a raw
    `PrefectHTTPStatusError: Server error '500 Internal Server Error'`. A Prefect error with no
    room beside the database is now put down to it, naming the file; another error, or room
    left, is not."""
    with tmpfs(tmp_path / "disk", 256) as disk:
        home = disk / ".prefect"
        home.mkdir()
        fill(disk)
        done = subprocess.run([sys.executable, "-c", FAILURE], env=_child_env(home, "0"), capture_output=True, text=True,
                              timeout=120, cwd=ROOT, check=True)
        prefect, other = done.stdout.strip().splitlines()
        assert prefect.startswith("the Prefect API failed (RuntimeError: Timed out while attempting to connect to "
                                  f"ephemeral Prefect API server.) with 0.0 MiB left on the disk of its temporary "
                                  f"server's database '{home / 'prefect.db'}' (PREFECT_HOME): No space left on device.")
        assert other == "None"
    roomy = subprocess.run([sys.executable, "-c", FAILURE], env=_child_env(tmp_path / "roomy", "0"),
                           capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    assert roomy.stdout.split() == ["None", "None"]


def _prefect_warns(where: str) -> None:
    """Prefect's warning of a home it cannot create (``prefect.context``), and another one."""
    warnings.warn(f"{HOME_NOT_CREATED}{where}", UserWarning, stacklevel=1)
    warnings.warn("something else", UserWarning, stacklevel=1)


def test_prefect_home_warning_is_dropped_when_prh_refuses_the_home_and_given_when_the_run_goes_on():
    """`home_warning_held` holds back only Prefect's home warning: dropped when the block raises
    prh's refusal of the home (its one-line error says it), shown once the block ends without one
    (a run that goes on without that home: PREFECT_API_URL); any other warning is shown at once,
    either way."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(PrefectHomeError, match="refused"), home_warning_held():
            _prefect_warns("/a-file/home")
            assert [str(w.message) for w in shown] == ["something else"]  # shown at once
            raise PrefectHomeError("refused")
        assert [str(w.message) for w in shown] == ["something else"]
        with home_warning_held():
            _prefect_warns("/b-file/home")
            assert [str(w.message) for w in shown] == ["something else"] * 2
        assert [str(w.message) for w in shown][2:] == [f"{HOME_NOT_CREATED}/b-file/home"]
        assert shown[2].category is UserWarning and shown[2].filename == __file__
        _prefect_warns("/c-file/home")  # outside the block: as ever
        assert [str(w.message) for w in shown][3:] == [f"{HOME_NOT_CREATED}/c-file/home", "something else"]


EMPTY_HOME = """
from flows.cli import configure_environment
configure_environment()
from prefect.settings import get_current_settings
print(get_current_settings().home.resolve())
"""


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_prefect_home_is_the_checkouts_not_the_working_folder(tmp_path, empty):
    """`PREFECT_HOME=` (set, empty) was kept as it was, and Prefect reads it as `.`: `prh run`'s
    temporary server put its database in whatever folder the command ran from. Empty (or blank)
    is now unset: `.prefect` of the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=empty)
    done = subprocess.run([sys.executable, "-c", EMPTY_HOME], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == str((ROOT / ".prefect").resolve())
    assert list(tmp_path.iterdir()) == []


def test_prefect_home_warning_is_given_when_the_block_fails_for_another_reason():
    """A block that fails for a reason other than the home (a `PREFECT_API_URL` no server answers
    at) had dropped the home's warning too: the user learnt of the home only after fixing the URL."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="the URL"), home_warning_held():
            _prefect_warns("/d-file/home")
            raise ValueError("the URL")
        assert [str(w.message) for w in shown] == ["something else", f"{HOME_NOT_CREATED}/d-file/home"]


def test_a_bad_api_url_and_a_home_that_cannot_be_created_are_both_said(tmp_path):
    """`PREFECT_API_URL=junk` with a `PREFECT_HOME` under a file: prh's line names the URL, and
    Prefect's warning the home (it was held back and dropped: only the URL was said)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    done, _ = _prh_run(tmp_path, PREFECT_API_URL="junk", PREFECT_HOME=str(blocker / "home"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"UserWarning: {HOME_NOT_CREATED}{blocker / 'home'}" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("prh run: error: PREFECT_API_URL='junk': Prefect's API does not answer")
