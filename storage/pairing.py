"""Join two models' stored features on ``sample_id`` with DuckDB and hand them over as arrays.

Rows are matched by id, never by position: samples present for only one model are counted and
reported (with a few example ids), and the returned arrays are aligned row for row in
``sample_id`` order.

How (per model, per layer file):

1. DuckDB joins the two models' ``sample_id`` columns (layer 0 of each) into ``common``:
   ``(sample_id, out_row)`` with ``out_row = 0..N-1`` in ``sample_id`` order.
2. For every layer file, DuckDB joins its ``(sample_id, file_row_number)`` with ``common``,
   giving ``dest[file_row] = out_row`` (``-1`` for rows outside the common set). Only id
   columns take part in joins; vectors are never hashed or sorted.
3. The file's ``vector`` column is streamed from DuckDB as Arrow record batches together with
   ``file_row_number``, and each batch is copied once into its rows of a preallocated
   ``(N, D) float32`` array. Peak memory is the arrays handed over plus one batch.

Bad stored features raise ``FeatureError`` (a ``ValueError``) naming the model, the layer (index
and name) and the file: duplicate or NULL ids, NULL vectors, ragged vectors, layer files that
miss common samples, and NaN/Inf values in the common samples (all such layers of both models
in one message, each with its count of bad samples and a few of their ids). On a remote store
(S3) the layer files are first fetched concurrently into a temporary local folder (one GET per
file) and read from there.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from storage.features import FeatureError, examples, non_finite_rows
from storage.layout import layer_file
from storage.store import Store, escape_glob

BATCH_ROWS = 8192


@dataclass
class PairedFeatures:
    """Features of two models over their common samples.

    ``xs[l]``: ``(N, D_l) float32`` for layer ``l`` of model A, rows in ``sample_ids`` order;
    ``ys`` likewise for model B. ``only_a``/``only_b``: how many samples one model holds and the
    other does not; ``examples_only_a``/``examples_only_b``: a few of their ids (sorted).
    """

    sample_ids: list[str]
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    only_a: int
    only_b: int
    examples_only_a: list[str] = field(default_factory=list)
    examples_only_b: list[str] = field(default_factory=list)

    @property
    def n_a(self) -> int:
        """Samples model A holds (common + only in A)."""
        return len(self.sample_ids) + self.only_a

    @property
    def n_b(self) -> int:
        """Samples model B holds (common + only in B)."""
        return len(self.sample_ids) + self.only_b


def _layer_uris(store: Store, manifest: dict) -> list[str]:
    return [store.uri(f"{manifest['key']}/{layer_file(i)}") for i in range(int(manifest["catalog"]["n_layers"]))]


def layer_labels(manifest: dict) -> list[str]:
    """``"model 'vit' layer 3 'blocks.3'"`` for every layer of a features manifest (used in errors)."""
    catalog = manifest["catalog"]
    names = catalog.get("layer_names") or []
    labels = []
    for i in range(int(catalog["n_layers"])):
        name = f" {names[i]!r}" if i < len(names) and names[i] is not None else ""
        labels.append(f"model {catalog.get('model', '?')!r} layer {i}{name}")
    return labels


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def paired_features(store: Store, manifest_a: dict, manifest_b: dict) -> PairedFeatures:
    """Join the features of two published feature versions on ``sample_id``.

    Returns ``PairedFeatures`` whose ``xs``/``ys`` are ``(N, D_l) float32`` arrays over the
    ``N`` samples both versions hold, in ``sample_id`` order (``N`` may be 0: callers decide how
    many they need). Layer files of a remote store (S3) are first fetched, concurrently, into a
    temporary local folder: DuckDB then reads each byte once from local disk instead of issuing
    many small ranged requests through Python.

    Raises ``FeatureError`` for unusable stored features (see the module docstring).
    """
    files_a, files_b = _layer_uris(store, manifest_a), _layer_uris(store, manifest_b)
    uris = files_a + files_b
    labels = [f"{label} ({uri})" for label, uri in zip(layer_labels(manifest_a) + layer_labels(manifest_b), uris)]
    if store.is_local:  # DuckDB reads each path as a pattern: a store folder 'exp [1]' is escaped
        read = [escape_glob(uri) for uri in uris]
        return _pair(read[: len(files_a)], read[len(files_a) :], dict(zip(read, labels)))
    with tempfile.TemporaryDirectory(prefix="prh-pairing-") as tmp:
        remote = [uri.split("://", 1)[1] for uri in uris]
        local = [os.path.join(tmp, f"{i:04d}-{os.path.basename(path)}") for i, path in enumerate(remote)]
        store.fs.get(remote, local)
        return _pair(local[: len(files_a)], local[len(files_a) :], names=dict(zip(local, labels)))


def _pair(files_a: list[str], files_b: list[str], names: dict[str, str] | None = None) -> PairedFeatures:
    """Pair local Parquet layer files (``names``: local path → label shown in errors)."""
    con = duckdb.connect(":memory:")
    try:
        n_a = _check_ids(con, files_a[0], names)
        n_b = _check_ids(con, files_b[0], names)
        first_a, first_b = _quote(files_a[0]), _quote(files_b[0])
        con.execute(
            f"""
            CREATE TEMP TABLE common AS
            SELECT sample_id, (row_number() OVER (ORDER BY sample_id) - 1)::BIGINT AS out_row
            FROM (SELECT a.sample_id FROM read_parquet({first_a}) a
                  JOIN read_parquet({first_b}) b USING (sample_id))
            """
        )
        ids = con.sql("SELECT sample_id FROM common ORDER BY out_row").to_arrow_table().column(0).to_pylist()
        only_a = _only_in(con, first_a, first_b) if n_a > len(ids) else []
        only_b = _only_in(con, first_b, first_a) if n_b > len(ids) else []
        xs = [_load_layer(con, uri, len(ids), n_a if i == 0 else None, names) for i, uri in enumerate(files_a)]
        ys = [_load_layer(con, uri, len(ids), n_b if i == 0 else None, names) for i, uri in enumerate(files_b)]
        _check_finite(files_a + files_b, xs + ys, ids, names)
        return PairedFeatures(ids, xs, ys, n_a - len(ids), n_b - len(ids), only_a, only_b)
    finally:
        con.close()


def _only_in(con: duckdb.DuckDBPyConnection, file: str, other: str, limit: int = 5) -> list[str]:
    """A few (sorted) ids of ``file`` that ``other`` lacks."""
    rows = con.execute(
        f"SELECT f.sample_id FROM read_parquet({file}) f ANTI JOIN read_parquet({other}) o USING (sample_id) ORDER BY 1 LIMIT {limit}"
    ).fetchall()
    return [r[0] for r in rows]


def _check_finite(files: list[str], layers: list[np.ndarray], ids: list[str], names: dict[str, str] | None) -> None:
    """Raise one ``FeatureError`` listing every layer whose common samples hold NaN or Inf."""
    problems = []
    for uri, x in zip(files, layers):
        bad = non_finite_rows(x)
        if bad.size:
            nan_rows = int(np.isnan(x[bad]).any(axis=1).sum())
            problems.append(
                f"{(names or {}).get(uri, uri)}: {bad.size} of {len(ids)} common samples have NaN or Inf features "
                f"({nan_rows} with NaN, {bad.size - nan_rows} with only Inf; e.g. {examples([ids[i] for i in bad])})"
            )
    if problems:
        raise FeatureError(f"non-finite stored features in {len(problems)} layer(s); alignment refuses them "
                           "(re-extract the model, e.g. in float32):\n  " + "\n  ".join(problems))


def _check_ids(con: duckdb.DuckDBPyConnection, uri: str, names: dict[str, str] | None = None) -> int:
    """Rows in a layer file; raises ``FeatureError`` if its ids are NULL or repeated."""
    name = (names or {}).get(uri, uri)
    rows, distinct, nulls = con.execute(
        f"SELECT count(*), count(DISTINCT sample_id), count(*) - count(sample_id) FROM read_parquet({_quote(uri)})"
    ).fetchall()[0]
    if nulls:
        raise FeatureError(f"{name}: {nulls} rows have a NULL sample_id")
    if distinct != rows:
        dupes = con.execute(
            f"SELECT sample_id FROM read_parquet({_quote(uri)}) GROUP BY sample_id HAVING count(*) > 1 ORDER BY 1 LIMIT 5"
        ).fetchall()
        raise FeatureError(
            f"{name}: {rows - distinct} duplicate sample_id rows (e.g. {', '.join(r[0] for r in dupes)}); "
            "features must hold one row per sample"
        )
    return int(rows)


def _destinations(con: duckdb.DuckDBPyConnection, uri: str, n_rows: int, n_common: int, name: str) -> np.ndarray:
    """``dest[file_row] = out_row`` for every row of ``uri`` (``-1``: not a common sample)."""
    table = con.sql(
        f"""
        SELECT f.file_row_number AS file_row, c.out_row
        FROM read_parquet({_quote(uri)}, file_row_number = true) f JOIN common c USING (sample_id)
        """
    ).to_arrow_table()
    file_rows = table.column("file_row").to_numpy()
    out_rows = table.column("out_row").to_numpy()
    if len(out_rows) != n_common or (n_common and np.bincount(out_rows, minlength=n_common).max() != 1):
        missing = con.execute(
            f"SELECT c.sample_id FROM common c ANTI JOIN read_parquet({_quote(uri)}) f USING (sample_id) ORDER BY 1 LIMIT 5"
        ).fetchall()
        detail = f"; missing e.g. {examples([r[0] for r in missing])}" if missing else ""
        raise FeatureError(f"{name}: expected each of the {n_common} common samples once, got {len(out_rows)} matching rows"
                           f"{detail} (the model's layers must hold the same samples)")
    dest = np.full(n_rows, -1, dtype=np.int64)
    dest[file_rows] = out_rows
    return dest


def _load_layer(
    con: duckdb.DuckDBPyConnection, uri: str, n_common: int, n_rows: int | None, names: dict[str, str] | None = None
) -> np.ndarray:
    """``(n_common, D) float32``: the layer's vectors in ``common.out_row`` order.

    ``n_rows``: the file's row count if its ids were already checked, else None (checked here).
    """
    name = (names or {}).get(uri, uri)
    if n_rows is None:
        n_rows = _check_ids(con, uri, names)
    dest = _destinations(con, uri, n_rows, n_common, name)
    reader = con.sql(
        f"SELECT file_row_number AS file_row, vector FROM read_parquet({_quote(uri)}, file_row_number = true)"
    ).to_arrow_reader(BATCH_ROWS)
    out: np.ndarray | None = None
    with reader:
        out = _scatter(reader, dest, n_common, name)
    if out is None:
        return np.zeros((n_common, 0), dtype=np.float32)
    return out


def _scatter(reader: pa.RecordBatchReader, dest: np.ndarray, n_common: int, uri: str) -> np.ndarray | None:
    """Copy each batch's vectors into their ``dest`` rows of one preallocated array."""
    out: np.ndarray | None = None
    for batch in reader:
        if batch.num_rows == 0:
            continue
        rows = dest[batch.column(0).to_numpy()]
        vectors = batch_vectors(batch.column(1), uri)
        if out is None:
            out = np.empty((n_common, vectors.shape[1]), dtype=np.float32)
        elif vectors.shape[1] != out.shape[1]:
            raise FeatureError(f"{uri}: feature vectors have unequal lengths ({vectors.shape[1]} vs {out.shape[1]})")
        keep = rows >= 0
        if keep.all():
            if rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
                out[rows[0] : rows[-1] + 1] = vectors  # contiguous: a plain block copy
            else:
                out[rows] = vectors
        elif keep.any():
            out[rows[keep]] = vectors[keep]
    return out


def batch_vectors(column: pa.Array, where: str = "features") -> np.ndarray:
    """``(rows, D) float32`` view of a list / fixed-size-list column (no copy when possible)."""
    n = len(column)
    if column.null_count:
        raise FeatureError(f"{where}: {column.null_count} feature vectors are NULL")
    if pa.types.is_fixed_size_list(column.type):
        d = column.type.list_size
        values = column.values.slice(column.offset * d, n * d)
    else:
        offsets = column.offsets.to_numpy()
        lengths = np.diff(offsets)
        d = int(lengths[0]) if n else 0
        if (lengths != d).any():
            raise FeatureError(f"{where}: feature vectors have unequal lengths")
        values = column.values.slice(int(offsets[0]), n * d)
    if values.null_count:
        raise FeatureError(f"{where}: feature vectors contain NULL elements")
    flat = values.to_numpy(zero_copy_only=False)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    return flat.reshape(n, d)
