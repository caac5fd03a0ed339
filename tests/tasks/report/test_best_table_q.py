"""The report's best table shows each pair's Benjamini–Hochberg q-value among the run's pairs of
its metric (tasks.grid_fdr), beside p."""

from __future__ import annotations

import re

import pytest

from tasks.report.html import best_table
from tests.bh_reference import brute_force_bh



def test_q_column_is_benjamini_hochberg_per_metric() -> None:
    p = {"mutual_knn": [0.01, 0.04, 0.03, 0.5], "cka": [0.2, 0.002, None]}
    best = [{"metric": metric, "model_a": f"v{i}", "model_b": "lm", "score": 0.5 - i / 100, "p_value": value,
             "params": "{}", "layer_a": 1, "layer_b": 2}
            for metric, values in p.items() for i, value in enumerate(values)]
    page = best_table(best, ["mutual_knn", "cka"])
    assert re.search(r"<th[^>]*>p</th>\s*<th[^>]*>q</th>", page)
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.DOTALL)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL) for row in rows]
    shown = {(c[0], c[1]): c[11] for c in cells}
    for metric, values in p.items():
        tested = [(i, v) for i, v in enumerate(values) if v is not None]
        for (i, _), q in zip(tested, brute_force_bh([v for _, v in tested])):
            assert float(shown[(metric, f"v{i}")]) == pytest.approx(q, rel=1e-3)
    assert shown[("cka", "v2")] == "–"
