"""Local checkpoints: every byte counts in the feature version; the digest cache never hides an edit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tasks.extract import sources
from tasks.extract.spec import ModelSpec

MIB = 1 << 20


def _spec(path: Path) -> ModelSpec:
    return ModelSpec(name="m", loader="hf", id=str(path), modality="language")


@pytest.fixture
def cache_file(tmp_path, monkeypatch) -> Path:
    """A digest cache of its own; files count as settled 50 ms after their last change."""
    path = tmp_path / "digest-cache" / "file-digests.json"
    monkeypatch.setenv("PRH_DIGEST_CACHE", str(path))
    monkeypatch.setattr(sources, "_memory", {}, raising=False)
    monkeypatch.setattr(sources, "_RACY_S", 0.05, raising=False)
    return path


def _checkpoint(tmp_path: Path, mib: int = 6) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(os.urandom(mib * MIB))  # over the 4 MiB "small file" size
    time.sleep(0.1)  # settled: its digest may be cached
    return d


def _edit_middle(path: Path) -> None:
    """Overwrite 1 MiB in the middle, in place; size and mtime put back (as a careless tool would)."""
    before = path.stat()
    with path.open("r+b") as f:
        f.seek(before.st_size // 2 - MIB // 2)
        f.write(os.urandom(MIB))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino, after.st_dev) == \
        (before.st_size, before.st_mtime_ns, before.st_ino, before.st_dev)


def test_in_place_edit_of_a_large_file_changes_the_version(tmp_path, cache_file):
    d = _checkpoint(tmp_path)
    fp1 = _spec(d).fingerprint()
    assert _spec(d).fingerprint() == fp1
    if hasattr(sources, "digest_cache_path"):  # the cache was in play: the edit must get past it
        assert str((d / "model.safetensors").resolve()) in json.loads(cache_file.read_text())["entries"]
    time.sleep(0.05)  # past the file system's timestamp tick
    _edit_middle(d / "model.safetensors")
    fp2 = _spec(d).fingerprint()
    assert fp2["source"]["local_digest"] != fp1["source"]["local_digest"]
    # and the edit is noticed again in a fresh process (the cache file alone)
    sources._memory.clear()
    assert _spec(d).fingerprint() == fp2


def test_cache_used_when_the_stat_is_unchanged(tmp_path, cache_file, monkeypatch):
    d = _checkpoint(tmp_path)
    digest = sources.directory_digest(d)
    entries = json.loads(cache_file.read_text())["entries"]
    (key, entry), = entries.items()
    assert key == str((d / "model.safetensors").resolve())
    assert entry["stat"][0] == 6 * MIB and len(entry["stat"]) == 5  # size, mtime, ctime, inode, device

    sources._memory.clear()
    real = sources._sha256

    def small_only(path: Path) -> str:
        assert path.stat().st_size <= 4 * MIB, f"{path} hashed again despite an unchanged stat"
        return real(path)

    monkeypatch.setattr(sources, "_sha256", small_only)
    assert sources.directory_digest(d) == digest  # from the cache file
    assert sources.directory_digest(d) == digest  # from memory
    monkeypatch.setattr(sources, "_sha256", real)

    # any stat field that differs (here the ctime) makes the entry worthless, even a wrong one
    sources._memory.clear()
    entry["stat"][2] += 1
    entry["sha256"] = "0" * 64
    cache_file.write_text(json.dumps({"schema": 1, "entries": {key: entry}}))
    assert sources.directory_digest(d) == digest


@pytest.mark.parametrize("damage", ["corrupt", "unwritable", "off"])
def test_a_broken_cache_only_costs_time(tmp_path, cache_file, monkeypatch, damage):
    d = _checkpoint(tmp_path)
    expected = sources.directory_digest(d)
    sources._memory.clear()
    if damage == "corrupt":
        cache_file.write_text('{"schema": 1, "entries": {"x": [1, 2')
    elif damage == "unwritable":
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        monkeypatch.setenv("PRH_DIGEST_CACHE", str(blocker / "cache.json"))  # its folder is a file
    else:
        monkeypatch.setenv("PRH_DIGEST_CACHE", "off")
    assert sources.directory_digest(d) == expected
    _edit_middle(d / "model.safetensors")
    assert sources.directory_digest(d) != expected
    if damage == "corrupt":  # rewritten whole
        assert json.loads(cache_file.read_text())["schema"] == 1


def test_a_just_written_file_is_not_cached(tmp_path, cache_file, monkeypatch):
    # An edit within the same timestamp tick could leave size, mtime and ctime as they were:
    # a file changed less than _RACY_S ago is hashed but its stat is not trusted later.
    monkeypatch.setattr(sources, "_RACY_S", 3600.0)
    d = _checkpoint(tmp_path)
    sources.directory_digest(d)
    assert not cache_file.exists() and not sources._memory


def test_whole_file_sha256(tmp_path, cache_file):
    import hashlib

    f = tmp_path / "w.bin"
    data = os.urandom(5 * MIB)
    f.write_bytes(data)
    expected = hashlib.sha256(b"w.bin\0" + hashlib.sha256(data).hexdigest().encode() + b"\n").hexdigest()
    assert sources.directory_digest(f) == expected
