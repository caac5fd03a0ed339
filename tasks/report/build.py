"""Compose the report: every figure rendered once, the page around them, the files to write."""

from __future__ import annotations

import hashlib
import re

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.times import utc_time
from tasks.report import heatmaps, html, scaling
from tasks.report.figures import FigureCache, RenderedFigure, render_cached
from tasks.report.tables import (CROSS_MODAL, DEGENERATE_WHY, ReportInput, common_chance, degenerate, describe_metrics, direction_notes, grid_blocks,
                                 higher_is_better, interval, interval_columns, metrics_of, model_grid, number, pairs_of, pooled_bits_only,
                                 reused_pairs, rows, rows_aligned, run_aligned, run_start, scored)

if TYPE_CHECKING:  # matplotlib is imported as a figure is drawn (tasks.report.figures)
    from matplotlib.figure import Figure

TITLE = "prh alignment report"


@dataclass(frozen=True)
class Report:
    """The page (``html``), every figure, the notes on what could not be shown, and the input."""

    html: str
    figures: list[RenderedFigure]
    notes: list[str]
    data: ReportInput

    def files(self) -> dict[str, bytes]:
        """Relative path → content: ``report.html`` and ``figures/<name>.<png|svg>``, each name
        reduced to ``[A-Za-z0-9._-]`` (names come from the store's rows: a metric name with ``/``
        and ``..`` wrote figures outside the report folder)."""
        out = {"report.html": self.html.encode("utf-8")}
        used: set[str] = set()
        for f in self.figures:
            name = re.sub(r"[^A-Za-z0-9._-]", "_", f.name).lstrip(".") or "figure"
            if name in used:  # two names reduced alike ('a/b', 'a_b'): the later one keeps its own file
                name = f"{name}-{hashlib.sha256(f.name.encode()).hexdigest()[:8]}"
            used.add(name)
            for fmt, data in f.files.items():
                out[f"figures/{name}.{fmt}"] = data
        return out

    def figure(self, name: str) -> RenderedFigure:
        return next(f for f in self.figures if f.name == name)


def build_report(data: ReportInput, formats: tuple[str, ...] = ("png", "svg"), pairs: list[tuple[str, str]] | None = None,
                 cache: FigureCache | None = None) -> Report:
    """Every figure and the page for ``data``.

    ``formats``: file formats of the figures (PNG always; SVG for all but the layer × layer
    figures); ``pairs``: the model pairs of the layer × layer section (default: every pair);
    ``cache``: figures already drawn from the same rows (a figure is keyed by the rows it shows:
    one metric's best scores, one model pair's layer scores), so a rerun draws only what changed.

    A metric's direction is its registration in this process (``tables.higher_is_better``: where
    lower is better, the best pair is the smallest score, listed first, and its raw colour scales
    are reversed); an unregistered metric is taken as higher is better, and the notes say so.
    """
    best, scores, models = rows(data.best), rows(data.scores), rows(data.models)
    metrics = metrics_of(best)
    notes = list(data.notes)
    higher = {metric: higher_is_better(metric) for metric in metrics}
    lower = [metric for metric in metrics if not higher[metric]]
    figures: list[RenderedFigure] = []
    sections = []

    def add(name: str, caption: str, draw: Callable[[], Figure], inputs: Any, only_png: bool = False, data: str = "") -> str:
        """The figure drawn (or from the cache) and its HTML; ``data``: its numbers as tables (``html.figure``)."""
        rendered = render_cached(name, caption, draw, inputs, ("png",) if only_png else formats, cache)
        figures.append(rendered)
        return html.figure(rendered, data)

    # The rows each figure shows (and is cached by): grouped once, not filtered per figure.
    best_of_metric: dict[str, list[dict[str, Any]]] = {}
    best_of_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in best:
        best_of_metric.setdefault(r["metric"], []).append(r)
        best_of_pair.setdefault((r["model_a"], r["model_b"]), []).append(r)
    scores_of_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in scores:
        scores_of_pair.setdefault((r["model_a"], r["model_b"]), []).append(r)

    notes += direction_notes(metrics)
    notes += unscored_notes(best, metrics)
    notes += few_permutations_notes(best, metrics)
    run = data.run
    reused = reused_pairs(best, run)
    notes += reused_notes(reused, pairs_of(best), run)
    sections.append(html.section("Models", "models", html.models_table(models)))
    sections.append(html.section(
        "Best layer pair per metric", "best",
        html.best_table(best, metrics, {pair: shown_time(when) for pair, when in reused.items()} if reused else None),
        intro=("Each model pair's score is its best over all its scored layer pairs (layers left out as degenerate are named in "
               "the notes): the maximum, or the minimum for a metric where lower "
               "is better (named in the notes); each metric's pairs are listed most aligned first. <b>chance</b> is the "
               "analytical chance level (mutual k-NN: k/(N−1)); <b>× chance</b> the score divided by it (or by the "
               "permutation null mean, marked ×null, where no analytical level exists); <b>null mean</b> is what "
               "row-permuted data scores after the same best over layer pairs; <b>calibrated</b> = (score − τ)/(max − τ), clamped to [0, 1], with τ the "
               "null's 1−α quantile (α = 0.05; where lower is better: (τ − score)/(τ − min), τ its α quantile; 1 is the most aligned "
               "for every metric; for a metric without that bound, score − τ clipped at 0, in the metric's own units), <b>p</b> its permutation p-value and <b>q</b> the Benjamini–Hochberg q-value of p "
               "among this run's model pairs of the metric (pairs with q ≤ 0.05 are discoveries at a 5% false "
               f"discovery rate). {ROUNDING}")))

    parts = []
    blocks_of = {metric: grid_blocks(best, metric) for metric in metrics}
    for metric, blocks in blocks_of.items():
        chance = common_chance(best, metric)
        for block in blocks:
            parts += model_heatmaps(add, best, best_of_metric[metric], metric, block, chance, notes, block == blocks[0],
                                    higher[metric])
    sections.append(html.section("Model × model", "model-heatmaps", html.figures(*parts)))

    cross_modal = any(CROSS_MODAL in blocks for blocks in blocks_of.values())
    if cross_modal:
        parts = []
        for metric in metrics:
            for kind, caption, points, draw in (
                    ("quality", "against language-model quality (1 − bits per byte)", scaling.quality_points, scaling.alignment_vs_quality),
                    ("size", "against parameter count", scaling.size_points, scaling.alignment_vs_size)):
                if points(best, models, metric):
                    parts.append(add(f"{kind}-{metric}", f"{metric} {caption}{_direction_words(higher[metric])}",
                                     lambda draw=draw, metric=metric: draw(best, models, metric, higher[metric]),
                                     [best_of_metric[metric], models, higher[metric]],
                                     data=html.points_table(kind, best_of_metric[metric], models, metric)))
        notes += bits_per_byte_notes(models)
        sections.append(html.section("Alignment against model quality and size", "scaling", html.figures(*parts),
                                     intro="The paper's headline figure: does alignment grow with model quality and scale?"))
    elif best:
        notes.append("no vision–language model pairs: the scaling figures (alignment against language-model quality and size) "
                     "are left out")
    if best:
        notes += interval_notes(best, cross_modal)
    else:
        notes.append("no alignment scores in this run: no figures")

    parts = []
    for model_a, model_b in pairs_of(best) if pairs is None else pairs:
        pair_scores = scores_of_pair.get((model_a, model_b), [])
        pair_best = best_of_pair.get((model_a, model_b), [])
        if any(r["metric"] in metrics for r in pair_scores):
            # PNG only: a layer matrix is a raster image, which SVG would only wrap (and slowly).
            parts.append(add(f"layers-{model_a}__{model_b}", f"{model_a} × {model_b}: every layer pair (boxed: the best pair)",
                             lambda a=model_a, b=model_b, s=pair_scores, p=pair_best:
                                 heatmaps.layer_heatmaps(s, p, a, b, metrics, lower),
                             [pair_scores, pair_best, metrics, lower], only_png=True,
                             data=html.layer_tables(pair_scores, pair_best, model_a, model_b, metrics, lower)))
    missing = [pair for pair in (pairs_of(best) if pairs is None else pairs)
               if not any(r["metric"] in metrics for r in scores_of_pair.get(pair, []))]
    if missing:
        notes.append(missing_layers_note(missing))
    elif not parts and best:
        notes.append("no layer × layer scores for the selected pairs")
    sections.append(html.section("Layer × layer", "layer-heatmaps", html.figures(*parts)))

    if data.examples is not None and data.examples.examples:
        sections.append(html.section("Nearest neighbours: where the two models agree and disagree", "neighbours",
                                     html.neighbours_section(data.examples)))
    else:
        notes.append("no nearest-neighbour examples (" + ("features not available)" if best else "no model pair aligned in this run)"))
    if notes:
        sections.append(html.section("Notes", "notes", html.notes(notes)))

    meta = {"run": run.get("run_id"), "status": run.get("status"), "started": shown_time(run.get("started_at")), "store": run.get("store"),
            **({"run's store": run["run's store"]} if run.get("run's store") else {}),
            "dataset": run.get("dataset_version"), "data": run.get("dataset_description"), "N (samples aligned)": rows_aligned(best),
            "model pairs": pair_counts(best, run, reused), "metrics": describe_metrics(best, metrics)}
    toc = [("models", "Models"), ("best", "Best scores"), ("model-heatmaps", "Model × model"), ("scaling", "Quality and size"),
           ("layer-heatmaps", "Layer × layer"), ("neighbours", "Nearest neighbours"), ("notes", "Notes")]
    present = [(a, t) for a, t in toc if f'<section id="{a}">' in "".join(sections)]
    return Report(html.page(TITLE, meta, sections, html.contents(present)), figures, notes, data)


#: How the page rounds what the catalog holds (``html.best_table``, ``heatmaps``), said under the best-scores heading.
ROUNDING = ("Shown rounded (the catalog holds every digit): scores, chance levels, null means and interval bounds to 4 decimals, "
            "calibrated scores to 3, p and q to 3 significant digits, ratios to 1 decimal; the heatmaps' cells and titles show "
            "scores and calibrated scores to 3 decimals.")


def shown_time(value: Any) -> Any:
    """A run record's time for the report's header, to the second in UTC (``2026-01-01 00:00:00
    UTC``; records hold microseconds); anything that is not a time is shown as it is."""
    moment = utc_time(value)
    return value if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def pair_counts(best: list[dict[str, Any]], run: dict[str, Any], reused: dict[tuple[str, str], Any]) -> str | None:
    """The header's ``model pairs``: ``6: 2 aligned in this run, 4 already stored`` (the pairs it
    found stored when it began and reused: ``tables.reused_pairs``), as ``prh run``'s closing lines
    count them: the run record's ``aligned`` where it has one (``tables.run_aligned``); else from
    the publication times, None where the run's start or its rows' publication times are unknown."""
    pairs = pairs_of(best)
    if not pairs:
        return None
    aligned = run_aligned(run, len(pairs))
    if aligned is None:
        if run_start(run) is None or not any(utc_time(r.get("published_at")) for r in best):
            return None
        aligned = len(pairs) - len(reused)
    return f"{len(pairs)}: {aligned} aligned in this run, {len(pairs) - aligned} already stored"


def reused_notes(reused: dict[tuple[str, str], Any], pairs: list[tuple[str, str]], run: dict[str, Any]) -> list[str]:
    """The note naming the run's pairs that were already stored when it began (aligned by an
    earlier run; this run reused them): their rows are that earlier result."""
    if not reused:
        return []
    return [f"{len(reused)} of the run's {len(pairs)} model pairs {'was' if len(reused) == 1 else 'were'} already stored when it "
            f"started ({shown_time(run_start(run))}): aligned by an earlier run and reused here, not computed again: "
            f"{_pair_list(sorted(reused))} (the best-scores table's column 'aligned' says when each was published)"]


def model_heatmaps(add: Callable[..., str], best: list[dict[str, Any]], rows_of_metric: list[dict[str, Any]], metric: str,
                   block: tuple[str | None, str | None], chance: float | None, notes: list[str], first: bool,
                   higher: bool = True) -> list[str]:
    """The raw and calibrated model × model heatmaps of ``metric`` in one ``block`` of modalities
    (``tables.grid_blocks``): the first block's figures are ``model-heatmap-<metric>[-calibrated]``,
    a same-modality block of a run that has another adds ``-<modality>`` (``pairs: all``). Appends
    to ``notes`` when the first block has no calibrated scores. ``higher``: the metric's direction
    (the raw figure's colour scale and caption). Returns the figures' HTML."""
    grid = model_grid(best, metric, "score", block)
    suffix = "" if first else f"-{block[0] or 'other'}" + ("" if block[0] == block[1] else f"-{block[1] or 'other'}")
    where = "" if first and block == CROSS_MODAL else f" ({_block_words(block)})"
    parts = [add(f"model-heatmap-{metric}{suffix}", f"{metric}: best score per model pair{where}, {heatmaps.ratio_caption(grid)}"
                 + (f" (chance = {chance:.4f}, marked on the colour bar)" if chance is not None else "") + _direction_words(higher),
                 lambda: heatmaps.model_heatmap(grid, metric, False, chance, higher), [rows_of_metric, chance, list(block), higher],
                 data=html.grid_table(grid, metric))]
    calibrated = model_grid(best, metric, "calibrated_score", block)
    if (calibrated.values == calibrated.values).any():
        parts.append(add(f"model-heatmap-{metric}{suffix}-calibrated", f"{metric}: permutation-calibrated score and p-value{where} "
                         "(0 = not above the null's 1−α quantile)",
                         lambda: heatmaps.model_heatmap(calibrated, metric, True), [rows_of_metric, list(block)],
                         data=html.grid_table(calibrated, metric, calibrated=True)))
    elif first:
        notes.append(f"{metric}: no calibrated scores (the run used no permutations)")
    return parts


def _direction_words(higher: bool) -> str:
    """What a raw figure's caption adds for a metric where lower is better: ``; lower is better``."""
    return "" if higher else "; lower is better"


def _block_words(block: tuple[str | None, str | None]) -> str:
    """``vision × language``, ``language × language`` (``model`` where the modality is not recorded)."""
    return " × ".join(kind or "model" for kind in block)


def bits_per_byte_notes(models: list[dict[str, Any]]) -> list[str]:
    """The note on the quality figure when fewer than 3 language models have bits per byte, and
    one naming the causal LMs of older extraction code that have only the pooled figure (the
    ``models`` view's ``bits_per_byte_pooled`` with ``bits_per_byte`` null: ``storage.catalog.
    _model_row``), which the figure does not plot and which are causal LMs all the same."""
    with_bpb = sorted(m["model"] for m in models if number(m.get("bits_per_byte")) is not None)
    pooled_only = sorted(m["model"] for m in models if pooled_bits_only(m))
    notes = []
    if not with_bpb:
        notes.append(("no language model has the per-caption bits per byte" if pooled_only else
                      "no language model has bits per byte (only causal LMs do)") + ": the quality figure is left out")
    elif len(with_bpb) < 3:
        notes.append(f"only {', '.join(with_bpb)} {'has' if len(with_bpb) == 1 else 'have'} bits per byte: "
                     "the quality figure has too few points to show a trend")
    if pooled_only:
        notes.append(f"{', '.join(pooled_only)} {'has' if len(pooled_only) == 1 else 'have'} only the pooled bits per "
                     "byte of older extraction code (all bits over all bytes, before the per-caption mean existed: "
                     "docs/extraction.md), left out of the quality figure")
    return notes


#: Names of the figure files a report writes (``Report.files``: ``figures/<name>.<png|svg>``); a
#: report written into a folder that holds an older one removes the older figures of these names.
FIGURE_FILE = re.compile(r"(?:model-heatmap|quality|size|layers)-[A-Za-z0-9._-]+\.(?:png|svg)")

#: Pairs named in a note before the rest are counted.
NAMED_PAIRS = 10


def _pair_list(pairs: list[tuple[str, str]]) -> str:
    named = ", ".join(f"{a} × {b}" for a, b in pairs[:NAMED_PAIRS])
    return named + (f" and {len(pairs) - NAMED_PAIRS} more" if len(pairs) > NAMED_PAIRS else "")


def unscored_notes(best: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """One note per metric with best rows without a finite score (NULL score and layers: the
    engine returned none, e.g. every layer pair excluded): shown as – and left out of the figures."""
    notes = []
    for metric in metrics:
        unscored = sorted((r["model_a"], r["model_b"]) for r in best if r["metric"] == metric and not scored(r))
        if unscored:
            notes.append(f"{metric}: no finite best score for {_pair_list(unscored)} (no layer pair gave one): "
                         "shown as – in the table and left out of the figures")
    return notes


#: The fewest permutations ``K`` at which a calibrated score can be above 0 and a p-value reach
#: the pipeline's alpha, 0.05 (``tasks.align_task.min_calibrating_permutations``, which reads the
#: alpha from the engine; a test checks the two agree): with fewer, tau is the largest of the
#: ``K + 1`` values and the smallest p-value is ``1/(K + 1)``.
MIN_CALIBRATING_PERMUTATIONS = 19


def few_permutations_notes(best: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """One note per metric whose rows were calibrated with fewer than
    :data:`MIN_CALIBRATING_PERMUTATIONS` null draws (``permutations``, the draws used): every
    calibrated score is then 0 and no p-value below ``1/(K + 1)``, whatever the data, so a page of
    zeros and p = 0.1 says nothing about chance (quick runs use 9; the run's log warned)."""
    notes = []
    for metric in metrics:
        counts = sorted({int(k) for r in best if r["metric"] == metric and (k := number(r.get("permutations"))) is not None
                         and 0 < k < MIN_CALIBRATING_PERMUTATIONS})
        if counts:
            shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
            notes.append(f"{metric}: {shown} permutations, fewer than the {MIN_CALIBRATING_PERMUTATIONS} at which a calibrated "
                         f"score can be above 0 (alpha 0.05): every calibrated score is 0 and no p-value is below "
                         f"1/(K+1) = {1 / (counts[-1] + 1):.3g}, whatever the data, so they do not tell whether a pair is above "
                         f"chance; rerun with alignment.permutations of {MIN_CALIBRATING_PERMUTATIONS} or more (the demo uses 50)")
    return notes


def interval_notes(best: list[dict[str, Any]], scaling_figures: bool = True) -> list[str]:
    """What the bootstrap intervals of ``best`` leave out: none at all (a run without bootstrap:
    the columns exist, every value NULL), or some degenerate (``ci_degenerate``). ``scaling_figures``:
    whether the report draws them (only with vision–language pairs), so the notes name no absent figure."""
    ci = interval_columns(best)
    if ci is None:
        return ["the store has no bootstrap confidence intervals for the best scores"
                + (": the scaling figures have no error bars" if scaling_figures else "")]
    flagged = sum(1 for r in best if interval(r, ci) is not None and degenerate(r))
    if not flagged:
        return []
    return [f"{flagged} bootstrap interval{'s are' if flagged > 1 else ' is'} degenerate (ci_degenerate, marked * in the best-scores "
            f"table): {DEGENERATE_WHY}, so the interval brackets the score but does not measure its "
            "spread" + ("; the scaling figures draw no error bar for it" if scaling_figures else "")]


def missing_layers_note(missing: list[tuple[str, str]]) -> str:
    """The note on pairs whose layer × layer figure is left out: the store has none of their
    ``alignment`` rows (a missing or unreadable ``scores.parquet``)."""
    return (f"no layer × layer scores for {_pair_list(missing)}: {'its' if len(missing) == 1 else 'their'} layer figure"
            f"{'' if len(missing) == 1 else 's'} left out (the alignment rows are missing or unreadable in the store; "
            "`prh verify` checks its files)")
