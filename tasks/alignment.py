"""Alignment of two models' layer-wise features: every metric over every layer pair.

Pure computation on arrays (no Prefect, no storage): the Prefect task in
``tasks.align_task`` joins stored features and publishes what this returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tasks import metrics


@dataclass(frozen=True)
class MetricRequest:
    """One metric to compute, with its parameters (paper's names: ``topk``, ``kernel_metric``...)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """Short display label, e.g. ``mutual_knn(topk=10)``."""
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})" if inner else self.name


@dataclass
class PairAlignment:
    """Result of one metric on one model pair.

    ``matrix``: ``(La, Lb) float64`` scores for every layer pair; ``best``/``best_layers``: max
    over layer pairs and its argmax; ``chance_level``: analytical chance score (None if unknown);
    the remaining fields come from the permutation calibration (None when ``permutations == 0``).
    """

    metric: MetricRequest
    matrix: np.ndarray
    best: float
    best_layers: tuple[int, int]
    chance_level: float | None
    null_mean: float | None = None
    null_std: float | None = None
    tau: float | None = None
    p_value: float | None = None
    calibrated: float | None = None
    permutations: int = 0
    ci_low: float | None = None
    ci_high: float | None = None
    bootstrap: int = 0


def prepare_layers(layers: Sequence[np.ndarray], q: float = 0.95) -> list[np.ndarray]:
    """The paper's preprocessing of every layer: outlier clamp at quantile ``q``, then L2 rows."""
    return [np.asarray(metrics.prepare(x, q=q)) for x in layers]


def align_layers(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    requests: Sequence[MetricRequest],
    permutations: int = 0,
    seed: int = 0,
    bootstrap: int = 0,
) -> list[PairAlignment]:
    """Score every layer pair of two prepared feature stacks with every requested metric.

    ``xs``: model A's layers, each ``(N, D_a,l) float32``; ``ys``: model B's, ``(N, D_b,l)``;
    rows paired. With ``permutations > 0`` each metric's max-over-layer-pairs statistic is
    calibrated against a row-permutation null of ``ys`` (one permutation for all its layers).
    With ``bootstrap > 0`` metrics that are means of per-sample terms (the k-NN metrics) get a
    95% percentile bootstrap interval of the max; kernel metrics get none, because resampling
    rows with replacement biases them upward (duplicated rows become each other's neighbours).
    """
    n = int(xs[0].shape[0])
    # One cache per model: each layer's Gram matrix and neighbour lists are computed once and
    # shared by every metric and every permutation.
    rep_x = metrics.Representation(list(xs)).cache_grams()
    rep_y = metrics.Representation(list(ys)).cache_grams()
    results = []
    for request in requests:
        chance = _float_or_none(metrics.chance_level(request.name, n, **request.params))
        if permutations > 0:
            cal = metrics.calibrate(request.name, rep_x, rep_y, permutations=permutations, seed=seed, aggregate="max", **request.params)
            matrix = np.asarray(cal.matrix, dtype=np.float64)
            i, j = cal.argmax
            result = PairAlignment(request, matrix, float(cal.observed), (int(i), int(j)), chance,
                                   null_mean=float(cal.null_mean), null_std=float(cal.null_std), tau=float(cal.tau),
                                   p_value=float(cal.p_value), calibrated=float(cal.calibrated), permutations=permutations)
        else:
            matrix = np.asarray(metrics.layer_matrix(request.name, rep_x, rep_y, **request.params), dtype=np.float64)
            best, (i, j) = metrics.aggregate(matrix, "max")
            result = PairAlignment(request, matrix, float(best), (int(i), int(j)), chance)
        if bootstrap > 0 and metrics.resamples_per_sample(request.name):
            ci = metrics.bootstrap_ci(request.name, rep_x, rep_y, n_boot=bootstrap, level=0.95, seed=seed, aggregate="max", **request.params)
            result.ci_low, result.ci_high, result.bootstrap = float(ci.low), float(ci.high), bootstrap
        results.append(result)
    return results


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
