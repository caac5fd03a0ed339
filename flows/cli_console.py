"""The console ``prh`` prints its tables and closing lines through (the ``rich`` library's), with the
colour conventions of the environment applied as users of other command-line tools expect.

``rich`` alone kept bold, italic and underline under ``NO_COLOR`` (it drops colours only), and read
``FORCE_COLOR=0`` as "force colour" (any value that is not empty), so that ``FORCE_COLOR=0 prh sql
... > out.txt``, meant to keep escape codes out, wrote them into the file even though its output was
no terminal. Here:

* ``NO_COLOR`` set and not empty: no escape codes at all (https://no-color.org), even with
  ``FORCE_COLOR`` set;
* ``FORCE_COLOR`` of ``0``, ``false``, ``no`` or ``off``: no escape codes either (the reading of
  Node.js and the tools built on it); any other value that is not empty: styles, even into a pipe;
* otherwise ``rich``'s own choice: styles on a terminal (not a ``TERM=dumb`` one), none into a pipe
  or a file.
"""

from __future__ import annotations

import os
from typing import Any

#: ``FORCE_COLOR`` values that ask for no colour.
NO_FORCE = frozenset({"0", "false", "no", "off"})


def plain_output() -> bool:
    """Whether the environment asks for output without escape codes (module docstring)."""
    if os.environ.get("NO_COLOR", "") != "":
        return True
    return os.environ.get("FORCE_COLOR", "").strip().lower() in NO_FORCE


def output_console(**options: Any) -> Any:
    """A ``rich.console.Console`` over stdout (``options``: the console's own, ``width=``...) that
    writes no escape code where :func:`plain_output` says so."""
    from rich.console import Console

    if plain_output():
        options = {**options, "color_system": None, "force_terminal": False}
    return Console(**options)
