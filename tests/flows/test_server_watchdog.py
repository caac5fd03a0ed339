"""A `kill -9` of `prh run` no longer leaves Prefect's temporary API server running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.server_watchdog import process_identity

ROOT = Path(__file__).resolve().parents[2]


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process_identity(pid) is None:
            return True
        time.sleep(0.1)
    return False


def _owner(code: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A Python child that runs ``code``, which prints one line (a pid) and then sleeps."""
    return subprocess.Popen([sys.executable, "-c", code + "\nimport time\ntime.sleep(600)"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)


def test_process_identity_names_a_live_process_and_only_it():
    assert process_identity(os.getpid()) == process_identity(os.getpid()) is not None
    done = subprocess.Popen(["true"])
    done.wait()
    assert process_identity(done.pid) is None
    zombie = subprocess.Popen(["true"])  # exited, not reaped yet
    deadline = time.monotonic() + 10
    while process_identity(zombie.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_identity(zombie.pid) is None
    zombie.wait()


@pytest.mark.parametrize("wait_before_kill", [1.0, 0.0], ids=["watchdog-running", "watchdog-starting"])
def test_the_server_is_terminated_when_its_owner_is_killed(wait_before_kill):
    """Also when the owner dies at once, while its watchdog is most likely still importing."""
    server = subprocess.Popen(["sleep", "600"])
    owner = _owner(f"from flows.server_watchdog import start_watchdog\nw = start_watchdog({server.pid})\nprint(w.pid, flush=True)")
    try:
        watchdog_pid = int(owner.stdout.readline())
        time.sleep(wait_before_kill)
        assert server.poll() is None  # the owner lives: the server is left alone
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        server.wait(timeout=10)
        assert server.returncode == -signal.SIGTERM
        assert _gone_within(watchdog_pid, 5)
    finally:
        for process in (server, owner):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_watchdog_exits_when_the_server_stops_first():
    server = subprocess.Popen(["sleep", "600"])
    ids = [str(v) for pid in (os.getpid(), server.pid) for v in (pid, process_identity(pid))]
    watchdog = subprocess.Popen([sys.executable, "-m", "flows.server_watchdog", *ids], cwd=ROOT)
    try:
        time.sleep(1.0)
        assert watchdog.poll() is None
        server.terminate()
        server.wait()
        assert watchdog.wait(timeout=5) == 0
        assert process_identity(os.getpid()) is not None  # its owner (this process) was left alone
    finally:
        for process in (server, watchdog):
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.slow
def test_prefects_real_temporary_server_goes_with_an_owner_killed_while_it_starts(tmp_path):
    """The owner is killed as soon as uvicorn is launched, seconds before the server answers its
    health check (the watchdog used to start only after that, leaving this window unguarded)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(ROOT))
    owner = _owner("from flows.cli import configure_environment\nconfigure_environment()\n"
                   "import flows.server_watchdog as w\nreal = w._watch_new_server\n"
                   "def announce(process):\n    real(process)\n    print(process.pid, flush=True)\n"
                   "w._watch_new_server = announce\nw.guard_temporary_server()", env)
    server_pid = None
    try:
        server_pid = int(owner.stdout.readline())
        assert process_identity(server_pid) is not None and "uvicorn" in Path(f"/proc/{server_pid}/cmdline").read_text()
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        assert _gone_within(server_pid, 20)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if server_pid and process_identity(server_pid) is not None:
            os.kill(server_pid, signal.SIGKILL)


@pytest.mark.slow
def test_processes_started_after_the_guard_use_its_server(tmp_path):
    """Dask workers started by prh run inherit $PREFECT_API_URL of the watched server (each
    started its own temporary server before, unguarded)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(ROOT))
    code = ("from flows.cli import configure_environment\nconfigure_environment()\nimport os, subprocess, sys\n"
            "from prefect.server.api.server import SubprocessASGIServer\nfrom flows.server_watchdog import guard_temporary_server\n"
            "guard_temporary_server()\nchild = subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"PREFECT_API_URL\"])'],"
            " capture_output=True, text=True).stdout.strip()\nprint(child == SubprocessASGIServer().api_url, child)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.startswith("True http://127.0.0.1:"), done.stdout + done.stderr[-2000:]


def test_an_identity_that_could_not_be_read_starts_no_watch():
    """An owner identity read as UNKNOWN never equals the owner's later reads: watching it would
    take the live owner for gone and terminate its server at once."""
    import flows.server_watchdog as w

    server = subprocess.Popen(["sleep", "600"])
    try:
        assert w.main([str(os.getpid()), w.UNKNOWN, str(server.pid), str(process_identity(server.pid))]) == 0
        assert server.poll() is None  # left alone
    finally:
        server.kill()
        server.wait()


def test_a_proc_read_error_decides_nothing(monkeypatch):
    """An unreadable /proc entry (hidepid, a transient error) is not taken for a dead owner."""
    import flows.server_watchdog as w

    real = Path.read_text

    def flaky(self, *args, **kwargs):
        if str(self) == f"/proc/{os.getpid()}/stat":
            raise PermissionError("hidden")
        return real(self, *args, **kwargs)

    identity = process_identity(os.getpid())
    monkeypatch.setattr(Path, "read_text", flaky)
    assert process_identity(os.getpid()) == w.UNKNOWN and not w._gone(os.getpid(), identity)


def test_a_server_that_stops_on_sigterm_is_given_its_grace() -> None:
    """``_terminate`` sends SIGTERM and waits up to ``GRACE_SECONDS`` for the server to end before
    a SIGKILL: a server that takes a moment to stop cleanly is not killed."""
    from flows.server_watchdog import GRACE_SECONDS, _terminate

    code = ("import signal, sys, time\n"
            "def stop(*_):\n    time.sleep(0.5)\n    sys.exit(7)\n"
            "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(600)")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready" and GRACE_SECONDS > 0.5
        _terminate(server.pid, process_identity(server.pid))
        assert server.wait(timeout=10) == 7  # its own clean exit, not -SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_watchdog_and_the_server_run_in_sessions_of_their_own() -> None:
    """A Ctrl-C in the terminal signals prh's session: the watchdog (``start_watchdog``) and a
    process launched through ``_in_own_session`` are outside it; ``subprocess.Popen`` is
    restored afterwards. A server process is watched once, however often it is seen."""
    from flows.server_watchdog import _WATCHDOGS, _in_own_session, _watch_new_server

    real = subprocess.Popen
    server = _in_own_session(lambda: subprocess.Popen(["sleep", "600"]))
    assert subprocess.Popen is real and os.getsid(server.pid) == server.pid != os.getsid(0)
    try:
        _watch_new_server(server)
        watchdog = _WATCHDOGS[server.pid]
        _watch_new_server(server)
        _watch_new_server(object())  # no pid: nothing to watch
        assert _WATCHDOGS[server.pid] is watchdog and os.getsid(watchdog.pid) == watchdog.pid != os.getsid(0)
    finally:
        server.kill()
        server.wait()
        watchdog = _WATCHDOGS.pop(server.pid, None)
        if watchdog is not None:
            watchdog.wait(timeout=10)  # it exits once the server is gone


def test_a_prefect_without_the_private_attributes_starts_its_server_unwatched(monkeypatch, capsys) -> None:
    """``guard_temporary_server`` reads Prefect's private ``running``, ``server_process`` and
    ``_run_uvicorn_command``: a version that renamed them starts its server as it would alone,
    unwatched (None), instead of failing every run with an AttributeError, and says so in one line
    naming what it lacks (it had gone unwatched without a word)."""
    import prefect.server.api.server as prefect_server
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import server_watchdog

    started = []

    class Renamed:
        api_url = "http://127.0.0.1:1/api"

        def start(self) -> None:
            started.append(True)

    monkeypatch.setattr(prefect_server, "SubprocessASGIServer", Renamed)
    monkeypatch.setattr(server_watchdog, "supported", lambda: True)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert server_watchdog.guard_temporary_server() is None
    assert started == [True]
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "SubprocessASGIServer._run_uvicorn_command" in said and "not watched" in said, said
    assert "SubprocessASGIServer.server_process" in said and "SubprocessASGIServer.running" in said, said


def test_a_prefect_whose_server_module_moved_runs_unwatched_saying_so(monkeypatch, capsys) -> None:
    """``prefect.server.api.server`` is Prefect's internals: a version that moved it had failed every
    ``prh run`` with an ImportError; the run goes on (Prefect starts its server as it would alone),
    and one line says the server is not watched."""
    import builtins

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import server_watchdog

    real_import = builtins.__import__

    def moved(name, *args, **kwargs):
        if name == "prefect.server.api.server":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", moved)
    monkeypatch.setattr(server_watchdog, "supported", lambda: True)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert server_watchdog.guard_temporary_server() is None
    said = capsys.readouterr().err
    assert "prefect.server.api.server.SubprocessASGIServer" in said and "not watched" in said, said
