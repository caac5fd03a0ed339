"""Temporary files that writers killed on a local disk left under the store's folders.

:meth:`Store.write_bytes` writes a file on a local disk as ``.<name>.tmp-<uuid>`` beside it, then
renames it over the file. A writer killed between the two (SIGKILL, the OOM killer, a machine that
stopped) leaves the temporary file for good: under ``reports/`` (a run's page, a cached figure)
and under ``runs/`` (a run record, an extraction stage's record, a run's sign of life). ``prh gc``
removes those last written more than the stale limit ago. Object stores have none: a file is one
PUT there.
"""

from __future__ import annotations

import time

from storage.store import STALE_CLAIM_SECONDS, TEMP_INFIX, Store, modified_at


def dead_temporaries(store: Store, folder: str, stale_after_s: float = STALE_CLAIM_SECONDS, dry_run: bool = False,
                     now: float | None = None) -> dict[str, int]:
    """Remove (with ``dry_run`` only list) the temporary files (``.<name>.tmp-<uuid>``) anywhere
    under the key ``folder`` last written more than ``stale_after_s`` seconds (default: the
    stale-claim limit, 5 minutes) before ``now`` (epoch seconds; default: this host's clock).
    Younger ones may be a live writer's in flight (one lives as long as its file takes to write
    and fsync) and are left. A live writer stalled past the limit whose file was removed does not
    lose its write: :meth:`Store.write_bytes` writes the file again when the rename finds it gone.
    Returns ``key -> bytes`` of each file, sorted by key; ``{}`` on an object store."""
    if not store.is_local or not store.fs.exists(store.path(folder)):
        return {}
    now = time.time() if now is None else now
    found = {}
    for path, entry in sorted(store.glob(folder, f"**/.*{TEMP_INFIX}*", detail=True).items()):
        if entry.get("type") != "file" or now - modified_at(entry) <= stale_after_s:
            continue
        key = store.key_of(path)
        found[key] = int(entry.get("size") or 0)
        if not dry_run:
            store.delete(key)
    return found
