"""The one reading of a time that prh stored (run records, manifests, the catalog's columns).

Standard library only, so that code that must not load the store (the report's tables) reads
times as the store, the catalog and ``prh gc`` do.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def utc_time(value: Any) -> datetime | None:
    """``value`` (ISO 8601 text, as every prh writes: ``2026-01-01T00:00:00+00:00``; also ``Z``,
    a space for ``T``, fractions, a date alone, surrounding spaces; or a ``datetime``) as an aware
    UTC ``datetime``; a time without an offset counts as UTC. None for anything else (a
    hand-edited record: empty, a number, not a time, past ``datetime``'s range once in UTC). The
    one reading of a stored time: the catalog's time columns and the order of runs
    (``storage.runs.order_time``, ``prh gc --keep-runs``) agree on it."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    try:
        return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one: past datetime's range
        return None
