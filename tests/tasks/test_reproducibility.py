"""The alignment's numbers do not depend on torch's thread count, and exactly tied layer pairs
report the same best pair everywhere (docs/metrics.md, "Model-pair max")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.alignment import MetricRequest, align_layers

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh process per thread count (torch's pool is sized once per process): the prepared
# layers of a seeded Gaussian model pair at N = 300 (N^2 above torch's 32,768-element grain, where
# a reduction is split between threads), four metrics, a permutation null and subsamples.
_SCRIPT = """
import sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from tasks.alignment import MetricRequest, align_layers, prepare_layers
g = np.random.default_rng(5)
n = 300
z = g.standard_normal((n, 8))
def model(widths):
    return prepare_layers([(z @ g.standard_normal((8, w)) + s * g.standard_normal((n, w))).astype(np.float32) for w, s in widths])
xs, ys = model(((48, 2.0), (96, 1.0), (96, 0.5))), model(((32, 3.0), (96, 0.7)))
requests = [MetricRequest("mutual_knn", {"topk": 7}), MetricRequest("cka", {"kernel_metric": "ip"}),
            MetricRequest("unbiased_cka", {}), MetricRequest("cknna", {"topk": 7})]
out = {}
for r in align_layers(xs, ys, requests, permutations=9, seed=3, bootstrap=8):
    out[r.metric.name + ".matrix"] = r.matrix
    out[r.metric.name + ".layers"] = np.array(r.best_layers)
    for f in ("best", "null_mean", "null_std", "tau", "p_value", "calibrated", "ci_low", "ci_high"):
        out[r.metric.name + "." + f] = np.array(getattr(r, f), dtype=np.float64)
np.savez(sys.argv[2], **out)
"""


def test_one_or_two_torch_threads_give_bit_identical_alignments(tmp_path) -> None:
    results = []
    for threads in (1, 2):
        out = tmp_path / f"threads-{threads}.npz"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", _SCRIPT, str(threads), str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(dict(np.load(out)))
    one, two = results
    assert one.keys() == two.keys() and len(one) == 4 * 10
    for key in one:
        assert np.isfinite(one[key]).all(), key  # every number computed (a None would be NaN here)
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def _mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Mutual k-NN by a float64 argsort, self excluded."""
    def lists(z):
        g = z.astype(np.float64) @ z.astype(np.float64).T
        np.fill_diagonal(g, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in g]
    return float(np.mean([len(a & b) / k for a, b in zip(lists(x), lists(y))]))


def test_exactly_tied_layer_pairs_report_the_lowest_layer_a_then_the_lowest_layer_b() -> None:
    """Model A's layers 1 and 2 are the same array, and so are model B's layers 0 and 2: the
    best score is held by four layer pairs, of which (1, 0) is first in row-major order."""
    g = np.random.default_rng(11)
    n, k = 60, 5
    z = g.standard_normal((n, 4))
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    shared = unit(z @ g.standard_normal((4, 16)) + 0.1 * g.standard_normal((n, 16)))
    other = unit(g.standard_normal((n, 16)))
    partner = unit(z @ g.standard_normal((4, 12)) + 0.1 * g.standard_normal((n, 12)))
    xs = [other, shared, shared.copy()]
    ys = [partner, unit(g.standard_normal((n, 12))), partner.copy()]
    reference = np.array([[_mutual_knn(x, y, k) for y in ys] for x in xs])
    top = reference.max()
    assert {(i, j) for i, j in zip(*np.nonzero(reference == top))} == {(1, 0), (1, 2), (2, 0), (2, 2)}
    (result,) = align_layers(xs, ys, [MetricRequest("mutual_knn", {"topk": k})])
    np.testing.assert_allclose(result.matrix, reference, rtol=0, atol=1e-12)
    assert result.best == pytest.approx(top, abs=1e-12) and result.best_layers == (1, 0)
    (cka,) = align_layers(xs, ys, [MetricRequest("cka", {"kernel_metric": "ip"})])
    assert cka.matrix[1, 0] == cka.matrix[2, 2] and cka.best_layers == (1, 0)
