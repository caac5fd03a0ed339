"""Sample thumbnails: shown as the models saw the image (``tasks.data.images.to_rgb``)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tasks.report.images import THUMBNAIL, thumbnail_png


def _encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _decoded(png: bytes | None) -> Image.Image:
    assert png is not None
    return Image.open(io.BytesIO(png))


def test_a_16_bit_greyscale_image_keeps_its_tones():
    """A 0-65535 ramp is a 0-255 ramp, as the models saw it (Pillow's own conversion clipped
    every value above 255: the thumbnail was nearly all white)."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    shown = np.asarray(_decoded(thumbnail_png(_encoded(Image.fromarray(ramp)))).convert("L"), dtype=np.float64)
    assert abs(shown.mean() - 127.5) < 4
    assert shown.min() <= 5 and shown.max() >= 250


def test_an_exif_rotated_photo_is_shown_upright():
    """A photo stored sideways with an EXIF orientation is shown turned, as the models saw it."""
    image = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    shown = _decoded(thumbnail_png(_encoded(image, "JPEG", exif=exif)))
    assert shown.size == (40, 80)


def test_odd_sizes_and_modes_give_a_thumbnail_and_junk_gives_none():
    for image in (Image.new("RGB", (1, 1), (1, 2, 3)), Image.new("RGBA", (300, 10), (0, 0, 0, 0)),
                  Image.new("L", (7, 500), 3), Image.new("P", (5, 5))):
        shown = _decoded(thumbnail_png(_encoded(image)))
        assert 1 <= min(shown.size) and max(shown.size) == min(THUMBNAIL, max(image.size))
    assert thumbnail_png(b"not an image") is None and thumbnail_png(None) is None and thumbnail_png(b"") is None
