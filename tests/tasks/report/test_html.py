"""The page's HTML: text from the store (captions, dataset names) shown inert and within its place."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pyarrow as pa

from tasks.report import ReportInput, build_report, html
from tasks.report.neighbours import Example, Neighbour, NeighbourExamples, Sample
from tests.tasks.report.synthetic import best_rows, image_bytes, model_rows, score_rows

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: unclosed, it reverses the rest of its paragraph


def _text(page: str) -> str:
    """The page's text as a browser reads it (entities decoded, no markup)."""
    parts: list[str] = []
    parser = HTMLParser()
    parser.handle_data = parts.append
    parser.feed(page)
    return "".join(parts)


def test_bidirectional_controls_from_the_store_are_shown_escaped_not_obeyed():
    """A dataset name with an unclosed U+202E reversed the rest of the header on the page (N, the
    model pairs and the metrics read backwards); a caption's, the closing quote after it. Each
    explicit bidi control (embeddings, overrides, isolates) is shown as its escape, as on a
    terminal (``tasks.shown_text.for_terminal``); right-to-left letters are shown as they are."""
    run = {"run_id": "r1", "status": "COMPLETED", "dataset_description": f"evil {RLO} name \u2067x\u2069 · שלום"}
    data = ReportInput(run=run, best=pa.Table.from_pylist(best_rows()), scores=pa.Table.from_pylist(score_rows()),
                       models=pa.Table.from_pylist(model_rows()), examples=_examples(f"caption {RLO} #1"))
    page = build_report(data, formats=("png",)).html
    for control in (RLO, "\u2067", "\u2069"):
        assert control not in _text(page) and control not in page
    assert "evil \\u202e name \\u2067x\\u2069 · שלום" in _text(page)
    assert "caption \\u202e #1" in _text(page)


def test_a_long_caption_is_shortened_and_wraps_within_its_cell():
    """A 3,000-character caption (captions may hold 65,536) ran as one line across the examples and
    was copied whole into every image's alt text: it is shown as its start, `` … `` and its end
    (an image's ``(+2 more captions)`` kept), and long words wrap inside the cell."""
    caption = "x" * 3000 + " #7 (+2 more captions)"
    section = html.neighbours_section(_examples(caption))
    assert "x" * 300 not in section
    assert section.count(" … " + "x" * 10) == 1 and "#7 (+2 more captions)" in section  # shown once: no alt text repeats it
    assert all(len(alt) <= html.CAPTION_LIMIT for alt in re.findall(r'alt="([^"]*)"', section))
    assert "overflow-wrap:anywhere" in html.STYLE
    assert html.shortened("short caption") == "short caption"


def _examples(query_text: str) -> NeighbourExamples:
    """One example: query ``q`` (captioned ``query_text``) with neighbours ``n0``-``n4`` under both models."""
    neighbours = [Neighbour(f"n{i}", 0.9 - 0.1 * i, i < 3) for i in range(5)]
    samples = {"q": Sample(query_text, image_bytes(0)), **{f"n{i}": Sample(f"neighbour {i}", image_bytes(i + 1)) for i in range(5)}}
    return NeighbourExamples("vit-s", "lm-a", "block.2", "layer.1", 5, 30, 30, 0.4, [Example("q", neighbours, neighbours)], samples)


def test_the_models_table_names_each_models_pooling_and_feature_version():
    """Two runs of one zoo, one pooled by mean and one by the first token, gave reports whose
    models tables were alike: the table now shows the pooling and the feature version."""
    import re

    from tasks.report.html import models_table

    shown = models_table([
        {"model": "tiny-bert", "modality": "language", "model_id": "org/tiny-bert", "pooling": "cls", "feature_version": "f00d",
         "param_count": 1234, "n_layers": 3, "bits_per_byte": None},
        {"model": "vit", "modality": "vision", "model_id": "org/vit", "param_count": None, "n_layers": 2},
    ])
    header = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", shown)
    assert header == ["model", "modality", "id", "pooling", "feature version", "parameters", "layers", "bits per byte"]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr><td.*?</tr>", shown)]
    assert rows == [["tiny-bert", "language", "org/tiny-bert", "cls", "f00d", "1,234", "3", "–"],
                    ["vit", "vision", "org/vit", "–", "–", "–", "2", "–"]]


def _text_colours_and_backgrounds() -> tuple[dict[str, str], set[str]]:
    from tests.tasks.report.page import css_rules

    colours, backgrounds = {}, {"#fff"}
    for selector, declarations in css_rules(html.STYLE):
        if "color" in declarations and declarations["color"] != "inherit":
            colours[selector] = declarations["color"]
            assert declarations["color"].startswith("#"), (selector, declarations)  # a colour this test can compute
        for key in ("background", "background-color"):
            if key in declarations and declarations[key].startswith("#"):
                backgrounds.add(declarations[key])
    return colours, backgrounds


def test_every_text_colour_of_the_stylesheet_reaches_4_5_to_1_on_every_background():
    """WCAG 2.2 AA 1.4.3, computed from the CSS (relative luminance, sRGB): the neighbours'
    cosine (#777) was 4.48:1 on white and 4.15:1 on a shared neighbour's green; the "k/5 shared"
    badge (#2e9d4b, small bold) 3.48:1. Every text colour is checked against every background the
    stylesheet sets (and white), so no pairing the page can produce is below 4.5:1."""
    from tests.tasks.report.page import contrast

    colours, backgrounds = _text_colours_and_backgrounds()
    assert colours and len(backgrounds) > 1
    low = {(s, c, b): round(contrast(c, b), 2) for s, c in colours.items() for b in backgrounds if contrast(c, b) < 4.5}
    assert not low


def test_the_shared_outline_stands_out_from_white_at_3_to_1():
    """WCAG 1.4.11 non-text contrast: the outline of a neighbour in both lists against the page."""
    from tests.tasks.report.page import contrast, css_rules

    shared = dict(css_rules(html.STYLE))[".nb.shared"]
    assert contrast(shared["border-color"], "#fff") >= 3.0
    assert contrast(shared["border-color"], shared["background"]) >= 3.0


def test_a_print_stylesheet_drops_the_navigation_and_keeps_figures_and_tables_whole():
    from tests.tasks.report.page import css_rules

    printed = {selector.removeprefix("@media print").strip(): d for selector, d in css_rules(html.STYLE)
               if selector.startswith("@media print")}
    assert printed["nav"]["display"] == "none"
    assert printed[".scroll"]["overflow"] == "visible"  # a scroll box would cut a wide table on paper
    assert printed["figure,.example"]["break-inside"] == "avoid"


def test_tables_have_a_caption_scoped_headers_and_their_own_scroll_box():
    from tests.tasks.report.page import read

    _, tables = read(html.table(["a", "b"], [["1", "2"]], caption="what the table holds"))
    (t,) = tables
    assert t.caption == "what the table holds"
    assert [(c.tag, c.attrs.get("scope")) for c in t.rows[0]] == [("th", "col"), ("th", "col")]
    assert t.ancestors[-1] == ("div", {"class": "scroll", "role": "region", "tabindex": "0",
                                       "aria-label": "what the table holds"})


def test_a_neighbours_caption_is_read_once_not_again_as_its_images_alt_text():
    """Each neighbour's and query's image had its caption as alt text, shown again beside it: a
    screen reader read every caption twice. The caption next to the image is its text alternative;
    the image (its alt text, then the cell's text) gives it once."""
    from tests.tasks.report.page import find_all, read

    root, _ = read(html.neighbours_section(_examples("a red ball")))
    (query,) = find_all(root, "div", "query")
    cells = [(query, "a red ball")] + list(zip(find_all(root, "div", "nb"), [f"neighbour {i}" for i in range(5)] * 2, strict=True))
    for cell, caption in cells:
        (image,) = find_all(cell, "img")
        assert "alt" in image.attrs
        assert (image.attrs["alt"] + " " + cell.text).count(caption) == 1, (image.attrs, cell.text)


def test_each_caption_is_shown_in_its_own_direction_and_as_text():
    """A Hebrew or Arabic caption sat in the page's left-to-right paragraph: its trailing '<b>' and
    the closing quote around the query were drawn on the wrong side. Each caption is its own
    isolate whose direction comes from its first strong letter (``dir="auto"``), markup in it is text."""
    from tests.tasks.report.page import find_all, read

    hebrew, arabic = "\u05d7\u05ea\u05d5\u05dc \u05de\u05d7\u05d9\u05d9 <b>9</b> & 'x'", "\u0642\u0637\u0629 \u062a\u0628\u0643\u064a!"
    examples = _examples(hebrew)
    examples.samples["n1"] = Sample(arabic, image_bytes(9))
    root, _ = read(html.neighbours_section(examples))
    (query,) = find_all(root, "div", "query")
    (shown,) = [e for e in find_all(query, "bdi") + find_all(query, "span") if e.text == hebrew]  # the caption alone
    assert shown.attrs.get("dir") == "auto" and not shown.children  # no <b> element: the caption's '<b>' is text
    assert "\u201c" + hebrew + "\u201d" in query.text  # the quotes outside the isolate
    for cell in find_all(root, "div", "nb"):
        (caption,) = [e for e in cell.children if e.tag == "div" and "class" not in e.attrs]
        assert caption.attrs.get("dir") == "auto", caption.attrs
    assert [c.text for c in find_all(root, "div") if c.attrs.get("dir") == "auto"].count(arabic) == 2  # under both models
