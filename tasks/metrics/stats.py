"""Small statistics helpers: layer-pair aggregation, order statistics (Benjamini–Hochberg: ``tasks.grid_fdr``).

All functions are pure numpy.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Literal

import numpy as np

from .checks import check_flag, check_real
from ..grid_fdr import bh_fdr  # noqa: F401 - public here too (tasks.metrics.bh_fdr); numpy only, shared with the report


def aggregate(matrix: np.ndarray, how: Literal["max", "mean"] = "max",
              higher_is_better: bool = True) -> tuple[float, tuple[int, int]]:
    """Model-pair score from a ``(La, Lb)`` layer matrix.

    ``how='max'`` (the paper): the best entry and its ``(layer_a, layer_b)``: the largest, or the
    smallest for a metric where lower is better (``higher_is_better=False``). ``how='mean'``: the
    mean over all layer pairs, returned with the best entry's location (for reference). NaN
    entries are ignored; an all-NaN matrix gives ``(nan, (-1, -1))``. A masked array with masked
    entries, or entries that are not real numbers, raise ``ValueError`` (``score_matrix``).
    """
    check_aggregate(how)
    sign = 1.0 if check_flag("higher_is_better", higher_is_better) else -1.0
    m = score_matrix("matrix", matrix)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty (La, Lb) matrix, got shape {m.shape}")
    present = ~np.isnan(m)
    if not present.any():
        return math.nan, (-1, -1)
    scored = np.flatnonzero(present)  # -inf (+inf when lower is better) is still a score and can be the best; NaN is not
    flat = scored[np.argmax(sign * m.ravel()[scored])]
    i, j = np.unravel_index(flat, m.shape)
    value = float(m[i, j]) if how == "max" else float(m[present].mean())
    return value, (int(i), int(j))


def score_matrix(name: str, matrix: object) -> np.ndarray:
    """``matrix`` (a layer matrix of scores) as a float64 numpy array. Raises ``ValueError``
    naming ``name`` for a numpy masked array with masked entries (converting it drops the mask:
    the hidden values were scored, ``aggregate`` returned a masked entry as the best; give
    ``m.filled(np.nan)``: NaN entries are left out) and for entries that are not real numbers."""
    if isinstance(matrix, np.ma.MaskedArray) and np.ma.getmaskarray(matrix).any():
        k = int(np.ma.getmaskarray(matrix).sum())
        raise ValueError(f"{name} given as a masked array with {k} masked entr{'y' if k == 1 else 'ies'}: the values "
                         "under the mask would be read; pass m.filled(np.nan) (NaN entries are left out)")
    if np.iscomplexobj(matrix):  # numpy would drop the imaginary parts with a warning
        raise ValueError(f"{name} must hold real numbers (NaN for a missing score), got complex ones")
    try:
        return np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must hold real numbers (NaN for a missing score): {err}") from None


def check_aggregate(how: str) -> None:
    """Raise ``ValueError`` unless ``how`` is ``'max'`` or ``'mean'``."""
    if how not in ("max", "mean"):
        raise ValueError(f"aggregate must be 'max' or 'mean', got {how!r}")


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool, not a float, not a string) of at least
    ``minimum``; else ``ValueError`` naming ``name`` (``n_boot=2.7`` is not silently 2)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


#: Largest seed of a torch generator that is its own stream: torch's CPU generator (mt19937)
#: keeps the low 32 bits of a seed, so 2**32 draws what 0 draws.
TORCH_SEED_MAX = 2**32 - 1


def check_seed(seed: object, maximum: int | None = None) -> int:
    """``seed`` as an int if it is an integer >= 0 (and <= ``maximum`` when given); else
    ``ValueError`` (``seed=1.7`` is not 1)."""
    value = check_count("seed", seed, 0)
    if maximum == TORCH_SEED_MAX and value > maximum:
        raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {value}: torch's generator keeps only the low "
                         f"32 bits of a seed, so it would draw what seed {value & TORCH_SEED_MAX} draws")
    if maximum is not None and value > maximum:
        raise ValueError(f"seed must be an integer from 0 to {maximum}, got {value}")
    return value


def order_statistic_rank(alpha: float, count: int) -> int:
    """``ceil((1 - alpha) * count)`` computed exactly (``alpha`` read as the decimal it prints as,
    in its own precision: ``np.float32(0.7)`` is 0.7, not 0.699999988...)."""
    if not 0 < check_real("alpha", alpha) < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    shortest = np.format_float_positional(alpha, unique=True) if isinstance(alpha, np.floating) else repr(float(alpha))
    a = Fraction(shortest)
    return max(1, math.ceil((1 - a) * count))
