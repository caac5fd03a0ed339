"""The Prefect that ``prh run`` will use, checked before anything starts: a server named by
``PREFECT_API_URL`` must answer, and without one the folder ``PREFECT_HOME`` (where Prefect's
temporary API server keeps its SQLite database) must take writes.

Without these checks a ``PREFECT_API_URL`` that is not a URL, or names a server that is down,
ended ``prh run`` with a traceback (``RuntimeError: Failed to reach API``, exit 1: the code of
"some models failed"), and a ``PREFECT_HOME`` that cannot be written (under a file, on a
read-only disk) restarted the temporary server for 3 minutes, printing about 90 tracebacks,
before ``Timed out while attempting to connect to ephemeral Prefect API server``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_prefect_environment() -> None:
    """``ValueError`` naming the variable when ``PREFECT_API_URL`` is set and its server does not
    answer Prefect's health check (:func:`check_api_url`), or, without it, when ``PREFECT_HOME``
    is no folder this process can write (:func:`check_prefect_home`)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        check_api_url(str(settings.api.url))
    else:
        check_prefect_home(Path(settings.home))


def check_api_url(url: str) -> None:
    """``ValueError`` naming ``PREFECT_API_URL`` and the reason when Prefect's client gets no
    answer from its health endpoint (the check Prefect's engine makes when a flow starts; a
    refused connection is answered within 2 s)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ValueError(f"PREFECT_API_URL={url!r}: Prefect's API does not answer there "
                         f"({type(problem).__name__}: {problem}); start that server (make serve), correct the URL, "
                         "or unset PREFECT_API_URL for a temporary server of this run") from None


def check_prefect_home(home: Path) -> None:
    """``ValueError`` naming ``PREFECT_HOME`` and the reason when the folder cannot be created or
    a file cannot be written in it (a path under a file, a read-only disk, no permission)."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".prh-probe-", dir=home)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"PREFECT_HOME={str(home)!r}: cannot write there ({reason}); Prefect's temporary API "
                         "server keeps its database there: set PREFECT_HOME to a folder this user can write, or "
                         "PREFECT_API_URL to a running Prefect server") from None
