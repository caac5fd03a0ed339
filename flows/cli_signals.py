"""How ``prh`` stops on a signal: Ctrl-C (SIGINT) and, for ``prh run``, SIGTERM end a command
with one line and the status a shell reports for a process the signal ended (130, 143), and
Ctrl-C interrupts a DuckDB query of ``prh sql`` at once. Used by ``flows.cli``; no Prefect, no store.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

#: The signals that stopped this command, as they came (``_note_stop``): SIGINT (Ctrl-C, `timeout -s
#: INT`, a CI runner cancelling a job) or, for ``prh run``, SIGTERM (`kill`, `timeout`, systemd, Kubernetes).
STOP_SIGNALS: list[int] = []


def _note_stop(signum: int, frame: object) -> None:
    """The handler of a signal that stops a command: noted (for the exit status, 128 + its number,
    as a shell reports a process the signal ended), then raised as Ctrl-C is."""
    STOP_SIGNALS.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def stop_status() -> int:
    """The exit status of a command stopped by a signal: 128 + the number of the first that came
    (130 for Ctrl-C, 143 for SIGTERM), 130 where none was noted (a KeyboardInterrupt raised otherwise)."""
    return 128 + (STOP_SIGNALS[0] if STOP_SIGNALS else signal.SIGINT)


@contextlib.contextmanager
def interrupts_noted(install: bool) -> Iterator[None]:
    """While a command other than ``prh run`` works (``install``), Ctrl-C is noted by
    :func:`_note_stop`: DuckDB catches the KeyboardInterrupt of a query it is running and raises
    ``RuntimeError('Query interrupted')`` in its place, which ended `prh sql` with a traceback and exit 1,
    as a failed command does. Left as it is where SIGINT is not Python's default handler (ignored in a
    shell's background job, or another program's handler around :func:`main`), and for ``prh run``,
    whose flow engine (asyncio) installs its own Ctrl-C handling only over Python's default one."""
    STOP_SIGNALS.clear()
    previous = signal.getsignal(signal.SIGINT)
    if not install or previous is not signal.default_int_handler or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, _note_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def queries_stopped_by_ctrl_c(con: Any) -> Iterator[None]:
    """While ``prh sql`` runs its query on the DuckDB connection ``con``, Ctrl-C interrupts DuckDB at
    once (``con.interrupt()`` from a thread that the signal wakes: Python's ``signal.set_wakeup_fd``).
    DuckDB looks at Python's signals only between its own steps, which took a minute and more on a large
    scan or join (a `timeout -s INT` or a CI runner cancelling the job waited for the whole query).
    Only where :func:`interrupts_noted` handles SIGINT (a command other than ``prh run``, in the main thread)."""
    if signal.getsignal(signal.SIGINT) is not _note_stop or threading.current_thread() is not threading.main_thread():
        yield
        return
    import socket

    reader, writer = socket.socketpair()
    writer.setblocking(False)  # the signal handler's write never blocks
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        while data := reader.recv(64):  # b"": the writer is closed, the command is done
            if signal.SIGINT in data:
                STOP_SIGNALS.append(signal.SIGINT)
                con.interrupt()

    watcher = threading.Thread(target=watch, name="prh-sql-ctrl-c", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        writer.close()
        watcher.join(timeout=5)
        reader.close()




def stop_on_sigterm(signum: int, frame: object) -> None:
    """``kill``/SIGTERM stops ``prh run`` like Ctrl-C: Python unwinds and exits normally, so the
    temporary Prefect server is stopped too. (Python's default ends the process at once, which
    left the server running; during a flow Prefect turns the signal into ``TerminationSignal``,
    records the run and then hands the signal back to this handler.) The signal is noted
    (:func:`_note_stop`): ``prh run`` then exits 143, as a shell reports a process SIGTERM ended
    (it exited 130, Ctrl-C's status, so a supervisor could not tell its own stop from a person's)."""
    _note_stop(signum, frame)
