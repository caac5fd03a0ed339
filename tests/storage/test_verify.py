"""`prh verify`: published files checked against their manifests, on a local folder and on S3."""

from __future__ import annotations

import hashlib
import logging

import pyarrow as pa
import pytest

import storage.verify as verify_module
from flows.cli import main
from storage.catalog import connect
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
    assert "DAMAGED alignment/d1/a__b/v1: a.parquet: content changed" in out and "1 damaged (remove the damaged versions with --remove-damaged)" in out
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
def test_a_stray_manifest_is_named_and_never_removes_a_folder(tmp_path, capsys, caplog, stray):
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
    # the hunt: its advice was "remove the folder features" (every feature version with it)
    assert "remove the folder" not in found[folder].problems[0] and "remove that manifest.json by hand" in found[folder].problems[0]
    assert all(found[k].ok for k in keys)
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        connect(store)
    assert "remove the folder" not in caplog.text and "remove that manifest.json by hand, never its folder" in caplog.text
    assert main(["verify", "--store", url, "--remove-damaged"]) == 1
    out = capsys.readouterr().out
    assert f"left {folder}/manifest.json in place" in out
    assert "3 published versions" in out  # the stray is not one
    assert all(store.manifest(k) is not None for k in keys) and store.exists(stray)
    with pytest.raises(ValueError, match="is not a version folder"):
        remove_version(store, "features")


def test_remove_version_leaves_a_version_a_live_writer_is_publishing(tmp_path, capsys):
    """--remove-damaged deleted the manifest and then the whole folder without the version's
    claim: a live writer's `.publishing` claim went with it. Now the removal takes the claim (as
    gc's Store.unpublish does) and leaves a version whose claim a live writer holds."""
    import json
    import time

    from storage.owner import current_owner

    url = str(tmp_path / "store")
    store = Store(url)
    key = "features/d1/model-0/v0"
    _publish(store, key, 0)
    _damage(store, f"{key}/b.bin", "truncate")
    claim = {"owner": "live-writer", "claimed_at": time.time(), "process": current_owner()}  # this process: alive
    store.write_json(f"{key}/.publishing", claim)
    assert remove_version(store, key) is False
    assert json.loads(store.read_bytes(f"{key}/.publishing")) == claim
    assert store.exists(f"{key}/{MANIFEST}") and store.exists(f"{key}/a.parquet")
    assert main(["verify", "--store", url, "--remove-damaged"]) == 1
    out = capsys.readouterr().out
    assert f"left {key} in place: a run is publishing it again right now (it holds its claim)" in out
    assert f"removed {key}" not in out and store.exists(f"{key}/.publishing")
    store.delete(f"{key}/.publishing")  # the writer finished
    assert main(["verify", "--store", url, "--remove-damaged"]) == 1
    assert f"removed {key}: the next run computes it again" in capsys.readouterr().out
    assert not store.exists(key)


def test_a_version_removed_while_verify_runs_is_not_reported_damaged(tmp_path):
    """The concurrency hunt: `prh gc --keep-runs` (or a second `verify --remove-damaged`)
    unpublished a version after verify had listed its manifest and before its files were checked;
    verify reported it DAMAGED ("missing") and exit 1, and --remove-damaged said it removed it."""
    store = Store(str(tmp_path / "store"))
    keys = [f"features/d1/model-{i}/v{i}" for i in range(3)]
    for i, key in enumerate(keys):
        _publish(store, key, i)
    _damage(store, f"{keys[2]}/b.bin", "truncate")  # really damaged: still reported

    def remove_the_next(check):
        if check.key == keys[0]:
            assert remove_version(Store(store.url), keys[1])

    checks = verify_store(store, on_check=remove_the_next)
    assert [(c.key, c.ok) for c in checks] == [(keys[0], True), (keys[2], False)]
    assert checks[1].problems == ["b.bin: 59 bytes, the manifest says 64"]


def test_a_version_published_anew_while_verify_runs_is_checked_against_its_new_manifest(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"))
    key = "features/d1/model-0/v0"
    _publish(store, key, 0)
    original, calls = verify_module.check_version, []

    def check_version(store_, version_key, manifest, quick=False):
        if not calls:  # between the listing and the check: removed and published again, other files
            assert remove_version(Store(store.url), key)
            _publish(Store(store.url), key, 7)
        calls.append(manifest["catalog"]["seed"])
        return original(store_, version_key, manifest, quick)

    monkeypatch.setattr(verify_module, "check_version", check_version)
    [check] = verify_store(store)
    assert check.ok and calls == [0, 7]


def test_a_run_republishing_during_remove_version_keeps_its_files(tmp_path, monkeypatch):
    """The interleaving of the bug hunt: a run publishes the version while --remove-damaged
    removes it (here: at the moment the run writes its manifest). Without the claim the removal
    took the run's data files and the run then wrote its manifest: a published version whose
    files were gone. With it the removal is refused and the republished version is whole."""
    store = Store(str(tmp_path / "store"))
    key = "datasets/d1"
    table = pa.table({"sample_id": ["a", "b"], "text": ["x", "y"]})
    original, outcomes = Store.create_exclusive, []

    def create_exclusive(self, k, data):  # how a manifest is written: only if absent
        if k == f"{key}/{MANIFEST}":
            outcomes.append(remove_version(Store(store.url), key))
        return original(self, k, data)

    monkeypatch.setattr(Store, "create_exclusive", create_exclusive)
    assert store.publish(key, {"samples.parquet": table}, {"kind": "dataset"}).written
    monkeypatch.setattr(Store, "create_exclusive", original)
    assert outcomes == [False]
    [check] = verify_store(store)
    assert check.ok and check.files == 1 and not store.exists(f"{key}/.publishing")


def test_a_removal_killed_midway_leaves_its_claim_for_gc(tmp_path):
    """A process killed after deleting the manifest and before the files left files with no
    manifest and no claim: Store.sweep_abandoned (prh gc) never found them. The claim is taken
    first now, so the dead remover's claim leads gc to them."""
    import subprocess
    import sys
    from pathlib import Path

    url = str(tmp_path / "store")
    store = Store(url)
    key = "features/d1/model-0/v0"
    _publish(store, key, 0)
    _damage(store, f"{key}/a.parquet", "flip")
    child = ("import os, sys\n"
             "from storage.store import Store\n"
             "from storage.verify import remove_version\n"
             f"store = Store({url!r})\n"
             "store.fs.rm = lambda *a, **k: os._exit(9)  # killed once the manifest is gone\n"
             f"remove_version(store, {key!r})\n")
    done = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    assert not store.exists(f"{key}/{MANIFEST}") and store.exists(f"{key}/a.parquet")
    assert store.sweep_abandoned() == [key]
    assert not store.exists(f"{key}/a.parquet") and not store.exists(f"{key}/b.bin") and verify_store(store) == []


def test_a_removal_that_fails_midway_keeps_its_claim_for_gc(tmp_path, monkeypatch):
    """A removal that raises after the manifest is gone (a file that cannot be removed, the
    endpoint down) no longer drops its claim: gc sweeps the files left without a manifest."""
    store = Store(str(tmp_path / "store"))
    key = "features/d1/model-0/v0"
    _publish(store, key, 0)

    def refuse(*args, **kwargs):
        raise PermissionError("cannot remove")

    monkeypatch.setattr(store.fs, "rm", refuse)
    with pytest.raises(PermissionError):
        remove_version(store, key)
    monkeypatch.undo()
    assert not store.exists(f"{key}/{MANIFEST}") and store.exists(f"{key}/.publishing")
    assert store.sweep_abandoned() == [key]  # this process's own abandoned claim: taken over at once
    assert not store.exists(f"{key}/a.parquet") and not store.exists(f"{key}/.publishing")


def test_a_damaged_manifest_is_removed_under_the_claim_with_its_shards(tmp_path, monkeypatch):
    """The manifest --remove-damaged removes may not parse: the claim-taking removal never reads
    it, and takes the resumable shards under _partial/ too."""
    store = Store(str(tmp_path / "store"))
    key = "features/d1/model-0/v0"
    _publish(store, key, 0)
    store.write_bytes(f"{key}/_partial/shard-00000.parquet", b"shard")
    _damage(store, f"{key}/{MANIFEST}", "not-json")
    claimed = []
    original = Store.create_exclusive
    monkeypatch.setattr(Store, "create_exclusive", lambda self, k, data: claimed.append(k) or original(self, k, data))
    assert [c.key for c in verify_store(store) if not c.ok] == [key]
    assert remove_version(store, key) is True
    assert claimed == [f"{key}/.publishing"] and not store.exists(key) and not store.exists("features")


_BAD_FIELDS = {
    "files null": (lambda m: m.update(files=None), "manifest.json lists no files (not written by prh's publish?)"),
    "catalog null": (lambda m: m.update(catalog=None), "manifest.json: its 'catalog' is null, not an object"),
    "catalog a list": (lambda m: m.update(catalog=[1]), "manifest.json: its 'catalog' is a list, not an object"),
    "lineage text": (lambda m: m.update(lineage="x"), "manifest.json: its 'lineage' is text, not an object"),
    "lineage.features a list": (lambda m: m.update(lineage={"features": ["a", "b"]}),
                                "manifest.json: its lineage's 'features' is a list, not an object"),
    "lineage.dataset_version a number": (lambda m: m.update(lineage={"dataset_version": 3, "features": {}}),
                                         "manifest.json: its lineage's 'dataset_version' is a number, not text"),
}


@pytest.mark.parametrize("case", sorted(_BAD_FIELDS))
def test_a_manifest_with_a_field_of_the_wrong_type_is_damaged(tmp_path, capsys, case):
    """Valid JSON naming its version, a field of another type (a hand edit): damaged, removable."""
    edit, problem = _BAD_FIELDS[case]
    url = str(tmp_path / "store")
    store = Store(url)
    key, sound = "alignment/d1/a__b/v1", "alignment/d1/a__b/v2"
    for seed, k in enumerate((key, sound)):
        _publish(store, k, seed)
    manifest = store.manifest(key)
    edit(manifest)
    store.write_json(f"{key}/{MANIFEST}", manifest)
    found = {c.key: c.problems for c in verify_store(store)}
    assert len(found[key]) == 1 and found[key][0].startswith(problem) and found[sound] == []
    assert main(["verify", "--store", url, "--remove-damaged"]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {key}: {problem}" in out and f"removed {key}: the next run computes it again" in out
    assert not store.exists(key) and [c.key for c in verify_store(store)] == [sound]


def test_keys_a_store_writer_chose_reach_the_terminal_escaped(tmp_path, capsys):
    """prh verify and prh gc name store keys and quote manifests: a folder named with an escape
    sequence (clear the screen, recolour, a link) is shown as text, not obeyed."""
    import os
    import time

    import numpy as np

    from storage.shards import write_shard

    store = Store(str(tmp_path / "store"))
    hostile = "features/d/m\x1b[2J\x1b]8;;evil.example\x07/v1"
    _publish(store, hostile, 1)
    _damage(store, f"{hostile}/a.parquet", "truncate")
    assert main(["verify", "--store", store.url]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "DAMAGED features/d/m\\x1b[2J\\x1b]8;;evil.example\\x07/v1: " in out
    partial = "features/d/m/v\x1b[31m2"
    write_shard(store, partial, 0, [np.ones((4, 3), np.float32)])
    old = time.time() - 9 * 86400
    for path in (tmp_path / "store").rglob("*.parquet"):
        os.utime(path, (old, old))
    assert main(["gc", "--store", store.url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "would remove features/d/m/v\\x1b[31m2/_partial: 1 shard," in out


def test_another_tools_folder_in_the_store_is_never_removed(tmp_path, capsys):
    """The untrusted-input hunt: a store sharing its folder with other data (`datasets/coco/`
    holding the images and its own manifest.json, as many data tools write) lost that folder to
    `prh verify --remove-damaged` ("removed datasets/coco: the next run computes it again"): its
    manifest, not prh's, names no version, so it was a damaged version. Only a folder named by a
    version id is prh's; the others' manifests are stray and left in place, the rest checked."""
    store = Store(str(tmp_path / "store"))
    sound = "datasets/" + "a" * 16
    _publish(store, sound, 1)
    cut = "datasets/" + "b" * 16
    _publish(store, cut, 2)
    store.write_bytes(f"{cut}/{MANIFEST}", store.read_bytes(f"{cut}/{MANIFEST}")[:30])  # prh's, cut short: removed
    foreign = {"datasets/coco/manifest.json": b'{"name": "coco", "files": ["images/a.jpg"]}',
               "datasets/coco/images/a.jpg": b"jpeg", "datasets/flickr/manifest.json": b"name: flickr\n",
               "datasets/flickr/a.jpg": b"jpeg"}
    for key, data in foreign.items():
        store.write_bytes(key, data)

    assert main(["verify", "--store", store.url, "--remove-damaged"]) == 1
    out = capsys.readouterr().out
    assert f"removed {cut}" in out and "removed datasets/coco" not in out and "removed datasets/flickr" not in out, out
    assert "left datasets/coco/manifest.json in place: not a version folder" in out, out
    assert all(store.read_bytes(key) == data for key, data in foreign.items())
    assert store.manifest(sound) is not None and not store.exists(cut)


@pytest.mark.parametrize("size, said", [("64", "'64': text"), ([64], "[64]: a list"), (None, "None: null")])
def test_a_size_that_is_not_a_number_of_bytes_is_named_as_such(tmp_path, size, said):
    """A listed size of "64" (a hand edit, another tool's manifest) read "b.bin: 64 bytes, the
    manifest says 64": a mismatch no one could see."""
    store = Store(str(tmp_path / "store"))
    manifest = _publish(store, "features/d/m/v", 0)
    manifest["files"]["b.bin"]["bytes"] = size
    store.write_json(f"features/d/m/v/{MANIFEST}", manifest)
    [check] = verify_store(store)
    assert check.problems == [f"b.bin: 64 bytes, the manifest says {said}, not a number of bytes"]
    manifest["files"]["b.bin"]["bytes"] = 64.0  # the same number: not damaged
    store.write_json(f"features/d/m/v/{MANIFEST}", manifest)
    assert verify_store(store)[0].ok


def test_listed_bytes_hands_over_only_the_file_the_manifest_lists(tmp_path):
    """What a run copies from a stored version (``listed_bytes``) is the published file, byte for
    byte; any other (same size but changed, cut short, missing, or listed by an entry that is no
    object) raises, never hands over its bytes."""
    store = Store(str(tmp_path / "store"))
    key = "features/d/m/v"
    manifest = _publish(store, key, 3)
    for name in ("a.parquet", "b.bin"):
        assert verify_module.listed_bytes(store, key, name, manifest) == store.read_bytes(f"{key}/{name}")
    assert verify_module.listed_bytes(store, key, "b.bin", manifest) == bytes(range(3, 3 + 64))
    _damage(store, f"{key}/a.parquet", "flip")  # same size, other content: the SHA-256 tells
    with pytest.raises(verify_module.NotAsListed):
        verify_module.listed_bytes(store, key, "a.parquet", manifest)
    _damage(store, f"{key}/b.bin", "truncate")
    with pytest.raises(verify_module.NotAsListed):
        verify_module.listed_bytes(store, key, "b.bin", manifest)
    store.fs.pipe(store.path(f"{key}/b.bin"), bytes(range(3, 3 + 64)))  # the listed file again
    for entry in ("not an entry", None, [64]):  # a hand-edited listing: nothing to check the file against
        odd = {**manifest, "files": {**manifest["files"], "b.bin": entry}}
        with pytest.raises(verify_module.NotAsListed):
            verify_module.listed_bytes(store, key, "b.bin", odd)
    _damage(store, f"{key}/b.bin", "delete")
    with pytest.raises(FileNotFoundError):
        verify_module.listed_bytes(store, key, "b.bin", manifest)


def test_each_check_counts_the_bytes_of_the_files_it_checked(tmp_path):
    """``VersionCheck.bytes`` (``prh verify``'s "... MB checked") is the sum of the checked files'
    sizes, as the store lists them (the manifest agrees for an intact version)."""
    store = Store(str(tmp_path / "store"))
    _publish(store, "features/d/m/v", 1)
    sizes = store.sizes("features/d/m/v")
    expected = sizes["features/d/m/v/a.parquet"] + sizes["features/d/m/v/b.bin"]
    for quick in (False, True):
        [check] = verify_store(store, quick=quick)
        assert check.ok and (check.files, check.bytes) == (2, expected)


def test_checked_for_reuse_refuses_a_version_whose_files_are_not_their_listed_sizes(tmp_path):
    """A run computes from a stored version only when every listed file is present at its listed
    size (``checked_for_reuse``); a same-size edit is ``prh verify``'s to find, not its."""
    store = Store(str(tmp_path / "store"))
    key = "features/d/m/v"
    manifest = _publish(store, key, 2)
    assert verify_module.checked_for_reuse(store, key, manifest, "the stored features") == manifest
    _damage(store, f"{key}/a.parquet", "flip")  # same size: not looked at
    assert verify_module.checked_for_reuse(store, key, manifest, "the stored features") == manifest
    _damage(store, f"{key}/b.bin", "truncate")
    with pytest.raises(verify_module.DamagedVersion, match="b.bin: 59 bytes, the manifest says 64"):
        verify_module.checked_for_reuse(store, key, manifest, "the stored features")
    _damage(store, f"{key}/b.bin", "delete")
    with pytest.raises(verify_module.DamagedVersion, match="b.bin: missing"):
        verify_module.checked_for_reuse(store, key, manifest, "the stored features")


def test_a_manifest_damaged_while_verify_runs_makes_its_version_damaged(tmp_path, monkeypatch):
    """A version whose files did not match, and whose manifest no longer reads when looked at once
    more (overwritten meanwhile by a partial copy), is reported damaged with the manifest's problem."""
    store = Store(str(tmp_path / "store"))
    key = "features/d1/model-0/v0"
    _publish(store, key, 0)
    _damage(store, f"{key}/b.bin", "truncate")
    original = verify_module.check_version

    def check_version(store_, version_key, manifest, quick=False):
        check = original(store_, version_key, manifest, quick)
        _damage(store, f"{key}/{MANIFEST}", "not-json")  # after the files were checked
        return check

    monkeypatch.setattr(verify_module, "check_version", check_version)
    [check] = verify_store(store)
    assert check.key == key and not check.ok and check.removable
    assert len(check.problems) == 1 and "is damaged (not JSON" in check.problems[0], check.problems


@pytest.mark.parametrize("key", ["datasets/", "features/d//v", "features/d/m/", "alignment//a__b/v"])
def test_a_key_with_an_empty_component_is_no_version_and_never_removed(tmp_path, key: str) -> None:
    """A version folder's key names every component of its box's depth (``VERSION_DEPTH``);
    ``datasets/`` has the depth of a dataset version but names none, and ``remove_version`` must
    refuse it rather than unpublish the box it points into."""
    store = Store(str(tmp_path / "store"))
    published = ["datasets/" + "a" * 16, "features/d/m/v", "alignment/d/a__b/v"]
    for i, version in enumerate(published):
        _publish(store, version, i)
    assert not verify_module.is_version_key(key)
    with pytest.raises(ValueError, match="not a version folder"):
        remove_version(store, key)
    assert all(store.manifest(version) is not None for version in published)


def test_an_empty_file_adds_no_bytes_to_the_check(tmp_path) -> None:
    """``VersionCheck.bytes`` sums the checked files' sizes: a zero-byte file is checked (present,
    listed size 0) and adds nothing."""
    store = Store(str(tmp_path / "store"))
    store.publish("features/d/m/v", {"empty.bin": b"", "b.bin": bytes(10)}, {"catalog": {}})
    for quick in (False, True):
        [check] = verify_store(store, quick=quick)
        assert check.ok and (check.files, check.bytes) == (2, 10)


def test_the_remove_damaged_hint_is_given_only_for_what_it_would_remove(tmp_path, capsys) -> None:
    """``prh verify`` advises ``--remove-damaged`` when some damaged version is removable; a
    stray manifest alone (left by ``--remove-damaged`` anyway) gets no such advice."""
    url = str(tmp_path / "store")
    store = Store(url)
    _publish(store, "features/d1/m/v1", 1)
    store.write_json("features/d1/manifest.json", {"note": "scratch"})  # stray: not removable
    assert main(["verify", "--store", url]) == 1
    out = capsys.readouterr().out
    assert "1 damaged" in out and "--remove-damaged" not in out, out
    _damage(store, "features/d1/m/v1/b.bin", "truncate")  # and one damaged version: removable
    assert main(["verify", "--store", url]) == 1
    assert "2 damaged (remove the damaged versions with --remove-damaged)" in capsys.readouterr().out


def test_checked_for_reuse_refuses_a_file_longer_than_listed(tmp_path) -> None:
    """A file that grew (rows appended by hand, another copy written over it) is not at its listed
    size either: nothing is computed from its version."""
    store = Store(str(tmp_path / "store"))
    key = "features/d/m/v"
    manifest = _publish(store, key, 2)
    store.fs.pipe(store.path(f"{key}/b.bin"), store.read_bytes(f"{key}/b.bin") + b"extra")
    with pytest.raises(verify_module.DamagedVersion, match="b.bin: 69 bytes, the manifest says 64"):
        verify_module.checked_for_reuse(store, key, manifest, "the stored features")


def test_versions_the_latest_run_names_and_the_store_lacks_are_missing_and_only_those():
    """``missing_latest_versions``: of the latest run with results (by finish, not by start, as the
    catalog picks it), each named version that is not present is one missing check (not removable),
    under the boxes asked for; an older run's versions (``prh gc --keep-runs`` removes those), a
    running run's, and a record that does not name its inputs give none."""
    from storage import layout
    from storage.verify import missing_latest_versions

    def record(run_id: str, started: str, finished: str | None, dataset: str, models: dict[str, str],
               alignments: list[str], status: str = "COMPLETED") -> dict:
        return {"run_id": run_id, "status": status, "started_at": started, "finished_at": finished,
                "dataset_version": dataset, "feature_versions": models, "alignment_versions": alignments}

    old_pair = layout.alignment_key("d0", "a", "b", "al-old")
    new_pair = layout.alignment_key("d1", "a", "b", "al-new")
    records = [
        record("older", "2026-01-01T00:00:00+00:00", "2026-01-01T00:05:00+00:00", "d0", {"a": "fa0", "b": "fb0"}, [old_pair]),
        # started before "older" was recorded, finished after it: the latest
        record("latest", "2025-12-31T23:00:00+00:00", "2026-01-02T00:00:00+00:00", "d1", {"a": "fa1", "b": "fb1"}, [new_pair]),
        record("running", "2026-01-03T00:00:00+00:00", None, "d2", {"a": "fa2"}, [], status="RUNNING"),
    ]
    present = {layout.dataset_key("d1"), layout.features_key("d1", "a", "fa1")}
    found = list(missing_latest_versions(records, present))
    assert [c.key for c in found] == sorted([layout.features_key("d1", "b", "fb1"), new_pair])
    assert all(c.missing and not c.removable and not c.ok and "named by run latest" in c.problems[0] for c in found)
    assert [c.key for c in missing_latest_versions(records, present, (layout.FEATURES,))] == [layout.features_key("d1", "b", "fb1")]
    unnamed = [{**r, "feature_versions": None} if r["run_id"] == "latest" else r for r in records]
    assert list(missing_latest_versions(unnamed, present)) == []
    assert list(missing_latest_versions([records[2]], set())) == []
