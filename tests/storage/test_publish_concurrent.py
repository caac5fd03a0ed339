"""Two writers publishing one version at once end with one complete copy, not a mix."""

import hashlib
import json
import threading
import time

import pyarrow as pa
import pytest

from storage import store as store_module
from storage.store import CLAIM, HEARTBEAT_PREFIX, Store


def _files(writer: int) -> dict[str, pa.Table | bytes]:
    """Different content per writer, so that a mix would show in the hashes."""
    return {f"part-{i}.parquet": pa.table({"writer": [writer] * 2000, "i": list(range(2000))}) for i in range(4)} | {
        "blob.bin": bytes([writer]) * 100_000
    }


def _publish_at_once(url: str, n_writers: int = 2) -> list:
    barrier = threading.Barrier(n_writers)
    results: list = [None] * n_writers
    errors: list[BaseException] = []

    def work(writer: int) -> None:
        try:
            store = Store(url)
            barrier.wait()
            results[writer] = store.publish("features/d/m/v1", _files(writer), {"kind": "t", "writer": writer})
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(n_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_publish_leaves_one_complete_copy(store_url, round_):
    results = _publish_at_once(store_url, n_writers=3)
    store = Store(store_url)
    manifest = store.manifest("features/d/m/v1")
    assert sum(r.written for r in results) == 1
    assert all(r.manifest == manifest for r in results)
    winner = manifest["writer"]
    for name, entry in manifest["files"].items():
        data = store.read_bytes(f"features/d/m/v1/{name}")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    assert store.read_table("features/d/m/v1/part-3.parquet").column("writer")[0].as_py() == winner
    assert not store.exists(f"features/d/m/v1/{CLAIM}")


def test_stale_claim_is_taken_over(store_url):
    store = Store(store_url)
    store.write_bytes(f"x/v/{CLAIM}", b'{"owner": "dead", "claimed_at": 0}')
    published = store.publish("x/v", {"a.bin": b"1"}, {}, stale_after_s=60)
    assert published.written and store.read_bytes("x/v/a.bin") == b"1"
    assert not store.exists(f"x/v/{CLAIM}")


def test_create_exclusive(store_url):
    store = Store(store_url)
    assert store.create_exclusive("c/once", b"a")
    assert not store.create_exclusive("c/once", b"b")
    assert store.read_bytes("c/once") == b"a"


class _SlowStore(Store):
    """Each data file takes ``pause`` seconds to write: a publish longer than the staleness limit."""

    pause = 0.6

    def write_bytes(self, key: str, data: bytes) -> None:
        if not key.endswith((CLAIM, "manifest.json")) and HEARTBEAT_PREFIX not in key:  # data files only
            time.sleep(self.pause)
        super().write_bytes(key, data)


def test_a_slow_live_writer_keeps_its_claim_by_heartbeat(store_url):
    """A publish that outlasts ``stale_after_s`` renews its claim, so a second writer waits for
    it instead of taking over: one complete copy, the slow writer's."""
    slow, other = _SlowStore(store_url), Store(store_url)
    results: dict[str, object] = {}
    thread = threading.Thread(target=lambda: results.setdefault(
        "slow", slow.publish("x/v", _files(1), {"writer": 1}, stale_after_s=2.0)))
    thread.start()
    deadline = time.time() + 10
    while not other.exists(f"x/v/{CLAIM}") and time.time() < deadline:
        time.sleep(0.01)
    first = json.loads(other.read_bytes(f"x/v/{CLAIM}"))
    results["other"] = other.publish("x/v", _files(2), {"writer": 2}, stale_after_s=2.0)  # 5 files x 0.6 s > 2 s
    thread.join(30)
    assert results["slow"].written and not results["other"].written
    assert other.manifest("x/v")["writer"] == 1 and results["other"].manifest["writer"] == 1
    assert "heartbeat_at" not in first and not other.exists(f"x/v/{CLAIM}")
    assert not [p for p in other.fs.ls(other.path("x/v"), detail=False) if HEARTBEAT_PREFIX in p]  # removed with the claim


def test_a_writer_taken_over_stops_and_returns_the_new_writers_version(tmp_path, monkeypatch):
    """A writer that stalled, was judged dead and taken over: its heartbeat never rewrites the new
    claim, it writes no further file once it sees the takeover, and its publish returns the new
    writer's manifest (``written=False``).

    Each step waits on what the writer did, not on the clock: it stalls inside its first file's
    write until the takeover is done; it beats every 0.05 s while a claim goes stale only after
    60 s. (With a 0.4 s limit and a new writer beating from this thread, a loaded machine had let
    the new claim look stale: the stalled writer removed it.)"""
    monkeypatch.setattr(store_module, "CLAIM_HEARTBEAT_SECONDS", 0.05)
    writing, taken_over, waiting = threading.Event(), threading.Event(), threading.Event()
    seen_by_beats: list[str | None] = []  # the claim's owner as each of the stalled writer's beats read it

    class _StalledStore(Store):
        def write_bytes(self, key: str, data: bytes) -> None:
            if key.endswith("/a.bin"):
                writing.set()
                if not taken_over.wait(60):
                    raise TimeoutError("the test never took the claim over")
            super().write_bytes(key, data)

        def _claim_owner(self, claim_key: str) -> str | None:
            owner = super()._claim_owner(claim_key)
            if threading.current_thread().name.startswith("claim-heartbeat"):
                seen_by_beats.append(owner)
            return owner

        def _drop_if_stale(self, claim_key: str, stale_after_s: float) -> bool:
            waiting.set()  # its publish lost the claim and waits for the new writer's version
            return super()._drop_if_stale(claim_key, stale_after_s)

    store = _StalledStore(str(tmp_path / "store"))
    results: dict[str, object] = {}
    thread = threading.Thread(target=lambda: results.setdefault(
        "stalled", store.publish("x/v", {"a.bin": b"1", "b.bin": b"1", "c.bin": b"1"}, {"writer": 1}, stale_after_s=60.0)))
    thread.start()
    assert writing.wait(60)  # inside the first file's write, stalled
    foreign = json.dumps({"owner": "someone-else", "claimed_at": time.time(), "process": {"host": "elsewhere", "pid": 1}}).encode()
    new_writer = Store(str(tmp_path / "store"))
    new_writer.write_bytes(f"x/v/{CLAIM}", foreign)  # as if another writer had judged this one dead
    new_writer.write_bytes(f"x/v/{HEARTBEAT_PREFIX}someone-else", json.dumps({"heartbeat_at": time.time()}).encode())
    deadline = time.monotonic() + 60
    while "someone-else" not in seen_by_beats:  # a beat of the stalled writer read the new claim ...
        assert time.monotonic() < deadline, "the stalled writer's heartbeat never looked at its claim again"
        time.sleep(0.01)
    assert new_writer.read_bytes(f"x/v/{CLAIM}") == foreign  # ... and left it as it was
    assert seen_by_beats[-1] == "someone-else"  # and stopped beating once it saw the claim another's
    taken_over.set()  # the stalled write ends
    assert waiting.wait(60)  # it saw the takeover and waits
    assert new_writer.read_bytes(f"x/v/{CLAIM}") == foreign
    assert not new_writer.exists("x/v/b.bin") and not new_writer.exists("x/v/c.bin")  # nothing written after the takeover was seen
    for name in ("a.bin", "b.bin", "c.bin"):
        new_writer.write_bytes(f"x/v/{name}", b"2")
    new_writer.write_json("x/v/manifest.json", {"writer": 2, "key": "x/v", "files": {}})
    new_writer.delete(f"x/v/{CLAIM}")
    thread.join(60)
    assert results["stalled"].written is False and results["stalled"].manifest["writer"] == 2
    assert [new_writer.read_bytes(f"x/v/{n}") for n in ("a.bin", "b.bin", "c.bin")] == [b"2"] * 3
    assert not new_writer.exists(f"x/v/{CLAIM}")


def test_release_leaves_a_claim_taken_over_alone(tmp_path):
    store = Store(str(tmp_path / "store"))
    token = store_module._claim_token()
    assert store.create_exclusive(f"x/v/{CLAIM}", token)
    foreign = json.dumps({"owner": "someone-else", "claimed_at": time.time()}).encode()
    store.write_bytes(f"x/v/{CLAIM}", foreign)
    store._release(f"x/v/{CLAIM}", token)
    assert store.read_bytes(f"x/v/{CLAIM}") == foreign


def test_a_claim_is_alive_while_its_owner_beats(store_url):
    store = Store(store_url)
    claim = json.dumps({"owner": "w", "claimed_at": time.time() - 3600, "process": {"host": "elsewhere", "pid": 1}}).encode()
    store.write_bytes(f"x/v/{CLAIM}", claim)
    store.write_bytes(f"x/v/{HEARTBEAT_PREFIX}w", json.dumps({"heartbeat_at": time.time() - 5}).encode())
    store.write_bytes(f"x/v/{HEARTBEAT_PREFIX}other", json.dumps({"heartbeat_at": time.time()}).encode())
    assert not store._drop_if_stale(f"x/v/{CLAIM}", 60.0) and store.exists(f"x/v/{CLAIM}")
    store.write_bytes(f"x/v/{HEARTBEAT_PREFIX}w", json.dumps({"heartbeat_at": time.time() - 120}).encode())
    assert store._drop_if_stale(f"x/v/{CLAIM}", 60.0) and not store.exists(f"x/v/{CLAIM}")
    assert not store.exists(f"x/v/{HEARTBEAT_PREFIX}w")  # the dead owner's sign of life goes with its claim


def test_staleness_counts_from_the_last_heartbeat(store_url):
    store = Store(store_url)
    claim = lambda **times: json.dumps({"owner": "w", "process": {"host": "elsewhere", "pid": 1}, **times}).encode()  # noqa: E731
    store.write_bytes(f"x/v/{CLAIM}", claim(claimed_at=time.time() - 3600, heartbeat_at=time.time() - 5))
    assert not store._drop_if_stale(f"x/v/{CLAIM}", 60.0) and store.exists(f"x/v/{CLAIM}")
    store.write_bytes(f"x/v/{CLAIM}", claim(claimed_at=time.time() - 3600, heartbeat_at=time.time() - 120))
    assert store._drop_if_stale(f"x/v/{CLAIM}", 60.0) and not store.exists(f"x/v/{CLAIM}")


def test_an_owner_id_from_a_claim_file_never_names_another_path(tmp_path):
    """A claim file is data from elsewhere: an owner id with '/' or '..' is not made into a key."""
    store = Store(str(tmp_path / "store"))
    store.write_bytes("x/keep.bin", b"keep")
    claim = json.dumps({"owner": "../keep.bin", "claimed_at": time.time() - 3600, "process": {"host": "elsewhere", "pid": 1}}).encode()
    store.write_bytes(f"x/v/{CLAIM}", claim)
    assert store._drop_if_stale(f"x/v/{CLAIM}", 60.0) and not store.exists(f"x/v/{CLAIM}")  # stale: taken over
    assert store.read_bytes("x/keep.bin") == b"keep"  # and nothing else removed


def test_a_stalled_writer_never_replaces_the_manifest_of_the_writer_that_took_over(store_url, monkeypatch):
    """A writer that passed its last claim check, stalled, and wrote its manifest after another
    writer had taken over and published: its manifest replaced the new one, listing files the
    folder no longer held (prh verify: DAMAGED). A manifest is now created only if absent: the
    stalled writer returns the new writer's version."""
    store = Store(store_url)
    real_check = store_module._Heartbeat.check
    calls = []

    def check_then_stall(beat):  # the check before the manifest passes; then the other writer takes over and publishes
        real_check(beat)
        calls.append(1)
        if len(calls) == 3:  # a.bin, b.bin, then the manifest's
            other = Store(store_url)
            other.write_bytes(f"x/v/{CLAIM}", _foreign_claim())
            other.delete("x/v/b.bin")
            other.write_bytes("x/v/a.bin", b"2")
            other.write_json("x/v/manifest.json", {"writer": 2, "key": "x/v",
                                                   "files": {"a.bin": {"bytes": 1, "sha256": hashlib.sha256(b"2").hexdigest()}}})

    monkeypatch.setattr(store_module._Heartbeat, "check", check_then_stall)
    result = store.publish("x/v", {"a.bin": b"1", "b.bin": b"1"}, {"writer": 1})
    assert result.written is False and result.manifest["writer"] == 2
    assert Store(store_url).manifest("x/v")["writer"] == 2 and Store(store_url).read_bytes("x/v/a.bin") == b"2"


def test_a_stalled_writer_never_removes_a_published_versions_files(store_url):
    """A writer that took over a dead writer's claim lists the leftovers to remove them; if it
    stalls there and is taken over in turn, the writer after it publishes. Resumed, it removed
    the published files it had listed (and could remove the manifest too). Its removal stops at
    a lost claim, and never touches a folder that holds a manifest."""
    store = Store(store_url)
    store.publish("x/v", {"a.bin": b"2", "b.bin": b"2"}, {"writer": 2})
    store._remove_unpublished_files("x/v", "someone")  # a manifest: a published version, nothing removed
    assert store.manifest("x/v")["writer"] == 2 and store.read_bytes("x/v/a.bin") == b"2"
    store.write_bytes("y/v/a.bin", b"leftover")
    store.write_bytes("y/v/b.bin", b"leftover")

    def lost() -> None:
        raise store_module._ClaimLost("y/v/.publishing")

    with pytest.raises(store_module._ClaimLost):
        store._remove_unpublished_files("y/v", "someone", lost)
    assert store.exists("y/v/a.bin") and store.exists("y/v/b.bin")  # taken over: not one file removed
    store._remove_unpublished_files("y/v", "someone")
    assert not store.exists("y/v/a.bin") and not store.exists("y/v/b.bin")


def _foreign_claim() -> bytes:
    return json.dumps({"owner": "someone-else", "claimed_at": time.time(), "process": {"host": "elsewhere", "pid": 1}}).encode()


def test_the_claim_holder_replaces_a_manifest_a_stalled_writer_landed_meanwhile(store_url, monkeypatch):
    """A writer that passed its last check before its manifest, stalled, and was taken over,
    landed its manifest while the new holder was still writing (none existed yet): it listed the
    files the holder then replaced. The holder, whose claim it still is, publishes its own."""
    store = Store(store_url)
    real_check = store_module._Heartbeat.check
    calls = []

    def stalled_writer_lands_its_manifest(beat):
        real_check(beat)
        calls.append(1)
        if len(calls) == 2:  # after a.bin, before b.bin: the stalled writer's manifest appears
            Store(store_url).write_json("features/d/m/v/manifest.json", {"writer": 1, "key": "features/d/m/v", "files": {
                "a.bin": {"bytes": 1, "sha256": hashlib.sha256(b"1").hexdigest()}}})

    monkeypatch.setattr(store_module._Heartbeat, "check", stalled_writer_lands_its_manifest)
    result = store.publish("features/d/m/v", {"a.bin": b"2", "b.bin": b"2"}, {"writer": 2})
    assert result.written and Store(store_url).manifest("features/d/m/v")["writer"] == 2
    from storage.verify import verify_store

    assert [c.problems for c in verify_store(Store(store_url))] == [[]]


def test_a_writer_taken_over_leaves_the_new_writers_files_when_its_write_fails(store_url, monkeypatch):
    """Cut off past the limit and taken over, a writer's next write fails when the network comes
    back; its clean-up removed every file in the folder but its own claim: the new writer's data
    files, which the new writer's manifest then listed as present."""
    store = Store(store_url)
    real_write = Store.write_bytes

    def write_bytes(self, key, data):
        if key == "x/v/b.bin":
            other = Store(store_url)
            other.write_bytes(f"x/v/{CLAIM}", _foreign_claim())
            real_write(other, "x/v/a.bin", b"new writer")
            raise OSError(104, "Connection reset by peer")
        return real_write(self, key, data)

    monkeypatch.setattr(Store, "write_bytes", write_bytes)
    with pytest.raises(OSError):
        store.publish("x/v", {"a.bin": b"old", "b.bin": b"old"}, {"writer": 1})
    monkeypatch.setattr(Store, "write_bytes", real_write)
    assert Store(store_url).read_bytes("x/v/a.bin") == b"new writer" and Store(store_url).exists(f"x/v/{CLAIM}")


def test_gc_stalled_past_the_limit_removes_nothing_of_the_writer_that_took_over(store_url, monkeypatch):
    """prh gc removing a dead writer's leftovers (sweep) or a version (--keep-runs, --remove-damaged)
    holds the claim without a sign of life: stalled past the limit, it was taken over, and on
    resuming it removed the files it had listed, the new writer's. It beats and checks now."""
    store = Store(store_url)
    store.write_json(f"y/v/{CLAIM}", {"owner": "dead", "claimed_at": 0, "process": {"host": "elsewhere", "pid": 1}})
    store.write_bytes("y/v/a.bin", b"dead writer's")
    real_has_manifest = Store.has_manifest_file

    def taken_over_meanwhile(self, key):
        other = Store(store_url)
        other.write_bytes(f"{key}/{CLAIM}", _foreign_claim())
        other.write_bytes(f"{key}/a.bin", b"new writer")
        return real_has_manifest(self, key)

    monkeypatch.setattr(Store, "has_manifest_file", taken_over_meanwhile)
    assert store.sweep_abandoned(("y",), stale_after_s=1.0) == []
    assert Store(store_url).read_bytes("y/v/a.bin") == b"new writer"
    assert json.loads(Store(store_url).read_bytes(f"y/v/{CLAIM}"))["owner"] == "someone-else"
    monkeypatch.setattr(Store, "has_manifest_file", real_has_manifest)

    store.publish("z/v", {"a.bin": b"1"}, {"writer": 1})
    real_sizes = Store.sizes

    def republished_meanwhile(self, prefix):
        if prefix == "z/v":
            other = Store(store_url)
            other.write_bytes(f"z/v/{CLAIM}", _foreign_claim())
            other.write_bytes("z/v/a.bin", b"2")
        return real_sizes(self, prefix)

    monkeypatch.setattr(Store, "sizes", republished_meanwhile)
    assert store.unpublish("z/v") is False
    monkeypatch.setattr(Store, "sizes", real_sizes)
    assert Store(store_url).read_bytes("z/v/a.bin") == b"2"


def test_a_stalled_writers_manifest_that_lands_after_the_holder_left_is_taken_back(store_url, monkeypatch):
    """A writer passed its last check, stalled, and was taken over by gc's sweep (or a run whose
    write then failed), which removed its files and left; its manifest then landed over missing
    files, for good. After its manifest lands a writer checks its claim again: lost, it removes
    its manifest and publishes the version again, whole."""
    from storage.verify import verify_store

    store = Store(store_url)
    real_create = Store.create_exclusive
    swept = []

    def create_exclusive(self, key, data):
        if key.endswith("/manifest.json") and not swept:  # the holder after us came, removed our files, left
            swept.append(key)
            other = Store(store_url)
            other.write_bytes("features/d/m/v/.publishing", _foreign_claim())
            other.delete("features/d/m/v/a.bin")
            other.delete("features/d/m/v/.publishing")
        return real_create(self, key, data)

    monkeypatch.setattr(Store, "create_exclusive", create_exclusive)
    result = store.publish("features/d/m/v", {"a.bin": b"1", "b.bin": b"1"}, {"writer": 1})
    assert swept and result.written
    assert [c.problems for c in verify_store(Store(store_url))] == [[]]


def test_gc_stalled_inside_its_removal_loses_at_most_the_removal_in_flight(tmp_path, monkeypatch):
    """unpublish checked its claim once and then removed every listed file: a gc stalled there
    and taken over removed all of the new writer's files. It checks before each removal (on S3
    before each batch of 1,000: one request in flight), and says it removed nothing."""
    from storage.verify import verify_store

    url = str(tmp_path / "store")
    store = Store(url)
    store.publish("features/d/m/v", {"a.bin": b"1", "b.bin": b"1", "c.bin": b"1"}, {"writer": 1})
    real_rm, calls = store.fs.rm, []

    def rm(paths, *args, **kwargs):
        calls.append(paths)
        if len(calls) == 1:  # stalled inside the first removal; the version is published again meanwhile
            Store(url).publish("features/d/m/v", {"a.bin": b"2", "b.bin": b"2", "c.bin": b"2"}, {"writer": 2}, stale_after_s=0.0)
        return real_rm(paths, *args, **kwargs)

    monkeypatch.setattr(store.fs, "rm", rm)
    assert store.unpublish("features/d/m/v") is False
    problems = [c.problems for c in verify_store(Store(url))]
    assert len(calls) == 1 and len(problems) == 1 and len(problems[0]) == 1 and problems[0][0].endswith(": missing")


@pytest.mark.parametrize("claim", [b"", b'{"owner": "w", "claimed', b"[]", b'{"owner": "w"}', b'{"owner": "w", "claimed_at": "today"}',
                                   b'{"owner": "w", "claimed_at": NaN}', b'{"owner": "w", "claimed_at": 1e300}'],
                         ids=["empty", "cut short", "a list", "no time", "time as text", "NaN", "far ahead"])
def test_a_claim_that_does_not_read_is_judged_by_its_age(tmp_path, claim):
    """A claim file that is not one publish writes (emptied or cut by a partial copy or sync, edited,
    a time far ahead) was never stale: a publish of its version waited for ever and gc never swept
    its folder. It is now judged by when it (or a sign of life beside it) was last written."""
    import os

    store = Store(str(tmp_path / "store"))
    store.write_bytes(f"x/v/{CLAIM}", claim)
    assert not store._drop_if_stale(f"x/v/{CLAIM}", 60.0) and store.exists(f"x/v/{CLAIM}")  # fresh: may be a writer's
    store.write_bytes(f"x/v/{HEARTBEAT_PREFIX}w", b"{}")
    old = time.time() - 3600
    os.utime(store.path(f"x/v/{CLAIM}"), (old, old))
    assert not store._drop_if_stale(f"x/v/{CLAIM}", 60.0)  # a sign of life beside it, written just now
    os.utime(store.path(f"x/v/{HEARTBEAT_PREFIX}w"), (old, old))
    store.write_bytes("x/v/left.bin", b"a dead writer's")
    assert store.sweep_abandoned(("x",), stale_after_s=60.0, dry_run=True) == ["x/v"]
    done: list = []
    worker = threading.Thread(target=lambda: done.append(store.publish("x/v", {"a.bin": b"1"}, {}, stale_after_s=60.0)),
                              daemon=True)
    worker.start()
    worker.join(20)
    assert done and done[0].written and store.read_bytes("x/v/a.bin") == b"1"
    assert not store.exists(f"x/v/{CLAIM}") and not store.exists("x/v/left.bin")


def test_a_sign_of_life_far_ahead_is_judged_by_when_it_was_written(tmp_path):
    """A claim whose sign of life says a time far ahead (edited, a writer's clock years off) stood
    for ever; it is judged by when the files were last written: fresh, live; silent, stale."""
    import os

    store = Store(str(tmp_path / "store"))
    old = time.time() - 3600
    store.write_bytes(f"x/v/{CLAIM}", json.dumps({"owner": "w", "claimed_at": old}).encode())
    store.write_bytes(f"x/v/{HEARTBEAT_PREFIX}w", json.dumps({"heartbeat_at": time.time() + 10**6}).encode())
    os.utime(store.path(f"x/v/{CLAIM}"), (old, old))
    assert not store._drop_if_stale(f"x/v/{CLAIM}", 60.0)  # the sign of life was just written
    os.utime(store.path(f"x/v/{HEARTBEAT_PREFIX}w"), (old, old))
    assert store._drop_if_stale(f"x/v/{CLAIM}", 60.0)
