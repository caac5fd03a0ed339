"""Image decoding and the PIL/numpy preprocessing used where no Hugging Face processor applies.

No torchvision (it does not import beside the CPU torch wheel here).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

#: What vision extractors accept per item: encoded bytes (PNG/JPEG/...), a PIL image, or a path.
ImageItem = Union[bytes, bytearray, memoryview, Image.Image, str, Path]


def decode_image(item: ImageItem) -> Image.Image:
    """Decode one item to an RGB PIL image.

    Transparent images (RGBA, LA, palette with transparency) are composited over white, so that
    e.g. rendered emoji on a transparent canvas look as they do on a page.
    """
    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(item)))
    elif isinstance(item, (str, Path)):
        img = Image.open(item)
    else:
        raise TypeError(f"cannot decode an image from {type(item).__name__}")
    img.load()
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def center_crop_resize(img: Image.Image, size: int, crop_fraction: float, resample: int = Image.BICUBIC) -> Image.Image:
    """Central square crop covering `crop_fraction` of the shorter side, resized to `size` x `size`.

    One resampling step from the original pixels (PIL ``resize(box=...)``). With
    ``crop_fraction = size / (size + 32)`` this is the TensorFlow EfficientNet eval preprocessing
    (equivalently: resize the shorter side to size + 32, take the central size x size crop).
    """
    w, h = img.size
    side = min(w, h) * crop_fraction
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((size, size), resample=resample, box=(left, top, left + side, top + side))


def to_batch_tensor(images: list[Image.Image], mean: float, std: float):
    """Equal-size RGB images with 0–255 pixels -> `(B, 3, H, W)` float32 torch tensor in
    channels-last memory, ``(pixel - mean) / std``."""
    import torch

    pixels = torch.from_numpy(np.stack([np.asarray(img, dtype=np.uint8) for img in images]))  # (B, H, W, 3)
    return ((pixels.float() - mean) / std).permute(0, 3, 1, 2)  # a view: NCHW shape, NHWC memory
