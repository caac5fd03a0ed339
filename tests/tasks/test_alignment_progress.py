"""Progress of one model pair's permutations and bootstrap resamples (``tasks.alignment``): at
most one INFO line per interval, none for a fast pair, and the same numbers as without it. The
clock is injected (a counter advanced at every reading), so nothing sleeps."""

from __future__ import annotations

import logging
import re

import numpy as np

from tasks.align_task import align_to_store  # imports Prefect, whose logging set-up must come before caplog's
from tasks.alignment import MetricRequest, PairProgress, align_layers
from tasks.metrics.calibration import PERMUTATION_BATCH

PROGRESS_LINE = re.compile(r"^a x b: (\S+): (\d+) of (\d+) (permutations|bootstrap resamples) done \((\d+) s into the pair\)$")


class SteppingClock:
    """A clock that moves ``step`` seconds forward each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _pair(n: int = 40) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, 4))
    x = [(z @ rng.normal(size=(4, w)) + 0.5 * rng.normal(size=(n, w))).astype(np.float32) for w in (6, 9)]
    y = [(z @ rng.normal(size=(4, 7)) + 0.5 * rng.normal(size=(n, 7))).astype(np.float32)]
    return x, y


def _numbers(results) -> list[tuple]:
    return [(r.matrix.tobytes(), r.best, r.null_mean, r.null_std, r.tau, r.p_value, r.calibrated, r.ci_low, r.ci_high)
            for r in results]


def _lines(caplog) -> list[re.Match]:
    return [m for record in caplog.records if (m := PROGRESS_LINE.match(record.getMessage()))]


def test_a_slow_pair_logs_a_line_per_interval_naming_metric_counts_and_time(caplog):
    """Each reading of the clock moves it 4 s: with a 10 s interval a line comes at most every
    third callback, each at least 10 s after the one before, naming the metric, how many
    permutations (after each batch) or resamples (after each) of how many are done, and the time
    since the pair began."""
    x, y = _pair()
    requests = [MetricRequest("cka"), MetricRequest("mutual_knn", {"topk": 4})]
    log = logging.getLogger("test.progress")
    permutations = 2 * PERMUTATION_BATCH + 1
    with caplog.at_level(logging.INFO, logger="test.progress"):
        told = align_layers(x, y, requests, permutations=permutations, seed=1, bootstrap=12, names=("a", "b"),
                            progress=PairProgress(("a", "b"), log, every_s=10.0, clock=SteppingClock(4.0)))
    lines = _lines(caplog)
    assert all(r.levelno == logging.INFO for r in caplog.records if PROGRESS_LINE.match(r.getMessage()))
    # 3 batches + 12 resamples per metric = 30 callbacks at 4, 8, ..., 120 s: a line at 12, 24, ... 120 s
    assert [int(m[5]) for m in lines] == list(range(12, 121, 12))
    assert [(m[1], m[2], m[3], m[4]) for m in lines[:3]] == [
        ("cka", str(permutations), str(permutations), "permutations"), ("cka", "3", "12", "bootstrap resamples"),
        ("cka", "6", "12", "bootstrap resamples")]
    assert {m[1] for m in lines} == {"cka", "mutual_knn(topk=4)"}
    plain = align_layers(x, y, requests, permutations=permutations, seed=1, bootstrap=12, names=("a", "b"))
    assert _numbers(told) == _numbers(plain)


def test_a_fast_pair_logs_nothing(caplog):
    """A pair done within the interval (the clock moves 1 ms a reading) logs no progress at all."""
    x, y = _pair()
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.DEBUG):
        align_layers(x, y, [MetricRequest("cka")], permutations=30, seed=1, bootstrap=20, names=("a", "b"),
                     progress=PairProgress(("a", "b"), log, every_s=10.0, clock=SteppingClock(0.001)))
    assert _lines(caplog) == [] and "into the pair" not in caplog.text


def test_the_stage_logs_progress_through_the_run_logger(tmp_path, caplog, monkeypatch):
    """``align_to_store`` passes its logger (the Prefect run logger in a flow, whose lines the
    UI and ``prh run`` show): with an interval of 0 every callback is a line there."""
    import tasks.alignment as alignment
    from storage import layout
    from storage.features import layer_tables
    from storage.store import Store
    from tasks.params import AlignmentParams

    monkeypatch.setattr(alignment, "PROGRESS_EVERY_S", 0.0)
    store = Store(str(tmp_path / "store"))
    x, y = _pair(48)
    ids = [f"s{i:03d}" for i in range(48)]
    manifests = []
    for model, layers, modality in (("a", x, "vision"), ("b", y, "language")):
        catalog = {"model": model, "feature_version": f"fv-{model}", "dataset_version": "d1", "modality": modality,
                   "n_layers": len(layers), "layer_names": [f"{model}.l{i}" for i in range(len(layers))], "n_samples": 48}
        manifests.append(store.publish(layout.features_key("d1", model, f"fv-{model}"), layer_tables(model, f"fv-{model}", ids, layers),
                                       {"kind": "features", "catalog": catalog}).manifest)
    with caplog.at_level(logging.INFO, logger="test.stage"):
        align_to_store(store.url, *manifests, AlignmentParams(metrics=["cka"], permutations=19, bootstrap=3),
                       logging.getLogger("test.stage"))
    lines = [r.getMessage() for r in caplog.records if r.name == "test.stage" and "into the pair" in r.getMessage()]
    cka = "a x b: cka(kernel_metric=ip)"  # the stage's requests carry the configured parameters
    assert [line.split(" done (")[0] for line in lines] == [
        f"{cka}: 19 of 19 permutations", f"{cka}: 1 of 3 bootstrap resamples", f"{cka}: 2 of 3 bootstrap resamples",
        f"{cka}: 3 of 3 bootstrap resamples"]


class StopAfterFirstCallback(PairProgress):
    """A pair's progress whose run is asked to stop as its first callback returns (an operator
    pressing Cancel while the permutations run)."""

    def __init__(self, scope, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scope, self.calls = scope, 0

    def callback(self, label: str, what: str):
        told = super().callback(label, what)

        def progress(done: int, total: int) -> None:
            self.calls += 1
            told(done, total)
            self.scope.stop()
        return progress


def test_a_stopped_run_stops_within_a_pair_at_the_next_batch():
    """A stop request is honoured at the next batch of permutations (``RunStopped`` naming what is
    left), not after the pair's every permutation and resample."""
    import pytest

    from tasks.stop_request import RunStopped, run_scope

    x, y = _pair()
    with run_scope() as scope:
        progress = StopAfterFirstCallback(scope, ("a", "b"), logging.getLogger("test.progress"), every_s=1e9)
        with pytest.raises(RunStopped, match=r"a x b: cka: permutations \(128 of 640 done\) left undone"):
            align_layers(x, y, [MetricRequest("cka")], permutations=10 * PERMUTATION_BATCH, seed=1, bootstrap=50,
                         names=("a", "b"), progress=progress)
    assert progress.calls == 2  # the stop came after the first batch; the second ends the pair
