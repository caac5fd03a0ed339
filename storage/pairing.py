"""Join two models' stored features on ``sample_id`` with DuckDB and hand them over as arrays.

Rows are matched by id, never by position: samples present for only one model are counted and
reported, and the returned arrays are aligned row for row in ``sample_id`` order.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from storage.features import vectors_from_arrow
from storage.layout import layer_file
from storage.store import Store


@dataclass
class PairedFeatures:
    """Features of two models over their common samples.

    ``xs[l]``: ``(N, D_l) float32`` for layer ``l`` of model A, rows in ``sample_ids`` order;
    ``ys`` likewise for model B. ``only_a``/``only_b``: samples present for one model only.
    """

    sample_ids: list[str]
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    only_a: int
    only_b: int


def _layer_uris(store: Store, manifest: dict) -> list[str]:
    return [store.uri(f"{manifest['key']}/{layer_file(i)}") for i in range(int(manifest["catalog"]["n_layers"]))]


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def paired_features(store: Store, manifest_a: dict, manifest_b: dict) -> PairedFeatures:
    """Join the features of two published feature versions on ``sample_id``."""
    files_a, files_b = _layer_uris(store, manifest_a), _layer_uris(store, manifest_b)
    con = duckdb.connect(":memory:")
    try:
        if not store.is_local:
            con.register_filesystem(store.fs)
        con.execute(
            f"""
            CREATE TEMP TABLE ids AS
            SELECT a.sample_id FROM read_parquet({_quote(files_a[0])}) a
            JOIN read_parquet({_quote(files_b[0])}) b USING (sample_id)
            ORDER BY sample_id
            """
        )
        n_common = con.execute("SELECT count(*) FROM ids").fetchone()[0]
        n_a = con.execute(f"SELECT count(*) FROM read_parquet({_quote(files_a[0])})").fetchone()[0]
        n_b = con.execute(f"SELECT count(*) FROM read_parquet({_quote(files_b[0])})").fetchone()[0]
        sample_ids = [r[0] for r in con.execute("SELECT sample_id FROM ids ORDER BY sample_id").fetchall()]

        def load(files: list[str]) -> list[np.ndarray]:
            layers = []
            for uri in files:
                table = con.sql(
                    f"SELECT f.vector FROM ids JOIN read_parquet({_quote(uri)}) f USING (sample_id) ORDER BY ids.sample_id"
                ).to_arrow_table()
                if table.num_rows != n_common:
                    raise ValueError(f"{uri}: expected {n_common} rows for the common samples, got {table.num_rows}")
                layers.append(vectors_from_arrow(table.column("vector")))
            return layers

        return PairedFeatures(sample_ids, load(files_a), load(files_b), n_a - n_common, n_b - n_common)
    finally:
        con.close()
