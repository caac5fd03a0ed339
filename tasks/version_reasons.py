"""Words for why a stored version is not the one a run needs (``tasks.why_extract``,
``tasks.why_align``): when it was published, and which recorded fields differ."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from storage.store import Store
from storage.times import utc_time

#: A differing value is shown up to this many characters (a model's config can be long).
SHOWN_VALUE_CHARS = 60


def published_at(manifest: dict[str, Any]) -> datetime:
    """When a version was published (the earliest time when unreadable, so it is never the newest)."""
    return utc_time(manifest.get("published_at")) or datetime.min.replace(tzinfo=timezone.utc)


def stored_manifests(store: Store, prefix: str, kind: str, section: str) -> list[dict[str, Any]]:
    """The published manifests of ``kind`` in the version folders directly under the key ``prefix``
    whose ``section`` (``catalog``, ``lineage``) is a JSON object; damaged ones are passed over
    (``prh verify`` names them)."""
    return [manifest for _, manifest in store.manifests(prefix, on_damaged=lambda _: None, folders="*")
            if manifest.get("kind") == kind and isinstance(manifest.get(section), dict)]


def closest(manifests: list[dict[str, Any]], differences: Callable[[dict[str, Any]], tuple[Any, ...]]) -> dict[str, Any]:
    """Of ``manifests`` (at least one), the one closest to a run: the fewest differences, each
    flag (bool) and each item of each list that ``differences`` returns counting one; the newest
    (``published_at``) among equals. The closest, not merely the newest: a store holding a model
    at two settings (float32, then a newer float16 trial) must not name the trial's dtype as a
    float32 run's reason."""
    def count(manifest: dict[str, Any]) -> int:
        return sum(int(d) if isinstance(d, bool) else len(d) for d in differences(manifest))

    return min(sorted(manifests, key=published_at, reverse=True), key=count)  # min keeps the first of equals


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
