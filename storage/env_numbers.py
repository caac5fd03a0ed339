"""Numbers and yes/no flags read from environment variables (``PRH_*``, and the ``AWS_*`` ones
the S3 options honour), refused by name when they are not numbers of the kind wanted
(``PRH_MIN_FREE_MB=abc`` had failed as "could not convert string to float") or not a yes or a no.
(The hub's ``HF_HUB_OFFLINE`` follows huggingface_hub's own rule: ``tasks.extract.preflight``.)"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence


def env_number(name: str | Sequence[str], default: float, *, what: str, minimum: float = 0.0,
               above_minimum: bool = False, integer: bool = False, finite: bool = True,
               env: Mapping[str, str] | None = None) -> float:
    """The number in the environment variable ``name`` (``default`` when unset or blank): an
    integer when ``integer``, at least ``minimum`` (greater than it when ``above_minimum``),
    finite unless ``finite`` is False (then ``inf``, and ``nan``, are returned as they are).
    ``name`` may list several variables, first wins (``("PRH_S3_MAX_ATTEMPTS",
    "AWS_MAX_ATTEMPTS")``). Raises ``ValueError`` naming the variable read, its value and ``what``
    it must be (e.g. ``"a whole number of workers, at least 1"``)."""
    env = os.environ if env is None else env
    names = (name,) if isinstance(name, str) else tuple(name)
    found = next((n for n in names if (env.get(n) or "").strip()), None)
    if found is None:
        return default
    raw = env[found]
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ValueError(f"{found}={raw!r} is not {what}") from None
    too_small = value <= minimum if above_minimum else value < minimum
    if (finite and not math.isfinite(value)) or too_small:
        raise ValueError(f"{found}={raw!r}: it must be {what}")
    return value


#: What :func:`env_flag` reads as yes and as no (any case, blanks around ignored); unset or blank is no.
FLAG_YES = ("1", "true", "yes", "on")
FLAG_NO = ("0", "false", "no", "off")


def env_flag(name: str, *, env: Mapping[str, str] | None = None) -> bool:
    """The yes/no in the environment variable ``name``: True for 1/true/yes/on, False for
    0/false/no/off, unset or blank (any case, blanks around ignored). Raises ``ValueError`` naming
    the variable and its value for anything else (``PRH_SINGLE_WRITER=maybe``: neither silently no
    nor silently yes)."""
    raw = (os.environ if env is None else env).get(name) or ""
    value = raw.strip().lower()
    if value in FLAG_YES:
        return True
    if value in FLAG_NO or not value:
        return False
    raise ValueError(f"{name}={raw!r} is not {'/'.join(FLAG_YES)} or {'/'.join(FLAG_NO)}")
