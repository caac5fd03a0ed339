"""Idefics3 and SmolVLM checkpoints whose image processor does not split images
(``do_image_splitting: false``): the processor squashes each image to one ``max_image_size`` square,
but takes a list of B images as one sample of B images, `(1, B, 3, H, W)`. Those 5-D pixel values
had reached the vision tower as they were and the load probe failed inside the model (``too many
values to unpack``). Now they are one row per image (`image_pool.one_row_per_image`), and the
features are the vision encoder's hidden states on the very pixels the vision-language model gives
its encoder, averaged over the patch tokens (no CLS token), as for LLaVA's tower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.extract import ModelInputError, check_model, extract_all, load_extractor
from tasks.extract.images import decode_image
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import png_bytes

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, patch_size=8, image_size=32)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=37,
            vocab_size=500)
FAMILIES = [("SmolVLMConfig", "SmolVLMImageProcessor"), ("Idefics3Config", "Idefics3ImageProcessor")]
#: Images of several aspect ratios: each is squashed to one square.
IMAGES = [png_bytes((200, 30, 30), shape=0, size=(96, 80)), png_bytes((20, 30, 200), shape=1, size=(40, 100)),
          png_bytes((30, 160, 60), shape=2, size=(64, 64))]


def _checkpoint(folder: Path, config_class: str, processor_type: str, **spec_fields) -> tuple[ModelSpec, torch.nn.Module]:
    """A saved tiny vision-language model with an unsplitting processor config, and the model."""
    import transformers

    config = getattr(transformers, config_class)(vision_config=VISION, text_config=TEXT)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config).eval()
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": processor_type, "size": {"longest_edge": 64}, "max_image_size": {"longest_edge": 32},
        "do_image_splitting": False}))
    return ModelSpec(name="vlm", loader="hf", id=str(folder), modality="vision", **spec_fields), model


def _encoder_input(vlm: torch.nn.Module, pixels: torch.Tensor, mask: torch.Tensor) -> dict:
    """What the vision-language model's own image path passes its vision encoder (caught by a hook)."""
    seen: dict = {}

    def catch(module, args, kwargs):
        seen.update(kwargs)

    hook = vlm.vision_model.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.get_image_features(pixel_values=pixels, pixel_attention_mask=mask)
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("config_class, processor_type", FAMILIES)
def test_an_unsplitting_processor_gives_the_vision_encoder_features_one_row_per_image(
        tmp_path: Path, config_class: str, processor_type: str) -> None:
    spec, vlm = _checkpoint(tmp_path, config_class, processor_type)
    check_model(spec)
    ex = load_extractor(spec, device="cpu")
    assert type(ex.model).__name__.endswith("VisionTransformer")
    assert ex.param_count == sum(p.numel() for p in vlm.vision_model.parameters())
    feats = extract_all(ex, IMAGES)
    assert [layer.shape for layer in feats.layers] == [(3, 32)] * 3
    for i, item in enumerate(IMAGES):  # each image alone, through the model's own processor and image path
        out = ex.processor(images=[[decode_image(item)]], return_tensors="pt")
        assert tuple(out["pixel_values"].shape) == (1, 1, 3, 32, 32)
        seen = _encoder_input(vlm, out["pixel_values"], out["pixel_attention_mask"])
        with torch.no_grad():
            states = vlm.vision_model(pixel_values=seen["pixel_values"], patch_attention_mask=seen["patch_attention_mask"],
                                      output_hidden_states=True).hidden_states
        assert len(states) == len(feats.layers)
        for layer, hs in zip(feats.layers, states):
            assert hs.shape[1] == 16  # 4 x 4 patches, no CLS token
            expected = hs[0].mean(dim=0).numpy()
            np.testing.assert_allclose(layer[i], expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_image_size_sets_the_square_an_unsplitting_processor_gives(tmp_path: Path) -> None:
    """``image_size`` had set the processor's first resize only, then squashed to ``max_image_size``
    anyway: silently ignored."""
    spec, _ = _checkpoint(tmp_path, *FAMILIES[0], image_size=48)
    ex = load_extractor(spec, device="cpu")
    assert ex.processor.max_image_size == {"longest_edge": 48}
    assert tuple(ex.prepare(IMAGES[:2]).pixel_values.shape) == (2, 3, 48, 48)
    assert [layer.shape for layer in extract_all(ex, IMAGES).layers] == [(3, 32)] * 3


def test_crop_pct_is_refused_for_an_unsplitting_processor(tmp_path: Path) -> None:
    spec, _ = _checkpoint(tmp_path, *FAMILIES[1], crop_pct=0.9)
    with pytest.raises(ModelInputError, match="crop_pct needs an image processor that resizes the shorter side"):
        check_model(spec)


def test_more_images_than_items_or_padded_ones_are_refused_by_name() -> None:
    from tasks.extract.image_pool import one_row_per_image

    pixels = np.zeros((1, 3, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"SmolVLMImageProcessorPil gave 1 x 3 images for 2 input image\(s\)"):
        one_row_per_image(pixels, None, 2, "SmolVLMImageProcessorPil")
    mask = np.ones((1, 3, 8, 8), np.int64)
    mask[0, 1, :, 6:] = 0
    with pytest.raises(ValueError, match="padded some images"):
        one_row_per_image(pixels, mask, 3, "X")
    pixels[0, 1] = 1.0
    np.testing.assert_array_equal(one_row_per_image(pixels, None, 3, "X")[1], pixels[0, 1])


def test_a_processor_that_gives_several_images_per_input_is_refused_at_the_check(tmp_path: Path) -> None:
    """LLaVA-NeXT's any-resolution processor gives each image as a grid of tiles and a thumbnail,
    `(B, 1 + tiles, 3, H, W)`, with no ``do_image_splitting`` switch: its checkpoint had passed the
    check and failed at the load probe inside the model (``too many values to unpack``), after the
    weights loaded. Two probe images through the processor now tell it at the check (a folder without
    weights: the refusal cannot come from loading them)."""
    from transformers import LlavaNextConfig

    pinpoints = [[32, 64], [64, 32], [64, 64]]
    LlavaNextConfig(vision_config=dict(VISION, model_type="clip_vision_model"), text_config=dict(TEXT, model_type="llama"),
                    image_grid_pinpoints=pinpoints).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "LlavaNextImageProcessor", "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32}, "image_grid_pinpoints": pinpoints}))
    spec = ModelSpec(name="llava-next", loader="hf", id=str(tmp_path), modality="vision")
    for entry in (check_model, lambda s: load_extractor(s, device="cpu")):
        with pytest.raises(ModelInputError, match=r"model 'llava-next'.*LlavaNextImageProcessorPil gave 2 x 5 images for 2 "
                                                  r"input image\(s\).*not be one row per image"):
            entry(spec)


@pytest.mark.parametrize("config_class, processor_type", FAMILIES)
def test_resample_is_the_filter_an_unsplitting_processor_resizes_with(
        tmp_path: Path, config_class: str, processor_type: str) -> None:
    """``resample`` had been refused for these processors ("resizes its own way"): their ``resize``
    only works out the target size (a longest edge, or the max_image_size square) and hands the
    ``resample`` filter on to the PIL backend's resize, for the first resize and the square alike. The
    pixels prh prepares (in process and through a worker's recipe) are the processor's own with that
    filter asked for in the call, and, for a square image (whose first resize keeps its size), a PIL
    ``NEAREST`` squash to the square, rescaled and normalised (mean = std = 0.5) by hand."""
    from PIL import Image
    from transformers import AutoImageProcessor
    from transformers.image_utils import PILImageResampling

    from tasks.extract.image_pool import run_recipe

    spec, _ = _checkpoint(tmp_path, config_class, processor_type, image_size=48, resample="nearest")
    check_model(spec)
    ex = load_extractor(spec, device="cpu")
    assert ex.processor.resample == PILImageResampling.NEAREST
    pixels = ex.prepare(IMAGES).pixel_values.numpy()
    assert pixels.shape == (3, 3, 48, 48)
    own = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    own.max_image_size = {"longest_edge": 48}
    asked = own(images=[[decode_image(item)] for item in IMAGES], resample=PILImageResampling.NEAREST,
                return_tensors="np")["pixel_values"][:, 0]
    np.testing.assert_array_equal(pixels, asked)
    lanczos = own(images=[[decode_image(item)] for item in IMAGES], return_tensors="np")["pixel_values"][:, 0]
    assert not np.allclose(pixels, lanczos, atol=1e-3)  # the class's own LANCZOS gives other pixels: the setting counts
    recipe = ex.image_recipe()
    assert recipe is not None
    np.testing.assert_array_equal(run_recipe(recipe, IMAGES), pixels)
    square = np.asarray(decode_image(IMAGES[2]).resize((48, 48), Image.NEAREST), dtype=np.float32).transpose(2, 0, 1)
    np.testing.assert_allclose(pixels[2], (square / 255 - 0.5) / 0.5, rtol=0, atol=1e-6)


def test_an_image_size_smaller_than_the_encoder_patch_is_refused_by_the_check(tmp_path: Path) -> None:
    """Idefics3's vision encoder does not run on the ``meta`` device (its patch mask takes ``.item()``),
    so its own size cannot be tried there: an ``image_size`` below its 8-pixel patch is refused from
    the config alone (it had failed at the load probe, inside the model)."""
    spec, _ = _checkpoint(tmp_path, *FAMILIES[1], image_size=4)
    for entry in (check_model, lambda s: load_extractor(s, device="cpu")):
        with pytest.raises(ModelInputError, match=r"model 'vlm' .*image_size 4 is smaller than the patch size 8 of its "
                                                  r"Idefics3VisionConfig: no whole patch fits in 4 x 4 pixels; set "
                                                  r"image_size: 8 or more \(the model's own size: 32\)"):
            entry(spec)
