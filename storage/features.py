"""Parquet schema of stored features: one row per (sample, layer), one file per layer.

Each layer file holds ``model`` (string), ``feature_version`` (string), ``layer`` (int16),
``sample_id`` (string) and ``vector`` (``fixed_size_list<float32>[D_l]``), so one layer is read
without the others and layers of different widths live side by side.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from storage.layout import layer_file


def layer_table(model: str, feature_version: str, layer: int, sample_ids: list[str], vectors: np.ndarray) -> pa.Table:
    """Arrow table of one layer. ``vectors``: ``(N, D) float32`` rows in ``sample_ids`` order."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(sample_ids):
        raise ValueError(f"layer {layer} of {model}: expected ({len(sample_ids)}, D) vectors, got {vectors.shape}")
    if not np.isfinite(vectors).all():
        bad = int((~np.isfinite(vectors)).any(axis=1).sum())
        raise ValueError(f"layer {layer} of {model}: {bad} samples have NaN or Inf features")
    n, d = vectors.shape
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.table(
        {
            "model": pa.array([model] * n, pa.string()).dictionary_encode(),
            "feature_version": pa.array([feature_version] * n, pa.string()).dictionary_encode(),
            "layer": pa.array(np.full(n, layer, dtype=np.int16)),
            "sample_id": pa.array(sample_ids, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, d),
        }
    )


def layer_tables(model: str, feature_version: str, sample_ids: list[str], layers: list[np.ndarray]) -> dict[str, pa.Table]:
    """File name → table for every layer of a model."""
    return {layer_file(i): layer_table(model, feature_version, i, sample_ids, x) for i, x in enumerate(layers)}


def vectors_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``(N, D) float32`` numpy array from a list / fixed-size-list column of equal-length rows."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if column.null_count:
        raise ValueError("feature vectors contain nulls")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if values.size % n:
        raise ValueError("feature vectors have unequal lengths")
    return values.reshape(n, values.size // n)
