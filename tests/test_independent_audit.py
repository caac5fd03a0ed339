"""An outside audit of a pipeline run: every number the alignment stage published (each layer
pair's score, the best pair, the permutation null's mean, spread, tau and p-value, the calibrated
score, the chance level, the BH q-values and the bootstrap interval) recomputed in numpy float64
from the stored features and the documented definitions, by ``tests/independent_audit.py``,
which imports no prh computation code.

The auditor's own definitions are held to independent values first: the shared worked cases
(metric_cases.json) and hand-computed statistics. A store with one number changed shows it can fail.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import independent_audit as audit

CASES_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"
if not (CASES_DIR / "metric_cases.json").exists():  # a clone elsewhere: the vendored copy
    CASES_DIR = Path(__file__).resolve().parent / "tasks" / "metrics" / "reference_cases"
CASES = json.loads((CASES_DIR / "metric_cases.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_the_auditors_metrics_give_the_worked_cases(case):
    x, y = np.load(CASES_DIR / case["x"]), np.load(CASES_DIR / case["y"])
    scorer = audit.PairScorer(case["metric"], case["params"])
    lx, ly = (None, None) if scorer.lists([x]) is None else (scorer.lists([x])[0], scorer.lists([y])[0])
    assert scorer.pair(x, y, lx, ly) == pytest.approx(case["expected"], abs=case["tolerance"])


def test_the_auditors_statistics_by_hand():
    # tau: the ceil(0.95 (K+1))-th smallest of {observed} and the null; K = 19: the 19th of 20
    null = np.arange(19) / 100.0
    assert audit.tau_of(0.5, null) == 0.18  # 0 .. 0.18, 0.5: the 19th is 0.18
    assert audit.tau_of(0.05, null) == 0.17  # 0 .. 0.05, 0.05, .. 0.18: the 19th is 0.17
    assert audit.tau_of(0.5, null[:9]) == 0.5  # K = 9: the 10th of 10, the largest
    # Benjamini-Hochberg: p sorted 0.01, 0.03, 0.04, 0.5 over 4 tests: m p / rank 0.04, 0.06, 0.0533, 0.5,
    # then the smallest from each rank up: 0.04, 0.0533, 0.0533, 0.5
    assert audit.bh([0.04, 0.01, 0.5, 0.03]) == pytest.approx([0.16 / 3, 0.04, 0.5, 0.16 / 3])
    # whole-image permutations: rows of one image go together onto an image with as many rows
    groups = [0, 0, 1, 2, 2, 3, 4, 4, 5]
    for perm in audit.draws(len(groups), groups, 20, seed=3):
        assert sorted(perm) == list(range(9))
        moved = {(groups[i], groups[perm[i]]) for i in range(9)}
        assert len({a for a, _ in moved}) == len(moved)  # each image goes to one image
        assert all(groups.count(a) == groups.count(b) for a, b in moved)
        for a, b in moved:  # in row order
            rows_a = [i for i in range(9) if groups[i] == a]
            assert [perm[i] for i in rows_a] == [i for i in range(9) if groups[i] == b]
    # the relabelled lists of y[perm] are those of a fresh search where nothing ties
    rng = np.random.default_rng(0)
    y = audit.l2_rows(rng.normal(size=(12, 5)))
    perm = rng.permutation(12)
    relabelled = np.argsort(perm)[audit.knn_lists(y, 3)[perm]]
    assert (relabelled == audit.knn_lists(y[perm], 3)).all()
    # copies tie at one value and go to the lowest indices
    z = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [0.0, 1.0], [0.6, 0.8]])
    assert audit.knn_lists(z, 2)[0].tolist() == [1, 2] and audit.knn_lists(z, 3)[4].tolist() == [1, 2, 3]


def test_the_auditors_prepare_by_hand():
    # one threshold for a model's layers of one width: the mean over samples of each sample's
    # 0.5-quantile of |x| over all its layers; a vision model's from its blocks (layers 1..) only
    l0 = np.array([[10.0, 10.0], [10.0, 10.0]])
    l1 = np.array([[1.0, 3.0], [2.0, -4.0]])
    l2 = np.array([[5.0, 7.0], [0.0, 6.0]])
    # sample 0: |1 3 5 7| median 4; sample 1: |2 4 0 6| median 3 -> t = 3.5
    out = audit.prepare_model([l0, l1, l2], "vision", 0.5, "model", False)
    expect = [np.clip(z, -3.5, 3.5) for z in (l0, l1, l2)]
    for got, want in zip(out, expect):
        assert got == pytest.approx(want / np.linalg.norm(want, axis=1, keepdims=True))
    # exact: the element at index int(q * numel) of the sorted |x| (0 1 2 3 4 5 6 7 -> index 4: 4)
    assert audit.clamp_threshold([l1, l2], 0.5, True) == 4.0


def _published_q_values(url: str, run_id: str) -> dict:
    from storage.catalog import connect, query  # the catalog view is what is published

    rows = query(connect(url), f"select metric, model_a, model_b, q_value from alignment_fdr where run_id = '{run_id}'").to_pylist()
    return {(r["metric"], r["model_a"], r["model_b"]): r["q_value"] for r in rows}


def _run_id(url: str) -> str:
    (record,) = [json.loads(p.read_text()) for p in (Path(url) / "runs").glob("*.json")]
    return record["run_id"]


def test_every_published_number_of_a_pipeline_run_recomputes(tiny_pipeline_store):
    run_id = _run_id(tiny_pipeline_store)
    report = audit.audit_run(tiny_pipeline_store, run_id, fdr=_published_q_values(tiny_pipeline_store, run_id))
    assert not report.findings, report.summary()
    # everything was compared: 3 x 3 layer pairs of two metrics, and each metric's best row
    assert report.compared["score:mutual_knn"] == report.compared["score:cka"] == 9
    for kind in ("best:mutual_knn", "best:cka", "tau:mutual_knn", "tau:cka", "null_mean:cka", "null_std:cka",
                 "ci_low:cka", "ci_high:mutual_knn", "calibrated:cka"):
        assert report.compared[kind] == 1, kind
    for kind in ("p_value", "q_value", "argmax", "chance_level", "bootstrap", "permutations", "ci_degenerate",
                 "calibrated(stored tau)"):
        assert report.compared[kind] == 2, kind
    assert report.compared["exclusion"] == 2 * 6
    assert report.largest["score:mutual_knn"] == 0.0 and report.largest["score:cka"] < 1e-6


def test_the_audit_names_a_changed_number(tiny_pipeline_store, tmp_path):
    """The same store with one layer-pair score, one best score's tau and one interval bound
    moved by 1e-4 (a float32 difference is ~1e-7): each is a finding, nothing else is."""
    url = str(tmp_path / "store")
    shutil.copytree(tiny_pipeline_store, url)
    run_id = _run_id(url)
    (key,) = json.loads((Path(url) / "runs" / f"{run_id}.json").read_text())["alignment_versions"]

    def nudge(name: str, column: str, row: int) -> None:
        path = Path(url) / key / name
        table = pq.read_table(path)
        values = table.column(column).to_pylist()
        values[row] += 1e-4
        pq.write_table(table.set_column(table.schema.get_field_index(column), column,
                                        pa.array(values, table.schema.field(column).type)), path)

    scores = pq.read_table(Path(url) / key / "scores.parquet").to_pylist()
    cka_row = next(i for i, r in enumerate(scores) if r["metric"] == "cka" and (r["layer_a"], r["layer_b"]) == (1, 1))
    best = pq.read_table(Path(url) / key / "best.parquet").to_pylist()
    knn_row = next(i for i, r in enumerate(best) if r["metric"] == "mutual_knn")
    nudge("scores.parquet", "score", cka_row)
    nudge("best.parquet", "tau", knn_row)
    nudge("best.parquet", "ci_high", 1 - knn_row)
    # (the catalog leaves the changed files out, their sizes no longer those of the manifest:
    # the q-values are the original store's)
    report = audit.audit_run(url, run_id, fdr=_published_q_values(tiny_pipeline_store, run_id))
    found = sorted((f.what, f.where.split("/")[-1]) for f in report.findings)
    assert found == [("ci_high:cka", "cka"), ("score:cka", "cka layers 1x1"), ("tau:mutual_knn", "mutual_knn")], report.summary()
    assert math.isclose(report.largest["tau:mutual_knn"], 1e-4, rel_tol=1e-6)
