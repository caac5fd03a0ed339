"""The load-time padding probe (`HFLanguageExtractor._measure_padding`) against the padding contract:
a caption's pooled features are the same (float32: within 1e-5 of the layer's largest value)
alone as padded in a batch with a longer caption, on either side.

- Doge keeps only the ``keep_window_size`` keys of largest dynamic weight once a sequence is longer
  than that window: a caption longer than the window depends on its padding, and the probe's short
  caption (2 tokens) never was. A config that declares such a window shorter than ``max_length``
  gets a second probe pair whose short caption is longer than it.
- MobileBERT's embedding reads each token's neighbours (trigram input): under padding, the pad
  token's embedding row leaks into the caption's edge tokens. A trained checkpoint's pad row is
  zero (exact); a small non-zero one leaked ~4e-5 of the largest feature, under the probe's
  1e-4: the float32 tolerance is the contract's 1e-5 (float32 rounding of other shapes measured
  at most 4.6e-7 over 27 tiny families and the extraction tests' probes, on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ByT5Tokenizer

from tasks.extract import extract_all, load_extractor
from tasks.extract.spec import ModelSpec

CAPTIONS = ["ok go", "two cats sleeping on a very long sofa in the sun", "a dog", "a red apple", "a bicycle by a wall"]
DOGE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            max_position_embeddings=256)
MOBILEBERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                  embedding_size=16, intra_bottleneck_size=32, true_hidden_size=32, vocab_size=384, pad_token_id=0)


def _worst_relative_difference(ex, features: list[np.ndarray]) -> float:
    """Largest |batched - alone| over captions and layers, relative to the layer's largest value
    alone (a batch of one caption has no pad)."""
    worst = 0.0
    for i, caption in enumerate(CAPTIONS):
        for layer, alone in zip(features, ex.extract_batch([caption]), strict=True):
            worst = max(worst, float(np.abs(layer[i] - alone[0]).max()) / max(float(np.abs(alone[0]).max()), 1e-6))
    return worst


@pytest.fixture(scope="module")
def left_tokenizer(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("byt5-left")
    ByT5Tokenizer(padding_side="left").save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_doge_window_shorter_than_max_length_is_probed_with_a_caption_longer_than_it(left_tokenizer, side):
    spec = ModelSpec(name="tiny-doge", loader="random_hf", id="DogeConfig", modality="language",
                     config=dict(DOGE, keep_window_size=4), tokenizer=left_tokenizer if side == "left" else None)
    ex = load_extractor(spec, device="cpu")
    assert ex.padding_side == side
    assert "longer than its keep_window_size of 4" in (ex.pad_free_reason or "")
    assert _worst_relative_difference(ex, extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS)).layers) <= 1e-5


@pytest.mark.parametrize("window", [2048, 63])
def test_a_window_no_padded_caption_can_exceed_needs_no_window_probe(window):
    """Real Doge checkpoints keep 2048 keys: no caption of max_length 64 exceeds it, nor does a padded
    one with a window of 63 (a longer caption fills max_length and gets no pad), so the model keeps
    its padded batches, exactly."""
    spec = ModelSpec(name="doge", loader="random_hf", id="DogeConfig", modality="language",
                     config=dict(DOGE, keep_window_size=window))
    ex = load_extractor(spec, device="cpu")
    assert ex.pad_free_reason is None
    assert _worst_relative_difference(ex, extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS)).layers) <= 1e-5


def _mobilebert(folder: Path, pad_row_scale: float, side: str) -> str:
    """A tiny MobileBERT checkpoint whose pad token's embedding row is ``pad_row_scale`` x N(0, 1)."""
    torch.manual_seed(0)
    from transformers import MobileBertConfig, MobileBertModel

    model = MobileBertModel(MobileBertConfig(**MOBILEBERT))
    with torch.no_grad():
        row = model.get_input_embeddings().weight[MOBILEBERT["pad_token_id"]]
        row.copy_(pad_row_scale * torch.randn(row.shape))
    model.save_pretrained(folder)
    ByT5Tokenizer(padding_side=side).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_small_pad_embedding_leak_of_mobilebert_is_caught_in_float32(tmp_path, side):
    ex = load_extractor(ModelSpec(name="mobilebert", loader="hf", id=_mobilebert(tmp_path, 4e-5, side), modality="language"),
                        device="cpu")
    assert ex.padding_side == side
    assert "at load, a caption padded on the" in (ex.pad_free_reason or "")
    assert _worst_relative_difference(ex, extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS)).layers) <= 1e-5


def test_mobilebert_with_a_zero_pad_row_keeps_its_padded_batches(tmp_path):
    """Trained checkpoints' pad row is zero: the neighbour a pad gives equals the zero padding of a
    caption alone, so padding changes nothing and batches stay padded."""
    ex = load_extractor(ModelSpec(name="mobilebert", loader="hf", id=_mobilebert(tmp_path, 0.0, "left"), modality="language"),
                        device="cpu")
    assert ex.pad_free_reason is None
    assert _worst_relative_difference(ex, extract_all(ex, CAPTIONS, batch_size=len(CAPTIONS)).layers) <= 1e-5


def test_the_window_of_a_vision_language_models_text_part_is_read():
    """A vision-language config (Gemma 3) keeps its text part's ``sliding_window`` in
    ``text_config``, not at the top, where the window probe had looked only: no window was found."""
    from transformers import Gemma3Config

    from tasks.extract.hf_language import declared_window

    config = Gemma3Config(text_config={"sliding_window": 6, "hidden_size": 32})
    assert getattr(config, "sliding_window", None) is None
    assert declared_window(config) == ("sliding_window", 6)
    assert declared_window(Gemma3Config(text_config={"sliding_window": None, "hidden_size": 32})) is None
