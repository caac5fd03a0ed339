"""The figures and the page, from synthetic tables: every figure is produced, and the numbers on
the page (and in the SVG heatmaps) are the input's."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tasks.report import ReportInput, build_report
from tasks.report.build import shown_time
from tasks.report.heatmaps import layer_heatmaps, model_heatmap
from tasks.report.neighbours import Sample, select_examples
from tasks.report.scaling import alignment_vs_quality, alignment_vs_size
from tasks.report.tables import model_grid
from tests.tasks.report.synthetic import (LANGUAGE, LAYERS, METRICS, N, TOPK, VISION, best_rows, clustered_features, image_bytes,
                                          model_rows, score_rows, table)

PNG = b"\x89PNG\r\n\x1a\n"


def _input(ci: bool = False, calibrated: bool = True, examples: bool = True) -> ReportInput:
    neighbours = None
    if examples:
        ids = [f"s{i:02d}" for i in range(N)]
        neighbours = select_examples(ids, clustered_features(seed=0), clustered_features(seed=1), ("vit-b", "lm-c", "block.3", "layer.2"))
        samples = {s: Sample(f"caption <{s}>", image_bytes(int(s[1:])) if s != "s00" else b"not an image") for s in neighbours.sample_ids()}
        neighbours = type(neighbours)(**{**neighbours.__dict__, "samples": samples})
    run = {"run_id": "run-1", "status": "COMPLETED", "started_at": "2026-01-01T01:00:00.123456+01:00", "store": "file:///x", "dataset_version": "ds0"}
    return ReportInput(run, table(best_rows(ci, calibrated)), table(score_rows()), table(model_rows()), neighbours, ["a note from the source"])


@pytest.fixture(scope="module")
def report():
    return build_report(_input(), formats=("png", "svg"))


def test_the_header_shows_the_run_start_to_the_second_in_utc(report):
    assert "started: <code>2026-01-01 00:00:00 UTC</code>" in report.html
    assert shown_time(datetime(2026, 1, 1, 12, 0, 0, 999999, tzinfo=timezone.utc)) == "2026-01-01 12:00:00 UTC"
    assert shown_time("not a time") == "not a time" and shown_time(None) is None


def test_every_figure_is_rendered_and_written(report):
    names = {f.name for f in report.figures}
    expected = {f"model-heatmap-{m}" for m in METRICS} | {f"model-heatmap-{m}-calibrated" for m in METRICS}
    expected |= {f"quality-{m}" for m in METRICS} | {f"size-{m}" for m in METRICS}
    expected |= {f"layers-{a}__{b}" for a in VISION for b in LANGUAGE}
    assert names == expected
    files = report.files()
    assert files["report.html"].startswith(b"<!DOCTYPE html>")
    for f in report.figures:
        assert files[f"figures/{f.name}.png"].startswith(PNG)
        if not f.name.startswith("layers-"):
            assert files[f"figures/{f.name}.svg"].lstrip().startswith(b"<?xml")


def test_page_embeds_every_figure_and_shows_the_input_numbers(report):
    page = report.html
    assert page.count("data:image/png;base64,") == len(report.figures) + _images_shown(report)
    for row in best_rows():
        assert f"{row['score']:.4f}" in page and row["model_a"] in page and row["model_b"] in page
        assert f"{row['calibrated_score']:.3f}" in page
    chance = TOPK / (N - 1)
    assert f"{chance:.4f}" in page and f"{best_rows()[0]['score'] / chance:.1f}× chance" in page
    assert "a note from the source" in page and "no bootstrap confidence intervals" in page
    assert "caption &lt;s" in page and "<s0" not in page  # captions are escaped
    assert 'class="nb shared"' in page and "shared</span>" in page


def _images_shown(report) -> int:
    ex = report.data.examples
    ids = [e.sample_id for e in ex.examples] + [n.sample_id for e in ex.examples for n in e.neighbours_a + e.neighbours_b]
    return sum(1 for i in ids if i != "s00")  # s00's bytes are not an image: shown without one


def test_svg_heatmap_cells_carry_the_scores(report):
    svg = report.figure("model-heatmap-mutual_knn").files["svg"].decode()
    for row in (r for r in best_rows() if r["metric"] == "mutual_knn"):
        assert f"{row['score']:.3f}" in svg
        assert f"{row['score'] / (TOPK / (N - 1)):.1f}× chance" in svg
    assert "chance" in svg


def test_confidence_intervals_are_shown_when_the_store_has_them():
    with_ci = build_report(_input(ci=True, examples=False), formats=("png",), pairs=[])
    row = best_rows(ci=True)[0]
    assert "<th scope=\"col\">CI</th>" in with_ci.html and f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]" in with_ci.html
    assert not any("confidence" in n for n in with_ci.notes)
    assert any("nearest-neighbour" in n for n in with_ci.notes)


def test_without_permutations_or_bits_per_byte_the_page_says_so():
    data = _input(calibrated=False, examples=False)
    models = table([{**m, "bits_per_byte": None} for m in model_rows()])
    report = build_report(ReportInput(data.run, data.best, data.scores, models), formats=("png",), pairs=[("vit-s", "lm-a")])
    names = {f.name for f in report.figures}
    assert not any(n.endswith("-calibrated") or n.startswith("quality-") for n in names)
    assert [n for n in names if n.startswith("layers-")] == ["layers-vit-s__lm-a"]
    assert any("no calibrated scores" in n for n in report.notes) and any("bits per byte" in n for n in report.notes)


def test_figure_functions_on_their_own():
    best, models = best_rows(), model_rows()
    fig = model_heatmap(model_grid(best, "cka"), "cka")
    assert len(fig.axes) == 2  # heatmap and colour bar
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == len(VISION) * len(LANGUAGE) and all("× null" in t for t in texts)
    layers = layer_heatmaps(score_rows(), best, "vit-b", "lm-b", METRICS)
    assert len(layers.axes) == 2 * len(METRICS)
    assert layer_heatmaps(score_rows(), best, "vit-b", "nope", METRICS) is None
    quality = alignment_vs_quality(best, models, "mutual_knn")
    xs = sorted({float(x) for series in quality.axes[0].containers for x in series.lines[0].get_xdata()})
    assert np.allclose(xs, sorted(1 - m["bits_per_byte"] for m in models if m["bits_per_byte"] is not None))
    assert alignment_vs_quality(best, [{**m, "bits_per_byte": None} for m in models], "cka") is None
    size = alignment_vs_size(best, models, "cka")
    assert len(size.axes) == 2 and size.axes[0].get_xscale() == "log"


def test_section_links_point_at_sections(report):
    anchors = re.findall(r'<a href="#([a-z-]+)">', report.html)
    assert anchors and all(f'<section id="{a}">' in report.html for a in anchors)


class _DictCache:
    """A FigureCache in memory that counts what it served and what it was given."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, bytes]] = {}
        self.served: list[str] = []
        self.stored: list[str] = []

    def get(self, digest, formats):
        found = self.files.get(digest)
        if found is None or any(f not in found for f in formats):
            return None
        self.served.append(digest)
        return found

    def put(self, digest, files):
        self.stored.append(digest)
        self.files[digest] = dict(files)


def test_a_rerun_reuses_every_figure_and_redraws_only_what_changed(report):
    cache = _DictCache()
    first = build_report(_input(), formats=("png", "svg"), cache=cache)
    assert not cache.served and len(cache.stored) == len(first.figures)
    assert first.files() == report.files()  # drawing through a cache changes nothing

    again = build_report(_input(), formats=("png", "svg"), cache=cache)
    assert len(cache.served) == len(first.figures) and len(cache.stored) == len(first.figures)
    assert again.html == first.html and again.files() == first.files()

    # one layer score of one pair changes: that pair's layer figure is drawn again, nothing else
    data = _input()
    changed = score_rows()
    target = next(r for r in changed if r["model_a"] == "vit-s" and r["model_b"] == "lm-b" and r["layer_a"] == 0)
    target["score"] += 0.001
    cache.served.clear(), cache.stored.clear()
    build_report(ReportInput(data.run, data.best, table(changed), data.models, data.examples, data.notes), formats=("png", "svg"), cache=cache)
    assert len(cache.stored) == 1 and len(cache.served) == len(first.figures) - 1

    # one best score changes: that metric's heatmaps, scaling figures and that pair's layer figure
    best = best_rows()
    next(r for r in best if r["metric"] == "cka" and r["model_a"] == "vit-b" and r["model_b"] == "lm-a")["score"] += 0.001
    cache.served.clear(), cache.stored.clear()
    build_report(ReportInput(data.run, table(best), data.scores, data.models, data.examples, data.notes),
                           formats=("png", "svg"), cache=cache)
    assert len(cache.stored) == 5  # model-heatmap-cka, its calibrated twin, quality-cka, size-cka, layers-vit-b__lm-a
    assert len(cache.served) == len(first.figures) - 5


def test_a_cache_entry_without_every_format_is_drawn_again():
    cache = _DictCache()
    build_report(_input(examples=False), formats=("png",), cache=cache)
    assert all(set(files) == {"png"} for files in cache.files.values())
    cache.served.clear(), cache.stored.clear()
    with_svg = build_report(_input(examples=False), formats=("png", "svg"), cache=cache)
    layer_figures = [f for f in with_svg.figures if f.name.startswith("layers-")]
    assert len(cache.served) == len(layer_figures)  # PNG only either way
    assert len(cache.stored) == len(with_svg.figures) - len(layer_figures)
    assert all("svg" in f.files for f in with_svg.figures if not f.name.startswith("layers-"))


def test_an_interval_that_excludes_its_estimate_still_draws():
    """A percentile interval need not contain its estimate (3 bootstrap resamples did that in a
    run): matplotlib refused the negative error bar and the whole report was lost."""
    data = _input(ci=True, examples=False)
    rows = [{**r, "ci_low": r["score"] + 0.01, "ci_high": r["score"] + 0.03} for r in best_rows(ci=True)]
    report = build_report(ReportInput(data.run, table(rows), data.scores, data.models), formats=("png",), pairs=[])
    assert {"size-mutual_knn", "quality-cka"} <= {f.name for f in report.figures}


def _with(rows: list[dict], scores: list[dict] | None = None) -> ReportInput:
    data = _input(examples=False)
    return ReportInput(data.run, table(rows), table(score_rows() if scores is None else scores), data.models)


def _points(figure) -> list[tuple[float, float]]:
    """(x, y) of every point of the errorbar series of a figure's axes."""
    return [(float(x), float(y)) for ax in figure.axes for c in ax.containers for x, y in zip(*c.lines[0].get_data())]


def test_a_pair_without_a_finite_score_is_a_dash_and_left_out_of_the_figures():
    """A best row with NULL score and layers (tasks/align_task.py: the engine returned no finite
    score) crashed the table's sort, the heatmap text, the layer figure's box and the scaling
    figures; it is shown as – and skipped."""
    rows = best_rows(ci=True)
    hole = next(r for r in rows if r["metric"] == "cka" and r["model_a"] == "vit-b" and r["model_b"] == "lm-a")
    hole.update(score=None, layer_a=None, layer_b=None, layer_name_a=None, layer_name_b=None, calibrated_score=None,
                p_value=None, ci_low=None, ci_high=None)
    report = build_report(_with(rows), formats=("png",))
    body = re.findall(r'<table class="best">.*?</table>', report.html, re.S)[0]
    cka_rows = [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in body.split("<tr>") if tr.startswith("<td>cka")]
    assert cka_rows[-1][:6] == ["cka", "vit-b", "lm-a", "–", "–", "–"]  # last, every number a dash
    scores = [float(r[3]) for r in cka_rows[:-1]]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(VISION) * len(LANGUAGE) - 1
    assert any("cka: no finite best score for vit-b × lm-a" in n for n in report.notes)
    heatmap = model_heatmap(model_grid(rows, "cka"), "cka")
    assert sorted(t.get_text() for t in heatmap.axes[0].texts).count("–") == 1
    layers = layer_heatmaps(score_rows(), rows, "vit-b", "lm-a", METRICS)
    titles = [ax.get_title() for ax in layers.axes if ax.get_title()]
    assert "cka: no finite best score" in titles and not any(ax.patches for ax in layers.axes if ax.get_title().startswith("cka"))
    finite = [r for r in rows if r["metric"] == "cka" and r["score"] is not None]
    size = report.figure("size-cka")
    assert sorted(y for _, y in _points(alignment_vs_size(rows, model_rows(), "cka"))) == sorted(2 * [r["score"] for r in finite])
    assert size.png.startswith(PNG)


def test_confidence_intervals_are_decided_on_values_not_columns():
    """A run without bootstrap has the CI columns, every value NULL: the table showed a column of
    `[–, –]` and the page never said there were no intervals."""
    empty = [{**r, "ci_low": None, "ci_high": None, "ci_degenerate": None} for r in best_rows()]
    report = build_report(_with(empty), formats=("png",), pairs=[])
    assert "<th scope=\"col\">CI</th>" not in report.html and "[–, –]" not in report.html
    assert any("no bootstrap confidence intervals" in n for n in report.notes)

    some = best_rows(ci=True)
    for r in some[1:]:
        r.update(ci_low=None, ci_high=None)
    report = build_report(_with(some), formats=("png",), pairs=[])
    assert "<th scope=\"col\">CI</th>" in report.html and f"[{some[0]['ci_low']:.4f}, {some[0]['ci_high']:.4f}]" in report.html
    assert "[–, –]" not in report.html and not any("confidence" in n for n in report.notes)


def _bars(figure) -> dict[tuple[float, float], tuple[float, float]]:
    """(x, y) → (bottom, top) of every error bar of a figure (NaN: no bar)."""
    out = {}
    for ax in figure.axes:
        for c in ax.containers:
            xs, ys = c.lines[0].get_data()
            segments = c.lines[2][0].get_segments() if c.lines[2] else [np.full((2, 2), np.nan)] * len(xs)
            for x, y, seg in zip(xs, ys, segments):
                out[(float(x), float(y))] = (float(seg[0][1]), float(seg[1][1])) if len(seg) else (np.nan, np.nan)
    return out


def test_a_degenerate_interval_is_marked_and_draws_no_error_bar():
    """alignment_best.ci_degenerate (the interval brackets the score but does not measure its
    spread, docs/metrics.md) was neither marked in the table nor kept out of the error bars."""
    rows = best_rows(ci=True)
    flagged = next(r for r in rows if r["metric"] == "mutual_knn" and r["model_a"] == "vit-s" and r["model_b"] == "lm-a")
    flagged.update(ci_low=flagged["score"], ci_high=flagged["score"] + 0.0005, ci_degenerate=True)
    for r in rows:
        r.setdefault("ci_degenerate", False)
    report = build_report(_with(rows), formats=("png",), pairs=[])
    assert f"[{flagged['ci_low']:.4f}, {flagged['ci_high']:.4f}]*" in report.html
    assert report.html.count("]*</td>") == 1 and "degenerate interval" in report.html
    assert any("1 bootstrap interval is degenerate" in n for n in report.notes)

    bars = _bars(alignment_vs_quality(rows, model_rows(), "mutual_knn"))
    quality = {m["model"]: 1 - m["bits_per_byte"] for m in model_rows() if m["bits_per_byte"] is not None}
    for r in rows:
        if r["metric"] != "mutual_knn" or r["model_b"] not in quality:
            continue
        bottom, top = bars[(quality[r["model_b"]], r["score"])]
        if r is flagged:
            assert np.isnan(bottom) and np.isnan(top)
        else:
            assert (bottom, top) == pytest.approx((r["ci_low"], r["ci_high"]))


def test_a_degenerate_interval_is_explained_by_every_cause_of_the_flag():
    """ci_degenerate also flags half the subsamples on one value away from the score, or an interval
    that misses it (metrics.bootstrap.subsample_interval): the footnote and the note said only "piled
    up on a bound of the metric", wrong for a cycle_knn of 0.5 whose subsamples half scored 0.917
    (23% on the bound), as an audit's unit: image run stored."""
    rows = best_rows(ci=True)
    flagged = next(r for r in rows if r["metric"] == "mutual_knn" and r["model_a"] == "vit-s" and r["model_b"] == "lm-a")
    flagged.update(ci_low=flagged["score"] - 0.1, ci_high=flagged["score"] + 0.05, ci_degenerate=True)
    for r in rows:
        r.setdefault("ci_degenerate", False)
    report = build_report(_with(rows), formats=("png",), pairs=[])
    [note] = [n for n in report.notes if "bootstrap interval is degenerate" in n]
    for text in (note, report.html):
        assert "on a bound of the metric or on one value away from the score" in text


def test_the_degenerate_flag_changes_the_cached_figures():
    """The figure cache's digest covers the flag: flipping it redraws the scaling figures of that
    metric (which now differ), not another metric's."""
    cache = _DictCache()
    rows = [{**r, "ci_degenerate": False} for r in best_rows(ci=True)]
    first = build_report(_with(rows), formats=("png",), cache=cache, pairs=[])
    next(r for r in rows if r["metric"] == "mutual_knn" and r["model_a"] == "vit-s" and r["model_b"] == "lm-a")["ci_degenerate"] = True
    cache.served.clear(), cache.stored.clear()
    second = build_report(_with(rows), formats=("png",), cache=cache, pairs=[])
    assert len(cache.stored) == 4  # model-heatmap-mutual_knn, its calibrated twin, quality-mutual_knn, size-mutual_knn
    for name in ("quality-mutual_knn", "size-mutual_knn"):
        redrawn = first.figure(name).png != second.figure(name).png
        assert redrawn, f"{name} drew the degenerate interval's error bar"
    for name in ("quality-cka", "size-cka"):
        kept = first.figure(name).png == second.figure(name).png
        assert kept, name


def test_pairs_whose_layer_scores_are_missing_are_named_in_a_note():
    """A damaged scores.parquet (the catalog leaves it out) dropped one pair's layer figure with
    no word on the page."""
    scores = [r for r in score_rows() if (r["model_a"], r["model_b"]) not in {("vit-s", "lm-b"), ("vit-b", "lm-c")}]
    report = build_report(_with(best_rows(), scores), formats=("png",))
    names = {f.name for f in report.figures if f.name.startswith("layers-")}
    assert names == {f"layers-{a}__{b}" for a in VISION for b in LANGUAGE} - {"layers-vit-s__lm-b", "layers-vit-b__lm-c"}
    note = next(n for n in report.notes if n.startswith("no layer × layer scores"))
    assert "vit-b × lm-c, vit-s × lm-b: their layer figures left out" in note
    assert "vit-s × lm-b" in report.html
    complete = build_report(_with(best_rows()), formats=("png",), pairs=[("vit-s", "lm-a")])
    assert not any(n.startswith("no layer × layer scores") for n in complete.notes)


def _pairs_all(kinds: tuple[str, ...] = ("vision", "language")) -> list[dict]:
    """Best rows of a ``pairs: all`` run over the synthetic zoo's models of ``kinds``: the
    cross-modal rows (both kinds) plus each same-modality pair once, scored 0.85 and up."""
    rows = best_rows(ci=True) if kinds == ("vision", "language") else []
    base = best_rows(ci=True)[0]
    for kind in kinds:
        names = sorted(VISION if kind == "vision" else LANGUAGE)
        for x, a in enumerate(names):
            for b in names[x + 1:]:
                for metric in METRICS:
                    score = round(0.85 + 0.001 * len(rows), 6)
                    rows.append({**base, "metric": metric, "model_a": a, "model_b": b, "modality_a": kind, "modality_b": kind,
                                 "score": score, "ci_low": score - 0.01, "ci_high": score + 0.01, "calibrated_score": 0.8})
    return rows


def _svg_text(rendered) -> str:
    return rendered.files["svg"].decode()


def test_pairs_all_draws_vision_by_language_and_each_modality_apart():
    """pairs: all with both modalities drew one grid with a language model among the rows and a
    vision model among the columns (axes 'model A model'), same-modality scores (~0.9) on the
    colour scale of the cross-modal ones (~0.13)."""
    rows = _pairs_all()
    report = build_report(_with(rows), formats=("png", "svg"), pairs=[])
    names = {f.name for f in report.figures if f.name.startswith("model-heatmap-")}
    assert names == {f"model-heatmap-{m}{s}{c}" for m in METRICS for s in ("", "-vision", "-language") for c in ("", "-calibrated")}
    for metric in METRICS:
        cross = _svg_text(report.figure(f"model-heatmap-{metric}"))
        assert "vision model" in cross and "language model" in cross and "model A" not in cross
        for r in rows:
            if r["metric"] == metric:
                shown = f"{r['score']:.3f}" in cross
                assert shown == (r["modality_a"] != r["modality_b"]), (r["model_a"], r["model_b"], r["score"])
        for kind in ("vision", "language"):
            figure = report.figure(f"model-heatmap-{metric}-{kind}")
            text = _svg_text(figure)
            assert f"{kind} model" in text and f"({kind} × {kind})" in figure.caption
            mine = [r for r in rows if r["metric"] == metric and r["modality_a"] == r["modality_b"] == kind]
            assert mine and all(f"{r['score']:.3f}" in text for r in mine)
    # the scaling figures stay those of the cross-modal pairs
    assert sorted(y for _, y in _points(alignment_vs_size(rows, model_rows(), "cka"))) == \
        sorted(2 * [r["score"] for r in rows if r["metric"] == "cka" and r["modality_a"] != r["modality_b"]])
    assert report.figure("size-cka") and not any("vision–language" in n for n in report.notes)


@pytest.mark.parametrize("kind", ["language", "vision"])
def test_a_single_modality_zoo_has_no_scaling_figures_and_says_why(kind):
    """A language-only (or vision-only) zoo showed an empty scaling section, and the notes said
    the quality figure 'has too few points' though no quality figure could be drawn."""
    rows = _pairs_all((kind,))
    data = _input(examples=False)
    names = VISION if kind == "vision" else LANGUAGE
    models = table([m for m in model_rows() if m["model"] in names])
    report = build_report(ReportInput(data.run, table(rows), table([]), models), formats=("png", "svg"))
    assert '<section id="scaling">' not in report.html and 'href="#scaling"' not in report.html
    assert not any(f.name.startswith(("quality-", "size-")) for f in report.figures)
    assert [n for n in report.notes if "scaling" in n or "bits per byte" in n] == [
        "no vision–language model pairs: the scaling figures (alignment against language-model quality and size) are left out"]
    assert {f.name for f in report.figures} >= {f"model-heatmap-{m}" for m in METRICS}
    text = _svg_text(report.figure("model-heatmap-cka"))
    assert f"{kind} model" in text and "model A" not in text
    assert f"({kind} × {kind})" in report.figure("model-heatmap-cka").caption


def test_a_run_without_results_has_no_notes_on_absent_figures():
    """A FAILED run that published nothing said 'no language model has bits per byte' (it has no
    models), 'the scaling figures have no error bars' and 'no layer × layer scores'."""
    data = _input(examples=False)
    empty = pa.table({"metric": pa.array([], pa.string()), "model_a": pa.array([], pa.string()), "model_b": pa.array([], pa.string())})
    report = build_report(ReportInput(data.run, empty, empty, table([]), None, ["run run-1 lists no published alignment"]), formats=("png",))
    assert not report.figures
    assert report.notes == ["run run-1 lists no published alignment", "no alignment scores in this run: no figures",
                            "no nearest-neighbour examples (no model pair aligned in this run)"]


def test_each_heatmap_caption_says_what_its_cells_show(report):
    """Every raw heatmap's caption said 'annotated with × chance', also where the cells read
    '× null' (cka, cknna) or show no ratio (unbiased_cka, chance level 0)."""
    for metric in METRICS:
        figure = report.figure(f"model-heatmap-{metric}")
        cells = _svg_text(figure)
        for basis in ("chance", "null"):
            assert (f"× {basis}" in figure.caption) == (f"× {basis}" in cells), (metric, basis)
    rows = [{**r, "metric": "unbiased_cka", "chance_level": 0.0} for r in best_rows() if r["metric"] == "cka"]
    ucka = build_report(_with(rows), formats=("png", "svg"), pairs=[]).figure("model-heatmap-unbiased_cka")
    assert "× chance" not in ucka.caption and "× null" not in ucka.caption and "no ratio to chance" in ucka.caption
    assert "× chance" not in _svg_text(ucka) and "× null" not in _svg_text(ucka)


def test_pairs_already_stored_when_the_run_began_are_shown_as_reused():
    """A rerun that added a model (``prh run``: "2 aligned in this run, 4 already stored") got a
    page that showed its reused pairs exactly as the ones it computed: nothing said that their rows
    were an earlier run's result. A pair whose version was published before the run began (before
    its first attempt, for a retried run) is marked in the best-scores table and named in a note,
    and the header counts both kinds."""
    earlier = datetime(2026, 1, 1, 0, 10, tzinfo=timezone.utc)  # the run (below) started at 00:20
    later = datetime(2026, 1, 1, 0, 30, tzinfo=timezone.utc)
    best = [{**r, "published_at": earlier if (r["model_a"], r["model_b"]) == (VISION[0], LANGUAGE[0]) else later}
            for r in best_rows()]
    base = _input(examples=False)
    data = ReportInput({**base.run, "started_at": "2026-01-01T00:20:00+00:00"}, table(best), base.scores, base.models)
    page = build_report(data, formats=("png",)).html
    n_pairs = len(VISION) * len(LANGUAGE)
    assert f"model pairs: <code>{n_pairs}: {n_pairs - 1} aligned in this run, 1 already stored</code>" in page
    assert "<th scope=\"col\">aligned</th>" in page
    for r in best:
        pair = (r["model_a"], r["model_b"])
        cell = "already stored, 2026-01-01 00:10:00 UTC" if pair == (VISION[0], LANGUAGE[0]) else "this run"
        assert re.search(rf"<td>{r['metric']}</td><td>{re.escape(pair[0])}</td><td>{re.escape(pair[1])}</td>.*?<td>{cell}</td></tr>", page)
    assert (f"1 of the run&#x27;s {n_pairs} model pairs was already stored when it started (2026-01-01 00:20:00 UTC): aligned by "
            f"an earlier run and reused here, not computed again: {VISION[0]} × {LANGUAGE[0]}") in page
    # a retried run began with its first attempt: the pairs that attempt aligned are its own
    from tasks.report.tables import reused_pairs

    retried = {"started_at": "2026-01-01T00:20:00+00:00", "attempts": '[{"started_at": "2026-01-01T00:05:00+00:00"}]'}
    assert reused_pairs(best, retried) == {}
    assert reused_pairs(best, {"started_at": "2026-01-01T00:20:00+00:00", "attempts": [{"started_at": "2026-01-01T00:05:00Z"}]}) == {}
    # a run that computed every pair: no column, no note; the header counts them
    plain = build_report(ReportInput({**base.run, "started_at": "2026-01-01T00:00:00+00:00"}, table(best), base.scores, base.models),
                         formats=("png",))
    assert "<th scope=\"col\">aligned</th>" not in plain.html and not [n for n in plain.notes if "already stored" in n]
    assert f"model pairs: <code>{n_pairs}: {n_pairs} aligned in this run, 0 already stored</code>" in plain.html


def test_the_reused_count_follows_the_run_record_where_it_has_one():
    """The header and the 'aligned' column were read from publication times alone: a pair aligned
    in this run by a worker whose clock is behind the flow's (``published_at`` before the record's
    ``started_at``) was shown as "already stored ... not computed again", and a pair another run
    published while this one computed it (``prh run`` counts it as already stored) as aligned here.
    The run record's ``aligned`` (what ``prh run``'s closing line counts) decides the header; the
    per-pair marks are shown only where publication times agree with it."""
    n_pairs = len(VISION) * len(LANGUAGE)
    skewed = datetime(2026, 1, 1, 0, 19, tzinfo=timezone.utc)  # a minute before the run's start (00:20)
    meanwhile = datetime(2026, 1, 1, 0, 30, tzinfo=timezone.utc)
    base = _input(examples=False)
    run = {**base.run, "started_at": "2026-01-01T00:20:00+00:00"}
    first = (VISION[0], LANGUAGE[0])
    best = [{**r, "published_at": skewed if (r["model_a"], r["model_b"]) == first else meanwhile} for r in best_rows()]
    # every pair aligned in this run (one of them published by a worker whose clock is behind)
    page = build_report(ReportInput({**run, "aligned": n_pairs}, table(best), base.scores, base.models), formats=("png",))
    assert f"model pairs: <code>{n_pairs}: {n_pairs} aligned in this run, 0 already stored</code>" in page.html
    assert "already stored, " not in page.html and not [n for n in page.notes if "already stored" in n]
    # none aligned in this run: all published meanwhile by another run (the record, as prh run, says so)
    page = build_report(ReportInput({**run, "aligned": 0}, table(best), base.scores, base.models), formats=("png",))
    assert f"model pairs: <code>{n_pairs}: 0 aligned in this run, {n_pairs} already stored</code>" in page.html
    # where the record and the times agree, the pair is named
    page = build_report(ReportInput({**run, "aligned": n_pairs - 1}, table(best), base.scores, base.models), formats=("png",))
    assert f"model pairs: <code>{n_pairs}: {n_pairs - 1} aligned in this run, 1 already stored</code>" in page.html
    assert "already stored, 2026-01-01 00:19:00 UTC" in page.html


def test_the_page_states_how_it_rounds_and_rounds_so(report):
    """The page rounded the catalog's numbers (4 decimals in the table, 3 in the heatmaps, p to 3
    significant digits) without saying so anywhere: an analyst comparing with `prh sql` could not
    tell rounding from a difference. The best-scores section says how each number is rounded, and
    the table and the heatmap cells follow it."""
    page = report.html
    assert ("Shown rounded (the catalog holds every digit): scores, chance levels, null means and interval bounds to 4 "
            "decimals, calibrated scores to 3, p and q to 3 significant digits, ratios to 1 decimal; the heatmaps' cells "
            "and titles show scores and calibrated scores to 3 decimals.") in page
    row = next(r for r in best_rows() if r["metric"] == "mutual_knn")
    chance = TOPK / (N - 1)
    cells = (f"<td class=\"num\">{row['score']:.4f}</td><td>{row['layer_name_a']}</td><td>{row['layer_name_b']}</td>"
             f"<td class=\"num\">{chance:.4f}</td><td class=\"num\">{row['score'] / chance:.1f}× chance</td>"
             f"<td class=\"num\">{row['null_mean']:.4f}</td><td class=\"num\">{row['calibrated_score']:.3f}</td>"
             f"<td class=\"num\">{row['p_value']:.3g}</td>")
    assert cells in page
    svg = report.figure("model-heatmap-mutual_knn").files["svg"].decode()
    assert f"{row['score']:.3f}" in svg and f"{row['score']:.4f}" not in svg


def test_a_causal_lm_with_only_the_pooled_figure_of_older_code_is_named_not_taken_for_no_causal_lm():
    """A store written before the per-caption mean existed holds a causal LM's pooled figure only
    (the ``models`` view shows it as ``bits_per_byte_pooled``, ``bits_per_byte`` null): the report
    of such a run said 'no language model has bits per byte (only causal LMs do)' of a GPT-2."""
    from tasks.report.build import bits_per_byte_notes

    vit = {"model": "random-vit", "modality": "vision", "bits_per_byte": None, "bits_per_byte_pooled": None}
    old_gpt2 = {"model": "random-gpt2", "modality": "language", "bits_per_byte": None, "bits_per_byte_pooled": 2.96}
    legacy = ("random-gpt2 has only the pooled bits per byte of older extraction code (all bits over all bytes, before "
              "the per-caption mean existed: docs/extraction.md), left out of the quality figure")
    assert bits_per_byte_notes([vit, old_gpt2]) == [
        "no language model has the per-caption bits per byte: the quality figure is left out", legacy]
    new_lm = {"model": "lm-a", "modality": "language", "bits_per_byte": 1.2, "bits_per_byte_pooled": 1.19}
    assert bits_per_byte_notes([vit, old_gpt2, new_lm]) == [
        "only lm-a has bits per byte: the quality figure has too few points to show a trend", legacy]
    # a causal LM extracted by current code, and models that are no causal LM, say what they said
    assert bits_per_byte_notes([vit, {**old_gpt2, "bits_per_byte_pooled": None}]) == [
        "no language model has bits per byte (only causal LMs do): the quality figure is left out"]


# Accessibility (WCAG 2.2 AA where it applies to a static page): what a screen-reader user, a
# colour-blind or greyscale reader and a reader on a phone get from the generated page.

def _figure_tables(report) -> dict[str, list]:
    from tests.tasks.report.page import read

    _, tables = read(report.html)
    found: dict[str, list] = {}
    for t in tables:
        if t.figure() is not None:
            found.setdefault(t.figure(), []).append(t)
    return found


def test_every_figure_has_a_data_table_with_every_number_it_shows(report):
    """A heatmap's cells and a scaling figure's points reached a screen-reader user only as the
    figure's caption (its alt text): the layer × layer scores were on the page nowhere else. Each
    figure now carries a data table (closed ``<details>``: no script) with the numbers it draws,
    checked here against the synthetic rows, cell by cell."""
    tables = _figure_tables(report)
    assert set(tables) == {f.name for f in report.figures}
    chance = TOPK / (N - 1)
    for metric in METRICS:
        (raw,) = tables[f"model-heatmap-{metric}"]
        (calibrated,) = tables[f"model-heatmap-{metric}-calibrated"]
        for row in (r for r in best_rows() if r["metric"] == metric):
            ratio = f"{row['score'] / chance:.1f}× chance" if metric == "mutual_knn" else f"{row['score'] / 0.02:.1f}× null"
            assert raw.grid()[(row["model_a"], row["model_b"])] == f"{row['score']:.3f} {ratio}"
            assert calibrated.grid()[(row["model_a"], row["model_b"])] == f"{row['calibrated_score']:.3f} p=0.05"
    for a in VISION:
        for b in LANGUAGE:
            per_metric = {t.caption.split(":")[0]: t for t in tables[f"layers-{a}__{b}"]}
            assert set(per_metric) == set(METRICS)
            for metric, t in per_metric.items():
                cells = t.grid()
                expected = {(r["layer_name_a"], r["layer_name_b"]): r["score"] for r in score_rows()
                            if (r["metric"], r["model_a"], r["model_b"]) == (metric, a, b)}
                assert len(cells) == len(expected)
                for key, score in expected.items():
                    best = key == (f"block.{LAYERS[a] - 1}", f"layer.{LAYERS[b] - 1}")
                    assert cells[key] == f"{score:.3f}" + (" (best)" if best else "")
    quality = {m["model"]: 1 - m["bits_per_byte"] for m in model_rows() if m["bits_per_byte"] is not None}
    params = {m["model"]: m["param_count"] for m in model_rows()}
    for metric in METRICS:
        rows = {(r["model_a"], r["model_b"]): r["score"] for r in best_rows() if r["metric"] == metric}
        (q,) = tables[f"quality-{metric}"]
        shown = {(line[0].text, line[1].text): [c.text for c in line[2:]] for line in q.rows[1:]}
        assert shown == {pair: [f"{quality[pair[1]]:.3f}", f"{s:.4f}"] for pair, s in rows.items() if pair[1] in quality}
        (s,) = tables[f"size-{metric}"]
        shown = {(line[0].text, line[1].text): [c.text for c in line[2:]] for line in s.rows[1:]}
        assert shown == {(v, lm): [f"{params[v]:,}", f"{params[lm]:,}", f"{score:.4f}"] for (v, lm), score in rows.items()}


def test_the_figures_alt_text_points_at_their_data_table(report):
    from tests.tasks.report.page import find_all, read

    root, _ = read(report.html)
    for figure in find_all(root, "figure"):
        (image,) = find_all(figure, "img")
        assert "data table" in image.attrs["alt"]
        assert find_all(figure, "details") and find_all(figure, "summary")


def test_every_table_has_a_caption_and_scoped_header_cells(report):
    from tests.tasks.report.page import read

    _, tables = read(report.html)
    assert len(tables) > len(report.figures)  # the figures' tables and the page's own
    for t in tables:
        assert t.caption, "a table without a caption"
        header = [c for row in t.rows for c in row if c.tag == "th"]
        assert [c.text for c in t.rows[0]] and all(c.tag == "th" for c in t.rows[0])
        assert all(c.attrs.get("scope") in ("col", "row") for c in header)


def test_wide_tables_scroll_in_their_own_box(report):
    """At 320 CSS px the models and best-scores tables made the whole page scroll sideways (905 px
    wide, measured in Chromium): every table now sits in its own keyboard-reachable scroll box."""
    from tasks.report.html import STYLE
    from tests.tasks.report.page import css_rules, read

    _, tables = read(report.html)
    for t in tables:
        tag, attrs = t.ancestors[-1]
        assert tag == "div" and "scroll" in attrs.get("class", "").split(), t.caption
        assert attrs.get("tabindex") == "0" and attrs.get("role") == "region" and attrs.get("aria-label")
    rules = dict(css_rules(STYLE))
    assert rules[".scroll"]["overflow-x"] == "auto"
    assert rules[".row"].get("flex-wrap") == "wrap"  # the 5 neighbours of a row wrap on a phone


def test_the_page_does_not_scroll_sideways_at_320_px(report, tmp_path):
    """The page in Chromium inside a 320 px frame, every data table open: the document is no
    wider than its viewport (wide tables scroll in their own box)."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or "/usr/bin/chromium"
    if not shutil.which(browser):
        pytest.skip("no chromium")
    probe = ("<script>window.addEventListener('load',function(){var d=document.documentElement;"
             "parent.document.title='width '+d.scrollWidth+' of '+d.clientWidth;});</script>")
    page = report.html.replace("<details>", "<details open>").replace("</body>", probe + "</body>")
    (tmp_path / "page.html").write_text(page, encoding="utf-8")
    (tmp_path / "host.html").write_text('<!DOCTYPE html><title>-</title><body style="margin:0">'
                                        '<iframe src="page.html" style="border:0;width:320px;height:600px"></iframe>')
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=5000", "--dump-dom", (tmp_path / "host.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"<title>width (\d+) of (\d+)</title>", dom)
    assert found, dom[:500]
    assert int(found.group(1)) <= int(found.group(2))


def test_a_neighbour_in_both_lists_is_said_in_words_not_only_in_green(report):
    """A shared neighbour was marked only by a green outline: lost to a screen reader, faint in
    greyscale. Each now says so in its text."""
    from tests.tasks.report.page import find_all, read

    root, _ = read(report.html)
    cells = find_all(root, "div", "nb")
    shared = find_all(root, "div", "shared")
    assert shared and len(cells) > 0
    for cell in cells:
        assert ("in both lists" in cell.text) == (cell in shared)
    assert "marked “in both lists”" in report.html


def test_page_structure_language_landmarks_and_headings(report):
    from tests.tasks.report.page import find_all, read

    root, _ = read(report.html)
    (document,) = find_all(root, "html")
    assert document.attrs.get("lang") == "en"
    assert len(find_all(root, "h1")) == 1 and find_all(root, "h2")
    assert not find_all(root, "h4") and not find_all(root, "h5")
    (nav,) = find_all(root, "nav")
    assert nav.attrs.get("aria-label")
    (main,) = find_all(root, "main")
    assert len(find_all(main, "section")) == len(find_all(root, "section"))


def test_abbreviations_are_explained_where_first_used(report):
    """α and N were used and never said; τ and ×null are explained in the best-scores
    introduction, the first place that uses them (the figures' captions come after it)."""
    from tests.tasks.report.page import find_all, read

    root, _ = read(report.html)
    text = " ".join(root.text.split())
    assert text.find("α") == text.find("1−α quantile (α = 0.05;") + len("1−")
    assert "N (samples aligned): 30" in text
    (best,) = [s for s in find_all(root, "section") if s.attrs.get("id") == "best"]
    intro = " ".join(find_all(best, "p")[0].text.split())
    start = text.index(intro)
    for term in ("τ", "×null", "α", "Benjamini–Hochberg q-value"):
        assert start <= text.find(term) < start + len(intro), term


def _browser() -> str:
    import shutil

    browser = shutil.which("chromium") or "/usr/bin/chromium"
    if not shutil.which(browser):
        pytest.skip("no chromium")
    return browser


def _probed(page: str, probe: str, tmp_path, width: int = 320) -> Any:
    """``page`` in headless Chromium inside a ``width`` px wide frame; ``probe``: the body of a
    JavaScript function, run once the page has loaded (after the page's own script), whose result
    comes back through JSON."""
    import html as html_text
    import json
    import subprocess

    script = ("<script>window.addEventListener('load',function(){var r=(function(){" + probe + "})();"
              "parent.document.title='probe '+JSON.stringify(r);});</script>")
    head, tail = page.rsplit("</body>", 1)
    (tmp_path / "page.html").write_text(head + script + "</body>" + tail, encoding="utf-8")
    (tmp_path / "host.html").write_text('<!DOCTYPE html><title>-</title><body style="margin:0">'
                                        f'<iframe src="page.html" style="border:0;width:{width}px;height:600px"></iframe>')
    dom = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                          (tmp_path / "host.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"<title>probe (.*?)</title>", dom, re.S)
    assert found, dom[:500]
    return json.loads(html_text.unescape(found.group(1)))


def _printed_pages(page: str, tmp_path, name: str) -> int:
    """How many sheets Chromium prints ``page`` on (``--print-to-pdf``: its print stylesheet)."""
    import subprocess

    source, pdf = tmp_path / f"{name}.html", tmp_path / f"{name}.pdf"
    source.write_text(page, encoding="utf-8")
    subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                    "--no-pdf-header-footer", f"--print-to-pdf={pdf}", source.as_uri()], capture_output=True, timeout=120)
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", pdf.read_bytes()))


def test_the_figures_alt_text_adds_to_the_caption_rather_than_repeating_it(report):
    """A figure's image had its caption as alt text, and the caption under it: a screen reader
    read it twice. The alt text now says what kind of picture it is and where its numbers are;
    the caption is read once, from the ``<figcaption>``."""
    from tests.tasks.report.page import find_all, read

    root, _ = read(report.html)
    for figure in find_all(root, "figure"):
        (image,) = find_all(figure, "img")
        (caption,) = find_all(figure, "figcaption")
        (details,) = find_all(caption, "details")  # its data table's caption says what the table holds, in its own words
        shown = caption.text.replace(details.text, "")
        rendered = report.figure(figure.attrs["data-figure"])
        assert rendered.caption in shown and rendered.caption not in image.attrs["alt"]
        assert (image.attrs["alt"] + shown).count(rendered.caption) == 1


def test_closed_data_tables_are_printed_without_a_script(report, tmp_path):
    """A print stylesheet could not open a ``<details>``: the closed data tables (every figure's
    numbers) were left off paper. Printed by Chromium with the page's script removed (a reader
    without JavaScript), the closed page takes as many sheets as the page with every table open."""
    without_script = re.sub(r"<script>.*?</script>", "", report.html, flags=re.S)
    assert "<details>" in without_script
    opened = _printed_pages(without_script.replace("<details>", "<details open>"), tmp_path, "opened")
    closed = _printed_pages(without_script, tmp_path, "closed")
    assert opened > 1 and closed == opened


def test_the_print_script_opens_the_closed_tables_and_closes_them_again(report, tmp_path):
    """For a browser whose print stylesheet cannot show a closed ``<details>`` (before
    ``::details-content``), the page's script opens each closed one before printing
    (``beforeprint``) and closes those again after (``afterprint``); one opened by the reader stays open."""
    probe = ("var all=document.querySelectorAll('details');all[0].open=true;"
             "function closed(){return document.querySelectorAll('details:not([open])').length;}"
             "var before=closed();window.dispatchEvent(new Event('beforeprint'));var printing=closed();"
             "window.dispatchEvent(new Event('afterprint'));"
             "return {total:all.length,before:before,printing:printing,after:closed(),first:all[0].open};")
    found = _probed(report.html, probe, tmp_path)
    assert found["total"] > 1 and found["before"] == found["total"] - 1
    assert (found["printing"], found["after"], found["first"]) == (0, found["before"], True)


def test_a_skip_link_comes_first_and_shows_when_focused(report, tmp_path):
    """No way past the header and the section links to the content (WCAG 2.4.1): the first
    focusable element is now a link to ``<main>``, off screen until it has the focus, then shown
    at the top of the page (WCAG 2.4.7)."""
    from tests.tasks.report.page import find_all, read

    root, _ = read(report.html)
    (body,) = find_all(root, "body")
    first = body.children[0]
    (main,) = find_all(root, "main")
    assert first.tag == "a" and first.attrs["href"] == f"#{main.attrs['id']}" and "skip" in first.text.lower()
    probe = ("var link=document.querySelector('a[href],summary,[tabindex]:not([tabindex=\"-1\"])');"
             "function box(){var r=link.getBoundingClientRect();return [r.left,r.top,r.right,r.bottom];}"
             "var before=box();link.focus();"
             "return {href:link.getAttribute('href'),before:before,after:box(),focused:document.activeElement===link,"
             "width:innerWidth,height:innerHeight};")
    found = _probed(report.html, probe, tmp_path)

    def shown(b: list[float]) -> bool:
        return 0 <= b[0] and b[2] <= found["width"] and 0 <= b[1] and b[3] <= found["height"] and b[2] - b[0] > 20 and b[3] - b[1] > 10

    assert found["href"] == f"#{main.attrs['id']}" and found["focused"]
    assert not shown(found["before"]) and shown(found["after"]), found


def test_a_wide_tables_caption_stays_in_view_while_the_table_scrolls(report, tmp_path):
    """On a phone (320 px) a wide table scrolls in its own box, and its caption had scrolled away
    with it: scrolled to its right end, the caption now stays inside the box's visible width."""
    probe = ("var out=[];[].forEach.call(document.querySelectorAll('.scroll'),function(box){"
             "var caption=box.querySelector('caption');if(!caption||box.scrollWidth<=box.clientWidth+1)return;"
             "box.scrollLeft=box.scrollWidth;var b=box.getBoundingClientRect();var range=document.createRange();"
             "range.selectNodeContents(caption);var lines=[].filter.call(range.getClientRects(),function(r){return r.width>0;});"
             "out.push({caption:caption.textContent,scrolled:box.scrollLeft,box:[b.left,b.right],"
             "text:[Math.min.apply(null,lines.map(function(r){return r.left;})),Math.max.apply(null,lines.map(function(r){return r.right;}))]});"
             "});return out;")
    found = _probed(report.html.replace("<details>", "<details open>"), probe, tmp_path)
    captions = {f["caption"] for f in found}
    assert "The run's models" in captions and "Best layer pair of each model pair, per metric, most aligned first" in captions
    for f in found:
        assert f["scrolled"] > 0
        assert f["box"][0] - 0.5 <= f["text"][0] and f["text"][1] <= f["box"][1] + 0.5, f
