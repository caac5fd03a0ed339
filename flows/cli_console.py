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

It also says what ``prh`` does when its stdout cannot be written: a reader that went away (``prh sql
... | head``) ends it quietly with :data:`BROKEN_PIPE_EXIT`; a full disk or a failing device with
one line (:func:`output_failure`). :func:`print_or_exit` applies both to ``--version`` and
``--help``, whose text argparse would otherwise write with the error swallowed. A ``prh`` started
with stdout closed (``prh run >&-``, as some schedulers start jobs) writes its output to /dev/null
(:func:`stand_in_for_closed_stdout`) and does its work; ``--version`` and ``--help``, whose only
work is their output, then fail with one line, as ``echo hi >&-`` does.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping
from typing import Any

#: ``FORCE_COLOR`` values that ask for no colour.
NO_FORCE = frozenset({"0", "false", "no", "off"})


def plain_output(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment (``environ``, default ``os.environ``) asks for output without
    escape codes (module docstring)."""
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR", "") != "":
        return True
    return environ.get("FORCE_COLOR", "").strip().lower() in NO_FORCE


def output_console(**options: Any) -> Any:
    """A ``rich.console.Console`` over stdout (``options``: the console's own, ``width=``...) that
    writes no escape code where :func:`plain_output` says so."""
    from rich.console import Console

    if plain_output():
        options = {**options, "color_system": None, "force_terminal": False}
    return Console(**options)


#: Exit status when the reader of stdout went away (`prh run | head`): what a shell reports for a
#: writer that SIGPIPE ended (128 + 13), not 1, which `prh run` exits with when models failed.
BROKEN_PIPE_EXIT = 128 + 13

#: Errors of a disk or device being written that no retry fixes: the output (or a file a command
#: writes, such as ``prh report``'s page) cannot be written, which the command says in one line.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


#: whether this process started with stdout closed (:func:`stand_in_for_closed_stdout`)
_stdout_closed_at_start = False


def stand_in_for_closed_stdout() -> None:
    """Where the process started with stdout closed (``sys.stdout`` None: ``prh ... >&-``), give it
    /dev/null for the whole process (its output goes nowhere, as asked) and remember that, for
    :func:`print_or_exit`. Does nothing where stdout is open."""
    global _stdout_closed_at_start
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the whole process
        _stdout_closed_at_start = True


def discard_stdout() -> None:
    """Point stdout's file descriptor at /dev/null: what is left in its buffer goes nowhere, so
    that Python's flush of stdout at exit does not fail (and print a second error) again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def output_failure(error: BaseException) -> str | None:
    """One line for output that cannot be written (``prh sql --format csv > out.csv`` on a full
    disk: ``No space left on device``; a failing device), or None for any other error (those keep
    their traceback). When stdout itself cannot be flushed, what is left in its buffer is dropped,
    so that Python's flush at exit does not fail again."""
    if not isinstance(error, OSError) or error.errno not in WRITE_ERRNOS:
        return None
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError:
        discard_stdout()
    where = f"'{error.filename}'" if error.filename else "the output"
    return f"cannot write {where}: {error.strerror or error}; what was written before it stopped is incomplete"


def print_or_exit(parser: Any, text: str) -> None:
    """Write ``text`` to stdout and flush it (here, not in Python's exit); where that fails, exit
    through ``parser`` (an ``argparse.ArgumentParser``): :data:`BROKEN_PIPE_EXIT` and nothing on
    stderr when the reader went away (`prh --help | head -c0`), 2 with one line (``prh: error: cannot
    write the output: ...``) on a full disk (`> /dev/full`). argparse's own printing swallows the
    error of its write: ``--help`` had exited 0 having printed nothing, or 120 with Python's
    "Exception ignored" from the flush at exit. Started with stdout closed (``prh --help >&-``):
    exit 2 with one line, since the text cannot be written anywhere (it had exited 0)."""
    if _stdout_closed_at_start:
        parser.exit(2, "prh: error: cannot write the output: stdout is closed\n")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()
        parser.exit(BROKEN_PIPE_EXIT)
    except OSError as error:
        message = output_failure(error)
        if message is None:
            raise
        parser.exit(2, f"prh: error: {message}\n")
