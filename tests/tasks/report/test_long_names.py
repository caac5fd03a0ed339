"""Model names are up to 128 characters (tasks/extract/spec.py); the figures must stay readable
with long ones. A 71-character vision model name took the model heatmap's fixed width for its
tick label: the axes shrank to a sliver, the cells' annotations ran into each other
('0.3280.289'), the title was cut ('cka: score (best layer pa') and matplotlib warned that the
constrained layout was not applied; in the layer figures the vertical model name ran past the
panel into the neighbouring ones. And a scaling panel whose models all have one parameter count
(one vision model, or random-init baselines of one architecture) got a log axis of no width
(24960 to 24960.00000000006): its points were not drawn inside it."""

from __future__ import annotations

import warnings

import pytest

from tasks.report.heatmaps import layer_heatmaps, model_heatmap
from tasks.report.scaling import alignment_vs_quality, alignment_vs_size
from tasks.report.tables import model_grid

LONG_VISION = "ViT-cls-with-a-rather-long-name-to-see-how-the-report-wraps-it.v2_final"  # 71 characters
LONGEST_VISION = "vit_" + "x" * 96  # 100 characters: with a 20-character partner, a pair folder of 122 (at most 128)
LONG_LANGUAGE = "gpt2-medium-finetuned-on-captions-2026-01-05"


def _drawn(figure) -> None:
    """Lay the figure out and draw it; a layout that collapsed is an error (matplotlib's
    'constrained_layout not applied because axes sizes collapsed to zero' is a UserWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure.canvas.draw()


def _inside(box, outer, slack: float = 1.0) -> bool:
    return (outer.x0 - slack <= box.x0 and box.x1 <= outer.x1 + slack
            and outer.y0 - slack <= box.y0 and box.y1 <= outer.y1 + slack)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _one_line(text: str) -> str:
    """A label as read: its lines joined (a long name is drawn over several lines)."""
    return text.replace("\n", "")


def _rows(vision: list[str], language: list[str]) -> list[dict]:
    return [{"metric": "cka", "model_a": a, "model_b": b, "modality_a": "vision", "modality_b": "language",
             "score": 0.2 + 0.1 * i + 0.05 * j, "layer_a": 0, "layer_b": 0, "null_mean": 0.1}
            for i, a in enumerate(vision) for j, b in enumerate(language)]


@pytest.mark.parametrize("vision,language", [
    ([LONG_VISION, "tiny-vit"], ["tiny-bert", "tiny-gpt"]),
    ([LONGEST_VISION, "tiny-vit"], ["tiny-bert", LONG_LANGUAGE]),
    ([LONG_VISION], [LONG_LANGUAGE]),
])
def test_long_model_names_leave_the_model_heatmap_readable(vision, language):
    figure = model_heatmap(model_grid(_rows(vision, language), "cka"), "cka")
    _drawn(figure)
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[0]
    frame = ax.get_window_extent(renderer)
    cells = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(cells) == len(vision) * len(language)
    for i, box in enumerate(cells):
        assert _inside(box, frame), f"cell text {ax.texts[i].get_text()!r} runs out of its axes"
        assert not any(_overlap(box, other) for other in cells[i + 1:]), f"cell text {ax.texts[i].get_text()!r} overlaps another"
    for text in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]:
        assert _inside(text.get_window_extent(renderer), figure.bbox), f"{text.get_text()!r} is cut off at the figure's edge"
    assert sorted(_one_line(t.get_text()) for t in ax.get_yticklabels()) == sorted(vision)  # every name whole
    assert sorted(_one_line(t.get_text()) for t in ax.get_xticklabels()) == sorted(language)
    assert ax.title.get_text() == "cka: score (best layer pair)"


@pytest.mark.parametrize("model_a,model_b", [(LONG_VISION, "tiny-bert"), (LONGEST_VISION, LONG_LANGUAGE)])
def test_long_model_names_stay_within_their_panel_of_the_layer_figure(model_a, model_b):
    scores = [{"metric": m, "model_a": model_a, "model_b": model_b, "layer_a": la, "layer_b": lb, "layer_name_a": f"layer.{la:02d}",
               "layer_name_b": f"layer.{lb:02d}", "score": 0.1 * (la + 1) * (lb + 1)}
              for m in ("mutual_knn", "cka", "cknna") for la in range(3) for lb in range(3)]
    best = [{"metric": m, "model_a": model_a, "model_b": model_b, "score": 0.9, "layer_a": 2, "layer_b": 2}
            for m in ("mutual_knn", "cka", "cknna")]
    figure = layer_heatmaps(scores, best, model_a, model_b, ["mutual_knn", "cka", "cknna"])
    _drawn(figure)
    renderer = figure.canvas.get_renderer()
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 3
    others = [ax.get_window_extent(renderer) for ax in figure.axes]
    for ax in panels:
        own = ax.get_window_extent(renderer)
        for label in (ax.xaxis.label, ax.yaxis.label):
            box = label.get_window_extent(renderer)
            assert _inside(box, figure.bbox), f"{label.get_text()!r} is cut off at the figure's edge"
            assert not any(_overlap(box, other) for other in others if other is not own and other != own), \
                f"{label.get_text()!r} runs into another panel"
        assert (_one_line(ax.get_ylabel()), _one_line(ax.get_xlabel())) == (model_a, model_b)
    title = figure._suptitle
    assert _inside(title.get_window_extent(renderer), figure.bbox)
    assert _one_line(title.get_text()) == f"{model_a} × {model_b}: every layer pair"


def test_long_model_names_leave_the_scaling_figures_readable():
    models = [{"model": LONGEST_VISION, "modality": "vision", "param_count": 60_144},
              {"model": "tiny-vit", "modality": "vision", "param_count": 24_960},
              {"model": LONG_LANGUAGE, "modality": "language", "param_count": 1_047_648, "bits_per_byte": 3.0},
              {"model": "tiny-gpt", "modality": "language", "param_count": 900_000, "bits_per_byte": 2.5}]
    best = [{**r, "chance_level": 0.1} for r in _rows([LONGEST_VISION, "tiny-vit"], [LONG_LANGUAGE, "tiny-gpt"])]
    for figure in (alignment_vs_size(best, models, "cka"), alignment_vs_quality(best, models, "cka")):
        _drawn(figure)
        renderer = figure.canvas.get_renderer()
        for ax in figure.axes:
            frame = ax.get_window_extent(renderer)
            assert frame.height >= 0.4 * figure.bbox.height, f"{ax.get_title()}: the axes shrank to {frame.height:.0f} px"
            for text in [*ax.get_xticklabels(), ax.xaxis.label, ax.title]:
                assert _inside(text.get_window_extent(renderer), figure.bbox), f"{text.get_text()!r} is cut off"
            legend = ax.get_legend().get_window_extent(renderer)
            assert _inside(legend, figure.bbox)
            names = {_one_line(t.get_text()) for t in ax.get_legend().get_texts()}
            assert names & {LONGEST_VISION, LONG_LANGUAGE}  # the legend names the long model whole


@pytest.mark.parametrize("vision_sizes", [[24_960], [24_960, 24_960]])
def test_a_scaling_panel_whose_models_share_one_size_shows_its_points(vision_sizes):
    models = [{"model": f"vit-{i}", "modality": "vision", "param_count": p} for i, p in enumerate(vision_sizes)]
    models.append({"model": "gpt", "modality": "language", "param_count": 1_047_648, "bits_per_byte": 3.0})
    best = [{**r, "chance_level": 0.1, "ci_low": r["score"] - 0.05, "ci_high": r["score"] + 0.05}
            for r in _rows([m["model"] for m in models[:-1]], ["gpt"])]
    figure = alignment_vs_size(best, models, "cka")
    _drawn(figure)
    for ax in figure.axes:
        low, high = ax.get_xlim()
        xs = {float(x) for container in ax.containers for x in container.lines[0].get_xdata()}
        assert len(xs) == 1, xs
        (x,) = xs
        assert high / low > 1.5, f"{ax.get_title()}: an x axis of no width ({low}, {high})"
        assert low < x < high and 0.2 < (x / low) / (high / low) ** 0.5 < 5, f"{ax.get_title()}: {x} not well inside ({low}, {high})"
