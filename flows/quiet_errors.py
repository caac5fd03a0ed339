"""Keep Prefect's engine tracebacks out of ``prh run``'s output for errors prh states itself.

When a flow raises, Prefect's flow engine logs "Encountered exception during execution" with the
whole traceback (~50 lines of engine frames) before ``prh run`` prints its one-line error. For an
error prh raised on purpose (:func:`stated_by_prh`: bad input, or ``ZooFailures``, the summary of
models and pairs that failed, each already logged) the traceback only buries that line.
:func:`quiet_known_errors` drops the traceback from those records (the message, which names the
exception, stays). Every other exception keeps its traceback, a ``ValueError`` raised inside a
library (numpy, pyarrow: maybe a bug) included. ``PRH_TRACEBACKS=1`` keeps them all. Only
``prh run`` installs it: a worker running a deployment logs everything, as Prefect does.
"""

from __future__ import annotations

import contextlib
import dis
import logging
import os
from pathlib import Path
from typing import Iterator

from storage.env_numbers import env_flag

ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
TRACEBACKS_ENV = "PRH_TRACEBACKS"
PROJECT_PACKAGES = ("flows", "tasks", "storage")
_PROJECT_DIRS = tuple(str(Path(__file__).resolve().parent.parent / package) + os.sep for package in PROJECT_PACKAGES)


def stated_by_prh(error: BaseException, plain: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError,
                                                                                   PermissionError)) -> bool:
    """Whether ``error`` is one prh raised on purpose: an exception class of prh's own packages
    (``ConfigError``, ``ModelInputError``, ``ZooFailures``...), or a ``plain`` one (``ValueError``...)
    raised by a ``raise`` statement of prh's own code (the innermost frame of its traceback lies in
    ``flows/``, ``tasks/`` or ``storage/`` and stopped at a ``raise``), not inside a library nor by a
    built-in operation failing in prh's code (``int('12px')``, an unpacking: maybe a bug)."""
    if type(error).__module__.split(".", 1)[0] in PROJECT_PACKAGES:
        return True
    if not isinstance(error, plain) or error.__traceback__ is None:
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    code = frame.tb_frame.f_code
    if not os.path.abspath(code.co_filename).startswith(_PROJECT_DIRS):
        return False
    return dis.opname[code.co_code[frame.tb_lasti]] == "RAISE_VARARGS"


class DropStatedTracebacks(logging.Filter):
    """A filter that removes ``exc_info`` from records whose exception is an instance of
    ``stated`` that :func:`stated_by_prh` (the record itself is kept)."""

    def __init__(self, stated: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.stated = stated

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, self.stated) and stated_by_prh(error):
            record.exc_info = None
            record.exc_text = None
        return True


def tracebacks_kept() -> bool:
    """Whether ``$PRH_TRACEBACKS`` asks for every traceback: 1/true/yes/on (0/false/no/off or
    unset: no); any other value is a ``ValueError`` naming it (``storage.env_numbers.env_flag``:
    ``PRH_TRACEBACKS=2`` had been a silent no)."""
    return env_flag(TRACEBACKS_ENV)


@contextlib.contextmanager
def quiet_known_errors(stated: tuple[type[BaseException], ...]) -> Iterator[None]:
    """While the block runs, Prefect's flow and task run loggers log ``stated`` exceptions that
    prh raised (:func:`stated_by_prh`) without their traceback (unless :func:`tracebacks_kept`)."""
    if tracebacks_kept():
        yield
        return
    quiet = DropStatedTracebacks(stated)
    loggers = [logging.getLogger(name) for name in ENGINE_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
