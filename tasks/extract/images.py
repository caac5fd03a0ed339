"""Image decoding and the PIL/numpy preprocessing used where no Hugging Face processor applies.

No torchvision (it does not import beside the CPU torch wheel here).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from tasks.data.images import to_rgb

#: What vision extractors accept per item: encoded bytes (PNG/JPEG/...), a PIL image, or a path.
ImageItem = Union[bytes, bytearray, memoryview, Image.Image, str, Path]


def decode_image(item: ImageItem) -> Image.Image:
    """Decode one item to an 8-bit RGB PIL image, converted exactly as the dataset loader checks
    it (``tasks.data.images.to_rgb``): EXIF orientation applied, transparency composited over
    white (rendered emoji look as on a page), 16-bit and float images scaled, not clipped.
    """
    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(item)))
    elif isinstance(item, (str, Path)):
        img = Image.open(item)
    else:
        raise TypeError(f"cannot decode an image from {type(item).__name__}")
    return to_rgb(img)


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


def to_batch_tensor(images: list[Image.Image] | np.ndarray, mean: float, std: float):
    """Equal-size RGB images with 0–255 pixels (PIL images, or one `(B, H, W, 3) uint8` array) ->
    `(B, 3, H, W)` float32 torch tensor in channels-last memory, ``(pixel - mean) / std``."""
    import torch

    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(img, dtype=np.uint8) for img in images])
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))  # (B, H, W, 3)
    return ((pixels.float() - mean) / std).permute(0, 3, 1, 2)  # a view: NCHW shape, NHWC memory
