"""The read-only wrapper the analysts' DuckDB connection reads a remote store through."""

from __future__ import annotations

import pytest
from fsspec.implementations.local import LocalFileSystem

from storage.read_only_fs import ReadOnlyFileSystem


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
