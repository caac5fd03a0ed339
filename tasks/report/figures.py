"""Matplotlib figures without pyplot: no global state, no GUI backend, safe in worker threads.

Matplotlib is imported where a figure is drawn or encoded, not with the module: a report whose
figures all come from the cache (``render_cached``) never imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
#: The width in CSS pixels the page shows a figure at most (``html.STYLE``: ``body`` ``max-width`` 1200 px less
#: its 16 px padding each side): a wider PNG is shown scaled down, its words with it.
PAGE_WIDTH_PX = 1168


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Text drawn inside is drawn as written: never read as mathtext. The figures' words come from
    the store (layer, model and metric names; a user metric may be named anything), and matplotlib
    took text between two ``$`` for mathtext: a layer name ``$\\frac{$`` failed the whole report
    (a ``ParseSyntaxException``) and ``$x$`` came out as an italic x. No figure uses mathtext (the
    log axes get fixed tick labels, ``scaling._series``). matplotlib reads the setting when a text
    is made and again when it is laid out: drawing and encoding both run inside."""
    from matplotlib import rc_context

    with rc_context({"text.parse_math": False}):
        yield


#: The longest line of a model name drawn in a figure (axis, tick and legend labels, titles): a
#: longer name is drawn over several lines. Names run to 128 characters, and one line of 71 took
#: the model heatmap's whole width (its cells' numbers ran into each other, its title was cut) and
#: ran past its panel of the layer figure into the next one.
NAME_LINE = 20


def wrapped(text: str, width: int = NAME_LINE) -> str:
    """``text`` over lines of at most ``width`` characters, each broken after the last ``-``, ``_``,
    ``.`` or space of its second half (``tiny-vit-`` / ``large``), else at ``width``; nothing is
    left out or added but the line breaks, so the lines joined are ``text``. Text that fits, and
    text with line breaks of its own, is returned as it is."""
    if len(text) <= width or "\n" in text:
        return text
    lines, rest = [], text
    while len(rest) > width:
        cut = max(rest.rfind(mark, width // 2, width) for mark in "-_. ")
        cut = cut + 1 if cut >= 0 else width
        lines.append(rest[:cut])
        rest = rest[cut:]
    return "\n".join([*lines, rest])


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches on the Agg canvas, with a constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def to_png(figure: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes, in 256 colours (``palette_png``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return palette_png(buffer.getvalue())


#: Colours of a figure's PNG. Matplotlib writes 32-bit RGBA; a heatmap holds a few hundred colours
#: (its cells, the colour bar's 256 steps, text edges), which 256 hold within a few levels of
#: 255. At the paper's zoo size (17 × 12 models, 204 layer figures) the page had been 58 MB, 46 of
#: them its layer figures; in 256 colours they take 0.3 of that.
PNG_COLOURS = 256


def palette_png(png: bytes, colours: int = PNG_COLOURS) -> bytes:
    """``png`` (an opaque RGB or RGBA PNG) as an indexed PNG of ``colours`` colours: Pillow's fast
    octree, no dithering (same image, same bytes; a cell stays one flat colour; every channel of every
    pixel within 14 levels of the original on the report's figures, median cut's within 54), 0.07 s a layer
    figure. A PNG with any transparent pixel, or one the palette would not make smaller, is returned as it is."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.load()
        if image.mode not in ("RGB", "RGBA") or (image.mode == "RGBA" and image.getextrema()[3][0] < 255):
            return png
        indexed = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    indexed.save(buffer, format="PNG")
    return buffer.getvalue() if buffer.tell() < len(png) else png


def to_svg(figure: Figure) -> bytes:
    """The figure as SVG (UTF-8 bytes); text stays text, so numbers are searchable."""
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "prh"}):  # fixed ids: same figure, same bytes
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


@dataclass(frozen=True)
class RenderedFigure:
    """One figure of the report: a file stem, a caption, and its encodings (format → bytes)."""

    name: str
    caption: str
    files: dict[str, bytes]

    @property
    def png(self) -> bytes:
        return self.files["png"]


def render(name: str, caption: str, figure: Figure, formats: tuple[str, ...] = ("png", "svg")) -> RenderedFigure:
    """Encode ``figure`` in every format (PNG always, it is what the page embeds)."""
    with plain_text():
        files = {"png": to_png(figure)}
        if "svg" in formats:
            files["svg"] = to_svg(figure)
    return RenderedFigure(name, caption, files)


class FigureCache(Protocol):
    """Encoded figures by content digest (``figure_digest``): a rerun whose figure inputs did not
    change reuses the files instead of drawing them again. The owner of a cache namespaces it by
    the drawing code's version, so a change to how a figure is drawn never reads a stale image."""

    def get(self, digest: str, formats: tuple[str, ...]) -> dict[str, bytes] | None:
        """Files of every one of ``formats`` for ``digest``, or None if any is missing."""

    def put(self, digest: str, files: dict[str, bytes]) -> None:
        """Keep ``files`` (format → bytes) under ``digest``; a cache that cannot write ignores it."""


def figure_digest(name: str, inputs: Any) -> str:
    """SHA-256 hex digest of a figure's name and everything it is drawn from (JSON-able
    ``inputs``: rows, numbers, names; NaN and non-JSON values such as timestamps by their text)."""
    encoded = json.dumps([name, inputs], sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def render_cached(name: str, caption: str, draw: Callable[[], Figure], inputs: Any,
                  formats: tuple[str, ...] = ("png", "svg"), cache: FigureCache | None = None) -> RenderedFigure:
    """``render(name, caption, draw(), formats)``, or the cached files of the same ``inputs``.

    ``draw`` must depend on nothing but ``inputs`` (and the drawing code). PNG is always made.
    """
    wanted = ("png", *(f for f in formats if f != "png"))
    if cache is None:
        with plain_text():
            return render(name, caption, draw(), wanted)
    digest = figure_digest(name, inputs)
    files = cache.get(digest, wanted)
    if files is not None:
        return RenderedFigure(name, caption, {f: files[f] for f in wanted})
    with plain_text():
        rendered = render(name, caption, draw(), wanted)
    cache.put(digest, rendered.files)
    return rendered
