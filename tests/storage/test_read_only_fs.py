"""The read-only wrapper the analysts' DuckDB connection reads a remote store through."""

from __future__ import annotations

import pytest
from fsspec.implementations.local import LocalFileSystem

from storage.read_only_fs import ReadOnlyFileSystem, StoreFileSystem
from storage.store_urls import escape_glob


def test_reads_pass_through_and_every_write_is_refused(tmp_path):
    inner = LocalFileSystem()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"alpha")
    fs = ReadOnlyFileSystem(inner)
    path = str(tmp_path / "d" / "a.txt")
    assert fs.protocol == inner.protocol
    assert fs.cat_file(path) == b"alpha" and fs.open(path).read() == b"alpha" and fs.open(path, "r").read() == "alpha"
    assert fs.ls(str(tmp_path / "d"), detail=False) == [path] and fs.glob(str(tmp_path / "d" / "*.txt")) == [path]
    assert fs.info(path)["size"] == 5 and fs.size(path) == 5 and fs.exists(path) and fs.isfile(path)
    assert fs.isdir(str(tmp_path / "d")) and fs.find(str(tmp_path)) == [path]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    other = str(tmp_path / "d" / "b.txt")
    writes = [
        lambda: fs.open(other, "wb"), lambda: fs.open(path, "ab"), lambda: fs.open(path, "r+b"), lambda: fs.open(other, "xb"),
        lambda: fs.rm(path), lambda: fs.rm_file(path), lambda: fs.rm(str(tmp_path / "d"), recursive=True),
        lambda: fs.rmdir(str(tmp_path / "d")), lambda: fs.mv(path, other), lambda: fs.copy(path, other),
        lambda: fs.cp_file(path, other), lambda: fs.mkdir(str(tmp_path / "e")), lambda: fs.makedirs(str(tmp_path / "e")),
        lambda: fs.touch(other), lambda: fs.pipe(other, b"x"), lambda: fs.pipe_file(other, b"x"),
        lambda: fs.put(path, other), lambda: fs.get(path, str(tmp_path / "local.txt")), lambda: fs.write_bytes(other, b"x"),
    ]
    for write in writes:
        with pytest.raises(PermissionError, match="the catalog only reads the store"):
            write()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and (tmp_path / "d" / "a.txt").read_bytes() == b"alpha"


class _CountingLocal(LocalFileSystem):
    """The local disk, counting the glob calls that list folders."""

    cachable = False

    def __init__(self) -> None:
        super().__init__()
        self.globs = 0

    def glob(self, path, maxdepth=None, **kwargs):
        self.globs += 1
        return super().glob(path, maxdepth=maxdepth, **kwargs)


@pytest.mark.parametrize("wrapper", [StoreFileSystem, ReadOnlyFileSystem])
def test_a_literal_path_with_escaped_glob_characters_is_one_existence_check(tmp_path, wrapper):
    """DuckDB globs every file it opens; for a store at ``runs [v1]*?`` fsspec's glob listed every
    folder under ``runs `` each time (0.1 s per file on S3). The answer must stay the literal
    file: not a sibling the unescaped pattern matches, nothing for a missing file."""
    store = tmp_path / "runs [v1]*?"
    decoy = tmp_path / "runs v-decoy"
    for folder in (store, decoy):
        folder.mkdir()
        (folder / "a.parquet").write_bytes(b"x")
    inner = _CountingLocal()
    fs = wrapper(inner)
    literal = str(store / "a.parquet")
    assert fs.glob(escape_glob(literal)) == [literal] and fs.glob(escape_glob(str(store))) == [str(store)]
    assert fs.glob(escape_glob(str(store / "missing.parquet"))) == [] and inner.globs == 0
    assert fs.glob(escape_glob(str(store)) + "/*.parquet") == [literal] and inner.globs == 1  # a real pattern
    assert fs.glob(str(tmp_path / "runs [v1]*?" / "a.parquet")) == [str(decoy / "a.parquet")]  # unescaped: a pattern
    assert inner.globs == 2


def test_the_writable_wrapper_passes_writes_through(tmp_path):
    fs = StoreFileSystem(LocalFileSystem())
    path = str(tmp_path / "a.txt")
    fs.pipe_file(path, b"alpha")
    with fs.open(path, "ab") as f:
        f.write(b"!")
    assert fs.cat_file(path) == b"alpha!"
    fs.rm(path)
    assert not fs.exists(path)


class _ReqKwS3File:
    """Mixin making an s3fs file read as s3fs 2024.12 to 2026.7 do (pyproject admits them): its
    ranged GETs send ``req_kw`` and it has no ``read_kw`` (2026.9 reads with ``read_kw``)."""

    def _fetch_range(self, start, end):
        self.read_kw = self.req_kw  # what 2024.12's _fetch_range sends
        try:
            return super()._fetch_range(start, end)
        finally:
            del self.read_kw


@pytest.mark.parametrize("reads_with", ["read_kw", "req_kw"])
def test_a_published_file_opened_with_its_listed_size_reads_only_while_its_etag_holds(s3_store_url, reads_with):
    """``open`` of a published file gives s3fs the listed size (no HEAD request), so s3fs does not
    make the reads conditional itself: the wrapper does, on the listed ETag, whichever of
    ``read_kw`` (s3fs 2026.9) or ``req_kw`` (2024.12 to 2026.7) the s3fs file reads with. Setting
    ``read_kw`` alone read a file rewritten after the listing (same size, other bytes) from an s3fs
    2024.12 to 2026.7 as if it were the listed one."""
    import s3fs
    from s3fs.utils import FileExpired

    from storage.store import Store

    class OlderS3(s3fs.S3FileSystem):
        def _open(self, path, mode="rb", **kwargs):
            handle = super()._open(path, mode, **kwargs)
            if reads_with == "req_kw" and hasattr(handle, "read_kw"):  # an s3fs older than 2026.9 has none
                handle.__class__ = type("OlderS3File", (_ReqKwS3File, type(handle)), {})
                del handle.read_kw
                handle.cache.fetcher = handle._fetch_range  # the cache holds the method bound at open
            return handle

    store = Store(s3_store_url)
    store.write_bytes("v/layer-000.parquet", b"listed bytes")
    path = store.path("v/layer-000.parquet")
    entry = store.fs.info(path)
    inner = OlderS3(endpoint_url=store.fs.endpoint_url, skip_instance_cache=True)
    fs = StoreFileSystem(inner, published={path: entry})
    assert fs.open(path).read() == b"listed bytes"
    store.fs.pipe_file(path, b"other  bytes")  # same size: only the ETag tells them apart
    with pytest.raises(FileExpired):
        fs.open(path).read()
    assert inner.open(path).read() == b"other  bytes"  # opened without the listing: the file as it is now
