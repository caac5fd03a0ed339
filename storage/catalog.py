"""The analysts' DuckDB catalog: views over every published version in a store.

``connect(url)`` returns an in-memory DuckDB connection with these views:

- ``datasets``: one row per dataset version (name, version, sample count, source, created_at).
- ``samples``: one row per sample (dataset_version, sample_id, image_id, text, image bytes).
- ``models``: one row per feature version (model, modality, hf id, revision, pooling, dtype,
  parameter count, layer count, widths, bits per byte, dataset_version).
- ``features``: one row per (model, layer, sample): the pooled vector as ``FLOAT[]``.
- ``alignment``: one row per metric × model pair × layer pair.
- ``alignment_best``: one row per metric × model pair: best layer pair, chance level,
  calibrated score and p-value.
- ``runs``: one row per pipeline run, with its lineage.

Only published versions (those with a manifest) appear. For S3 stores the s3fs filesystem is
registered on the connection (DuckDB's httpfs extension is not needed).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow as pa

from storage import layout
from storage.store import Store

_FILE_VIEWS: dict[str, tuple[str, str]] = {
    # view: (manifest prefix, file name in each version, or "*.parquet" for every listed file)
    "samples": (layout.DATASETS, layout.SAMPLES_FILE),
    "features": (layout.FEATURES, "*"),
    "alignment": (layout.ALIGNMENT, layout.SCORES_FILE),
    "alignment_best": (layout.ALIGNMENT, layout.BEST_FILE),
}

# Column types of each file view when the store holds no version of it yet.
_EMPTY_VIEWS = {
    "samples": "dataset_version VARCHAR, sample_id VARCHAR, image_id VARCHAR, text VARCHAR, image BLOB",
    "features": "model VARCHAR, feature_version VARCHAR, layer SMALLINT, sample_id VARCHAR, vector FLOAT[]",
    "alignment": (
        "alignment_version VARCHAR, dataset_version VARCHAR, metric VARCHAR, params VARCHAR, model_a VARCHAR, "
        "model_b VARCHAR, layer_a INTEGER, layer_b INTEGER, layer_name_a VARCHAR, layer_name_b VARCHAR, "
        "score DOUBLE, n_samples INTEGER"
    ),
    "alignment_best": (
        "alignment_version VARCHAR, dataset_version VARCHAR, metric VARCHAR, params VARCHAR, model_a VARCHAR, "
        "model_b VARCHAR, modality_a VARCHAR, modality_b VARCHAR, layer_a INTEGER, layer_b INTEGER, "
        "layer_name_a VARCHAR, layer_name_b VARCHAR, score DOUBLE, chance_level DOUBLE, null_mean DOUBLE, "
        "null_std DOUBLE, tau DOUBLE, p_value DOUBLE, calibrated_score DOUBLE, permutations INTEGER, "
        "n_samples INTEGER"
    ),
}

_META_COLUMNS = {
    "datasets": ["dataset_version", "name", "n_samples", "n_rejected", "source", "code_version", "published_at"],
    "models": [
        "model", "feature_version", "dataset_version", "modality", "loader", "model_id", "revision", "pooling",
        "dtype", "param_count", "n_layers", "layer_names", "layer_widths", "bits_per_byte", "n_samples",
        "code_version", "device", "seconds", "published_at",
    ],
    "runs": [
        "run_id", "flow_run_id", "status", "started_at", "finished_at", "store", "config", "dataset_version",
        "feature_versions", "alignment_versions", "extracted", "reused", "aligned", "code_version", "error",
    ],
}


class ReadOnlyQueryError(ValueError):
    """Raised when an analyst's query would change something."""


def connect(store: Store | str, storage_options: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose views cover every published version in ``store``."""
    if not isinstance(store, Store):
        store = Store(store, storage_options)
    con = duckdb.connect(":memory:")
    if not store.is_local:
        con.register_filesystem(store.fs)
    manifests = {prefix: list(store.manifests(prefix)) for prefix in (layout.DATASETS, layout.FEATURES, layout.ALIGNMENT)}
    for view, (prefix, file_name) in _FILE_VIEWS.items():
        files = [
            store.uri(f"{key}/{name}")
            for key, manifest in manifests[prefix]
            for name in sorted(manifest.get("files", {}))
            if name.endswith(".parquet") and (file_name == "*" or name == file_name)
        ]
        _create_file_view(con, view, files)
    _create_meta_view(con, "datasets", [m.get("catalog", {}) for _, m in manifests[layout.DATASETS]])
    _create_meta_view(con, "models", [m.get("catalog", {}) for _, m in manifests[layout.FEATURES]])
    runs = []
    if store.exists(layout.RUNS):
        for path in sorted(store.fs.glob(store.path(layout.RUNS) + "/*.json")):
            runs.append(json.loads(store.fs.cat_file(path)))
    _create_meta_view(con, "runs", runs)
    return con


def _create_file_view(con: duckdb.DuckDBPyConnection, view: str, files: list[str]) -> None:
    if files:
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
    else:
        columns = ", ".join(f"NULL::{c.split(' ', 1)[1]} AS {c.split(' ', 1)[0]}" for c in _EMPTY_VIEWS[view].split(", "))
        con.execute(f"CREATE VIEW {view} AS SELECT {columns} WHERE false")


def _create_meta_view(con: duckdb.DuckDBPyConnection, view: str, rows: list[dict[str, Any]]) -> None:
    columns = _META_COLUMNS[view]
    data = {c: [_json_cell(r.get(c)) for r in rows] for c in columns}
    table = pa.table({c: pa.array(v) if any(x is not None for x in v) else pa.nulls(len(v), pa.string()) for c, v in data.items()})
    con.register(f"_{view}_table", table)
    con.execute(f"CREATE VIEW {view} AS SELECT * FROM _{view}_table")


def _json_cell(value: Any) -> Any:
    """Nested dicts become JSON text so that every column has one Arrow type."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


_READ_ONLY_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def query(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run an analyst's read-only query and return its result as an Arrow table.

    Only SELECT (including WITH ... SELECT, DESCRIBE/SUMMARIZE/SHOW, which DuckDB parses as
    SELECT) and EXPLAIN statements are accepted; anything that could write (COPY, INSERT,
    CREATE, ATTACH, ...) is refused with :class:`ReadOnlyQueryError` before it runs.
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise ValueError(f"cannot parse query: {error}") from None
    if not statements:
        raise ValueError("empty query")
    for statement in statements:
        if statement.type not in _READ_ONLY_TYPES:
            raise ReadOnlyQueryError(
                f"the catalog is read-only: {statement.type.name} statements are not allowed "
                "(only SELECT, WITH, DESCRIBE, SUMMARIZE, SHOW and EXPLAIN)"
            )
    for statement in statements[:-1]:
        con.execute(statement.query)
    result = con.sql(statements[-1].query)
    return result.to_arrow_table() if result is not None else pa.table({})
