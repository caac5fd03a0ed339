"""A run being stopped (SIGTERM, Ctrl-C, Cancel in the UI) and the tasks it has in flight.

Prefect stops a flow by raising in its main thread; the tasks running in the runner's threads go
on. Without a word to them, an alignment or a model's features were published after the run's
record said ``CANCELLED`` (with its end time and without its sign of life), outside the record.
Now the run's record (``flows.run_record.recorded``) opens a :class:`RunScope` for the run; when
the run is stopped it asks the scope's tasks to stop (:meth:`RunScope.stop`) and waits a bounded
time for them (:meth:`RunScope.wait_until_idle`). A task stops at its next safe point with
:class:`RunStopped`, leaving only complete shards and versions, as a kill would: on starting
(:func:`in_flight`: a task still queued when the run stopped never starts its work), before each
batch and before publishing (:func:`raise_if_stopped`).

A task can also give up because its work was done elsewhere: two runs on one store (a nightly and
a run started from the UI) may compute the same version at once, and the one that publishes
second drops its copy. Inside :func:`unless_published_meanwhile` the same safe points ask, at most
every few seconds, whether the version is published, and raise :class:`PublishedMeanwhile` when
it is, so the later run stops at its next batch or metric instead of finishing the work.

The scope travels with the run's context (a ``ContextVar``: Prefect runs each task in a copy of
the submitting flow's context), so two runs in one process have their own, and code called
outside any run (a notebook calling ``align_to_store``) is never stopped. A task on a Dask worker
(another process, which the ``ContextVar`` does not reach) takes its run's stop request from a
Dask ``Event`` named by its flow run and attempt (:func:`remote_stop_name`), which the stopping flow sets
(``flows.run_record.stop_remote_tasks``): :func:`in_flight` opens a :class:`RemoteRunScope` for it,
which looks at the event at most every ``REMOTE_POLL_S`` seconds. Pure: no storage; ``distributed``
and Prefect's task run context are imported on a Dask worker only.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class RunStopped(RuntimeError):
    """The run is being stopped: a task gave up at a safe point (nothing half-written)."""


class PublishedMeanwhile(RuntimeError):
    """The version a task is computing was published by another run meanwhile: the task gave up
    at a safe point (its caller uses the published copy)."""


class RunScope:
    """One run's stop request and its count of tasks in flight."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._active = 0
        self._waited = False

    def stop(self) -> None:
        """Ask every task of the run to stop at its next safe point."""
        self._stop.set()

    def first_wait(self) -> bool:
        """True the first time only: the one caller that waits for the stopped run's tasks (the
        flow, before it lists what they published; the run's record after it). A wait cut short (a
        second signal) or run out is not started again by the next caller."""
        with self._changed:
            first, self._waited = not self._waited, True
            return first

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the run's tasks in flight to end; True if they did."""
        with self._changed:
            return self._changed.wait_for(lambda: self._active == 0, timeout=timeout_s)

    @contextmanager
    def _task(self) -> Iterator[None]:
        with self._changed:
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                self._changed.notify_all()


_current: ContextVar[RunScope | None] = ContextVar("prh_run_scope", default=None)
_watch: ContextVar["_Watch | None"] = ContextVar("prh_published_watch", default=None)
#: Seconds between two looks at the store from the safe points (a HEAD request on S3).
WATCH_EVERY_S = 5.0
#: Seconds between two looks at the run's stop event from the safe points of a task on a Dask
#: worker (one request to the scheduler).
REMOTE_POLL_S = 0.5


def remote_stop_name(run_id: str, attempt: int) -> str:
    """The name of the Dask ``Event`` that asks the tasks of attempt ``attempt`` (Prefect's
    ``run_count``, 1 for the first) of flow run ``run_id`` on a Dask cluster to stop. Per attempt:
    a flow run retried (flow ``retries``, *Retry* in the UI) runs again under the same id on the
    same scheduler, where the earlier attempt's event stays set (an event lives until cleared)
    and had stopped every task of the retry before it began its work."""
    return f"prh-stop-{run_id}-{attempt}"


class RemoteRunScope(RunScope):
    """The scope of a task running outside its run's process (a Dask worker): stopping once
    ``is_set()`` (the run's stop event) says so, asked at most every ``every_s`` seconds; a
    lookup that fails (the scheduler gone) leaves the task running, as before."""

    def __init__(self, is_set: Callable[[], bool], every_s: float = REMOTE_POLL_S) -> None:
        super().__init__()
        self._is_set, self._every_s = is_set, every_s
        self._last = -float("inf")

    @property
    def stopping(self) -> bool:
        now = time.monotonic()
        if not self._stop.is_set() and now - self._last >= self._every_s:
            self._last = now
            try:
                if self._is_set():
                    self._stop.set()
            except Exception:  # noqa: BLE001 - the scheduler did not answer: a stop request unknown, not a failure
                pass
        return self._stop.is_set()


def _remote_scope() -> RunScope | None:
    """A :class:`RemoteRunScope` for a task running on a Dask worker under a Prefect flow run
    (its run's stop event), else None (no Dask worker here, no flow run known). ``distributed``
    is imported on a Dask worker already: elsewhere it is not imported (a second of startup)."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import Event, get_worker

        get_worker()
    except (ImportError, ValueError):
        return None
    try:
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
        run_id = context.task_run.flow_run_id if context is not None else None
        attempt = context.task_run.flow_run_run_count if context is not None else None
    except ImportError:
        return None
    if run_id is None or attempt is None:
        return None
    return RemoteRunScope(Event(remote_stop_name(str(run_id), attempt)).is_set)


class _Watch:
    def __init__(self, published: Callable[[], bool], what: str, every_s: float) -> None:
        self.published, self.what, self.every_s = published, what, every_s
        self.last = time.monotonic()  # the caller has just looked

    def check(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            try:
                published = self.published()
            except OSError:  # the store did not answer: a look that only saves work, not a reason to fail
                return
            if published:
                raise PublishedMeanwhile(f"{self.what} was published by another run meanwhile")


@contextmanager
def unless_published_meanwhile(published: Callable[[], bool], what: str,
                               every_s: float | None = None) -> Iterator[None]:
    """Within the block, :func:`raise_if_stopped` also calls ``published()`` (at most once every
    ``every_s`` seconds, default ``WATCH_EVERY_S``, the first time ``every_s`` after entering) and raises
    :class:`PublishedMeanwhile` naming ``what`` once it returns True. Per thread of work (a
    ``ContextVar``): another task's safe points are not affected."""
    token = _watch.set(_Watch(published, what, WATCH_EVERY_S if every_s is None else every_s))
    try:
        yield
    finally:
        _watch.reset(token)


@contextmanager
def run_scope() -> Iterator[RunScope]:
    """A new :class:`RunScope` for the block (and the tasks it submits)."""
    scope = RunScope()
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


def current_scope() -> RunScope | None:
    """The :class:`RunScope` of the run this code runs in; None outside any run."""
    return _current.get()


def raise_if_stopped(what: str) -> None:
    """``RunStopped`` naming ``what`` is left undone, when the current run is being stopped;
    inside :func:`unless_published_meanwhile`, :class:`PublishedMeanwhile` once the version is
    published by another run."""
    scope = _current.get()
    if scope is not None and scope.stopping:
        raise RunStopped(f"the run is being stopped: {what} left undone")
    watch = _watch.get()
    if watch is not None:
        watch.check()


@contextmanager
def in_flight(what: str) -> Iterator[None]:
    """Count the block as a task in flight of the current run (none: nothing counted); a task
    that starts after its run was stopped raises ``RunStopped`` at once. On a Dask worker, where
    the run's scope does not reach, the block has the run's :class:`RemoteRunScope`."""
    scope = _current.get()
    token = None
    if scope is None:
        scope = _remote_scope()
        if scope is None:
            yield
            return
        token = _current.set(scope)
    try:
        with scope._task():
            raise_if_stopped(what)
            yield
    finally:
        if token is not None:
            _current.reset(token)
