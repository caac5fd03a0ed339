"""A tokenizer that pads on the left must not change the features of models that cannot take
position ids safely: BART's encoder (its forward takes no ``position_ids``: positions count from
the first token, pads included) and MPNet (positions from ``input_ids`` and its ``padding_idx`` 1,
while ByT5 pads with 0). Such models are padded on the right instead; GPT-2 (takes position ids)
keeps the tokenizer's left padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import ByT5Tokenizer

from tasks.extract import extract_all, load_extractor
from tasks.extract.spec import ModelSpec

CAPTIONS = ["ok", "two cats sleeping on a very long sofa in the sun"]
H = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
MODELS = {
    "BartConfig": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                       encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128),
    "MPNetConfig": dict(H, max_position_embeddings=130),
    "RobertaConfig": dict(H, max_position_embeddings=130),
    "GPT2Config": dict(n_layer=2, n_embd=32, n_head=2, n_positions=128),
}


@pytest.fixture(scope="module")
def left_tokenizer(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("byt5-left")
    ByT5Tokenizer(padding_side="left").save_pretrained(path)
    return str(path)


def _reference(ex, caption: str, pooling: str) -> list[np.ndarray]:
    """The caption alone through the model with no padding and no mask: every hidden state pooled
    by hand (float64 mean over tokens, or the last token)."""
    ids = ex.tokenizer(caption, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = ex.model(input_ids=ids, output_hidden_states=True)
    states = out.hidden_states
    return [(h[0].double().mean(0) if pooling == "avg" else h[0, -1].double()).numpy() for h in states]


@pytest.mark.parametrize("pooling", ["avg", "last"])
@pytest.mark.parametrize("cls", sorted(MODELS))
def test_a_caption_alone_equals_it_batched_with_a_longer_one(left_tokenizer, cls, pooling):
    spec = ModelSpec(name="m", loader="random_hf", id=cls, modality="language", config=MODELS[cls], pooling=pooling,
                     tokenizer=left_tokenizer)
    ex = load_extractor(spec, device="cpu")
    assert ex.tokenizer.padding_side == "left"
    batched = extract_all(ex, CAPTIONS, bits_per_byte=False).layers
    alone = extract_all(ex, CAPTIONS[:1], bits_per_byte=False).layers
    reference = _reference(ex, CAPTIONS[0], pooling)
    for b, a, r in zip(batched, alone, reference, strict=True):
        np.testing.assert_allclose(b[0], a[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(b[0], r, rtol=0, atol=1e-5)
    prepared = ex.prepare(CAPTIONS)
    assert (prepared.attention_mask == 0).any(), "the batch must actually be padded"
    left = bool((prepared.attention_mask[:, 0] == 0).any())
    assert left == (cls == "GPT2Config")  # padded on the right where position ids cannot be passed
    assert ex.padding_side == ("left" if left else "right")
