"""The rows a report shows, and the small pivots the figures need.

Input tables have the catalog's column names (``alignment_best``, ``alignment``, ``models``);
only the columns named here are read, so extra columns are ignored and missing optional ones
(``chance_level``, ``calibrated_score``, bootstrap CI bounds...) are drawn as absent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from storage.times import utc_time
from tasks.metric_facts import metric_facts
from tasks.report.neighbours import NeighbourExamples

# The paper's headline metrics first; any other metric follows in name order.
METRIC_ORDER = ("mutual_knn", "cka", "cknna", "unbiased_cka", "cycle_knn", "lcs_knn", "edit_distance_knn", "svcca")

# Bootstrap confidence-interval columns of ``alignment_best``, in the order they are looked for.
CI_COLUMNS = (("ci_low", "ci_high"), ("score_ci_low", "score_ci_high"), ("ci_lower", "ci_upper"))


@dataclass(frozen=True)
class ReportInput:
    """Everything a report shows.

    ``run``: the run record (``run_id``, ``status``, ``started_at``, ``store``, ``dataset_version``...);
    ``best``: its ``alignment_best`` rows; ``scores``: its ``alignment`` rows (layer × layer; may be
    empty); ``models``: the ``models`` rows of its feature versions; ``examples``: nearest-neighbour
    examples of one model pair (or None); ``notes``: what could not be shown and why.
    """

    run: dict[str, Any]
    best: pa.Table
    scores: pa.Table
    models: pa.Table
    examples: NeighbourExamples | None = None
    notes: list[str] = field(default_factory=list)


def describe_dataset(name: Any, source: Any, n_rejected: Any = None) -> str | None:
    """One line on what a dataset is, from its ``datasets`` row (``source`` is JSON text or a dict):
    ``minhuh/prh@wit_1024 (commit 89abcdef0123), split train, first 1024 rows, first captions``; with
    ``n_rejected`` > 0, ``, 12 rows rejected`` (listed in the version's ``rejected.parquet``)."""
    if isinstance(source, str):
        try:
            source = json.loads(source)
        except ValueError:
            source = {"kind": source}
    if not isinstance(source, dict):
        return None if name is None else str(name)
    kind = source.get("kind")
    if kind == "huggingface":
        where = source.get("hub_id") or source.get("local_path") or "?"
        if source.get("hub_id"):
            where += f"@{source.get('revision') or 'main'}"
            if source.get("commit"):
                where += f" (commit {str(source['commit'])[:12]})"
        detail = f"{where}, split {source.get('split', 'train')}"
        if source.get("n"):
            detail += f", first {source['n']} rows"
        detail += f", {source.get('captions', 'first')} captions"
    elif kind == "openmoji":
        detail = f"OpenMoji, n={source.get('n')}, seed {source.get('seed')}, {source.get('image_size')} px"
    elif kind == "path":
        detail = str(source.get("path"))
        if source.get("split"):
            detail += f", split {source['split']}"
        if source.get("n"):
            detail += f", first {source['n']} rows"
        if source.get("captions") == "all":
            detail += ", all captions"
    else:
        detail = str(kind) if kind else ""
    if isinstance(n_rejected, int) and n_rejected > 0:
        detail += f", {n_rejected} row{'s' if n_rejected > 1 else ''} rejected"
    return " · ".join(str(p) for p in (name, detail) if p)


def rows_aligned(best: list[dict[str, Any]]) -> str:
    """How many rows the best-score rows were computed on: ``1024``, ``24 images`` (alignment.unit
    image), ``72, 24 (some pairs one row per image)`` when the units differ; ``none`` when no row
    was aligned (a run that published no alignment), ``?`` when the rows do not say."""
    if not best:
        return "none"
    counts = ", ".join(str(n) for n in sorted({int(r["n_samples"]) for r in best if r.get("n_samples") is not None})) or "?"
    units = {r.get("unit") or "sample" for r in best}
    return counts + (" images" if units == {"image"} else " (some pairs one row per image)" if "image" in units else "")


def rows(table: pa.Table | None) -> list[dict[str, Any]]:
    """Arrow rows as dicts (an absent table has none)."""
    return [] if table is None else table.to_pylist()


def number(value: Any) -> float | None:
    """A finite float, or None for missing/NaN values."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def metrics_of(best: list[dict[str, Any]]) -> list[str]:
    """Metrics present, headline metrics first."""
    present = {r["metric"] for r in best}
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))


def describe_metrics(best: list[dict[str, Any]], metrics: list[str]) -> str:
    """The metrics with the parameters that produced the rows, and the null and bootstrap sizes:
    ``mutual_knn (topk=10), cka (kernel_metric=ip); 50 permutations, 200 bootstrap resamples``.
    A metric whose rows were computed with several settings lists each (``topk=5 | topk=10``)."""
    parts = []
    for metric in metrics:
        settings = []
        for r in best:
            if r["metric"] != metric:
                continue
            try:
                params = json.loads(r.get("params") or "{}")
            except (TypeError, ValueError):
                params = {"params": r.get("params")}
            text = ", ".join(f"{k}={v}" for k, v in sorted(params.items())) if isinstance(params, dict) else str(params)
            if text not in settings:
                settings.append(text)
        shown = " | ".join(s for s in settings if s)
        parts.append(f"{metric} ({shown})" if shown else metric)
    sizes = []
    for column, noun in (("permutations", "permutations"), ("bootstrap", "bootstrap resamples")):
        # rows with a score only: an unscored pair (every layer excluded, NaN) stores 0 draws
        values = sorted({int(r[column]) for r in best if r.get(column) is not None and scored(r)})
        if values:
            sizes.append(f"{' | '.join(str(v) for v in values)} {noun}")
    return ", ".join(parts) + ("; " + ", ".join(sizes) if sizes else "")


def ci_columns(columns: list[str]) -> tuple[str, str] | None:
    """The (low, high) bootstrap-CI column names present among ``columns``, if any."""
    for low, high in CI_COLUMNS:
        if low in columns and high in columns:
            return low, high
    return None


def interval_columns(best: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The (low, high) bootstrap-CI columns of ``best`` if at least one row has both bounds
    finite, else None: a run without bootstrap has the columns (the catalog view always does),
    every value NULL, and shows no intervals."""
    ci = ci_columns(sorted({c for r in best for c in r}))
    if ci is not None and any(interval(r, ci) is not None for r in best):
        return ci
    return None


def interval(row: dict[str, Any], ci: tuple[str, str] | None) -> tuple[float, float] | None:
    """(low, high) of ``row``'s bootstrap interval in columns ``ci``, or None if either bound is missing."""
    if ci is None:
        return None
    low, high = number(row.get(ci[0])), number(row.get(ci[1]))
    return None if low is None or high is None else (low, high)


#: why ``alignment_best.ci_degenerate`` is set, every cause of ``metrics.bootstrap.subsample_interval``
#: (half the replicates on a bound, half on one value away from the score, or the interval missing
#: it), for the report's note and footnote and ``prh run``'s table: the first alone had been named
DEGENERATE_WHY = ("the bootstrap subsamples piled up on a bound of the metric or on one value away from the score "
                  "(or their spread missed the score)")


def pooled_bits_only(model: dict[str, Any]) -> bool:
    """Whether a ``models`` row is a causal LM of older extraction code with only the pooled bits
    per byte (``bits_per_byte_pooled`` set, ``bits_per_byte`` null: ``storage.catalog._model_row``):
    shown marked in the models table, never plotted beside the per-caption means."""
    return number(model.get("bits_per_byte")) is None and number(model.get("bits_per_byte_pooled")) is not None


def degenerate(row: dict[str, Any]) -> bool:
    """``alignment_best.ci_degenerate``: the bootstrap subsamples piled up on a bound of the metric
    or on one value away from the score (:data:`DEGENERATE_WHY`), so the interval brackets the score
    but does not measure its spread (docs/metrics.md). NULL (older files, or no interval) reads as
    not flagged."""
    return bool(row.get("ci_degenerate"))


def scored(row: dict[str, Any]) -> bool:
    """Whether a best row has a finite score and its best layers (a row without a finite score has
    NULL score and layers: ``tasks/align_task.py``)."""
    return number(row.get("score")) is not None and row.get("layer_a") is not None and row.get("layer_b") is not None


def registered_direction(metric: str) -> bool | None:
    """``MetricSpec.higher_is_better`` of ``metric`` as registered in this process
    (``tasks.metrics.METRICS``: the built-ins, and the user metrics of ``$PRH_METRIC_MODULES`` once
    loaded; read through ``tasks.metric_facts``, which imports no torch); None for a name not
    registered here. The store does not record a metric's direction."""
    facts = metric_facts(metric)
    return None if facts is None else facts.higher_is_better


def signed(metric: str, params: dict[str, Any] | str | None = None) -> bool:
    """Whether ``metric``'s registered range reaches below 0 at ``params`` (a row's ``params`` JSON
    or a mapping; None: its defaults); False for a name not registered here (``tasks.metric_facts``)."""
    facts = metric_facts(metric, params)
    return facts is not None and facts.signed


def higher_is_better(metric: str) -> bool:
    """Whether a larger score of ``metric`` is more aligned: its registered direction; an
    unregistered name is taken as higher is better (``direction_notes`` says so in the report)."""
    return registered_direction(metric) is not False


def best_first(higher: bool) -> Callable[[dict[str, Any]], tuple[bool, float]]:
    """Sort key of best rows, most aligned first: the highest score first (the lowest when not
    ``higher``), rows without a finite score last."""
    sign = -1.0 if higher else 1.0

    def key(row: dict[str, Any]) -> tuple[bool, float]:
        score = number(row.get("score"))
        return score is None, sign * (score or 0.0)

    return key


def best_row(best: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The most aligned of ``metric``'s rows with a finite score: the largest score, or the
    smallest for a metric where lower is better (:func:`higher_is_better`); the first in
    ``best``'s order among equal scores; None when no row of ``metric`` has one."""
    candidates = [r for r in best if r["metric"] == metric and number(r.get("score")) is not None]
    return min(candidates, key=best_first(higher_is_better(metric))) if candidates else None


def direction_notes(metrics: list[str]) -> list[str]:
    """The report's notes on directions: one naming the metrics where lower is better, one naming
    the metrics not registered in this process (taken as higher is better); none for the rest."""
    directions = {metric: registered_direction(metric) for metric in metrics}
    lower = [m for m in metrics if directions[m] is False]
    unknown = [m for m in metrics if directions[m] is None]
    notes = []
    if lower:
        notes.append(f"{', '.join(lower)}: lower is better (registered with higher_is_better=False): the best pair is the "
                     "smallest score, listed first in the best-scores table, and the raw heatmaps' colour scales are reversed "
                     "(brighter = more aligned)")
    if unknown:
        notes.append(f"{', '.join(unknown)}: not registered in this process (a user metric: set $PRH_METRIC_MODULES to the "
                     "module that registers it), so the direction is unknown and taken as higher is better (the largest score "
                     "is the best pair, listed first, brightest in the heatmaps); the best layer pairs are those the run stored")
    return notes


def chance_ratio(row: dict[str, Any]) -> tuple[float, str] | None:
    """(score ÷ chance, basis): the analytical chance level, else the permutation null mean. None
    for a metric whose chance level is 0 (``unbiased_cka``): its null mean is 0 plus noise, and a
    ratio to it read 293× for a pair at chance and 11× for the best one; for a signed metric
    without an analytical level (its range reaches below 0: ``rsa_spearman``, ``cknna``), whose
    null also sits near 0 (``rsa_spearman`` read 10.7× null for unrelated models, -92× in
    another seed); and for a metric where lower is better (a distance ÷ its null read 0.9× for
    the best pair, in a column where every other metric's larger ratio is the more aligned)."""
    metric = str(row.get("metric"))
    if not higher_is_better(metric):
        return None
    score = number(row.get("score"))
    analytical = number(row.get("chance_level"))
    if (analytical is not None and analytical <= 0) or (analytical is None and signed(metric, row.get("params"))):
        return None
    for column, basis in (("chance_level", "chance"), ("null_mean", "null")):
        level = number(row.get(column))
        if score is not None and level is not None and level > 0:
            return score / level, basis
    return None


@dataclass(frozen=True)
class Grid:
    """One metric's model × model table: ``values[i, j]`` for ``rows[i]`` × ``columns[j]`` (NaN: not
    aligned); ``cells[i][j]`` is the source row (or None); ``row_kind``/``column_kind`` the modalities
    of the rows and columns (None: not recorded)."""

    rows: list[str]
    columns: list[str]
    values: np.ndarray
    cells: list[list[dict[str, Any] | None]]
    row_kind: str | None
    column_kind: str | None


Block = tuple[str | None, str | None]  # (modality of the rows, of the columns) of one model × model grid
CROSS_MODAL: Block = ("vision", "language")


def _oriented(row: dict[str, Any]) -> tuple[str, str, Block]:
    """(row model, column model, block) of a best row: a vision–language pair has its vision model
    as the row (in either order of model_a and model_b), any other pair model_a as the row."""
    kinds = (row.get("modality_a"), row.get("modality_b"))
    if kinds == ("language", "vision"):
        return row["model_b"], row["model_a"], CROSS_MODAL
    return row["model_a"], row["model_b"], kinds


def grid_blocks(best: list[dict[str, Any]], metric: str) -> list[Block]:
    """The model × model grids ``metric``'s rows make, one per pair of modalities: vision × language
    first (the cross-modal pairs), then same-modality blocks (``pairs: all``) by name. A run with
    both kinds draws them apart, so a model is never both a row and a column of one grid beside
    pairs of another kind, and same-modality scores do not share a colour scale with cross-modal ones."""
    present = {_oriented(r)[2] for r in best if r["metric"] == metric}
    return sorted(present, key=lambda b: (b != CROSS_MODAL, b[0] or "", b[1] or ""))


def model_grid(best: list[dict[str, Any]], metric: str, value: str = "score", block: Block | None = None) -> Grid:
    """Pivot ``alignment_best`` rows of ``metric`` in one ``block`` of modalities (default: the first
    of ``grid_blocks``: vision × language where the run has such pairs): vision models as rows and
    language models as columns; in a same-modality block, model_a as rows and model_b as columns."""
    if block is None:
        blocks = grid_blocks(best, metric)
        block = blocks[0] if blocks else (None, None)
    chosen = [(a, b, r) for r in best if r["metric"] == metric for a, b, kinds in [_oriented(r)] if kinds == block]
    row_names = sorted({a for a, _, _ in chosen})
    column_names = sorted({b for _, b, _ in chosen})
    values = np.full((len(row_names), len(column_names)), np.nan)
    cells: list[list[dict[str, Any] | None]] = [[None] * len(column_names) for _ in row_names]
    for a, b, r in chosen:
        i, j = row_names.index(a), column_names.index(b)
        cells[i][j] = r
        v = number(r.get(value))
        values[i, j] = np.nan if v is None else v
    return Grid(row_names, column_names, values, cells, block[0], block[1])


def common_chance(best: list[dict[str, Any]], metric: str) -> float | None:
    """The analytical chance level of ``metric`` if every pair shares one (same N), else None."""
    levels = {round(v, 12) for r in best if r["metric"] == metric and (v := number(r.get("chance_level"))) is not None}
    return levels.pop() if len(levels) == 1 else None


def layer_matrix(scores: list[dict[str, Any]], metric: str, model_a: str, model_b: str) -> tuple[list[str], list[str], np.ndarray]:
    """(layer names of A, of B, ``(La, Lb)`` scores) of one pair and metric from ``alignment`` rows."""
    chosen = [r for r in scores if r["metric"] == metric and r["model_a"] == model_a and r["model_b"] == model_b]
    if not chosen:
        return [], [], np.zeros((0, 0))
    la = max(r["layer_a"] for r in chosen) + 1
    lb = max(r["layer_b"] for r in chosen) + 1
    names_a, names_b = [str(i) for i in range(la)], [str(j) for j in range(lb)]
    matrix = np.full((la, lb), np.nan)
    for r in chosen:
        matrix[r["layer_a"], r["layer_b"]] = np.nan if (v := number(r.get("score"))) is None else v
        names_a[r["layer_a"]] = r.get("layer_name_a") or names_a[r["layer_a"]]
        names_b[r["layer_b"]] = r.get("layer_name_b") or names_b[r["layer_b"]]
    return names_a, names_b, matrix


def run_start(run: dict[str, Any]) -> datetime | None:
    """When the run began: its record's ``started_at``, or the start of an earlier attempt where the
    flow run was retried (``attempts``: a list in the pipeline's record, JSON text in the ``runs``
    view), whichever is first; None where the record has no readable start."""
    attempts = run.get("attempts")
    if isinstance(attempts, str):
        try:
            attempts = json.loads(attempts)
        except ValueError:
            attempts = None
    starts = [run.get("started_at"), *(a.get("started_at") for a in attempts or [] if isinstance(a, dict))]
    found = [t for t in map(utc_time, starts) if t is not None]
    return min(found) if found else None


def reused_pairs(best: list[dict[str, Any]], run: dict[str, Any]) -> dict[tuple[str, str], datetime]:
    """The model pairs of ``best`` (the run's ``alignment_best`` rows) that were already in the
    store when the run began (:func:`run_start`): their alignment version was published
    (``published_at``) before, by an earlier run, and this run listed it without computing it
    again (``prh run``'s "already stored"). (model_a, model_b) -> when it was published; none
    where the run's start or the rows' ``published_at`` is not known, or where their count is not
    the one the run record holds (:func:`run_aligned`: a worker's clock behind the flow's, a pair
    another run published while this one computed it)."""
    start = run_start(run)
    if start is None:
        return {}
    reused: dict[tuple[str, str], datetime] = {}
    for r in best:
        published = utc_time(r.get("published_at"))
        if published is not None and published < start:
            pair = (r["model_a"], r["model_b"])
            reused[pair] = min(published, reused.get(pair, published))
    n_pairs = len(pairs_of(best))
    aligned = run_aligned(run, n_pairs)
    return reused if aligned is None or len(reused) == n_pairs - aligned else {}


def run_aligned(run: dict[str, Any], pairs: int) -> int | None:
    """How many of the run's ``pairs`` model pairs it aligned itself, as its record counts them
    (``aligned``, ``prh run``'s "aligned in this run"); None for a record without that count (or
    one that does not fit ``pairs``)."""
    aligned = run.get("aligned")
    return aligned if isinstance(aligned, int) and not isinstance(aligned, bool) and 0 <= aligned <= pairs else None


def pairs_of(best: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Model pairs present, in (model_a, model_b) order."""
    return sorted({(r["model_a"], r["model_b"]) for r in best})
