"""Image processors of vision-language models that split an image into tiles (``do_image_splitting``:
LFM2-VL's ``Lfm2VlImageProcessor``, Idefics3's, SmolVLM's) give several rows of pixels per image,
so features would not be one row per image: they are refused by name at the check, before any
weights load. LFM2-VL's processor also outputs NaFlex patch inputs (``pixel_attention_mask``,
``spatial_shapes``) and had been taken for a plain patch processor (`is_patch_processor`); in this
environment it cannot even be imported (it needs torchvision), which the check now says instead of
"no usable image processor config". A ``random_hf`` LFM2-VL gets a plain NaFlex processor for its
SigLIP 2 tower and extracts one row per image."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tasks.extract import ModelInputError, check_model, extract_all, load_extractor
from tasks.extract.hf_models import is_patch_processor, tiles_images
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import png_bytes

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=37,
            vocab_size=500)
LFM2_VL = {"vision_config": {**VISION, "num_patches": 16}, "text_config": {**TEXT, "layer_types": ["full_attention", "conv"]},
           "projector_hidden_size": 32}


def _checkpoint(folder: Path, config, processor: dict) -> ModelSpec:
    """A checkpoint folder holding a config and a processor config only: the check reads no weights."""
    config.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return ModelSpec(name="vlm", loader="hf", id=str(folder), modality="vision")


def test_a_processor_that_splits_images_into_tiles_is_refused_at_the_check(tmp_path: Path) -> None:
    """SmolVLM's checkpoint had passed the check and failed at the load probe inside the model
    (``ValueError: too many values to unpack``), its processor's tiles stacked per image."""
    from transformers import SmolVLMConfig

    spec = _checkpoint(tmp_path, SmolVLMConfig(vision_config={**VISION, "image_size": 32}, text_config=TEXT),
                       {"image_processor_type": "SmolVLMImageProcessor", "size": {"longest_edge": 64},
                        "max_image_size": {"longest_edge": 32}})
    with pytest.raises(ModelInputError, match="SmolVLMImageProcessorPil splits each image into tiles") as info:
        check_model(spec)
    assert "model 'vlm'" in str(info.value) and "one row per image" in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_lfm2_vl_s_processor_without_torchvision_is_refused_as_a_missing_library(tmp_path: Path) -> None:
    from transformers import Lfm2VlConfig

    spec = _checkpoint(tmp_path, Lfm2VlConfig(**LFM2_VL), {"image_processor_type": "Lfm2VlImageProcessor"})
    with pytest.raises(ModelInputError, match=r"needs a library that is not installed here: its image processor "
                                               r"\(torchvision: Lfm2VlImageProcessor\) needs torchvision") as info:
        check_model(spec)
    assert "no usable image processor config" not in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="Lfm2VlImageProcessor needs torchvision, which is not installed here")
def test_lfm2_vl_s_processor_is_not_a_plain_patch_processor() -> None:
    from transformers import Lfm2VlImageProcessor

    proc = Lfm2VlImageProcessor()
    assert tiles_images(proc) and not is_patch_processor(proc)


def test_only_a_processor_that_splits_images_counts_as_tiling() -> None:
    from transformers import Siglip2ImageProcessorPil, SmolVLMImageProcessorPil

    naflex = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)
    assert is_patch_processor(naflex) and not tiles_images(naflex)
    assert tiles_images(SmolVLMImageProcessorPil()) and not tiles_images(SmolVLMImageProcessorPil(do_image_splitting=False))


def test_a_random_lfm2_vl_extracts_its_siglip2_tower_one_row_per_image() -> None:
    """Images large enough that LFM2-VL's own processor would tile them still give one row each."""
    spec = ModelSpec(name="lfm", loader="random_hf", id="Lfm2VlConfig", modality="vision", config=LFM2_VL)
    ex = load_extractor(spec, device="cpu")
    assert type(ex.model).__name__ == "Siglip2VisionModel" and is_patch_processor(ex.processor)
    images = [png_bytes((200, 30, 30), shape=0, size=(96, 80)), png_bytes((20, 30, 200), shape=1, size=(700, 600))]
    feats = extract_all(ex, images)
    assert [layer.shape for layer in feats.layers] == [(2, 32)] * 3
    assert all(np.isfinite(layer).all() for layer in feats.layers)
