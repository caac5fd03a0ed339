"""Stop Prefect's temporary API server when ``prh run`` dies without a chance to stop it.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server (a uvicorn child process,
~220 MB, a port, a SQLite database) and stops it at interpreter exit. ``kill -9``, the OOM
killer or a batch scheduler's hard kill skip that exit, and the server ran on forever, re-parented
to init. :func:`guard_temporary_server` starts that server itself (Prefect's own singleton, so
the flow uses the same one) and, as soon as the server's process exists (before Prefect has
waited for it to answer, which takes seconds), a small watchdog process that polls, twice a
second, whether ``prh run`` still lives: once it is gone, the watchdog terminates the server
(SIGTERM, then SIGKILL after 5 s) and exits; once the server is gone (a normal stop), the
watchdog just exits. Processes are identified by pid and start time (``/proc``), so a reused pid
is never signalled; where ``/proc`` is missing (macOS, Windows) no watchdog is started.

    python -m flows.server_watchdog OWNER_PID OWNER_ID SERVER_PID SERVER_ID

(the ids are :func:`process_identity` tokens, taken by the owner before the watchdog starts, so
an owner killed while the watchdog was still starting is noticed too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0
#: What :func:`process_identity` answers when ``/proc`` could not be read this time.
UNKNOWN = "unknown"
_WATCHDOGS: dict[int, subprocess.Popen[bytes]] = {}  # server pid -> its watchdog (kept: never collected while it runs)


def supported() -> bool:
    """Whether processes can be identified by pid and start time here (Linux ``/proc``)."""
    return Path("/proc/self/stat").exists()


def process_identity(pid: int) -> str | None:
    """A token naming process ``pid`` for as long as it lives: its start time (field 22 of
    ``/proc/PID/stat``, clock ticks since boot); None when no such process exists or it is a
    zombie; :data:`UNKNOWN` when ``/proc`` could not be read (no decision)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return UNKNOWN
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
    return None if fields[0] in ("Z", "X") else fields[19]


def _gone(pid: int, identity: str) -> bool:
    """Whether the process ``identity`` named has ended (a read error decides nothing)."""
    now = process_identity(pid)
    return now != identity and now != UNKNOWN


def watch(owner_pid: int, owner_id: str, server_pid: int, server_id: str) -> str:
    """Poll until the owner or the server is gone; terminate the server if the owner went first.

    Returns what happened: ``"server stopped"`` (the owner stopped it, or it died) or
    ``"owner gone"`` (the server was then terminated)."""
    while True:
        if _gone(server_pid, server_id):
            return "server stopped"
        if _gone(owner_pid, owner_id):
            _terminate(server_pid, server_id)
            return "owner gone"
        time.sleep(POLL_SECONDS)


def _terminate(pid: int, identity: str) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, GRACE_SECONDS)):
        if process_identity(pid) != identity:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process_identity(pid) == identity:
            time.sleep(0.05)


def start_watchdog(server_pid: int) -> subprocess.Popen[bytes]:
    """Start the watchdog of ``server_pid`` for this process (its owner). The watchdog runs in
    its own session, so a Ctrl-C in the terminal does not stop it before it has done its job."""
    owner, server = os.getpid(), server_pid
    ids = [str(owner), str(process_identity(owner)), str(server), str(process_identity(server))]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "flows.server_watchdog", *ids],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=root)


def _watch_new_server(process: Any) -> None:
    """Start a watchdog for a server process Prefect just launched (once per process)."""
    pid = getattr(process, "pid", None)
    if isinstance(pid, int) and pid not in _WATCHDOGS:
        _WATCHDOGS[pid] = start_watchdog(pid)


def _in_own_session(launch: Any) -> Any:
    """``launch()`` with the processes it starts in a session (and process group) of their own.
    Ctrl-C in a terminal signals the whole foreground process group: the temporary server, in
    prh's group, stopped at once while the flow was still reporting its stop to it, and `prh run`
    retried the dead server for minutes and ended 1 instead of 130. The watchdog and Prefect's own
    exit handler still stop it when prh ends."""
    import subprocess

    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("start_new_session", True)
        return real(*args, **kwargs)

    subprocess.Popen = popen  # type: ignore[misc]  # only while Prefect launches its server (no other thread starts one)
    try:
        return launch()
    finally:
        subprocess.Popen = real  # type: ignore[misc]


def guard_temporary_server() -> int | None:
    """Start Prefect's temporary API server now, watched, when the flow would start one (no
    ``PREFECT_API_URL``) and ``/proc`` identifies processes, and point ``$PREFECT_API_URL`` of
    the processes started afterwards (Dask workers) at it. Returns the server's pid, else None (a
    real server is configured, or no ``/proc``: nothing is guarded)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or not supported():
        return None
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:  # Prefect's internals moved: the flow's client starts the server as it would alone
        _say_unwatched("prefect.server.api.server.SubprocessASGIServer")
        return None

    server = SubprocessASGIServer()  # the singleton the flow's client will use
    launch = getattr(server, "_run_uvicorn_command", None)
    # Prefect's private API (flows/prefect_private.py): an attribute renamed in another version leaves
    # the server unwatched, said in one line, never failing the run
    lacking = [name for name, found in (("_run_uvicorn_command", callable(launch)), ("running", hasattr(server, "running")),
                                        ("server_process", hasattr(server, "server_process"))) if not found]
    if lacking:
        _say_unwatched(", ".join(f"SubprocessASGIServer.{name}" for name in lacking))
    if callable(launch) and not getattr(server, "running", True):
        def launch_watched() -> Any:  # the watchdog starts with the process, before the health check
            process = _in_own_session(launch)
            _watch_new_server(process)
            return process

        server._run_uvicorn_command = launch_watched  # this instance only (Prefect relaunches on a taken port)
    try:
        server.start()
    finally:
        if callable(launch):
            server.__dict__.pop("_run_uvicorn_command", None)
    process = getattr(server, "server_process", None)
    if process is None or not isinstance(getattr(process, "pid", None), int):
        return None
    _watch_new_server(process)
    # processes started from here on (Dask workers) use this server instead of each starting its own
    # temporary one, which no watchdog guards and which keeps their task runs out of the run's server
    os.environ.setdefault("PREFECT_API_URL", server.api_url)
    return process.pid


def _say_unwatched(lacking: str) -> None:
    """One line on stderr: the temporary server runs unwatched, as this Prefect lacks ``lacking``."""
    from flows.prefect_private import prefect_version

    print(f"prh: Prefect {prefect_version()} has no {lacking} (a private Prefect API prh uses, listed in "
          "flows/prefect_private.py): its temporary API server is not watched, and a `kill -9` of prh run leaves it "
          "running; install the Prefect of requirements.lock", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    owner_pid, owner_id, server_pid, server_id = argv
    if UNKNOWN in (owner_id, server_id) or "None" in (owner_id, server_id):
        return 0  # an identity that could not be read: nothing can be watched safely
    watch(int(owner_pid), owner_id, int(server_pid), server_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
