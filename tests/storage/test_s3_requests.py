"""What the store's reads cost in S3 requests (users' endpoints answer each in 10-50 ms): a small
file is one GET, not a HEAD (s3fs asking its size to split a large read) and then a GET, and a
version's manifest is one request whether it is published or not, not an existence check first."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from storage import layout
from storage.features import layer_tables
from storage.owner import current_owner
from storage.runs import CRASHED, RUNNING, run_records
from storage.store import Store
from tests.storage.s3_fault_proxy import FaultProxy


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    """A proxy in front of the moto server, without faults: it counts the requests."""
    with FaultProxy(s3_endpoint) as p:
        yield p


def _sent(proxy: FaultProxy, read) -> tuple[object, dict[str, int]]:
    """What ``read()`` returns, and the requests it sent by method."""
    before = dict(proxy.methods)
    result = read()
    return result, {m: n - before.get(m, 0) for m, n in proxy.methods.items() if n - before.get(m, 0)}


def test_a_manifest_and_a_record_are_read_with_one_get_each(s3_store_url, proxy):
    key = layout.features_key("ds0123456789abcd", "vit", "fv0123456789abcd")
    writer = Store(s3_store_url)
    writer.publish(key, layer_tables("vit", "fv0123456789abcd", ["s0", "s1"], [np.ones((2, 3), np.float32)]),
                   {"kind": "features", "catalog": {"model": "vit", "feature_version": "fv0123456789abcd"}})
    writer.write_json("runs/r1.json", {"run_id": "r1"})
    store = Store(s3_store_url, {"endpoint_url": proxy.url, "skip_instance_cache": True})
    manifest, sent = _sent(proxy, lambda: store.manifest(key))
    assert manifest["key"] == key and sent == {"GET": 1}
    missing, sent = _sent(proxy, lambda: store.manifest(key.replace("fv0123456789abcd", "fv00000000000000")))
    assert missing is None and sent == {"GET": 1}  # a 404: not published
    record, sent = _sent(proxy, lambda: store.read_json("runs/r1.json"))
    assert record == {"run_id": "r1"} and sent == {"GET": 1}
    found, sent = _sent(proxy, lambda: list(store.manifests(layout.FEATURES)))
    assert [k for k, _ in found] == [key] and sent == {"LIST": 1, "GET": 1}, sent  # one listing, one read
    # a data file is read as s3fs reads a large file (its size first, then concurrent ranges; an
    # s3fs older than 2026.3, which pyproject admits, reads any file with one GET)
    data, sent = _sent(proxy, lambda: store.read_bytes(f"{key}/layer-000.parquet", large=True))
    splits = _s3fs_version() >= (2026, 3)
    assert data == writer.read_bytes(f"{key}/layer-000.parquet") and sent == ({"HEAD": 1, "GET": 1} if splits else {"GET": 1})


def test_the_manifests_of_one_version_in_every_model_folder_are_found_with_one_listing(s3_store_url, proxy):
    """``features/<dataset>/*/<version>`` (``tasks.feature_copy.published_elsewhere``, at every
    model a run extracts; ``*`` for a model's or a pair's versions: ``tasks.version_reasons``):
    the glob had listed each model folder and each version folder apart, 1 + M + M·V requests;
    one recursive listing finds them, whatever the number of folders."""
    from storage.store_urls import escape_glob

    writer = Store(s3_store_url)
    dataset, versions = "ds0123456789abcd", ["fv0000000000000a", "fv0000000000000b"]
    for model in ("m1", "m2", "m3"):
        for version in versions:
            writer.publish(layout.features_key(dataset, model, version),
                           layer_tables(model, version, ["s0"], [np.ones((1, 2), np.float32)]),
                           {"kind": "features", "catalog": {"model": model, "feature_version": version}})
    store = Store(s3_store_url, {"endpoint_url": proxy.url, "skip_instance_cache": True})
    found, sent = _sent(proxy, lambda: list(store.manifests(f"features/{dataset}", folders=f"*/{escape_glob(versions[1])}")))
    assert [k.split("/")[2] for k, _ in found] == ["m1", "m2", "m3"] and sent == {"LIST": 1, "GET": 3}, sent
    found, sent = _sent(proxy, lambda: list(store.manifests(f"features/{dataset}/m2", folders="*")))
    assert [k.rsplit("/", 1)[1] for k, _ in found] == versions and sent == {"LIST": 1, "GET": 2}, sent
    assert list(store.manifests(f"features/{dataset}/m4", folders="*")) == []
    assert list(Store("s3://prh-no-such-bucket/store").manifests("features", folders="*")) == []


def _s3fs_version() -> tuple[int, int]:
    """The installed s3fs's (year, month): pyproject admits 2024.12 and later."""
    import s3fs

    year, month = s3fs.__version__.split(".")[:2]
    return int(year), int(month)


def test_the_one_get_option_is_passed_only_to_an_s3fs_that_takes_it(s3_endpoint):
    """``max_concurrency=1`` keeps s3fs (2026.3 and later) from asking a file's size before reading
    it; an older s3fs (pyproject allows 2024.12) has no such option and sends one GET anyway: the
    option given to it would fail every read (TypeError)."""
    import fsspec
    import s3fs

    from storage.store import _one_get_options

    class OlderS3(s3fs.S3FileSystem):
        async def _cat_file(self, path, version_id=None, start=None, end=None):  # 2024.12's signature
            return await super()._cat_file(path, version_id=version_id, start=start, end=end)

    installed = {"max_concurrency": 1} if _s3fs_version() >= (2026, 3) else {}
    assert _one_get_options(s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)) == installed
    assert _one_get_options(OlderS3(endpoint_url=s3_endpoint, skip_instance_cache=True)) == {}
    assert _one_get_options(fsspec.filesystem("file")) == {}


def test_a_folder_is_listed_with_one_request(s3_store_url, proxy, tmp_path):
    """``Store.listing`` (the catalog lists each box with it at every ``connect``, each reused
    version's files are checked with it at every rerun): one LIST, not an existence check (HEAD,
    LIST) first; a missing folder (s3fs then asks whether the path is a file: 3 requests, one
    more than the check alone was), or a missing bucket, lists nothing, on S3 as on a local disk."""
    key = layout.features_key("ds0123456789abcd", "vit", "fv0123456789abcd")
    Store(s3_store_url).publish(key, layer_tables("vit", "fv0123456789abcd", ["s0"], [np.ones((1, 3), np.float32)]),
                                {"kind": "features", "catalog": {"model": "vit", "feature_version": "fv0123456789abcd"}})
    store = Store(s3_store_url, {"endpoint_url": proxy.url, "skip_instance_cache": True})
    listed, sent = _sent(proxy, lambda: store.listing(key))
    assert sorted(listed) == [f"{key}/layer-000.parquet", f"{key}/manifest.json"] and sent == {"LIST": 1}, sent
    assert listed[f"{key}/layer-000.parquet"]["size"] > 0
    missing, sent = _sent(proxy, lambda: store.listing("features/ds-none"))
    assert missing == {} and sent == {"LIST": 2, "HEAD": 1}, sent
    assert Store("s3://prh-no-such-bucket/store").listing("features") == {}
    local = Store(str(tmp_path / "store"))
    assert local.listing("features") == {}
    local.write_json("features/a/b.json", {"x": 1})
    assert list(local.listing("features")) == ["features/a/b.json"]


def test_a_folder_s_entries_are_one_listing_read_afresh(s3_store_url, proxy, tmp_path):
    """``Store.entries`` lists a folder with one LIST, not an existence check (HEAD, LIST) first:
    the run records' folders, listed with it at every run start and catalog ``connect``, had been
    an existence check and a glob (four requests more) each. Read afresh, also where the user
    turned s3fs's listings cache on: a record another process wrote since is listed. A missing
    folder or bucket holds nothing, on S3 as on a local disk; a missing folder is one LIST too
    (s3fs's ``ls`` lists its parent after it, every page: ``runs/extractions`` beside 2,500 run
    records had cost 4 requests)."""
    Store(s3_store_url).write_json("runs/r1.json", {"run_id": "r1"})
    store = Store(s3_store_url, {"endpoint_url": proxy.url, "skip_instance_cache": True, "use_listings_cache": True})
    found, sent = _sent(proxy, lambda: store.entries("runs"))
    assert [(e["key"], e["type"]) for e in found] == [("runs/r1.json", "file")] and sent == {"LIST": 1}, sent
    Store(s3_store_url).write_json("runs/r2.json", {"run_id": "r2"})  # another writer (its own client)
    assert [e["key"] for e in store.entries("runs")] == ["runs/r1.json", "runs/r2.json"]
    missing, sent = _sent(proxy, lambda: store.entries("runs/extractions"))
    assert missing == [] and sent == {"LIST": 1}, sent
    assert Store("s3://prh-no-such-bucket/store").entries("runs") == []
    assert run_records(Store("s3://prh-no-such-bucket/store")) == [] and run_records(store, "runs/extractions") == []
    local = Store(str(tmp_path / "store"))
    assert local.entries("runs") == [] and run_records(local) == []
    local.write_json("runs/r1.json", {"run_id": "r1"})
    local.entries("runs")
    local.write_json("runs/r2.json", {"run_id": "r2"})
    assert sorted(e["key"] for e in local.entries("runs")) == ["runs/r1.json", "runs/r2.json"]


#: a GET of a pipeline run's record (``runs/<run_id>.json``), as the proxy sees its target
RECORD_GET = r"/runs/[^/?]+\.json($|\?)"


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_start_reads_each_run_record_once(s3_store_url, proxy, monkeypatch):
    """A store that ran nightly holds a record per run, and every run start read each of them
    twice (marking dead runs ``CRASHED``, then placing the run after the latest one), one GET each
    on S3: 20 earlier runs cost 42 GETs. The start now places the run after the records it read to
    mark dead runs, as marking left them: 20 reads, the dead run's record read again before it is
    marked, and the run's own (a first attempt: none). What both steps promise still holds: the
    dead run is marked, and the new run is placed after a run dated ahead by its host's clock."""
    from flows.pipeline import prh_pipeline
    from tasks.params import PipelineConfig
    from tests.flows.test_pipeline import TINY_BERT, TINY_VIT

    writer = Store(s3_store_url)
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    for day in range(18):
        finished = f"2025-01-{day + 1:02d}T01:00:00+00:00"
        writer.write_json(layout.run_key(f"night-{day:02d}"), {"run_id": f"night-{day:02d}", "status": "COMPLETED",
                                                              "finished_at": finished, "ordered_at": finished})
    writer.write_json(layout.run_key("ahead"), {"run_id": "ahead", "status": "COMPLETED",
                                                "finished_at": "2099-01-01T01:00:00+00:00"})  # a clock years ahead
    writer.write_json(layout.run_key("dead"), {"run_id": "dead", "status": RUNNING,
                                               "process": {**current_owner(), "pid": dead_pid, "started": "0"}})
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    reads = proxy.delay(0.0, methods={"GET"}, path=RECORD_GET)  # counts them, delays nothing
    try:
        config = PipelineConfig.model_validate({"dataset": {"kind": "openmoji", "n": 24, "seed": 0, "image_size": 32},
                                                "models": [TINY_VIT, TINY_BERT]})
        state = prh_pipeline(config=config, store=s3_store_url, report=False, dataset_version="0" * 16,
                             return_state=True)
    finally:
        proxy.clear()
    assert state.is_failed()  # its dataset version is not stored: it fails once started
    assert reads.fired <= 20 + 2, f"{reads.fired} GETs of run records for a run start with 20 earlier runs"
    records = {r["run_id"]: r for r in run_records(writer)}
    assert records["dead"]["status"] == CRASHED
    new = records[str(state.state_details.flow_run_id)]  # the run's id: its flow run's
    assert new["status"] == "FAILED" and new["ordered_at"] == "2099-01-01T01:00:00.000001+00:00", new


def test_the_report_at_a_run_s_end_reads_no_run_record(s3_store_url, proxy):
    """The report written at a run's end (``load_report_input`` given the run's record, as
    ``flows.report.publish_report_artifact`` calls it) had opened the whole catalog, whose ``runs``
    view read every run record of the store once more: one GET each, a year of nightly runs 365
    GETs at the end of every run, though the report queries none of them. It now reads none, and
    its requests do not grow with the store's history; `prh report`, which chooses a run among
    them, still reads them all."""
    from tasks.report_source import load_report_input
    from tests.storage.catalog_store import build_catalog_store

    writer = build_catalog_store(s3_store_url)
    record = writer.read_json(layout.run_key("run-1"))

    def report_requests() -> tuple[int, dict[str, int]]:
        store = Store(s3_store_url, {"endpoint_url": proxy.url, "skip_instance_cache": True})
        reads = proxy.delay(0.0, methods={"GET"}, path=RECORD_GET)  # counts them, delays nothing
        try:
            data, sent = _sent(proxy, lambda: load_report_input(store, record=record))
        finally:
            proxy.clear()
        assert data.run["run_id"] == "run-1" and data.best.num_rows == 8 and data.examples is not None
        return reads.fired, sent

    record_reads, sent = report_requests()
    for night in range(40):  # the store's history grows: the report's requests do not
        writer.write_json(layout.run_key(f"night-{night:02d}"), {**record, "run_id": f"night-{night:02d}"})
    grown_reads, grown = report_requests()
    assert record_reads == grown_reads == 0, (record_reads, grown_reads)
    # the same requests but for the number of GETs, which DuckDB's Parquet reads through s3fs split
    # into ranges as its threads go (two reads of one store under load: 60 and 74); the run records'
    # GETs are counted on their own above
    assert {m: n for m, n in grown.items() if m != "GET"} == {m: n for m, n in sent.items() if m != "GET"}, (sent, grown)
    chosen = load_report_input(Store(s3_store_url, {"endpoint_url": proxy.url, "skip_instance_cache": True}),
                               run_id="night-39")  # `prh report --run`: the history is read
    assert chosen.run["run_id"] == "night-39"


def test_the_closing_table_reads_each_pair_s_best_rows_with_one_get(s3_store_url, proxy):
    """The closing table of a run (and its artifacts) shows the best rows of every pair of its grid:
    each pair's ``best.parquet`` had been opened and read in turn, a HEAD and a GET each, one after
    the other (a nightly run of a 600-pair zoo: 1,200 round trips at its end). Now one GET per
    pair, fetched together, and no HEAD however many pairs; the rows are the files' own, in the
    grid's order."""
    import pyarrow.parquet as pq

    from flows.pipeline import best_rows
    from tests.storage.catalog_store import build_catalog_store

    writer = build_catalog_store(s3_store_url)
    keys = writer.read_json(layout.run_key("run-1"))["alignment_versions"]
    store = Store(s3_store_url, {"endpoint_url": proxy.url, "skip_instance_cache": True})
    rows, sent = _sent(proxy, lambda: best_rows(store, [{"key": key} for key in keys]))
    assert sent == {"GET": len(keys)}, sent
    expected = [row for key in keys for row in pq.read_table(writer.fs.open(writer.path(f"{key}/{layout.BEST_FILE}"))).to_pylist()]
    assert len(rows) == 2 * len(keys) == 8 and rows == expected
    assert [(r["model_a"], r["model_b"]) for r in rows[::2]] == [tuple(k.split("/")[2].split("__")) for k in keys]
    writer.delete(f"{keys[1]}/{layout.BEST_FILE}")
    with pytest.raises(FileNotFoundError, match=f"{keys[1]}/best.parquet in store .* is gone"):
        best_rows(store, [{"key": key} for key in keys])
