"""Model heatmaps: the colour scale covers negative scores, a calibrated grid has the fixed
[0, 1] scale, axes name the modalities, and captions say what the cells show."""

from __future__ import annotations

import numpy as np

from tasks.report.heatmaps import colour_norm, layer_heatmaps, model_heatmap, ratio_caption
from tasks.report.tables import model_grid
from tests.tasks.report.synthetic import best_rows, score_rows


def _rows(metric: str, scores: dict[tuple[str, str], float], **extra) -> list[dict]:
    return [{"metric": metric, "model_a": a, "model_b": b, "modality_a": "vision", "modality_b": "language", "score": s,
             "layer_a": 0, "layer_b": 0, **extra} for (a, b), s in scores.items()]


def _colours(figure, values: list[float]) -> list[tuple]:
    image = figure.axes[0].images[0]
    return [tuple(image.cmap(image.norm(v))) for v in values]


def test_negative_scores_get_distinct_colours_on_a_scale_that_holds_them():
    scores = {("vit-a", "gpt-a"): -0.0059, ("vit-b", "gpt-a"): -0.0042, ("vit-c", "gpt-a"): 0.0}
    figure = model_heatmap(model_grid(_rows("unbiased_cka", scores, chance_level=0.0), "unbiased_cka"), "unbiased_cka", False, 0.0)
    norm = figure.axes[0].images[0].norm
    assert norm.vmin <= -0.0059 and norm.vmax >= 0.0
    colours = _colours(figure, list(scores.values()))
    assert len(set(colours)) == 3, "distinct scores drawn in one colour"
    colour_bar = figure.axes[1]
    assert colour_bar.get_ylim()[0] <= -0.0059  # the colour bar reads the negative scores


def test_mixed_signs_span_the_lowest_to_the_highest_score():
    values = np.array([[-0.4, 0.2], [np.nan, 0.9]])
    norm = colour_norm(values, calibrated=False, chance=0.1)
    assert (norm.vmin, norm.vmax) == (-0.4, 0.9)
    norm = colour_norm(np.array([[0.2, 0.3]]), calibrated=False, chance=0.5)
    assert (norm.vmin, norm.vmax) == (0.0, 0.5)  # from 0, up to the chance level
    norm = colour_norm(np.zeros((2, 2)), calibrated=False)
    assert norm.vmax - norm.vmin == 1.0  # all equal: not a 0..1e-9 scale


def test_a_calibrated_grid_uses_the_fixed_unit_scale():
    rows = _rows("cka", {("vit-a", "gpt-a"): 0.3, ("vit-b", "gpt-a"): 0.4}, calibrated_score=0.0, p_value=0.5)
    figure = model_heatmap(model_grid(rows, "cka", "calibrated_score"), "cka", True)
    norm = figure.axes[0].images[0].norm
    assert (norm.vmin, norm.vmax) == (0.0, 1.0)
    assert _colours(figure, [0.0])[0] == tuple(figure.axes[0].images[0].cmap(0.0))
    higher = [{**r, "calibrated_score": c} for r, c in zip(rows, (0.2, 0.6))]
    norm = model_heatmap(model_grid(higher, "cka", "calibrated_score"), "cka", True).axes[0].images[0].norm
    assert (norm.vmin, norm.vmax) == (0.0, 1.0)  # the same scale whatever the values


def test_the_caption_says_what_the_cells_show():
    knn = model_grid(best_rows(), "mutual_knn")  # analytical chance level
    cka = model_grid(best_rows(), "cka")  # no analytical level: ÷ the null mean
    ucka = model_grid(_rows("unbiased_cka", {("vit-a", "gpt-a"): 0.01}, chance_level=0.0, null_mean=0.0001), "unbiased_cka")
    bare = model_grid(_rows("svcca", {("vit-a", "gpt-a"): 0.5}), "svcca")  # no chance level, no permutations
    for grid, metric in ((knn, "mutual_knn"), (cka, "cka"), (ucka, "unbiased_cka"), (bare, "svcca")):
        caption = ratio_caption(grid)
        cells = [t.get_text() for t in model_heatmap(grid, metric).axes[0].texts]
        for basis in ("chance", "null"):
            assert (f"× {basis}" in caption) == any(f"× {basis}" in c for c in cells), (metric, caption, cells)
    assert ratio_caption(knn) == "annotated with × chance"
    assert ratio_caption(cka).startswith("annotated with × null")
    assert ratio_caption(ucka) == "no ratio to chance (its chance level is 0)"
    assert ratio_caption(bare) == "no ratio to chance"


def test_axes_name_the_modality_of_rows_and_columns():
    cross = model_grid(best_rows(), "cka")
    ax = model_heatmap(cross, "cka").axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("vision model", "language model")
    same = [{**r, "model_a": a, "model_b": b, "modality_a": "language", "modality_b": "language"}
            for r, (a, b) in zip(best_rows()[:3], (("lm-a", "lm-b"), ("lm-a", "lm-c"), ("lm-b", "lm-c")))]
    ax = model_heatmap(model_grid(same, "mutual_knn"), "mutual_knn").axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("language model", "language model")
    unknown = [{**r, "modality_a": None, "modality_b": None} for r in same]
    ax = model_heatmap(model_grid(unknown, "mutual_knn"), "mutual_knn").axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("model", "model")  # not "model A model"


def test_every_model_of_a_large_zoo_is_named_on_its_axes():
    """The report hunt: 30 language models showed 15 tick labels (lm-00, lm-02, ...; the layer
    axes' thinning), while every cell was drawn: half the columns named no model."""
    scores = {(f"vit-{i}", f"lm-{j:02d}"): 0.1 + 0.01 * j for i in range(3) for j in range(30)}
    ax = model_heatmap(model_grid(_rows("cka", scores), "cka"), "cka").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"lm-{j:02d}" for j in range(30)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["vit-0", "vit-1", "vit-2"]


def test_layer_heatmaps_outline_the_best_layer_pair_and_none_without_a_finite_best_score():
    """One panel per metric; the best pair is outlined: an unfilled 1 × 1 box on its cell (row
    layer_a, column layer_b); none, and a title that says so, for a best row without a finite score."""
    best = [{"metric": "cka", "model_a": "vit-b", "model_b": "lm-b", "score": 0.5, "layer_a": 1, "layer_b": 2},
            {"metric": "mutual_knn", "model_a": "vit-b", "model_b": "lm-b", "score": None, "layer_a": None, "layer_b": None}]
    figure = layer_heatmaps(score_rows(), best, "vit-b", "lm-b", ["cka", "mutual_knn"])
    panels = {ax.get_title().split(":")[0]: ax for ax in figure.axes if ax.get_title()}
    box, = panels["cka"].patches
    assert (box.get_xy(), box.get_width(), box.get_height(), box.get_fill()) == ((1.5, 0.5), 1, 1, False)
    assert panels["mutual_knn"].get_title() == "mutual_knn: no finite best score" and not panels["mutual_knn"].patches


def test_layer_heatmaps_mark_a_common_chance_level_within_the_scores_on_the_colour_bar():
    """As on the model heatmaps (docs/report.md), the chance level shared by every pair is a red
    line on a panel's colour bar when it lies within the panel's scores."""
    scores = [r for r in score_rows() if r["metric"] == "cka" and (r["model_a"], r["model_b"]) == ("vit-b", "lm-b")]
    values = sorted(r["score"] for r in scores)
    best = [{"metric": "cka", "model_a": "vit-b", "model_b": "lm-b", "score": values[-1], "layer_a": 3, "layer_b": 2,
             "chance_level": (values[0] + values[-1]) / 2}]
    figure = layer_heatmaps(scores, best, "vit-b", "lm-b", ["cka"])
    bar = figure.axes[1]
    assert [t.get_text() for t in bar.texts] == ["chance "] and len(bar.lines) == 1


def test_a_layer_pair_without_a_finite_score_is_grey_as_on_the_model_heatmaps():
    """A refused layer pair (a degenerate layer: no score) was drawn transparent, so white like the
    page around it; the model heatmaps draw such a cell grey."""
    from matplotlib.colors import to_rgba

    from tasks.report.heatmaps import REFUSED_CELL

    scores = [dict(r) for r in score_rows() if r["metric"] == "cka" and (r["model_a"], r["model_b"]) == ("vit-b", "lm-b")]
    scores[0]["score"] = float("nan")
    figure = layer_heatmaps(scores, [], "vit-b", "lm-b", ["cka"])
    (image,) = figure.axes[0].images
    assert tuple(image.cmap.get_bad()) == to_rgba(REFUSED_CELL) != to_rgba("white")
    assert np.ma.is_masked(image.get_array()) and image.get_array().mask.sum() == 1


def test_names_from_the_store_are_drawn_as_written_never_as_mathtext():
    """Layer, model and metric names come from the store (a crafted or another tool's store, a user
    metric's name): matplotlib read text between two '$' as mathtext, so a layer name '$\\frac{$'
    failed the whole report with a ParseSyntaxException, and '$x$' was drawn as an italic x."""
    import xml.etree.ElementTree as ElementTree

    from tasks.report.figures import render_cached
    from tasks.report.heatmaps import layer_heatmaps

    evil_a, evil_b, metric = "$\\frac{$", "enc.$x$", "dist_$p$"
    scores = [{**r, "metric": metric, "model_b": "$m$", "layer_name_a": evil_a if r["layer_a"] == 0 else r["layer_name_a"],
               "layer_name_b": evil_b if r["layer_b"] == 0 else r["layer_name_b"]}
              for r in score_rows() if r["metric"] == "cka" and (r["model_a"], r["model_b"]) == ("vit-b", "lm-b")]
    best = [{"metric": metric, "model_a": "vit-b", "model_b": "$m$", "score": 0.5, "layer_a": 0, "layer_b": 0}]
    rendered = render_cached("layers-x", "caption", lambda: layer_heatmaps(scores, best, "vit-b", "$m$", [metric]), None,
                             formats=("png", "svg"))
    assert rendered.png.startswith(b"\x89PNG")
    texts = {"".join(t.itertext()) for t in ElementTree.fromstring(rendered.files["svg"]).iter("{http://www.w3.org/2000/svg}text")}
    for written in (evil_a, evil_b, "$m$"):  # tick labels and axis label, each as written
        assert written in texts, (written, sorted(texts))
    assert f"{metric}: best 0.500" in texts and f"at ({evil_a}, {evil_b})" in texts


def _hex(colour) -> str:
    from matplotlib.colors import to_hex

    return to_hex(colour)


def test_cell_numbers_reach_4_5_to_1_on_every_colour_of_the_scale():
    """WCAG 1.4.3 inside the figures: white numbers up to 0.6 of viridis and black above were 3.0:1
    on viridis(0.59) (#22a884, relative luminance 0.30). Each number is black or white, whichever
    contrasts more with its own cell: at least 4.6:1 on every colour of viridis. Checked on a grid
    whose scores run the whole scale, raw, reversed (lower is better) and calibrated."""
    from tests.tasks.report.page import contrast

    levels = [i / 20 for i in range(21)] + [0.59, 0.6, 0.61]
    scores = {(f"vit-{i:02d}", "lm-a"): s for i, s in enumerate(levels)}
    rows = _rows("cka", scores, calibrated_score=None, p_value=0.01)
    for kind, grid, args in (("raw", model_grid(rows, "cka"), (False, None, True)),
                             ("reversed", model_grid(rows, "cka"), (False, None, False)),
                             ("calibrated", model_grid([{**r, "calibrated_score": r["score"]} for r in rows], "cka",
                                                       "calibrated_score"), (True,))):
        figure = model_heatmap(grid, "cka", *args)
        ax = figure.axes[0]
        image = ax.images[0]
        for text in ax.texts:
            column, row = (round(v) for v in text.get_position())
            cell = image.cmap(image.norm(grid.values[row, column]))
            assert contrast(_hex(text.get_color()), _hex(cell)) >= 4.5, (kind, grid.values[row, column], text.get_color())


def test_the_best_box_and_the_chance_mark_stand_out_on_every_colour_of_the_scale():
    """WCAG 1.4.11: the red best-pair box (#ff3030) was 1.04:1 on mid viridis (#21918c, the same
    luminance; a deuteranope sees little hue difference either), and the red word "chance" beside
    the colour bar 3.67:1 on white. The box and the chance line now have a black edge beside the red:
    on every colour of viridis one of the two reaches 3:1; the word is dark red (≥ 4.5:1)."""
    from matplotlib import colormaps

    from tests.tasks.report.page import contrast

    scores = [r for r in score_rows() if r["metric"] == "cka" and (r["model_a"], r["model_b"]) == ("vit-b", "lm-b")]
    values = sorted(r["score"] for r in scores)
    best = [{"metric": "cka", "model_a": "vit-b", "model_b": "lm-b", "score": values[-1], "layer_a": 3, "layer_b": 2,
             "chance_level": (values[0] + values[-1]) / 2}]
    figure = layer_heatmaps(scores, best, "vit-b", "lm-b", ["cka"])
    box, = figure.axes[0].patches
    line, = figure.axes[1].lines
    label, = figure.axes[1].texts
    viridis = [_hex(c) for c in colormaps["viridis"](np.linspace(0, 1, 256))]
    for mark, colour in ((box, box.get_edgecolor()), (line, line.get_color())):
        edges = [_hex(colour)] + [_hex(effect._gc["foreground"]) for effect in mark.get_path_effects() if "foreground" in effect._gc]
        assert len(edges) == 2
        assert min(max(contrast(edge, cell) for edge in edges) for cell in viridis) >= 3.0
    assert contrast(_hex(label.get_color()), "#ffffff") >= 4.5


def test_the_papers_17_by_12_grid_fits_the_page_and_its_numbers_fit_their_cells():
    """The report at the paper's zoo size (session 52): the 17 × 12 grid of long timm names was a
    2,170 px PNG, which the page (``PAGE_WIDTH_PX``) showed at 54 %: its numbers were 6.6 px tall.
    Shown at the page's width its cell numbers must read at 10 px or more and stay inside their cells."""
    from tasks.report.figures import DPI, PAGE_WIDTH_PX

    vision = [f"vit_large_patch14_clip_224.laion2b_ft_in12k_{i:02d}" for i in range(17)]
    language = [f"open_llama_{j:02d}b" for j in range(12)]
    rows = _rows("mutual_knn", {(a, b): 0.05 + 0.02 * i + 0.01 * j for i, a in enumerate(vision) for j, b in enumerate(language)},
                 chance_level=0.1587, calibrated_score=0.5, p_value=0.0476)
    for calibrated in (False, True):
        grid = model_grid(rows, "mutual_knn", "calibrated_score" if calibrated else "score")
        figure = model_heatmap(grid, "mutual_knn", calibrated, None if calibrated else 0.1587)
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        width_px = figure.bbox.width
        shown = min(1.0, PAGE_WIDTH_PX / width_px)
        ax = figure.axes[0]
        texts = [t for t in ax.texts if t.get_text() != "chance "]
        assert len(texts) == 17 * 12
        height_px = max(t.get_fontsize() for t in texts) / 72 * DPI * shown
        assert height_px >= 10, f"cell numbers {height_px:.1f} px tall on the page (figure {width_px:.0f} px wide)"
        for t in texts:
            x, y = t.get_position()
            cell = ax.transData.transform([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)])
            box = t.get_window_extent(renderer)
            assert cell[:, 0].min() <= box.x0 and box.x1 <= cell[:, 0].max(), f"{t.get_text()!r} wider than its cell"
        if not calibrated:  # 0.05 / 0.1587 = 0.315: the ratio without its base, which the title names once
            assert texts[0].get_text() == "0.050\n0.3×" and ax.get_title().endswith("× chance")
