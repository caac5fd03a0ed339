"""Features stored under another model name, published under the zoo's name without loading the model.

A model's feature version does not depend on its ``name`` (``ModelSpec.fingerprint``), but the
store key does (``features/<dataset_version>/<model>/<feature_version>``). After a model is renamed
in the zoo, its version is therefore stored under the old name's folder only. Instead of extracting
it again, :func:`reuse_renamed` finds that published version and publishes a copy under the new name:
every layer file read, checked against the source manifest (size, SHA-256), its ``model`` column
rewritten, written by the same publish as an extraction; the manifest is the source's with the new
``catalog.model`` and ``copied_from`` (the source's key).

Not in ``FEATURE_CODE`` (``tasks/extract_task.py``): the copy does not change what a version holds.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage import layout
from storage.shards import remove_partial
from storage.store import Store
from storage.store_errors import DamagedManifest
from storage.store_urls import escape_glob
from storage.verify import NotAsListed, listed_bytes

#: The columns of a layer file (``storage.features.layer_table``); ``model`` is the one naming the model.
LAYER_COLUMNS = ["model", "feature_version", "layer", "sample_id", "vector"]
#: What publishing adds to a manifest: not copied from the source, written afresh for the copy.
PUBLISHED_FIELDS = ("key", "files", "published_at")


def published_elsewhere(store: Store, dataset_version: str, model: str, version: str,
                        logger: logging.Logger | logging.LoggerAdapter) -> list[tuple[str, dict[str, Any]]]:
    """``(key, manifest)`` of every published manifest of feature version ``version`` over
    ``dataset_version`` in another model's folder than ``model``'s, sorted by key. Versions still
    being written have no manifest and are not listed; a damaged manifest is logged and skipped."""
    damaged: list[DamagedManifest] = []
    prefix = Store.key(layout.FEATURES, dataset_version)
    found = [(key, manifest) for key, manifest in store.manifests(prefix, on_damaged=damaged.append,
                                                                  folders=f"*/{escape_glob(version)}")
             if key.split("/")[2] != model and manifest.get("kind") == "features"
             and (manifest.get("catalog") or {}).get("feature_version") == version
             and (manifest.get("catalog") or {}).get("dataset_version") == dataset_version]
    for error in damaged:
        logger.warning("%s: %s; not reused", model, error)
    return found


def reuse_renamed(store: Store, dataset_version: str, model: str, version: str, target_key: str,
                  logger: logging.Logger | logging.LoggerAdapter) -> dict[str, Any] | None:
    """Publish at ``target_key`` the first intact version of ``published_elsewhere`` with ``model``
    as its name, and return its manifest; None when there is none (then the model is extracted).
    A source whose files are missing or differ from its manifest is logged and passed over."""
    for source_key, source in published_elsewhere(store, dataset_version, model, version, logger):
        tables = renamed_layers(store, source_key, source, model, logger)
        if tables is None:
            continue
        manifest = {name: value for name, value in source.items() if name not in PUBLISHED_FIELDS}
        manifest["catalog"] = {**source["catalog"], "model": model}
        manifest["copied_from"] = source_key
        published = store.publish(target_key, tables, manifest)
        try:
            remove_partial(store, target_key)  # shards of an extraction of the new name that never finished
        except Exception as error:  # noqa: BLE001 - the features are published; `prh gc` clears these shards later
            logger.warning("%s: features published, but their shards under %s/_partial stay (%s); prh gc removes them",
                           model, target_key, error)
        logger.info("%s: features of the same version %s stored as %r reused under the new name (copied from %s), "
                    "no extraction", model, version, source_key.split("/")[2], source_key)
        return published.manifest
    return None


def renamed_layers(store: Store, source_key: str, source: dict[str, Any], model: str,
                   logger: logging.Logger | logging.LoggerAdapter) -> dict[str, pa.Table] | None:
    """File name -> layer table of every layer of the published version at ``source_key``, with
    ``model`` in its ``model`` column (``(N,)`` rows, everything else as stored). None, logged, when
    the manifest does not list exactly its ``n_layers`` layer files, or a file is missing, is not of
    the size and SHA-256 its manifest gives, or does not hold the layer schema of the source's
    model and version."""
    old = source_key.split("/")[2]
    version = source_key.split("/")[3]
    listing = source.get("files") or {}
    n_layers = (source.get("catalog") or {}).get("n_layers")
    expected = [layout.layer_file(i) for i in range(n_layers)] if isinstance(n_layers, int) else None
    if expected is None or sorted(listing) != sorted(expected):
        logger.warning("%s: the features stored as %r (%s) do not list one file per layer; not reused", model, old, source_key)
        return None
    tables = {}
    for name in expected:
        try:
            data = listed_bytes(store, source_key, name, source)
        except (FileNotFoundError, NotAsListed) as error:
            logger.warning("%s: %s of the features stored as %r (%s) is %s; not reused (`prh verify` checks the store)",
                           model, name, old, source_key,
                           "missing" if isinstance(error, FileNotFoundError) else "not the file its manifest lists")
            return None
        table = pq.read_table(pa.BufferReader(data))
        del data
        if table.column_names != LAYER_COLUMNS or _values(table, "model") != {old} or _values(table, "feature_version") != {version}:
            logger.warning("%s: %s of the features stored as %r (%s) is not a layer file of that model and version; not reused",
                           model, name, old, source_key)
            return None
        column = pa.array([model] * table.num_rows, pa.string()).dictionary_encode()
        tables[name] = table.set_column(LAYER_COLUMNS.index("model"), "model", column)
    return tables


def _values(table: pa.Table, column: str) -> set[Any]:
    """The distinct values of a string (or dictionary of strings) column."""
    return set(table.column(column).cast(pa.string()).unique().to_pylist())
