"""What the store's reads cost in S3 requests (users' endpoints answer each in 10-50 ms): a small
file is one GET, not a HEAD (s3fs asking its size to split a large read) and then a GET, and a
version's manifest is one request whether it is published or not, not an existence check first."""

from __future__ import annotations

import numpy as np
import pytest

from storage import layout
from storage.features import layer_tables
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
