"""The 'hf' loader on local checkpoint directories (saved tiny random models): processors through
the PIL backend, dual-tower checkpoints, causal-LM detection from `architectures`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import CAPTIONS


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8)).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_local_vit_directory(vit_dir, images):
    assert any(vit_dir.glob("*.safetensors"))
    spec = ModelSpec(name="vit-local", loader="hf", id=str(vit_dir), modality="vision", pooling="cls")
    ex = load_extractor(spec, device="cpu")
    assert type(ex.processor).__name__.endswith("Pil")  # no torchvision
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02"]
    feats = extract_all(ex, images)
    assert feats.layers[-1].shape == (len(images), 32)
    # resized input: positions interpolated, still 32-wide features
    big = load_extractor(spec.model_copy(update={"image_size": 48}), device="cpu")
    assert big.prepare(images[:1]).pixel_values.shape[-1] == 48
    assert np.isfinite(big.extract_batch(images[:1])[-1]).all()


def test_dual_tower_checkpoint_uses_the_vision_tower(tmp_path, images):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        projection_dim=16,
    )
    full = CLIPModel(config)
    full.save_pretrained(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    ex = load_extractor(ModelSpec(name="clip-v", loader="hf", id=str(tmp_path), modality="vision"), device="cpu")
    assert type(ex.model).__name__.startswith("CLIPVision")
    assert ex.param_count == sum(p.numel() for p in full.vision_model.parameters()) < sum(p.numel() for p in full.parameters())
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02"]
    assert extract_all(ex, images).layers[0].shape == (len(images), 32)


def test_local_causal_lm_is_detected_from_architectures(tmp_path):
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=384, n_positions=128)).save_pretrained(tmp_path)
    ByT5Tokenizer().save_pretrained(tmp_path)
    spec = ModelSpec(name="gpt-local", loader="hf", id=str(tmp_path), modality="language", pooling="last")
    ex = load_extractor(spec, device="cpu")
    assert ex.is_causal_lm and type(ex.lm).__name__ == "GPT2LMHeadModel"
    feats = extract_all(ex, CAPTIONS)
    assert feats.extras["bits_per_byte"] > 0
    assert spec.fingerprint()["source"]["local_digest"]
