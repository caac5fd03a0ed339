"""A local store makes what it publishes survive a power loss: after the rename (or link) that
publishes a file, and after making a new folder, the folder holding the new name is fsynced (the
file's own fsync does not write its name). Seen through the system calls: which file or folder
each ``fsync`` was given, in order with the renames and links. An object store does none of it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from storage.store import Store


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, str]]:
    """``("fsync-file" | "fsync-folder", path)``, ``("replace" | "link", destination)`` in the
    order the process made them (each call then made for real)."""
    made: list[tuple[str, str]] = []
    fsync, replace, link = os.fsync, os.replace, os.link

    def traced_fsync(fd: int) -> None:
        kind = "fsync-folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file"
        made.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def traced(name, call):
        def run(src, dst, *args, **kwargs):
            call(src, dst, *args, **kwargs)
            made.append((name, os.fspath(dst)))
        return run

    monkeypatch.setattr(os, "fsync", traced_fsync)
    monkeypatch.setattr(os, "replace", traced("replace", replace))
    monkeypatch.setattr(os, "link", traced("link", link))
    return made


def test_a_published_name_and_its_new_folders_are_fsynced_in_their_folders(tmp_path, calls):
    root = tmp_path / "store"
    root.mkdir()
    store = Store(str(root))
    folder = root / "features" / "d" / "v"
    store.write_bytes("features/d/v/layer.parquet", b"data")
    assert calls[0] == ("fsync-folder", str(root))  # features/ made: its entry in the store's top
    assert calls[1:3] == [("fsync-folder", str(root / "features")), ("fsync-folder", str(root / "features" / "d"))]
    assert calls[3][0] == "fsync-file" and calls[4:] == [("replace", str(folder / "layer.parquet")),
                                                         ("fsync-folder", str(folder))]
    calls.clear()
    assert store.create_exclusive("features/d/v/.manifest.json", b"{}")
    assert [kind for kind, _ in calls] == ["fsync-file", "link", "fsync-folder"]  # the folder exists: only the name
    assert calls[1:] == [("link", str(folder / ".manifest.json")), ("fsync-folder", str(folder))]
    calls.clear()
    assert not store.create_exclusive("features/d/v/.manifest.json", b"{}")  # taken: nothing published, nothing synced
    assert [kind for kind, _ in calls] == ["fsync-file"]
    assert sorted(os.listdir(folder)) == [".manifest.json", "layer.parquet"]


def test_an_object_store_fsyncs_nothing_locally(s3_store_url, calls):
    store = Store(s3_store_url)
    store.write_bytes("features/d/v/layer.parquet", b"data")
    assert store.create_exclusive("features/d/v/.manifest.json", b"{}")
    assert calls == []


def test_a_folder_that_cannot_be_fsynced_is_not_an_error(tmp_path, monkeypatch):
    """Some file systems (network, FUSE) answer a folder's fsync with EINVAL: the write stands."""
    import errno

    import storage.durable

    real = os.fsync

    def refuse_folders(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real(fd)

    monkeypatch.setattr(os, "fsync", refuse_folders)
    store = Store(str(tmp_path / "store"))
    store.write_bytes("runs/r.json", b"{}")
    assert Path(store.path("runs/r.json")).read_bytes() == b"{}"
    assert storage.durable.sync_folder(tmp_path) is False


@pytest.mark.parametrize("write", ["write_bytes", "create_exclusive"])
def test_a_folder_another_process_clears_before_the_temporary_file_opens_is_made_again(tmp_path, monkeypatch, write):
    """Two runs on one store: one cleared a shard folder (`_partial/`) between the other's making
    it and opening its temporary file there; that FileNotFoundError failed the model (seen in
    `test_two_runs_at_once_on_one_store`), while one after the file was written was retried."""
    import shutil

    import storage.store as store_module

    made = store_module.make_folders
    cleared: list[str] = []

    def made_then_cleared(folder: str) -> None:
        made(folder)
        if not cleared:  # the other process's clear, once
            cleared.append(folder)
            shutil.rmtree(folder)

    monkeypatch.setattr(store_module, "make_folders", made_then_cleared)
    store = Store(str(tmp_path / "store"))
    key = "features/d1/m/v1/_partial/shard-00000.parquet"
    result = getattr(store, write)(key, b"shard")
    assert cleared and (tmp_path / "store" / key).read_bytes() == b"shard"
    assert result in (None, True)
    assert not [p for p in (tmp_path / "store").rglob("*") if ".tmp-" in p.name]
