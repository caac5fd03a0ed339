"""Matplotlib figures without pyplot: no global state, no GUI backend, safe in worker threads."""

from __future__ import annotations

import io
from dataclasses import dataclass

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches on the Agg canvas, with a constrained layout."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def to_png(figure: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def to_svg(figure: Figure) -> bytes:
    """The figure as SVG (UTF-8 bytes); text stays text, so numbers are searchable."""
    buffer = io.BytesIO()
    with rc_context({"svg.fonttype": "none"}):
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
    files = {"png": to_png(figure)}
    if "svg" in formats:
        files["svg"] = to_svg(figure)
    return RenderedFigure(name, caption, files)
