"""Partial extraction results: shards that let a killed extraction resume where it stopped.

A shard holds every layer's features for a contiguous range of items, as one Parquet file under
``<feature version key>/_partial/`` (never listed in a manifest, so readers never see it). Each
shard is written atomically; when all shards exist the version is assembled and published, then
the partial folder is removed. ``stale_partials``/``remove_stale_partials`` (``prh gc``) clear the
folders that no extraction will come back to.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.bytes_read import CountedFile
from storage.features import vectors_from_arrow
from storage.store import Store, modified_at, table_to_parquet_bytes
from storage.store_errors import DamagedManifest

PARTIAL = "_partial"


def shard_key(version_key: str, shard: int) -> str:
    return f"{version_key}/{PARTIAL}/shard-{shard:05d}.parquet"


def write_shard(store: Store, version_key: str, shard: int, layers: list[np.ndarray], extras: dict | None = None,
                items: tuple[int, int] | None = None) -> None:
    """Store one shard: ``layers[l]`` is ``(n, D_l) float32`` for the shard's n items.

    ``extras`` (JSON-able, e.g. the shard's summed loss for bits per byte) is kept in the file's
    metadata and returned by :func:`read_shard`; ``items`` (``lo, hi``: the shard holds items
    ``lo`` to ``hi - 1`` of the model's list) too, and checked when it is read back.
    """
    columns = {}
    for index, x in enumerate(layers):
        x = np.ascontiguousarray(x, dtype=np.float32)
        columns[f"layer_{index:03d}"] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    metadata = {"prh_extras": json.dumps(extras or {})}
    if items is not None:
        metadata["prh_items"] = json.dumps(list(items))
    table = pa.table(columns).replace_schema_metadata(metadata)
    store.write_bytes(shard_key(version_key, shard), table_to_parquet_bytes(table))


def read_shard(
    store: Store, version_key: str, shard: int, expected_rows: int, widths: list[int] | None = None,
    items: tuple[int, int] | None = None,
) -> tuple[list[np.ndarray], dict] | None:
    """A stored shard's (layers, extras), or None if it is absent or does not match what is expected:
    its row count, its layers' ``widths``, and the ``items`` it holds (``lo, hi``; a shard written
    before they were recorded is checked by its row count only). A rerun with another shard size
    read the old shard 2 (items 32-40) as its own shard 2 (items 16-24) and published wrong features."""
    key = shard_key(version_key, shard)
    if not store.exists(key):
        return None
    try:
        with store.fs.open(store.path(key), "rb") as handle:
            table = pq.read_table(CountedFile(handle))  # a resumed shard is bytes read (storage.bytes_read)
    except (OSError, pa.ArrowException):
        return None  # unreadable leftovers are recomputed
    if table.num_rows != expected_rows:
        return None
    recorded = (table.schema.metadata or {}).get(b"prh_items")
    if items is not None and recorded is not None and json.loads(recorded) != list(items):
        return None  # other items (another shard size): computed again
    layers = [vectors_from_arrow(table.column(name)) for name in table.column_names]
    if widths is not None and [x.shape[1] for x in layers] != list(widths):
        return None
    extras = json.loads((table.schema.metadata or {}).get(b"prh_extras", b"{}"))
    return layers, extras


def remove_partial(store: Store, version_key: str) -> None:
    """Delete the shards of a version once it is published. Another extraction of the same
    version may be removing them at the same moment (two runs finishing one model): files that
    vanish, or appear, under this call are looked at again, up to a few times."""
    path = store.path(f"{version_key}/{PARTIAL}")
    for attempt in range(5):
        try:
            store.fs.invalidate_cache(path)
            if store.fs.exists(path):
                store.remove_path_tree(path)  # on S3 each key's answer read: a refused removal is an error
            return
        except FileNotFoundError:
            continue  # removed by the other process meanwhile
        except OSError as error:
            if error.errno != errno.ENOTEMPTY or attempt == 4:  # a shard written meanwhile: remove it too
                raise


#: default age after which an unpublished version's shards count as abandoned (``prh gc``)
STALE_PARTIAL_SECONDS = 7 * 24 * 3600.0


def stale_partials(store: Store, older_than_s: float = STALE_PARTIAL_SECONDS, now: float | None = None,
                   live_since: float | None = None, damaged: list[DamagedManifest] | None = None) -> list[dict[str, Any]]:
    """Shard folders of feature versions that no extraction will resume.

    A version's ``_partial/`` folder is listed when the version is published (a run that died
    between publishing and clearing its shards) or when its newest shard is older than
    ``older_than_s`` (an extraction that died, after which its model, dataset or code changed,
    so no rerun asks for that version again). A live extraction writes a shard every 2,048
    items, so its folder is never that old; a rerun of a listed version just recomputes.

    ``live_since`` (epoch seconds: the start of the earliest run still alive less the clock
    skew, see ``storage.runs.live_runs_since``): an unpublished folder written since then is never listed,
    whatever ``older_than_s`` says, since a live run may be extracting into it.

    A version whose manifest is damaged (:class:`storage.store_errors.DamagedManifest`) is neither
    published nor unpublished: its shards are never listed (``prh verify --remove-damaged``
    removes the version with them); the error is appended to ``damaged`` when given.

    Returns ``{"version": key, "shards": count, "other_files": count (a killed writer's temporary
    file, anything else left there), "bytes": total of all, "newest": epoch seconds, "reason":
    "published" | "abandoned"}`` per folder, sorted by version key.
    """
    now = time.time() if now is None else now
    base = store.path("features")
    if not store.fs.exists(base):
        return []
    versions: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # version key -> its files' (name, listing entry)
    for path, info in store.glob("features", f"**/{PARTIAL}/*", detail=True).items():
        if info.get("type") == "file":  # shards, and the temporary file of a shard whose writer was killed
            version_key, _, name = store.key_of(path).rsplit("/", 2)
            versions.setdefault(version_key, []).append((name, info))
    out = []
    for version_key, files in sorted(versions.items()):
        newest = max(modified_at(info) for _, info in files)
        in_use = live_since is not None and newest >= live_since
        try:
            published = store.manifest(version_key) is not None
        except DamagedManifest as error:  # prh verify's business: its shards stay
            if damaged is not None:
                damaged.append(error)
            continue
        reason = "published" if published else ("abandoned" if now - newest > older_than_s and not in_use else None)
        if reason:
            shards = sum(1 for name, _ in files if name.startswith("shard-"))
            out.append({"version": version_key, "shards": shards, "other_files": len(files) - shards,
                        "bytes": sum(int(info.get("size") or 0) for _, info in files), "newest": newest, "reason": reason})
    return out


def remove_stale_partials(store: Store, older_than_s: float = STALE_PARTIAL_SECONDS, dry_run: bool = False,
                          live_since: float | None = None, damaged: list[DamagedManifest] | None = None) -> list[dict[str, Any]]:
    """Remove the folders :func:`stale_partials` lists (nothing with ``dry_run``); returns them.
    ``damaged`` receives the errors of versions left alone because their manifest is damaged.
    On a local disk the folder of an unpublished version left empty goes too (it had stayed)."""
    stale = stale_partials(store, older_than_s, live_since=live_since, damaged=damaged)
    if not dry_run:
        for entry in stale:
            remove_partial(store, entry["version"])
            if store.is_local:
                try:
                    os.rmdir(store.path(entry["version"]))  # only if empty: a published version keeps its files
                except OSError:
                    pass  # not empty (published, or a writer's files), or gone
    return stale
