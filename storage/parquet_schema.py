"""Schema fingerprints of Parquet files, recorded in manifests so that the catalog can read files
of one schema together without opening each one's footer first (see ``storage.catalog``).

The fingerprint hashes the Parquet schema tree as stored in the file's footer: column names,
order, nesting, physical and logical types, repetition. That tree is what DuckDB binds a
``read_parquet`` column from. What Arrow keeps beside it in the footer's key-value metadata
(``ARROW:schema``: dictionary encoding, the width of a ``fixed_size_list``, a time zone's name)
is left out: DuckDB 2.0 binds a ``fixed_size_list<float>[D]`` of any width as ``FLOAT[]`` and a
dictionary-encoded string as ``VARCHAR``, so the layer files of a model share one fingerprint
whatever their widths. Files with equal fingerprints can therefore be read by one
``read_parquet([...], union_by_name = false)``, which binds from the first file only.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

#: Hex digits kept of the SHA-256 (64 bits: collisions between a store's few schemas are out of reach).
FINGERPRINT_LENGTH = 16
#: Hashed before the tree, so that a different way of describing schemas never shares a fingerprint.
_METHOD = b"parquet-schema-tree-v1\0"


def schema_fingerprint(data: bytes) -> str | None:
    """The fingerprint (16 hex digits) of the Parquet file ``data`` (the whole file's bytes; only
    its footer is read); None when ``data`` is not a Parquet file."""
    try:
        schema = pq.ParquetFile(pa.BufferReader(data)).schema
    except (pa.ArrowException, OSError, ValueError):
        return None
    return hashlib.sha256(_METHOD + schema_tree(schema).encode("utf-8")).hexdigest()[:FINGERPRINT_LENGTH]


def schema_tree(schema: pq.ParquetSchema) -> str:
    """The footer's schema tree as Parquet's schema printer writes it (one node a line, e.g.
    ``optional int32 field_id=-1 layer (Int(bitWidth=16, isSigned=true));``), without the line
    pyarrow puts first (the Python object's address)."""
    return "\n".join(line for line in str(schema).splitlines() if not line.startswith("<"))
