"""Keep Prefect's engine tracebacks out of ``prh run``'s output for errors prh states itself.

When a flow raises, Prefect's flow engine logs "Encountered exception during execution" with the
whole traceback (~50 lines of engine frames) before ``prh run`` prints its one-line error. For
the errors that ``prh run`` reports in one line (bad input: ``ValueError``, ``FileNotFoundError``,
``PermissionError``, and ``ZooFailures``, the summary of models and pairs that failed, each
already logged), the traceback only buries that line. :func:`quiet_known_errors` drops the
traceback from those records (the message, which names the exception, stays); every other
exception keeps its traceback. ``PRH_TRACEBACKS=1`` keeps them all. Only ``prh run`` installs
it: a worker running a deployment logs everything, as Prefect does.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
TRACEBACKS_ENV = "PRH_TRACEBACKS"


class DropStatedTracebacks(logging.Filter):
    """A filter that removes ``exc_info`` from records whose exception is an instance of
    ``stated`` (the record itself is kept)."""

    def __init__(self, stated: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.stated = stated

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, self.stated):
            record.exc_info = None
            record.exc_text = None
        return True


@contextlib.contextmanager
def quiet_known_errors(stated: tuple[type[BaseException], ...]) -> Iterator[None]:
    """While the block runs, Prefect's flow and task run loggers log ``stated`` exceptions
    without their traceback (unless ``$PRH_TRACEBACKS`` is 1/true/yes)."""
    if os.environ.get(TRACEBACKS_ENV, "").strip().lower() in ("1", "true", "yes"):
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
