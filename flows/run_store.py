"""The store a run publishes into (the flows' ``store`` parameter, ``prh run --store``), opened
and checked before the run does anything else.

``storage.store.Store`` opens any fsspec URL, also two kinds that cannot hold a run's results:
a run given one lost its work or failed without saying why:

- ``memory://...``: fsspec's in-memory filesystem lives in the process that opened it. A
  deployment's run (the worker's flow-run process) published every version into it, ended
  ``COMPLETED``, and kept nothing: the store was gone with the process, and ``prh sql`` found
  no results anywhere.
- a protocol whose filesystem needs more than a URL (``github://``, ``reference://``): the run
  failed with fsspec's bare ``TypeError`` (``GithubFileSystem.__init__() missing 2 required
  positional arguments``), which named neither the store nor the parameter.
"""

from __future__ import annotations

from typing import Any

from storage.store import Store
from storage.store_urls import check_store_url, redact_url

#: fsspec protocols whose files live in the memory of the process that writes them.
PROCESS_LOCAL_PROTOCOLS = frozenset({"memory"})


def check_run_store_url(url: Any) -> None:
    """``ValueError`` naming ``url`` when no run can keep its results there: what
    ``storage.store_urls.check_store_url`` refuses (empty, ``s3:/bucket``...), and a filesystem
    held in the process's memory (:data:`PROCESS_LOCAL_PROTOCOLS`, also inside a chained URL such
    as ``simplecache::memory://x``). No I/O."""
    check_store_url(url)
    for part in url.split("::"):
        scheme, sep, _ = part.partition("://")
        if sep and scheme.strip().lower() in PROCESS_LOCAL_PROTOCOLS:
            raise ValueError(
                f"store URL {redact_url(url)!r} is held in the memory of the process that runs the flow and is gone when "
                f"it ends (a deployment's run: the worker's flow-run process), so nothing the run publishes would be "
                f"kept: give a folder, file://PATH or s3://BUCKET/PREFIX")


def run_store(url: Any) -> Store:
    """The :class:`~storage.store.Store` at ``url`` for a run to publish into, after
    :func:`check_run_store_url`; a URL whose filesystem cannot be opened from a URL alone
    (fsspec's ``TypeError``) is a ``ValueError`` naming the store."""
    check_run_store_url(url)
    try:
        return Store(url)
    except TypeError as error:  # e.g. github://: GithubFileSystem.__init__() missing 'org' and 'repo'
        raise ValueError(f"store {redact_url(url)}: cannot open it as a store: {' '.join(str(error).split())} (a store is a "
                         "folder, file://PATH or s3://BUCKET/PREFIX)") from None
