"""Vision feature extraction for Hugging Face models (ViT, DINOv2, CLIP/SigLIP towers, MAE, ConvNeXt...).

Layers: every entry of ``hidden_states`` (``output_hidden_states=True``): ``embeddings`` (patch
embedding output, or the CNN stem), then ``layer.01`` .. ``layer.NN`` (transformer blocks, or CNN
stages). The final layer norm some models apply after the last block (ViT's ``last_hidden_state``)
is not a separate layer: ``hidden_states`` are taken as transformers returns them.

Pooling per hidden state (`(B, D) float32`):
- token sequences `(B, T, D)`: ``cls`` = token 0; ``avg`` = mean over patch tokens, CLS and
  register tokens excluded. The number P of such prefix tokens is what the model declares: the
  token parameters of its ``embeddings`` (``cls_token`` / ``class_embedding`` 1, DeiT's
  ``distillation_token`` 1, ``register_tokens`` R, else the config's ``num_register_tokens``); 0
  for models with none (SigLIP, Swin, Hiera). It is checked against the patch grid at the
  config's stride (``patch_stride``, else ``patch_size``; Hiera's ``patch_size`` is the kernel of
  an overlapping convolution): a layer with no patch token left, or with more tokens than P plus
  the grid, is refused (`ModelInputError` naming the layer) rather than averaged over guessed
  tokens. A model without an ``embeddings`` module gets ``T`` less the grid (0 when T is smaller:
  merged stages; refused above `MAX_GEOMETRY_PREFIX`).
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


#: Parameters of a vision model's ``embeddings`` that are one token each, put in front of the
#: patch tokens: the CLS token (ViT, DINOv2, MAE, BEiT: ``cls_token``; CLIP: ``class_embedding``)
#: and DeiT's distillation token. Register tokens (``register_tokens``, ``(1, R, D)``) are R tokens.
_ONE_TOKEN_PARAMS = ("cls_token", "class_embedding", "distillation_token")


def declared_prefix_tokens(model: torch.nn.Module) -> int | None:
    """CLS, distillation and register tokens the model puts in front of its patch tokens, read
    from the parameters of its ``embeddings`` module (ViT 1, DeiT 2, DINOv2 with R registers
    1 + R, SigLIP / Swin / Hiera 0); registers without a parameter come from the config's
    ``num_register_tokens``. None when the model has no ``embeddings`` module to read."""
    emb = getattr(model, "embeddings", None)
    if not isinstance(emb, torch.nn.Module):
        return None
    count = sum(isinstance(getattr(emb, name, None), torch.Tensor) for name in _ONE_TOKEN_PARAMS)
    registers = getattr(emb, "register_tokens", None)
    if isinstance(registers, torch.Tensor) and registers.dim() >= 2:
        count += int(registers.shape[-2])
    else:
        count += int(getattr(getattr(model, "config", None), "num_register_tokens", 0) or 0)
    return count


def has_token_params(model: torch.nn.Module) -> bool:
    """Whether any module of the model holds a CLS/distillation/register token parameter (PVT keeps
    its CLS token in the patch embedding of its last stage only)."""
    names = set(_ONE_TOKEN_PARAMS) | {"register_tokens"}
    return any(name.rsplit(".", 1)[-1] in names for name, _ in model.named_parameters())


def patch_stride(config: Any) -> tuple[int, int] | None:
    """Pixels between neighbouring patch tokens: ``patch_stride`` where the config has one (Hiera:
    its ``patch_size`` is the kernel of an overlapping convolution), else ``patch_size``."""
    for name in ("patch_stride", "patch_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value, value
        if isinstance(value, (list, tuple)) and len(value) >= 2 and all(isinstance(v, int) and v > 0 for v in value[:2]):
            return int(value[0]), int(value[1])
    return None


#: Most prefix tokens told by geometry alone (a model without ``embeddings``): CLS, distillation
#: and a few registers. More than this is not a prefix but a count that cannot be explained.
MAX_GEOMETRY_PREFIX = 8


def num_prefix_tokens(config: Any, seq_len: int, height: int, width: int, declared: int | None,
                      tokens_elsewhere: bool = False) -> int:
    """CLS + register tokens in front of the patch tokens of one ``(B, seq_len, D)`` hidden state.

    ``declared`` (`declared_prefix_tokens`) is used when known; the geometry (``seq_len`` against
    the patch grid at the config's stride, rounded up) only checks it. Without it the count is
    ``seq_len`` less the patch grid (0 for fewer tokens than the grid: merged stages), and 0 when
    there is no grid either, unless the model holds token parameters somewhere
    (``tokens_elsewhere``, `has_token_params`). Raises ``ValueError`` when the count is not
    plausible: no patch token left, more tokens than the prefix plus the patch grid (tokens the
    model does not declare), or token parameters that cannot be placed."""
    stride = patch_stride(config)
    grid = -(-height // stride[0]) * -(-width // stride[1]) if stride else None
    if declared is None:
        if grid is None:
            if tokens_elsewhere:
                raise ValueError("the model has a CLS/register token parameter outside an 'embeddings' module and no "
                                 "patch size in its config: cannot tell which hidden states carry it")
            return 0
        extra = seq_len - grid
        if extra > MAX_GEOMETRY_PREFIX:
            raise ValueError(f"{seq_len} tokens for a {height}x{width} input at patch stride {stride}: {extra} more than "
                             f"the {grid} patches, too many to be CLS/register tokens; cannot tell the patch tokens")
        return max(extra, 0)
    if seq_len - declared < 1:
        raise ValueError(f"{seq_len} tokens, but the model declares {declared} CLS/register token(s): no patch token left")
    if grid is not None and seq_len - declared > grid:
        raise ValueError(f"{seq_len} tokens: {seq_len - declared - grid} more than its {declared} CLS/register token(s) "
                         f"and the {grid} patches of a {height}x{width} input at patch stride {stride} (tokens this "
                         "code does not know, e.g. detection tokens); cannot tell the patch tokens")
    return declared


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
        self._declared_prefix = declared_prefix_tokens(self.model)
        self._tokens_elsewhere = self._declared_prefix is None and has_token_params(self.model)
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
        with self.full_float32():
            out = self.model(pixel_values=x, output_hidden_states=True, return_dict=True, **extra)
        states = require_hidden_states(self.spec, self.model, out)
        if self.spec.pooling == "cls" and any(hs.dim() == 4 for hs in states):
            raise ValueError(f"{self.spec.name}: 'cls' pooling needs a token model; this one has CNN feature maps: use 'avg'")
        h, w = prepared.pixel_values.shape[-2:]
        names = layer_names("embeddings", "layer", len(states) - 1)
        layers = []
        for name, hs in zip(names, states):
            try:
                prefix = (num_prefix_tokens(self.model.config, hs.shape[1], h, w, self._declared_prefix, self._tokens_elsewhere)
                          if hs.dim() == 3 else 0)
            except ValueError as err:  # an implausible prefix count: refuse rather than average the wrong tokens
                raise ModelInputError(self.spec.name, self.spec.id, f"layer {name!r}: {err}") from None
            try:
                layers.append(to_numpy_f32(pool_vision(hs, self.spec.pooling, prefix)))
            except ValueError as err:  # e.g. 'cls' on a model without a CLS token (SigLIP)
                raise ModelInputError(self.spec.name, self.spec.id, str(err)) from None
        return BatchOutput(layers)
