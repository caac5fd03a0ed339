"""q-values of a run's best rows (``tasks.grid_fdr``) against a brute-force Benjamini–Hochberg."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.grid_fdr import add_q_values, bh_fdr
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


@pytest.mark.parametrize("given, message", [
    (np.ma.masked_array([0.01, 0.02, 0.9], mask=[0, 0, 1]), "masked array"),
    (["0.01", "0.5"], "real numbers"), ([True, False], "real numbers"), ([0.01, None], "real numbers"),
])
def test_bh_fdr_refuses_what_it_would_misread(given, message: str) -> None:
    """A masked array's hidden value was counted in m (q 0.03 for 0.02 over the two unmasked
    values), text was parsed and bools read as 0 and 1."""
    with pytest.raises(ValueError, match=message):
        bh_fdr(given)
    assert bh_fdr(np.ma.masked_array([0.01, 0.02, 0.9], mask=[0, 0, 1]).filled(np.nan))[:2].tolist() == [0.02, 0.02]


def test_bh_fdr_accepts_the_ends_of_the_unit_interval_and_refuses_any_value_outside() -> None:
    """p = 0 and p = 1 are p-values (q from the definition: sorted 0, 0.5, 1 over m = 3 give
    min(1, 3 p / rank) = 0, 0.75, 1); one value out of [0, 1] among valid ones is refused."""
    assert bh_fdr([0.0, 1.0, 0.5]).tolist() == [0.0, 1.0, 0.75]
    for bad in ([0.2, -0.1, 0.3], [0.2, 1.5, 0.3], [-0.5, 0.4]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            bh_fdr(bad)
