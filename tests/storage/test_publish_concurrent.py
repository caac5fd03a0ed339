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
        "slow", slow.publish("x/v", _files(1), {"writer": 1}, stale_after_s=1.0)))
    thread.start()
    deadline = time.time() + 10
    while not other.exists(f"x/v/{CLAIM}") and time.time() < deadline:
        time.sleep(0.01)
    first = json.loads(other.read_bytes(f"x/v/{CLAIM}"))
    results["other"] = other.publish("x/v", _files(2), {"writer": 2}, stale_after_s=1.0)  # 5 files x 0.6 s > 1 s
    thread.join(30)
    assert results["slow"].written and not results["other"].written
    assert other.manifest("x/v")["writer"] == 1 and results["other"].manifest["writer"] == 1
    assert "heartbeat_at" not in first and not other.exists(f"x/v/{CLAIM}")
    assert not [p for p in other.fs.ls(other.path("x/v"), detail=False) if HEARTBEAT_PREFIX in p]  # removed with the claim


def test_a_writer_taken_over_stops_and_returns_the_new_writers_version(tmp_path):
    """A writer that stalled, was judged dead and taken over: its heartbeat never rewrites the new
    claim, it writes no further file once it sees the takeover, and its publish returns the new
    writer's manifest (``written=False``)."""
    store = _SlowStore(str(tmp_path / "store"))
    results: dict[str, object] = {}
    thread = threading.Thread(target=lambda: results.setdefault(
        "stalled", store.publish("x/v", {"a.bin": b"1", "b.bin": b"1", "c.bin": b"1"}, {"writer": 1}, stale_after_s=0.4)))
    thread.start()
    time.sleep(0.3)  # inside the first file's (slow) write
    foreign = json.dumps({"owner": "someone-else", "claimed_at": time.time(), "process": {"host": "elsewhere", "pid": 1}}).encode()
    new_writer = Store(str(tmp_path / "store"))
    new_writer.write_bytes(f"x/v/{CLAIM}", foreign)  # as if another writer had judged this one dead
    for _ in range(10):  # the new writer is alive: its own heartbeat, several of the stalled writer's beats (0.1 s)
        new_writer.write_bytes(f"x/v/{HEARTBEAT_PREFIX}someone-else", json.dumps({"heartbeat_at": time.time()}).encode())
        time.sleep(0.1)
        assert new_writer.read_bytes(f"x/v/{CLAIM}") == foreign
    assert not new_writer.exists("x/v/b.bin") and not new_writer.exists("x/v/c.bin")  # nothing written after the takeover was seen
    for name in ("a.bin", "b.bin", "c.bin"):
        new_writer.write_bytes(f"x/v/{name}", b"2")
    new_writer.write_json("x/v/manifest.json", {"writer": 2, "key": "x/v", "files": {}})
    new_writer.delete(f"x/v/{CLAIM}")
    thread.join(30)
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

    def check_then_stall(beat):  # the check before the manifest passes; then the other writer publishes
        real_check(beat)
        calls.append(1)
        if len(calls) == 3:  # a.bin, b.bin, then the manifest's
            other = Store(store_url)
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
