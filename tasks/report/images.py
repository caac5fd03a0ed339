"""Sample images for the page: decoded with Pillow, shrunk to thumbnails, re-encoded as PNG."""

from __future__ import annotations

import base64
import io

from PIL import Image, UnidentifiedImageError

THUMBNAIL = 96


def thumbnail_png(data: bytes | None, size: int = THUMBNAIL) -> bytes | None:
    """A PNG thumbnail (longest side ``size`` px) of encoded image bytes; None if unreadable."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGBA")
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.save(out, format="PNG", optimize=True)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
