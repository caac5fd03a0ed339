"""The bytes this process has read from stores' data files, features and tables (Parquet): the
figure a run's record keeps as ``bytes_read`` (``flows.progress.ResourceMeter``).

Counted where the store is read (``storage.store.Store``), never by reading anything again:

- a file read through the store's filesystem (fsspec: ``read_bytes``, ``read_many``,
  ``read_table``, ``open_read``): the bytes of it the reader took, each once (a table read for
  some of its columns counts what was read of it);
- a file fetched whole into a local folder (``Store.fs.get``: an object store's layer files, which
  DuckDB then reads from the copy): the bytes of the copies;
- a file of a local store handed to DuckDB to read in place (``Store.uri``: the layer files the
  alignment reads): its size, once per hand-out.

Only Parquet files count (:data:`COUNTED_SUFFIX`: features, the datasets' and alignments'
tables, extraction shards): not the store's metadata (manifests and run records in JSON, claims
and signs of life, a few KB each). What a catalog query reads (``prh sql``, the report's views)
does not count either: DuckDB reads those files itself.
"""

from __future__ import annotations

import os
import threading
from typing import Any

#: The files whose reads count: the store's data files, features and tables.
COUNTED_SUFFIX = ".parquet"

_lock = threading.Lock()
_total = 0


def bytes_read() -> int:
    """The bytes counted in this process since it started (only ever grows: a run reads the
    difference between its end and its start)."""
    return _total


def count(nbytes: int) -> None:
    """Add ``nbytes`` read from a store (from any thread)."""
    global _total
    if nbytes > 0:
        with _lock:
            _total += nbytes


def counted_path(path: str) -> bool:
    """Whether reads of the file ``path`` (a key or a path) count: a Parquet file."""
    return str(path).endswith(COUNTED_SUFFIX)


def count_local_file(path: str) -> None:
    """Count the size of the local file ``path`` (a stat, no read); nothing for a folder or a
    missing file (its reader says so)."""
    try:
        size = os.stat(path).st_size if os.path.isfile(path) else 0
    except OSError:
        return
    count(size)


class CountedFile:
    """A binary file object read through, counting the bytes of the file its reads return, each
    byte once (a Parquet reader reads the footer's region twice: a re-read comes from the file's
    read-ahead buffer or the system's cache, not from the store again); everything else
    (``seek``, ``tell``, ``closed``, ``close``...) is the file's own."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._seen: list[list[int]] = []  # the ranges of the file read so far, [start, end), sorted and apart

    def _took(self, start: int, n: int) -> None:
        """Count the bytes of [start, start + n) not read before."""
        if n <= 0:
            return
        end, new = start + n, n
        kept: list[list[int]] = []
        for low, high in self._seen:
            if high < start or low > end:  # apart (touching ranges merge)
                kept.append([low, high])
                continue
            new -= max(0, min(high, end) - max(low, start))
            start, end = min(low, start), max(high, end)
        kept.append([start, end])
        self._seen = sorted(kept)
        count(new)

    def _read(self, method: str, *args: Any) -> bytes:
        start = self._handle.tell()
        data = getattr(self._handle, method)(*args)
        self._took(start, len(data))
        return data

    def read(self, *args: Any) -> bytes:
        return self._read("read", *args)

    def read1(self, *args: Any) -> bytes:
        return self._read("read1", *args)

    def readline(self, *args: Any) -> bytes:
        return self._read("readline", *args)

    def readinto(self, buffer: Any) -> int:
        start = self._handle.tell()
        n = self._handle.readinto(buffer)
        self._took(start, n or 0)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> "CountedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def _local_sizes(lpath: Any) -> int:
    """Bytes of the local files (or of the files under the folders) ``lpath`` names."""
    paths = lpath if isinstance(lpath, (list, tuple)) else [lpath]
    total = 0
    for path in paths:
        if not isinstance(path, str):
            continue
        if os.path.isdir(path):
            for folder, _, files in os.walk(path):
                total += sum(os.path.getsize(os.path.join(folder, name)) for name in files if counted_path(name))
        elif os.path.isfile(path) and counted_path(path):
            total += os.path.getsize(path)
    return total


def count_fetches(fs: Any) -> None:
    """Make ``get`` of the fsspec filesystem ``fs`` (an object store's: copies to local files)
    count the bytes of the copies it made. Once per filesystem instance (fsspec shares one
    instance among the stores of one URL and options, so two threads opening stores at once
    could both wrap it, and every fetch would count twice: the check and the wrap hold a lock)."""
    with _wrap_lock:
        if getattr(fs, "_prh_counts_fetches", False):
            return
        fetch = fs.get

        def get(rpath: Any, lpath: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fetch(rpath, lpath, *args, **kwargs)
            finally:  # what was copied before an error was read too
                count(_local_sizes(lpath))

        fs.get = get
        fs._prh_counts_fetches = True


#: Orders :func:`count_fetches`' check and wrap of a shared filesystem instance.
_wrap_lock = threading.Lock()
