"""The scaling figures draw every finite score, also below 0 (unbiased_cka, rsa_spearman and cknna
can be negative): the y axis started at 0, so negative points were cut off, and with every score
negative the axis was inverted and empty."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.report.scaling import alignment_vs_quality, alignment_vs_size, y_limits

MODELS = [{"model": "vit-a", "modality": "vision", "param_count": 25_000},
          {"model": "vit-b", "modality": "vision", "param_count": 33_500},
          {"model": "gpt-a", "modality": "language", "param_count": 70_500, "bits_per_byte": 8.37},
          {"model": "gpt-b", "modality": "language", "param_count": 90_000, "bits_per_byte": 8.10}]


def _best(scores: dict[tuple[str, str], float], ci: float | None = None, metric: str = "unbiased_cka") -> list[dict]:
    """Best rows of ``metric`` (chance 0) with the given scores; ``ci``: a symmetric interval half-width."""
    rows = []
    for (a, b), score in scores.items():
        row = {"metric": metric, "model_a": a, "model_b": b, "modality_a": "vision", "modality_b": "language", "score": score,
               "layer_a": 2, "layer_b": 2, "chance_level": 0.0}
        if ci is not None:
            row.update(ci_low=score - ci, ci_high=score + ci)
        rows.append(row)
    return rows


def _drawn(figure) -> list[float]:
    """Every y of the figure's series and of their error-bar ends."""
    ys = []
    for ax in figure.axes:
        for container in ax.containers:
            ys += [float(y) for y in container.lines[0].get_ydata()]
            for bars in container.lines[2]:
                ys += [float(point[1]) for segment in bars.get_segments() for point in segment]
    return ys


def _assert_all_inside(figure, expected: list[float]) -> None:
    drawn = _drawn(figure)
    for value in expected:
        assert any(np.isclose(value, y) for y in drawn), f"{value} is not drawn"
    for ax in figure.axes:
        low, high = ax.get_ylim()
        assert low < high, "inverted or empty y axis"
        assert low <= 0.0 <= high  # the chance level (0) and the zero line stay in view
        outside = [y for y in drawn if not low <= y <= high]
        assert not outside, f"{ax.get_title()}: {outside} outside ylim {(low, high)}"


@pytest.mark.parametrize("scores", [
    {("vit-a", "gpt-a"): -0.0059, ("vit-b", "gpt-a"): -0.0042},  # every score below 0
    {("vit-a", "gpt-a"): 0.012, ("vit-b", "gpt-a"): -0.003, ("vit-a", "gpt-b"): 0.02, ("vit-b", "gpt-b"): -0.4},  # mixed signs
])
def test_negative_scores_are_drawn_inside_the_axes(scores):
    best = _best(scores)
    _assert_all_inside(alignment_vs_size(best, MODELS, "unbiased_cka"), list(scores.values()))
    _assert_all_inside(alignment_vs_quality(best, MODELS, "unbiased_cka"), list(scores.values()))


def test_error_bars_below_zero_are_inside_the_axes():
    scores = {("vit-a", "gpt-a"): 0.01, ("vit-b", "gpt-a"): 0.02, ("vit-a", "gpt-b"): 0.03}
    best = _best(scores, ci=0.05)  # every lower bound below 0
    lows = [s - 0.05 for s in scores.values()]
    _assert_all_inside(alignment_vs_size(best, MODELS, "unbiased_cka"), lows)
    _assert_all_inside(alignment_vs_quality(best, MODELS, "unbiased_cka"), lows)


def test_positive_scores_keep_the_axis_at_zero():
    best = _best({("vit-a", "gpt-a"): 0.3, ("vit-b", "gpt-b"): 0.5}, metric="cka")
    for ax in alignment_vs_size(best, MODELS, "cka").axes:
        assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] >= 0.5


def test_y_limits():
    assert y_limits([0.2, 0.4], None) == pytest.approx((0.0, 0.42))
    assert y_limits([-0.2, 0.2], None) == pytest.approx((-0.22, 0.22))
    assert y_limits([-0.3, -0.1], 0.0) == pytest.approx((-0.315, 0.015))
    assert y_limits([0.1], 0.5) == pytest.approx((0.0, 0.525))  # the chance line stays in view
    assert y_limits([0.0, 0.0], 0.0) == pytest.approx((0.0, 0.05))  # a flat span is one unit wide


def test_thirty_partners_are_told_apart_and_their_legend_fits():
    """The report hunt: with 30 language models the 10-colour cycle and one marker drew lm-00,
    lm-10 and lm-20 alike, and the legend overflowed the axes (clipped)."""
    import warnings

    models = [{"model": "vit-a", "modality": "vision", "param_count": 25_000}] + [
        {"model": f"lm-{j:02d}", "modality": "language", "param_count": 1000 * (j + 1), "bits_per_byte": 1 + j / 10}
        for j in range(30)]
    best = _best({("vit-a", f"lm-{j:02d}"): 0.1 + j / 100 for j in range(30)}, metric="cka")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" is a UserWarning
        figure = alignment_vs_size(best, models, "cka")
        figure.canvas.draw()
    ax = next(a for a in figure.axes if len(a.containers) == 30)
    styles = {(tuple(c.lines[0].get_color()) if not isinstance(c.lines[0].get_color(), str) else c.lines[0].get_color(),
               c.lines[0].get_marker()) for c in ax.containers}
    assert len(styles) == 30
    legend = ax.get_legend().get_window_extent()
    assert figure.bbox.x0 <= legend.x0 and legend.x1 <= figure.bbox.x1 + 1  # inside the figure, not clipped


def test_points_are_the_metrics_finite_cross_modal_pairs_vision_first_with_sizes_above_0():
    """``cross_modal``: (vision, language, row) for each vision-language pair of the metric with a
    finite score, whichever side model_a is; ``size_points``: only models with a parameter count > 0
    (a log axis); ``quality_points``: only language models with bits per byte."""
    from tasks.report.scaling import cross_modal, quality_points, size_points

    models = [{"model": "vit", "modality": "vision", "param_count": 5e6}, {"model": "lm", "modality": "language",
              "param_count": 2e6, "bits_per_byte": 1.5}, {"model": "lm0", "modality": "language", "param_count": 0}]
    rows = [{"metric": "cka", "model_a": "vit", "model_b": "lm", "score": 0.4},
            {"metric": "cka", "model_a": "lm0", "model_b": "vit", "score": 0.3},  # language first
            {"metric": "cka", "model_a": "lm", "model_b": "lm0", "score": 0.9},  # not cross-modal
            {"metric": "mutual_knn", "model_a": "vit", "model_b": "lm", "score": 0.2},  # another metric
            {"metric": "cka", "model_a": "vit", "model_b": "lm", "score": None}]  # no finite score
    modality = {m["model"]: m["modality"] for m in models}
    assert [(v, l, r["score"]) for v, l, r in cross_modal(rows, "cka", modality)] == [("vit", "lm", 0.4), ("vit", "lm0", 0.3)]
    assert [(v, l) for v, l, _ in size_points(rows, models, "cka")] == [("vit", "lm")]
    assert [(v, l) for v, l, _ in quality_points(rows, models, "cka")] == [("vit", "lm")]


def test_error_bars_are_the_interval_around_the_score_never_below_zero_and_none_when_degenerate():
    """``_error_bar``: (score - low, high - score) of the bootstrap interval; a side of a percentile
    interval that does not contain its score is no bar (0), never a negative length; a degenerate
    interval (piled on a bound of the metric) or a missing bound is no bar at all (NaN)."""
    import math

    from tasks.report.scaling import _error_bar

    ci = ("ci_low", "ci_high")
    assert _error_bar(0.5, {"ci_low": 0.4, "ci_high": 0.7}, ci) == pytest.approx((0.1, 0.2))
    assert _error_bar(0.5, {"ci_low": 0.55, "ci_high": 0.7}, ci) == pytest.approx((0.0, 0.2))  # low above the score
    assert _error_bar(0.5, {"ci_low": 0.2, "ci_high": 0.45}, ci) == pytest.approx((0.3, 0.0))  # high below the score
    for row in ({"ci_low": 0.4, "ci_high": 0.7, "ci_degenerate": True}, {"ci_low": None, "ci_high": 0.7}, {}):
        assert all(math.isnan(v) for v in _error_bar(0.5, row, ci))


def test_the_y_axis_holds_each_error_bar_on_its_own_side():
    """The values a panel's limits come from: each score, its interval's low end below it and its
    high end above it (a lopsided interval: a bar swapped end for end would leave the high end
    0.5 outside the axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.report.scaling import _series

    row = {"metric": "cka", "score": 0.3, "ci_low": 0.25, "ci_high": 0.8}
    figure, ax = plt.subplots()
    try:
        drawn = _series(ax, [("vit", "gpt", row)], key=lambda p: p[1], x=lambda p: 1.0, label_of=lambda p: p[0])
    finally:
        plt.close(figure)
    assert sorted(drawn) == pytest.approx([0.25, 0.3, 0.8])


def test_series_differ_in_marker_and_line_style_not_only_in_colour():
    """A colour-blind reader, or the page printed in greyscale: ten partners were drawn with one
    marker and one line style, told apart by the colour cycle alone (tab10 holds a red and a
    green). Each series now has its own (marker, line style) pair, whatever its colour, and the
    dashed line stays the chance line's own."""
    models = [{"model": "vit-a", "modality": "vision", "param_count": 25_000}] + [
        {"model": f"lm-{j:02d}", "modality": "language", "param_count": 1000 * (j + 1), "bits_per_byte": 1 + j / 10}
        for j in range(24)]
    best = _best({("vit-a", f"lm-{j:02d}"): 0.1 + j / 100 for j in range(24)}, metric="cka")
    figure = alignment_vs_size(best, models, "cka")
    ax = next(a for a in figure.axes if len(a.containers) == 24)
    shapes = [(c.lines[0].get_marker(), c.lines[0].get_linestyle()) for c in ax.containers]
    assert len(set(shapes)) == 24
    assert all(style != "--" for _, style in shapes)


def _zoo(n_vision: int = 17, n_language: int = 12) -> tuple[list[dict], list[dict]]:
    """The paper's zoo shape: long timm-style vision names (five share one parameter count, as its
    ViT-Bases), language models whose qualities lie 0.01 to 0.03 apart."""
    vision = [f"vit_{size}_patch14_clip_224.laion2b_ft_in12k_{i:02d}" for i in range(n_vision)
              for size in ["base" if i < 5 else "large"]]
    language = [f"open_llama_{j}b_v2" for j in range(n_language)]
    models = ([{"model": v, "modality": "vision", "param_count": 86_000_000 if i < 5 else 300_000_000 * i} for i, v in enumerate(vision)]
              + [{"model": lm, "modality": "language", "param_count": 1_000_000_000 * (j + 1),
                  "bits_per_byte": 0.9 - 0.01 * j - 0.02 * (j % 2)} for j, lm in enumerate(language)])
    best = [{"metric": "mutual_knn", "model_a": v, "model_b": lm, "modality_a": "vision", "modality_b": "language",
             "score": 0.1 + 0.01 * i + 0.005 * j, "layer_a": 1, "layer_b": 1, "chance_level": 0.05}
            for i, v in enumerate(vision) for j, lm in enumerate(language)]
    return best, models


@pytest.mark.parametrize("draw", [alignment_vs_quality, alignment_vs_size])
def test_a_zoo_of_the_papers_size_keeps_its_legend_and_tick_labels_legible(draw):
    """The report at the paper's zoo size (17 × 12 models, session 52): the legend of 17 long wrapped
    names was taller than the figure (its last entries cut off, the layout given up: `constrained_layout
    not applied`), and the x tick labels of 12 language models of close quality, or of five vision
    models of one size (their names joined on one label), were drawn over each other."""
    import warnings

    best, models = _zoo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" is a UserWarning
        figure = draw(best, models, "mutual_knn")
        figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    page = figure.bbox
    for ax in figure.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert page.y0 - 1 <= legend.y0 and legend.y1 <= page.y1 + 1 and legend.x1 <= page.x1 + 1, "legend clipped"
        label = ax.yaxis.label.get_window_extent(renderer)
        assert page.y0 - 1 <= label.y0 and label.y1 <= page.y1 + 1, "y label cut off"
        shown = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.get_xticklabels() if t.get_text()]
        assert len(shown) >= 3  # thinned, not emptied
        for (text_a, a), (text_b, b) in zip(shown, shown[1:]):
            assert a.x1 < b.x0, f"x tick labels {text_a!r} and {text_b!r} overlap"
        assert all(t.count("\n") <= 4 for t, _ in shown)  # no tick holds five joined names
