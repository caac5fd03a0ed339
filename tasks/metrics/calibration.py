"""Permutation calibration of a model-pair score, and analytical chance levels.

``calibrate`` compares the observed aggregate (max over layer pairs by default) with its
permutation null: the rows of ``ys`` are shuffled by one permutation applied to all of its layers
at once (so the null keeps the max over layer pairs), ``K`` times. Each null value re-indexes the
cached per-layer encodings (Gram matrices, neighbour lists, singular vectors); nothing is
recomputed from features. Permutations are drawn in batches and passed to the engine's
``null_matrices``, which may evaluate several at once (same values as one at a time).

With ``S = {observed} ∪ null`` (``K + 1`` values):

- ``tau`` = the exact ``ceil((1 - alpha)(K + 1))``-th smallest value of ``S``;
- ``p = (1 + #{null >= observed}) / (K + 1)``;
- ``calibrated = clamp((observed - tau) / (max - tau), 0, 1)`` with ``max`` the metric's upper
  bound (``0`` when ``max <= tau``), or ``max(observed - tau, 0)`` for unbounded metrics.

For a metric registered with ``higher_is_better=False`` the roles flip (smaller is more aligned):
the aggregate ``'max'`` takes the best, i.e. smallest, layer pair; ``tau`` is the
``ceil((1-alpha)(K+1))``-th largest, ``p`` counts ``null <= observed`` and the calibrated score is
``clamp((tau - observed) / (tau - min), 0, 1)``.

Rows that are not exchangeable: several captions of one image are several rows whose vision
features are one vector, and whose captions resemble each other. Shuffling single rows breaks that
grouping in the null but not in the observed score, so any two models of such data looked aligned
(simulated: P(p <= 0.05) = 1.00 for ``mutual_knn`` and ``cka`` with a vision side that knew only which
image a row was). ``groups`` (one label per row: its image) makes every permutation move whole
groups: each group's rows go, in order, to the rows of another group of the same size
(:func:`block_permutations`); a group whose size no other group has stays in place. Without
``groups``, or where every group is one row, the rows are shuffled singly (the same draws).

Ties: a null draw within ``TIE_RTOL`` of the computation dtype (relative to ``max(1,
|observed|)``) of the observed value counts as reaching it, since one statistic computed on two
row orders differs by rounding alone (R² of an exact fit came out 1.0000000000000002 observed and
0.9999999999999993 permuted, which gave p = 1/(K+1) instead of 1). An engine declares a different
tolerance with ``Engine.tie_rtol``: 0 for metrics whose values are exact counts (``mutual_knn``,
``cycle_knn``, ``lcs_knn``, ``edit_distance_knn``: the float32 tolerance exceeded ``mutual_knn``'s
spacing ``1/(N k)`` at N=12000, k=10 and counted strictly smaller draws as ties, p 0.7132 instead
of 0.6908), the float64 one for ``jaccard_knn`` (float64 sums) and for ``svcca``,
``procrustes``, ``linear_regression`` and ``rsa_spearman`` (computed in float64 whatever the
features' dtype: float32's tolerance gave p 0.7702 instead of 0.7552); ``aggregate='mean'``
adds float64 rounding, so the tolerance is then at least the float64 one. NaN null draws are left
out (``K`` counts the others). The same tolerance decides whether the observed value is above
``tau`` (the calibrated score is 0 within it: an exact fit's R² scored 1/3 with p = 1 before).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .api import encode_pair
from .checks import group_index
from .engine import TIE_RTOL, layer_scores
from .registry import MetricSpec, get_metric
from .stats import aggregate as aggregate_matrix
from .stats import TORCH_SEED_MAX, check_aggregate, check_count, check_seed, order_statistic_rank

#: permutations drawn and handed to ``Engine.null_matrices`` at once (engines split further)
PERMUTATION_BATCH = 64

#: ``progress(done, total)``: told how many of the ``total`` null draws (``calibrate``) or
#: replicates (``bootstrap_ci``) are done; its return value is ignored
Progress = Callable[[int, int], object]



@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of ``calibrate``.

    Attributes:
        observed: aggregate of the observed layer matrix.
        null_mean, null_std: mean and standard deviation (ddof=0) of the ``K`` null aggregates.
        tau: the ``(1 - alpha)`` order statistic of ``{observed} ∪ null``.
        p_value: ``(1 + #{null >= observed}) / (K + 1)`` over the valid (non-NaN) draws, a draw
            within the tie tolerance of the observed value counting as reaching it
            (``tie_tolerance``: 0 for exact counts, float64's for metrics computed in float64,
            else ``TIE_RTOL`` of the dtype).
        calibrated: chance-corrected score in ``[0, 1]`` (bounded metrics).
        argmax: ``(layer_a, layer_b)`` of the best observed layer pair.
        permutations: ``K``, the valid (non-NaN) null draws the numbers rest on (fewer than
            requested when the metric was undefined on some permutations).
        alpha, aggregate, metric: the settings used.
        matrix: the observed ``(La, Lb)`` layer matrix.
        null: the ``K`` null aggregates, in permutation order.
    """

    observed: float
    null_mean: float
    null_std: float
    tau: float
    p_value: float
    calibrated: float
    argmax: tuple[int, int]
    permutations: int
    alpha: float = 0.05
    aggregate: str = "max"
    metric: str = ""
    matrix: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False, compare=False)
    null: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)


def block_permutations(groups: Any, count: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, N) int64``: ``count`` permutations of ``N = len(groups)`` rows that move whole
    groups (``groups``: ``(N,)`` labels, e.g. each row's image id): the rows of a group, in row
    order, go to the rows of another group of the same size, in row order; groups are shuffled
    among those of their size by ``torch.randperm`` of ``generator``, one size after another
    (sizes ascending). ``ValueError`` for labels that are not one per row
    (:func:`~tasks.metrics.checks.group_index`)."""
    n = len(groups)
    group_of = group_index(groups, n)
    return _draw_blocks(_size_classes(np.arange(n) if group_of is None else group_of), n, count, generator)


def _size_classes(group_of: np.ndarray) -> list[torch.Tensor]:
    """One ``(groups of that size, size) int64`` tensor per group size, sizes ascending: row ``j``
    of group ``b`` of a size is ``blocks[b, j]`` (each group's rows in row order), from ``(N,)``
    group numbers ``0..G-1``."""
    rows_by_group = np.argsort(group_of, kind="stable")  # each group's rows together, in row order
    sizes = np.bincount(group_of)
    firsts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    classes = []
    for size in np.unique(sizes):
        members = np.flatnonzero(sizes == size)
        blocks = rows_by_group[firsts[members][:, None] + np.arange(size)[None, :]]
        classes.append(torch.from_numpy(np.ascontiguousarray(blocks, dtype=np.int64)))
    return classes


def _draw_blocks(classes: list[torch.Tensor], n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, n) int64`` whole-group permutations over ``_size_classes``'s blocks."""
    perms = torch.empty((count, n), dtype=torch.int64)
    for t in range(count):
        for blocks in classes:
            moved = blocks[torch.randperm(len(blocks), generator=generator)]
            perms[t, blocks.reshape(-1)] = moved.reshape(-1)
    return perms


def _permutation_draws(groups: Any, n: int) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``draw(count, generator) -> (count, n) int64`` for :func:`calibrate`: single rows shuffled
    (``torch.randperm``) without ``groups`` or where every group is one row, else the draws of
    :func:`block_permutations` (its blocks derived once here, not per batch). ``ValueError``
    where ``groups`` is not one label per row."""
    group_of = None if groups is None else group_index(groups, n)
    if group_of is None:  # every group one row: the plain shuffle, the same draws
        return lambda count, gen: torch.stack([torch.randperm(n, generator=gen) for _ in range(count)])
    classes = _size_classes(group_of)
    return lambda count, gen: _draw_blocks(classes, n, count, gen)


def calibrate(metric: str | MetricSpec, xs: Any, ys: Any, permutations: int = 1000,
              alpha: float = 0.05, seed: int = 0, aggregate: Literal["max", "mean"] = "max",
              progress: Progress | None = None, groups: Any = None, **params: Any) -> CalibrationResult:
    """Permutation-calibrated model-pair score.

    Args:
        metric: registered name or ``MetricSpec``.
        xs, ys: layers of the two models (any form ``layer_matrix`` takes, incl. ``Representation``).
        permutations: ``K`` >= 1 row permutations of ``ys`` (one per null draw, shared by all of
            ys' layers).
        alpha: level of the threshold ``tau``.
        seed: seed of the permutation stream (``torch.Generator`` on the CPU), so results do not
            depend on the device; 0 to 2**32 - 1 (the generator keeps 32 bits of a seed).
        aggregate: ``'max'`` over layer pairs (the paper) or ``'mean'``.
        progress: called as ``progress(done, permutations)`` after each batch of
            ``PERMUTATION_BATCH`` permutations (the last batch may be smaller), e.g. to log how
            far a long calibration is; it changes no number (the permutations are drawn before
            it is called). What it raises propagates (e.g. a stop request).
        groups: ``(N,)`` labels of rows that move together (each row's image, where an image has
            several captions); None: every row on its own (module docstring).
        **params: metric parameters and ``device``.

    Returns:
        ``CalibrationResult``.
    """
    k_perm = check_count("permutations", permutations, 1)
    gen = torch.Generator().manual_seed(check_seed(seed, TORCH_SEED_MAX))
    check_aggregate(aggregate)
    order_statistic_rank(alpha, k_perm + 1)  # alpha checked before any work
    spec = get_metric(metric)
    better = spec.higher_is_better
    a, b, p, ra, rb = encode_pair(spec, xs, ys, params)
    draw = _permutation_draws(groups, rb.n)
    engine = spec.engine
    shape = (len(ra), len(rb))
    observed_matrix = layer_scores(engine, a, b, p, shape)
    observed, argmax = aggregate_matrix(observed_matrix, aggregate, better)

    null = np.empty(k_perm, dtype=np.float64)
    for t0 in range(0, k_perm, PERMUTATION_BATCH):
        count = min(PERMUTATION_BATCH, k_perm - t0)
        perms = draw(count, gen)
        mats = layer_scores(engine, a, b, p, (count, *shape), perms=perms.to(rb.device))
        for s in range(count):
            null[t0 + s] = aggregate_matrix(mats[s], aggregate, better)[0]
        if progress is not None:
            progress(t0 + count, k_perm)

    lo, hi = spec.bounds_for(p)
    tie = tie_tolerance(engine, p, ra.dtype, rb.dtype, aggregate=aggregate)
    tau, p_value, calibrated = _calibration_numbers(observed, null, alpha, lo, hi, better, tie)
    # an all-NaN null (a metric undefined everywhere): NaN, without numpy's warnings of an empty mean
    defined = bool((~np.isnan(null)).any())
    return CalibrationResult(
        observed=observed, null_mean=float(np.nanmean(null)) if defined else math.nan,
        null_std=float(np.nanstd(null)) if defined else math.nan,
        tau=tau, p_value=p_value, calibrated=calibrated, argmax=argmax, permutations=int(np.sum(~np.isnan(null))),
        alpha=alpha, aggregate=aggregate, metric=spec.name, matrix=observed_matrix, null=null)


def tie_tolerance(engine: Any, params: dict[str, Any], *dtypes: torch.dtype, aggregate: str = "max"
                  ) -> float:
    """Relative tie tolerance of ``calibrate``: the engine's declared ``tie_rtol`` if any, else
    ``TIE_RTOL`` of the computation dtype (float64 if either side is); at least the float64 one
    for ``aggregate='mean'`` (a float64 mean over layer pairs rounds)."""
    declared = engine.tie_rtol(params) if hasattr(engine, "tie_rtol") else None
    tie = (TIE_RTOL[torch.float64 if torch.float64 in dtypes else torch.float32]
           if declared is None else float(declared))
    return max(tie, TIE_RTOL[torch.float64]) if aggregate == "mean" else tie


def _calibration_numbers(observed: float, null: np.ndarray, alpha: float, lo: float, hi: float,
                         higher_is_better: bool = True, tie_rtol: float = 0.0) -> tuple[float, float, float]:
    """``(tau, p_value, calibrated)`` from the observed value and the null draws.

    NaN draws (a metric undefined on some permutation) are left out of the null: ``K`` counts
    the others; with none left every number is NaN. A draw within ``tie_rtol`` (relative to
    ``max(1, |observed|)``) of the observed value counts as a tie, so as reaching it: the same
    statistic computed on two row orders differs by rounding alone. By the same rule the
    calibrated score is 0 when the observed value is within that tolerance of ``tau``."""
    valid = null[~np.isnan(null)]
    if math.isnan(observed) or valid.size == 0:
        return math.nan, math.nan, math.nan
    sign = 1.0 if higher_is_better else -1.0
    s = np.sort(sign * np.concatenate([[observed], valid]))
    rank = order_statistic_rank(alpha, s.size)
    tau = float(sign * s[rank - 1])
    tolerance = tie_rtol * max(1.0, abs(observed))
    exceed = int(np.sum(sign * (valid - observed) >= -tolerance))
    p_value = (1 + exceed) / (valid.size + 1)
    top = hi if higher_is_better else lo
    # within the tie tolerance, observed "above" tau is rounding: an
    # exact fit's R^2 (1 under every permutation) had observed 1 - 4e-16 over tau 1 - 7e-16 and
    # got calibrated 1/3 with p = 1
    if sign * (observed - tau) <= tolerance:
        calibrated = 0.0
    elif math.isinf(top):
        calibrated = sign * (observed - tau)
    elif sign * (top - tau) <= 0:
        calibrated = 0.0
    else:
        calibrated = min(max((observed - tau) / (top - tau), 0.0), 1.0)
    # + 0.0: a lower-is-better observed value equal to tau gave -0.0 (0.0 / negative, and max(-0.0,
    # 0.0) keeps the first), shown as "-0.000"
    return tau, p_value, calibrated + 0.0


def chance_level(metric: str | MetricSpec, n: int, topk: int | None = None,
                 **params: Any) -> float | None:
    """Analytical chance level of ``metric`` for ``n`` samples, or ``None`` where none is known.

    - ``mutual_knn``: ``k / (n - 1)`` (the exact mean under the row-permutation null);
    - ``jaccard_knn``: ``E[c / (2k - c)]``, ``c ~ Hypergeom(n - 1, k, k)`` (independent uniformly
      random neighbour sets);
    - ``cycle_knn``: ``1 - (1 - k/(n-1))^k`` (independent uniformly random neighbour sets);
    - ``unbiased_cka`` and ``cka`` with ``unbiased=True``: ``0`` (the unbiased HSIC has mean
      exactly 0 under the permutation null, and its CKA denominator is permutation invariant);
    - others (``cka``, ``cknna``, ``svcca``, ...): ``None`` — they depend on widths and spectra
      (e.g. linear CKA of independent isotropic Gaussians is about ``d / (d + n)``); use
      ``calibrate``.
    """
    spec = get_metric(metric)
    n = check_count("n", n, 2)
    if spec.chance is None:
        return None
    p = dict(params)
    if topk is not None:
        p["topk"] = topk
    p = spec.resolve(p)
    if "topk" in p and not 1 <= p["topk"] <= n - 1:
        raise ValueError(f"{spec.name}: topk must be in [1, n - 1] = [1, {n - 1}], got {p['topk']}")
    level = spec.chance(n, p)
    if level is not None and (isinstance(level, (bool, np.bool_)) or not isinstance(level, numbers.Real)):
        # a registered chance function's '0.1' was stored as 0.1, its 'x' failed the run with float()'s error
        raise ValueError(f"metric {spec.name!r}: its chance function returned {level!r} ({type(level).__name__}) for "
                         f"n={n}; it must return a number or None")
    return None if level is None else float(level)


def mutual_knn_chance(n: int, params: dict[str, Any]) -> float:
    k = int(params["topk"])
    return k / (n - 1)


def jaccard_knn_chance(n: int, params: dict[str, Any]) -> float:
    from scipy.stats import hypergeom  # local: keeps `import tasks.metrics` light

    k = int(params["topk"])
    c = np.arange(0, k + 1)
    pmf = hypergeom(n - 1, k, k).pmf(c)
    return float(np.sum(pmf * c / (2 * k - c)))


def cycle_knn_chance(n: int, params: dict[str, Any]) -> float:
    k = int(params["topk"])
    return 1.0 - (1.0 - k / (n - 1)) ** k


def zero_chance(n: int, params: dict[str, Any]) -> float:
    return 0.0
