"""The time of prh's console log lines: ISO 8601 in UTC, with the date.

Prefect's console format starts each line with the machine's local time of day
(``02:00:01.234 | INFO | ...``): a nightly log that crossed midnight, or was read by someone in
another time zone, did not say when a line was written. :class:`UtcFormatter` is Prefect's own
formatter (its flow-run and task-run line formats kept) with the time written
``2026-03-04T02:00:01.234Z``. ``flows.prefect_env.logging_environment`` names it, through
Prefect's ``PREFECT_LOGGING_*`` variables, for the processes prh starts (``prh run``, ``make
serve``'s server and workers, and the flow runs they start); Prefect's other handlers (the API's,
whose lines the UI shows with their own time) are left as they are.

Imported by Prefect's logging set-up (``logging.config.dictConfig``) while Prefect itself is being
imported: this module imports nothing of prh.
"""

from __future__ import annotations

import logging
import time

from prefect.logging.formatters import PrefectFormatter

#: The ``datefmt`` of Prefect's ``logging.yml`` (its time of day alone): :class:`UtcFormatter`
#: writes its full date-time in its place.
PREFECT_DATEFMT = "%H:%M:%S"


def utc_time(record: logging.LogRecord) -> str:
    """``2026-03-04T02:00:01.234Z``: the moment ``record`` was made, in UTC to the millisecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class UtcFormatter(PrefectFormatter):
    """Prefect's console formatter, the time of each line in UTC with its date (:func:`utc_time`)
    wherever the format says ``%(asctime)s``. Given a ``datefmt`` other than Prefect's ``%H:%M:%S``
    (a logging configuration naming this class with one), that is written in UTC. (prh does not name
    this class where the environment sets any ``PREFECT_LOGGING_FORMATTERS_STANDARD_*`` variable, a
    ``..._DATEFMT`` included: Prefect's own formatter, in local time, then writes that format.)"""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        if datefmt and datefmt != PREFECT_DATEFMT:
            return time.strftime(datefmt, time.gmtime(record.created))
        return utc_time(record)
