"""Filesystems that DuckDB is given for a remote store: one that reads through the store's own
and refuses every write (the analysts' connection), and its writable parent.

DuckDB reads an S3 store through the fsspec filesystem registered on its connection
(``con.register_filesystem``). Registering this wrapper of the store's filesystem instead means
that a write the SQL checks of :func:`storage.catalog.query` missed (a ``COPY ... TO 's3://...'``
hidden in some construct DuckDB adds later) fails in the filesystem itself: ``open`` for
writing, ``rm``, ``mv``, ``mkdir``, ``touch``, ``pipe`` and ``put`` raise ``PermissionError``.

Both answer DuckDB's ``glob`` of one file whose path only has escaped glob characters (a store
at ``s3://bucket/runs [v1]``: :func:`storage.store_urls.escape_glob`) with one existence check:
fsspec's own glob lists every folder under the part before the first ``[`` for each such file
(about 0.1 s per file DuckDB opens, against 5 ms for a path without glob characters).

Both may also be given the store's published files with their listing entries (``published``:
``storage.catalog.connect`` lists each box once). DuckDB asks the filesystem about every file
of a view at every query that reads the view, and each answer was a request: ``glob`` (does it
exist), ``open`` (its size and ETag), ``size`` and ``modified`` (four HEAD requests on S3, per
file and query: 130 of the 160 requests of a pipeline run's report). A published file is never
written again, so these are answered from its entry, and ``open`` gives the file its entry's
size and ETag: its reads are still conditional on that ETag (s3fs's ``IfMatch``, as when it
looks the ETag up itself; with s3fs's ``local_expiry_check`` compared by s3fs with each
response's ETag instead, for servers that refuse ``If-Match``), so a file rewritten after the listing fails its read
(``FileExpired``) instead of being read as the file the views were bound to.
"""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from storage.store_urls import escaped_literal

#: Methods passed through to the wrapped filesystem unchanged (they only read or list; ``glob``,
#: and ``info``, ``size``, ``modified``, ``exists``, ``isfile`` of a published file, are
#: :class:`StoreFileSystem`'s own).
_READS = ("ls", "listdir", "find", "walk", "du", "exists", "lexists", "isdir", "isfile", "info", "size",
          "sizes", "modified", "created", "checksum", "ukey", "cat", "cat_file", "cat_ranges", "head", "tail",
          "read_block", "expand_path", "invalidate_cache")
#: Methods that would change the filesystem (or write local files: ``get``): passed through by
#: :class:`StoreFileSystem`, refused by :class:`ReadOnlyFileSystem`.
_WRITES = ("rm", "rm_file", "_rm", "rmdir", "delete", "mv", "move", "rename", "cp", "copy", "cp_file", "mkdir",
           "makedir", "makedirs", "mkdirs", "touch", "pipe", "pipe_file", "put", "put_file", "upload", "get",
           "get_file", "download", "write_bytes", "write_text", "start_transaction", "sign")
_WRITE_MODES = set("wax+")


class StoreFileSystem(AbstractFileSystem):
    """Every method of ``inner`` (an fsspec filesystem), under its protocol, with a ``glob`` that
    answers a literal path (glob characters escaped) by one existence check."""

    cachable = False  # one per wrapped filesystem, never shared through fsspec's instance cache

    def __init__(self, inner: AbstractFileSystem, published: dict[str, dict[str, Any]] | None = None) -> None:
        """``published``: path (as ``inner`` strips it: ``bucket/key``) → listing entry of each
        published file, answered without a request (see the module docstring)."""
        super().__init__()
        self.inner = inner
        self.protocol = inner.protocol
        self.published = dict(published or {})

    def _entry(self, path: Any) -> dict[str, Any] | None:
        """The listing entry of ``path`` when it is a published file given at construction."""
        if not self.published or not isinstance(path, str):
            return None
        return self.published.get(self.inner._strip_protocol(path))

    def glob(self, path: str, maxdepth: int | None = None, **kwargs: Any) -> Any:
        literal = None if kwargs or path.endswith("/") else escaped_literal(path)
        if literal is not None and self._entry(literal) is not None:
            return [self.inner._strip_protocol(literal)]
        if literal is None or literal == path:
            return self.inner.glob(path, maxdepth=maxdepth, **kwargs)
        stripped = self.inner._strip_protocol(literal)
        return [stripped] if self.inner.exists(stripped) else []

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        entry = self._entry(path)
        return dict(entry) if entry is not None else self.inner.info(path, **kwargs)

    def size(self, path: str) -> int:
        entry = self._entry(path)
        return int(entry["size"]) if entry is not None else self.inner.size(path)

    def modified(self, path: str) -> Any:
        entry = self._entry(path)
        if entry is not None and entry.get("LastModified") is not None:
            return entry["LastModified"]
        return self.inner.modified(path)

    def exists(self, path: str, **kwargs: Any) -> bool:
        return self._entry(path) is not None or self.inner.exists(path, **kwargs)

    def isfile(self, path: str) -> bool:
        return self._entry(path) is not None or self.inner.isfile(path)

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        entry = self._entry(path)
        if mode != "rb" or args or "size" in kwargs or entry is None or not entry.get("ETag"):
            return self.inner.open(path, mode, *args, **kwargs)
        handle = self.inner.open(path, mode, size=int(entry["size"]), **kwargs)
        handle.details = dict(entry)  # what the HEAD request at open would have said
        # s3fs: reads only while the ETag is still this; an s3fs told to check ETags itself (a
        # server without If-Match, VAST S3: it refuses the header) compares each read's ETag with
        # ``details`` instead, as it does for a file it looked up itself
        if not getattr(self.inner, "local_expiry_check", False):
            _read_only_if_match(handle, self.inner, entry["ETag"])
        return handle

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        return self.open(path, mode, *args, **kwargs)


class ReadOnlyFileSystem(StoreFileSystem):
    """Reads of ``inner`` (an fsspec filesystem), under its protocol; every write refused with
    ``PermissionError`` naming the path."""

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if _WRITE_MODES & set(mode):
            _refuse("open for writing", path)
        return super().open(path, mode, *args, **kwargs)


def _read_only_if_match(handle: Any, inner: AbstractFileSystem, etag: str) -> None:
    """Make every read of ``handle`` (an s3fs file opened with its size given) conditional on
    ``etag``, as s3fs does for a file whose size it looked up itself.

    s3fs 2026.9 sends ``read_kw`` with each ranged GET; 2024.12 (the oldest pyproject admits) to
    2026.7 have no ``read_kw`` and send ``req_kw``: setting ``read_kw`` there did nothing, and a
    file rewritten after the listing was read as if it were the listed one. Other filesystems'
    files are left as they are (they take no ``IfMatch``)."""
    if isinstance(getattr(handle, "read_kw", None), dict):
        handle.read_kw = {**handle.read_kw, "IfMatch": etag}
    elif "s3" in _protocols(inner) and isinstance(getattr(handle, "req_kw", None), dict):
        handle.req_kw = {**handle.req_kw, "IfMatch": etag}


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _refuse(action: str, path: Any) -> None:
    raise PermissionError(f"the catalog only reads the store: {action} {path!r} refused")


def _passed_through(name: str) -> Any:
    def method(self: StoreFileSystem, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


def _refused(name: str) -> Any:
    def method(self: ReadOnlyFileSystem, path: Any = None, *args: Any, **kwargs: Any) -> Any:
        _refuse(name, path)

    method.__name__ = name
    return method


for _name in _READS + _WRITES:
    if _name not in StoreFileSystem.__dict__:  # its own: answered from a published file's entry
        setattr(StoreFileSystem, _name, _passed_through(_name))
for _name in _WRITES:
    setattr(ReadOnlyFileSystem, _name, _refused(_name))
