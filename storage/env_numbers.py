"""Numbers read from ``PRH_*`` environment variables, refused by name when they are not numbers
of the kind wanted (``PRH_MIN_FREE_MB=abc`` had failed as "could not convert string to float")."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping


def env_number(name: str, default: float, *, what: str, minimum: float = 0.0, integer: bool = False,
               finite: bool = True, env: Mapping[str, str] | None = None) -> float:
    """The number in the environment variable ``name`` (``default`` when unset or blank): an
    integer when ``integer``, at least ``minimum``, finite unless ``finite`` is False (then
    ``inf``, and ``nan``, are returned as they are). Raises ``ValueError`` naming the variable,
    its value and ``what`` it must be (e.g. ``"a whole number of workers, at least 1"``)."""
    raw = (os.environ if env is None else env).get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {what}") from None
    if (finite and not math.isfinite(value)) or value < minimum:
        raise ValueError(f"{name}={raw!r}: it must be {what}")
    return value
