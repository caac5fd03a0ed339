"""What writers killed mid-write leave outside version folders, removed by ``prh gc`` once stale.

:meth:`Store.write_bytes` writes a file on a local disk as ``.<name>.tmp-<uuid>`` beside it, then
renames it over the file. A writer killed between the two (SIGKILL, the OOM killer, a machine that
stopped) leaves the temporary file for good: under ``reports/`` (a run's page, a cached figure)
and under ``runs/`` (a run record, an extraction stage's record, a run's sign of life)
(:func:`dead_temporaries`; object stores have none: a file is one PUT there). A process killed
between creating and removing the write probe of :meth:`Store.check_writable` leaves it at the
store's top, on any store, and on a local disk possibly its temporary file (:func:`dead_probes`).
Both remove those last written more than the stale limit ago (5 minutes: a write in flight lives
as long as its file takes to write and fsync); younger ones are left.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from storage.store import PROBE_NAME, STALE_CLAIM_SECONDS, TEMP_INFIX, Store, modified_at

#: A write probe, or the temporary file a local disk writes it through.
_PROBE_FILE = re.compile(rf"{PROBE_NAME.pattern}|\.{PROBE_NAME.pattern}{re.escape(TEMP_INFIX)}[0-9a-f]{{32}}")


def dead_temporaries(store: Store, folder: str, stale_after_s: float = STALE_CLAIM_SECONDS, dry_run: bool = False,
                     now: float | None = None) -> dict[str, int]:
    """Remove (with ``dry_run`` only list) the temporary files (``.<name>.tmp-<uuid>``) anywhere
    under the key ``folder`` last written more than ``stale_after_s`` seconds (default: the
    stale-claim limit, 5 minutes) before ``now`` (epoch seconds; default: this host's clock).
    A live writer stalled past the limit whose file was removed does not lose its write:
    :meth:`Store.write_bytes` writes the file again when the rename finds it gone.
    Returns ``key -> bytes`` of each file, sorted by key; ``{}`` on an object store."""
    if not store.is_local or not store.fs.exists(store.path(folder)):
        return {}
    entries = store.glob(folder, f"**/.*{TEMP_INFIX}*", detail=True).values()
    return _remove_stale(store, entries, None, stale_after_s, dry_run, now)


def dead_probes(store: Store, stale_after_s: float = STALE_CLAIM_SECONDS, dry_run: bool = False,
                now: float | None = None) -> dict[str, int]:
    """Remove (with ``dry_run`` only list) the write probes (``.probe-<uuid>``) and their
    temporary files (``..probe-<uuid>.tmp-<uuid>``) at the store's top last written more than
    ``stale_after_s`` seconds before ``now``, as :func:`dead_temporaries`; any store."""
    store.fs.invalidate_cache(store.root)
    # Store.exists: on S3 no HEAD of the prefix as a key, which PREFIX/* credentials may not send
    entries = store.fs.ls(store.root, detail=True) if store.exists("") else []
    return _remove_stale(store, entries, _PROBE_FILE, stale_after_s, dry_run, now)


def _remove_stale(store: Store, entries: Iterable[dict[str, Any]], names: re.Pattern[str] | None, stale_after_s: float,
                  dry_run: bool, now: float | None) -> dict[str, int]:
    """Remove the files among the listing ``entries`` (whose names match ``names``, when given)
    last written more than ``stale_after_s`` before ``now``; ``key -> bytes`` of each, by key."""
    now = time.time() if now is None else now
    found = {}
    for entry in sorted(entries, key=lambda e: e["name"]):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if (entry.get("type") != "file" or (names is not None and not names.fullmatch(name))
                or now - modified_at(entry) <= stale_after_s):
            continue
        key = store.key_of(entry["name"])
        found[key] = int(entry.get("size") or 0)
        if not dry_run:
            store.delete(key)
    return found
