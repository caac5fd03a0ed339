"""The bytes read from a store's data files, counted where the store is read
(`storage.bytes_read`, `storage.store.Store`): against the files' sizes on disk and hand-made
read patterns, never against the counter's own earlier figures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.bytes_read import CountedFile, bytes_read
from storage.store import Store


def _read_by(action) -> int:
    before = bytes_read()
    action()
    return bytes_read() - before


def _table_file(folder: Path) -> tuple[str, int]:
    table = pa.table({"sample_id": [f"s{i}" for i in range(5000)], "vector": np.arange(5000, dtype=np.float32)})
    pq.write_table(table, folder / "layer_000.parquet")
    return "layer_000.parquet", os.path.getsize(folder / "layer_000.parquet")


def test_reads_through_a_local_store_count_the_bytes_of_its_data_files(tmp_path):
    store = Store(str(tmp_path))
    key, size = _table_file(tmp_path)
    (tmp_path / "manifest.json").write_text('{"a": 1}')
    assert _read_by(lambda: store.read_bytes(key)) == size
    assert _read_by(lambda: store.read_many([store.path(key), store.path(key)])) == 2 * size  # two reads
    with store.open_read(key) as handle:
        assert _read_by(handle.read) == size
    # a Parquet reader takes every byte but the leading magic number, each once (it reads the
    # footer's region twice: 1.5x the file had been counted)
    assert size - 4 <= _read_by(lambda: store.read_table(key)) <= size
    # metadata is not counted: manifests, records
    assert _read_by(lambda: store.read_bytes("manifest.json")) == 0
    assert _read_by(lambda: store.read_json("manifest.json")) == 0
    # a file handed to DuckDB to read in place counts its size; a catalog view's URL does not
    assert _read_by(lambda: store.uri(key)) == size
    assert _read_by(lambda: store.read_uri(key)) == 0
    assert _read_by(lambda: store.uri("")) == 0  # the store's root: a folder


def test_files_fetched_whole_from_an_object_store_count_their_copies():
    """An object store's layer files are fetched into a local folder (``Store.fs.get``) and read
    there: the bytes of the copies count, not the URLs handed out."""
    store = Store("memory://bytes-read-test/store")
    store.fs.pipe({store.path("features/a/layer_000.parquet"): b"x" * 1000,
                   store.path("features/a/layer_001.parquet"): b"y" * 24,
                   store.path("features/a/manifest.json"): b"{}"})
    assert _read_by(lambda: store.uri("features/a/layer_000.parquet")) == 0
    with tempfile.TemporaryDirectory() as folder:
        local = [os.path.join(folder, "0.parquet"), os.path.join(folder, "1.parquet")]
        remote = [store.path("features/a/layer_000.parquet"), store.path("features/a/layer_001.parquet")]
        assert _read_by(lambda: store.fs.get(remote, local)) == 1024
        assert _read_by(lambda: Store("memory://bytes-read-test/store").fs.get(remote, local)) == 1024  # counted once, not twice
        assert _read_by(lambda: store.fs.get(store.path("features/a/manifest.json"), os.path.join(folder, "m.json"))) == 0
    assert _read_by(lambda: store.read_bytes("features/a/layer_000.parquet")) == 1000


class _Bytes:
    """A file of 1,000 bytes, read as a reader chooses."""

    def __init__(self) -> None:
        self.position = 0

    def tell(self) -> int:
        return self.position

    def seek(self, position: int, whence: int = 0) -> int:
        self.position = position if whence == 0 else 1000 + position
        return self.position

    def read(self, n: int = -1) -> bytes:
        end = 1000 if n < 0 else min(1000, self.position + n)
        data, self.position = b"z" * (end - self.position), end
        return data


def test_a_byte_read_twice_counts_once():
    handle = CountedFile(_Bytes())
    counted = _read_by(lambda: (handle.seek(-100, 2), handle.read(), handle.seek(950), handle.read(),  # the tail twice
                                handle.seek(0), handle.read(100), handle.seek(50), handle.read(100),  # 0-150
                                handle.seek(150), handle.read(10)))  # touching 0-150: 0-160
    assert counted == 100 + 160
    assert _read_by(lambda: (handle.seek(0), handle.read())) == 1000 - 260


def test_a_filesystem_shared_by_stores_opened_at_once_counts_each_fetch_once(tmp_path):
    """fsspec shares one filesystem instance among stores of one URL: a thread opening a store
    while another was wrapping the instance's ``get`` found it not yet marked and wrapped the
    wrapper, so every fetch counted twice."""
    import threading
    import time

    from storage import bytes_read

    (tmp_path / "a.parquet").write_bytes(b"x" * 1000)

    class SlowFs:
        """A filesystem whose missing attributes take a moment to look up (the mark, before it is
        set): the second thread looks while the first wraps ``get`` and marks it."""

        def get(self, rpath, lpath):
            (tmp_path / "copy.parquet").write_bytes((tmp_path / rpath).read_bytes())

        def __getattr__(self, name):
            time.sleep(0.2)
            raise AttributeError(name)

    fs = SlowFs()
    threads = [threading.Thread(target=bytes_read.count_fetches, args=(fs,)) for _ in range(2)]
    threads[0].start()
    time.sleep(0.1)  # the second looks for the mark while the first is past its look
    threads[1].start()
    for thread in threads:
        thread.join()
    before = bytes_read.bytes_read()
    fs.get("a.parquet", str(tmp_path / "copy.parquet"))
    assert bytes_read.bytes_read() - before == 1000
