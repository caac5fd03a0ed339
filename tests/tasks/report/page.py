"""Reading a report page as assistive technology does: its tables (caption, header cells and their
scope, the enclosing elements), the text of elements, and the colours of its stylesheet. Only the
standard library's ``html.parser``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Cell:
    tag: str  # th or td
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Table:
    caption: str
    rows: list[list[Cell]]
    ancestors: list[tuple[str, dict[str, str]]]  # (tag, attributes) from <html> down to the table's parent

    def figure(self) -> str | None:
        """The ``data-figure`` of the figure holding the table, if any."""
        return next((a["data-figure"] for t, a in reversed(self.ancestors) if t == "figure" and "data-figure" in a), None)

    def grid(self) -> dict[tuple[str, str], str]:
        """(row header, column header) -> cell text, for a table whose first row is the column
        headers and whose rows start with a row header."""
        header = [c.text for c in self.rows[0]]
        return {(row[0].text, header[j]): cell.text for row in self.rows[1:] for j, cell in enumerate(row) if j > 0}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[Element] = [Element("#document", {})]
        self.tables: list[Table] = []
        self._table: list[Table] = []
        self._cell: Cell | None = None
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        element = Element(tag, values)
        self.stack[-1].children.append(element)
        if tag == "table":
            self._table.append(Table("", [], [(e.tag, e.attrs) for e in self.stack[1:]]))
        elif tag == "caption":
            self._caption = []
        elif tag == "tr" and self._table:
            self._table[-1].rows.append([])
        elif tag in ("th", "td") and self._table:
            self._cell = Cell(tag, values)
            self._table[-1].rows[-1].append(self._cell)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self.tables.append(self._table.pop())
        elif tag == "caption" and self._caption is not None and self._table:
            self._table[-1].caption = "".join(self._caption).strip()
            self._caption = None
        elif tag in ("th", "td"):
            if self._cell is not None:
                self._cell.text = self._cell.text.strip()
            self._cell = None
        while len(self.stack) > 1:
            if self.stack.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.stack[-1].tag in ("style", "script"):  # not text a reader is shown
            return
        for element in self.stack:
            element.text += data
        if self._cell is not None:
            self._cell.text += data
        if self._caption is not None:
            self._caption.append(data)


def read(page: str) -> tuple[Element, list[Table]]:
    """The page's element tree (``#document`` root; each element's ``text`` is all text inside it)
    and its tables in document order of their end."""
    reader = _Reader()
    reader.feed(page)
    reader.close()
    return reader.stack[0], reader.tables


def find_all(root: Element, tag: str, css_class: str | None = None) -> list[Element]:
    """Every element below ``root`` with ``tag`` (and the class ``css_class``), in document order."""
    found = []
    for child in root.children:
        if child.tag == tag and (css_class is None or css_class in child.attrs.get("class", "").split()):
            found.append(child)
        found += find_all(child, tag, css_class)
    return found


def relative_luminance(colour: str) -> float:
    """WCAG 2.2 relative luminance of ``#rgb`` or ``#rrggbb`` (sRGB, linearised)."""
    digits = colour.lstrip("#")
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    channels = [int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio (L1 + 0.05) / (L2 + 0.05) of two colours, the lighter on top."""
    high, low = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def css_rules(style: str) -> list[tuple[str, dict[str, str]]]:
    """(selector, declarations) of every rule of ``style``, those inside ``@media`` blocks with the
    media query prefixed to the selector (``@media print nav``)."""
    rules: list[tuple[str, dict[str, str]]] = []
    for media, inner in re.findall(r"(@media[^{]*)\{((?:[^{}]*\{[^{}]*\})*)\s*\}", style):
        for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", inner):
            rules.append((f"{media.strip()} {selector.strip()}", _declarations(body)))
    outside = re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*\s*\}", "", style)
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", outside):
        rules.append((selector.strip(), _declarations(body)))
    return rules


def _declarations(body: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (d.split(":", 1) for d in body.split(";") if ":" in d)}
