"""Confidence intervals of a model-pair score over samples: m-out-of-n subsampling.

Resampling rows *with* replacement biases these metrics upward (a duplicated row is its own
nearest neighbour and adds a perfectly aligned entry to both kernels), so each replicate scores
``m`` rows drawn *without* replacement (``m = N/2`` by default; m-out-of-n subsampling, Politis &
Romano 1994), every metric alike, and the interval is built from the spread of the replicates
around their own mean::

    d_r  = theta*_r - mean_r(theta*_r)                 (r = 1..B, aggregated replicates)
    c    = sqrt(m / (N - m))
    [low, high] = estimate + c * quantile(d, [(1 - level)/2, (1 + level)/2])
    low  = min(max(low, min(floor, estimate)), estimate)       (floor, ceiling: the metric's range)
    high = max(min(high, max(ceiling, estimate)), estimate)

``c`` is the delete-d jackknife factor (Shao & Wu 1989): for an asymptotically linear statistic
the variance of a size-``m`` subsample estimate around the full-sample one is ``(1/m - 1/N)
sigma^2``, so ``c^2`` times it is the variance ``sigma^2 / N`` of the full-sample estimate
(``sqrt(m/N)`` is its ``m << N`` limit and would be ~30% too narrow at ``m = N/2``). Deviations
are taken around the replicates' mean rather than the estimate because these estimators are
biased at finite size and the bias depends on the size (linear CKA of independent data is about
``d / (d + n)``; a k-NN overlap depends on the sample density): centring removes the size-``m``
bias, so the interval describes the sampling spread of the size-``N`` estimate around its
expectation. ``std`` is ``c`` times the replicates' standard deviation. Replicates reuse the
cached Gram matrices and neighbour lists (``Representation.subset``).

The limits keep ``low <= estimate <= high`` inside the metric's range (widened to the estimate
where a metric with nominal bounds, ``cknna``, leaves it). When the size-``m`` subsamples pile up
on a bound (``cycle_knn`` at N=40, topk=10: a subsample of 20 rows with 10 neighbours each scores
1 almost always) the replicates' spread no longer measures the full sample's (their deviations'
quantiles could both lie above 0, and the interval [1.001, 1.0] missed its estimate 1.0): the
interval then only brackets the estimate, possibly with zero width, and is flagged
``degenerate`` with a ``RuntimeWarning`` (at least half the replicates on a bound, or the interval
before the limits missing the estimate); its width says nothing about the sampling spread.

The k-NN metrics' scores are means of per-sample terms, but reweighting those terms with the
neighbour lists held fixed (an earlier method) ignores that every term depends on the other
samples through the neighbour graph: its 95% intervals covered 70% (``mutual_knn``,
``jaccard_knn``) and its standard error was 60% of the estimates' spread.

With ``groups`` (one label per row, e.g. its image: several captions of one image are not
independent rows) each replicate takes ``g`` whole groups, all their rows, drawn without
replacement from the ``G`` groups, and ``c = sqrt(g / (G - g))``: the groups are the independent
units. ``subsample`` then counts groups (``g = round(subsample * G)`` or the count itself). Where
every group is one row this is the ungrouped subsampling, with the same draws.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .api import encode_pair
from .calibration import Progress
from .checks import group_index
from .engine import MetricFunctionError, layer_scores
from .registry import MetricSpec, get_metric
from .stats import aggregate as aggregate_matrix
from .stats import check_aggregate, check_count, check_seed, score_matrix

#: default share of the rows in one subsample (m = N/2)
DEFAULT_SUBSAMPLE = 0.5
#: two scores this close (relative to ``max(1, |score|)``) are one value up to float32 rounding:
#: a replicate that close to a bound of the metric is on it (k-NN scores are exact)
ROUNDING_RTOL = 1e-5
#: share of the replicates on a bound from which the interval is flagged ``degenerate``
DEGENERATE_SHARE = 0.5


@dataclass(frozen=True)
class BootstrapResult:
    """``estimate`` (on all samples), interval ``[low, high]`` at ``level``, standard error
    ``std`` of the estimate, ``n_boot`` replicates, ``method`` (``'subsample'``: m-out-of-n
    subsampling without replacement, see the module docstring), the argmax layer pair of the
    estimate, ``resample_size``, the rows ``m`` per replicate, and ``degenerate``: the
    subsamples piled up on a bound of the metric (or on one value away from the estimate), so
    ``[low, high]`` only brackets the estimate and does not measure its sampling spread (see
    the module docstring). ``n_refused``: replicates whose subsample the metric refused (a
    ``ValueError``: e.g. a layer of too few distinct rows there), left out of the interval, which
    then rests on ``n_boot - n_refused`` replicates (and leans toward the subsamples the metric
    accepts). ``n_groups``: the ``G`` groups of ``bootstrap_ci(groups=...)`` (None without groups
    or where every group is one row); then ``resample_size`` counts the groups ``g`` per replicate,
    not rows."""

    estimate: float
    low: float
    high: float
    std: float
    level: float
    n_boot: int
    method: str
    argmax: tuple[int, int]
    resample_size: int | None = None
    degenerate: bool = False
    n_refused: int = 0
    n_groups: int | None = None


def subsample_size(n: int, subsample: float | int, unit: str = "rows") -> int:
    """Rows per subsample: ``round(subsample * n)`` for a fraction in ``(0, 1)``, else the
    integer itself (any real number type: ``0.5``, ``np.float32(0.5)``, ``30``, ``np.int64(30)``;
    not a bool); must leave ``2 <= m <= n - 1``. ``unit``: what is counted, for the error
    (``'groups'`` with ``bootstrap_ci(groups=...)``)."""
    bad = f"subsample must be a fraction in (0, 1) or a row count, got {subsample!r}"
    if isinstance(subsample, bool) or not isinstance(subsample, numbers.Real):
        raise ValueError(bad)
    value = float(subsample)
    if 0 < value < 1:
        m = int(round(value * n))
    elif math.isfinite(value) and value >= 1 and value == int(value):
        m = int(value)
    else:
        raise ValueError(bad)
    if not 2 <= m <= n - 1:
        raise ValueError(f"subsample gives m = {m} {unit} of N = {n}; need 2 <= m <= N - 1")
    return m


def bootstrap_ci(metric: str | MetricSpec, xs: Any, ys: Any, n_boot: int = 200,
                 level: float = 0.95, seed: int = 0, aggregate: Literal["max", "mean"] = "max",
                 observed: np.ndarray | None = None,
                 subsample: float | int = DEFAULT_SUBSAMPLE, progress: Progress | None = None,
                 groups: Any = None, **params: Any) -> BootstrapResult:
    """Interval of the aggregated (max or mean over layer pairs) score; see the module docstring.

    Args:
        metric: registered name or ``MetricSpec``.
        xs, ys: the two models' layers (any form ``layer_matrix`` takes; pass the same
            ``Representation`` objects as to ``layer_matrix``/``calibrate`` to reuse their caches).
        n_boot: replicates ``B >= 2`` (a few hundred for stable 95% bounds).
        level: coverage of the interval, in ``(0, 1)``.
        seed: seed of the numpy generator drawing the replicates.
        aggregate: ``'max'`` (the paper's model-pair score) or ``'mean'``.
        observed: the ``(La, Lb)`` layer matrix on all samples when already computed
            (``layer_matrix(...)`` or ``CalibrationResult.matrix``, same metric and parameters):
            the estimate is taken from it instead of being recomputed.
        subsample: rows per replicate, a fraction of ``N`` in ``(0, 1)`` or a count (default
            ``N/2``), any real number type (not a bool); with ``groups``, groups per replicate (a
            fraction of the ``G`` groups or a count of groups).
        progress: called as ``progress(done, n_boot)`` after each replicate (refused ones
            included), e.g. to log how far a long bootstrap is; it changes no number (each
            subsample is drawn before it is called). What it raises propagates.
        groups: ``(N,)`` labels of rows that are subsampled together (each row's image, where an
            image has several captions): every replicate takes whole groups, all of their rows
            (see the module docstring). None, or every label distinct: single rows (the same
            numbers as without it).
        **params: metric parameters and ``device``.

    Returns:
        ``BootstrapResult``, always with ``low <= estimate <= high`` inside the metric's range
        (widened to the estimate where a nominal range leaves it).

    Warns:
        RuntimeWarning: the interval is ``degenerate`` (``BootstrapResult.degenerate``).
    """
    n_boot = check_count("n_boot", n_boot, 2)  # one replicate has no spread: an interval of width 0
    rng = np.random.default_rng(check_seed(seed))
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    check_aggregate(aggregate)
    spec = get_metric(metric)
    better = spec.higher_is_better
    a, b, p, ra, rb = encode_pair(spec, xs, ys, params)
    engine = spec.engine
    shape = (len(ra), len(rb))
    if observed is None:
        matrix = layer_scores(engine, a, b, p, shape)
    else:
        matrix = score_matrix("observed", observed)
        if matrix.shape != shape:
            raise ValueError(f"observed must be the {shape} layer matrix, got shape {matrix.shape}")
    estimate, argmax = aggregate_matrix(matrix, aggregate, better)
    n = ra.n
    group_of = group_index(groups, n)
    units = n if group_of is None else int(group_of.max()) + 1  # rows, or groups
    reps = np.empty(n_boot)
    m = subsample_size(units, subsample, "rows" if group_of is None else "groups")
    refused: ValueError | None = None
    for r in range(n_boot):
        drawn = rng.choice(units, m, replace=False)
        rows = np.sort(drawn) if group_of is None else np.flatnonzero(np.isin(group_of, drawn))
        idx = torch.as_tensor(rows, device=ra.device)
        sa = ra.subset(idx)
        sb = sa if rb is ra else rb.subset(idx)
        try:
            reps[r] = aggregate_matrix(layer_scores(engine, engine.encode(sa, p), engine.encode(sb, p), p, shape),
                                       aggregate, better)[0]
        except ValueError as error:  # this subsample is degenerate (e.g. a layer of few distinct rows): skipped
            if isinstance(error, MetricFunctionError) and not isinstance(error.__cause__, ValueError):
                raise  # a user function that crashed or returned no number: its own ValueError alone means "undefined here"
            reps[r], refused = np.nan, error
        if progress is not None:
            progress(r + 1, n_boot)
    of = "rows" if group_of is None else "groups"
    if np.isnan(reps).all():
        why = f"was refused: {refused}" if refused is not None else "scored NaN (the metric is undefined on them)"
        raise ValueError(f"every one of the {n_boot} bootstrap subsamples of {m} {of} {why}")
    scale = math.sqrt(m / (units - m))
    low, high, cause, share = _interval(float(estimate), reps, scale, level, spec.bounds_for(p))
    degenerate = cause is not None
    if degenerate:
        subsamples = f"the subsamples of {m} {of} (of {'N' if group_of is None else 'G'} = {units})"
        why = {BOUND: f"{share:.0%} of {subsamples} score on a bound of the metric",
               PILED: f"{subsamples} pile up on one value away from the estimate",
               MISSED: f"the spread of {subsamples} lies on one side of the estimate"}[cause]
        warnings.warn(f"bootstrap_ci({spec.name}): {why}; the interval [{low:.4g}, {high:.4g}] "
                      f"around {float(estimate):.4g} does not measure its sampling spread "
                      "(BootstrapResult.degenerate; see docs/metrics.md)", RuntimeWarning, stacklevel=2)
    return BootstrapResult(float(estimate), low, high, float(scale * np.nanstd(reps)),
                           level, n_boot, "subsample", argmax, m, degenerate, int(np.isnan(reps).sum()),
                           None if group_of is None else units)


#: causes of a degenerate interval (:func:`_interval`): replicates on a bound of the metric, piled
#: up on one value away from the estimate, or an interval (before its limits) missing the estimate
BOUND, PILED, MISSED = "bound", "piled", "missed"


def subsample_interval(estimate: float, reps: np.ndarray, scale: float, level: float,
                       bounds: tuple[float, float]) -> tuple[float, float, bool, float]:
    """``(low, high, degenerate, share)`` from the aggregated replicates ``reps`` ``(B,)`` (NaN
    for refused subsamples, at least one finite); :func:`_interval` with its cause as a flag."""
    low, high, cause, share = _interval(estimate, reps, scale, level, bounds)
    return low, high, cause is not None, share


def _interval(estimate: float, reps: np.ndarray, scale: float, level: float,
              bounds: tuple[float, float]) -> tuple[float, float, str | None, float]:
    """``(low, high, cause, share)`` from the aggregated replicates ``reps`` ``(B,)`` (NaN
    for refused subsamples, at least one finite); ``cause`` None where the interval is not
    degenerate, else the first of :data:`BOUND`, :data:`PILED`, :data:`MISSED` that holds.

    ``[low, high] = estimate + scale * quantile(reps - mean(reps), [(1-level)/2, (1+level)/2])``,
    then limited so that ``min(floor, estimate) <= low <= estimate <= high <=
    max(ceiling, estimate)`` (the metric's range, widened to the estimate where a metric with
    nominal bounds leaves it). ``share``: the fraction of the replicates on a bound (within
    ``ROUNDING_RTOL``); ``degenerate``: at least ``DEGENERATE_SHARE`` of them are, or the
    unlimited interval missed the estimate by more than ``ROUNDING_RTOL`` (both quantiles of the
    deviations on one side of 0), or at least ``DEGENERATE_SHARE`` of them, and two at least, lie
    on one value more than ``ROUNDING_RTOL`` away from the estimate (all of them on one value: the
    deviations are all 0 and the interval ``[estimate, estimate]`` missed nothing), so the
    interval does not measure the estimate's sampling spread. Two at least: of two replicates
    each one is half of them (``bootstrap: 2`` had flagged every interval).
    """
    tail = (1 - level) / 2
    dev = reps - np.nanmean(reps)
    lo_d, hi_d = np.nanquantile(dev, [tail, 1 - tail])
    raw_low, raw_high = estimate + scale * float(lo_d), estimate + scale * float(hi_d)
    floor, ceiling = bounds
    low = min(max(raw_low, min(floor, estimate)), estimate)
    high = max(min(raw_high, max(ceiling, estimate)), estimate)
    valid = reps[~np.isnan(reps)]
    on_bound = np.zeros(valid.shape, dtype=bool)
    for bound in bounds:
        if math.isfinite(bound):
            on_bound |= np.abs(valid - bound) <= ROUNDING_RTOL * max(1.0, abs(bound))
    share = float(on_bound.mean())
    slack = ROUNDING_RTOL * max(1.0, abs(estimate))
    values, counts = np.unique(valid, return_counts=True)
    piled = values[np.argmax(counts)]  # the most frequent replicate value
    away = counts.max() >= max(2, DEGENERATE_SHARE * valid.size) and abs(piled - estimate) > slack
    missed = not raw_low - slack <= estimate <= raw_high + slack
    cause = BOUND if share >= DEGENERATE_SHARE else PILED if away else MISSED if missed else None
    return low, high, cause, share
