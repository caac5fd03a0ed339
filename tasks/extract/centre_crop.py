"""``crop_pct``: the share of the resized shorter side an image processor keeps (timm's eval crop);
``resample``: the filter it resizes with.

timm evaluates at input side S by resizing the shorter side to ``floor(S / crop_pct)`` (keeping
the aspect ratio) and keeping the central S x S. `set_centre_crop` makes a Hugging Face image
processor (PIL backend) do the same with its own resampling filter, rescaling and normalisation;
`resize_edge` is the rule both share.
"""

from __future__ import annotations

import math
from typing import Any

from PIL import Image

from tasks.extract.errors import ModelInputError
from tasks.extract.spec import ModelSpec


def resize_edge(side: int, crop_pct: float) -> int:
    """Pixels the shorter side is resized to so that a central ``side`` x ``side`` crop keeps
    ``crop_pct`` (in (0, 1]) of it: ``floor(side / crop_pct)``, timm's rule (``side`` at 1.0)."""
    return math.floor(side / crop_pct)


def _own_square_side(proc: Any) -> int | None:
    """The side of the square the processor outputs now: its crop size when it crops, else its
    fixed resize size; None when that is not a square."""
    crop = dict(getattr(proc, "crop_size", None) or {})
    size = dict(getattr(proc, "size", None) or {})
    box = crop if getattr(proc, "do_center_crop", False) and crop.get("height") else size
    height, width = box.get("height"), box.get("width")
    return int(height) if isinstance(height, int) and height == width else None


def set_centre_crop(proc: Any, spec: ModelSpec) -> None:
    """Make ``proc`` output S x S pixels: the shorter side resized to ``resize_edge(S,
    spec.crop_pct)`` with the processor's own filter, then the central S x S (offsets
    ``floor((edge - S) / 2)``). S is ``spec.image_size``, else the processor's own square side.

    Raises `ModelInputError` naming the model when the processor cannot do this: it is not a PIL
    backend processor with the shared shortest-edge resize and centre crop (ConvNeXt, for one,
    resizes its own way), its output is not square and no ``image_size`` is set, or a probe image
    does not come out S x S (a processor whose pipeline skips the crop).
    """
    from transformers.image_processing_backends import PilBackend

    cls = type(proc)
    if not (isinstance(proc, PilBackend) and cls.resize is PilBackend.resize and cls.center_crop is PilBackend.center_crop):
        raise ModelInputError(spec.name, spec.id, f"crop_pct needs an image processor that resizes the shorter side and "
                              f"centre-crops; {cls.__name__} resizes or crops its own way: remove crop_pct")
    side = spec.image_size or _own_square_side(proc)
    if side is None:
        raise ModelInputError(spec.name, spec.id, f"crop_pct: the image processor {cls.__name__} does not output a square; "
                              "set image_size (the side S of the central crop)")
    proc.do_resize = True
    proc.size = {"shortest_edge": resize_edge(side, spec.crop_pct)}
    proc.do_center_crop = True
    proc.crop_size = {"height": side, "width": side}
    probe = Image.new("RGB", (3, 2), (127, 127, 127))  # not square: a skipped crop shows in the shape
    shape = tuple(proc(images=[probe], return_tensors="np")["pixel_values"].shape[-2:])
    if shape != (side, side):
        raise ModelInputError(spec.name, spec.id, f"crop_pct: the image processor {cls.__name__} gave {shape} pixels "
                              f"instead of the {side} x {side} centre crop: remove crop_pct")


def pil_filter(name: str) -> int:
    """The PIL resampling filter named ``name`` (``bicubic``, ``bilinear``, ...: ``ModelSpec.resample``)."""
    return int(Image.Resampling[name.upper()])


#: Image processor classes (PIL backend) whose own ``resize`` only works out the target size (the
#: longest edge, or a height x width: Idefics3's and SmolVLM's ``max_image_size`` square; the
#: shorter side over ``crop_pct``: ConvNeXt's, below 384, then its centre crop, and PoolFormer's; 256/224
#: of the shorter side: LeViT's) and hands its ``resample`` filter on to the PIL backend's resize
#: unchanged, for every resize they make (the first resize, the square, the tiles' thumbnail):
#: setting ``resample`` on them is exact.
_SIZE_ONLY_RESIZES = ("Idefics3ImageProcessorPil", "SmolVLMImageProcessorPil", "ConvNextImageProcessorPil",
                      "PoolFormerImageProcessorPil", "LevitImageProcessorPil")


def _passes_resample_on(cls: type) -> bool:
    """Whether a processor class resizes with the PIL backend's own resize or with the unchanged
    ``resize`` of a class of `_SIZE_ONLY_RESIZES` (a subclass that overrides it again is not one)."""
    import transformers
    from transformers.image_processing_backends import PilBackend

    vetted = [getattr(transformers, name, None) for name in _SIZE_ONLY_RESIZES]
    return cls.resize is PilBackend.resize or any(isinstance(v, type) and cls.resize is v.resize for v in vetted)


def set_resample(proc: Any, spec: ModelSpec) -> None:
    """Make ``proc`` resize with the PIL filter ``spec.resample``. Raises `ModelInputError` naming
    the model when the processor is not a PIL backend processor that resizes with a ``resample``
    filter of its own, passed to the PIL backend's resize as it is (`_passes_resample_on`): then
    the setting could be silently ignored or changed."""
    from transformers.image_processing_backends import PilBackend
    from transformers.image_utils import PILImageResampling

    cls = type(proc)
    if not (isinstance(proc, PilBackend) and _passes_resample_on(cls) and getattr(proc, "resample", None) is not None):
        raise ModelInputError(spec.name, spec.id, f"resample needs an image processor that resizes with a PIL filter of its "
                              f"own; {cls.__name__} resizes its own way: remove resample")
    proc.resample = PILImageResampling(pil_filter(str(spec.resample)))
