"""Heatmaps: model × model (best layer pair per cell) and layer × layer for one model pair."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.report.figures import DPI, PAGE_WIDTH_PX, new_figure, wrapped
from tasks.report.tables import Grid, chance_ratio, common_chance, layer_matrix, number, scored

if TYPE_CHECKING:  # matplotlib is imported as a figure is drawn (tasks.report.figures)
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure

CMAP = "viridis"
MAX_TICK_LABELS = 24


#: The colour of a cell without a finite score (a pair or layer the metric refused): grey, apart
#: from every score's colour and from the page's white
REFUSED_CELL = "#dddddd"


def model_heatmap(grid: Grid, metric: str, calibrated: bool = False, chance: float | None = None,
                  higher_is_better: bool = True) -> Figure:
    """One metric's best score for every model pair: ``grid.rows`` × ``grid.columns``.

    Raw cells read ``score`` and ``×`` its chance level (the analytical chance where one exists,
    else the permutation null mean, marked ``×null``; no ratio where the chance level is 0); the
    colour bar marks ``chance`` and reaches below 0 when a score does (``colour_norm``). For a
    metric where lower is better (``higher_is_better=False``) the raw colour scale is reversed, so
    that brighter is more aligned as for every other metric, and the colour bar says so.
    Calibrated cells read the calibrated score and its p-value (0 is the null's 1−α quantile;
    higher is more aligned for every metric).
    """
    values = grid.values
    n_rows, n_cols = values.shape
    rows, columns = [wrapped(name) for name in grid.rows], [wrapped(name) for name in grid.columns]
    width, height = _model_heatmap_size(rows, columns)
    bases = _bases(grid)
    compact = width * DPI > PAGE_WIDTH_PX and (calibrated or len(bases) <= 1)  # one base, said once in the title
    if compact:
        width = max(width - (CELL_WIDTH - COMPACT_CELL_WIDTH) * n_cols, PAGE_WIDTH_PX / DPI)
    figure = new_figure(width, height)
    ax = figure.add_subplot()
    norm = colour_norm(values, calibrated, chance, higher_is_better)
    reverse = not calibrated and not higher_is_better
    cmap = colour_map(reverse).with_extremes(bad=REFUSED_CELL)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            ax.text(j, i, cell_text(grid.cells[i][j], calibrated, compact), ha="center", va="center", fontsize=8,
                    color=text_colour(cmap(norm(values[i, j]))) if np.isfinite(values[i, j]) else "#555555")
    _label_axes(ax, columns, rows, max_labels=None)  # every model named: a cell is a model pair
    ax.set_xlabel(axis_label(grid.column_kind))
    ax.set_ylabel(axis_label(grid.row_kind))
    kind = "calibrated score" if calibrated else "score (best layer pair)"
    if compact and not calibrated and bases:
        kind += f" and × {bases[0]}"
    ax.set_title(f"{metric}: {kind}", fontsize=10)
    bar = figure.colorbar(image, ax=ax, shrink=0.9)
    if reverse:
        bar.set_label(LOWER_IS_BETTER, fontsize=8)
    if chance is not None and not calibrated:
        _mark_chance(bar.ax, chance)
    return figure


#: A model heatmap cell's width in inches, and in a grid too wide for the page (``PAGE_WIDTH_PX``):
#: there the ratio line drops its base (``1.7×`` for ``1.7× chance``), said once in the title, and the cells
#: narrow to fit the page, down to ``COMPACT_CELL_WIDTH``. The paper's 17 × 12 grid had been 2,170 px
#: wide, shown at 54 %: its numbers 6.6 px tall on the page.
CELL_WIDTH, COMPACT_CELL_WIDTH = 1.45, 0.72


def _bases(grid: Grid) -> list[str]:
    """The bases of the raw cells' ratios (``chance``, ``null``: ``tables.chance_ratio``)."""
    return sorted({ratio[1] for line in grid.cells for row in line if row is not None and (ratio := chance_ratio(row)) is not None})


def _model_heatmap_size(rows: list[str], columns: list[str]) -> tuple[float, float]:
    """(width, height) in inches of a model heatmap whose tick labels are ``rows`` and ``columns``
    (model names, ``wrapped``): 1.45 × 0.62 inches a cell, a row as tall as its label's lines, and
    room beside and below the cells for lines longer than 18 characters (the demo's
    ``efficientnet-lite0`` fits as it is; the y labels take about 0.065 inches a character, the x
    labels stand at 45°), so that a label never takes the cells' room."""
    def longest(labels: list[str]) -> int:
        return max((len(line) for label in labels for line in label.split("\n")), default=0)

    lines = max((label.count("\n") + 1 for label in rows), default=1)
    column_lines = max((label.count("\n") + 1 for label in columns), default=1)
    width = 2.2 + CELL_WIDTH * len(columns) + 0.065 * max(0, longest(rows) - 18)
    height = (1.3 + max(0.62, 0.15 * lines + 0.1) * len(rows) + 0.05 * max(0, longest(columns) - 18)
              + 0.12 * (column_lines - 1))
    return width, height


#: The colour bar's label of a metric where lower is better (its colour map reversed: brighter = more aligned).
LOWER_IS_BETTER = "lower is better"


def colour_map(reverse: bool = False) -> Colormap:
    """The heatmaps' colour map (viridis: dark to bright); reversed (bright at the low end) for
    a metric where lower is better, so that brighter is more aligned for every metric."""
    from matplotlib import colormaps

    return colormaps[CMAP].reversed() if reverse else colormaps[CMAP]


def colour_norm(values: np.ndarray, calibrated: bool, chance: float | None = None,
                higher_is_better: bool = True) -> Normalize:
    """The colour scale of a model heatmap. Calibrated scores of a bounded metric lie in [0, 1]: that
    scale, fixed; those of a metric without an upper bound (score − τ, clipped at 0, in the metric's
    units) may exceed 1: the scale then reaches their highest (at [0, 1] they were one colour). Raw
    scores: from min(0, lowest finite score) (``unbiased_cka``, ``rsa_spearman``, ``cknna`` go
    below 0) to max(highest, ``chance``, 0); a scale of no width (every score equal) is one unit
    wide. Where lower is better (a distance, 0 the ideal rather than "no alignment") the scale
    spans the scores (and ``chance``) only: pinned at 0, distances of 1.26-1.29 were all one colour."""
    from matplotlib.colors import Normalize

    finite = values[np.isfinite(values)]
    if calibrated:
        return Normalize(vmin=0.0, vmax=max(1.0, float(finite.max()) if finite.size else 1.0))
    if not higher_is_better and finite.size:
        low = min(float(finite.min()), chance if chance is not None else np.inf)
        high = max(float(finite.max()), chance if chance is not None else -np.inf)
        return Normalize(vmin=low, vmax=high if high > low else low + 1.0)
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = max(float(finite.max()) if finite.size else 1.0, chance or 0.0, 0.0)
    return Normalize(vmin=low, vmax=high if high > low else low + 1.0)


def ratio_caption(grid: Grid) -> str:
    """What the raw cells of ``grid`` show beside the score (``chance_ratio``), for the caption:
    ``annotated with × chance``, ``× null`` (score ÷ permutation null mean: no analytical chance
    level), both, or ``no ratio to chance`` (chance level 0, or neither level known)."""
    bases = _bases(grid)
    if not bases:
        return "no ratio to chance" + (" (its chance level is 0)" if _zero_chance(grid) else "")
    shown = " or ".join(f"× {b}" for b in bases)
    return f"annotated with {shown}" + (" (score ÷ permutation null mean)" if "null" in bases else "")


def _zero_chance(grid: Grid) -> bool:
    return any(row is not None and number(row.get("chance_level")) == 0.0 for line in grid.cells for row in line)


def axis_label(kind: str | None) -> str:
    """``vision model``, ``language model``; ``model`` where the modality is not recorded."""
    return f"{kind} model" if kind else "model"


def layer_heatmaps(scores: list[dict[str, Any]], best: list[dict[str, Any]], model_a: str, model_b: str, metrics: list[str],
                   lower_is_better: Collection[str] = ()) -> Figure | None:
    """Every layer pair of one model pair, one panel per metric; the best pair is outlined (none
    for a metric whose best row has no finite score). The metrics named in ``lower_is_better``
    get the reversed colour map (brighter = more aligned) and a colour bar that says so."""
    from matplotlib.patches import Rectangle

    panels = [(m, *layer_matrix(scores, m, model_a, model_b)) for m in metrics]
    panels = [p for p in panels if p[3].size]
    if not panels:
        return None
    la, lb = panels[0][3].shape
    name_a, name_b = wrapped(model_a), wrapped(model_b)  # a long name over lines: it stays beside its own panel
    width = min(4.6, 1.6 + 0.16 * lb) + 0.12 * name_a.count("\n")
    height = max(min(4.6, 1.4 + 0.16 * la), 0.085 * max(len(line) for line in name_a.split("\n")) + 0.8)
    height += 0.12 * name_b.count("\n")
    figure = new_figure(width * len(panels) + 0.6, height + 0.4)
    title = f"{model_a} × {model_b}: every layer pair"
    figure.suptitle(wrapped(title, max(40, int(11 * (width * len(panels) + 0.6)))), fontsize=10)
    for index, (metric, names_a, names_b, matrix) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), index + 1)
        reverse = metric in lower_is_better
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=colour_map(reverse).with_extremes(bad=REFUSED_CELL),
                          aspect="auto", origin="lower")
        _label_axes(ax, names_b, names_a, fontsize=6)
        ax.set_xlabel(name_b, fontsize=8)
        ax.set_ylabel(name_a, fontsize=8)
        row = next((r for r in best if r["metric"] == metric and r["model_a"] == model_a and r["model_b"] == model_b), None)
        title = metric
        if row is not None and not scored(row):  # NULL score and layers: nothing to box
            title = f"{metric}: no finite best score"
        elif row is not None:
            i, j = int(row["layer_a"]), int(row["layer_b"])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=MARK_COLOUR, linewidth=2, path_effects=_marked(2)))
            title = f"{metric}: best {row['score']:.3f}\nat ({names_a[i]}, {names_b[j]})"
        ax.set_title(title, fontsize=8)
        bar = figure.colorbar(image, ax=ax, shrink=0.85)
        bar.ax.tick_params(labelsize=7)
        if reverse:
            bar.set_label(LOWER_IS_BETTER, fontsize=7)
        chance = common_chance(best, metric)
        finite = matrix[np.isfinite(matrix)]
        if chance is not None and finite.size and finite.min() <= chance <= finite.max():
            _mark_chance(bar.ax, chance)
    return figure


def cell_text(row: dict[str, Any] | None, calibrated: bool, compact: bool = False) -> str:
    """What a model heatmap cell reads: the score and its ratio to chance (``1.7× chance``; ``1.7×``
    where ``compact``: the title names the base), or the calibrated score and p."""
    if row is None:
        return "–"
    if calibrated:
        value, p = number(row.get("calibrated_score")), number(row.get("p_value"))
        if value is None:
            return "–"
        return f"{value:.3f}" + (f"\np={p:.3g}" if p is not None else "")
    score = number(row.get("score"))
    if score is None:  # a pair without a finite score (NULL score and layers)
        return "–"
    text = f"{score:.3f}"
    ratio = chance_ratio(row)
    if ratio is not None:
        text += f"\n{ratio[0]:.1f}×" + ("" if compact else f" {ratio[1]}")
    return text


def text_colour(cell: tuple[float, ...]) -> str:
    """Black or white, whichever contrasts more with the cell colour ``cell`` (RGB(A) in [0, 1]):
    the WCAG contrast ratios (L + 0.05 ratios of relative luminance) of black and white on a colour
    cross at luminance 0.179, where both are 4.58:1, so every cell's number reaches at least that.
    The rule it replaces (white below 0.6 of viridis) was 3.0:1 on viridis(0.59)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in cell[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "white" if (1.05 / (luminance + 0.05)) > ((luminance + 0.05) / 0.05) else "black"


#: The best-pair box and the chance mark on a colour bar: a black line with a white edge each side,
#: one of which reaches 3:1 (WCAG 1.4.11) on every colour of viridis (black from relative luminance
#: 0.1 up, white up to 0.3); the red (#ff3030) they replace was 1.04:1 on mid viridis (#21918c).
MARK_COLOUR, MARK_EDGE = "black", "white"


def _marked(width: float) -> list:
    """The path effects of a mark: a white stroke ``width`` + 2.5 wide under the black line."""
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width + 2.5, foreground=MARK_EDGE)]


def _label_axes(ax: Axes, x_labels: list[str], y_labels: list[str], fontsize: int = 8,
                max_labels: int | None = MAX_TICK_LABELS) -> None:
    """Tick labels of both axes, every ``step``-th when there are more than ``max_labels`` (layer
    axes of deep models); ``None``: every label (model axes: 30 language models showed 15 names)."""
    x_step = max(1, -(-len(x_labels) // max_labels)) if max_labels else 1
    y_step = max(1, -(-len(y_labels) // max_labels)) if max_labels else 1
    ax.set_xticks(range(0, len(x_labels), x_step), x_labels[::x_step], rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(0, len(y_labels), y_step), y_labels[::y_step], fontsize=fontsize)


def _mark_chance(bar_ax: Axes, chance: float) -> None:
    """The chance level on a colour bar: a black line edged white across the bar (``MARK_COLOUR``),
    and the word ``chance`` beside it in the page's text colour (the red word was 3.67:1 on white)."""
    bar_ax.axhline(chance, color=MARK_COLOUR, linewidth=2, path_effects=_marked(2))
    bar_ax.text(-0.1, chance, "chance ", color="#222222", fontsize=7, ha="right", va="center", transform=bar_ax.get_yaxis_transform())
