"""Parquet schema of stored features: one row per (sample, layer), one file per layer.

Each layer file holds ``model`` (string), ``feature_version`` (string), ``layer`` (int16),
``sample_id`` (string) and ``vector`` (``fixed_size_list<float32>[D_l]``), so one layer is read
without the others and layers of different widths live side by side.

Nothing unusable is written: ``layer_table`` refuses empty layers, NULL, empty or repeated
sample ids and NaN/Inf features with a ``FeatureError`` naming the model, the layer, the count
and a few sample ids. Readers (``storage.pairing``) check the same things again, because a store
may hold files written by other tools.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import pyarrow as pa

from storage.layout import layer_file

#: How many example sample ids an error message lists.
EXAMPLES = 5


class FeatureError(ValueError):
    """Stored (or about to be stored) features that cannot be used; the message names the model,
    the layer, what is wrong, how many samples are affected and a few of their ids."""


def examples(ids: Sequence[object], limit: int = EXAMPLES) -> str:
    """``'s1, s7, s9'`` (first ``limit`` ids, ``', ...'`` when there are more)."""
    shown = ", ".join(str(i) for i in list(ids)[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def non_finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``vectors`` ``(N, D)`` holding a NaN or an Inf (block-wise, no ``N x D`` mask)."""
    bad = []
    for start in range(0, vectors.shape[0], 8192):
        block = vectors[start : start + 8192]
        if not np.isfinite(block).all():
            bad.append(start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def layer_table(model: str, feature_version: str, layer: int, sample_ids: list[str], vectors: np.ndarray) -> pa.Table:
    """Arrow table of one layer. ``vectors``: ``(N, D) float32`` rows in ``sample_ids`` order, ``N >= 1``."""
    where = f"model {model!r} layer {layer}"
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(sample_ids):
        raise FeatureError(f"{where}: expected ({len(sample_ids)}, D) vectors, got {vectors.shape}")
    if not sample_ids:
        raise FeatureError(f"{where}: no samples; a feature version holds at least one")
    missing = [i for i, s in enumerate(sample_ids) if s is None or s == ""]
    if missing:
        raise FeatureError(f"{where}: {len(missing)} rows have a NULL or empty sample_id (rows {examples(missing)})")
    counts = Counter(sample_ids)
    if len(counts) != len(sample_ids):
        dupes = sorted(s for s, c in counts.items() if c > 1)
        raise FeatureError(f"{where}: {len(sample_ids) - len(counts)} duplicate sample_id rows (e.g. {examples(dupes)}); "
                           "features must hold one row per sample")
    bad = non_finite_rows(vectors)
    if bad.size:
        raise FeatureError(f"{where}: {bad.size} of {len(sample_ids)} samples have NaN or Inf features "
                           f"(e.g. {examples([sample_ids[i] for i in bad])})")
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
    """File name → table for every layer of a model (layers may differ in width)."""
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
