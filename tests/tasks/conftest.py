"""Fixtures shared by the tests of tasks/."""

from __future__ import annotations

import uuid

import pytest


def paired_distance(x, y) -> float:
    """Mean squared distance of paired rows: lower is more aligned."""
    return float(((x - y) ** 2).sum(dim=1).mean())


@pytest.fixture
def lower_metric():
    """A fresh metric name registered with higher_is_better=False (removed afterwards)."""
    from tasks.metrics import METRICS, register_metric

    name = f"test_report_dist_{uuid.uuid4().hex[:8]}"
    register_metric(name, paired_distance, bounds=(0.0, float("inf")), higher_is_better=False, symmetric=True)
    yield name
    METRICS._specs.pop(name, None)
