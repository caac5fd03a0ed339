"""Batched permutation nulls (``Engine.null_matrices``) against recomputation from permuted features.

Calibration never recomputes anything from features: CKA gathers packed kernel triangles for
several permutations at once, CKNNA visits only the mutual-neighbour entries present under each
permutation (``knn_hits``). Every layer pair of every null matrix must equal ``layer_matrix`` on
``y[perm]`` recomputed from scratch, on every code path (dense / sorted-key tables, several
bitmask groups, slot table / binary search, blocks and batches of permutations).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tasks.metrics.calibration as calibration
import tasks.metrics.cknna as cknna_mod
import tasks.metrics.kernel_metrics as kernel_mod
import tasks.metrics.knn_hits as hits_mod
import tasks.metrics.knn_metrics as knn_mod
from tasks.metrics import calibrate, get_metric, layer_matrix
from tasks.metrics.api import encode_pair
from tasks.metrics.engine import Engine
from tasks.metrics.knn_hits import build_list_table, permuted_hits
from tasks.metrics.neighbors import permute_lists
from tasks.metrics.triangle import index_dtype, permuted_positions, row_major_positions, source_positions

from .conftest import layers

N = 90
XS = layers(n=N, widths=(12, 7, 16), seed=31)
YS = layers(n=N, widths=(9, 14), seed=32)

CASES = [
    ("cknna", {"topk": 6}),
    ("cknna", {"topk": 6, "unbiased": False}),
    ("cknna", {"topk": 4, "distance_agnostic": True}),
    ("cknna", {"topk": 2}),
    ("cknna", {"topk": None}),
    ("cka", {}),
    ("cka", {"kernel_metric": "rbf", "rbf_sigma": 0.8}),
    ("unbiased_cka", {}),
    ("cka_rbf_median", {}),
    ("mutual_knn", {"topk": 5}),
    ("jaccard_knn", {"topk": 5}),
    ("cycle_knn", {"topk": 5}),  # default engine path (permute + matrix)
    ("lcs_knn", {"topk": 5}),
    ("edit_distance_knn", {"topk": 5}),
    ("svcca", {"cca_dim": 5}),
    ("procrustes", {}),
    ("linear_regression", {}),
    ("rsa_spearman", {}),
]


def _perms(k: int, seed: int, n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(k)])


def _null(metric: str, params: dict, perms: torch.Tensor, xs=XS, ys=YS) -> np.ndarray:
    spec = get_metric(metric)
    a, b, p, _, _ = encode_pair(spec, xs, ys, params)
    out = spec.engine.null_matrices(a, b, perms, p)
    assert out.dtype == torch.float64 and out.shape == (len(perms), len(xs), len(ys))
    return out.numpy()


def _recomputed(metric: str, params: dict, perms: torch.Tensor, xs=XS, ys=YS) -> np.ndarray:
    return np.stack([layer_matrix(metric, xs, [y[q.numpy()] for y in ys], **params)
                     for q in perms])


@pytest.mark.parametrize(("metric", "params"), CASES)
def test_null_matrices_equal_recomputation(metric: str, params: dict) -> None:
    perms = _perms(5, seed=1)
    np.testing.assert_allclose(_null(metric, params, perms), _recomputed(metric, params, perms),
                               rtol=0, atol=1e-11)


@pytest.mark.parametrize("params", [{"topk": 5}, {"topk": 5, "unbiased": False}])
def test_cknna_fallback_paths(monkeypatch: pytest.MonkeyPatch, params: dict) -> None:
    """Sorted-key table, one layer per bitmask, binary search on the x side, small batches."""
    perms = _perms(7, seed=2)
    want = _recomputed("cknna", params, perms)
    monkeypatch.setattr(hits_mod, "DENSE_TABLE_MAX_BYTES", 0)
    monkeypatch.setattr(hits_mod, "MAX_GROUP", 1)
    monkeypatch.setattr(cknna_mod, "SLOT_TABLE_MAX_ELEMENTS", 0)
    monkeypatch.setattr(cknna_mod, "NULL_ROW_ELEMENTS", 1)  # one permutation per chunk
    np.testing.assert_allclose(_null("cknna", params, perms), want, rtol=0, atol=1e-11)


@pytest.mark.parametrize("slot_table", [True, False])
def test_cknna_permute_encodes_the_permuted_features(monkeypatch: pytest.MonkeyPatch, slot_table: bool) -> None:
    """``CknnaEngine.permute`` (the engine contract's encoding of ``y[perm]``, which the generic
    per-permutation null uses) gives the scores of the permuted features, with the slot table and
    with the sorted lists searched instead (its re-sorted lists were not checked: a sort along the
    wrong axis passed)."""
    perms = _perms(4, seed=5)
    if not slot_table:
        monkeypatch.setattr(cknna_mod, "SLOT_TABLE_MAX_ELEMENTS", 0)
    spec = get_metric("cknna")
    a, b, p, _, _ = encode_pair(spec, XS, YS, {"topk": 6})
    got = Engine.null_matrices(spec.engine, a, b, perms, p).numpy()
    np.testing.assert_allclose(got, _recomputed("cknna", {"topk": 6}, perms), rtol=0, atol=1e-11)


@pytest.mark.parametrize("metric", ["mutual_knn", "jaccard_knn"])
def test_knn_fallback_paths(monkeypatch: pytest.MonkeyPatch, metric: str) -> None:
    perms = _perms(5, seed=8)
    want = _recomputed(metric, {"topk": 6}, perms)
    monkeypatch.setattr(hits_mod, "DENSE_TABLE_MAX_BYTES", 0)
    monkeypatch.setattr(hits_mod, "MAX_GROUP", 2)
    monkeypatch.setattr(knn_mod, "NULL_COUNT_ELEMENTS", 1)
    np.testing.assert_allclose(_null(metric, {"topk": 6}, perms), want, rtol=0, atol=1e-12)


def test_rsa_blocks_and_permutation_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The RSA null gathers the permuted ranks a block of rows at a time for a group of
    permutations (no permuted copy of ``b``): many uneven blocks and groups give the
    recomputed matrices."""
    import tasks.metrics.rsa as rsa_mod

    perms = _perms(7, seed=4)
    want = _recomputed("rsa_spearman", {}, perms)
    monkeypatch.setattr(rsa_mod, "NULL_BLOCK_ELEMENTS", 97)  # one row of pairs (at most N) per block
    monkeypatch.setattr(rsa_mod, "NULL_PERMUTATIONS", 3)  # 3 + 3 + 1
    np.testing.assert_allclose(_null("rsa_spearman", {}, perms), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("metric", ["cka", "unbiased_cka"])
def test_cka_blocks_and_permutation_groups(monkeypatch: pytest.MonkeyPatch, metric: str) -> None:
    perms = _perms(7, seed=3)
    want = _recomputed(metric, {}, perms)
    monkeypatch.setattr(kernel_mod, "NULL_BLOCK_ELEMENTS", 97)  # many uneven blocks
    monkeypatch.setattr(kernel_mod, "NULL_PERMUTATIONS", 3)  # 3 + 3 + 1
    np.testing.assert_allclose(_null(metric, {}, perms), want, rtol=0, atol=1e-11)


def test_source_positions_equal_permuted_positions() -> None:
    n = 37
    perms = _perms(4, seed=10, n=n)
    got = source_positions(perms.T.contiguous().to(index_dtype(n)), 5, 600)
    for b in range(4):
        assert torch.equal(row_major_positions(n, got.device)[got[:, b].long()], permuted_positions(perms[b])[5:600].long())


def test_hits_are_exactly_the_permuted_mask_entries() -> None:
    """``permuted_hits`` = brute-force intersection of x-lists and permuted y-lists."""
    rng = np.random.default_rng(4)
    n, k, la, lb = 40, 4, 5, 3
    idx_a = torch.as_tensor(np.stack([[rng.choice(n, k, replace=False) for _ in range(n)]
                                      for _ in range(la)]))
    idx_b = torch.as_tensor(np.stack([[rng.choice(n, k, replace=False) for _ in range(n)]
                                      for _ in range(lb)]))
    perms = _perms(3, seed=5, n=n)
    invs = torch.argsort(perms, dim=1)
    want = set()
    for s, (perm, inv) in enumerate(zip(perms, invs)):
        moved = permute_lists(idx_b, perm, inv)
        for l in range(la):
            for m in range(lb):
                for i in range(n):
                    for j in set(idx_a[l, i].tolist()) & set(moved[m, i].tolist()):
                        want.add((s, l, m, i, j))
    for group, dense in ((63, 1 << 26), (2, 1 << 26), (63, 0), (2, 0)):
        h = permuted_hits(build_list_table(idx_a, group, dense), idx_b, invs)
        got = list(zip(*(t.tolist() for t in (h.batch, h.layer_a, h.layer_b, h.row, h.col))))
        assert len(got) == len(set(got)) and set(got) == want
        # the y-entry index points at j in the unpermuted list of perm[i]
        u = perms[h.batch, h.row]
        assert torch.equal(invs[h.batch, idx_b.reshape(-1)[h.entry]], h.col)
        assert torch.equal(h.entry // k % n, u)


def test_calibration_batches_keep_the_permutation_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = calibrate("cknna", XS, YS, permutations=10, seed=9, topk=5)
    monkeypatch.setattr(calibration, "PERMUTATION_BATCH", 4)
    again = calibrate("cknna", XS, YS, permutations=10, seed=9, topk=5)
    np.testing.assert_array_equal(ref.null, again.null)
    perms = _perms(10, seed=9)
    want = [_recomputed("cknna", {"topk": 5}, perms[t:t + 1])[0].max() for t in range(10)]
    np.testing.assert_allclose(ref.null, want, rtol=0, atol=1e-11)


@pytest.mark.parametrize(("metric", "params"), [("cknna", {"topk": 10}), ("cka", {}),
                                                ("unbiased_cka", {}), ("mutual_knn", {"topk": 10})])
def test_float32_matches_the_per_permutation_path(metric: str, params: dict) -> None:
    """float32 features, larger N (sparse hits): batched == one permutation at a time."""
    g = torch.Generator().manual_seed(6)
    z = torch.randn(400, 8, generator=g)
    xs = [torch.nn.functional.normalize(z @ torch.randn(8, 32, generator=g)
                                        + torch.randn(400, 32, generator=g), dim=1)
          for _ in range(3)]
    ys = [torch.nn.functional.normalize(z @ torch.randn(8, 24, generator=g)
                                        + 2 * torch.randn(400, 24, generator=g), dim=1)
          for _ in range(2)]
    spec = get_metric(metric)
    a, b, p, _, _ = encode_pair(spec, xs, ys, params)
    perms = _perms(4, seed=7, n=400)
    got = spec.engine.null_matrices(a, b, perms, p)
    want = Engine.null_matrices(spec.engine, a, b, perms, p)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("metric", ["mutual_knn", "cknna"])
def test_a_null_batch_is_bounded_with_topk_too(monkeypatch, metric):
    """The looked-up y-entries of a null batch, (permutations, Lb, N, k), stay within the batch
    budget: it counted permutations x layer pairs x N only, so one layer pair with a large topk
    took a whole batch of 64 permutations (N=5,000, topk=150: 1.4 GB)."""
    budget = 4 * 60 * 30  # elements: 4 permutations of (Lb=1, N=60, k=30) y-entries
    module, name = (knn_mod, "NULL_COUNT_ELEMENTS") if metric == "mutual_knn" else (cknna_mod, "NULL_ROW_ELEMENTS")
    monkeypatch.setattr(module, name, budget)
    sizes = []
    original = permuted_hits

    def spy(table, idx_b, invs, max_hits=None):  # invs None: the observed matrix (one batch)
        sizes.append((1 if invs is None else invs.shape[0]) * idx_b.numel())
        return original(table, idx_b, invs, max_hits)

    monkeypatch.setattr(module, "permuted_hits", spy)
    x, y = layers(60, [8], seed=1), layers(60, [8], seed=2)
    res = calibrate(metric, x, y, permutations=40, seed=0, topk=30)
    assert sizes and max(sizes) <= budget, sizes
    monkeypatch.undo()
    again = calibrate(metric, x, y, permutations=40, seed=0, topk=30)
    np.testing.assert_array_equal(res.null, again.null)  # the batch size changes no count


def _stable_lists(z: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` neighbour lists by the documented rule: inner product descending, then index."""
    g = z @ z.T  # integer-valued features: every product exact, so copies tie bit for bit
    np.fill_diagonal(g, -np.inf)
    return np.argsort(-g, axis=1, kind="stable")[:, :k]


def _mutual_knn(la: np.ndarray, lb: np.ndarray) -> float:
    return sum(len(set(a) & set(b)) for a, b in zip(la, lb)) / la.size


def test_null_draws_relabel_the_stored_lists_where_neighbours_tie() -> None:
    """docs/metrics.md, "Reproducing the stored numbers": a null draw's y lists are model B's
    lists relabelled, ``inv[kNN_y(perm[i])]`` (ties keep the lowest unpermuted index), not a fresh
    search of ``y[perm]``. On rows with copies (an image's captions under ``unit: sample``) the
    two differ; an outside audit that searched afresh was 3.6e-3 off in ``null_mean``."""
    rng = np.random.default_rng(5)
    n, k, n_perm = 36, 4, 12
    x = rng.integers(-3, 4, size=(12, 6)).astype(np.float64)[np.repeat(np.arange(12), 3)]  # 3 copies
    y = rng.integers(-3, 4, size=(n, 5)).astype(np.float64)
    y[1], y[7] = y[4], y[4]  # ties on the permuted side too
    res = calibrate("mutual_knn", [x], [y], permutations=n_perm, seed=0, topk=k)
    lx, ly = _stable_lists(x, k), _stable_lists(y, k)
    relabelled, fresh = [], []
    for perm in _perms(n_perm, seed=0, n=n).numpy():
        inv = np.argsort(perm)
        relabelled.append(_mutual_knn(lx, inv[ly[perm]]))
        fresh.append(_mutual_knn(lx, _stable_lists(y[perm], k)))
    assert res.observed == _mutual_knn(lx, ly)
    np.testing.assert_array_equal(np.asarray(res.null, dtype=np.float64), relabelled)  # exact counts
    assert not np.array_equal(relabelled, fresh)  # the data's ties matter: the recipe must say which
