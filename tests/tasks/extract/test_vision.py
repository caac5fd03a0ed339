"""Vision extraction on tiny random Hugging Face models (ViT, DINOv2 with registers, ConvNeXt)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.extract import extract_all, load_extractor
from tasks.extract.images import center_crop_resize, decode_image, to_batch_tensor
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import assert_rows_close, png_bytes

VIT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8)


def _vit(pooling: str = "avg", **kw) -> ModelSpec:
    return ModelSpec(name="tiny-vit", loader="random_hf", id="ViTConfig", modality="vision", pooling=pooling,
                     config=VIT, **kw)


@pytest.fixture(scope="module")
def vit_avg():
    return load_extractor(_vit("avg"), device="cpu")


def _hidden_states(ex, images):
    pixels = ex.prepare(images).pixel_values
    with torch.inference_mode():
        return ex.model(pixel_values=pixels, output_hidden_states=True).hidden_states


def test_vit_layers_and_pooling(vit_avg, images):
    ex_cls = load_extractor(_vit("cls"), device="cpu")
    assert vit_avg.layer_names == ["embeddings", "layer.01", "layer.02", "layer.03"]
    assert vit_avg.layer_dims == [32] * 4
    avg, cls = extract_all(vit_avg, images, batch_size=2), extract_all(ex_cls, images, batch_size=2)
    states = _hidden_states(vit_avg, images)
    assert states[0].shape[1] == 1 + 16  # CLS + (32/8)^2 patches
    for layer, h in enumerate(states):
        np.testing.assert_allclose(avg.layers[layer], h[:, 1:].mean(1).numpy(), atol=1e-5)  # CLS excluded
        np.testing.assert_allclose(cls.layers[layer], h[:, 0].numpy(), atol=1e-5)
    assert avg.param_count == sum(p.numel() for p in vit_avg.model.parameters())


def test_vit_batch_invariance_and_order(vit_avg, images):
    feats = extract_all(vit_avg, images, batch_size=3)
    for i, img in enumerate(images):
        alone = vit_avg.extract_batch([img])
        for a, b in zip(alone, feats.layers):
            assert_rows_close(a, b[i:i + 1], atol=1e-5)


def test_random_vit_is_seeded(images):
    a = load_extractor(_vit(seed=3), device="cpu").extract_batch(images[:2])
    b = load_extractor(_vit(seed=3), device="cpu").extract_batch(images[:2])
    c = load_extractor(_vit(seed=4), device="cpu").extract_batch(images[:2])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[-1], c[-1])


def test_random_vit_processor_and_image_size(vit_avg, images):
    assert vit_avg.prepare(images[:1]).pixel_values.shape == (1, 3, 32, 32)
    big = load_extractor(_vit(image_size=48), device="cpu")  # positions interpolated
    assert big.prepare(images[:1]).pixel_values.shape == (1, 3, 48, 48)
    assert np.isfinite(big.extract_batch(images[:2])[-1]).all()


def test_register_tokens_are_excluded_from_avg(images):
    spec = ModelSpec(name="dino-reg", loader="random_hf", id="Dinov2WithRegistersConfig", modality="vision",
                     config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                 image_size=32, patch_size=8, num_register_tokens=4))
    ex = load_extractor(spec, device="cpu")
    states = _hidden_states(ex, images[:2])
    assert states[-1].shape[1] == 1 + 4 + 16
    feats = ex.extract_batch(images[:2])
    np.testing.assert_allclose(feats[-1], states[-1][:, 5:].mean(1).numpy(), atol=1e-5)


def test_convnext_global_average_pools_every_stage(images):
    spec = ModelSpec(name="tiny-convnext", loader="random_hf", id="ConvNextConfig", modality="vision",
                     config=dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]), image_size=64)
    ex = load_extractor(spec, device="cpu")
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02", "layer.03", "layer.04"]
    assert ex.layer_dims == [8, 8, 16, 24, 32]
    feats = extract_all(ex, images, batch_size=2)
    states = _hidden_states(ex, images)
    for layer, h in enumerate(states):
        assert h.dim() == 4
        np.testing.assert_allclose(feats.layers[layer], h.mean(dim=(2, 3)).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="cls"):
        load_extractor(spec.model_copy(update={"pooling": "cls"}), device="cpu")


def test_decode_image_composites_alpha_over_white():
    transparent = png_bytes((10, 200, 10), mode="RGBA")
    img = decode_image(transparent)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent corner -> white
    assert img.getpixel((img.width // 2, img.height // 2)) == (10, 200, 10)
    assert decode_image(img) is img
    gray = Image.new("L", (4, 4), 7)
    buf = io.BytesIO()
    gray.save(buf, "PNG")
    assert decode_image(buf.getvalue()).getpixel((0, 0)) == (7, 7, 7)
    with pytest.raises(TypeError):
        decode_image(42)


def test_center_crop_resize_and_normalise():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 40, 100))  # a blue strip at the left edge
    out = center_crop_resize(img, 50, 1.0)  # central 100x100, the strip is cut off
    assert out.size == (50, 50) and out.getpixel((0, 25)) == (255, 0, 0)
    x = to_batch_tensor([out, out], 127.0, 128.0)
    assert x.shape == (2, 3, 50, 50) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert float(x[1, 0, 0, 0]) == pytest.approx((255 - 127) / 128) and float(x[1, 2, 0, 0]) == pytest.approx(-127 / 128)


def test_mae_does_not_mask_patches_when_extracting(images):
    """ViT-MAE masks 75% of patches at random by default; extraction sets mask_ratio=0."""
    spec = ModelSpec(name="tiny-mae", loader="random_hf", id="ViTMAEConfig", modality="vision",
                     config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8))
    ex = load_extractor(spec, device="cpu")
    assert ex.model.config.mask_ratio == 0.0
    assert _hidden_states(ex, images[:1])[-1].shape[1] == 1 + 16
    rng = torch.get_rng_state()
    first, second = ex.extract_batch(images[:2]), ex.extract_batch(images[:2])
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # patches kept in order: bit for bit
    assert torch.equal(rng, torch.get_rng_state())  # no random shuffle drawn
    shuffled = ex.model(pixel_values=ex.prepare(images[:2]).pixel_values, output_hidden_states=True).hidden_states
    assert spec.pooling == "avg"  # the mean over patches does not depend on their order: MAE's own shuffle agrees
    np.testing.assert_allclose(first[-1], shuffled[-1][:, 1:].mean(1).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["ConvNextImageProcessorPil", "DeiTImageProcessorPil", "CLIPImageProcessorPil",
                                  "ViTImageProcessorPil", "BitImageProcessorPil"])
def test_image_size_keeps_each_processors_own_resizing(name):
    """``image_size`` at the processor's own output size changes no pixel (a squashing DeiT-style
    resize stays squashing, a ConvNeXt shortest edge stays one), and any size gives S x S."""
    import transformers

    from tasks.extract.hf_models import _resize_processor

    image = Image.fromarray((np.random.default_rng(0).random((30, 90, 3)) * 255).astype("uint8"))  # not square
    cls = getattr(transformers, name)
    native = cls()(image, return_tensors="np")["pixel_values"]
    same, small = cls(), cls()
    _resize_processor(same, native.shape[-1])
    _resize_processor(small, 48)
    assert np.array_equal(same(image, return_tensors="np")["pixel_values"], native)
    assert small(image, return_tensors="np")["pixel_values"].shape == (1, 3, 48, 48)


_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8)
_HIERA = dict(embed_dim=16, image_size=[64, 64], patch_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3],
              depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], mlp_ratio=2.0, query_stride=[2, 2], masked_unit_size=[8, 8],
              num_query_pool=2)

# config class, config, input side, CLS/distillation/register tokens in front of the patches (known by hand)
PREFIX_CASES = {
    "vit": ("ViTConfig", dict(image_size=32, patch_size=8, **_SMALL), 32, 1),
    "deit": ("DeiTConfig", dict(image_size=32, patch_size=8, **_SMALL), 32, 2),  # CLS + distillation token
    "dinov2": ("Dinov2Config", _DINO, 32, 1),
    "dinov2-registers": ("Dinov2WithRegistersConfig", dict(_DINO, num_register_tokens=4), 32, 5),
    "clip": ("CLIPConfig", dict(vision_config=dict(image_size=32, patch_size=8, **_SMALL), text_config=_SMALL), 32, 1),
    "siglip": ("SiglipVisionConfig", dict(image_size=32, patch_size=8, **_SMALL), 32, 0),
    "mae": ("ViTMAEConfig", dict(image_size=32, patch_size=8, **_SMALL), 32, 1),
    "beit": ("BeitConfig", dict(image_size=32, patch_size=8, **_SMALL), 32, 1),
    "swin": ("SwinConfig", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2),
             32, 0),
    # patch_size 7 is the kernel of an overlapping convolution; the stride is 4: (64/4)^2 = 256 patch tokens, no
    # CLS (the count T - (64/7)^2 = 175 made 'avg' drop 175 of the 256 tokens of the first two layers)
    "hiera": ("HieraConfig", _HIERA, 64, 0),
    "dinov3": ("DINOv3ViTConfig", dict(image_size=32, patch_size=8, num_register_tokens=4, **_SMALL), 32, 5),  # CLS + 4 registers
    "swinv2": ("Swinv2Config", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2),
               32, 0),
    "data2vec-vision": ("Data2VecVisionConfig", dict(image_size=32, patch_size=8, **_SMALL), 32, 1),
    "vit-msn": ("ViTMSNConfig", dict(image_size=32, patch_size=8, **_SMALL), 32, 1),
    "ijepa": ("IJepaConfig", dict(image_size=32, patch_size=8, **_SMALL), 32, 0),  # no CLS token
}


@pytest.mark.parametrize("case", list(PREFIX_CASES))
def test_avg_pools_exactly_the_patch_tokens(case, images):
    """'avg' = an independent mean over every token after the model's own CLS/distillation/register
    tokens, in every layer (hierarchical models: every token of every stage)."""
    cls_name, config, side, prefix = PREFIX_CASES[case]
    spec = ModelSpec(name=f"tiny-{case}", loader="random_hf", id=cls_name, modality="vision", config=config,
                     image_size=side)
    ex = load_extractor(spec, device="cpu")
    feats = ex.extract_batch(images[:2])
    states = _hidden_states(ex, images[:2])
    assert len(feats) == len(states)
    for layer, h in enumerate(states):
        assert h.dim() == 3 and h.shape[1] > prefix
        want = h[:, prefix:].double().mean(dim=1).float().numpy()  # own mean, not the pooling code
        np.testing.assert_allclose(feats[layer], want, atol=1e-5, err_msg=f"{case} layer {layer}")
    if prefix == 0:  # no CLS token: 'cls' is refused, not token 0 of the patches
        with pytest.raises(ValueError, match="CLS token"):
            load_extractor(spec.model_copy(update={"pooling": "cls"}), device="cpu")


def test_hiera_pretrained_folder_averages_every_token(tmp_path, images):
    """The same through the ``hf`` loader (a saved checkpoint with its own image processor)."""
    import transformers

    transformers.HieraModel(transformers.HieraConfig(**_HIERA)).save_pretrained(tmp_path)
    transformers.ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    ex = load_extractor(ModelSpec(name="hiera", loader="hf", id=str(tmp_path), modality="vision"), device="cpu")
    states = _hidden_states(ex, images[:2])
    assert [h.shape[1] for h in states[:2]] == [256, 256]
    for got, h in zip(ex.extract_batch(images[:2]), states):
        np.testing.assert_allclose(got, h.mean(dim=1).numpy(), atol=1e-5)


def test_tokens_the_model_does_not_declare_are_refused(images):
    """YOLOS appends detection tokens after the patches: no prefix count describes them, so the
    model is refused (naming the model and the layer) instead of averaging them as patches."""
    from tasks.extract.errors import ModelInputError

    spec = ModelSpec(name="tiny-yolos", loader="random_hf", id="YolosConfig", modality="vision",
                     config=dict(image_size=[32, 32], patch_size=8, num_detection_tokens=5, **_SMALL), image_size=32)
    with pytest.raises(ModelInputError, match=r"tiny-yolos.*layer 'embeddings': 22 tokens: 5 more than its 1 "):
        load_extractor(spec, device="cpu")


def test_prefix_count_is_checked_against_the_patch_grid():
    from types import SimpleNamespace

    from tasks.extract.hf_vision import num_prefix_tokens

    vit, hiera = SimpleNamespace(patch_size=8), SimpleNamespace(patch_size=[7, 7], patch_stride=[4, 4])
    assert num_prefix_tokens(vit, 17, 32, 32, declared=1) == 1
    assert num_prefix_tokens(vit, 10, 32, 32, declared=1) == 1  # fewer patches (MAE masking, merged stages): fine
    assert num_prefix_tokens(hiera, 256, 64, 64, declared=0) == 0
    assert num_prefix_tokens(hiera, 256, 64, 64, declared=None) == 0  # geometry alone uses the stride, not the kernel
    assert num_prefix_tokens(vit, 17, 32, 32, declared=None) == 1  # no embeddings module: T less the grid
    assert num_prefix_tokens(vit, 4, 32, 32, declared=None) == 0
    assert num_prefix_tokens(SimpleNamespace(), 65, 64, 64, declared=None) == 0
    with pytest.raises(ValueError, match="no patch token left"):
        num_prefix_tokens(vit, 5, 32, 32, declared=5)
    with pytest.raises(ValueError, match="1 more than its 1 CLS/register token"):
        num_prefix_tokens(vit, 18, 32, 32, declared=1)  # an undeclared token (a CLS the code does not know)
    with pytest.raises(ValueError, match="too many to be CLS/register tokens"):
        num_prefix_tokens(SimpleNamespace(patch_size=7), 256, 64, 64, declared=None)  # the old Hiera count: 175
    with pytest.raises(ValueError, match="cannot tell which hidden states"):
        num_prefix_tokens(SimpleNamespace(), 65, 64, 64, declared=None, tokens_elsewhere=True)  # PVT
