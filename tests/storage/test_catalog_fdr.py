"""The ``alignment_fdr`` view: Benjamini–Hochberg q-values over each run's model grid, per
metric, checked against a brute-force BH from its definition."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from storage import layout
from storage.catalog import connect
from storage.store import Store
from tests.storage.catalog_store import DATASET, _schema
from tests.bh_reference import brute_force_bh


def _best_table(version: str, a: str, b: str, p_values: dict[str, float | None]) -> pa.Table:
    rows = []
    for metric, p in p_values.items():
        row = {c: None for c in _schema("alignment_best_all")}
        row.update(alignment_version=version, dataset_version=DATASET, metric=metric, params=json.dumps({"topk": 3}),
                   model_a=a, model_b=b, score=0.5, p_value=p, permutations=None if p is None else 99)
        rows.append(row)
    types = {"layer_a": pa.int32(), "layer_b": pa.int32(), "permutations": pa.int32(), "bootstrap": pa.int32(),
             "n_samples": pa.int32(), "ci_degenerate": pa.bool_()}
    float_columns = {"score", "chance_level", "null_mean", "null_std", "tau", "p_value", "calibrated_score", "ci_low", "ci_high"}
    return pa.table({c: pa.array([r[c] for r in rows], types.get(c, pa.float64() if c in float_columns else pa.string()))
                     for c in _schema("alignment_best_all")})



def test_q_values_are_benjamini_hochberg_over_each_run_and_metric(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    rng = np.random.default_rng(4)
    pairs = [(f"vis{i}", f"lang{j}") for i in range(3) for j in range(4)]  # 12 pairs
    p_knn = [float(v) for v in np.round(rng.uniform(0, 0.2, size=len(pairs)), 2)]  # rounded: ties
    p_knn[5] = float("nan")  # not a test (a custom metric's undefined null)
    p_cka = [float(v) for v in rng.uniform(0, 1, size=len(pairs))]
    keys = []
    for (a, b), pk, pc in zip(pairs, p_knn, p_cka):
        version = f"al-{a}-{b}"
        key = layout.alignment_key(DATASET, a, b, version)
        best = _best_table(version, a, b, {"mutual_knn": pk, "cka": pc, "svcca": None})
        store.publish(key, {layout.BEST_FILE: best}, {"kind": "alignment"})
        keys.append(key)
    runs = {"run-all": keys, "run-part": keys[:5], "run-none": None}
    for run_id, versions in runs.items():
        store.write_json(layout.run_key(run_id), {"run_id": run_id, "status": "COMPLETED", "alignment_versions": versions})

    con = connect(store)
    for run_id, versions in runs.items():
        members = [keys.index(k) for k in versions or []]
        for metric, p in (("mutual_knn", p_knn), ("cka", p_cka)):
            tested = [i for i in members if not math.isnan(p[i])]
            rows = con.execute("select model_a, model_b, p_value, n_tests, q_value from alignment_fdr "
                               "where run_id = ? and metric = ?", [run_id, metric]).fetchall()
            expected = dict(zip(tested, brute_force_bh([p[i] for i in tested])))
            assert len(rows) == len(tested)
            for a, b, p_value, n_tests, q in rows:
                i = pairs.index((a, b))
                assert p_value == p[i] and n_tests == len(tested)
                assert q == pytest.approx(expected[i], rel=1e-12, abs=0)
        assert con.execute("select count(*) from alignment_fdr where run_id = ? and metric = 'svcca'",
                           [run_id]).fetchone() == (0,)  # no p-value: not a test
    # BH is monotone in p within a family, and never below p
    rows = con.execute("select p_value, q_value from alignment_fdr where run_id = 'run-all' and metric = 'cka' "
                       "order by p_value").fetchall()
    assert all(q >= p for p, q in rows) and [q for _, q in rows] == sorted(q for _, q in rows)


def test_an_empty_store_has_the_view_with_its_columns(tmp_path) -> None:
    con = connect(Store(str(tmp_path / "empty")))
    columns = [r[0] for r in con.execute("describe alignment_fdr").fetchall()]
    assert {"run_id", "metric", "model_a", "model_b", "p_value", "q_value", "n_tests"} <= set(columns)
    assert con.execute("select count(*) from alignment_fdr").fetchone() == (0,)


def test_a_run_that_lists_a_version_twice_counts_it_once(tmp_path) -> None:
    """A hand-edited or merged run record listing one key twice made that pair two tests."""
    store = Store(str(tmp_path / "store"))
    keys = []
    for i, p in enumerate([0.01, 0.02, 0.03, 0.04]):
        a, b = f"vis{i}", "lang"
        key = layout.alignment_key(DATASET, a, b, f"al-{i}")
        store.publish(key, {layout.BEST_FILE: _best_table(f"al-{i}", a, b, {"cka": p})}, {"kind": "alignment"})
        keys.append(key)
    store.write_json(layout.run_key("r"), {"run_id": "r", "status": "COMPLETED", "alignment_versions": [keys[0], *keys]})
    rows = connect(store).execute("select model_a, n_tests, q_value from alignment_fdr order by p_rank").fetchall()
    assert [(a, n) for a, n, _ in rows] == [("vis0", 4), ("vis1", 4), ("vis2", 4), ("vis3", 4)]
    assert [q for _, _, q in rows] == pytest.approx(brute_force_bh([0.01, 0.02, 0.03, 0.04]))


def test_an_empty_store_lists_the_alignment_columns_in_the_pipelines_order(tmp_path) -> None:
    """`SELECT *` on an empty store put metric and params before model_a / model_b, on a
    populated one after them (the order of the pipeline's files)."""
    from storage.catalog import _EMPTY_VIEWS
    from tasks.align_task import result_tables
    from tasks.alignment import MetricRequest, PairAlignment

    catalog = {"dataset_version": DATASET, "layer_names": ["l0", "l1"]}
    manifest_a = {"catalog": {**catalog, "model": "vit", "modality": "vision"}}
    manifest_b = {"catalog": {**catalog, "model": "lm", "modality": "language"}}
    result = PairAlignment(MetricRequest("cka"), np.eye(2), 1.0, (0, 0), None)
    scores, best = result_tables([result], manifest_a, manifest_b, "v1", 10)
    for view, table in (("alignment_all", scores), ("alignment_best_all", best)):
        assert [c.split(" ", 1)[0] for c in _EMPTY_VIEWS[view].split(", ")] == table.column_names, view
    con = connect(Store(str(tmp_path / "empty")))
    assert [r[0] for r in con.execute("describe alignment").fetchall()][:6] == [
        "alignment_version", "dataset_version", "model_a", "model_b", "metric", "params"]


def test_a_run_whose_versions_are_not_all_in_the_store_has_no_q_values(tmp_path) -> None:
    """The store hunt: after one of a run's 4 alignment versions was removed (`prh verify
    --remove-damaged`) or left out (a damaged best file), the view computed q over the 3 left
    (n_tests 3, q 0.0196 for 0.0261) without a word. A family with members missing has no q."""
    store = Store(str(tmp_path / "store"))
    keys = []
    for i, p in enumerate([0.0196] * 4):
        a, b = f"vis{i}", "lang"
        key = layout.alignment_key(DATASET, a, b, f"al-{i}")
        store.publish(key, {layout.BEST_FILE: _best_table(f"al-{i}", a, b, {"cka": p})}, {"kind": "alignment"})
        keys.append(key)
    store.write_json(layout.run_key("whole"), {"run_id": "whole", "status": "COMPLETED", "alignment_versions": keys[1:]})
    store.write_json(layout.run_key("r"), {"run_id": "r", "status": "COMPLETED", "alignment_versions": keys})
    assert Store(store.url).unpublish(keys[0])
    rows = connect(store).execute("select run_id, model_a, n_tests, n_missing, q_value from alignment_fdr "
                                  "order by run_id, model_a").fetchall()
    assert rows == [("r", f"vis{i}", 3, 1, None) for i in (1, 2, 3)] + \
        [("whole", f"vis{i}", 3, 0, pytest.approx(0.0196)) for i in (1, 2, 3)]
    store.fs.pipe(store.path(f"{keys[3]}/{layout.BEST_FILE}"), b"PAR1 cut")  # damaged: left out of the view
    rows = connect(store).execute("select run_id, n_missing, q_value from alignment_fdr order by run_id, model_a").fetchall()
    assert rows == [("r", 2, None), ("r", 2, None), ("whole", 1, None), ("whole", 1, None)]
