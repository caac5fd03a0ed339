"""Refuse features with NaN or Inf values (pure numpy).

    >>> import numpy as np
    >>> check_finite("m", ["embeddings"], [np.zeros((2, 3), np.float32)], ["a", "b"])  # fine: returns None
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tasks.extract.errors import NonFiniteFeaturesError

#: Sample ids shown in the error message.
SHOWN_IDS = 5


def bad_rows(layer: np.ndarray) -> np.ndarray:
    """Indices of the rows of an `(N, D)` array that hold any NaN, +Inf or -Inf value."""
    if np.isfinite(layer).all():  # the common case: one vectorised pass, no per-row work
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(~np.isfinite(layer).all(axis=1))


def check_finite(model: str, layer_names: Sequence[str], layers: Sequence[np.ndarray], ids: Sequence[str]) -> None:
    """Raise `NonFiniteFeaturesError` if any layer has a non-finite value.

    layers: `(N, D_l)` arrays, row i belongs to ``ids[i]`` (sample or image ids). The error names
    the model, the first bad layer, its count of bad rows and up to 5 of their ids, and the other
    bad layers with their counts.
    """
    if len(layer_names) != len(layers):
        raise ValueError(f"{len(layer_names)} layer names for {len(layers)} layers")
    bad: dict[str, np.ndarray] = {}
    for name, layer in zip(layer_names, layers):
        if len(layer) != len(ids):
            raise ValueError(f"layer {name!r} has {len(layer)} rows for {len(ids)} ids")
        rows = bad_rows(layer)
        if rows.size:
            bad[name] = rows
    if not bad:
        return
    first = next(iter(bad))
    rows = bad[first]
    raise NonFiniteFeaturesError(model, first, int(rows.size), len(ids), [str(ids[i]) for i in rows[:SHOWN_IDS]],
                                 {k: int(v.size) for k, v in bad.items()})
