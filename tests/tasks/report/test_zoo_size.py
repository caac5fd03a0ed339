"""The report at the paper's zoo size (17 vision × 12 language models, 12-48 layers each, session 52):
its page had been 58 MB, 46 MB of it the 204 layer figures as 32-bit PNGs. Figures are now indexed PNGs
of 256 colours, as faithful to what matplotlib drew as the eye can tell."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tasks.report.figures import palette_png, to_png
from tasks.report.heatmaps import layer_heatmaps

METRICS = ("mutual_knn", "cka", "cknna")


def _deep_pair(la: int = 40, lb: int = 48) -> tuple[list[dict], list[dict]]:
    """Layer rows of one pair of deep models (a DINOv2-giant's 40 blocks × a 48-layer LM), best rows."""
    scores, best = [], []
    for m, metric in enumerate(METRICS):
        rng = np.random.default_rng(m)
        surface = 0.1 + 0.3 * np.outer(np.linspace(0, 1, la), np.linspace(0, 1, lb)) + rng.normal(0, 0.01, (la, lb))
        scores += [{"metric": metric, "model_a": "vit_giant_patch14_dinov2.lvd142m", "model_b": "llama-65b", "layer_a": i, "layer_b": j,
                    "layer_name_a": f"blocks.{i}", "layer_name_b": f"model.layers.{j}", "score": float(surface[i, j])}
                   for i in range(la) for j in range(lb)]
        i, j = np.unravel_index(np.argmax(surface), surface.shape)
        best.append({"metric": metric, "model_a": "vit_giant_patch14_dinov2.lvd142m", "model_b": "llama-65b", "layer_a": int(i),
                     "layer_b": int(j), "score": float(surface[i, j]), "chance_level": 0.16 if metric == "mutual_knn" else None})
    return scores, best


def _rgb(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_deep_pairs_layer_figure_is_an_indexed_png_a_third_the_size_with_every_pixel_within_16_levels():
    scores, best = _deep_pair()
    figure = layer_heatmaps(scores, best, "vit_giant_patch14_dinov2.lvd142m", "llama-65b", list(METRICS))
    with Image.open(io.BytesIO(to_png(figure))) as image:
        assert image.mode == "P"
    drawn = io.BytesIO()
    figure.savefig(drawn, format="png", dpi=figure.dpi)  # what matplotlib draws: 32-bit RGBA
    png = palette_png(drawn.getvalue())  # what to_png does with it (two draws of one figure differ a little)
    assert len(png) <= 0.4 * len(drawn.getvalue()), f"{len(png):,} bytes against {len(drawn.getvalue()):,} as drawn"
    original, shown = _rgb(drawn.getvalue()), _rgb(png)
    assert original.shape == shown.shape
    assert np.abs(original - shown).max() <= 16


def test_a_png_with_transparency_or_that_would_grow_is_kept_as_it_is():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    buffer = io.BytesIO()
    clear.save(buffer, format="PNG")
    assert palette_png(buffer.getvalue()) == buffer.getvalue()
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tiny, format="PNG")
    assert len(palette_png(tiny.getvalue())) <= len(tiny.getvalue())
    assert _rgb(palette_png(tiny.getvalue()))[0, 0].tolist() == [1, 2, 3]


def test_the_page_width_the_figures_are_sized_for_is_the_stylesheets():
    """``PAGE_WIDTH_PX`` (what a model heatmap fits) is the page's body width less its padding."""
    import re

    from tasks.report.figures import PAGE_WIDTH_PX
    from tasks.report.html import STYLE

    body = re.search(r"body\{[^}]*\}", STYLE).group()
    width, padding = re.search(r"max-width:(\d+)px", body).group(1), re.search(r"padding:0 (\d+)px", body).group(1)
    assert PAGE_WIDTH_PX == int(width) - 2 * int(padding)
