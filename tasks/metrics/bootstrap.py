"""Confidence intervals of a model-pair score over samples: bootstrap or subsampling.

Two schemes, chosen by the metric:

- ``'per-sample'``: local metrics whose score is a mean of per-sample terms (``mutual_knn``,
  ``jaccard_knn``, ``cycle_knn``, ``lcs_knn``, ``edit_distance_knn``). The neighbour lists are
  computed once on all samples and the query samples are resampled with replacement (multinomial
  weights on the ``(La, Lb, N)`` per-sample terms); percentile interval of the aggregated
  replicates. Resampling rows before the kNN search would make duplicated samples each other's
  nearest neighbours in both spaces and inflate the score.
- ``'subsample'``: every other metric (CKA family, CKNNA, SVCCA, ...). Resampling rows *with*
  replacement biases these upward (a duplicated row is its own nearest neighbour and adds a
  perfectly aligned entry to both kernels). Instead each replicate scores ``m`` rows drawn
  *without* replacement (``m = N/2`` by default; m-out-of-n subsampling, Politis & Romano 1994)
  and the interval is built from the spread of the replicates around their own mean::

      d_r  = theta*_r - mean_r(theta*_r)                 (r = 1..B, aggregated replicates)
      c    = sqrt(m / (N - m))
      [low, high] = estimate + c * quantile(d, [(1 - level)/2, (1 + level)/2])

  ``c`` is the delete-d jackknife factor (Shao & Wu 1989): for an asymptotically linear
  statistic the variance of a size-``m`` subsample estimate around the full-sample one is
  ``(1/m - 1/N)`` sigma^2, so ``c^2`` times it is the variance ``sigma^2 / N`` of the full-sample
  estimate (``sqrt(m/N)`` is its ``m << N`` limit and would be ~30% too narrow at ``m = N/2``).
  Deviations are taken around the replicates' mean rather than the estimate because these
  estimators are biased at finite size and the bias depends on the size (linear CKA of
  independent data is about ``d / (d + n)``): centring removes the size-``m`` bias, so the
  interval describes the sampling spread of the size-``N`` estimate around its expectation.
  ``std`` is ``c`` times the replicates' standard deviation. Replicates reuse the cached Gram
  matrices (sub-matrices, ``Representation.subset``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .api import encode_pair
from .engine import Engine
from .registry import MetricSpec, get_metric
from .stats import aggregate as aggregate_matrix

#: default share of the rows in one subsample (m = N/2)
DEFAULT_SUBSAMPLE = 0.5


@dataclass(frozen=True)
class BootstrapResult:
    """``estimate`` (on all samples), interval ``[low, high]`` at ``level``, standard error
    ``std`` of the estimate, ``n_boot`` replicates, ``method`` (``'per-sample'``: percentile
    bootstrap of per-sample terms; ``'subsample'``: m-out-of-n subsampling without replacement,
    see the module docstring), the argmax layer pair of the estimate and ``resample_size``, the
    rows per replicate (``N`` for ``'per-sample'``, ``m`` for ``'subsample'``)."""

    estimate: float
    low: float
    high: float
    std: float
    level: float
    n_boot: int
    method: str
    argmax: tuple[int, int]
    resample_size: int | None = None


def resamples_per_sample(metric: str | MetricSpec) -> bool:
    """Whether ``metric``'s score is a mean of per-sample terms, so that its bootstrap keeps the
    neighbour lists fixed and only reweights samples (``'per-sample'``); the other metrics get
    the ``'subsample'`` interval."""
    return type(get_metric(metric).engine).per_sample is not Engine.per_sample


def subsample_size(n: int, subsample: float | int) -> int:
    """Rows per subsample: ``round(subsample * n)`` for a fraction in ``(0, 1)``, else the
    integer itself; must leave ``2 <= m <= n - 1``."""
    if isinstance(subsample, bool):
        raise ValueError(f"subsample must be a fraction in (0, 1) or a row count, got {subsample!r}")
    if isinstance(subsample, float) and 0 < subsample < 1:
        m = int(round(subsample * n))
    elif float(subsample) == int(subsample) and subsample >= 1:
        m = int(subsample)
    else:
        raise ValueError(f"subsample must be a fraction in (0, 1) or a row count, got {subsample!r}")
    if not 2 <= m <= n - 1:
        raise ValueError(f"subsample gives m = {m} rows of N = {n}; need 2 <= m <= N - 1")
    return m


def bootstrap_ci(metric: str | MetricSpec, xs: Any, ys: Any, n_boot: int = 200,
                 level: float = 0.95, seed: int = 0, aggregate: Literal["max", "mean"] = "max",
                 observed: np.ndarray | None = None,
                 subsample: float | int = DEFAULT_SUBSAMPLE, **params: Any) -> BootstrapResult:
    """Interval of the aggregated (max or mean over layer pairs) score; see the module docstring.

    Args:
        metric: registered name or ``MetricSpec``.
        xs, ys: the two models' layers (any form ``layer_matrix`` takes; pass the same
            ``Representation`` objects as to ``layer_matrix``/``calibrate`` to reuse their caches).
        n_boot: replicates ``B >= 1`` (a few hundred for stable 95% bounds).
        level: coverage of the interval, in ``(0, 1)``.
        seed: seed of the numpy generator drawing the replicates.
        aggregate: ``'max'`` (the paper's model-pair score) or ``'mean'``.
        observed: the ``(La, Lb)`` layer matrix on all samples when already computed
            (``layer_matrix(...)`` or ``CalibrationResult.matrix``, same metric and parameters):
            the estimate is taken from it instead of being recomputed.
        subsample: ``'subsample'`` method only: rows per replicate, a fraction of ``N`` in
            ``(0, 1)`` or a count (default ``N/2``).
        **params: metric parameters and ``device``.

    Returns:
        ``BootstrapResult``.
    """
    if int(n_boot) < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    n_boot = int(n_boot)
    spec = get_metric(metric)
    a, b, p, ra, rb = encode_pair(spec, xs, ys, params)
    engine = spec.engine
    shape = (len(ra), len(rb))
    if observed is None:
        matrix = engine.matrix(a, b, p).detach().cpu().numpy().astype(np.float64)
    else:
        matrix = np.asarray(observed, dtype=np.float64)
        if matrix.shape != shape:
            raise ValueError(f"observed must be the {shape} layer matrix, got shape {matrix.shape}")
    estimate, argmax = aggregate_matrix(matrix, aggregate)
    rng = np.random.default_rng(seed)
    n = ra.n
    tail = (1 - level) / 2
    terms = engine.per_sample(a, b, p)
    reps = np.empty(n_boot)
    if terms is not None:
        t = terms.detach().cpu().numpy().reshape(-1, n)  # (La*Lb, N)
        for r in range(n_boot):
            w = np.bincount(rng.integers(0, n, n), minlength=n) / n
            reps[r] = aggregate_matrix((t @ w).reshape(shape), aggregate)[0]
        low, high = np.nanquantile(reps, [tail, 1 - tail])
        return BootstrapResult(float(estimate), float(low), float(high), float(np.nanstd(reps)),
                               level, n_boot, "per-sample", argmax, n)
    m = subsample_size(n, subsample)
    for r in range(n_boot):
        idx = torch.as_tensor(np.sort(rng.choice(n, m, replace=False)), device=ra.device)
        sa = ra.subset(idx)
        sb = sa if rb is ra else rb.subset(idx)
        reps[r] = aggregate_matrix(engine.matrix(engine.encode(sa, p), engine.encode(sb, p), p)
                                   .detach().cpu().numpy(), aggregate)[0]
    scale = math.sqrt(m / (n - m))
    dev = reps - np.nanmean(reps)
    lo_d, hi_d = np.nanquantile(dev, [tail, 1 - tail])
    return BootstrapResult(float(estimate), float(estimate + scale * lo_d),
                           float(estimate + scale * hi_d), float(scale * np.nanstd(reps)),
                           level, n_boot, "subsample", argmax, m)
