"""``tasks.metrics.hsic``: the refusal of a layer whose self-HSIC is 0 up to rounding reads right
for every estimator it names."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tasks.metrics import score
from tasks.metrics.hsic import check_self_hsic


@pytest.mark.parametrize("what, article", [
    ("unbiased self-HSIC", "an"),
    ("unbiased masked self-similarity sim(K, K)", "an"),
    ("biased masked self-similarity sim(K, K)", "a"),
    ("biased self-HSIC", "a"),
    ("HSIC of the layer with itself", "an"),
    ("self-HSIC", "a"),
])
def test_the_refusal_takes_the_article_of_what_it_names(what: str, article: str) -> None:
    """It read "layer 0 has an biased masked self-similarity" (the article was fixed to "an")."""
    with pytest.raises(ValueError, match=f"^layer 1 has {article} {re.escape(what)} of 0,"):
        check_self_hsic(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), 10, torch.float64, what)


def test_cknna_biased_refusal_reads_a_biased() -> None:
    """The case that showed it: a distance-agnostic biased CKNNA whose masked self-similarity
    is exactly 0 on this integer layer (found by search over small integer layers)."""
    x = np.array([[-1.0], [-2.0], [-1.0], [0.0], [-2.0], [-2.0], [-2.0], [-1.0]])
    y = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(ValueError, match=r"^x: layer 0 has a biased masked self-similarity sim\(K, K\) of 0,"):
        score("cknna", x, y, topk=2, unbiased=False, distance_agnostic=True)


def test_unbiased_dense_hsic_of_non_symmetric_kernels() -> None:
    """``hsic_unbiased_dense`` is the paper's ``hsic_unbiased`` for general kernels (CKNNA's
    masked kernels are not symmetric): its first term is ``tr(K~ L~) = sum_ij K~_ij L~_ji``, which
    pairs an entry with its transpose; ``sum_ij K~_ij L~_ij`` is another number for such kernels.
    Checked against Song et al. 2012, eq. 5, written out with explicit sums."""
    from tasks.metrics.hsic import hsic_unbiased_dense

    rng = np.random.default_rng(21)
    m = 7
    k, l = rng.normal(size=(m, m)) + 0.3, rng.normal(size=(m, m)) - 0.1
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    trace = sum(kt[i, j] * lt[j, i] for i in range(m) for j in range(m))
    ones_k_l_ones = sum(kt[i, j] * lt[j, q] for i in range(m) for j in range(m) for q in range(m))
    expected = (trace + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2.0 * ones_k_l_ones / (m - 2)) / (m * (m - 3))
    # the transposed pairing would give another value: the case tells them apart
    assert abs(float(np.sum(kt * lt)) - trace) > 0.5
    got = hsic_unbiased_dense(torch.from_numpy(k), torch.from_numpy(l))
    assert float(got) == pytest.approx(expected, rel=1e-12)
