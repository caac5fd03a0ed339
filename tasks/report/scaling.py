"""The paper's headline figure: alignment against language-model quality and model size.

Quality is ``1 − bits_per_byte`` of the language model (only models with bits per byte: causal
LMs). Each line is one vision model's alignment to the language models; error bars are the
bootstrap confidence interval where ``alignment_best`` has one (see ``tables.CI_COLUMNS``), except
a degenerate one (``ci_degenerate``: it brackets the score but does not measure its spread), which
gets no bar. Pairs without a finite score (NULL score and layers) are left out. The y axis starts
at 0, or lower where a score or its error bar is below 0 (``unbiased_cka``, ``rsa_spearman``,
``cknna`` can be), so every finite score is drawn.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator

from tasks.report.figures import new_figure, wrapped
from tasks.report.tables import common_chance, degenerate, interval, interval_columns, number

if TYPE_CHECKING:  # matplotlib is imported as a figure is drawn (tasks.report.figures)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def cross_modal(best: list[dict[str, Any]], metric: str, modality: dict[str, str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(vision model, language model, row) for every vision–language pair with a finite ``metric`` score."""
    for r in best:
        if r["metric"] != metric or number(r.get("score")) is None:
            continue
        kinds = (modality.get(r["model_a"]), modality.get(r["model_b"]))
        if kinds == ("vision", "language"):
            yield r["model_a"], r["model_b"], r
        elif kinds == ("language", "vision"):
            yield r["model_b"], r["model_a"], r


Point = tuple[str, str, dict[str, Any]]  # (vision model, language model, alignment_best row)


def _quality(models: list[dict[str, Any]]) -> dict[str, float]:
    return {m["model"]: 1.0 - bpb for m in models if (bpb := number(m.get("bits_per_byte"))) is not None}


def _size(models: list[dict[str, Any]]) -> dict[str, float]:
    return {m["model"]: float(p) for m in models if (p := number(m.get("param_count"))) is not None and p > 0}


def quality_points(best: list[dict[str, Any]], models: list[dict[str, Any]], metric: str) -> list[Point]:
    """The vision–language pairs of ``metric`` whose language model has bits per byte."""
    modality, quality = {m["model"]: m.get("modality") for m in models}, _quality(models)
    return [(v, l, r) for v, l, r in cross_modal(best, metric, modality) if l in quality]


def size_points(best: list[dict[str, Any]], models: list[dict[str, Any]], metric: str) -> list[Point]:
    """The vision–language pairs of ``metric`` where both models have a parameter count."""
    modality, size = {m["model"]: m.get("modality") for m in models}, _size(models)
    return [(v, l, r) for v, l, r in cross_modal(best, metric, modality) if v in size and l in size]


def y_label(metric: str, higher_is_better: bool = True) -> str:
    """The y axis of a scaling panel: ``mutual_knn (best layer pair)``; ``..., lower is better``
    for a metric where lower is better (its best layer pair is the smallest score)."""
    return f"{metric} (best layer pair{'' if higher_is_better else ', lower is better'})"


def alignment_vs_quality(best: list[dict[str, Any]], models: list[dict[str, Any]], metric: str,
                         higher_is_better: bool = True) -> Figure | None:
    """Alignment to each vision model against the language model's 1 − bits per byte (None: no LM
    has it); the y axis says when lower is better (``y_label``)."""
    quality = _quality(models)
    points = quality_points(best, models, metric)
    if not points:
        return None
    figure = new_figure(5.6, 3.8)
    ax = figure.add_subplot()
    drawn = _series(ax, points, key=lambda p: p[0], x=lambda p: quality[p[1]], label_of=lambda p: p[1])
    ax.set_xlabel("language-model quality: 1 − bits per byte")
    ax.set_ylabel(y_label(metric, higher_is_better))
    ax.set_title(f"{metric} against language-model quality", fontsize=10)
    chance = common_chance(best, metric)
    _chance_line(ax, chance)
    ax.set_ylim(*y_limits(drawn, chance))
    _legend(ax, "vision model")
    fit_layout(figure)
    return figure


def alignment_vs_size(best: list[dict[str, Any]], models: list[dict[str, Any]], metric: str,
                      higher_is_better: bool = True) -> Figure | None:
    """Two panels: alignment against the language model's and the vision model's parameter count;
    the y axes say when lower is better (``y_label``)."""
    size = _size(models)
    points = size_points(best, models, metric)
    if not points:
        return None
    figure = new_figure(9.6, 3.8)
    chance = common_chance(best, metric)
    for index, (axis_model, series_model, kind, other) in enumerate(((1, 0, "language", "vision"), (0, 1, "vision", "language"))):
        ax = figure.add_subplot(1, 2, index + 1)
        ax.set_xscale("log")
        drawn = _series(ax, points, key=lambda p, s=series_model: p[s], x=lambda p, a=axis_model: size[p[a]],
                        label_of=lambda p, a=axis_model: p[a])
        ax.set_xlabel(f"{kind}-model parameters")
        ax.set_ylabel(y_label(metric, higher_is_better))
        ax.set_title(f"{metric} against {kind}-model size", fontsize=10)
        sizes = {size[p[axis_model]] for p in points}
        if len(sizes) == 1:  # one size (one model, or baselines of one architecture): a log axis of no width hid the points
            (only,) = sizes
            ax.set_xlim(only / 4, only * 4)
        _chance_line(ax, chance)
        ax.set_ylim(*y_limits(drawn, chance))
        _legend(ax, f"{other} model")
    fit_layout(figure)
    return figure


#: a series' marker (series i: ``MARKERS[i % 8]``) and line style (``LINE_STYLES[i // 8 % 3]``):
#: 24 series differ in shape alone, for a colour-blind reader or a greyscale print (the 10-colour
#: cycle holds a red and a green); with the colour cycle, 120. No series is dashed: that is chance.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", ":", "-.")


def _series(ax: Axes, points: list[tuple[str, str, dict[str, Any]]], key, x, label_of) -> list[float]:
    """One line per series key, points sorted by x, with CI error bars where the rows have them
    (none for a missing or degenerate interval). Returns every y drawn: the scores and the ends of
    their error bars."""
    ci = interval_columns([p[2] for p in points])
    drawn: list[float] = []
    for index, name in enumerate(sorted({key(p) for p in points})):
        mine = sorted((p for p in points if key(p) == name), key=x)
        xs = [x(p) for p in mine]
        ys = [float(p[2]["score"]) for p in mine]
        errors = None
        if ci is not None:
            bars = [_error_bar(y, p[2], ci) for y, p in zip(ys, mine)]
            errors = [[low for low, _ in bars], [high for _, high in bars]]
            drawn += [y + sign * bar for y, pair in zip(ys, bars) for sign, bar in zip((-1, 1), pair) if not math.isnan(bar)]
        drawn += ys
        # colour, marker and line style vary: the 10-colour cycle alone drew series 0, 10 and 20 alike, and
        # one marker left the first ten series told apart by colour only
        ax.errorbar(xs, ys, yerr=errors, marker=MARKERS[index % len(MARKERS)],
                    linestyle=LINE_STYLES[index // len(MARKERS) % len(LINE_STYLES)], markersize=5, capsize=3, linewidth=1,
                    alpha=0.9, label=wrapped(name))
    labels: dict[float, set[str]] = {}
    for p in points:
        labels.setdefault(x(p), set()).add(label_of(p))
    ticks = sorted(labels)
    ax.set_xticks(ticks, [f"{_tick_names(labels[t])}\n{_short(t)}" for t in ticks], fontsize=6, rotation=30, ha="right")
    ax.minorticks_off()
    return drawn


#: The most model names one x tick names; more models at one x (baselines of one architecture, a zoo's
#: five ViT-Base) are counted instead: their names joined had run under their neighbours' (the data
#: table under the figure names every point's models).
TICK_NAMES = 2


def _tick_names(names: set[str]) -> str:
    """An x tick's models: their names (``wrapped``), one per line, up to ``TICK_NAMES``; else ``5 models``."""
    if len(names) > TICK_NAMES:
        return f"{len(names)} models"
    return "\n".join(wrapped(name) for name in sorted(names))


def fit_layout(figure: Figure) -> None:
    """Make the scaling figure hold its words at a zoo's size, measured on the drawn figure: taller
    where a legend beside the axes is taller than the figure (17 vision models with long names had
    run off its bottom, clipped, and squeezed the axes until the layout gave up), and each axis'
    x tick labels thinned where they would overlap (12 language models of close quality had been
    drawn over each other): first turned upright (narrower), then every label that would touch the
    last one kept left out, left to right (the data table under the figure lists every point)."""
    import warnings

    def draw() -> None:
        with warnings.catch_warnings():  # a layout that does not fit yet is what this fixes
            warnings.filterwarnings("ignore", "constrained_layout not applied")
            figure.canvas.draw()

    for _ in range(4):  # each try grows the figure by what the legends lacked; the layout then settles
        draw()
        renderer = figure.canvas.get_renderer()
        lacking = max((legend.get_window_extent(renderer).height - ax.bbox.height for ax in figure.axes
                       if (legend := ax.get_legend()) is not None), default=0.0)
        if lacking <= 0:
            break
        width, height = figure.get_size_inches()
        figure.set_size_inches(width, height + lacking / figure.dpi + 0.1)
    for ax in figure.axes:
        if _overlapping(ax):
            for label in ax.get_xticklabels():
                label.set(rotation=90, ha="center")
            draw()
        if _overlapping(ax):
            ticks = list(ax.get_xticks())
            texts = [label.get_text() for label in ax.get_xticklabels()]
            kept, last = [], None
            for text, box in zip(texts, _tick_boxes(ax)):
                keep = last is None or box.x0 > last.x1 + 1
                kept.append(text if keep else "")
                last = box if keep else last
            ax.set_xticks(ticks, kept)
            draw()


def _tick_boxes(ax: Axes) -> list:
    """The x tick labels' boxes on the drawn figure, in tick order."""
    renderer = ax.figure.canvas.get_renderer()
    return [label.get_window_extent(renderer) for label in ax.get_xticklabels()]


def _overlapping(ax: Axes) -> bool:
    """Whether two neighbouring x tick labels with text overlap (their boxes, on the drawn figure)."""
    boxes = [box for label, box in zip(ax.get_xticklabels(), _tick_boxes(ax)) if label.get_text()]
    return any(b.x0 <= a.x1 for a, b in zip(boxes, boxes[1:]))


def _legend(ax: Axes, title: str, inside_max: int = 10) -> None:
    """The series legend: inside the axes for a few series, beside them in columns of up to 20
    for more (30 partners overflowed the axes and were clipped)."""
    count = len(ax.get_legend_handles_labels()[0])
    if count <= inside_max:
        ax.legend(title=title, fontsize=7, title_fontsize=7, loc="best")
    else:
        ax.legend(title=title, fontsize=6, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncols=-(-count // 20), borderaxespad=0.0)


def y_limits(drawn: list[float], chance: float | None, margin: float = 0.05) -> tuple[float, float]:
    """(bottom, top) of a scaling panel: from min(0, lowest of ``drawn``) to the highest of
    ``drawn`` and ``chance``, widened by ``margin`` of the span where a limit is a data value (the
    bottom stays exactly 0 when nothing is below it). An empty or flat span is one unit wide."""
    values = [*drawn, *([] if chance is None else [chance])]
    low, high = min([0.0, *values]), max([0.0, *values])
    span = high - low if high > low else 1.0
    return (low - margin * span if low < 0 else 0.0), high + margin * span


def _error_bar(y: float, row: dict[str, Any], ci: tuple[str, str]) -> tuple[float, float]:
    """(below, above) ``y`` of ``row``'s interval; NaN (no bar) for a missing or degenerate one. A
    percentile interval need not contain its estimate: no bar below 0."""
    bounds = interval(row, ci)
    if bounds is None or degenerate(row):
        return math.nan, math.nan
    return max(0.0, y - bounds[0]), max(0.0, bounds[1] - y)


def _short(value: float) -> str:
    """A compact number: 22.7M, 3.1B, -2.03."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _chance_line(ax: Axes, chance: float | None) -> None:
    if chance is not None:
        ax.axhline(chance, color="#ff3030", linestyle="--", linewidth=1, label="chance")
