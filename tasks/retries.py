"""Retry policy of the Prefect tasks: exponential backoff with jitter, only for errors that a
retry can fix (storage and network hiccups, timeouts), never for bad inputs.

Pure: imports neither Prefect nor the store (only ``storage.env_numbers`` and ``storage.error_chain``,
pure helpers), so it can be tested and reused anywhere.
"""

from __future__ import annotations

import errno
import math
from typing import Any

from storage.env_numbers import env_number
from storage.error_chain import error_chain

#: OSError subclasses that describe a wrong path or permission, which a retry cannot fix.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)

#: Disk errors a retry cannot fix: no space, quota exceeded, read-only file system, a file over the
#: process's file-size limit (``ulimit -f``) or the file system's largest.
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}

#: Exception class names (from optional libraries) that mean "the network or the server hiccuped".
_TRANSIENT_NAMES = {
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError",
    "IncompleteReadError", "ResponseStreamingError",
}
#: S3 error codes worth retrying.
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestLimitExceeded", "500", "502", "503", "504"}


class ModelLoadTimeout(TimeoutError):
    """Loading (or downloading) a model took longer than ``PRH_MODEL_LOAD_TIMEOUT`` seconds."""


def model_load_timeout() -> float | None:
    """Seconds allowed to load one model: ``PRH_MODEL_LOAD_TIMEOUT`` (default 3600; 0, a negative
    number or ``inf``: no limit); ``ValueError`` naming the variable when it is not a number."""
    seconds = env_number("PRH_MODEL_LOAD_TIMEOUT", 3600, what="a number of seconds (0: no limit)", minimum=-math.inf,
                         finite=False)
    if not math.isfinite(seconds):
        return None
    return seconds if seconds > 0 else None


def is_transient(error: BaseException | None) -> bool:
    """True if ``error`` (or an exception it was raised from) is a storage or network hiccup.

    The chain is followed through ``__cause__`` (``raise ... from cause``) and the implicit
    ``__context__``, except where the raiser cut it (``raise ... from None``): an error that says
    "offline and not cached" is final even though a connection error led to it.
    """
    return any(_transient_here(found) for found in error_chain(error, keep_cut=True))


def _transient_here(error: BaseException) -> bool:
    if isinstance(error, _PERMANENT_OS_ERRORS) or getattr(error, "errno", None) in _PERMANENT_ERRNOS:
        return False
    if isinstance(error, (OSError, ConnectionError, TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(error).__mro__):
        return True
    response: Any = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        code = str(response.get("Error", {}).get("Code", ""))
        status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code in _TRANSIENT_CODES or status in _TRANSIENT_CODES
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only if its error is transient."""
    try:
        error = state.result(raise_on_failure=False)
    except BaseException as raised:  # some states re-raise instead of returning the exception
        error = raised
    return isinstance(error, BaseException) and is_transient(error)


def backoff(base: float, retries: int, factor: float = 2.0) -> list[float]:
    """Delays ``base, base·factor, base·factor², ...`` for ``retries`` retries (Prefect adds jitter)."""
    return [base * factor**i for i in range(retries)]
