"""Vision hidden-state shapes: channels-last feature maps (SAM), the measured patch grid at sides
that are not a multiple of the patch, one row per image (Pixtral), and models that need a missing
library or do not build. Each pooled feature is checked against the model's own forward pooled
by hand here (float64 means over the dimensions known from the model's code)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract.errors import ModelInputError
from tasks.extract.extractor import check_model
from tasks.extract.hf_vision import layout_from_resize, map_layout, num_prefix_tokens
from tasks.extract.spec import ModelSpec

_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_PIXIO = {k: v for k, v in _SMALL.items() if k != "intermediate_size"}  # its MLP width is mlp_ratio x hidden
_SAM = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
            patch_size=16, mlp_dim=64, window_size=2, global_attn_indexes=[1])


def _spec(name: str, cls: str, config: dict, side: int) -> ModelSpec:
    return ModelSpec(name=name, loader="random_hf", id=cls, modality="vision", config=config, image_size=side)


def _states(ex, images) -> tuple[torch.Tensor, ...]:
    """The model's own hidden states for the images, as the extractor prepares them."""
    with torch.inference_mode():
        out = ex.model(pixel_values=ex.prepare(images).pixel_values, output_hidden_states=True, return_dict=True,
                       **ex._extra_kwargs)
    return out.hidden_states


# --- channels-last feature maps -----------------------------------------------------------------

# SAM's vision encoders return (B, H, W, C) hidden states: (B, 4, 4, 32) for a 64 x 64 input
CHANNELS_LAST = {
    "sam": ("SamVisionConfig", _SAM, 64),
    "sam-hq": ("SamHQVisionConfig", _SAM, 64),
    "sam3-vit": ("Sam3ViTConfig", dict(_SMALL, image_size=32, patch_size=8, window_size=2, global_attn_indexes=[1],
                                       pretrain_image_size=32), 32),
}


@pytest.mark.parametrize("case", list(CHANNELS_LAST))
def test_channels_last_maps_are_averaged_over_their_positions(case, images):
    cls, config, side = CHANNELS_LAST[case]
    ex = load_extractor(_spec(case, cls, config, side), device="cpu")
    feats = ex.extract_batch(images[:3])
    states = _states(ex, images[:3])
    assert ex.layer_dims == [32] * len(states)
    for layer, h in enumerate(states):
        assert h.shape[1] == h.shape[2] != h.shape[3] == 32  # (B, H, W, C)
        want = h.double().mean(dim=(1, 2)).float().numpy()
        np.testing.assert_allclose(feats[layer], want, rtol=0, atol=1e-5, err_msg=f"{case} layer {layer}")


def test_map_layout_from_shapes():
    widths = frozenset({8, 16, 32, 96})
    assert map_layout((2, 4, 4, 32), 64, 64, widths) is True  # 32 cannot be a side of a 64 x 64 input at 4 rows
    assert map_layout((2, 32, 4, 4), 64, 64, widths) is False
    assert map_layout((2, 8, 16, 16), 64, 64, widths) is False  # ResNet stem: 8 and 16 are both widths
    assert map_layout((2, 16, 12, 32), 64, 48, widths) is True  # a 64 x 48 input: 16 x 12 positions
    assert map_layout((2, 64, 2, 2), 64, 48, frozenset({64})) is False  # 2 x 2 from 64 x 48 (rounding)
    assert map_layout((2, 8, 8, 8), 64, 64, widths) is None  # C = H = W: the shape cannot tell
    assert map_layout((2, 8, 8, 8), 64, 64, frozenset()) is None
    assert layout_from_resize((1, 8, 8, 8), (1, 8, 12, 12)) is False
    assert layout_from_resize((1, 8, 8, 8), (1, 12, 12, 8)) is True
    assert layout_from_resize((1, 8, 1, 1), (1, 8, 1, 1)) is None


def test_a_layout_the_shapes_cannot_tell_is_told_at_a_second_size(images):
    """ConvNeXt with one stage at 32 x 32: every map is (B, 8, 8, 8). The model also runs at 48 x 48,
    where the channels stay 8 and the positions grow: channels first."""
    config = dict(hidden_sizes=[8], depths=[1], num_stages=1)
    ex = load_extractor(_spec("convnext-1", "ConvNextConfig", config, 32), device="cpu")
    feats = ex.extract_batch(images[:2])
    states = _states(ex, images[:2])
    assert ex._channels_last is False and all(tuple(h.shape[1:]) == (8, 8, 8) for h in states)
    for layer, h in enumerate(states):
        np.testing.assert_allclose(feats[layer], h.double().mean(dim=(2, 3)).float().numpy(), rtol=0, atol=1e-5)


def test_a_layout_nothing_can_tell_is_refused():
    """SAM at 128 x 128 with 8 channels: (B, 8, 8, 8) maps, and SAM runs at its configured size only."""
    config = dict(_SAM, hidden_size=8, output_channels=8, mlp_dim=16, image_size=128)
    with pytest.raises(ModelInputError, match=r"sam-8.*cannot tell whether its 4-D hidden states \(\(2, 8, 8, 8\)"):
        load_extractor(_spec("sam-8", "SamVisionConfig", config, 128), device="cpu")


# --- the patch grid at sides that are not a multiple of the patch ---------------------------------

@pytest.mark.parametrize("side", [32, 36, 44])
def test_detection_tokens_are_refused_at_every_side(side):
    """YOLOS appends 5 detection tokens; at 36 x 36 its unpadded patch convolution makes 4 x 4
    patches (not ceil's 5 x 5, which left room for the 5 tokens to be averaged as patches)."""
    config = dict(_SMALL, image_size=[32, 32], patch_size=8, num_detection_tokens=5)
    with pytest.raises(ModelInputError, match=r"layer 'embeddings': \d+ tokens: 5 more than its 1 CLS"):
        load_extractor(_spec("yolos", "YolosConfig", config, side), device="cpu")


@pytest.mark.parametrize("case,cls,config,side,prefix", [
    ("pixio", "PixioConfig", dict(_PIXIO, image_size=32, patch_size=8), 32, 8),  # 8 CLS tokens: cls_token (1, 8, D)
    ("pixio-36", "PixioConfig", dict(_PIXIO, image_size=32, patch_size=8), 36, 8),
    ("vit-36", "ViTConfig", dict(_SMALL, image_size=32, patch_size=8), 36, 1),  # floor: 4 x 4 patches + CLS
    ("swin-34", "SwinConfig", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                   window_size=2), 34, 0),  # Swin pads 34 to 36: 9 x 9 patches (ceil)
])
def test_avg_excludes_exactly_the_declared_prefix_at_any_side(case, cls, config, side, prefix, images):
    ex = load_extractor(_spec(case, cls, config, side), device="cpu")
    feats = ex.extract_batch(images[:2])
    states = _states(ex, images[:2])
    if case == "swin-34":
        assert states[0].shape[1] == 81
    for layer, h in enumerate(states):
        want = h[:, prefix:].double().mean(dim=1).float().numpy()
        np.testing.assert_allclose(feats[layer], want, rtol=0, atol=1e-5, err_msg=f"{case} layer {layer}")


def test_prefix_count_uses_the_floor_grid_or_the_measured_one():
    from types import SimpleNamespace

    vit = SimpleNamespace(patch_size=8)
    assert num_prefix_tokens(vit, 17, 36, 36, declared=1) == 1  # floor(36 / 8)^2 = 16 patches + CLS
    with pytest.raises(ValueError, match="5 more than its 1 CLS/register token"):
        num_prefix_tokens(vit, 22, 36, 36, declared=1)  # ceil's 25 patches let 5 detection tokens through
    assert num_prefix_tokens(vit, 26, 36, 36, declared=1, grid=25) == 1  # a padded patch embedding, measured
    assert num_prefix_tokens(vit, 26, 36, 36, declared=None, grid=25) == 1
    with pytest.raises(ValueError, match="not a multiple of the patch stride"):
        num_prefix_tokens(vit, 17, 36, 36, declared=None)  # 16 patches + 1 CLS, or 25 padded patches of 17?


# --- one row per image ---------------------------------------------------------------------------

def test_a_model_that_packs_the_batch_into_one_sequence_is_refused():
    """Pixtral's vision tower returns (1, B*N, D) for B images: one row, not B."""
    config = dict(_SMALL, head_dim=16, image_size=16, patch_size=8)
    with pytest.raises(ModelInputError, match=r"pixtral.*layer 'embeddings' has 1 row\(s\) for a batch of 2 images"):
        load_extractor(_spec("pixtral", "PixtralVisionConfig", config, 16), device="cpu")


def test_extract_all_refuses_a_batch_without_one_row_per_item(images, monkeypatch):
    ex = load_extractor(_spec("vit", "ViTConfig", dict(_SMALL, image_size=32, patch_size=8), 32), device="cpu")
    queued = ex.forward_queued  # what extract_all calls

    def one_row(prepared, with_nll=False):
        finish = queued(prepared, with_nll)

        def finished():
            out = finish()
            out.layers = [a[:1] for a in out.layers]
            return out
        return finished

    monkeypatch.setattr(ex, "forward_queued", one_row)
    with pytest.raises(ModelInputError, match=r"'vit'.*layer 0 has shape \(1, 32\) for a batch of 2 item\(s\)"):
        extract_all(ex, images[:4], batch_size=2)


# --- missing libraries and configs that do not build ------------------------------------------------

@pytest.mark.parametrize("config_cls,library", [("TimmWrapperConfig", "timm"), ("DinatConfig", "natten")])
def test_a_model_that_needs_a_missing_library_is_refused_by_the_pre_check(config_cls, library):
    if importlib.util.find_spec(library) is not None:
        pytest.skip(f"{library} is installed")
    spec = ModelSpec(name="needs-lib", loader="random_hf", id=config_cls, modality="vision", image_size=32)
    with pytest.raises(ModelInputError, match=rf"needs-lib.*needs a library that is not installed: .*{library}"):
        check_model(spec)


def test_a_saved_checkpoint_that_needs_a_missing_library_is_refused_by_the_pre_check(tmp_path):
    if importlib.util.find_spec("natten") is not None:
        pytest.skip("natten is installed")
    import transformers

    transformers.DinatConfig().save_pretrained(tmp_path)
    with pytest.raises(ModelInputError, match="needs a library that is not installed: DinatModel requires the natten"):
        check_model(ModelSpec(name="dinat", loader="hf", id=str(tmp_path), modality="vision"))


def test_a_config_that_does_not_build_is_a_model_input_error():
    """CvT with 3 stages given where its other per-stage lists have their default length: an
    IndexError inside transformers, reported with the model and chained."""
    spec = _spec("cvt", "CvtConfig", dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 1, 1]), 64)
    with pytest.raises(ModelInputError, match=r"'cvt'.*cannot build the model from config .*IndexError") as info:
        load_extractor(spec, device="cpu")
    assert isinstance(info.value.__cause__, IndexError)
