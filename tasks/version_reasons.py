"""Words for why a stored version is not the one a run needs (``tasks.why_extract``,
``tasks.why_align``): when it was published, and which recorded fields differ."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from storage.times import utc_time

#: A differing value is shown up to this many characters (a model's config can be long).
SHOWN_VALUE_CHARS = 60


def published_at(manifest: dict[str, Any]) -> datetime:
    """When a version was published (the earliest time when unreadable, so it is never the newest)."""
    return utc_time(manifest.get("published_at")) or datetime.min.replace(tzinfo=timezone.utc)


def published_words(manifest: dict[str, Any]) -> str:
    """``published 2026-12-06 22:03 UTC`` (to the minute), or ``published at an unknown time``."""
    published = utc_time(manifest.get("published_at"))
    return f"published {published.strftime('%Y-%m-%d %H:%M UTC') if published else 'at an unknown time'}"


def differing_fields(stored: Any, current: dict[str, Any]) -> list[str]:
    """``field (stored value, now current value)`` for each field of two records (a model's
    fingerprint, an alignment's parameters) that differs, in field order."""
    stored = stored if isinstance(stored, dict) else {}
    return [f"{field} ({_short(stored.get(field))}, now {_short(current.get(field))})"
            for field in sorted(set(stored) | set(current)) if stored.get(field) != current.get(field)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS - 1] + "…"
