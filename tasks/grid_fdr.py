"""Benjamini–Hochberg q-values over a run's grid of model pairs (pure; no Prefect, no storage).

A run tests every model pair once per metric; the q-value of a pair's p-value is its
Benjamini–Hochberg adjusted p-value among the run's pairs of that metric and parameters (one
family each), as the catalog view ``alignment_fdr`` computes it in SQL.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.metrics import bh_fdr


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
