"""Content-addressed version ids.

A version id is the first 16 hex digits of the SHA-256 of a canonical JSON encoding of
everything that determines the versioned object. Same inputs, same id.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

ID_LENGTH = 16
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, non-ASCII kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_id(obj: Any) -> str:
    """Version id of a JSON-able object: sha256(canonical_json(obj))[:16]."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:ID_LENGTH]


def table_digest(table: pa.Table, columns: list[str] | None = None) -> str:
    """SHA-256 hex digest of a table's content, column by column, row order included.

    Hashes each column's values (not the Parquet encoding), so the digest is independent of
    compression, chunking and pyarrow version.
    """
    h = hashlib.sha256()
    for name in columns or table.column_names:
        h.update(name.encode("utf-8") + b"\0")
        column = table.column(name).combine_chunks()
        for value in column.to_pylist():
            if value is None:
                h.update(b"\1N")
            elif isinstance(value, bytes):
                h.update(len(value).to_bytes(8, "little") + value)
            else:
                encoded = str(value).encode("utf-8")
                h.update(len(encoded).to_bytes(8, "little") + encoded)
    return h.hexdigest()


@lru_cache(maxsize=None)
def code_version(*packages: str) -> str:
    """Hash of the source of the given project packages (e.g. ``"tasks/extract"``).

    A change to the code that computes a stage changes that stage's versions; edits elsewhere
    (the CLI, the README) do not.
    """
    h = hashlib.sha256()
    for package in packages:
        root = _PROJECT_ROOT / package
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            h.update(path.relative_to(_PROJECT_ROOT).as_posix().encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()[:ID_LENGTH]
