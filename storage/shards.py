"""Partial extraction results: shards that let a killed extraction resume where it stopped.

A shard holds every layer's features for a contiguous range of items, as one Parquet file under
``<feature version key>/_partial/`` (never listed in a manifest, so readers never see it). Each
shard is written atomically; when all shards exist the version is assembled and published, then
the partial folder is removed.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.features import vectors_from_arrow
from storage.store import Store, table_to_parquet_bytes

PARTIAL = "_partial"


def shard_key(version_key: str, shard: int) -> str:
    return f"{version_key}/{PARTIAL}/shard-{shard:05d}.parquet"


def write_shard(store: Store, version_key: str, shard: int, layers: list[np.ndarray], extras: dict | None = None) -> None:
    """Store one shard: ``layers[l]`` is ``(n, D_l) float32`` for the shard's n items.

    ``extras`` (JSON-able, e.g. the shard's summed loss for bits per byte) is kept in the file's
    metadata and returned by :func:`read_shard`.
    """
    columns = {}
    for index, x in enumerate(layers):
        x = np.ascontiguousarray(x, dtype=np.float32)
        columns[f"layer_{index:03d}"] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    table = pa.table(columns).replace_schema_metadata({"prh_extras": json.dumps(extras or {})})
    store.write_bytes(shard_key(version_key, shard), table_to_parquet_bytes(table))


def read_shard(
    store: Store, version_key: str, shard: int, expected_rows: int, widths: list[int] | None = None
) -> tuple[list[np.ndarray], dict] | None:
    """A stored shard's (layers, extras), or None if it is absent or does not match what is expected."""
    key = shard_key(version_key, shard)
    if not store.exists(key):
        return None
    try:
        with store.fs.open(store.path(key), "rb") as handle:
            table = pq.read_table(handle)
    except (OSError, pa.ArrowException):
        return None  # unreadable leftovers are recomputed
    if table.num_rows != expected_rows:
        return None
    layers = [vectors_from_arrow(table.column(name)) for name in table.column_names]
    if widths is not None and [x.shape[1] for x in layers] != list(widths):
        return None
    extras = json.loads((table.schema.metadata or {}).get(b"prh_extras", b"{}"))
    return layers, extras


def remove_partial(store: Store, version_key: str) -> None:
    """Delete the shards of a version once it is published."""
    path = store.path(f"{version_key}/{PARTIAL}")
    if store.fs.exists(path):
        store.fs.rm(path, recursive=True)
