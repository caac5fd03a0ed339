"""Two writers publishing one version at once end with one complete copy, not a mix."""

import hashlib
import threading

import pyarrow as pa
import pytest

from storage.store import CLAIM, Store


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
