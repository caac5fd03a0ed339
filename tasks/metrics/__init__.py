"""Alignment-metric engine: the Platonic Representation Hypothesis metrics, exact and shared.

Pure torch/numpy/scipy; imports neither Prefect nor storage nor transformers.

Public API:

- ``METRICS``: registry (name -> ``MetricSpec``) with at least the paper's eight metrics;
  ``register_metric`` adds one; ``get_metric`` looks one up (unknown names: ``ValueError``).
- ``prepare(x, q=0.95, exact=False, normalize=True)``: the paper's outlier clamp + L2 rows.
- ``score(metric, x, y, **params) -> float`` and ``layer_matrix(metric, xs, ys, **params)``
  (``(La, Lb)`` float64, every layer pair, per-layer work shared).
- ``Representation``: wrap one model's layers to reuse Grams / neighbour lists across calls.
- ``calibrate(...) -> CalibrationResult``: permutation-calibrated model-pair score.
- ``aggregate``, ``chance_level``, ``bootstrap_ci``, ``bh_fdr``, ``with_concatenated``.
- ``MetricFunctionError`` (a user function raised or returned no single number) and
  ``MissingEngineMethod`` (an ``Engine`` subclass lacks a method): both name the metric.

See ``docs/metrics.md`` for the definitions and every difference from the paper's code.
"""

from .api import layer_matrix, score
from .bootstrap import BootstrapResult, bootstrap_ci
from .builtin import PAPER_METRICS, register_builtins
from .calibration import CalibrationResult, calibrate, chance_level
from .engine import Engine, FunctionEngine, MetricFunctionError, MissingEngineMethod
from .layers import with_concatenated
from .preparation import prepare
from .registry import (METRICS, MetricSpec, UnknownMetricError, get_metric, register_metric,
                       unregister_metric)
from .representation import Representation
from .stats import aggregate, bh_fdr

register_builtins()
#: The built-in registrations as shipped (``tasks.metric_plugins`` tells a user's metric from them,
#: also one registered under a built-in's name); ``register_builtins()`` installs these same objects.
BUILTIN_SPECS: dict[str, MetricSpec] = dict(METRICS)

__all__ = [
    "METRICS", "PAPER_METRICS", "BootstrapResult", "CalibrationResult", "Engine",
    "FunctionEngine", "MetricFunctionError", "MetricSpec", "MissingEngineMethod", "Representation",
    "UnknownMetricError", "aggregate", "bh_fdr", "bootstrap_ci", "calibrate", "chance_level",
    "get_metric", "layer_matrix", "prepare", "register_metric", "score", "unregister_metric",
    "with_concatenated",
]
