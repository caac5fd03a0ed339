"""A stopped run's tasks in flight (``tasks.stop_request``): told through the run's own scope,
counted while they run, and never the business of code outside a run or of another run."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context

import pytest

from tasks.stop_request import RunStopped, in_flight, raise_if_stopped, run_scope


def test_outside_a_run_nothing_is_stopped_or_counted():
    raise_if_stopped("anything")
    with in_flight("a direct call"):
        pass


def test_a_queued_task_of_a_stopped_run_does_not_start_and_the_running_one_is_waited_for():
    """A one-thread runner holds the other models' tasks queued: after the stop they started
    anyway (a whole model loaded during the grace wait, which then timed out)."""
    started, release = [], threading.Event()

    def task(name: str) -> str:
        with in_flight(name):
            started.append(name)
            release.wait(5)
            raise_if_stopped(f"{name}: publishing")
            return name

    with run_scope() as scope, ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(copy_context().run, task, name) for name in ("a", "b")]  # as Prefect submits
        while not started:
            time.sleep(0.01)
        scope.stop()
        assert not scope.wait_until_idle(0.05)  # "a" is still in flight
        release.set()
        assert scope.wait_until_idle(5)
        for future in futures:
            with pytest.raises(RunStopped):
                future.result()
    assert started == ["a"]


def test_two_runs_in_one_process_stop_apart():
    with run_scope() as first:
        first.stop()
        with pytest.raises(RunStopped):
            raise_if_stopped("first")
        with run_scope() as second:
            raise_if_stopped("second")  # another run: not stopped
            with in_flight("second's task"):
                assert not second.wait_until_idle(0) and first.wait_until_idle(0)
    raise_if_stopped("after both")


def test_a_stopped_run_stops_an_alignment_at_its_next_metric():
    """Alignment had no safe point before it published: a stopped `prh run` went on through every
    metric's calibration and bootstrap (40 s in a hunt) after its record said it ended."""
    import numpy as np

    from tasks.alignment import MetricRequest, align_layers

    rng = np.random.default_rng(0)
    xs, ys = [rng.normal(size=(30, 4)).astype(np.float32)], [rng.normal(size=(30, 3)).astype(np.float32)]
    requests = [MetricRequest("cka", {}), MetricRequest("mutual_knn", {"topk": 3})]
    assert len(align_layers(xs, ys, requests)) == 2  # outside a run: never stopped
    with run_scope() as scope:
        scope.stop()
        with pytest.raises(RunStopped, match=r"the run is being stopped: a x b: cka.* left undone"):
            align_layers(xs, ys, requests, names=("a", "b"))


def test_published_meanwhile_is_asked_at_safe_points_at_most_every_few_seconds(monkeypatch):
    from tasks.stop_request import PublishedMeanwhile, unless_published_meanwhile

    clock, asked = [100.0], []
    monkeypatch.setattr("tasks.stop_request.time.monotonic", lambda: clock[0])

    def published():
        asked.append(clock[0])
        return clock[0] >= 110

    with unless_published_meanwhile(published, "v1", every_s=5):
        raise_if_stopped("x")  # entered just now: the caller has just looked
        clock[0] = 104.9
        raise_if_stopped("x")
        clock[0] = 105
        raise_if_stopped("x")  # asked: not yet
        clock[0] = 109
        raise_if_stopped("x")  # 4 s since: not asked
        clock[0] = 110
        with pytest.raises(PublishedMeanwhile, match="^v1 was published by another run meanwhile$"):
            raise_if_stopped("x")
    assert asked == [105, 110]
    raise_if_stopped("after the block: never asked")
    assert asked == [105, 110]
    with run_scope() as scope, unless_published_meanwhile(published, "v1", every_s=0):
        scope.stop()
        with pytest.raises(RunStopped):  # a stopped run stops first, whatever the store holds
            raise_if_stopped("x")


def test_published_meanwhile_is_asked_only_in_its_own_thread_of_work():
    from tasks.stop_request import PublishedMeanwhile, unless_published_meanwhile

    with unless_published_meanwhile(lambda: True, "v1", every_s=0):
        copy_context().run(lambda: None)
        with ThreadPoolExecutor(1) as pool:  # another task's thread (a context of its own)
            pool.submit(raise_if_stopped, "other").result()
        with pytest.raises(PublishedMeanwhile):
            raise_if_stopped("mine")


def test_a_store_that_does_not_answer_at_a_safe_point_is_no_reason_to_stop():
    """The review: the look for a version published meanwhile is store I/O (a HEAD on S3); an
    error there failed the extraction or alignment it was only meant to shorten."""
    from tasks.stop_request import unless_published_meanwhile

    def unreachable():
        raise OSError("connection refused")

    with unless_published_meanwhile(unreachable, "v1", every_s=0):
        raise_if_stopped("x")
