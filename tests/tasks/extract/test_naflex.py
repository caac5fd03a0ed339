"""SigLIP 2 NaFlex vision models (``Siglip2VisionModel``): images preprocessed by their own image
processor (resized keeping the aspect ratio to at most ``max_num_patches`` patches, cut into
patches, padded), every layer pooled over the image's valid patches only.

The hand references run the model on one image at a time with its valid patches only (no padding
at all) and average every hidden state with a plain mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tasks.extract import ModelInputError, check_model, extract_all, load_extractor
from tasks.extract import image_pool
from tasks.extract.images import decode_image
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import png_bytes

#: A tiny NaFlex tower: 8 x 8 patches, a 4 x 4 position grid (interpolated to each image's patch grid).
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, num_patches=16)


def _spec(config_id: str = "Siglip2VisionConfig", config: dict | None = None, **kw) -> ModelSpec:
    return ModelSpec(name="tiny-naflex", loader="random_hf", id=config_id, modality="vision",
                     config=TOWER if config is None else config, **kw)


@pytest.fixture(scope="module")
def shaped_images() -> list[bytes]:
    """Images of other aspect ratios: wide, tall, square, tiny; so other patch grids and padding."""
    sizes = [(120, 40), (30, 100), (64, 64), (96, 80), (7, 5), (200, 90)]
    return [png_bytes((40 * i, 200 - 30 * i, 90), size=s, shape=i) for i, s in enumerate(sizes)]


@pytest.fixture(autouse=True, scope="module")
def _stop_workers():
    yield
    image_pool.shutdown_pool()


def _hand_features(model: torch.nn.Module, processor, image: bytes) -> list[np.ndarray]:
    """`(D,)` per layer: the model's hidden states for one image alone, its valid patches only (no
    padding, mask all ones), each averaged over its tokens."""
    inputs = processor(images=[decode_image(image)], return_tensors="pt")
    n = int(inputs["pixel_attention_mask"].sum())
    rows, cols = inputs["spatial_shapes"][0].tolist()
    assert n == rows * cols
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"][:, :n], pixel_attention_mask=torch.ones(1, n, dtype=torch.int32),
                    spatial_shapes=inputs["spatial_shapes"], output_hidden_states=True, return_dict=True)
    return [hs[0].double().mean(dim=0).float().numpy() for hs in out.hidden_states]


def _assert_close_to_scale(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Within 1e-5 of the layer's scale (its largest absolute value), the padding contract's float32 bound."""
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= 1e-5 * scale, f"{what}: max difference {err:.3g} for a layer of scale {scale:.3g}"


def _patch_counts(processor, images: list[bytes]) -> list[int]:
    out = processor(images=[decode_image(b) for b in images], return_tensors="np")
    return [int(m.sum()) for m in out["pixel_attention_mask"]]


def test_naflex_features_are_a_mean_over_each_images_own_patches(shaped_images):
    """A random NaFlex tower extracts: in a batch of images of other aspect ratios (other patch
    counts, other padding), each image's pooled layers equal the hand mean over its valid patches
    of a forward of that image alone without padding, and the image extracted alone."""
    ex = load_extractor(_spec(), device="cpu")
    assert type(ex.model).__name__ == "Siglip2VisionModel"
    assert ex.layer_names == ["embeddings", "layer.01", "layer.02"] and ex.layer_dims == [32, 32, 32]
    counts = _patch_counts(ex.processor, shaped_images)
    assert len(set(counts)) > 2 and min(counts) < 16, counts  # the batch really mixes patch counts and padding
    batched = extract_all(ex, shaped_images, batch_size=len(shaped_images), prepare="inline").layers
    for i, image in enumerate(shaped_images):
        alone = ex.extract_batch([image])
        for name, layer, single, hand in zip(ex.layer_names, batched, alone, _hand_features(ex.model, ex.processor, image)):
            _assert_close_to_scale(layer[i], hand, f"image {i} ({counts[i]} patches), layer {name}, batched")
            _assert_close_to_scale(single[0], hand, f"image {i} ({counts[i]} patches), layer {name}, alone")


def test_padding_never_reaches_the_features(shaped_images):
    """The last layer's padded positions set to NaN (a hook on the last encoder layer, whose output
    only becomes a hidden state): the pooled features stay finite and equal, so pads are masked out
    (`torch.where`), not merely weighted by zero."""
    ex = load_extractor(_spec(), device="cpu")
    prepared = ex.prepare(shaped_images[:3])
    clean = ex.forward(prepared).layers
    pads = prepared.pixel_attention_mask == 0
    assert pads.any()

    def poison(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[pads] = float("nan")
        return output

    hook = ex.model.encoder.layers[-1].register_forward_hook(poison)
    try:
        poisoned = ex.forward(prepared).layers
    finally:
        hook.remove()
    assert np.isfinite(poisoned[-1]).all()
    for a, b in zip(clean, poisoned):
        np.testing.assert_array_equal(a, b)


def test_naflex_cls_pooling_is_refused_like_siglip():
    """A NaFlex tower has no CLS token, as SigLIP's: ``pooling: cls`` is refused (use 'avg'), the
    attention-pooling head is no layer."""
    spec = _spec(pooling="cls")
    with pytest.raises(ModelInputError) as info:
        check_model(spec)
    assert "Siglip2VisionModel's embeddings hold none" in str(info.value) and "use 'avg'" in str(info.value)
    with pytest.raises(ModelInputError, match="needs a model with a CLS token"):
        load_extractor(spec, device="cpu")


def test_two_tower_siglip2_config_extracts_its_vision_tower(shaped_images):
    """``Siglip2Config`` as a vision spec runs and counts its ``vision_model`` only, preprocessed as
    its vision config says."""
    ex = load_extractor(_spec("Siglip2Config", {"vision_config": TOWER, "text_config": {"hidden_size": 32,
                        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}}), device="cpu")
    assert type(ex.model).__name__ == "Siglip2VisionModel"
    assert ex.param_count == sum(p.numel() for p in ex.model.parameters())
    assert (ex.processor.patch_size, ex.processor.max_num_patches) == (8, 16)
    layers = ex.extract_batch(shaped_images[:3])
    for i, image in enumerate(shaped_images[:3]):
        for layer, hand in zip(layers, _hand_features(ex.model, ex.processor, image)):
            _assert_close_to_scale(layer[i], hand, f"image {i}")


@pytest.mark.parametrize("two_tower", [False, True])
def test_saved_naflex_checkpoint_extracts_as_the_random_model(tmp_path, shaped_images, two_tower):
    """A local folder saved with ``save_pretrained`` (weights + the processor's config) loads with
    the ``hf`` loader, its processor from the folder (PIL backend), and gives the random model's features."""
    from transformers import Siglip2Config, Siglip2Model

    random_ex = load_extractor(_spec(), device="cpu")
    want = random_ex.extract_batch(shaped_images)
    if two_tower:
        model = Siglip2Model(Siglip2Config(vision_config=TOWER, text_config={"hidden_size": 32, "num_hidden_layers": 1,
                                                                             "num_attention_heads": 2, "intermediate_size": 64}))
        model.vision_model.load_state_dict(random_ex.model.state_dict())
        model.save_pretrained(tmp_path)
    else:
        random_ex.model.save_pretrained(tmp_path)
    random_ex.processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["max_num_patches"] == 16 and saved["patch_size"] == 8
    ex = load_extractor(ModelSpec(name="saved-naflex", loader="hf", id=str(tmp_path), modality="vision"), device="cpu")
    assert type(ex.processor).__name__ == "Siglip2ImageProcessorPil"
    got = ex.extract_batch(shaped_images)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_image_size_sets_the_patch_budget(shaped_images):
    """``image_size: S`` gives a NaFlex model the patch budget of an S x S image, ``(S / patch)^2``
    patches (images keep their aspect ratio); S not a multiple of the patch size and ``crop_pct`` are refused."""
    ex = load_extractor(_spec(image_size=16), device="cpu")
    assert ex.processor.max_num_patches == 4
    assert max(_patch_counts(ex.processor, shaped_images)) <= 4
    layers = ex.extract_batch(shaped_images[:2])
    assert ex.prepare(shaped_images[:2]).pixel_values.shape[1] == 4
    for i, image in enumerate(shaped_images[:2]):
        for layer, hand in zip(layers, _hand_features(ex.model, ex.processor, image)):
            _assert_close_to_scale(layer[i], hand, f"image {i}")
    with pytest.raises(ModelInputError, match="multiple of its patch size 8"):
        check_model(_spec(image_size=20))
    with pytest.raises(ModelInputError, match="crop_pct"):
        check_model(_spec(image_size=16, crop_pct=0.875))


def test_worker_processes_give_identical_naflex_features(shaped_images):
    """The NaFlex processor runs in worker processes (its recipe) with the very features of the
    in-process path: patches, masks and patch grids travel back together."""
    ex = load_extractor(_spec(batch_size=4), device="cpu")
    assert ex.image_recipe() is not None
    inline = extract_all(ex, shaped_images, prepare="inline")
    for other in (extract_all(ex, shaped_images, prepare="processes", workers=1),
                  extract_all(ex, shaped_images, prepare="threads", workers=2)):
        for a, b in zip(inline.layers, other.layers):
            assert np.array_equal(a, b)


def test_a_processor_that_does_not_fit_the_model_is_refused(tmp_path):
    """A NaFlex checkpoint whose folder names a fixed-size processor (SigLIP's) would get
    ``(B, 3, H, W)`` pixels, and a fixed-size SigLIP beside a NaFlex processor patches: each is
    refused by name at load, before any forward."""
    from transformers import (Siglip2ImageProcessorPil, Siglip2VisionConfig, Siglip2VisionModel, SiglipImageProcessorPil,
                              SiglipVisionConfig, SiglipVisionModel)

    naflex, fixed = tmp_path / "naflex", tmp_path / "fixed"
    Siglip2VisionModel(Siglip2VisionConfig(**TOWER)).save_pretrained(naflex)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(naflex)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                         image_size=32, patch_size=8)).save_pretrained(fixed)
    Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16).save_pretrained(fixed)
    for folder, needle in ((naflex, "SiglipImageProcessorPil gives no 'pixel_attention_mask'"),
                           (fixed, "Siglip2ImageProcessorPil cuts images into patches")):
        with pytest.raises(ModelInputError, match=needle):
            load_extractor(ModelSpec(name="mixed", loader="hf", id=str(folder), modality="vision"), device="cpu")
