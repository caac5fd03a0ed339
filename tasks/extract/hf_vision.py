"""Vision feature extraction for Hugging Face models (ViT, DINOv2, CLIP/SigLIP towers, MAE, ConvNeXt...).

Layers: every entry of ``hidden_states`` (``output_hidden_states=True``): ``embeddings`` (patch
embedding output, or the CNN stem), then ``layer.01`` .. ``layer.NN`` (transformer blocks, or CNN
stages). The final layer norm some models apply after the last block (ViT's ``last_hidden_state``)
is not a separate layer: ``hidden_states`` are taken as transformers returns them.

Pooling per hidden state (`(B, D) float32`):
- token sequences `(B, T, D)`: ``cls`` = token 0; ``avg`` = mean over patch tokens, CLS and
  register tokens excluded. The number P of such prefix tokens is what the model declares: the
  token parameters of its ``embeddings`` (``cls_token`` / ``class_embedding`` / DeiT's
  ``distillation_token`` / ``register_tokens``, ``shape[-2]`` tokens each: ViT 1, DeiT 2, Pixio 8,
  DINOv2 with R registers 1 + R; else the config's ``num_register_tokens``); 0 for models with
  none (SigLIP, Swin, Hiera). It is checked against the patch grid: the positions the patch
  convolution (the ``Conv2d`` of ``embeddings`` at the config's stride, ``patch_stride`` else ``patch_size``: Hiera's
  ``patch_size`` is the kernel of an overlapping convolution) output in that forward, measured by a
  hook (Swin pads the image: ``ceil(H/s)``; ViT: ``floor(H/s)``), else ``floor(H/s) * floor(W/s)``.
  A layer with no patch token left, or with more tokens than P plus the grid, is refused
  (`ModelInputError` naming the layer) rather than averaged over guessed tokens. A model without an
  ``embeddings`` module gets ``T`` less the grid (0 when T is smaller: merged stages; refused above
  `MAX_GEOMETRY_PREFIX`, and when the grid is not measured and the side not a multiple of s).
- 4-D feature maps: global average pooling over H x W, of `(B, C, H, W)` (CNN stages) or
  `(B, H, W, C)` (SAM's vision encoder, DINAT), told at load from the probe (`map_layout`, else a
  second forward at another size: `layout_from_resize`; refused when neither tells). ``cls`` is
  refused at load time.
Every layer must have one row per image (Pixtral packs a batch into one sequence: refused at the
two-image probe).

Patch models (SigLIP 2's NaFlex ``Siglip2VisionModel``, `hf_models.takes_patches`): their own image
processor resizes each image keeping its aspect ratio to at most ``max_num_patches`` patches, cuts
it into patches and pads them to that count (`image_pool.PatchPixels`); the forward gets
``pixel_values``, ``pixel_attention_mask`` and ``spatial_shapes``. Every hidden state `(B, N, D)`
holds one token per patch position; ``avg`` is the mean over the image's own patches (the mask's
1s: `pooling.pool_patches`), so padding never reaches the features; ``cls`` is refused (no CLS
token, as SigLIP's), and the attention-pooling head is no layer (as SigLIP's).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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
    to_host_queued,
)
from tasks.extract.errors import ModelInputError
from tasks.extract.hf_models import PATCH_INPUTS, LoadedModel, input_device, is_int, is_patch_processor, takes_patches
from tasks.extract.image_pool import PatchPixels, ProcessorRecipe, apply_processor, processor_recipe
from tasks.extract.images import ImageItem
from tasks.extract.pooling import pool_patches, pool_vision
from tasks.extract.spec import ModelSpec


@dataclass
class PreparedPixels:
    """A batch ready for the forward: `(B, 3, H, W) float32` pixels, or for a patch model
    (`image_pool.PatchPixels`) `(B, N, p * p * C) float32` patches with their `(B, N) int32` mask
    (1 = the image's patch) and `(B, 2) int64` patch grids (rows, columns)."""

    pixel_values: torch.Tensor
    pixel_attention_mask: torch.Tensor | None = None
    spatial_shapes: torch.Tensor | None = None


#: Token parameters of a vision model's ``embeddings`` put in front of the patch tokens: the CLS
#: token (ViT, DINOv2, MAE, BEiT: ``cls_token``, ``(1, 1, D)``; Pixio: ``(1, 8, D)``, 8 CLS tokens;
#: CLIP: ``class_embedding``, ``(D,)``) and DeiT's distillation token; register tokens
#: (``register_tokens``, ``(1, R, D)``) come after them; RADIO keeps its CLS and register tokens in one
#: ``cls_register_token``, ``(num_cls_tokens + num_registers, D)``. Each counts ``shape[-2]`` tokens (1 for a vector).
_ONE_TOKEN_PARAMS = ("cls_token", "class_embedding", "distillation_token", "cls_register_token")


def tokens_in(param: Any) -> int:
    """Tokens a CLS/distillation/register parameter holds: ``shape[-2]`` of a `(..., N, D)` tensor,
    1 for a `(D,)` vector, 0 for anything that is not a tensor."""
    if not isinstance(param, torch.Tensor) or param.dim() == 0:
        return 0
    return int(param.shape[-2]) if param.dim() >= 2 else 1


def declared_prefix_tokens(model: torch.nn.Module) -> int | None:
    """CLS, distillation and register tokens the model puts in front of its patch tokens, read
    from the parameters of its ``embeddings`` module (`tokens_in` each: ViT 1, DeiT 2, Pixio 8,
    DINOv2 with R registers 1 + R, SigLIP / Swin / Hiera 0); registers without a parameter come
    from the config's ``num_register_tokens``. None when the model has no ``embeddings`` module to read."""
    emb = getattr(model, "embeddings", None)
    if not isinstance(emb, torch.nn.Module):
        return None
    count = sum(tokens_in(getattr(emb, name, None)) for name in _ONE_TOKEN_PARAMS)
    registers = getattr(emb, "register_tokens", None)
    if isinstance(registers, torch.Tensor) and registers.dim() >= 2:
        count += tokens_in(registers)
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


def patch_conv(model: torch.nn.Module, stride: tuple[int, int] | None) -> torch.nn.Conv2d | None:
    """The convolution that cuts the image into patch tokens: the first ``Conv2d`` of the model's
    ``embeddings`` whose stride is the config's patch stride. None when there is none (no patch
    size, a linear patch embedding, no ``embeddings`` module: elsewhere a convolution of that stride
    may be a stem, not the patch step, e.g. MobileViT's)."""
    emb = getattr(model, "embeddings", None)
    if stride is None or not isinstance(emb, torch.nn.Module):
        return None
    return next((m for m in emb.modules() if isinstance(m, torch.nn.Conv2d) and tuple(m.stride) == stride), None)


class GridMeter:
    """Forward hook on the patch convolution (`patch_conv`): ``grid`` is the number of positions
    (h x w) of its first output since the last `reset`, the patch tokens the model made (Swin pads
    the image to a multiple of the patch first: ``ceil``; ViT's unpadded convolution: ``floor``)."""

    def __init__(self) -> None:
        self.grid: int | None = None

    def reset(self) -> None:
        self.grid = None

    def __call__(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if self.grid is None and isinstance(output, torch.Tensor) and output.dim() == 4:
            self.grid = int(output.shape[-2] * output.shape[-1])


#: Most prefix tokens told by geometry alone (a model without ``embeddings``): CLS, distillation
#: and a few registers. More than this is not a prefix but a count that cannot be explained.
MAX_GEOMETRY_PREFIX = 8


def num_prefix_tokens(config: Any, seq_len: int, height: int, width: int, declared: int | None,
                      tokens_elsewhere: bool = False, grid: int | None = None) -> int:
    """CLS + register tokens in front of the patch tokens of one ``(B, seq_len, D)`` hidden state.

    ``grid``: the patch tokens the model made (`GridMeter`); without it, the patch grid of the
    input at the config's stride s, ``floor(height / s) * floor(width / s)`` (an unpadded patch
    convolution, ViT's). ``declared`` (`declared_prefix_tokens`) is used when known; the grid only
    checks it. Without it the count is ``seq_len`` less the grid (0 for fewer tokens than the grid:
    merged stages), and 0 when there is no grid either, unless the model holds token parameters
    somewhere (``tokens_elsewhere``, `has_token_params`). Raises ``ValueError`` when the count is not
    plausible: no patch token left, more tokens than the prefix plus the grid (tokens the model does
    not declare), token parameters that cannot be placed, or (no declared count, no measured grid)
    more tokens than the floor grid at a side that is not a multiple of s, where a padded patch
    embedding's ``ceil`` grid would explain them too."""
    stride = patch_stride(config)
    ceil_grid = None
    if grid is None and stride:
        grid = (height // stride[0]) * (width // stride[1])
        ceil_grid = -(-height // stride[0]) * -(-width // stride[1])
    at = f"a {height}x{width} input at patch stride {stride}"
    if declared is None:
        if grid is None:
            if tokens_elsewhere:
                raise ValueError("the model has a CLS/register token parameter outside an 'embeddings' module and no "
                                 "patch size in its config: cannot tell which hidden states carry it")
            return 0
        extra, most_patches = seq_len - grid, max(grid, ceil_grid or 0)
        if seq_len - most_patches > MAX_GEOMETRY_PREFIX:
            raise ValueError(f"{seq_len} tokens for {at}: {seq_len - most_patches} more than the {most_patches} patches, "
                             "too many to be CLS/register tokens; cannot tell the patch tokens")
        if extra > 0 and most_patches != grid:
            raise ValueError(f"{seq_len} tokens for {at}, a side that is not a multiple of the patch stride: "
                             f"{grid} patches (unpadded) or {ceil_grid} (padded) cannot be told from CLS/register tokens; "
                             "use an image_size that is a multiple of the patch stride")
        return max(extra, 0)
    if seq_len - declared < 1:
        raise ValueError(f"{seq_len} tokens, but the model declares {declared} CLS/register token(s): no patch token left")
    if grid is not None and seq_len - declared > grid:
        raise ValueError(f"{seq_len} tokens: {seq_len - declared - grid} more than its {declared} CLS/register token(s) "
                         f"and the {grid} patches of {at} (tokens this code does not know, e.g. detection tokens); "
                         "cannot tell the patch tokens")
    return declared


def module_widths(model: torch.nn.Module) -> frozenset[int]:
    """Channel widths the model's layers produce: ``out_channels`` of convolutions, ``out_features``
    of linear layers, the widths of its norms (``num_features``, ``num_channels``, the last
    ``normalized_shape``)."""
    widths: set[int] = set()
    for m in model.modules():
        for attr in ("out_channels", "out_features", "num_features", "num_channels"):
            value = getattr(m, attr, None)
            if is_int(value):
                widths.add(value)
        shape = getattr(m, "normalized_shape", None)
        if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
            widths.add(shape[-1])
    return frozenset(widths)


def fits_input(rows: int, cols: int, height: int, width: int) -> bool:
    """Whether a ``rows x cols`` map can be an ``height x width`` input downsampled by one stride s
    (each side within 1 of the input's side / s, for floor, ceil or padding): some s > 0 with
    ``|rows - height / s| < 1`` and ``|cols - width / s| < 1``."""
    def stride_range(n: int, side: int) -> tuple[float, float]:
        return side / (n + 1), (side / (n - 1) if n > 1 else float("inf"))

    (lo_r, hi_r), (lo_c, hi_c) = stride_range(rows, height), stride_range(cols, width)
    return rows >= 1 and cols >= 1 and max(lo_r, lo_c) < min(hi_r, hi_c)


def map_layout(shape: Sequence[int], height: int, width: int, widths: frozenset[int]) -> bool | None:
    """Whether a 4-D hidden state of ``shape`` from an ``height x width`` input is channels-last
    `(B, H, W, C)` (True) or channels-first `(B, C, H, W)` (False); None when its shape cannot tell.

    A layout is possible when its two spatial sizes fit the input (`fits_input`); of two possible
    ones, the one whose channel size is a width of the model's layers (``widths``, `module_widths`)
    and the other's is not. ``(B, 4, 4, 32)`` from 64 x 64 is channels-last (32 cannot be a side
    of a 64 x 64 image downsampled to 4 rows); ``(B, 8, 8, 8)`` cannot be told."""
    _, d1, d2, d3 = (int(v) for v in shape)
    possible = {last for last, (r, c) in ((False, (d2, d3)), (True, (d1, d2))) if fits_input(r, c, height, width)}
    if len(possible) == 2:
        possible = {last for last, channels in ((False, d1), (True, d3)) if channels in widths}
    return possible.pop() if len(possible) == 1 else None


def layout_from_resize(small: Sequence[int], large: Sequence[int]) -> bool | None:
    """Channels-last (True) or first (False) from the shapes of one 4-D hidden state at two input
    sizes: the channel size stays, the spatial sizes change. None when that does not tell."""
    first_stays, last_stays = small[1] == large[1], small[3] == large[3]
    if first_stays != last_stays:
        return last_stays
    return None


def probe_images() -> list[Image.Image]:
    """The load probe's images: two 64 x 48 RGB images (two: a model that packs a batch into one
    sequence, as Pixtral does, is refused at the probe); `hf_models.check_image_size` runs the
    model built on the ``meta`` device on the pixels the processor makes of them."""
    return [Image.new("RGB", (64, 48), (127, 127, 127)), Image.new("RGB", (64, 48), (30, 160, 60))]


def vision_forward_kwargs(model: torch.nn.Module, image_size: int | None) -> dict[str, Any]:
    """The keyword arguments a vision module's forward gets besides its pixels:
    ``interpolate_pos_encoding=True`` when it takes one and ``image_size`` (a spec's; None: the
    processor's own) differs from its config's ``image_size`` (its position embeddings' grid)."""
    params = inspect.signature(model.forward).parameters
    cfg_size = getattr(model.config, "image_size", None)
    if "interpolate_pos_encoding" in params and image_size is not None and cfg_size not in (None, image_size):
        return {"interpolate_pos_encoding": True}
    return {}


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
        self._patches = takes_patches(self.model)
        self._check_processor_kind()
        self._extra_kwargs = self._forward_kwargs()
        self._unshuffled = self._unshuffled_patches()
        self._declared_prefix = declared_prefix_tokens(self.model)
        self._tokens_elsewhere = self._declared_prefix is None and has_token_params(self.model)
        self._grid = GridMeter()
        conv = patch_conv(self.model, patch_stride(self.model.config))
        if conv is not None:
            conv.register_forward_hook(self._grid)
        self._channels_last: bool | None = None  # layout of 4-D hidden states, from the probe (`_map_layout`)
        self._recipe: ProcessorRecipe | None | bool = False  # False: not computed yet
        self._finish_init(probe_images(), lambda n: layer_names("embeddings", "layer", n - 1))

    def _check_processor_kind(self) -> None:
        """A patch model (`takes_patches`) needs a patch processor (`is_patch_processor`) and any
        other model one that gives pixels: a checkpoint folder whose processor config does not
        match its model is refused by name."""
        proc = type(self.processor).__name__
        if self._patches and not is_patch_processor(self.processor):
            raise ModelInputError(self.spec.name, self.spec.id, f"{type(self.model).__name__} takes its image as patches with "
                                  f"{' and '.join(map(repr, PATCH_INPUTS))}, but its image processor {proc} gives no "
                                  f"{PATCH_INPUTS[0]!r} (it gives (B, 3, H, W) pixels): use the model's own patch processor "
                                  "(SigLIP 2 NaFlex: Siglip2ImageProcessor in preprocessor_config.json)")
        if not self._patches and is_patch_processor(self.processor):
            raise ModelInputError(self.spec.name, self.spec.id, f"its image processor {proc} cuts images into patches "
                                  f"({', '.join(PATCH_INPUTS)}), but {type(self.model).__name__} takes pixel_values only: "
                                  "use the model's own image processor")

    def _forward_kwargs(self) -> dict[str, Any]:
        """`vision_forward_kwargs` of the model at the spec's image size."""
        return vision_forward_kwargs(self.model, self.spec.image_size)

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

    def from_recipe_output(self, pixel_values: np.ndarray | PatchPixels) -> PreparedPixels:
        if isinstance(pixel_values, PatchPixels):
            return self._from_patches(pixel_values)
        pixels = torch.from_numpy(pixel_values)
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        return PreparedPixels(pixels)

    def _from_patches(self, patches: PatchPixels) -> PreparedPixels:
        """A patch processor's output as tensors (pinned for a GPU; the patch grids stay on the host,
        where the model reads them per image)."""
        if not self._patches:
            raise ModelInputError(self.spec.name, self.spec.id, f"{type(self.model).__name__} takes pixel_values only, "
                                  "but the batch was prepared as patches")
        pixels, mask = torch.from_numpy(patches.pixel_values), torch.from_numpy(patches.pixel_attention_mask)
        if self.device.type == "cuda":
            pixels, mask = pixels.pin_memory(), mask.pin_memory()
        return PreparedPixels(pixels, mask, torch.from_numpy(patches.spatial_shapes))

    def prepare(self, items: Sequence[ImageItem]) -> PreparedPixels:
        return self.from_recipe_output(apply_processor(self.processor, items))

    def _run(self, x: torch.Tensor, patch_inputs: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
        """The model's hidden states for pixels ``x`` (on the input device, in the model's dtype);
        ``patch_inputs``: a patch model's mask and patch grids (`PATCH_INPUTS`)."""
        extra = {**self._extra_kwargs, "noise": self._patch_noise(x)} if self._unshuffled else self._extra_kwargs
        extra = {**extra, **patch_inputs} if patch_inputs else extra
        self._grid.reset()
        with self.full_float32():
            out = self.model(pixel_values=x, output_hidden_states=True, return_dict=True, **extra)
        return require_hidden_states(self.spec, self.model, out)

    def _map_layout(self, states: Sequence[torch.Tensor], x: torch.Tensor) -> bool:
        """Whether the model's 4-D hidden states are channels-last `(B, H, W, C)` (SAM, DINAT) or
        `(B, C, H, W)` (CNNs): from their shapes against the input (`map_layout`), else from a second
        forward at 1.5 times the input's sides (`layout_from_resize`). Every 4-D layer that tells
        must agree; a `ModelInputError` when none tells or they disagree."""
        h, w = x.shape[-2:]
        widths = module_widths(self.model)
        maps = [(i, hs) for i, hs in enumerate(states) if hs.dim() == 4]
        told = {map_layout(hs.shape, h, w, widths) for _, hs in maps} - {None}
        if not told:
            told = self._layout_by_resize(maps, x)
        if len(told) != 1:
            shapes = ", ".join(str(tuple(hs.shape)) for _, hs in maps[:3])
            why = "its layers disagree" if told else "the shapes cannot tell, and the model does not run at a second size"
            raise ModelInputError(self.spec.name, self.spec.id, f"cannot tell whether its 4-D hidden states ({shapes} for a "
                                  f"{h}x{w} input) are (B, C, H, W) or (B, H, W, C): {why}; try another image_size")
        return told.pop()

    def _layout_by_resize(self, maps: list[tuple[int, torch.Tensor]], x: torch.Tensor) -> set[bool]:
        """Layouts told by comparing each 4-D layer with the same layer at a 1.5x larger input; empty
        when the model does not run at that size (fixed position embeddings: SAM)."""
        h, w = x.shape[-2:]
        bigger = torch.nn.functional.interpolate(x[:1].float(), size=(h + h // 2, w + w // 2), mode="nearest")
        try:
            other = self._run(bigger.to(x.dtype))
        except (MemoryError, torch.cuda.OutOfMemoryError):
            raise
        except Exception:  # noqa: BLE001 - the model refuses another size (SAM checks it): nothing told
            return set()
        if len(other) <= max(i for i, _ in maps):
            return set()
        return {layout_from_resize(hs.shape, other[i].shape) for i, hs in maps if other[i].dim() == 4} - {None}

    def _check_rows(self, name: str, hs: torch.Tensor, batch: int) -> None:
        """One row per image: a model that packs the batch into one sequence (Pixtral: `(1, B*N, D)`)
        gives no per-image features."""
        if hs.shape[0] != batch:
            raise ModelInputError(self.spec.name, self.spec.id, f"layer {name!r} has {hs.shape[0]} row(s) for a batch of "
                                  f"{batch} images (shape {tuple(hs.shape)}): the model does not keep one row per image "
                                  "(it packs the batch into one sequence, as Pixtral does); it cannot give per-image features")

    def forward(self, prepared: PreparedPixels, with_nll: bool = False) -> BatchOutput:
        return self.forward_queued(prepared, with_nll)()

    @torch.inference_mode()
    def forward_queued(self, prepared: PreparedPixels, with_nll: bool = False) -> Callable[[], BatchOutput]:
        """`forward` in two steps (`Extractor.forward_queued`): the pooled layers are copied to the
        host without waiting."""
        if with_nll:
            raise ValueError("bits per byte applies to causal language models only")
        if self._patches:
            return self._forward_patches(prepared)
        x = prepared.pixel_values.to(self._input_device, dtype=self.dtype, non_blocking=True)
        states = self._run(x)
        grid = self._grid.grid
        if self.spec.pooling == "cls" and any(hs.dim() == 4 for hs in states):
            raise ValueError(f"{self.spec.name}: 'cls' pooling needs a token model; this one has CNN feature maps: use 'avg'")
        h, w = prepared.pixel_values.shape[-2:]
        names = layer_names("embeddings", "layer", len(states) - 1)
        for name, hs in zip(names, states):
            self._check_rows(name, hs, x.shape[0])
        if self._channels_last is None and any(hs.dim() == 4 for hs in states):
            self._channels_last = self._map_layout(states, x)
        layers = []
        for name, hs in zip(names, states):
            try:
                prefix = (num_prefix_tokens(self.model.config, hs.shape[1], h, w, self._declared_prefix, self._tokens_elsewhere,
                                            grid) if hs.dim() == 3 else 0)
            except ValueError as err:  # an implausible prefix count: refuse rather than average the wrong tokens
                raise ModelInputError(self.spec.name, self.spec.id, f"layer {name!r}: {err}") from None
            try:
                layers.append(pool_vision(hs, self.spec.pooling, prefix, bool(self._channels_last)))
            except ValueError as err:  # e.g. 'cls' on a model without a CLS token (SigLIP)
                raise ModelInputError(self.spec.name, self.spec.id, str(err)) from None
        copied = to_host_queued(layers)
        return lambda: BatchOutput(copied())

    def _forward_patches(self, prepared: PreparedPixels) -> Callable[[], BatchOutput]:
        """`forward_queued` of a patch model: every hidden state pooled over each image's own
        patches (`pooling.pool_patches`)."""
        if prepared.pixel_attention_mask is None or prepared.spatial_shapes is None:
            raise ModelInputError(self.spec.name, self.spec.id, f"{type(self.model).__name__} takes its image as patches, "
                                  "but the batch was prepared as (B, 3, H, W) pixels")
        x = prepared.pixel_values.to(self._input_device, dtype=self.dtype, non_blocking=True)
        mask = prepared.pixel_attention_mask.to(self._input_device, non_blocking=True)
        states = self._run(x, {"pixel_attention_mask": mask, "spatial_shapes": prepared.spatial_shapes})
        names = layer_names("embeddings", "layer", len(states) - 1)
        layers = []
        for name, hs in zip(names, states):
            self._check_rows(name, hs, x.shape[0])
            try:
                layers.append(pool_patches(hs, mask, self.spec.pooling))
            except ValueError as err:  # 'cls': no CLS token; a layer that is not one token per patch position
                raise ModelInputError(self.spec.name, self.spec.id, f"layer {name!r}: {err}") from None
        copied = to_host_queued(layers)
        return lambda: BatchOutput(copied())
