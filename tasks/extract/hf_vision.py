"""Vision feature extraction for Hugging Face models (ViT, DINOv2, CLIP/SigLIP towers, MAE, ConvNeXt...).

Layers: every entry of ``hidden_states`` (``output_hidden_states=True``): ``embeddings`` (patch
embedding output, or the CNN stem), then ``layer.01`` .. ``layer.NN`` (transformer blocks, or CNN
stages). The final layer norm some models apply after the last block (ViT's ``last_hidden_state``)
is not a separate layer: ``hidden_states`` are taken as transformers returns them.

Pooling per hidden state (`(B, D) float32`):
- token sequences `(B, T, D)`: ``cls`` = token 0; ``avg`` = mean over patch tokens, CLS and
  register tokens excluded. The number of such prefix tokens is ``T - (H/p)(W/p)`` for the input
  size H x W and the config's ``patch_size`` (0 when the model has no patch size or T is smaller,
  e.g. Swin's merged stages; then every token is averaged).
- CNN maps `(B, C, H, W)`: global average pooling (``cls`` is refused at load time).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from tasks.extract.base import (
    TORCH_DTYPES,
    BatchOutput,
    Extractor,
    count_parameters,
    layer_names,
    require_hidden_states,
    to_numpy_f32,
)
from tasks.extract.errors import ModelInputError
from tasks.extract.hf_models import LoadedModel, input_device
from tasks.extract.image_pool import ProcessorRecipe, apply_processor, processor_recipe
from tasks.extract.images import ImageItem
from tasks.extract.pooling import pool_vision
from tasks.extract.spec import ModelSpec


@dataclass
class PreparedPixels:
    pixel_values: torch.Tensor  # (B, 3, H, W) float32


def num_prefix_tokens(config: Any, seq_len: int, height: int, width: int) -> int:
    """CLS + register tokens in front of the patch tokens (0 when it cannot be told)."""
    patch = getattr(config, "patch_size", None)
    if patch is None:
        return 0
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    extra = seq_len - (height // ph) * (width // pw)
    return extra if extra >= 0 else 0


class HFVisionExtractor(Extractor):
    """Pooled hidden states of a Hugging Face vision model; see the module docstring."""

    modality = "vision"

    def __init__(self, spec: ModelSpec, loaded: LoadedModel, processor: Any, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self.model = loaded.model
        self.source_commit = loaded.commit
        self.processor = processor
        self.param_count = count_parameters(loaded.counted)
        self.dtype = TORCH_DTYPES[spec.dtype]
        self._input_device = input_device(self.model)
        self._extra_kwargs = self._forward_kwargs()
        self._unshuffled = self._unshuffled_patches()
        self._recipe: ProcessorRecipe | None | bool = False  # False: not computed yet
        probe = [Image.new("RGB", (64, 48), (127, 127, 127))]
        self._finish_init(probe, lambda n: layer_names("embeddings", "layer", n - 1))

    def _forward_kwargs(self) -> dict[str, Any]:
        """`interpolate_pos_encoding=True` when the processor's size differs from the config's."""
        params = inspect.signature(self.model.forward).parameters
        cfg_size = getattr(self.model.config, "image_size", None)
        want = self.spec.image_size
        if "interpolate_pos_encoding" in params and want is not None and cfg_size not in (None, want):
            return {"interpolate_pos_encoding": True}
        return {}

    def _unshuffled_patches(self) -> bool:
        """MAE with masking off (``mask_ratio`` 0) still shuffles its patches with fresh random
        noise in every forward (order-invariant only up to float rounding, and it advances the
        global torch RNG): such a model gets noise that keeps the patches in order."""
        config = self.model.config
        return (getattr(config, "model_type", None) == "vit_mae" and not getattr(config, "mask_ratio", 0)
                and "noise" in inspect.signature(self.model.forward).parameters)

    def _patch_noise(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, n_patches)`` increasing noise: MAE's argsort of it is the identity order."""
        patch = getattr(self.model.config, "patch_size", 16)
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        n = (pixels.shape[-2] // ph) * (pixels.shape[-1] // pw)
        return torch.arange(n, dtype=torch.float32, device=pixels.device).expand(pixels.shape[0], n)

    def image_recipe(self) -> ProcessorRecipe | None:
        if self._recipe is False:
            self._recipe = processor_recipe(self.processor)
        return self._recipe

    def from_recipe_output(self, pixel_values: np.ndarray) -> PreparedPixels:
        pixels = torch.from_numpy(pixel_values)
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        return PreparedPixels(pixels)

    def prepare(self, items: Sequence[ImageItem]) -> PreparedPixels:
        return self.from_recipe_output(apply_processor(self.processor, items))

    @torch.inference_mode()
    def forward(self, prepared: PreparedPixels, with_nll: bool = False) -> BatchOutput:
        if with_nll:
            raise ValueError("bits per byte applies to causal language models only")
        x = prepared.pixel_values.to(self._input_device, dtype=self.dtype, non_blocking=True)
        extra = {**self._extra_kwargs, "noise": self._patch_noise(x)} if self._unshuffled else self._extra_kwargs
        out = self.model(pixel_values=x, output_hidden_states=True, return_dict=True, **extra)
        states = require_hidden_states(self.spec, self.model, out)
        if self.spec.pooling == "cls" and any(hs.dim() == 4 for hs in states):
            raise ValueError(f"{self.spec.name}: 'cls' pooling needs a token model; this one has CNN feature maps: use 'avg'")
        h, w = prepared.pixel_values.shape[-2:]
        layers = []
        for hs in states:
            prefix = num_prefix_tokens(self.model.config, hs.shape[1], h, w) if hs.dim() == 3 else 0
            try:
                layers.append(to_numpy_f32(pool_vision(hs, self.spec.pooling, prefix)))
            except ValueError as err:  # e.g. 'cls' on a model without a CLS token (SigLIP)
                raise ModelInputError(self.spec.name, self.spec.id, str(err)) from None
        return BatchOutput(layers)
