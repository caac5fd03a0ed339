"""The pipeline's bootstrap interval of the best score (tasks.alignment.align_layers): always
around the score, and flagged ``ci_degenerate`` when the half-size subsamples pile up on a bound
of the metric (cycle_knn at N=40, topk=10: a subsample of 20 rows almost always scores 1)."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from tasks.align_task import log_interval_notes  # imports Prefect, whose logging set-up must come before caplog's
from tasks.alignment import MetricRequest, PairAlignment, align_layers


def test_a_saturated_interval_is_flagged_and_logged_not_warned(caplog):
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(40, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pipeline logs it instead of a Python warning
        with caplog.at_level(logging.WARNING, logger="tasks.alignment"):
            cycle, = align_layers([x], [y], [MetricRequest("cycle_knn", {"topk": 10})], bootstrap=50, seed=0)
    assert cycle.ci_degenerate is True and cycle.ci_low <= cycle.best <= cycle.ci_high <= 1.0
    assert "cycle_knn(topk=10): the bootstrap interval" in caplog.text and "degenerate" in caplog.text


def test_a_spread_interval_is_not_flagged():
    rng = np.random.default_rng(3)
    shared = rng.normal(size=(120, 6))
    x = (shared @ rng.normal(size=(6, 24)) + 0.5 * rng.normal(size=(120, 24))).astype(np.float32)
    y = (shared @ rng.normal(size=(6, 20)) + 0.5 * rng.normal(size=(120, 20))).astype(np.float32)
    knn, cka = align_layers([x], [y], [MetricRequest("mutual_knn", {"topk": 5}), MetricRequest("cka")], bootstrap=40, seed=1)
    for result in (knn, cka):
        assert result.ci_degenerate is False and result.ci_low < result.best < result.ci_high
    none, = align_layers([x], [y], [MetricRequest("cka")])
    assert none.ci_degenerate is None and none.ci_low is None  # no interval asked for


def test_a_user_metric_failing_on_a_subsample_fails_the_pair():
    """A user function that breaks on the bootstrap's half-size subsamples (here: it needs more
    than 30 rows) is a failure of the metric, not 'too few samples for an interval'; one that
    raises ValueError there says the metric is undefined on them: no interval, a warning."""
    import pytest

    from tasks.metrics import MetricFunctionError, register_metric, unregister_metric

    def picky(x, y):
        if x.shape[0] < 30:
            raise RuntimeError("needs 30 rows")
        return float((x * y).sum(dim=1).mean())

    def undefined_below_30(x, y):
        if x.shape[0] < 30:
            raise ValueError("undefined below 30 rows")
        return float((x * y).sum(dim=1).mean())

    register_metric("prh_test_picky", picky)
    register_metric("prh_test_undefined", undefined_below_30)
    try:
        rng = np.random.default_rng(5)
        x, y = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
        quiet, = align_layers([x], [y], [MetricRequest("prh_test_undefined")], bootstrap=20, seed=0)
        assert np.isfinite(quiet.best) and quiet.ci_low is None
        rng = np.random.default_rng(5)
        x, y = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
        plain, = align_layers([x], [y], [MetricRequest("prh_test_picky")])
        assert np.isfinite(plain.best)
        with pytest.raises(MetricFunctionError, match="prh_test_picky"):
            align_layers([x], [y], [MetricRequest("prh_test_picky")], bootstrap=20, seed=0)
    finally:
        unregister_metric("prh_test_picky")
        unregister_metric("prh_test_undefined")


def test_refused_subsamples_are_counted_stored_and_logged(caplog):
    """The plugin hunt: 39 of 200 subsamples refused by a metric were skipped silently and the
    result still said bootstrap=200. The pipeline now stores the replicates used and warns."""
    from tasks.metrics import METRICS, register_metric

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    first = float(x[0, 0])

    def picky(a, b):  # undefined on a subsample without the first row
        if a.shape[0] < 40 and not bool((a[:, 0] == first).any()):
            raise ValueError("undefined without the first row")
        return float((a * b).sum(1).mean())

    register_metric("test_picky_boot", picky, bounds=(-10.0, 10.0), overwrite=True)
    try:
        with caplog.at_level(logging.WARNING, logger="tasks.alignment"):
            result, = align_layers([x], [y], [MetricRequest("test_picky_boot")], bootstrap=60, seed=2)
    finally:
        METRICS._specs.pop("test_picky_boot", None)
    draws = np.random.default_rng(2)
    refused = sum(0 not in draws.choice(40, 20, replace=False) for _ in range(60))
    assert 0 < refused < 60 and result.bootstrap == 60 - refused
    assert f"test_picky_boot: {refused} of 60 bootstrap subsamples of 20 rows were refused" in caplog.text


def test_a_reused_result_with_refused_subsamples_warns_again(caplog):
    """The review: the warning about refused subsamples was logged when the result was computed,
    not when a later run reused it (as it is for a degenerate or missing interval)."""
    result = PairAlignment(MetricRequest("cka"), np.zeros((1, 1)), 0.5, (0, 0), None, ci_low=0.4, ci_high=0.6, bootstrap=187)
    log = logging.getLogger("tasks.alignment")
    with caplog.at_level(logging.WARNING, logger="tasks.alignment"):
        log_interval_notes(result, 200, log)
        log_interval_notes(PairAlignment(MetricRequest("cka"), np.zeros((1, 1)), 0.5, (0, 0), None, bootstrap=200), 200, log)
    assert caplog.text.count("13 of 200 bootstrap subsamples were refused") == 1 and "(reused result)" in caplog.text


def test_no_interval_asked_for_is_not_warned_about(caplog):
    """``bootstrap=0`` (the default): no interval is computed, so none is missing; nothing is logged."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="tasks.alignment"):
        cka, = align_layers([x], [y], [MetricRequest("cka")], bootstrap=0)
    assert cka.bootstrap == 0 and cka.ci_low is None and cka.ci_high is None and cka.ci_degenerate is None
    assert "bootstrap" not in caplog.text
