"""A run being stopped (SIGTERM, Ctrl-C, Cancel in the UI) and the tasks it has in flight.

Prefect stops a flow by raising in its main thread; the tasks running in the runner's threads go
on. Without a word to them, an alignment or a model's features were published after the run's
record said ``CANCELLED`` (with its end time and without its sign of life), outside the record.
Now the run's record (``flows.run_record.recorded``) asks them to stop (:func:`request_stop`) and
waits a bounded time for them (:func:`wait_until_idle`); a task stops at its next safe point
(:func:`raise_if_stopped`: before a batch, before publishing) with :class:`RunStopped`, leaving
only complete shards and versions, as a kill would. Tasks on Dask workers (other processes) are
not told. Pure: no Prefect, no storage.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_stop = threading.Event()
_changed = threading.Condition()
_active = 0


class RunStopped(RuntimeError):
    """The run is being stopped: a task gave up at a safe point (nothing half-written)."""


def request_stop() -> None:
    """Ask every task in flight in this process to stop at its next safe point."""
    _stop.set()


def clear_stop() -> None:
    """Forget an earlier stop (a new run starts in this process)."""
    _stop.clear()


def stop_requested() -> bool:
    return _stop.is_set()


def raise_if_stopped(what: str) -> None:
    """``RunStopped`` naming ``what`` is left undone, when the run is being stopped."""
    if _stop.is_set():
        raise RunStopped(f"the run is being stopped: {what} left undone")


@contextmanager
def in_flight() -> Iterator[None]:
    """Count the block as a task in flight (for :func:`wait_until_idle`)."""
    global _active
    with _changed:
        _active += 1
    try:
        yield
    finally:
        with _changed:
            _active -= 1
            _changed.notify_all()


def wait_until_idle(timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` seconds for every task in flight to end; True if they all did."""
    with _changed:
        return _changed.wait_for(lambda: _active == 0, timeout=timeout_s)
