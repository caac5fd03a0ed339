"""Reuse one metric's stored results across alignment versions of a model pair.

An alignment version covers every configured metric of a pair (``tasks.align_task``), so adding
a metric to the config, or dropping one, makes a new version. Each metric's numbers depend only
on its own inputs (both feature versions, its name and parameters, the unit, the outlier
preprocessing, the permutation and bootstrap counts, the seed: each metric is seeded alone, and
the alignment code it can run, ``tasks.metric_code``), which its *metric version* names. A new alignment version copies the
results of every metric whose metric version some stored version of the same pair already holds,
and computes only the others. The copied rows are the stored float64 values, bit for bit, so the
new version holds exactly what computing it from scratch stores.

Pure reading and rebuilding; ``tasks.align_task`` decides when to use it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage import layout
from storage.store import DamagedManifest, Store
from storage.verify import listed_bytes
from tasks.alignment import MetricRequest, PairAlignment

logger = logging.getLogger(__name__)

#: The manifest field holding, per metric, its metric version and the layers it left out:
#: ``{"cka": {"version": "…", "excluded_a": {"0": "constant: …"}, "excluded_b": {}}}``.
FIELD = "metric_versions"


def manifest_entry(result: PairAlignment, version: str) -> dict[str, Any]:
    """One metric's ``metric_versions`` entry: its version and excluded layers (JSON keys are strings)."""
    return {"version": version, "excluded_a": {str(k): v for k, v in result.excluded_a.items()},
            "excluded_b": {str(k): v for k, v in result.excluded_b.items()}}


def stored_versions(store: Store, pair_prefix: str, wanted: dict[str, str]) -> list[tuple[str, dict[str, Any], list[str]]]:
    """The published alignments under ``pair_prefix`` (one model pair's folder) that hold some
    metric at the metric version ``wanted[name]``, newest (by publication time) first, each as
    (version key, manifest, the names of those metrics). Damaged manifests are skipped."""
    found = []
    for key, manifest in store.manifests(pair_prefix, on_damaged=_skip_damaged, folders="*"):
        entries = manifest.get(FIELD)
        if not isinstance(entries, dict):
            continue
        names = [name for name, version in wanted.items()
                 if isinstance(entries.get(name), dict) and entries[name].get("version") == version]
        if names:
            found.append((str(manifest.get("published_at") or ""), key, manifest, names))
    found.sort(key=lambda f: (f[0], f[1]), reverse=True)
    return [(key, manifest, names) for _, key, manifest, names in found]


def _skip_damaged(error: DamagedManifest) -> None:
    logger.warning("not reusing results from a damaged alignment manifest: %s", error)


def stored_results(store: Store, key: str, manifest: dict[str, Any], requests: list[MetricRequest],
                   shape: tuple[int, int]) -> list[PairAlignment]:
    """The stored results of ``requests`` (each a metric held by the alignment at ``key``) as
    :class:`PairAlignment` objects equal to those that computed them: the ``(La, Lb) = shape``
    matrix (NULL scores as NaN), the best row's statistics, the excluded layers.

    Raises ``FileNotFoundError`` (a file missing), ``storage.verify.NotAsListed`` (a file is not
    the one the manifest lists: its size or SHA-256 differ) or ``ValueError`` (the rows do not hold
    exactly one score per layer pair and one best row per metric); the caller then computes them."""
    names = [r.name for r in requests]
    scores, best = (_rows(pq.read_table(pa.BufferReader(listed_bytes(store, key, name, manifest))), names)
                    for name in (layout.SCORES_FILE, layout.BEST_FILE))
    out = []
    for request in requests:
        entry = manifest[FIELD][request.name]
        out.append(_result(request, scores.get(request.name, []), best.get(request.name, []), entry, shape, key))
    return out


def _rows(table: pa.Table, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        if row["metric"] in names:
            grouped.setdefault(row["metric"], []).append(row)
    return grouped


def _result(request: MetricRequest, scores: list[dict[str, Any]], best: list[dict[str, Any]], entry: dict[str, Any],
            shape: tuple[int, int], key: str) -> PairAlignment:
    la, lb = shape
    if len(scores) != la * lb or len(best) != 1:
        raise ValueError(f"alignment {key}: {request.name} has {len(scores)} layer-pair rows (expected {la} x {lb}) "
                         f"and {len(best)} best rows (expected 1)")
    matrix = np.full(shape, np.nan)
    seen = np.zeros(shape, dtype=bool)
    for row in scores:
        i, j = row["layer_a"], row["layer_b"]
        if not (0 <= i < la and 0 <= j < lb) or seen[i, j]:
            raise ValueError(f"alignment {key}: {request.name} has a bad or repeated layer pair ({i}, {j})")
        seen[i, j] = True
        if row["score"] is not None:
            matrix[i, j] = row["score"]
    b = best[0]
    layers = (-1, -1) if b["layer_a"] is None or b["layer_b"] is None else (int(b["layer_a"]), int(b["layer_b"]))
    return PairAlignment(
        request, matrix, _float(b["score"]), layers, b["chance_level"], null_mean=b["null_mean"], null_std=b["null_std"],
        tau=b["tau"], p_value=b["p_value"], calibrated=b["calibrated_score"], permutations=int(b["permutations"]),
        ci_low=b["ci_low"], ci_high=b["ci_high"], ci_degenerate=b["ci_degenerate"], bootstrap=int(b["bootstrap"]),
        excluded_a=_layers(entry.get("excluded_a")), excluded_b=_layers(entry.get("excluded_b")))


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _layers(stored: Any) -> dict[int, str]:
    return {int(k): str(v) for k, v in sorted((stored or {}).items(), key=lambda kv: int(kv[0]))}
