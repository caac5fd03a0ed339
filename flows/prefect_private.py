"""The private and internal Prefect APIs prh relies on, where Prefect offers no public one.

Each is used with a fallback (the feature it serves is off, said in one line, the run goes on), so
a Prefect that renamed one does not fail a run; :func:`missing` names those the installed Prefect
lacks, and ``tests/flows/test_prefect_private.py`` fails on them, so that a Prefect upgrade (a new
pin in ``requirements.lock``) that drops one is found by the tests, not by a user.
docs/orchestration.md ("Prefect APIs prh relies on") lists them with what each is for.
"""

from __future__ import annotations

import importlib
from typing import Any

#: ``(module, class or None, attribute or None, user in prh and why)``; an attribute set by the
#: class's ``__init__`` (an instance's) is looked for among the names ``__init__`` assigns.
PRIVATE_APIS: tuple[tuple[str, str | None, str | None, str], ...] = (
    ("prefect.server.api.server", "SubprocessASGIServer", None,
     "flows.server_watchdog: starts Prefect's temporary API server (its singleton) itself, to watch it"),
    ("prefect.server.api.server", "SubprocessASGIServer", "_run_uvicorn_command",
     "flows.server_watchdog: the launch of the server's process, wrapped to start its watchdog with it"),
    ("prefect.server.api.server", "SubprocessASGIServer", "server_process",
     "flows.server_watchdog: the server's process (its pid for the watchdog)"),
    ("prefect.server.api.server", "SubprocessASGIServer", "running",
     "flows.server_watchdog: whether the singleton's server runs already"),
    ("prefect_dask.task_runners", "DaskTaskRunner", "_client",
     "flows.run_record.stop_remote_tasks: the runner's Dask client if it made one (the public `client` makes a "
     "cluster when there is none)"),
    ("prefect.server.concurrency.lease_storage.filesystem", None, None,
     "flows.serve: PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE, leases that outlive a server restart"),
)


def _has(owner: Any, attribute: str) -> bool:
    """Whether ``owner`` (a class) has ``attribute``, or its ``__init__`` assigns it."""
    if hasattr(owner, attribute):
        return True
    init = getattr(owner, "__init__", None)
    return attribute in getattr(getattr(init, "__code__", None), "co_names", ())


def missing() -> list[str]:
    """The entries of :data:`PRIVATE_APIS` the installed Prefect (and prefect-dask) lack, each as
    ``module.Class.attribute: what prh uses it for``; ``[]`` when all are there."""
    gone = []
    for module_name, class_name, attribute, use in PRIVATE_APIS:
        name = ".".join(part for part in (module_name, class_name, attribute) if part)
        try:
            owner: Any = importlib.import_module(module_name)
            if class_name is not None:
                owner = getattr(owner, class_name)
        except (ImportError, AttributeError):
            gone.append(f"{name}: {use}")
            continue
        if attribute is not None and not _has(owner, attribute):
            gone.append(f"{name}: {use}")
    return gone


def prefect_version() -> str:
    """The installed Prefect's version, for messages."""
    import prefect

    return str(getattr(prefect, "__version__", "unknown"))
