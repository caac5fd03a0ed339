"""Bootstrap confidence intervals of a model-pair score over samples.

Two schemes, chosen by the metric:

- local metrics whose score is a mean of per-sample terms (``mutual_knn``, ``jaccard_knn``,
  ``cycle_knn``, ``lcs_knn``, ``edit_distance_knn``): the neighbour lists are computed once on all
  samples and the query samples are resampled with replacement (multinomial weights on the
  ``(La, Lb, N)`` per-sample terms). Resampling rows before the kNN search would make duplicated
  samples each other's nearest neighbours in both spaces and inflate the score.
- every other metric: rows are resampled with replacement and the layer matrix is recomputed
  from the resampled features (duplicated rows enter the kernels as-is, the usual CKA bootstrap).

The interval is the percentile interval of the aggregated (max or mean) replicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .api import encode_pair
from .engine import Engine
from .registry import MetricSpec, get_metric
from .representation import Representation
from .stats import aggregate as aggregate_matrix


@dataclass(frozen=True)
class BootstrapResult:
    """``estimate`` (on all samples), percentile interval ``[low, high]`` at ``level``, the
    replicates' standard deviation, ``n_boot``, ``method`` (``'per-sample'``|``'rows'``) and the
    argmax layer pair of the estimate."""

    estimate: float
    low: float
    high: float
    std: float
    level: float
    n_boot: int
    method: str
    argmax: tuple[int, int]


def resamples_per_sample(metric: str | MetricSpec) -> bool:
    """Whether ``metric``'s score is a mean of per-sample terms, so that its bootstrap keeps the
    neighbour lists fixed and only reweights samples (cheap and free of duplicate-row bias)."""
    return type(get_metric(metric).engine).per_sample is not Engine.per_sample


def bootstrap_ci(metric: str | MetricSpec, xs: Any, ys: Any, n_boot: int = 200,
                 level: float = 0.95, seed: int = 0, aggregate: Literal["max", "mean"] = "max",
                 **params: Any) -> BootstrapResult:
    """Percentile bootstrap interval of the aggregated score (see module docstring)."""
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError("need n_boot >= 1 and 0 < level < 1")
    spec = get_metric(metric)
    a, b, p, ra, rb = encode_pair(spec, xs, ys, params)
    engine = spec.engine
    estimate, argmax = aggregate_matrix(engine.matrix(a, b, p).cpu().numpy(), aggregate)
    rng = np.random.default_rng(seed)
    n = ra.n
    terms = engine.per_sample(a, b, p)
    reps = np.empty(n_boot)
    if terms is not None:
        t = terms.detach().cpu().numpy().reshape(-1, n)  # (La*Lb, N)
        shape = terms.shape[:2]
        for r in range(n_boot):
            w = np.bincount(rng.integers(0, n, n), minlength=n) / n
            reps[r] = aggregate_matrix((t @ w).reshape(shape), aggregate)[0]
        method = "per-sample"
    else:
        for r in range(n_boot):
            idx = torch.as_tensor(rng.integers(0, n, n), device=ra.device)
            sa = Representation([x.index_select(0, idx) for x in ra.layers], device=ra.device)
            sb = sa if rb is ra else Representation([y.index_select(0, idx) for y in rb.layers],
                                                    device=rb.device)
            m = engine.matrix(engine.encode(sa, p), engine.encode(sb, p), p)
            reps[r] = aggregate_matrix(m.cpu().numpy(), aggregate)[0]
        method = "rows"
    tail = (1 - level) / 2
    low, high = np.nanquantile(reps, [tail, 1 - tail])
    return BootstrapResult(float(estimate), float(low), float(high), float(np.nanstd(reps)),
                           level, int(n_boot), method, argmax)
