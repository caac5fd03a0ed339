"""`prh verify`: published files checked against their manifests, on a local folder and on S3."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from flows.cli import main
from storage.store import MANIFEST, Store
from storage.verify import CHUNK_BYTES, file_sha256, remove_version, verify_store


def _publish(store: Store, key: str, seed: int) -> dict:
    table = pa.table({"sample_id": [f"s{i}" for i in range(50)], "x": [float(seed * 100 + i) for i in range(50)]})
    return store.publish(key, {"a.parquet": table, "b.bin": bytes(range(seed, seed + 64))}, {"catalog": {"seed": seed}}).manifest


def _damage(store: Store, key: str, how: str) -> None:
    path = store.path(key)
    data = store.read_bytes(key)
    if how == "flip":  # same size, one byte changed
        store.fs.pipe(path, data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])
    elif how == "truncate":
        store.fs.pipe(path, data[:-5])
    elif how == "delete":
        store.fs.rm_file(path)
    elif how == "not-json":
        store.fs.pipe(path, data[: len(data) // 2])
    store.fs.invalidate_cache()


def test_every_kind_of_damage_is_found_and_removed_versions_publish_again(store_url):
    store = Store(store_url)
    keys = [f"features/d1/model-{i}/v{i}" for i in range(5)]
    manifests = {key: _publish(store, key, i) for i, key in enumerate(keys)}
    assert [c.key for c in verify_store(store)] == keys and all(c.ok for c in verify_store(store))
    assert all(c.files == 2 for c in verify_store(store))
    _damage(store, f"{keys[0]}/a.parquet", "flip")
    _damage(store, f"{keys[1]}/b.bin", "truncate")
    _damage(store, f"{keys[2]}/a.parquet", "delete")
    _damage(store, f"{keys[3]}/{MANIFEST}", "not-json")

    found = {c.key: c.problems for c in verify_store(store) if not c.ok}
    assert set(found) == set(keys[:4])
    assert "content changed" in found[keys[0]][0] and found[keys[0]][0].startswith("a.parquet")
    assert found[keys[1]] == ["b.bin: 59 bytes, the manifest says 64"]
    assert found[keys[2]] == ["a.parquet: missing"]
    assert "is damaged (not JSON" in found[keys[3]][0]
    quick = {c.key for c in verify_store(store, quick=True) if not c.ok}
    assert quick == set(keys[1:4])  # a same-size change needs the SHA-256

    for key in keys[:4]:
        remove_version(store, key)
        assert not store.exists(key) and store.manifest(key) is None
    assert [c.key for c in verify_store(store)] == [keys[4]]
    again = store.publish(keys[0], {"a.parquet": pa.table({"x": [1.0]})}, {"catalog": {}})
    assert again.written and verify_store(store)[0].ok
    assert store.manifest(keys[4]) == manifests[keys[4]]  # the sound version was not touched


def test_file_sha256_reads_in_chunks(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"))
    data = bytes(range(256)) * 1000
    store.write_bytes("f.bin", data)
    monkeypatch.setattr("storage.verify.CHUNK_BYTES", 1000)
    assert CHUNK_BYTES > 1000 and file_sha256(store, "f.bin") == (len(data), hashlib.sha256(data).hexdigest())


def test_prh_verify_command(tmp_path, capsys):
    url = str(tmp_path / "store")
    store = Store(url)
    _publish(store, "datasets/d1", 1)
    _publish(store, "alignment/d1/a__b/v1", 2)
    assert main(["verify", "--store", url]) == 0
    assert "2 published versions, 4 files" in capsys.readouterr().out
    _damage(store, "alignment/d1/a__b/v1/a.parquet", "flip")
    assert main(["verify", "--store", url, "--quick"]) == 0
    capsys.readouterr()
    assert main(["verify", "--store", url]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED alignment/d1/a__b/v1: a.parquet: content changed" in out and "1 damaged (remove them with --remove-damaged)" in out
    assert store.manifest("alignment/d1/a__b/v1") is not None  # reporting removes nothing
    assert main(["verify", "--store", url, "--remove-damaged"]) == 1
    assert "removed alignment/d1/a__b/v1: the next run computes it again" in capsys.readouterr().out
    assert main(["verify", "--store", url]) == 0 and "1 published version, 2 files" in capsys.readouterr().out
    assert main(["verify", "--store", str(tmp_path / "nosuch")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("files", [None, "not a listing"])
def test_a_manifest_without_a_file_listing_is_reported(tmp_path, files):
    store = Store(str(tmp_path / "store"))
    store.write_json(f"features/d/m/v/{MANIFEST}", {"key": "features/d/m/v", "files": files})
    [check] = verify_store(store)
    assert check.problems == [f"{MANIFEST} lists no files (not written by prh's publish?)"]


@pytest.mark.parametrize("stray", ["features/manifest.json", "features/d1/manifest.json", "features/d1/model-0/v0/x/manifest.json"])
def test_a_stray_manifest_is_named_and_never_removes_a_folder(tmp_path, capsys, stray):
    """A manifest.json outside any version folder (copied up to look at) was taken for a damaged
    version whose folder was the whole box: --remove-damaged deleted every sound version with it."""
    url = str(tmp_path / "store")
    store = Store(url)
    keys = [f"features/d1/model-{i}/v{i}" for i in range(3)]
    for i, key in enumerate(keys):
        _publish(store, key, i)
    store.write_json(stray, {"note": "scratch"})
    found = {c.key: c for c in verify_store(store)}
    folder = stray.rsplit("/", 1)[0]
    assert not found[folder].ok and not found[folder].removable and "outside any version folder" in found[folder].problems[0]
    assert all(found[k].ok for k in keys)
    assert main(["verify", "--store", url, "--remove-damaged"]) == 1
    assert f"left {folder}/manifest.json in place" in capsys.readouterr().out
    assert all(store.manifest(k) is not None for k in keys) and store.exists(stray)
    with pytest.raises(ValueError, match="is not a version folder"):
        remove_version(store, "features")
