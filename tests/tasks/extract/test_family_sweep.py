"""Families found by a sweep of transformers' model types through `random_hf` extraction, each of
which crashed with a raw error (or was refused with a misleading one) and now either extracts or is
refused with a `ModelInputError` naming the model and the reason. Tiny configs, offline, seconds."""

from __future__ import annotations

import numpy as np
import pytest
from torch import device as torch_device

from tasks.extract import ModelInputError, check_model, extract_all, load_extractor
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import CAPTIONS

TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                 intermediate_size=37, max_position_embeddings=128)


def _spec(cls: str, modality: str, config: dict, **kw) -> ModelSpec:
    return ModelSpec(name="swept", loader="random_hf", id=cls, modality=modality, config=config, **kw)


def test_language_layers_with_several_vectors_per_token_are_refused_by_name():
    """DeepSeek-V4's hyper-connections keep 4 residual streams per token: its inner hidden states are
    `(B, T, 4, D)`. Pooling them over tokens had failed inside prh's pooling with a raw RuntimeError."""
    config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                  q_lora_rank=16, qk_rope_head_dim=8, moe_intermediate_size=16, n_routed_experts=4, n_shared_experts=1,
                  num_experts_per_tok=2, max_position_embeddings=128)
    with pytest.raises(ModelInputError, match=r"layer 'embeddings' has shape \(1, 2, 4, 32\) for a batch of 1 caption") as info:
        load_extractor(_spec("DeepseekV4Config", "language", config), device="cpu")
    msg = str(info.value)
    assert "model 'swept' (id 'DeepseekV4Config')" in msg and "one vector per token" in msg, msg


def test_a_per_layer_attention_window_of_a_heterogeneous_config_is_read_per_layer():
    """NeoMME's config keeps `sliding_window` per layer (transformers' heterogeneous configs): reading
    it globally raised `AmbiguousGlobalPerLayerAttributeError` from prh's window probe at load."""
    from tasks.extract.hf_language import declared_window

    ex = load_extractor(_spec("NeoMMEConfig", "language", TINY_TEXT), device="cpu")
    config = ex.model.config
    windows = [layer.sliding_window for layer in config.per_layer_config if layer.sliding_window]
    assert declared_window(config) == ("sliding_window", min(windows))
    feats = extract_all(ex, CAPTIONS)
    alone = extract_all(ex, CAPTIONS[1:2])
    for batch, one in zip(feats.layers, alone.layers):
        assert np.isfinite(batch).all()
        np.testing.assert_allclose(batch[1], one[0], rtol=0, atol=1e-5 * np.abs(one).max())


def test_a_config_that_needs_a_missing_library_is_refused_by_name():
    """EdgeTAM's vision config with a timm backbone: building the config itself raised a raw ImportError."""
    spec = _spec("EdgeTamVisionConfig", "vision", {"backbone_config": {"model_type": "timm_wrapper"}})
    with pytest.raises(ModelInputError, match="needs a library that is not installed: TimmWrapperConfig requires the timm") as info:
        check_model(spec)
    assert "model 'swept' (id 'EdgeTamVisionConfig')" in str(info.value)


@pytest.mark.parametrize("cls, config", [
    ("Qwen2VLConfig", {"text_config": {**{k: v for k, v in TINY_TEXT.items() if k != "head_dim"}, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
                       "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2}}),
    ("GitConfig", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
                   "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                     "intermediate_size": 37, "image_size": 32, "patch_size": 8}}),
])
def test_a_vision_language_model_without_an_image_encoder_to_run_alone_is_refused_by_the_check(cls, config):
    """A vision spec ran the whole vision-language model on pixels alone and failed at the load probe:
    `You must specify exactly one of input_ids or inputs_embeds` (GIT), `embedding(): argument 'indices'
    ... must be Tensor, not NoneType` (Qwen2-VL, whose image encoder `visual` needs its patch grid)."""
    with pytest.raises(ModelInputError, match="takes images together with token ids") as info:
        check_model(_spec(cls, "vision", config))
    msg = str(info.value)
    assert f"model 'swept' (id '{cls}')" in msg and "vision_model" in msg and "vision_tower" in msg, msg


@pytest.mark.parametrize("cls", ["OwlViTConfig", "GroupViTConfig"])
def test_a_text_tower_without_get_input_embeddings_extracts(cls):
    """OWL-ViT's and GroupViT's text towers (CLIP-like) do not implement `get_input_embeddings`: a
    language spec was refused as "has no input token embeddings ... not usable as a language model";
    their token embedding is found in their `embeddings` module, and a caption alone = in a batch."""
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    ex = load_extractor(_spec(cls, "language", {"text_config": text}), device="cpu")
    feats = extract_all(ex, CAPTIONS)
    assert feats.layer_names == ["embeddings", "layer.01", "layer.02"] and [a.shape[1] for a in feats.layers] == [32] * 3
    for i, caption in enumerate(CAPTIONS):
        for batch, one in zip(feats.layers, extract_all(ex, [caption]).layers):
            assert np.isfinite(batch).all()
            np.testing.assert_allclose(batch[i], one[0], rtol=0, atol=1e-5 * np.abs(one).max())


def test_radio_cls_and_register_tokens_are_excluded_from_avg(images):
    """RADIO keeps its 3 CLS and 7 register tokens in one `cls_register_token` parameter of its
    `embeddings`: they were not counted, and every layer was refused (`26 tokens: 10 more than its 0
    CLS/register token(s) and the 16 patches`). `avg` = a hand mean of the patch tokens, `cls` = token 0."""
    import torch

    config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32, max_img_size=64)
    ex = load_extractor(_spec("RadioConfig", "vision", config), device="cpu")
    cls = load_extractor(_spec("RadioConfig", "vision", config, pooling="cls"), device="cpu")
    feats, firsts = extract_all(ex, images[:3]), extract_all(cls, images[:3])
    with torch.inference_mode():
        states = ex.model(pixel_values=ex.prepare(images[:3]).pixel_values, output_hidden_states=True).hidden_states
    assert len(feats.layers) == len(states) == 3 and states[0].shape[1] == 10 + 16
    for got, first, hs in zip(feats.layers, firsts.layers, states):
        np.testing.assert_allclose(got, hs[:, 10:].mean(dim=1).numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(first, hs[:, 0].numpy(), rtol=0, atol=1e-6)


def test_hidden_states_that_are_not_tensors_are_named_as_such():
    """MaskFormer's Swin backbone returns each stage's hidden states as a tuple: the refusal said it
    returned no hidden_states at all."""
    config = dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], image_size=32, patch_size=4, window_size=2)
    with pytest.raises(ModelInputError, match=r"MaskFormerSwinModel returned hidden_states whose entry 1 is a tuple, "
                                               r"not a tensor") as info:
        load_extractor(_spec("MaskFormerSwinConfig", "vision", config), device="cpu")
    assert "model 'swept' (id 'MaskFormerSwinConfig')" in str(info.value)


def test_funnel_whose_type_maps_to_two_model_classes_is_a_model_input_error_without_the_pipeline_check():
    """transformers maps the model type 'funnel' to two AutoModel classes (FunnelModel, FunnelBaseModel):
    the modality check read the tuple as a class (`AttributeError: 'tuple' object has no attribute
    'forward'`) when `load_extractor` was called without the pipeline's `known_problem` pre-check. It now
    takes the first, as transformers does; transformers 5.23 itself cannot build a Funnel from a config
    without `architectures` (a `TypeError` inside `from_config`), which is refused naming the model.
    The public entry points now run the pre-check themselves (`test_entry_checks.py`), so the model
    check and build below are called directly."""
    from tasks.extract import hf_models

    config = dict(d_model=32, n_head=2, d_head=16, d_inner=37, block_sizes=[1, 1], num_decoder_layers=1)
    spec = _spec("FunnelConfig", "language", config)
    checked = hf_models.check_model(spec)  # the modality check passes
    with pytest.raises(ModelInputError, match="cannot build the model from config") as info:
        hf_models.load_random(spec, torch_device("cpu"), checked)
    assert "model 'swept' (id 'FunnelConfig')" in str(info.value)
    with pytest.raises(ModelInputError, match="model type 'funnel' is not supported"):
        load_extractor(spec, device="cpu")


def test_a_random_flava_reads_its_image_size_from_image_config(images):
    """FLAVA keeps its image tower in ``image_model`` and its settings in ``image_config`` (not
    ``vision_model`` / ``vision_config``): a random FLAVA got 224-pixel inputs for a 32-pixel model
    and failed at the load probe (then was refused as having no pixel-only image encoder)."""
    tower = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=37)
    ex = load_extractor(_spec("FlavaConfig", "vision", {"image_config": tower}), device="cpu")
    assert ex.processor.size == {"height": 32, "width": 32}
    out = extract_all(ex, images[:3])
    assert len(out.layers) == 3 and all(np.isfinite(layer).all() and layer.shape == (3, 32) for layer in out.layers)
