"""Benjamini–Hochberg q-values over a run's grid of model pairs (pure numpy: no torch, Prefect or
storage, so the report uses it too; ``tasks.metrics.bh_fdr`` is this module's ``bh_fdr``).

A run tests every model pair once per metric; the q-value of a pair's p-value is its
Benjamini–Hochberg adjusted p-value among the run's pairs of that metric and parameters (one
family each), as the catalog view ``alignment_fdr`` computes it in SQL.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any

import numpy as np


def bh_fdr(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values), same shape as ``pvalues``.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the ascending order; NaNs stay NaN and are
    not counted in ``m``. Reject at FDR level ``a`` where ``q <= a``. Raises ``ValueError`` for
    values that are not real numbers (text, bools, None) or outside ``[0, 1]``, and for a numpy
    masked array (its hidden values would be counted: give ``p.filled(np.nan)``).

    Example:
        >>> bh_fdr([0.01, 0.04, 0.03, 0.5]).round(3).tolist()
        [0.04, 0.053, 0.053, 0.5]
    """
    if isinstance(pvalues, np.ma.MaskedArray):
        raise ValueError("p-values given as a masked array: its masked entries would be counted; pass "
                         "p.filled(np.nan) (NaN entries are left out of m)")
    given = np.asarray(pvalues)
    if given.dtype.kind not in "fiu":  # text would be parsed, bools read as 0/1, None as an object
        raise ValueError(f"p-values must be real numbers (NaN for a missing one), got an array of dtype "
                         f"{given.dtype} ({reprlib.repr(given.reshape(-1)[:3].tolist())})")
    p = given.astype(np.float64)
    out = np.full(p.shape, np.nan)
    flat = p.reshape(-1)
    ok = ~np.isnan(flat)
    vals = flat[ok]
    if vals.size:
        if (vals < 0).any() or (vals > 1).any():
            raise ValueError("p-values must lie in [0, 1]")
        order = np.argsort(vals, kind="mergesort")
        m = vals.size
        ranked = vals[order] * m / np.arange(1, m + 1)
        q = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
        res = np.empty(m)
        res[order] = q
        o = out.reshape(-1)
        o[ok] = res
        out = o.reshape(p.shape)
    return out


def add_q_values(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``best`` (rows of ``alignment_best``: ``metric``, ``params``, ``p_value``) with a
    ``q_value`` each: Benjamini–Hochberg over the rows of one ``(metric, params)`` that have a
    p-value (None, or NaN, is no test: ``q_value`` None, and not counted). New dicts, same order."""
    families: dict[tuple[Any, Any], list[int]] = {}
    for i, row in enumerate(best):
        p = row.get("p_value")
        if p is not None and not np.isnan(p):
            families.setdefault((row.get("metric"), row.get("params")), []).append(i)
    q: dict[int, float] = {}
    for members in families.values():
        adjusted = bh_fdr(np.array([best[i]["p_value"] for i in members], dtype=np.float64))
        q.update(zip(members, (float(v) for v in adjusted)))
    return [{**row, "q_value": q.get(i)} for i, row in enumerate(best)]
