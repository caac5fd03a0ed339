"""Safe storage key components.

Every name that becomes part of a storage key (dataset names, model names, version ids, run ids)
passes through :func:`safe_component`, so that no user input can escape the store root with
``..``, absolute paths, URL schemes or separators.
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would let a final newline through


def safe_component(value: str, what: str = "name") -> str:
    """Return ``value`` unchanged if it is a safe single path component, else raise ValueError.

    Safe: 1-128 characters from ``[A-Za-z0-9._-]``, starting with a letter or digit, and not
    made only of dots. ``what`` names the input in the error message.
    """
    if not isinstance(value, str) or not _SAFE.fullmatch(value) or set(value) <= {"."} or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a safe storage key: use 1-128 characters from "
            "[A-Za-z0-9._-], starting with a letter or digit, without '..'"
        )
    return value
