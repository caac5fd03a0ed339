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
