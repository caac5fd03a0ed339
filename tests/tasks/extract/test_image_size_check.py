"""A configured ``image_size`` the model cannot run at is refused by `check_model`, naming the model
and the sizes, before any weights load. It had passed the check and failed later at the load probe
(inside the model: ``Kernel size can't be greater than actual input size`` for an image smaller than
a ViT's patch; SAM's ``Input image size (32*32) doesn't match model (64*64)``; AIMv2's position
embeddings, which do not interpolate, at another size). The model built on the ``meta`` device runs
on the pixels the processor gives (`hf_models.check_image_size`), so sizes it does run at stay
accepted: a side that is not a multiple of the patch (ViT floors), a larger one (interpolated), one
smaller than Swin V2's patch (it pads). Tiny random models, offline."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.extract import ModelInputError, check_model, extract_all, load_extractor
from tasks.extract.spec import ModelSpec, ZooError, load_zoo

_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_HIERA = dict(embed_dim=8, depths=[1, 1], num_heads=[1, 1], image_size=[32, 32], patch_stride=[4, 4], masked_unit_size=[2, 2],
              query_stride=[2, 2], num_query_pool=1)
_POOLFORMER = dict(hidden_sizes=[8, 16], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1])
_SAM = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16,
            mlp_dim=64, window_size=2, global_attn_indexes=[1])


def _spec(name: str, cls: str, config: dict, side: int) -> ModelSpec:
    return ModelSpec(name=name, loader="random_hf", id=cls, modality="vision", config=config, image_size=side)


@pytest.mark.parametrize("name, cls, config, side, patch", [
    ("vit", "ViTConfig", dict(_SMALL, image_size=32, patch_size=16), 8, 16),
    ("clip", "CLIPVisionConfig", dict(_SMALL, image_size=32, patch_size=16), 8, 16),
    ("siglip", "SiglipVisionConfig", dict(_SMALL, image_size=32, patch_size=16), 15, 16),
    ("convnext", "ConvNextConfig", dict(hidden_sizes=[8], depths=[1], num_stages=1), 2, 4),  # its 4 x 4 stem
])
def test_an_image_smaller_than_a_patch_is_refused_by_the_check(name, cls, config, side, patch):
    spec = _spec(name, cls, config, side)
    for entry in (check_model, lambda s: load_extractor(s, device="cpu")):
        with pytest.raises(ModelInputError) as info:
            entry(spec)
        msg = str(info.value)
        assert msg.startswith(f"model '{name}' (id '{cls}'): image_size {side}: "), msg
        assert f"does not run on {side} x {side} pixels, smaller than its patch size {patch} (no whole patch)" in msg, msg
        assert "Kernel size can't be greater than actual input size" in msg and f"set image_size: {patch} or more" in msg, msg


@pytest.mark.parametrize("name, cls, config, side, own, said", [
    # SAM checks the size itself: its own only
    ("sam", "SamVisionConfig", _SAM, 32, 64, "Input image size (32*32) doesn't match model (64*64)"),
    # AIMv2 adds its 4 x 4 grid of position embeddings as they are: no other grid
    ("aimv2", "Aimv2VisionConfig", dict(_SMALL, image_size=32, patch_size=8), 40, 32, "Attempting to broadcast"),
    ("aimv2-larger", "Aimv2VisionConfig", dict(_SMALL, image_size=32, patch_size=8), 64, 32, "Attempting to broadcast"),
    # Hiera cuts its patch grid into 2 x 2 mask units of 2 x 2 query strides: 36 / 4 = 9 patches a side do not divide
    ("hiera", "HieraConfig", _HIERA, 36, 32, "is invalid for input of size"),
])
def test_a_size_the_model_does_not_run_at_is_refused_with_its_own(name, cls, config, side, own, said):
    spec = _spec(name, cls, config, side)
    with pytest.raises(ModelInputError) as info:
        check_model(spec)
    msg = str(info.value)
    assert msg.startswith(f"model '{name}' (id '{cls}'): image_size {side}: "), msg
    assert f"does not run on {side} x {side} pixels" in msg and f"though it runs at its own {own}: " in msg, msg
    assert said in msg and msg.endswith(f"set image_size: {own}, its own size, or remove image_size"), msg
    assert ("takes no interpolate_pos_encoding" in msg) == (cls != "HieraConfig"), msg  # Hiera takes one, and still fails
    ok = _spec(name, cls, config, own)  # the size it names runs
    check_model(ok)
    assert [layer.shape[0] for layer in extract_all(load_extractor(ok, device="cpu"), _pngs(2)).layers] == [2] * 3


def _pngs(n: int) -> list[bytes]:
    from tests.tasks.extract.helpers import png_bytes

    return [png_bytes((40 * i, 90, 200 - 30 * i), shape=i, size=(70, 50 + 10 * i)) for i in range(n)]


@pytest.mark.parametrize("name, cls, config, side", [
    ("vit-36", "ViTConfig", dict(_SMALL, image_size=32, patch_size=8), 36),  # floor: 4 x 4 patches
    ("vit-64", "ViTConfig", dict(_SMALL, image_size=32, patch_size=8), 64),  # interpolated position embeddings
    ("swinv2-3", "Swinv2Config", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                      window_size=2), 3),  # padded to one 4 x 4 patch
    ("convnext-33", "ConvNextConfig", dict(hidden_sizes=[8], depths=[1], num_stages=1), 33),
    # no image_size of its own, and a patch_size (16) its model does not use (its stem: 7 x 7, stride 4, padded):
    # it was refused as smaller than that patch size
    ("poolformer-12", "PoolFormerConfig", _POOLFORMER, 12),
    ("poolformer-4", "PoolFormerConfig", _POOLFORMER, 4),
])
def test_sizes_the_model_runs_at_stay_accepted(name, cls, config, side):
    spec = _spec(name, cls, config, side)
    check_model(spec)
    ex = load_extractor(spec, device="cpu")
    assert tuple(ex.prepare(_pngs(1)).pixel_values.shape[-2:]) == (side, side)
    feats = extract_all(ex, _pngs(3))
    assert all(layer.shape[0] == 3 and np.isfinite(layer).all() for layer in feats.layers)


def test_a_size_that_is_not_positive_is_refused_with_the_zoo():
    base = dict(name="vit", loader="random_hf", id="ViTConfig", modality="vision")
    for bad in (0, -16, 16.0, True):
        with pytest.raises(ZooError, match=r"models\[0\] \(name 'vit'\): field 'image_size'"):
            load_zoo({"models": [{**base, "image_size": bad}]})


def test_a_patch_size_is_suggested_only_where_the_model_runs_at_it():
    """AIMv2 adds its own grid of position embeddings as it is: at its patch size (one patch) the
    ``meta`` forward broadcast that grid over the single patch and ran, so an image smaller than
    its patch was told ``set image_size: 8 or more``, a size (like any but its own) it fails at.
    The suggestion is now its own size; a ViT (which interpolates) is still told its patch size."""
    aimv2 = _spec("aimv2", "Aimv2VisionConfig", dict(_SMALL, image_size=32, patch_size=8), 4)
    with pytest.raises(ModelInputError) as info:
        check_model(aimv2)
    msg = str(info.value)
    assert "smaller than its patch size 8" in msg and msg.endswith("set image_size: 32, its own size, or remove image_size"), msg
    with pytest.raises(ModelInputError):  # the size it had suggested
        load_extractor(_spec("aimv2", "Aimv2VisionConfig", dict(_SMALL, image_size=32, patch_size=8), 8), device="cpu")
    with pytest.raises(ModelInputError, match=r"set image_size: 8 or more$"):
        check_model(_spec("vit", "ViTConfig", dict(_SMALL, image_size=32, patch_size=8), 4))


def test_a_model_without_position_embeddings_is_not_said_to_have_some():
    """A convolutional model too small for its downsampling (ConvNeXt's 4 x 4 stem, then a 2 x 2
    one) was said to fail for ``its position embeddings may fit its own size only``: it has none."""
    spec = _spec("convnext", "ConvNextConfig", dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), 4)
    with pytest.raises(ModelInputError) as info:
        check_model(spec)
    msg = str(info.value)
    assert "does not run on 4 x 4 pixels, though it runs at its own 224: " in msg and "position embeddings" not in msg, msg


@pytest.mark.parametrize("side", [4, 7])
def test_a_forward_that_changes_its_model_does_not_decide_the_next_one(side):
    """Swin shrinks its layers' attention window to an image smaller than it (a change its forward
    makes to the model itself): the ``meta`` forward at the configured size left the window at 1,
    and the forward at the model's own size then failed too, so the check could not tell and let
    a size through that fails at the load probe. Each forward now runs on a fresh copy of the
    model built on the ``meta`` device (``checked.meta`` is left as it was built)."""
    from tasks.extract import hf_models
    from tasks.extract.extractor import _checked_hf

    config = dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2)
    spec = _spec("swin", "SwinConfig", config, side)
    for entry in (check_model, lambda s: load_extractor(s, device="cpu")):
        with pytest.raises(ModelInputError) as info:
            entry(spec)
        msg = str(info.value)
        assert f"does not run on {side} x {side} pixels, though it runs at its own 32: " in msg, msg
    checked = _checked_hf(spec)
    windows = {m.window_size for m in checked.meta.modules() if hasattr(m, "shift_size")}
    with pytest.raises(ModelInputError):
        hf_models.check_image_size(spec, checked, hf_models.load_image_processor(spec, checked.config, checked.access))
    assert {m.window_size for m in checked.meta.modules() if hasattr(m, "shift_size")} == windows == {2}
