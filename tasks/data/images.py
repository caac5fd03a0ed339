"""Checking encoded images, turning any image mode into RGB, and reading image files safely from
inside a dataset folder."""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "MAX_IMAGE_ASPECT", "ImageProblem", "check_image", "read_image_file", "to_rgb"]

DEFAULT_MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Largest width × height accepted by default: Pillow's own decompression-bomb limit."""

MAX_IMAGE_ASPECT: int = 32
"""Largest ratio of the longer to the shorter side accepted: a model whose processor resizes the
shorter side to S (and then crops) makes the longer one ``S × ratio`` pixels, so a 90-byte 1 × 3000
strip would cost gigabytes at 224 px (and five times that at 518); a 32:1 banner costs ~100 MB."""


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Modes Pillow turns into RGB with a plain ``convert`` that cannot fail; others go through
# :func:`to_rgb` in :func:`check_image` so an impossible conversion is caught at load time.
_PLAIN_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}) | _ALPHA_MODES


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded Pillow image as an 8-bit RGB image, as a person would see it.

    - EXIF orientation is applied (a phone photo stored sideways comes out upright); EXIF data
      that does not parse is ignored (the image as stored).
    - Transparency (RGBA, LA, PA, a palette, 1-bit, greyscale or RGB image with a transparent colour)
      is composited over white.
    - 1-bit, greyscale, palette, CMYK, YCbCr, LAB, HSV: Pillow's conversion (CMYK without an
      ICC profile, i.e. the naive formula; embedded ICC profiles are not applied to any mode).
    - 16-bit greyscale (``I;16*``): ``round(v / 257)``, the full 0–65535 range onto 0–255; a
      transparent value (PNG ``tRNS``) becomes white, as in 8 bits.
    - 32-bit integer (``I``): values within 0–65535 are read as 16-bit (as above, this is how
      some 16-bit PGM/PNG files open); otherwise the image's own min–max range onto 0–255.
    - 32-bit float (``F``): values within 0–1 are scaled by 255; otherwise the image's own
      min–max range onto 0–255. NaN or infinite pixels cannot be converted: ``ValueError``.
    - Multi-frame images (animated GIF/WebP, multi-page TIFF): the frame ``image`` is on
      (the first, for a freshly opened file).

    (Pillow's own ``convert("RGB")`` clips ``I``/``F`` values above 255, turning most 16-bit
    images white and 0–1 float images black; that is why those modes are handled here.)
    """
    image.load()
    image = _upright(image)
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        grey = _to_uint8(image)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int) and not isinstance(transparent, bool) and mode != "F":
            grey[np.asarray(image) == transparent] = 255  # over white
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("P", "1", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")  # a 1-bit image with a transparent value (PNG tRNS) too
    elif mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation; as it is when it has none, or when its EXIF data
    does not parse (a PNG ``eXIf`` chunk that is not TIFF data): such metadata cannot say how to
    turn it."""
    try:
        if image.getexif().get(0x0112, 1) == 1:  # Orientation tag
            return image
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, TypeError, OSError, struct.error):
        return image


def _to_uint8(image: Image.Image) -> np.ndarray:
    """Pixels of a 16-bit, 32-bit integer or float image as ``(H, W)`` uint8 (rules: :func:`to_rgb`)."""
    mode = image.mode
    values = np.asarray(image).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{mode} image has NaN or infinite pixels; it cannot be shown as RGB")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and low >= 0 and high <= 65535):
        scaled = values / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:  # a constant image outside the conventional range: mid-grey says "no contrast"
        scaled = np.full_like(values, 128.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ImageProblem:
    """Why an image was refused: a stable ``reason`` code and a human ``detail``."""

    reason: str
    detail: str


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageProblem | None:
    """Decode ``data`` fully with Pillow; return ``None`` if it is a usable image.

    Any mode is usable when :func:`to_rgb` can convert it (checked here for the modes that
    are not a plain Pillow conversion: 16-bit, 32-bit integer, float and rarer ones).

    Reasons: ``image_empty`` (0 bytes), ``image_too_large`` (more than ``max_pixels`` pixels,
    checked from the header before any pixel is decoded, and Pillow's own decompression-bomb
    error), ``image_aspect`` (one side more than ``MAX_IMAGE_ASPECT`` times the other, from the
    header: what a shorter-side resize would blow up), ``image_unreadable`` (not an image Pillow knows, truncated or corrupt data, or
    pixels that cannot become RGB).
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
                if width >= 1 and height >= 1 and max(width, height) > MAX_IMAGE_ASPECT * min(width, height):
                    return ImageProblem(
                        "image_aspect",
                        f"{width}x{height} pixels: one side is {max(width, height) / min(width, height):.0f} times the "
                        f"other, more than {MAX_IMAGE_ASPECT} (resizing its shorter side to a model's input would "
                        f"make the longer one that many times larger)",
                    )
                image.load()
                if width < 1 or height < 1:
                    return ImageProblem("image_unreadable", f"image has size {width}x{height}")
                if image.mode not in _PLAIN_MODES:
                    to_rgb(image)  # raises if this image cannot become RGB
    except Image.DecompressionBombError as exc:
        return ImageProblem("image_too_large", str(exc))
    except Image.UnidentifiedImageError:
        return ImageProblem("image_unreadable", "not an image format Pillow can identify")
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the image is unusable
        return ImageProblem("image_unreadable", f"{type(exc).__name__}: {exc}")
    return None


def read_image_file(root: Path, relative: str, outside_advice: str = "") -> bytes | ImageProblem:
    """Read the file at ``relative`` (a path inside ``root``) or say why it cannot be used.

    An absolute path is read when it lies inside ``root`` too (a table listing
    ``/data/coco/val2017/x.jpg`` with ``image_root`` ``/data/coco``). ``outside_advice``: what the
    dataset's kind lets its user do about an absolute path outside ``root``, added to that refusal
    (the caller knows the kind: a table takes ``image_root``, a folder or a Hugging Face dataset
    does not; ``tasks.data.tables.outside_advice``); empty: the rule alone.

    Reasons: ``image_path_unsafe`` (resolving outside ``root`` — absolute, through ``..`` or a
    symbolic link — or starting with a backslash), ``image_missing`` (empty path, no such
    file, not a regular file, or a path that cannot name a file: one holding a NUL character or
    a character that cannot be encoded as a file name, a name longer than the file system allows
    (255 bytes), a symbolic-link loop), ``image_unreadable`` (the operating system refused to read
    it, or to look it up). A path the operating system fails to look up for another reason (an
    I/O error of the disk or the network file system) raises its ``OSError``: that is not the
    row's fault.
    """
    if relative.strip() == "":
        return ImageProblem("image_missing", "image path is empty")
    shown = _shown(relative)
    if relative.startswith("\\"):
        return ImageProblem("image_path_unsafe", f"image path {shown} starts with a backslash")
    base = root.resolve()
    try:
        target = (base / relative).resolve()  # an absolute relative replaces base
        if os.path.isabs(relative) and not target.is_relative_to(base):
            advice = f": {outside_advice}" if outside_advice else ""
            return ImageProblem("image_path_unsafe", f"absolute image path {shown} lies outside the dataset folder {base} "
                                f"(an absolute path must lie inside it{advice})")
        if not target.is_relative_to(base):
            return ImageProblem("image_path_unsafe", f"image path {shown} leads outside the dataset folder {base}")
        if not target.exists():
            return ImageProblem("image_missing", f"image file {shown} does not exist in {base}{_encoded_hint(relative)}")
        if not target.is_file():
            return ImageProblem("image_missing", f"image path {shown} is not a regular file")
    except (ValueError, RuntimeError, OSError) as exc:
        problem = _lookup_problem(relative, exc)
        if problem is None:
            raise  # an I/O error of the file system, not of the path: the load fails (and may be retried)
        return problem
    try:
        return target.read_bytes()
    except OSError as exc:
        return ImageProblem("image_unreadable", f"cannot read {shown}: {exc}")


#: Longest image path shown whole in a rejection's detail (a caption read as a path by a swapped
#: column can be thousands of characters long).
_SHOWN_PATH_CHARS = 160


def _shown(relative: str) -> str:
    """``relative`` quoted for a message, its middle cut out when it is longer than ``_SHOWN_PATH_CHARS``."""
    if len(relative) <= _SHOWN_PATH_CHARS:
        return repr(relative)
    half = _SHOWN_PATH_CHARS // 2
    return f"{relative[:half]!r}...{relative[-half:]!r} ({len(relative)} characters)"


_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]{64,}")


def _encoded_hint(relative: str) -> str:
    """What an image "path" that is an image written as text says about itself, for a message: a
    ``data:`` URI or base64 text (64 characters or more of its alphabet, no file extension);
    else empty."""
    text = relative.strip()
    if text[:5].lower() == "data:":
        what = "a data: URI (an image written as text)"
    elif _BASE64_TEXT.fullmatch(text):
        what = "base64 text (an image written as text?)"
    else:
        return ""
    return (f"; it is {what}, not a path: prh reads image files or image bytes, so decode the column into bytes "
            "(a Parquet binary column) or into files")


def _lookup_problem(relative: str, error: BaseException) -> ImageProblem | None:
    """Why looking up the image path ``relative`` failed with ``error``, as the row's problem; None
    when the error is not the path's (a disk or network I/O error).

    Paths that cannot name any file are ``image_missing`` (no such file can exist, so nothing is
    read and nothing outside the folder is reached): a NUL character or one that cannot be encoded
    (``ValueError``), a name longer than the file system allows (``ENAMETOOLONG``), a symbolic-link
    loop (``RuntimeError`` from ``Path.resolve`` before Python 3.13, ``ELOOP`` after). A lookup the
    operating system refuses (``EACCES``, ``EPERM``: a folder on the way that may not be searched)
    is ``image_unreadable``.
    """
    shown = _shown(relative)
    if isinstance(error, ValueError):
        what = "holds a NUL character" if "\x00" in relative else "holds characters that cannot be encoded as a file name"
        return ImageProblem("image_missing", f"image path {shown} {what}, so it names no file")
    if isinstance(error, RuntimeError) or getattr(error, "errno", None) == errno.ELOOP:
        return ImageProblem("image_missing", f"image path {shown} is a symbolic-link loop: it leads to no file")
    code = getattr(error, "errno", None)
    if code == errno.ENAMETOOLONG:
        longest = max(len(os.fsencode(part)) for part in relative.split("/"))
        what = (f"has a name of {longest} bytes, more than a file name may have (255 on most file systems)" if longest > 255
                else f"is {len(os.fsencode(relative))} bytes long: with the dataset folder, more than a path may be "
                     "(4096 bytes on Linux)")
        return ImageProblem("image_missing", f"image path {shown} {what}, so it names no file"
                            + (_encoded_hint(relative) or " (is the image column holding captions?)"))
    if code in (errno.ENOENT, errno.ENOTDIR):
        return ImageProblem("image_missing", f"image file {shown} does not exist{_encoded_hint(relative)}")
    if code in (errno.EACCES, errno.EPERM):
        return ImageProblem("image_unreadable", f"cannot look up {shown}: {error}")
    return None
