"""Sample images for the page: decoded with Pillow, shrunk to thumbnails, re-encoded as PNG."""

from __future__ import annotations

import base64
import io

from PIL import Image, UnidentifiedImageError

from tasks.data.images import to_rgb

THUMBNAIL = 96


def thumbnail_png(data: bytes | None, size: int = THUMBNAIL) -> bytes | None:
    """A PNG thumbnail (RGB, longest side ``size`` px) of encoded image bytes, the image as the
    models saw it (``tasks.data.images.to_rgb``: EXIF orientation applied, 16-bit and float tones
    scaled to 8 bits, transparency over white; Pillow's own conversion had clipped a 16-bit
    image to white and shown a sideways photo sideways); None if unreadable."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft(None, (2 * size, 2 * size))  # a large JPEG decodes reduced (no-op for other formats)
            image = to_rgb(image)
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.save(out, format="PNG", optimize=True)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
