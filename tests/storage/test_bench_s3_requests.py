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
    assert counter.record_reads == 1  # a run record's GET: counted apart too
    assert counter.counts["PutObject"] >= 1, counter.counts
    before = dict(counter.counts)
    store.read_json("runs/bench-r1.json")  # after the block: no longer counted
    assert dict(counter.counts) == before
    assert [m["modality"] for m in module.tiny_zoo(3)] == ["vision", "language", "vision"]
    assert len({m["name"] for m in module.tiny_zoo(4)}) == 4


def test_the_history_seeded_is_a_record_a_day_before_the_template(tmp_path):
    """``--history N``: N copies of a run's record under their own ids, each a day earlier."""
    module = load_bench("bench_s3_requests")
    store = Store(str(tmp_path / "store"))
    template = {"run_id": "r", "flow_run_id": "r", "status": "COMPLETED", "started_at": "2026-03-02T00:00:00+00:00",
                "finished_at": "2026-03-02T01:00:00+00:00", "ordered_at": "2026-03-02T01:00:00+00:00"}
    module.seed_history(store, template, 2)
    first, second = (store.read_json(f"runs/history-000{day}.json") for day in (0, 1))
    assert first == {**template, "run_id": "history-0000", "flow_run_id": "history-0000",
                     "started_at": "2026-03-01T00:00:00+00:00", "finished_at": "2026-03-01T01:00:00+00:00",
                     "ordered_at": "2026-03-01T01:00:00+00:00"}
    assert second["run_id"] == "history-0001" and second["finished_at"] == "2026-02-28T01:00:00+00:00"
