"""bench/bench_s3_requests.py counts what it says: every S3 request of the process by operation,
through aiobotocore's client (a private method that an upgrade could rename: this test would then
fail, not the bench print zeros), and only while its counter is installed."""

from __future__ import annotations

from storage.store import Store
from tests.bench_scripts import load_bench


def test_the_request_counter_counts_the_store_requests_by_operation(s3_store_url):
    module = load_bench("bench_s3_requests")
    store = Store(s3_store_url)
    with module.RequestCounter() as counter:
        store.write_json("runs/bench-r1.json", {"run_id": "bench-r1"})
        took, sent = module.timed_step(counter, lambda: store.read_json("runs/bench-r1.json"))
    assert sent == {"GetObject": 1} and took >= 0, sent
    assert counter.counts["PutObject"] >= 1, counter.counts
    before = dict(counter.counts)
    store.read_json("runs/bench-r1.json")  # after the block: no longer counted
    assert dict(counter.counts) == before
    assert [m["modality"] for m in module.tiny_zoo(3)] == ["vision", "language", "vision"]
    assert len({m["name"] for m in module.tiny_zoo(4)}) == 4
