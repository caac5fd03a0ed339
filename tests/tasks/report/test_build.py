"""The figures and the page, from synthetic tables: every figure is produced, and the numbers on
the page (and in the SVG heatmaps) are the input's."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tasks.report import ReportInput, build_report
from tasks.report.heatmaps import layer_heatmaps, model_heatmap
from tasks.report.neighbours import Sample, select_examples
from tasks.report.scaling import alignment_vs_quality, alignment_vs_size
from tasks.report.tables import model_grid
from tests.tasks.report.synthetic import (LANGUAGE, METRICS, N, TOPK, VISION, best_rows, clustered_features, image_bytes,
                                          model_rows, score_rows, table)

PNG = b"\x89PNG\r\n\x1a\n"


def _input(ci: bool = False, calibrated: bool = True, examples: bool = True) -> ReportInput:
    neighbours = None
    if examples:
        ids = [f"s{i:02d}" for i in range(N)]
        neighbours = select_examples(ids, clustered_features(seed=0), clustered_features(seed=1), ("vit-b", "lm-c", "block.3", "layer.2"))
        samples = {s: Sample(f"caption <{s}>", image_bytes(int(s[1:])) if s != "s00" else b"not an image") for s in neighbours.sample_ids()}
        neighbours = type(neighbours)(**{**neighbours.__dict__, "samples": samples})
    run = {"run_id": "run-1", "status": "COMPLETED", "started_at": "2026-01-01T00:00:00+00:00", "store": "file:///x", "dataset_version": "ds0"}
    return ReportInput(run, table(best_rows(ci, calibrated)), table(score_rows()), table(model_rows()), neighbours, ["a note from the source"])


@pytest.fixture(scope="module")
def report():
    return build_report(_input(), formats=("png", "svg"))


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
    assert "<th>CI</th>" in with_ci.html and f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]" in with_ci.html
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
