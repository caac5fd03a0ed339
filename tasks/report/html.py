"""The report page: one self-contained HTML file (figures and sample images as data: URIs).

The page needs no script. Its one script does two small things: it sets ``data-all-images-loaded``
on ``<body>`` once every ``<img>`` has decoded (``complete && naturalWidth > 0``), so a headless
browser can check that nothing is broken; and it opens the closed data tables (``<details>``) for
printing, in a browser whose print stylesheet cannot (no ``::details-content``), closing them again
after (``beforeprint``, ``afterprint``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection
from typing import Any

import numpy as np

from tasks.grid_fdr import add_q_values
from tasks.report import scaling
from tasks.report.figures import RenderedFigure
from tasks.report.heatmaps import axis_label, cell_text
from tasks.report.images import data_uri, thumbnail_png
from tasks.report.neighbours import Example, Neighbour, NeighbourExamples
from tasks.report.tables import (DEGENERATE_WHY, Grid, best_first, chance_ratio, common_chance, degenerate, higher_is_better,
                                 interval, interval_columns, layer_matrix, number, pooled_bits_only, scored)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;font-size:.9em;overflow-wrap:anywhere}.meta code{background:#f3f3f3;padding:0 .3em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ddd;padding:3px 8px}
th{background:#f6f6f6;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-weight:600;padding:2px 0}
.scroll{overflow-x:auto;max-width:100%;container-type:inline-size}caption>span{position:sticky;left:0;display:inline-block;max-width:100cqw}table.layers td{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:flex-start}
figure{display:table;margin:4px 0 12px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{display:table-caption;caption-side:bottom;font-size:.8em;color:#555}
figcaption details{color:#222;font-size:1.1em;margin-top:2px}figcaption summary{cursor:pointer;color:#555}
figcaption .scroll{width:0;min-width:100%}
nav a{margin-right:1em;display:inline-block}
.skip{position:absolute;left:-999em;top:8px;z-index:1;background:#fff;color:#222;padding:6px 10px;border:2px solid #222;border-radius:4px}
.skip:focus{left:8px}main:focus{outline:none}
.notes li{color:#7a4b00;overflow-wrap:anywhere}.footnote{font-size:.8em;color:#555}
.example{border:1px solid #e2e2e2;border-radius:6px;padding:8px;margin:10px 0}
.example .query{display:flex;flex-wrap:wrap;align-items:center;gap:10px;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start;margin-top:6px}.row .label{width:150px;font-size:.8em;color:#555}
.nb{width:104px;font-size:.72em;text-align:center;border:3px solid transparent;border-radius:4px;padding:2px}
.nb.shared{border-color:#1e7b34;background:#eef9f0}.nb img,.query img{width:96px;height:96px;object-fit:contain;background:#fafafa}
.nb .sim{color:#555}.badge{font-size:.75em;color:#1e7b34;font-weight:600}.nb,.query span{overflow-wrap:anywhere}
.nb .both{color:#1e7b34;font-weight:600}
@media print{nav{display:none}.skip{display:none}body{max-width:none;margin:0;padding:0;color:#000}.scroll{overflow:visible}
figure,.example{break-inside:avoid}table{font-size:.7em}a{color:inherit}details::details-content{content-visibility:visible}}
"""

SCRIPT = """
function prhCheckImages(){var imgs=Array.prototype.slice.call(document.images);
var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;var b=document.body.dataset;
b.imagesTotal=imgs.length;b.imagesLoaded=ok;b.allImagesLoaded=String(ok===imgs.length);}
window.addEventListener('load',prhCheckImages);prhCheckImages();
var prhOpened=[];
window.addEventListener('beforeprint',function(){prhOpened=Array.prototype.filter.call(
document.querySelectorAll('details:not([open])'),function(d){d.open=true;return true;});});
window.addEventListener('afterprint',function(){prhOpened.forEach(function(d){d.open=false;});prhOpened=[];});
"""


#: The explicit bidirectional formatting characters: embeddings, overrides (U+202A-U+202E) and
#: isolates (U+2066-U+2069). Unclosed in text from the store (a dataset name, a caption), a U+202E
#: reversed the rest of its paragraph: the header's N, model pairs and metrics read backwards.
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def escape(text: str) -> str:
    """``text`` as inert HTML text or attribute value: ``&``, ``<``, ``>`` and quotes escaped, and
    each explicit bidi control (:data:`BIDI_CONTROLS`) written as its escape (``\\u202e``), as
    ``tasks.shown_text.for_terminal`` writes it on a terminal; right-to-left letters stay as they are."""
    return html.escape(BIDI_CONTROLS.sub(lambda found: f"\\u{ord(found.group()):04x}", text))


#: Longest caption a neighbour example shows (``shortened``): captions may hold 65,536 characters.
CAPTION_LIMIT = 200
_CAPTION_TAIL = 40


def shortened(text: str, limit: int = CAPTION_LIMIT) -> str:
    """``text`` in at most ``limit`` characters: a longer one as its start, `` … `` and its last 40
    characters (an image's ``(+2 more captions)`` stays). A 3,000-character caption ran across the
    examples as one line and filled every image's alt text."""
    if len(text) <= limit:
        return text
    return text[: limit - _CAPTION_TAIL - 3] + " … " + text[-_CAPTION_TAIL:]


#: The ``id`` of ``<main>``, which the skip link leads to.
CONTENT_ID = "content"


def page(title: str, meta: dict[str, Any], sections: list[str], navigation: str = "") -> str:
    """The whole document: a skip link, a title, the run's facts, the links to the sections
    (``navigation``, :func:`contents`), the sections (HTML fragments) in ``<main>``, the script.

    The skip link is the first thing the keyboard reaches (WCAG 2.4.1): off screen until it has the
    focus, then shown at the top left (``.skip:focus``), it leads past the header and the section
    links to ``<main>`` (``tabindex="-1"``, so that every browser moves the focus there too)."""
    facts = " · ".join(f"{escape(k)}: <code>{escape(str(v))}</code>" for k, v in meta.items() if v not in (None, ""))
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head>\n<body data-all-images-loaded=\"false\">"
        f"<a class=\"skip\" href=\"#{CONTENT_ID}\">Skip to the content</a>\n"
        f"<h1>{escape(title)}</h1>\n<p class=\"meta\">{facts}</p>\n{navigation}\n<main id=\"{CONTENT_ID}\" tabindex=\"-1\">\n{body}\n</main>\n"
        f"<script>{SCRIPT}</script>\n</body></html>\n"
    )


def section(title: str, anchor: str, *parts: str, intro: str = "") -> str:
    """An ``<h2>`` section with an optional introductory paragraph (``intro`` is HTML)."""
    lead = f"<p>{intro}</p>" if intro else ""
    return f"<section id=\"{escape(anchor)}\"><h2>{escape(title)}</h2>{lead}{''.join(parts)}</section>"


def figures(*blocks: str) -> str:
    """Figures side by side, wrapping to the page width."""
    return f"<div class=\"figs\">{''.join(blocks)}</div>"


def contents(entries: list[tuple[str, str]]) -> str:
    """Links to the sections: (anchor, title)."""
    return "<nav aria-label=\"Sections of the report\">" + "".join(f"<a href=\"#{escape(a)}\">{escape(t)}</a>" for a, t in entries) + "</nav>"


#: What kind of picture each figure is (by the start of its name, ``build.FIGURE_FILE``): its alt
#: text, which the caption beside it (``<figcaption>``) completes.
FIGURE_KINDS = (("model-heatmap-", "Heatmap of the model pairs"),
                ("layers-", "Heatmaps of every layer pair, one panel per metric"),
                ("quality-", "Plot of the score against language-model quality, one line per vision model"),
                ("size-", "Plots of the score against the parameter count of each model, one line per partner model"))


def figure(rendered: RenderedFigure, data: str = "") -> str:
    """A figure embedded as a PNG data: URI, with its caption and the name of its files; ``data``:
    the figure's numbers as tables (:func:`grid_table`, :func:`points_table`), shown in a closed
    ``<details>`` under the caption (opened by a click or Enter, no script; printed opened),
    which the image's alt text points at: a screen reader gets every number the figure draws.

    The alt text says what kind of picture it is (:data:`FIGURE_KINDS`) and where its numbers are,
    not the caption again: the ``<figcaption>`` is read with the figure, and a caption repeated as
    alt text was read twice."""
    kind = next((what for start, what in FIGURE_KINDS if rendered.name.startswith(start)), "Figure")
    alt = kind + ("; its numbers are in the data table under the caption" if data else "")
    details = f"<details><summary>Data table</summary>{data}</details>" if data else ""
    return (
        f"<figure data-figure=\"{escape(rendered.name)}\"><img src=\"{data_uri(rendered.png)}\" alt=\"{escape(alt)}\">"
        f"<figcaption>{escape(rendered.caption)} <span class=\"meta\">({escape(rendered.name)}.png)</span>{details}</figcaption></figure>"
    )


def notes(items: list[str]) -> str:
    """What the report could not show, and why."""
    if not items:
        return ""
    return "<ul class=\"notes\">" + "".join(f"<li>{escape(n)}</li>" for n in items) + "</ul>"


def table(header: list[str], body: list[list[str]], numeric: set[int] | None = None, css_class: str = "", caption: str = "",
          row_headers: bool = False) -> str:
    """A plain table; cells are escaped here; columns in ``numeric`` are right-aligned. Header
    cells are scoped (``scope="col"``; with ``row_headers`` each row's first cell is its header,
    ``scope="row"``); ``caption`` says what the table holds. The table sits in its own scroll box
    (``.scroll``, reachable by keyboard, named by the caption), so a wide table scrolls there, not
    the whole page (on a phone at 320 px the best-scores table had made the page 905 px wide). The
    caption stays the table's ``<caption>``, its text held at the box's left edge and wrapped to
    its width (``caption>span``: sticky, at most ``100cqw`` of the box), so that it stays in view
    while the table scrolls under it (it had scrolled away with the table)."""
    numeric = numeric or set()
    head = "".join(f"<th scope=\"col\">{escape(h)}</th>" for h in header)

    def cell(i: int, c: str) -> str:
        if row_headers and i == 0:
            return f"<th scope=\"row\">{escape(c)}</th>"
        return f"<td class=\"num\">{escape(c)}</td>" if i in numeric else f"<td>{escape(c)}</td>"

    lines = ["<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in body]
    cls = f" class=\"{escape(css_class)}\"" if css_class else ""
    named = f"<caption><span>{escape(caption)}</span></caption>" if caption else ""
    return (f"<div class=\"scroll\" role=\"region\" tabindex=\"0\" aria-label=\"{escape(caption or 'table')}\">"
            f"<table{cls}>{named}<thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table></div>")


def _fmt(value: Any, spec: str) -> str:
    v = number(value)
    return "–" if v is None else format(v, spec)


DEGENERATE_FOOTNOTE = (f"* degenerate interval: {DEGENERATE_WHY}; it brackets the score "
                      "but does not measure its spread (ci_degenerate, docs/metrics.md). The scaling figures draw no error bar for it.")


def best_table(best: list[dict[str, Any]], metrics: list[str], reused: dict[tuple[str, str], str] | None = None) -> str:
    """One row per metric × model pair: score, layers, chance, ×chance, null, calibrated, p, q (and
    CI). ``q``: the Benjamini–Hochberg q-value of ``p`` among ``best``'s rows of that metric (the
    run's grid, ``tasks.grid_fdr``; the catalog's ``alignment_fdr``). ``reused``: the pairs the run
    found already stored (``tables.reused_pairs``) -> when they were published, shown as a last
    column ``aligned`` (``this run``, or ``already stored, <time>``); no column without any.

    Rows of each metric are sorted most aligned first (``tables.best_first``: the highest score, the
    lowest for a metric where lower is better, ``tables.higher_is_better``), rows without a finite
    score (NULL score and layers) last, shown as ``–``. The CI column appears when some row has a
    bootstrap interval; a degenerate interval (``ci_degenerate``) is marked ``*`` and explained in
    a footnote under the table.
    """
    ci = interval_columns(best)
    best = add_q_values(best)
    header = ["metric", "model A", "model B", "score", "layer A", "layer B", "chance", "× chance", "null mean", "calibrated", "p",
              "q"]
    if ci:
        header.append("CI")
    if reused:
        header.append("aligned")
    body = []
    marked = False
    for metric in metrics:
        for r in sorted((r for r in best if r["metric"] == metric), key=best_first(higher_is_better(metric))):
            ratio = chance_ratio(r)
            line = [metric, r["model_a"], r["model_b"], _fmt(r["score"], ".4f"), _layer(r, "a"), _layer(r, "b"),
                    _fmt(r.get("chance_level"), ".4f"),
                    "–" if ratio is None else f"{ratio[0]:.1f}× {ratio[1]}", _fmt(r.get("null_mean"), ".4f"),
                    _fmt(r.get("calibrated_score"), ".3f"), _fmt(r.get("p_value"), ".3g"), _fmt(r.get("q_value"), ".3g")]
            if ci:
                bounds = interval(r, ci)
                flag = bounds is not None and degenerate(r)
                marked = marked or flag
                line.append("–" if bounds is None else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]" + ("*" if flag else ""))
            if reused:
                published = reused.get((r["model_a"], r["model_b"]))
                line.append("this run" if published is None else f"already stored, {published}")
            body.append(line)
    footnote = f"<p class=\"footnote\">{escape(DEGENERATE_FOOTNOTE)}</p>" if marked else ""
    numeric = {3, 6, 7, 8, 9, 10, 11} | ({header.index("CI")} if ci else set())
    return table(header, body, numeric=numeric, css_class="best",
                 caption="Best layer pair of each model pair, per metric, most aligned first") + footnote


def _layer(row: dict[str, Any], side: str) -> str:
    """The best layer's name (or index) on ``side`` ``a``/``b``; ``–`` for a row without best layers."""
    name, index = row.get(f"layer_name_{side}"), row.get(f"layer_{side}")
    if name:
        return str(name)
    return "–" if index is None else str(index)


POOLED_MARK = "†"
POOLED_FOOTNOTE = (f"{POOLED_MARK} pooled bits per byte (all bits over all bytes) of a causal LM extracted by older code, which "
                   "stored no per-caption mean (docs/extraction.md, bits per byte): not comparable with the others' per-caption "
                   "means, and left out of the quality figure.")


def models_table(models: list[dict[str, Any]]) -> str:
    """The models of the run: modality, id, pooling and feature version (two runs of one zoo
    under another pooling had the same table), parameters, layers, bits per byte
    (:func:`_bits_per_byte`; a footnote under the table when a pooled figure is shown)."""
    body = [[m["model"], str(m.get("modality") or ""), str(m.get("model_id") or ""), str(m.get("pooling") or "–"),
             str(m.get("feature_version") or "–"),
             "–" if number(m.get("param_count")) is None else f"{int(m['param_count']):,}",
             str(m.get("n_layers") or ""), _bits_per_byte(m)]
            for m in sorted(models, key=lambda m: (str(m.get("modality")), m["model"]))]
    marked = any(line[-1].endswith(POOLED_MARK) for line in body)
    footnote = f"<p class=\"footnote\">{escape(POOLED_FOOTNOTE)}</p>" if marked else ""
    return table(["model", "modality", "id", "pooling", "feature version", "parameters", "layers", "bits per byte"], body,
                 numeric={5, 6, 7}, css_class="models", caption="The run's models") + footnote


def _bits_per_byte(model: dict[str, Any]) -> str:
    """A model's bits per byte: its per-caption mean (``bits_per_byte``); for a causal LM whose
    older extraction code stored only the pooled figure (the ``models`` view's
    ``bits_per_byte_pooled`` with ``bits_per_byte`` null: ``storage.catalog._model_row``) that
    figure, marked :data:`POOLED_MARK`, rather than an empty cell as for a model with no figure at
    all; ``–`` for one without either (not a causal LM)."""
    if pooled_bits_only(model):
        return _fmt(model["bits_per_byte_pooled"], ".3f") + POOLED_MARK
    return _fmt(model.get("bits_per_byte"), ".3f")


def neighbours_section(examples: NeighbourExamples) -> str:
    """Each example: the query, then its k nearest neighbours under model A and under model B;
    neighbours in both lists are outlined green and say so in words (``in both lists``: the
    outline alone was lost to a screen reader and faint in greyscale)."""
    parts = [
        f"<p>{escape(examples.model_a)} at layer <code>{escape(examples.layer_a)}</code> and {escape(examples.model_b)} at layer "
        f"<code>{escape(examples.layer_b)}</code> (the best layer pair); k = {examples.k}, cosine similarity of L2-normalised "
        f"features. Over {examples.n_queries} of {examples.n_samples} "
        f"{'images (each the mean of its captions’ rows, as aligned)' if examples.unit == 'image' else 'samples'} the two lists share "
        f"{examples.mean_overlap:.1%} of their members on average. A neighbour in both lists is outlined green and marked "
        "“in both lists”.</p>"
    ]
    for example in examples.examples:
        parts.append(_example(example, examples))
    return "".join(parts)


def _example(example: Example, examples: NeighbourExamples) -> str:
    query = examples.samples.get(example.sample_id)
    # each caption in its own direction (dir="auto", an isolate): a Hebrew or Arabic caption read
    # left to right in the page's direction, its closing punctuation and the quotes around it on the wrong side
    head = (f"<div class=\"query\">{_image(query)}<span>“<bdi dir=\"auto\">{escape(shortened(query.text if query else example.sample_id))}"
            "</bdi>”</span>"
            f"<span class=\"badge\">{example.overlap}/{examples.k} shared</span></div>")
    rows = [_neighbour_row(examples.model_a, example.neighbours_a, examples), _neighbour_row(examples.model_b, example.neighbours_b, examples)]
    return f"<div class=\"example\" data-sample=\"{escape(example.sample_id)}\">{head}{''.join(rows)}</div>"


def _neighbour_row(model: str, neighbours: list[Neighbour], examples: NeighbourExamples) -> str:
    cells = []
    for n in neighbours:
        sample = examples.samples.get(n.sample_id)
        caption = shortened(sample.text if sample else n.sample_id)
        cls = "nb shared" if n.shared else "nb"
        both = "<div class=\"both\">✓ in both lists</div>" if n.shared else ""
        cells.append(f"<div class=\"{cls}\">{_image(sample)}<div dir=\"auto\">{escape(caption)}</div><div class=\"sim\">cos {n.similarity:.3f}</div>"
                     f"{both}</div>")
    return f"<div class=\"row\"><div class=\"label\">{escape(model)}</div>{''.join(cells)}</div>"


def _image(sample: Any) -> str:
    """A sample's thumbnail with an empty alt text: its caption, shown beside it, is its text
    alternative (the image and its caption are one pair of the dataset), and as alt text it had
    been read twice (WCAG technique H67: an image that adjacent text already describes)."""
    png = thumbnail_png(sample.image) if sample is not None else None
    if png is None:
        return ""
    return f"<img src=\"{data_uri(png)}\" alt=\"\">"


# The figures' numbers, as tables: what a sighted reader takes from a figure's colours, positions
# and annotations, a screen reader gets from these (``figure(rendered, data)``), built from the
# rows the figure is drawn from, never from the image (a cached figure has no matplotlib object).


def grid_table(grid: Grid, metric: str, calibrated: bool = False) -> str:
    """A model heatmap's cells: one row per row model, one column per column model, each cell as
    the figure writes it (``heatmaps.cell_text``: the score and its ratio to chance, or the
    calibrated score and its p-value; ``–`` for a pair without one)."""
    corner = f"{axis_label(grid.row_kind)} \\ {axis_label(grid.column_kind)}"
    body = [[name, *(cell_text(grid.cells[i][j], calibrated).replace("\n", " ") for j in range(len(grid.columns)))]
            for i, name in enumerate(grid.rows)]
    what = "calibrated score and p-value" if calibrated else "best score"
    caption = f"{metric}: {what} per model pair ({axis_label(grid.row_kind)}s as rows, {axis_label(grid.column_kind)}s as columns)"
    return table([corner, *grid.columns], body, numeric=set(range(1, len(grid.columns) + 1)), caption=caption, row_headers=True)


def layer_tables(scores: list[dict[str, Any]], best: list[dict[str, Any]], model_a: str, model_b: str, metrics: list[str],
                 lower_is_better: Collection[str] = ()) -> str:
    """A layer × layer figure's panels: per metric, every layer pair's score to 3 decimals (as the
    panel's title shows the best), ``model_a``'s layers as rows and ``model_b``'s as columns, first
    layer first; the best pair marked ``(best)`` (the figure's box), ``–`` where no score."""
    parts = []
    for metric in metrics:
        names_a, names_b, matrix = layer_matrix(scores, metric, model_a, model_b)
        if not matrix.size:
            continue
        row = next((r for r in best if r["metric"] == metric and r["model_a"] == model_a and r["model_b"] == model_b), None)
        boxed = (int(row["layer_a"]), int(row["layer_b"])) if row is not None and scored(row) else None
        body = [[names_a[i], *(("–" if not np.isfinite(matrix[i, j]) else f"{matrix[i, j]:.3f}") + (" (best)" if boxed == (i, j) else "")
                               for j in range(len(names_b)))] for i in range(len(names_a))]
        chance = common_chance(best, metric)
        caption = (f"{metric}: score of every layer pair, {model_a} layers as rows, {model_b} layers as columns"
                   + ("; lower is better" if metric in lower_is_better else "")
                   + (f"; chance level {chance:.4f}" if chance is not None else ""))
        # right-aligned by the stylesheet (table.layers), not a class per cell: a zoo's layer tables hold ~10^5 cells
        parts.append(table([f"{model_a} \\ {model_b}", *names_b], body, css_class="layers", caption=caption, row_headers=True))
    return "".join(parts)


def points_table(kind: str, best: list[dict[str, Any]], models: list[dict[str, Any]], metric: str) -> str:
    """A scaling figure's points (``kind``: ``quality`` or ``size``): one row per vision–language
    pair drawn, with the x value(s) (1 − bits per byte to 3 decimals, as the models table rounds
    bits per byte; parameter counts whole), the score to 4 decimals and, where the rows have
    bootstrap intervals, the error bar's interval (none for a degenerate one, as drawn)."""
    by_model = {m["model"]: m for m in models}
    points = (scaling.quality_points if kind == "quality" else scaling.size_points)(best, models, metric)
    ci = interval_columns([p[2] for p in points])
    if kind == "quality":
        header = ["vision model", "language model", "language-model quality (1 − bits per byte)"]
    else:
        header = ["vision model", "language model", "vision-model parameters", "language-model parameters"]
    header += ["score (best layer pair)"] + (["error bar (bootstrap CI)"] if ci else [])
    body = []
    for vision, language, row in sorted(points, key=lambda p: (p[0], p[1])):
        if kind == "quality":
            xs = [f"{1.0 - float(by_model[language]['bits_per_byte']):.3f}"]
        else:
            xs = [f"{int(by_model[vision]['param_count']):,}", f"{int(by_model[language]['param_count']):,}"]
        line = [vision, language, *xs, f"{float(row['score']):.4f}"]
        if ci:
            bounds = interval(row, ci)
            line.append("–" if bounds is None else "none (degenerate interval)" if degenerate(row)
                        else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]")
        body.append(line)
    chance = common_chance(best, metric)
    caption = (f"{metric} against {'language-model quality' if kind == 'quality' else 'parameter count'}: one row per "
               "vision–language pair drawn" + (f"; chance level {chance:.4f}" if chance is not None else ""))
    return table(header, body, numeric=set(range(2, len(header))), caption=caption, row_headers=True)
