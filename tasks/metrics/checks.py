"""Type checks of user-given flags and numbers, shared by the public functions of ``tasks.metrics``:
``'False'`` is a true string and ``True`` an integer in Python, so a flag or a number typed wrong
would otherwise be read with another meaning, silently."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool if it is one (Python or numpy), else ``ValueError`` naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_real(name: str, value: Any) -> Any:
    """``value`` unchanged if it is a real number (Python or numpy scalar, not a bool), else
    ``ValueError`` naming ``name`` (a string such as ``'0.05'``, ``None``, an array)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return value


def group_index(groups: Any, n: int) -> np.ndarray | None:
    """``(n,) int64``: each row's group, numbered in label order, from ``groups`` (one label per
    row, e.g. its image id); None where ``groups`` is None or every group is one row (the
    ungrouped subsampling). ``ValueError`` for labels that are not one per row (not 1-D, another
    count than ``n``, NaN, labels that cannot be sorted together)."""
    if groups is None:
        return None
    labels = np.asarray(groups)
    if labels.ndim != 1:
        raise ValueError(f"groups must be one label per row, a 1-D sequence; got shape {labels.shape}")
    if len(labels) != n:
        raise ValueError(f"groups has {len(labels)} labels for {n} rows: give one label per row (its image)")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError("groups holds NaN: give every row a label (e.g. its image id)")
    try:
        uniques, group_of = np.unique(labels, return_inverse=True)
    except TypeError as error:  # e.g. None beside strings
        raise ValueError(f"groups labels must be of one comparable kind (e.g. all strings): {error}") from None
    return None if len(uniques) == n else group_of.reshape(-1).astype(np.int64)
