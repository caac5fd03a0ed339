"""A metric's direction in the report: for a metric registered with ``higher_is_better=False`` the
best pair is the smallest score (the report ranked every metric largest first), and a metric not
registered in the report's process is taken as higher is better, with a note."""

from __future__ import annotations

import re
import uuid

import numpy as np
from matplotlib import colormaps

from tasks.metrics import METRICS, register_metric
from tasks.report import ReportInput, build_report
from tasks.report.heatmaps import CMAP, layer_heatmaps, model_heatmap
from tasks.report.html import best_table
from tasks.report.scaling import alignment_vs_quality
from tasks.report.tables import best_row, direction_notes, higher_is_better, model_grid
from tests.tasks.conftest import paired_distance
from tests.tasks.report.synthetic import LANGUAGE, VISION, best_rows, model_rows, score_rows, table


def _rows(metric: str) -> list[dict]:
    """The synthetic best rows of mutual_knn, renamed to ``metric`` (distinct scores per pair)."""
    return [{**r, "metric": metric, "chance_level": None} for r in best_rows() if r["metric"] == "mutual_knn"]


def _table_pairs(page: str, metric: str) -> list[tuple[str, str]]:
    """(model A, model B) of ``metric``'s rows in the best-scores table, in page order."""
    cells = re.findall(rf"<tr><td>{re.escape(metric)}</td><td>([^<]*)</td><td>([^<]*)</td>", page)
    return [(a, b) for a, b in cells]


def test_the_best_row_follows_the_registered_direction(lower_metric):
    rows = _rows(lower_metric)
    smallest = min(rows, key=lambda r: r["score"])
    largest = max(rows, key=lambda r: r["score"])
    assert smallest is not largest
    assert higher_is_better(lower_metric) is False and higher_is_better("mutual_knn") is True
    assert best_row(rows, lower_metric) is smallest
    assert best_row(_rows("mutual_knn"), "mutual_knn")["score"] == largest["score"]


def test_the_best_table_lists_a_lower_is_better_metric_smallest_first(lower_metric):
    rows = _rows(lower_metric) + [{**_rows(lower_metric)[0], "model_b": "lm-z", "score": None, "layer_a": None, "layer_b": None}]
    page = best_table(rows, [lower_metric])
    expected = [(r["model_a"], r["model_b"]) for r in sorted(_rows(lower_metric), key=lambda r: r["score"])] + [(VISION[0], "lm-z")]
    assert _table_pairs(page, lower_metric) == expected
    higher = best_table(_rows("mutual_knn"), ["mutual_knn"])
    assert _table_pairs(higher, "mutual_knn") == [(r["model_a"], r["model_b"])
                                                   for r in sorted(_rows("mutual_knn"), key=lambda r: -r["score"])]


def test_an_unregistered_metric_is_taken_as_higher_is_better_with_a_note(lower_metric):
    unknown = f"not_registered_{uuid.uuid4().hex[:8]}"
    assert unknown not in METRICS
    assert higher_is_better(unknown) is True
    rows = _rows(unknown)
    assert best_row(rows, unknown)["score"] == max(r["score"] for r in rows)
    notes = direction_notes(["mutual_knn", lower_metric, unknown])
    assert len(notes) == 2
    assert notes[0].startswith(f"{lower_metric}: lower is better") and unknown not in notes[0]
    assert notes[1].startswith(f"{unknown}: not registered in this process") and "higher is better" in notes[1]
    assert direction_notes(["mutual_knn", "cka"]) == []


def test_heatmaps_reverse_the_colour_scale_where_lower_is_better(lower_metric):
    """Brighter is more aligned for every metric: the raw colour map runs the other way."""
    rows = _rows(lower_metric)
    viridis = colormaps[CMAP]
    lower = model_heatmap(model_grid(rows, lower_metric), lower_metric, higher_is_better=False)
    image = lower.axes[0].images[0]
    assert np.allclose(image.cmap(0.0), viridis(1.0)) and np.allclose(image.cmap(1.0), viridis(0.0))
    assert lower.axes[1].get_ylabel() == "lower is better"
    higher = model_heatmap(model_grid(rows, lower_metric), lower_metric)
    assert np.allclose(higher.axes[0].images[0].cmap(0.0), viridis(0.0)) and higher.axes[1].get_ylabel() == ""
    calibrated = model_heatmap(model_grid(rows, lower_metric, "calibrated_score"), lower_metric, True, higher_is_better=False)
    assert np.allclose(calibrated.axes[0].images[0].cmap(1.0), viridis(1.0))  # calibrated: 1 is most aligned for every metric

    scores = [{**r, "metric": lower_metric} for r in score_rows() if r["metric"] == "mutual_knn"]
    figure = layer_heatmaps(scores, rows, VISION[0], LANGUAGE[0], [lower_metric], lower_is_better=[lower_metric])
    assert np.allclose(figure.axes[0].images[0].cmap(0.0), viridis(1.0))


def test_a_lower_is_better_metric_gets_no_ratio_and_a_colour_scale_over_its_scores(lower_metric):
    """A distance ÷ its null read 0.9× for the best pair beside every other metric's "larger is
    more aligned" ratio; and its colour scale was pinned at 0, so distances of 1.26-1.29 were one
    colour."""
    from tasks.report.heatmaps import colour_norm
    from tasks.report.tables import chance_ratio

    row = {**_rows(lower_metric)[0], "score": 1.26, "null_mean": 1.34, "null_std": 0.01}
    assert chance_ratio(row) is None and chance_ratio({**row, "metric": "cka"}) is not None
    values = np.array([[1.264, 1.291], [1.27, np.nan]])
    norm = colour_norm(values, calibrated=False, higher_is_better=False)
    assert (norm.vmin, norm.vmax) == (1.264, 1.291)
    assert colour_norm(values, calibrated=False).vmin == 0.0  # a similarity: 0 is no alignment, the scale starts there
    assert (colour_norm(values, False, chance=1.34, higher_is_better=False).vmax,
            colour_norm(np.full((1, 1), 1.27), False, higher_is_better=False).vmax) == (1.34, 2.27)
    # the plugin hunt: an unbounded metric's calibrated scores (score - tau, its own units) of 3.9
    # and 389 were one colour on the fixed [0, 1] scale; bounded metrics keep it
    assert (colour_norm(np.array([[3.9, 389.0]]), calibrated=True).vmax, colour_norm(np.array([[0.2, np.nan]]), True).vmax) == (389.0, 1.0)
    figure = model_heatmap(model_grid([{**r, "null_mean": 1.3} for r in _rows(lower_metric)], lower_metric), lower_metric,
                           higher_is_better=False)
    assert not any("×" in t.get_text() for t in figure.axes[0].texts)


def test_scaling_axes_say_lower_is_better(lower_metric):
    rows, models = _rows(lower_metric), model_rows()
    assert alignment_vs_quality(rows, models, lower_metric, higher_is_better=False).axes[0].get_ylabel() == \
        f"{lower_metric} (best layer pair, lower is better)"
    assert alignment_vs_quality(rows, models, lower_metric).axes[0].get_ylabel() == f"{lower_metric} (best layer pair)"


class _DictCache:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, bytes]] = {}
        self.hits = 0

    def get(self, digest: str, formats: tuple[str, ...]) -> dict[str, bytes] | None:
        found = self.files.get(digest)
        self.hits += found is not None
        return found

    def put(self, digest: str, files: dict[str, bytes]) -> None:
        self.files[digest] = files


def _input(metric: str) -> ReportInput:
    scores = [{**r, "metric": metric} for r in score_rows() if r["metric"] == "mutual_knn"]
    run = {"run_id": "run-1", "status": "COMPLETED", "dataset_version": "ds0"}
    return ReportInput(run, table(_rows(metric)), table(scores), table(model_rows()))


def test_the_report_of_a_lower_is_better_metric(lower_metric):
    """Table order, note and captions; a figure cached while the metric was registered the other
    way round is drawn again (the direction is part of what a figure is keyed by)."""
    cache = _DictCache()
    report = build_report(_input(lower_metric), formats=("png",), cache=cache)
    expected = [(r["model_a"], r["model_b"]) for r in sorted(_rows(lower_metric), key=lambda r: r["score"])]
    assert _table_pairs(report.html, lower_metric) == expected
    assert any(n.startswith(f"{lower_metric}: lower is better") for n in report.notes)
    assert report.figure(f"model-heatmap-{lower_metric}").caption.endswith("; lower is better")
    assert report.figure(f"quality-{lower_metric}").caption.endswith("; lower is better")
    assert not report.figure(f"model-heatmap-{lower_metric}-calibrated").caption.endswith("lower is better")

    METRICS._specs.pop(lower_metric)
    register_metric(lower_metric, paired_distance, bounds=(0.0, float("inf")), higher_is_better=True, symmetric=True)
    cache.hits = 0
    again = build_report(_input(lower_metric), formats=("png",), cache=cache)
    assert _table_pairs(again.html, lower_metric) == expected[::-1]
    assert not any("lower is better" in n for n in again.notes)
    assert again.figure(f"model-heatmap-{lower_metric}").png != report.figure(f"model-heatmap-{lower_metric}").png
    assert cache.hits == 1  # only the calibrated heatmap does not depend on the direction: it alone is reused
