"""``prh`` under a locale whose encoding is not UTF-8: started again in Python's UTF-8 mode, so
that Python and DuckDB read file names alike, and text arguments read as the terminal typed them.
Used by ``flows.cli``; standard library only.
"""

from __future__ import annotations

import codecs
import locale
import os
import sys


def utf8_mode_command() -> list[str] | None:
    """The command line that starts this ``prh`` again in Python's UTF-8 mode, where its locale's
    encoding is not UTF-8 (``LC_ALL=en_US.ISO-8859-1``); None where names are read as UTF-8 already
    (a UTF-8 locale, ``C``/``POSIX``, macOS, Windows), ``PYTHONUTF8=0`` asks for the locale's
    encoding, or the program is no ``prh`` (another program calling :func:`main`).

    DuckDB reads paths as UTF-8, Python in such a locale decodes file names in its encoding: a
    store, config or dataset folder with a non-ASCII name opened as two different paths (a run
    extracted every model, then failed every pair), and file names read from a dataset folder gave
    other sample ids (``img\u00c3\u00a900`` for ``imgé00``), so another dataset version of the
    same data. Started again in UTF-8 mode, the same bytes are read as in a UTF-8 locale; the
    command line and the environment pass through ``execv`` as the bytes they were."""
    if (sys.flags.utf8_mode or os.name != "posix" or not sys.executable or os.environ.get("PYTHONUTF8", "").strip() == "0"
            or codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"):
        return None
    program = sys.argv[0] if sys.argv else ""
    if not (_is_cli_module(program) or os.path.basename(os.path.realpath(program)) == "prh"):
        return None
    return [sys.executable, *sys.orig_argv[1:]]


def typed_text(value: str | None) -> str | None:
    """A command-line argument that is text, not a path (``prh sql``'s query, a column name), as
    typed in a terminal whose locale is not UTF-8, where prh runs in UTF-8 mode
    (:func:`utf8_mode_command`): a Latin-1 terminal sends ``café`` with the byte ``e9``, which UTF-8
    mode keeps as a lone surrogate (refused as no text); decoded in the locale's encoding, as it
    was before the restart. Anything else is returned as it is."""
    if value is None or not sys.flags.utf8_mode:
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(value).decode(locale.getencoding())
    except UnicodeError:
        return value


def _is_cli_module(program: str) -> bool:
    """Whether ``program`` (``sys.argv[0]``) is ``flows/cli.py`` (``python -m flows.cli``)."""
    try:
        return bool(program) and os.path.samefile(program, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli.py"))
    except OSError:
        return False
