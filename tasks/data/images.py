"""Checking encoded images and reading image files safely from inside a dataset folder."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "ImageProblem", "check_image", "read_image_file"]

DEFAULT_MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Largest width × height accepted by default: Pillow's own decompression-bomb limit."""


@dataclass(frozen=True)
class ImageProblem:
    """Why an image was refused: a stable ``reason`` code and a human ``detail``."""

    reason: str
    detail: str


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageProblem | None:
    """Decode ``data`` fully with Pillow; return ``None`` if it is a usable image.

    Reasons: ``image_empty`` (0 bytes), ``image_too_large`` (more than ``max_pixels`` pixels,
    checked from the header before any pixel is decoded, and Pillow's own decompression-bomb
    error), ``image_unreadable`` (not an image Pillow knows, truncated or corrupt data).
    Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as it is (off by default, so
    truncated files fail to load).
    """
    if len(data) == 0:
        return ImageProblem("image_empty", "image is 0 bytes")
    try:
        with warnings.catch_warnings():
            # The limit is ours (``max_pixels``); Pillow still raises its own error above
            # twice its global MAX_IMAGE_PIXELS.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return ImageProblem(
                        "image_too_large",
                        f"{width}x{height} = {width * height} pixels is more than {max_pixels}",
                    )
                image.load()
                if width < 1 or height < 1:
                    return ImageProblem("image_unreadable", f"image has size {width}x{height}")
    except Image.DecompressionBombError as exc:
        return ImageProblem("image_too_large", str(exc))
    except Image.UnidentifiedImageError:
        return ImageProblem("image_unreadable", "not an image format Pillow can identify")
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the image is unusable
        return ImageProblem("image_unreadable", f"{type(exc).__name__}: {exc}")
    return None


def read_image_file(root: Path, relative: str) -> bytes | ImageProblem:
    """Read the file at ``relative`` (a path inside ``root``) or say why it cannot be used.

    Reasons: ``image_path_unsafe`` (absolute, or resolving outside ``root`` — through ``..``
    or a symbolic link), ``image_missing`` (empty path, no such file, not a regular file),
    ``image_unreadable`` (the operating system refused to read it).
    """
    if relative.strip() == "":
        return ImageProblem("image_missing", "image path is empty")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        return ImageProblem("image_path_unsafe", f"absolute image path {relative!r} is not allowed")
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        return ImageProblem(
            "image_path_unsafe", f"image path {relative!r} leads outside the dataset folder {base}"
        )
    if not target.exists():
        return ImageProblem("image_missing", f"image file {relative!r} does not exist")
    if not target.is_file():
        return ImageProblem("image_missing", f"image path {relative!r} is not a regular file")
    try:
        return target.read_bytes()
    except OSError as exc:
        return ImageProblem("image_unreadable", f"cannot read {relative!r}: {exc}")
