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
