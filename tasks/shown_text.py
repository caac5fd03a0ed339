"""Text from data or from a store, made safe to show: on a terminal or in a log line (control
characters escaped, so that an ESC cannot clear the screen, recolour or fake lines, or open a
link), and in Markdown (its syntax characters escaped too, so that a name cannot add a link, an
image, raw HTML or a table cell). Pure functions; they know nothing of where the text goes."""

from __future__ import annotations

import re
import unicodedata

#: Characters Markdown (and the HTML it may carry) gives a meaning to; ``_`` is left as written
#: (names are full of it, and inside a word CommonMark does not read it as emphasis).
_MARKDOWN_SYNTAX = re.compile(r"([\\`*{}\[\]()<>#+!|~])")


#: Characters Python does not call printable that are shown as they are: spaces other than ' '
#: (no-break, ideographic: category Zs) and the joiners inside emoji and Indic words (ZWNJ, ZWJ).
_SHOWN_AS_IS = frozenset("\u200c\u200d")


def for_terminal(text: object) -> str:
    """``text`` as one printable line: every character that could act on a terminal or hide
    (C0/C1 controls such as ESC, line and paragraph separators, zero-width and bidirectional
    format characters, surrogates, private-use and unassigned code points) written as its
    backslash escape (``\\x1b``, ``\\u202e``); the rest unchanged, spaces such as a no-break
    space and the joiners of emoji sequences included."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() or c in _SHOWN_AS_IS or unicodedata.category(c) == "Zs"
                   else c.encode("unicode_escape").decode("ascii") for c in value)


def for_terminal_lines(text: object) -> str:
    """``text`` with each of its lines made safe by :func:`for_terminal`: a message written over
    several lines (a list of problems) keeps its line breaks, and nothing else reaches the
    terminal raw."""
    return "\n".join(for_terminal(line) for line in str(text).split("\n"))


def for_markdown(text: object) -> str:
    """``text`` as inert Markdown: :func:`for_terminal`, then each Markdown syntax character
    backslash-escaped (``[click](url)`` shows as written, ``<img ...>`` is not HTML)."""
    return _MARKDOWN_SYNTAX.sub(r"\\\1", for_terminal(text))
