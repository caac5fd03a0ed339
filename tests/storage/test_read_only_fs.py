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
