"""What the report needs to know of a metric, without importing the alignment engine.

``tasks.metrics`` imports torch (about 1.5 s of the 3 s a cached ``prh report`` took) only for
the report to read two facts of each metric: its direction (``higher_is_better``) and whether its
range reaches below 0. :data:`BUILTIN_FACTS` holds them for the built-in metrics, as
``tasks.metrics`` registers them (``tests/tasks/test_metric_facts.py`` checks every built-in
registration against it, so the two cannot drift apart).

:func:`metric_facts` asks the registry itself whenever ``tasks.metrics`` is imported in this
process (a pipeline run; a report after the modules of ``$PRH_METRIC_MODULES`` registered user
metrics, also ones under a built-in's name), once that import is done (one in progress in another
thread is waited for, as importing the engine would). Only that import can register a metric, so a
process without it has exactly the built-in registrations: the table answers for them.

A metric's bounds may depend on its parameters (``register_metric(bounds=lambda params: ...)``:
``lcs_knn``'s are ``(0, topk)``; a user metric's may open a side for one ``kernel_metric``), and
``calibrate`` scales with those of the parameters a result was computed with: the facts are read at
a result row's ``params`` (the catalog's JSON column) where given. The built-ins' facts are the same
at every value of the pipeline's parameters (``tests/tasks/test_metric_facts.py``), so the table
needs none.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricFacts:
    """A registered metric's facts the report uses.

    Attributes:
        higher_is_better: ``MetricSpec.higher_is_better``: a larger score is more aligned.
        signed: its bounds at the parameters asked about (``MetricSpec.bounds_for(params)``; its
            defaults where none are given) reach below 0.
        scaled: its bound on the better side at those parameters (the upper one, the lower one
            where lower is better) is finite, so its calibrated scores are scaled to [0, 1];
            without it they are the score's distance past the null's threshold in the metric's
            own units (``tasks.metrics.calibrate``).
    """

    higher_is_better: bool
    signed: bool
    scaled: bool = True


_PLAIN = MetricFacts(higher_is_better=True, signed=False)
_SIGNED = MetricFacts(higher_is_better=True, signed=True)

#: The built-in metrics' facts (``tasks.metrics.BUILTIN_SPECS``), by name.
BUILTIN_FACTS: dict[str, MetricFacts] = {
    "mutual_knn": _PLAIN, "cycle_knn": _PLAIN, "lcs_knn": _PLAIN, "edit_distance_knn": _PLAIN,
    "jaccard_knn": _PLAIN, "cka": _PLAIN, "cka_rbf_median": _PLAIN, "unbiased_cka": _SIGNED,
    "cknna": _SIGNED, "svcca": _PLAIN, "procrustes": _PLAIN, "linear_regression": _PLAIN,
    "rsa_spearman": _SIGNED,
}


def metric_facts(metric: str, params: Mapping[str, Any] | str | None = None) -> MetricFacts | None:
    """The facts of ``metric`` as registered in this process, at ``params`` (a mapping, or a result
    row's ``params`` JSON text; None: its defaults): the registry's (``tasks.metrics.METRICS``)
    where the engine is imported, else :data:`BUILTIN_FACTS`; None for a name not registered here."""
    if "tasks.metrics" not in sys.modules:  # the engine is not imported: only the built-ins are registered
        return BUILTIN_FACTS.get(metric)
    # imported, or being imported by another thread: this waits for that import to finish (its
    # registry, read before, had no built-in yet)
    from tasks.metrics import METRICS

    if metric not in METRICS:
        return None
    spec = METRICS[metric]
    return facts_of(spec, params)


def facts_of(spec: object, params: Mapping[str, Any] | str | None = None) -> MetricFacts:
    """The facts of a registration (a ``tasks.metrics.MetricSpec``), from its direction and its
    bounds at ``params`` (see :func:`metric_facts`)."""
    low, high = bounds_at(spec, own_params(spec, params))
    higher = bool(spec.higher_is_better)  # type: ignore[attr-defined]
    return MetricFacts(higher_is_better=higher, signed=low < 0, scaled=math.isfinite(high if higher else low))


def bounds_at(spec: object, params: dict[str, Any]) -> tuple[float, float]:
    """``spec``'s bounds at ``params`` (those it takes: :func:`own_params`), or at its defaults
    where it refuses them: a row scored under an earlier registration may hold a value of another
    kind than today's default (``scale`` 2.5 where the default is now the integer 3:
    ``MetricSpec.resolve`` raises) or one the user's bounds function no longer handles. Such a row
    is read as one whose params are no JSON, so that a report of it is not lost for a label."""
    if params:
        try:
            return spec.bounds_for(params)  # type: ignore[attr-defined, no-any-return]
        except Exception:  # noqa: BLE001 - a user's bounds function may raise anything at a value it dropped
            pass
    return spec.bounds_for({})  # type: ignore[attr-defined, no-any-return]


def own_params(spec: object, params: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Of ``params`` (a mapping or JSON text of one; None or text that is not a JSON object: none),
    those that ``spec`` takes: a row stored by an earlier registration may name a parameter the
    metric no longer has, which ``MetricSpec.resolve`` would refuse as a typo."""
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:  # a hand-edited row: read at the defaults, as before rows had parameters
            params = None
    if not isinstance(params, Mapping):
        return {}
    defaults = spec.defaults  # type: ignore[attr-defined]
    return {name: value for name, value in params.items() if name in defaults}
