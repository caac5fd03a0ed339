"""The demo's real pretrained models, offline: EfficientNet-Lite0 and all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract.efficientnet import MEAN, STD, build_model
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import MINILM, assert_rows_close, png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0():
    spec = ModelSpec(name="efficientnet-lite0", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision")
    return load_extractor(spec, device="cpu")


def test_efficientnet_lite0_layers(lite0, images):
    assert lite0.layer_names == ["stem"] + [f"block.{i:02d}" for i in range(1, 17)] + ["head"]
    assert lite0.layer_dims[0] == 32 and lite0.layer_dims[-1] == 1280
    assert lite0.layer_dims[1:17] == [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320]
    assert lite0.param_count == 4_652_008  # as published, BatchNorm included
    feats = extract_all(lite0, images, batch_size=2)
    assert all(a.shape == (len(images), d) and a.dtype == np.float32 and np.isfinite(a).all()
               for a, d in zip(feats.layers, lite0.layer_dims))
    assert (feats.layers[-1] >= 0).all() and (feats.layers[-1] <= 6).all()  # ReLU6 head
    assert feats.extras == {}


def test_efficientnet_matches_the_plain_package_model(lite0, images):
    """The optimised module (BN folded, channels-last) = the package's module with hooks, ~1e-6."""
    plain = build_model("efficientnet-lite0", 224, {})
    captured: list[torch.Tensor] = []
    plain._blocks[0].register_forward_pre_hook(lambda m, a: captured.append(a[0].mean(dim=(2, 3))))
    for block in plain._blocks:
        block.register_forward_hook(lambda m, a, o: captured.append(o.mean(dim=(2, 3))))
    pixels = lite0.prepare(images).pixel_values
    with torch.inference_mode():
        head = plain.extract_features(pixels).mean(dim=(2, 3))
        logits = plain(pixels)
    expected = captured[: len(plain._blocks) + 1] + [head]
    ours = lite0.extract_batch(images)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    np.testing.assert_allclose(lite0.classify(images), logits.numpy(), rtol=1e-4, atol=1e-3)


def test_efficientnet_preprocessing(lite0, images):
    x = lite0.prepare(images[:1]).pixel_values
    assert x.shape == (1, 3, 224, 224)
    assert x.min() >= (0 - MEAN) / STD - 1e-6 and x.max() <= (255 - MEAN) / STD + 1e-6
    assert float(x[0, :, 0, 0].max()) == pytest.approx((255 - MEAN) / STD)  # white background corner


def test_efficientnet_lite1_resolution():
    spec = ModelSpec(name="l1", loader="efficientnet_lite", id="efficientnet-lite1", modality="vision")
    ex = load_extractor(spec, device="cpu")
    assert ex.image_size == 240 and len(ex.layer_names) > 18  # deeper than lite0
    assert ex.prepare([png_bytes()]).pixel_values.shape == (1, 3, 240, 240)


@pytest.fixture(scope="module")
def minilm():
    spec = ModelSpec(name="all-minilm-l6-v2", loader="hf", id=MINILM, modality="language", pooling="avg")
    return load_extractor(spec, device="cpu")


def _embed(ex, texts):
    last = extract_all(ex, texts).layers[-1]
    return last / np.linalg.norm(last, axis=1, keepdims=True)


def test_minilm_layers(minilm):
    assert minilm.layer_names == ["embeddings"] + [f"layer.{i:02d}" for i in range(1, 7)]
    assert minilm.layer_dims == [384] * 7
    assert minilm.param_count == 22_713_216
    assert not minilm.is_causal_lm


def test_minilm_sentence_embeddings_behave(minilm):
    """Mean-pooled, L2-normalised last layer = sentence-transformers' all-MiniLM-L6-v2 embedding."""
    e = _embed(minilm, ["A man is eating food.", "A man is eating a piece of bread.",
                        "The stock market crashed today.", "A cat sleeps on the sofa.", "A kitten naps on a couch."])
    cos = e @ e.T
    assert cos[0, 1] > 0.6 > cos[0, 2] + 0.3
    assert cos[3, 4] > 0.6 > cos[3, 2] + 0.3
    assert cos[0, 1] > cos[0, 3] and cos[3, 4] > cos[3, 0]


def test_minilm_reproduces_the_documented_sentence_transformers_similarities(minilm):
    """sbert.net's usage page (all-MiniLM-L6-v2, `model.similarity`) prints
    [[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]]."""
    e = _embed(minilm, ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    documented = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    np.testing.assert_allclose(e @ e.T, documented, atol=5e-4)


def test_minilm_matches_plain_transformers(minilm):
    from transformers import AutoModel, AutoTokenizer

    from tasks.extract.sources import resolve_pkg_path

    path = resolve_pkg_path(MINILM)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = ["a grinning face", "flag of the united kingdom of great britain", "dog"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = ((h * m).sum(1) / m.sum(1)).numpy()
    ours = extract_all(minilm, texts, batch_size=2).layers[-1]
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    minilm.tokenizer.padding_side = "left"
    try:
        assert_rows_close(minilm.extract_batch(texts)[-1], ours, atol=1e-5)
    finally:
        minilm.tokenizer.padding_side = "right"
