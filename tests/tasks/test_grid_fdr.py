"""q-values of a run's best rows (``tasks.grid_fdr``) against a brute-force Benjamini–Hochberg."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.grid_fdr import add_q_values
from tests.bh_reference import brute_force_bh



def test_one_family_per_metric_and_params_and_untested_rows_left_out() -> None:
    rng = np.random.default_rng(2)
    best = []
    for metric, params in (("mutual_knn", '{"topk": 10}'), ("mutual_knn", '{"topk": 5}'), ("cka", "{}")):
        for i in range(7):
            p = float(np.round(rng.uniform(0, 0.3), 2))  # ties
            best.append({"metric": metric, "params": params, "model_a": f"v{i}", "p_value": p})
    best.append({"metric": "cka", "params": "{}", "model_a": "none", "p_value": None})
    best.append({"metric": "cka", "params": "{}", "model_a": "nan", "p_value": float("nan")})
    got = add_q_values(best)
    assert [r["model_a"] for r in got] == [r["model_a"] for r in best] and "q_value" not in best[0]
    for metric, params in (("mutual_knn", '{"topk": 10}'), ("mutual_knn", '{"topk": 5}'), ("cka", "{}")):
        rows = [r for r in got if (r["metric"], r["params"]) == (metric, params) and r["model_a"] not in ("none", "nan")]
        expected = brute_force_bh([r["p_value"] for r in rows])
        assert [r["q_value"] for r in rows] == pytest.approx(expected, rel=1e-12)
    assert got[-2]["q_value"] is None and got[-1]["q_value"] is None
