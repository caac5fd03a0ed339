"""`make serve` (``python -m flows.serve``) and its PREFECT_HOME: a home it cannot write is one
line before anything starts, and the logs it keeps there are rotated by size."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import serve
from tests.flows.serve_stubs import SERVE_STUBS
from tests.storage.small_disk import remount_read_only, tmpfs


@pytest.fixture
def quiet_serve(monkeypatch):
    """``serve.main`` in this process with nothing of Prefect's: the server a sleeping process (the
    list ``started`` gets each), no API calls; the SIGTERM handler ``main`` sets is put back."""
    started: list[subprocess.Popen[bytes]] = []

    def sleeper(*args, **kwargs):
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True))
        return started[-1]

    monkeypatch.setattr(serve, "start_server", sleeper)
    for name in ("wait_healthy", "ensure_work_pool", "ensure_concurrency_limit", "deploy_all"):
        monkeypatch.setattr(serve, name, lambda *a, **k: None)
    monkeypatch.setattr(serve, "schedule_states", lambda *a, **k: {})
    monkeypatch.setattr(serve, "restore_schedule_states", lambda *a, **k: [])
    monkeypatch.setattr(serve, "port_in_use", lambda *a: False)
    monkeypatch.delenv("PRH_METRIC_MODULES", raising=False)
    previous = signal.getsignal(signal.SIGTERM)
    yield started
    signal.signal(signal.SIGTERM, previous)
    for proc in started:
        serve.stop(proc, grace=1)


def _refused(home: Path, reason: str, capsys) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"PREFECT_HOME {home}: cannot write there ({reason});") and "nothing was started" in err, err


def test_a_home_under_a_file_is_refused_in_one_line_before_anything_starts(tmp_path, quiet_serve, capsys):
    """`make serve` with PREFECT_HOME under a file ended in a NotADirectoryError traceback (from
    the home's mkdir), exit 1."""
    (tmp_path / "file").write_text("x")
    home = tmp_path / "file" / "home"
    assert serve.main(["--port", "4391", "--home", str(home)]) == 2
    _refused(home, "Not a directory", capsys)
    assert quiet_serve == []


def test_a_read_only_home_is_refused_in_one_line_before_anything_starts(tmp_path, quiet_serve, capsys):
    """A read-only home (here a read-only tmpfs, which root cannot write either) ended in an
    `OSError: [Errno 30] Read-only file system: '.../serve.lock'` traceback; a folder to be
    created on it, in one from the home's mkdir."""
    with tmpfs(tmp_path / "disk", 256) as disk:
        remount_read_only(disk)
        for home in (disk, disk / "sub"):
            assert serve.main(["--port", "4391", "--home", str(home)]) == 2
            _refused(home, "Read-only file system", capsys)
    assert quiet_serve == []


def test_a_log_that_cannot_be_opened_stops_what_was_started(tmp_path, quiet_serve, capsys):
    """The home takes files, but the CPU worker's log cannot be opened (a folder of its name):
    one line naming it, exit 2, and the server already started is stopped, not left running."""
    home = tmp_path / "home"
    (home / "worker-prh-cpu.log").mkdir(parents=True)
    assert serve.main(["--port", "4391", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"cannot write {home / 'worker-prh-cpu.log'}: Is a directory;") and "stopped what had been" in err
    (server,) = quiet_serve
    assert server.poll() is not None  # stopped by main, not by the fixture


def test_rotate_log_keeps_a_bounded_number_of_copies_and_the_writer_writes_on(tmp_path):
    """A log at the size limit is copied to `.1` (older copies shift, the oldest beyond `keep` is
    dropped) and emptied in place; a writer holding it open for appending goes on at its start."""
    log = tmp_path / "worker-prh-cpu.log"
    with open(log, "ab", buffering=0) as writer:
        written = []
        for i in range(6):
            chunk = f"chunk {i}\n".encode() * 20  # 160 bytes
            writer.write(chunk)
            written.append(chunk)
            assert serve.rotate_log(log, max_bytes=100, keep=3)
            assert log.stat().st_size == 0
        assert not serve.rotate_log(log, max_bytes=100, keep=3)  # empty: below the limit
        writer.write(b"after\n")
    assert log.read_bytes() == b"after\n"
    assert [log.with_name(f"{log.name}.{i}").read_bytes() for i in (1, 2, 3)] == written[::-1][:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [log.name, *(f"{log.name}.{i}" for i in (1, 2, 3))]
    assert not serve.rotate_log(tmp_path / "missing.log", max_bytes=1)


def test_a_rotation_without_room_for_its_copy_copies_nothing(tmp_path, monkeypatch):
    """A rotation on a disk without room for the copy wrote the copy until the disk was full, then
    removed it, every minute (each retry): for that moment the server's database and the store's
    writes on that disk had no room at all. The free space is read first: too little for the copy
    and the room left to the server (`LOG_ROOM_LEFT_BYTES`) is an ENOSPC naming both, nothing written."""
    import errno
    import shutil

    log = tmp_path / "server.log"
    log.write_bytes(b"x" * 1000)
    free = 1000 + serve.LOG_ROOM_LEFT_BYTES - 1
    monkeypatch.setattr(serve.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    with pytest.raises(OSError) as raised:
        serve.rotate_log(log, max_bytes=100, keep=3)
    assert raised.value.errno == errno.ENOSPC and "1,000 bytes" in raised.value.strerror and f"{free:,}" in raised.value.strerror
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.log"] and log.stat().st_size == 1000
    monkeypatch.setattr(serve.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - free - 1, free + 1))
    assert serve.rotate_log(log, max_bytes=100, keep=3) and log.with_name("server.log.1").stat().st_size == 1000


def test_a_rotation_on_a_disk_that_reports_no_size_rotates(tmp_path, monkeypatch):
    """A filesystem that reports no size at all (``statfs``: 0 blocks, 0 free; a FUSE mount
    without a ``statfs`` handler) gives no free space to compare: the rotation is not refused
    for it (every try refused, the log grew without end), the copy goes ahead as before the
    check, and a disk that is full all the same fails the copy (``OSError``, nothing changed)."""
    import shutil

    log = tmp_path / "server.log"
    log.write_bytes(b"x" * 1000)
    monkeypatch.setattr(serve.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, 0))
    assert serve.rotate_log(log, max_bytes=100, keep=3)
    assert log.stat().st_size == 0 and log.with_name("server.log.1").stat().st_size == 1000


SERVE_ROTATES_CHILD = SERVE_STUBS + """
serve.LOG_MAX_BYTES = 2000
# the real start_worker; its `prefect` writes a numbered line of 100 bytes every 10 ms
serve.prefect_cli = lambda: [sys.executable, "-c", "import time\\nfor i in range(100000): "
                             "print(f'{i:08d}'.ljust(99, '.'), flush=True); time.sleep(0.01)"]
raise SystemExit(serve.main(["--home", sys.argv[1]]))
"""


def test_serve_rotates_a_worker_log_while_it_runs(tmp_path):
    """A worker's log (`worker-prh-cpu.log`: the worker's and its flow runs' output) grew for as
    long as `make serve` ran. It is rotated now while the worker writes to it: the live file and
    its 3 copies stay near the limit (the limit plus what a second adds), and the copies hold
    consecutive lines, newest in `.1`."""
    root = Path(__file__).resolve().parents[2]
    home = tmp_path / "home"
    home.mkdir()
    (home / "worker-prh-cpu.log.3").write_text("oldest\n")  # from an earlier run: dropped at the third rotation
    proc = subprocess.Popen([sys.executable, "-c", SERVE_ROTATES_CHILD, str(home)], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "Ctrl-C stops everything" in line:
                break
        log = home / "worker-prh-cpu.log"
        copies = [home / f"worker-prh-cpu.log.{i}" for i in (1, 2, 3)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (copies[2].exists() and copies[2].read_text() != "oldest\n"):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert copies[2].read_text() != "oldest\n", "the log was not rotated three times within 30 s"
    numbers = [[int(line[:8]) for line in path.read_text().splitlines()] for path in (copies[2], copies[1], copies[0])]
    assert all(numbers), numbers
    for older, newer in zip(numbers, numbers[1:]):
        assert newer[0] > older[-1]  # newest copy is .1
    for path in (log, *copies):
        assert path.stat().st_size < 2000 + 100 * 150, path  # the limit plus 1.5 s of lines at 100 per second
    assert sorted(p.name for p in home.glob("worker-*")) == sorted(p.name for p in (log, *copies))


@pytest.mark.parametrize("given", ["--home", "PREFECT_HOME"])
def test_a_home_starting_with_a_tilde_is_the_users_home_folder(tmp_path, quiet_serve, monkeypatch, capsys, given):
    """`--home ~/x` (or PREFECT_HOME=~/x where no shell expanded it: a quoted value, an env file)
    made a folder named `~` in the working directory for the lock and logs, while the Prefect
    server (which expands `~` itself) kept its database under the real home: `~` is expanded
    now, for everything serve writes and for the home it gives the server."""
    user, cwd = tmp_path / "user", tmp_path / "cwd"
    user.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(user))
    monkeypatch.chdir(cwd)
    homes = []

    def ends_at_once(port, env, log=None):  # the server exits at once: serve stops (exit 1)
        homes.append(env["PREFECT_HOME"])
        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(serve, "start_server", ends_at_once)
    if given == "PREFECT_HOME":
        monkeypatch.setenv("PREFECT_HOME", "~/prefect-home")
        argv = ["--port", "4391", "--no-worker"]
    else:
        monkeypatch.delenv("PREFECT_HOME", raising=False)
        argv = ["--port", "4391", "--no-worker", "--home", "~/prefect-home"]
    assert serve.main(argv) == 1
    home = user / "prefect-home"
    assert homes == [str(home)]
    assert (home / "server.log").is_file() and (home / "serve.lock").is_file()
    assert list(cwd.iterdir()) == []
    assert f"(PREFECT_HOME={home})" in capsys.readouterr().out


def test_a_relative_home_is_made_absolute_for_the_server_too(tmp_path, quiet_serve, monkeypatch):
    """The server runs in the checkout, serve where it was started: `--home rel` had put the lock
    and logs under the working directory and the server's database under the checkout."""
    monkeypatch.chdir(tmp_path)
    homes = []

    def ends_at_once(port, env, log=None):
        homes.append(env["PREFECT_HOME"])
        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(serve, "start_server", ends_at_once)
    assert serve.main(["--port", "4391", "--no-worker", "--home", "rel"]) == 1
    assert homes == [str(tmp_path / "rel")] and (tmp_path / "rel" / "server.log").is_file()


def test_an_empty_prefect_home_is_the_checkouts_and_an_empty_home_option_is_refused(tmp_path, monkeypatch, capsys):
    """`PREFECT_HOME= make serve` (set, empty) became `--home ''`, the folder serve was started
    from: its database, logs and lock landed there. Empty (or blank) is now unset, `.prefect` of
    the checkout; `--home ''` is refused naming the option."""
    import flows.prefect_env

    homes: list[Path] = []

    def stop_here(folder: Path) -> str:
        homes.append(folder)
        return "stopped by the test"

    monkeypatch.setattr(flows.prefect_env, "folder_write_problem", stop_here)  # the first thing main does with the home
    monkeypatch.chdir(tmp_path)
    for empty in ("", " "):
        monkeypatch.setenv("PREFECT_HOME", empty)
        assert serve.main(["--port", "4391"]) == 2
    assert homes == [serve.PROJECT_ROOT / ".prefect"] * 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        serve.main(["--port", "4391", "--home", ""])
    assert stopped.value.code == 2
    assert "--home: must name a folder, got an empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_installed_prh_without_prefect_yaml_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    """`python -m flows.serve` of an installed prh (a wheel: its packages in site-packages, no
    prefect.yaml beside them) had created its Prefect home in site-packages and started a server
    before `prefect deploy --all` found no prefect.yaml there; it is one line, nothing started."""
    def no_start(*args, **kwargs):
        raise AssertionError("a server was started")

    monkeypatch.setattr(serve, "start_server", no_start)
    monkeypatch.setattr(serve, "port_in_use", lambda *a: False)
    monkeypatch.setattr(serve, "PROJECT_ROOT", tmp_path / "site-packages")
    home = tmp_path / "home"
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert serve.main(["--port", "4391", "--home", str(home)]) == 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert err == (f"no prefect.yaml in {tmp_path / 'site-packages'}: python -m flows.serve deploys the prefect.yaml of a prh "
                   "checkout (a clone of the repository, where `make serve` runs it); this prh is an installed copy. "
                   "Nothing was started\n")
    assert not home.exists()


_STUBBORN = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
             "print('ready', flush=True); time.sleep(600)")


def test_stopping_workers_that_outlive_term_and_int_waits_for_them_together():
    """A worker that has run flows outlives TERM and INT and ends by KILL: ``make serve`` stopped its
    children one after the other, 2 x grace each (20 s a worker). ``stop_all`` signals them
    together: three such processes end by KILL after about 2 x grace in all, not 3 x 2 x grace."""
    procs = [subprocess.Popen([sys.executable, "-c", _STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True)
             for _ in range(3)]
    try:
        for proc in procs:
            assert proc.stdout.readline() == "ready\n"  # its handlers are set
        started = time.monotonic()
        serve.stop_all(procs, grace=1.5)
        took = time.monotonic() - started
        assert [proc.returncode for proc in procs] == [-signal.SIGKILL] * 3
        assert 3.0 <= took < 3 * 2 * 1.5 - 1, took  # TERM, INT: 1.5 s each for all three; KILL at once
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


def test_stop_all_returns_at_once_for_processes_that_end_on_term():
    """A process that ends on TERM is not waited for beyond its end, nor sent INT or KILL."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline() == "ready\n"
        proc.stdout.close()
    started = time.monotonic()
    serve.stop_all(procs, grace=30)
    assert [proc.returncode for proc in procs] == [-signal.SIGTERM] * 2 and time.monotonic() - started < 10


DISPOSITIONS = """
import signal
print("|".join(str(signal.getsignal(n)) for n in (signal.SIGINT, signal.SIGTERM)), flush=True)
"""


@pytest.mark.parametrize("start", ["worker", "server"])
def test_the_server_and_workers_serve_starts_get_sigint_and_sigterm_at_their_default(tmp_path, monkeypatch, start):
    """A `make serve` started from a shell's background job (`make serve &`, a CI step) has SIGINT
    ignored, and its children inherited that: Prefect's worker turns SIGTERM into a SIGINT to
    itself, which then did nothing, so the worker outlived TERM and INT and ended only by a KILL.
    Started here with SIGINT and SIGTERM ignored in this process, the child sees both at their
    default (Python installs its Ctrl-C handler: ``default_int_handler``)."""
    monkeypatch.setattr(serve, "prefect_cli", lambda: [sys.executable, "-c", DISPOSITIONS])
    log = tmp_path / "child.log"
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open(log, "wb") as out:
            child = serve.start_worker("prh-cpu", {}, out) if start == "worker" else serve.start_server(1, {}, out)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    assert child.wait(timeout=60) == 0
    assert log.read_text().strip() == f"{signal.default_int_handler}|{signal.Handlers.SIG_DFL}", log.read_text()
