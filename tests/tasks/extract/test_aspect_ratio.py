"""A checkpoint whose image processor keeps each image's aspect ratio (a shortest-edge resize
without a centre crop): images of one aspect ratio extract as the model sees them; a batch of
mixed aspect ratios is refused by name with the fix (it failed with transformers' raw "Unable to
convert output 'pixel_values'" mid-extraction); ``crop_pct`` with ``image_size`` is that fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.extract import ModelInputError, extract_all, load_extractor
from tasks.extract.spec import ModelSpec

SHORT_EDGE = 32


@pytest.fixture(scope="module")
def aspect_keeping_checkpoint(tmp_path_factory) -> Path:
    """A tiny ConvNeXt (any input size) with a CLIP processor: shortest edge to 32, no crop."""
    from transformers import CLIPImageProcessorPil, ConvNextConfig, ConvNextModel

    path = tmp_path_factory.mktemp("aspect")
    torch.manual_seed(0)
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": SHORT_EDGE}, do_center_crop=False).save_pretrained(path)
    return path


def _spec(path: Path, **kw) -> ModelSpec:
    return ModelSpec(name="wide-view", loader="hf", id=str(path), modality="vision", pooling="avg", **kw)


def _images(*sizes: tuple[int, int]) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _by_hand(path: Path, image: Image.Image) -> list[np.ndarray]:
    """Each layer's spatial mean for one image, from transformers' own processor and model."""
    from transformers import CLIPImageProcessorPil, ConvNextModel

    pixels = CLIPImageProcessorPil.from_pretrained(path)(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        states = ConvNextModel.from_pretrained(path).eval()(pixels, output_hidden_states=True).hidden_states
    return [s[0].double().mean(dim=(1, 2)).numpy() for s in states]


def test_images_of_one_aspect_ratio_extract_at_their_own_shape(aspect_keeping_checkpoint):
    images = _images((64, 48), (80, 60))
    feats = extract_all(load_extractor(_spec(aspect_keeping_checkpoint), device="cpu"), images, batch_size=2)
    for row, image in enumerate(images):
        for layer, want in enumerate(_by_hand(aspect_keeping_checkpoint, image)):
            np.testing.assert_allclose(feats.layers[layer][row], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prepare", ["inline", "processes"])
def test_a_batch_of_mixed_aspect_ratios_is_refused_with_the_fix(aspect_keeping_checkpoint, prepare):
    extractor = load_extractor(_spec(aspect_keeping_checkpoint), device="cpu")
    with pytest.raises(ModelInputError) as info:
        extract_all(extractor, _images((64, 48), (48, 64)), batch_size=2, prepare=prepare, workers=1)
    msg = str(info.value)
    assert "model 'wide-view'" in msg and str(aspect_keeping_checkpoint) in msg, msg
    assert "CLIPImageProcessorPil" in msg and "32 x 42 from an image of 48 x 64" in msg, msg
    assert "42 x 32 from one of 64 x 48" in msg and "set crop_pct" in msg and "image_size" in msg, msg


def test_crop_pct_and_image_size_take_mixed_aspect_ratios(aspect_keeping_checkpoint):
    """The fix the refusal names: every image becomes the central square of its resized self, the
    same whether it is extracted with others of other shapes or alone."""
    spec = _spec(aspect_keeping_checkpoint, crop_pct=1.0, image_size=SHORT_EDGE)
    extractor = load_extractor(spec, device="cpu")
    images = _images((64, 48), (48, 64), (40, 40))
    together = extract_all(extractor, images, batch_size=3)
    for row, image in enumerate(images):
        alone = extract_all(extractor, [image], batch_size=1)
        for layer in range(len(together.layers)):
            np.testing.assert_allclose(together.layers[layer][row], alone.layers[layer][0], rtol=1e-5, atol=1e-6)


def test_an_image_the_processor_cannot_take_is_its_own_error_whatever_the_order():
    """A batch of two aspect ratios and an image the processor fails on alone: the processor's own
    error stands (`raise_if_mixed_sizes` returns), wherever that image sits in the batch (the
    aspect-ratio refusal had come first when the two shapes preceded it)."""
    from tasks.extract.refusals import MixedPixelSizes, raise_if_mixed_sizes

    def processor(images, return_tensors):  # keeps each image's shape; cannot take a 7-pixel-wide one
        if images[0].width == 7:
            raise ValueError("cannot take this image")
        return {"pixel_values": np.zeros((1, 3, images[0].height, images[0].width), np.float32)}

    wide, tall, bad = Image.new("RGB", (4, 2)), Image.new("RGB", (2, 4)), Image.new("RGB", (7, 7))
    for batch in ([wide, tall, bad], [bad, wide, tall], [wide, bad, tall]):
        assert raise_if_mixed_sizes(processor, batch, ValueError("the batch")) is None
    with pytest.raises(MixedPixelSizes, match=r"\(2 x 4 from an image of 2 x 4, 4 x 2 from one of 4 x 2; height x width\)"):
        raise_if_mixed_sizes(processor, [wide, tall], ValueError("the batch"))
