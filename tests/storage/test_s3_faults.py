"""The S3 endpoint fails: 500/503 bursts, slow responses, connection resets, an endpoint that
restarts, a read-only bucket. A fault-injecting proxy (``s3_fault_proxy``) sits between the real
store API and a real moto server on loopback.

Retries must ride out what they can (same bytes back); what they cannot must fail with a clear
error, leave no manifest for a version whose files did not all land, and let a later publish of
that version succeed. Every fault a test relies on is counted by the proxy and asserted, so a
proxy that silently injected nothing would fail the test.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import re
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiobotocore
import botocore
import numpy as np
import pyarrow as pa
import pytest
import s3fs

from storage.catalog import connect, query
from storage.features import layer_tables
from storage.pairing import paired_features
from storage.s3_options import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_MODE,
    describe_s3_error,
    redact_text,
    s3_config_kwargs,
    s3fs_retries,
    with_s3_defaults,
)
from storage.store import CLAIM, MANIFEST, Store, table_to_parquet_bytes
from storage.store_errors import ConditionalWritesIgnored, EndpointLacksFeature, NotAnS3Endpoint, StoreNotWritable
from tasks.retries import is_transient
from tests.flows.test_pipeline import TINY_BERT, TINY_VIT
from tests.storage.s3_fault_proxy import FaultProxy

N_SAMPLES = 64
N_LAYERS = 3
#: Totals over the module, printed at the end (``pytest -s``) for docs/reliability.md.
TALLY: Counter[str] = Counter()


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    """One proxy in front of the session's moto server for the whole module."""
    with FaultProxy(s3_endpoint, seed=7) as p:
        yield p
    print(f"\nfault proxy totals: {dict(sorted(TALLY.items()))}")


@pytest.fixture
def faults(proxy):
    """The proxy with no rules, up, its counts at zero and its generator seeded (each test sees
    the same faults whatever ran before); its counts are added to ``TALLY`` afterwards."""
    _heal(proxy)
    proxy.counts.clear()
    proxy.reseed(7)
    yield proxy
    _heal(proxy)
    TALLY.update(proxy.counts)


def _heal(proxy: FaultProxy) -> None:
    proxy.clear()
    if not proxy.is_up:
        proxy.restart()


def _store(url: str, proxy: FaultProxy, **config) -> Store:
    """The store at ``url`` reached through the proxy (its own S3 client: no shared retry quota)."""
    options = {"endpoint_url": proxy.url, "skip_instance_cache": True}
    if config:
        options["config_kwargs"] = config
    return Store(url, options)


def _feature_files(model: str, seed: int) -> tuple[dict[str, pa.Table | bytes], list[np.ndarray], list[str]]:
    """A features version: ``N_LAYERS`` layer tables ``(64, 16..)`` plus a 300 kB blob."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:03d}" for i in rng.permutation(N_SAMPLES)]
    layers = [rng.standard_normal((N_SAMPLES, 16 + 8 * i)).astype(np.float32) for i in range(N_LAYERS)]
    files: dict[str, pa.Table | bytes] = dict(layer_tables(model, "fv", ids, layers))
    files["blob.bin"] = rng.bytes(300_000)
    return files, layers, ids


def _manifest(model: str) -> dict:
    return {"kind": "features", "catalog": {"model": model, "n_layers": N_LAYERS, "feature_version": "fv"}}


def _expected_bytes(files: dict[str, pa.Table | bytes]) -> dict[str, bytes]:
    return {name: table_to_parquet_bytes(c) if isinstance(c, pa.Table) else c for name, c in files.items()}


def _assert_published_exactly(store: Store, key: str, files: dict[str, pa.Table | bytes]) -> None:
    """The version's manifest lists every file, and every file reads back byte for byte."""
    manifest = store.manifest(key)
    assert manifest is not None, f"no manifest for {key}"
    expected = _expected_bytes(files)
    assert set(manifest["files"]) == set(expected)
    for name, data in expected.items():
        got = store.read_bytes(f"{key}/{name}")
        assert got == data, f"{key}/{name} differs"
        assert manifest["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not store.exists(f"{key}/{CLAIM}")


def _secrets() -> list[str]:
    return [os.environ[k] for k in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID") if os.environ.get(k)]


def _assert_no_secret(error: BaseException) -> str:
    """The whole traceback text (causes included) of ``error`` holds no credential; returns it."""
    text = "".join(traceback.format_exception(error))
    for secret in _secrets():
        assert secret not in text
    return text


def _publish_in_thread(store: Store, key: str, files, manifest, ceiling_s: float = 120.0) -> tuple[list, int]:
    """Run ``store.publish`` in a thread until it returns or is seen waiting for a claim it takes
    for another writer's: its exclusive create of the version's claim refused a second time (a
    publisher that does not recognise the claim goes round its loop and tries the claim again;
    one that does proceeds after at most one refusal). Returns ([result or exception], or [] if
    still running, and the claim's refusals so far).

    The wait is for one of those two events, not for a fixed time: a 6 s limit had failed a publish
    that was merely slow on a loaded machine (it had not sent its claim yet when the limit came).
    ``ceiling_s`` only bounds a publish that neither ends nor tries the claim again."""
    claim_key = f"{key}/{CLAIM}"
    outcome: list = []
    refusals = [0]
    settled = threading.Event()
    create_exclusive = store.create_exclusive

    def counted(target: str, data: bytes) -> bool:
        created = create_exclusive(target, data)
        if target == claim_key and not created:
            refusals[0] += 1
            if refusals[0] >= 2:
                settled.set()
        return created

    def work() -> None:
        try:
            outcome.append(store.publish(key, files, manifest))
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)
        finally:
            settled.set()

    store.create_exclusive = counted  # this Store only: the test's own instance
    threading.Thread(target=work, daemon=True).start()
    settled.wait(ceiling_s)
    return outcome, refusals[0]


# ------------------------------------------------------------ the proxy itself
def test_proxy_rules_count_and_seed(faults):
    """Counted rules fire exactly N times; a probability rule follows its seeded generator."""
    bucket = f"prx-{random.randrange(16**8):08x}"
    s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"]).mkdir(bucket)

    def status(method: str, path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", int(faults.url.rsplit(":", 1)[1]), timeout=10)
        try:
            conn.request(method, path, body=b"x" if method == "PUT" else None)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    faults.error(500, "InternalError", count=2, methods={"HEAD"})
    assert [status("HEAD", f"/{bucket}") for _ in range(4)] == [500, 500, 200, 200]
    faults.clear()
    faults.reseed(3)
    faults.error(503, "SlowDown", p=0.3)
    seen = [status("HEAD", f"/{bucket}") == 503 for _ in range(40)]
    replay = random.Random(3)  # the proxy draws once per request the rule matches
    assert seen == [replay.random() < 0.3 for _ in range(40)] and any(seen)
    faults.clear()
    faults.deny_writes()
    assert status("PUT", f"/{bucket}/k") == 403 and status("HEAD", f"/{bucket}") == 200
    faults.clear()
    store = _store(f"s3://{bucket}/p", faults)
    assert store.create_exclusive("k", b"1") and not store.create_exclusive("k", b"2")  # moto honours If-None-Match
    faults.ignore_conditional_writes()
    assert store.create_exclusive("k", b"3") and faults.counts["conditions_ignored"] == 1
    faults.clear()  # honoured again
    assert not store.create_exclusive("k", b"4") and store.read_bytes("k") == b"3"
    faults.go_down(0.5)
    with pytest.raises(ConnectionRefusedError):
        status("HEAD", f"/{bucket}")
    deadline = time.monotonic() + 5
    while not faults.is_up and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status("HEAD", f"/{bucket}") == 200
    kept = http.client.HTTPConnection("127.0.0.1", int(faults.url.rsplit(":", 1)[1]), timeout=10)
    kept.request("HEAD", f"/{bucket}")
    kept.getresponse().read()
    faults.restart()  # an instant restart drops the kept-alive connection
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        kept.request("HEAD", f"/{bucket}")
        kept.getresponse()
    kept.close()
    assert status("HEAD", f"/{bucket}") == 200
    assert faults.counts["down_windows"] == 1 and faults.counts["restarts"] == 1


# ---------------------------------------------------------------- options
def test_s3_options_precedence_and_validation():
    assert s3_config_kwargs({}) == {"retries": {"total_max_attempts": DEFAULT_MAX_ATTEMPTS, "mode": "standard"},
                                    "connect_timeout": 5.0, "read_timeout": 30.0}
    env = {"AWS_MAX_ATTEMPTS": "4", "AWS_RETRY_MODE": "adaptive", "PRH_S3_READ_TIMEOUT": "2.5"}
    assert s3_config_kwargs(env)["retries"] == {"total_max_attempts": 4, "mode": "adaptive"}
    env |= {"PRH_S3_MAX_ATTEMPTS": "9", "PRH_S3_RETRY_MODE": "standard"}
    config = s3_config_kwargs(env)
    assert config["retries"] == {"total_max_attempts": 9, "mode": "standard"} and config["read_timeout"] == 2.5
    user = {"endpoint_url": "http://x", "config_kwargs": {"retries": {"max_attempts": 1}, "read_timeout": 7}}
    merged = with_s3_defaults(user, env)
    assert merged["config_kwargs"] == {"retries": {"max_attempts": 1, "mode": "standard"}, "read_timeout": 7,
                                       "connect_timeout": 5.0}
    assert user["config_kwargs"] == {"retries": {"max_attempts": 1}, "read_timeout": 7}  # not modified
    for name, value in [("PRH_S3_MAX_ATTEMPTS", "0"), ("PRH_S3_MAX_ATTEMPTS", "many"), ("PRH_S3_RETRY_MODE", "eager"),
                        ("PRH_S3_READ_TIMEOUT", "-1"), ("PRH_S3_READ_TIMEOUT", "0"), ("PRH_S3_CONNECT_TIMEOUT", "nan"),
                        ("AWS_MAX_ATTEMPTS", "2.5")]:
        with pytest.raises(ValueError, match=f"^{name}="):
            s3_config_kwargs({name: value})
    assert s3_config_kwargs({"PRH_S3_MAX_ATTEMPTS": " ", "AWS_MAX_ATTEMPTS": "2"})["retries"]["total_max_attempts"] == 2
    assert s3_config_kwargs({"PRH_S3_RETRY_MODE": " ", "AWS_RETRY_MODE": "adaptive"})["retries"]["mode"] == "adaptive"
    assert s3fs_retries({}) is None and s3fs_retries({"PRH_S3_FS_RETRIES": "3"}) == 3
    with pytest.raises(ValueError, match="^PRH_S3_FS_RETRIES='0': it must be a whole number of attempts, at least 1$"):
        s3fs_retries({"PRH_S3_FS_RETRIES": "0"})


def test_store_applies_s3_options(s3_store_url, monkeypatch, tmp_path):
    monkeypatch.setenv("PRH_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("PRH_S3_FS_RETRIES", "2")
    store = Store(s3_store_url)
    assert store.fs.config_kwargs["retries"] == {"total_max_attempts": 3, "mode": "standard"}
    assert store.fs.retries == 2
    user = Store(s3_store_url, {"config_kwargs": {"retries": {"total_max_attempts": 8}, "read_timeout": 4}})
    assert user.fs.config_kwargs["retries"]["total_max_attempts"] == 8 and user.fs.config_kwargs["read_timeout"] == 4
    local = Store(str(tmp_path / "s"))
    assert local.is_local  # local stores take no S3 options
    monkeypatch.setenv("PRH_S3_MAX_ATTEMPTS", "zero")
    with pytest.raises(ValueError, match="PRH_S3_MAX_ATTEMPTS"):
        Store(s3_store_url)


def test_redact_text():
    text = 'Could not connect to "http://AKIA:s3cr3t@host:9000/b/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA%2F1&x=1"'
    out = redact_text(text)
    assert "s3cr3t" not in out and "abc" not in out and "AKIA%2F1" not in out and "x=1" in out and "host:9000/b/k" in out


# ------------------------------------------------------- faults that retries absorb
def test_bursts_resets_and_slow_responses_are_ridden_out(s3_store_url, faults):
    """503/500 bursts, resets before and during responses and slow responses: every publish and
    every read (store API, DuckDB pairing, DuckDB catalog) succeeds with identical bytes."""
    faults.error(503, "SlowDown", methods={"PUT"}, path=r"model-a/fv/layer-001", count=3)  # a burst: 3 in a row
    faults.reset("before", count=2)
    faults.reset("after", methods={"GET"}, count=2)
    faults.delay(0.3, count=2)
    faults.error(500, "InternalError", count=2)
    faults.error(503, "SlowDown", p=0.05)
    store = _store(s3_store_url, faults)
    published = {}
    for seed, model in enumerate(["model-a", "model-b"]):
        files, layers, ids = _feature_files(model, seed)
        key = f"features/d/{model}/fv"
        assert store.publish(key, files, _manifest(model)).written
        published[model] = (key, files, layers, ids)
    for key, files, _, _ in published.values():
        _assert_published_exactly(store, key, files)

    # DuckDB over the stored layer files, through the same faults
    (key_a, _, layers_a, ids_a), (key_b, _, layers_b, ids_b) = published.values()
    pair = paired_features(store, store.manifest(key_a), store.manifest(key_b))
    order_a, order_b = np.argsort(ids_a), np.argsort(ids_b)
    assert pair.sample_ids == sorted(ids_a) and pair.only_a == pair.only_b == 0
    for got, want in zip(pair.xs, layers_a):
        np.testing.assert_array_equal(got, want[order_a])
    for got, want in zip(pair.ys, layers_b):
        np.testing.assert_array_equal(got, want[order_b])
    con = connect(store)
    counts = query(con, "select model, count(*) n from features group by model order by model").to_pylist()
    assert counts == [{"model": "model-a", "n": N_LAYERS * N_SAMPLES}, {"model": "model-b", "n": N_LAYERS * N_SAMPLES}]

    c = faults.counts
    assert c["reset_before"] == 2 and c["reset_after"] == 2 and c["delay"] == 2 and c["error_500_before"] == 2
    assert c["error_503_before"] >= 3 and faults.injected() >= 11
    print(f"\nbursts: {faults.injected()} faults injected over {c['requests']} requests: {dict(c)}")


def test_read_timeout_is_retried(s3_store_url, faults, monkeypatch):
    """A response slower than the read timeout (``PRH_S3_READ_TIMEOUT``) is abandoned and retried."""
    monkeypatch.setenv("PRH_S3_READ_TIMEOUT", "1")
    store = _store(s3_store_url, faults)
    assert store.fs.config_kwargs["read_timeout"] == 1.0
    store.write_bytes("slow/blob.bin", b"s" * 50_000)
    faults.delay(2.5, methods={"GET"}, count=1)
    started = time.monotonic()
    assert store.read_bytes("slow/blob.bin") == b"s" * 50_000
    assert time.monotonic() - started >= 1.0
    assert faults.counts["delay"] == 1


def test_endpoint_restart_mid_publish_is_ridden_out(s3_store_url, faults, monkeypatch):
    """The endpoint goes down (listener closed, connections dropped) while the second layer file
    uploads, and comes back on the same port 1 s later: the publish retries through it. Same
    while reading."""
    monkeypatch.setenv("PRH_S3_MAX_ATTEMPTS", "10")  # botocore's jittered waits then outlast 1 s in all but ~1e-6 of cases
    store = _store(s3_store_url, faults)
    files, _, _ = _feature_files("m", 3)
    faults.down_on(1.0, methods={"PUT"}, path=r"layer-001\.parquet")
    started = time.monotonic()
    assert store.publish("features/d/m/v", files, _manifest("m")).written
    assert time.monotonic() - started >= 1.0 and faults.counts["down_windows"] == 1
    faults.down_on(0.5, methods={"GET"}, path=r"blob\.bin")
    _assert_published_exactly(store, "features/d/m/v", files)
    assert faults.counts["down_windows"] == 2


# -------------------------------------------------------- faults that retries cannot fix
def test_endpoint_down_beyond_retry_budget_fails_cleanly(s3_store_url, faults):
    """Down for longer than the retry budget mid-publish: the publish fails, no manifest is
    visible, and once the endpoint is back a later publish of the same version succeeds."""
    store = _store(s3_store_url, faults, retries={"total_max_attempts": 2})
    files, _, _ = _feature_files("m", 4)
    key = "features/d/m/v"
    faults.down_on(600, methods={"PUT"}, path=r"layer-001\.parquet")
    with pytest.raises(Exception) as raised:
        store.publish(key, files, _manifest("m"))
    text = _assert_no_secret(raised.value)
    assert "EndpointConnectionError" in text or "Could not connect" in text
    assert "could not reach the S3 endpoint" in describe_s3_error(raised.value)
    faults.restart()
    assert store.manifest(key) is None
    landed = {p.rsplit("/", 1)[-1] for p in store.fs.ls(store.path(key), refresh=True)}
    assert MANIFEST not in landed and "layer-002.parquet" not in landed
    # The claim stays behind when the endpoint is unreachable (its delete failed too); the
    # time-based staleness lets the next publisher take over.
    assert CLAIM in landed
    published = store.publish(key, files, _manifest("m"), stale_after_s=1.0)
    assert published.written
    _assert_published_exactly(store, key, files)


def test_permanent_500_on_manifest_leaves_no_version(s3_store_url, faults):
    """Every data file lands but the manifest PUT always fails: no version is visible, the claim
    is released, and a retry after the fault clears publishes it."""
    store = _store(s3_store_url, faults, retries={"total_max_attempts": 2})
    files, _, _ = _feature_files("m", 5)
    key = "features/d/m/v"
    faults.error(500, "InternalError", methods={"PUT"}, path=r"manifest\.json$")
    with pytest.raises(OSError) as raised:
        store.publish(key, files, _manifest("m"))
    _assert_no_secret(raised.value)
    assert describe_s3_error(raised.value).startswith("PutObject failed: InternalError (HTTP 500) after 2 attempts")
    assert faults.counts["error_500_before"] >= 2
    assert store.manifest(key) is None and not store.exists(f"{key}/{CLAIM}")
    assert [m for m in store.manifests("features")] == []
    faults.clear()
    assert store.publish(key, files, _manifest("m")).written
    _assert_published_exactly(store, key, files)


def test_read_only_bucket_fails_fast_and_clearly(s3_store_url, faults):
    """403 AccessDenied on writes: not retried, a clear error, nothing published; reads still work."""
    store = _store(s3_store_url, faults)
    files, _, _ = _feature_files("m", 6)
    assert store.publish("features/d/m/old", files, _manifest("m")).written
    faults.deny_writes()
    started = time.monotonic()
    with pytest.raises(PermissionError) as raised:
        store.publish("features/d/m/new", files, _manifest("m"))
    assert time.monotonic() - started < 5
    assert faults.counts["error_403_before"] == 1  # a 403 is not retried
    assert "AccessDenied" in describe_s3_error(raised.value)
    _assert_no_secret(raised.value)
    with pytest.raises(StoreNotWritable, match=f"store {store.display_url} is not writable"):
        store.check_writable()
    assert store.manifest("features/d/m/new") is None
    _assert_published_exactly(store, "features/d/m/old", files)


def test_an_endpoint_that_ignores_conditional_writes_is_refused_before_any_write(s3_store_url, faults, monkeypatch):
    """Some S3-compatible servers ignore ``If-None-Match: *`` and overwrite: every "exclusive"
    create succeeded (``create_exclusive`` True twice, the second bytes kept), so runs publishing
    one version at once each held its claim and replaced one another's manifest, or stole the
    claim back and forth without end. The store's first write (the probe of ``check_writable``,
    which every run, gc and verify --remove-damaged makes) now finds it out and refuses, naming
    the store, the endpoint and what to do; the probe is gone and nothing else was written. An
    endpoint that honours the condition pays one request more (answered 412)."""
    monkeypatch.delenv("PRH_SINGLE_WRITER", raising=False)
    store = _store(s3_store_url, faults)
    store.check_writable()
    assert faults.counts["requests"] == 3  # PUT, PUT (412), DELETE
    faults.ignore_conditional_writes()
    assert store.create_exclusive("c/once", b"a") and store.create_exclusive("c/once", b"b")  # what publishing relied on
    assert store.read_bytes("c/once") == b"b" and faults.counts["conditions_ignored"] == 2
    store.delete("c/once")
    with pytest.raises(ConditionalWritesIgnored) as raised:
        store.check_writable()
    message = str(raised.value)
    assert message.startswith(f"store {store.display_url}: the S3 endpoint {faults.url} (from the storage option "
                              "endpoint_url) ignores conditional writes (a PUT with If-None-Match: * overwrote an "
                              "existing object instead of answering 412 Precondition Failed)"), message
    assert "set PRH_SINGLE_WRITER=1 to write anyway" in message and "\n" not in message
    assert isinstance(raised.value, StoreNotWritable) and not is_transient(raised.value)  # a setting: no retry
    _assert_no_secret(raised.value)
    assert faults.counts["conditions_ignored"] == 4
    bucket = store.root.split("/", 1)[0]
    assert store.fs.find(bucket, refresh=True) == []  # the probe removed, nothing else written
    for value in ("", "0", "no", "off"):
        monkeypatch.setenv("PRH_SINGLE_WRITER", value)
        with pytest.raises(ConditionalWritesIgnored):
            store.check_writable()


def test_an_s3fs_that_sends_no_condition_is_named_not_the_endpoint(s3_store_url, faults, monkeypatch):
    """s3fs before 2024.12 drops ``mode="create"`` and overwrites, whatever the server: the probe
    then said the endpoint ignores conditional writes and offered PRH_SINGLE_WRITER. It now names
    the installed s3fs and the version to install (pyproject.toml's range), even with the opt-in
    set: the client, not the server, is what to change."""
    monkeypatch.setenv("PRH_SINGLE_WRITER", "1")
    store = _store(s3_store_url, faults)
    faults.ignore_conditional_writes()  # what such an s3fs does: no If-None-Match reaches the server
    monkeypatch.setattr(s3fs, "__version__", "2024.10.0")
    with pytest.raises(ConditionalWritesIgnored) as raised:
        store.check_writable()
    message = str(raised.value)
    assert message.startswith(f"store {store.display_url}: s3fs 2024.10.0 sends no If-None-Match: * with an exclusive "
                              "create"), message
    assert "install s3fs>=2024.12.0" in message and "PRH_SINGLE_WRITER" not in message
    monkeypatch.setattr(s3fs, "__version__", "2024.12.0")  # a current client: the endpoint is to blame
    assert store.check_writable() is None  # accepted with the opt-in (a warning)


def test_a_botocore_that_knows_no_if_none_match_is_named_not_the_endpoint(s3_store_url, faults, monkeypatch):
    """s3fs 2024.12 admits aiobotocore 2.5.4 and later, beside botocore 1.29 and later; s3fs keeps
    only the request arguments botocore's model names, and before botocore 1.35.2 PutObject has no
    IfNoneMatch: the condition was dropped without a word (seen with aiobotocore 2.5.4/botocore
    1.31.17, 2.13.3/1.34.162 and 2.14.0/1.35.1: a second exclusive create succeeded and kept its
    bytes). The probe then blamed the endpoint and offered PRH_SINGLE_WRITER; it now names the
    installed botocore and aiobotocore and asks for aiobotocore>=2.15.0 (the first whose botocore
    always has it; pyproject.toml's range), even with the opt-in set."""
    monkeypatch.setenv("PRH_SINGLE_WRITER", "1")
    store = _store(s3_store_url, faults)
    faults.ignore_conditional_writes()  # what such a botocore does: no If-None-Match reaches the server
    monkeypatch.setattr(botocore, "__version__", "1.35.1")
    monkeypatch.setattr(aiobotocore, "__version__", "2.14.0")
    with pytest.raises(ConditionalWritesIgnored) as raised:
        store.check_writable()
    message = str(raised.value)
    assert message.startswith(f"store {store.display_url}: botocore 1.35.1 (beside aiobotocore 2.14.0) knows no "
                              "If-None-Match for PutObject, so s3fs drops it from every exclusive create"), message
    assert message.endswith("install aiobotocore>=2.15.0 (pyproject.toml's range)") and "PRH_SINGLE_WRITER" not in message
    assert not is_transient(raised.value)  # a setting: no retry
    monkeypatch.setattr(botocore, "__version__", "1.35.2")  # the first that knows it: the endpoint is to blame
    assert store.check_writable() is None  # accepted with the opt-in (a warning)


def test_single_writer_runs_on_an_endpoint_that_ignores_conditional_writes(s3_store_url, faults, monkeypatch, caplog):
    """``PRH_SINGLE_WRITER=1``: the user runs one writer at a time on the store, which is then
    safe; the probe warns once per store and process, and publishing works. Another value than
    1/true/yes/on or 0/false/no/off is refused by name."""
    store = _store(s3_store_url, faults)
    faults.ignore_conditional_writes()
    monkeypatch.setenv("PRH_SINGLE_WRITER", "maybe")
    with pytest.raises(ValueError, match=r"^PRH_SINGLE_WRITER='maybe' is not 1/true/yes/on or 0/false/no/off$"):
        store.check_writable()
    monkeypatch.setenv("PRH_SINGLE_WRITER", "1")
    with caplog.at_level("WARNING", logger="storage.store"):
        store.check_writable()
        _store(s3_store_url, faults).check_writable()  # the flow checks again after the CLI: one warning
    warned = [r.getMessage() for r in caplog.records if r.name == "storage.store"]
    assert len(warned) == 1 and warned[0].startswith(f"store {store.display_url}: the S3 endpoint {faults.url} ")
    assert warned[0].endswith("writing anyway (PRH_SINGLE_WRITER=1): run one prh run, gc or verify --remove-damaged "
                              "at a time on it")
    files, _, _ = _feature_files("m", 9)
    assert store.publish("features/d/m/v", files, _manifest("m")).written
    _assert_published_exactly(store, "features/d/m/v", files)


NOT_IMPLEMENTED = "A header you provided implies functionality that is not implemented"


def test_an_s3_server_without_conditional_writes_is_named_and_not_retried(s3_store_url, faults, monkeypatch, caplog):
    """An S3-compatible server that does not implement ``If-None-Match: *`` on PUT answers ``501
    NotImplemented`` in an S3 error document (naming the header, as AWS does). The probe read
    "PutObject failed: NotImplemented (HTTP 501)" as a ``StoreIOError``, transient for the tasks'
    retries, and a claim's create a bare ``OSError [Errno 38]`` without the store: every task
    retried what no retry fixes. It is now :class:`EndpointLacksFeature`, final, naming the
    store, the endpoint, the request and the way out; with ``PRH_SINGLE_WRITER=1`` (one writer at
    a time) an exclusive create is a plain PUT after checking the key is absent, and publishing
    works."""
    monkeypatch.delenv("PRH_SINGLE_WRITER", raising=False)
    store = _store(s3_store_url, faults)
    faults.error(501, "NotImplemented", methods={"PUT"}, header="If-None-Match")
    files, _, _ = _feature_files("m", 11)
    said = (f"store {store.display_url}: the S3 endpoint {faults.url} (from the storage option endpoint_url) does not "
            f"implement conditional writes: PutObject with If-None-Match: * answered HTTP 501 NotImplemented ({NOT_IMPLEMENTED}; "
            "header If-None-Match)")
    calls = {"check_writable": store.check_writable, "create_exclusive": lambda: store.create_exclusive("c/x", b"x"),
             "publish": lambda: store.publish("features/d/m/v", files, _manifest("m"))}
    for name, call in calls.items():
        with pytest.raises(EndpointLacksFeature) as raised:
            call()
        message = str(raised.value)
        assert message.startswith(said), message
        assert "set PRH_SINGLE_WRITER=1" in message and "\n" not in message, message
        assert not is_transient(raised.value), name  # a server to change or a setting: no task retry
        _assert_no_secret(raised.value)
    assert faults.counts["error_501_before"] == 3  # one request each: neither the client nor the store retried it
    assert store.manifest("features/d/m/v") is None and not store.exists("c/x")
    store.write_bytes("plain/x", b"x")  # a plain PUT is answered as before

    monkeypatch.setenv("PRH_SINGLE_WRITER", "1")
    with caplog.at_level("WARNING", logger="storage.store"):
        store.check_writable()
        assert store.create_exclusive("c/y", b"1") and not store.create_exclusive("c/y", b"2")
    assert store.read_bytes("c/y") == b"1"
    warned = [r.getMessage() for r in caplog.records if r.name == "storage.store"]
    assert len(warned) == 1 and warned[0].startswith(said) and "PRH_SINGLE_WRITER=1" in warned[0], warned
    assert store.publish("features/d/m/v", files, _manifest("m")).written
    _assert_published_exactly(store, "features/d/m/v", files)


def test_an_s3_server_without_request_checksums_is_named_with_the_setting_that_drops_them(s3_store_url, faults, monkeypatch):
    """botocore adds an integrity checksum header (``x-amz-checksum-crc32``) to every upload; a
    server that answers it ``501 NotImplemented`` failed every write as a transient
    ``StoreIOError`` (or a bare ``OSError``). The error names the header and the setting that
    stops it (``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``), which does."""
    from botocore.config import Config

    if "request_checksum_calculation" not in Config.OPTION_DEFAULTS:
        pytest.skip("botocore older than 1.36 (beside s3fs 2024.12's aiobotocore) adds no checksum to uploads")
    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION", raising=False)
    store = _store(s3_store_url, faults)
    faults.error(501, "NotImplemented", methods={"PUT"}, header="x-amz-checksum-crc32")
    for name, call in {"write_bytes": lambda: store.write_bytes("a/b", b"x"), "check_writable": store.check_writable}.items():
        with pytest.raises(EndpointLacksFeature) as raised:
            call()
        message = str(raised.value)
        assert message.startswith(f"store {store.display_url}: the S3 endpoint {faults.url} (from the storage option "
                                  "endpoint_url) does not implement the request checksums botocore adds to uploads: "
                                  f"PutObject answered HTTP 501 NotImplemented ({NOT_IMPLEMENTED}; header "
                                  "x-amz-checksum-crc32)"), message
        assert "set AWS_REQUEST_CHECKSUM_CALCULATION=when_required" in message and not is_transient(raised.value), name
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    fired = faults.counts["error_501_before"]
    _store(s3_store_url, faults).write_bytes("a/b", b"x")  # a new client reads the setting: no checksum header sent
    assert faults.counts["error_501_before"] == fired == 2


@contextmanager
def plain_web_server(folder: Path) -> Iterator[str]:
    """A plain HTTP file server on loopback (what ``python -m http.server`` runs), serving the
    empty ``folder``: 404 to every GET, 501 to every PUT. Yields its URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_endpoint_that_is_no_s3_server_is_named_as_such(tmp_path, monkeypatch, s3_endpoint, s3_store_url):
    """``AWS_ENDPOINT_URL`` naming a web server that is not S3: the run's write probe said
    "PutObject failed: 501 (HTTP 501) after 1 attempt: Not Implemented" without the endpoint, and a
    read took its "Not Found" for a missing file. Both now name the endpoint, where it was set, and
    that it is not an S3 server, without retrying (a task's retry policy too: it had found the
    client's OSError below the error and retried); a real S3 server's answers are read as before."""
    with plain_web_server(tmp_path) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        store = Store("s3://bucket/prefix")
        said = f"store s3://bucket/prefix: the S3 endpoint {endpoint} is not an S3 server "
        with pytest.raises(NotAnS3Endpoint, match=re.escape(said + "(PutObject answered HTTP 501 (Not Implemented) without "
                                                            "an S3 error document): check AWS_ENDPOINT_URL")) as probe:
            store.check_writable()
        with pytest.raises(NotAnS3Endpoint, match=re.escape(said + "(ListObjectsV2 answered HTTP 404 (Not Found)")) as listing:
            store.check_endpoint()
        with pytest.raises(NotAnS3Endpoint) as read:
            store.read_json("runs/r.json")
        # its first request reads the version's manifest (a GET: the web server's bare 404 is no S3 answer)
        with pytest.raises(NotAnS3Endpoint, match="GetObject answered HTTP 404") as publish:
            store.publish("features/d/m/v1", {"a.bin": b"x"}, {"kind": "test"})
        # a setting to fix: a task failing on it is not retried (the client's OSError below it had said "transient")
        assert not any(is_transient(raised.value) for raised in (probe, listing, read, publish))
        optioned = Store("s3://bucket/prefix", {"endpoint_url": endpoint})
        with pytest.raises(NotAnS3Endpoint, match="check the storage option endpoint_url"):
            optioned.check_endpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    real = Store(s3_store_url)  # the session's moto server
    real.check_endpoint()
    real.check_writable()
    with pytest.raises(FileNotFoundError):
        real.read_bytes("runs/missing.json")
    Store(s3_store_url.rsplit("/", 2)[0] + "/no-such-bucket-here/x").check_endpoint()  # a missing bucket: the caller says so


def test_a_write_to_an_endpoint_that_is_no_s3_server_names_it_too(tmp_path, monkeypatch):
    """A write that no probe preceded (or one after an endpoint let the probe through): s3fs
    turned the web server's "501 Not Implemented" into a bare ``OSError [Errno 38] Not
    Implemented``, without the store or the endpoint, which task retries took for transient.
    ``write_json``, ``write_bytes``, ``create_exclusive`` and ``delete`` now name the endpoint as
    reads do, final."""
    with plain_web_server(tmp_path) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        store = Store("s3://bucket/prefix")
        said = f"store s3://bucket/prefix: the S3 endpoint {endpoint} is not an S3 server "
        writes = {"write_json": lambda: store.write_json("runs/r.json", {"run_id": "r"}),
                  "write_bytes": lambda: store.write_bytes("features/d/m/v/a.bin", b"x"),
                  "create_exclusive": lambda: store.create_exclusive("features/d/m/v/.publishing", b"x"),
                  "delete": lambda: store.delete("features/d/m/v/a.bin")}
        for name, write in writes.items():
            operation = "DeleteObject" if name == "delete" else "PutObject"
            with pytest.raises(NotAnS3Endpoint, match=re.escape(f"{said}({operation} answered HTTP 501 (Not Implemented) "
                                                                "without an S3 error document): check AWS_ENDPOINT_URL")) as raised:
                write()
            assert not is_transient(raised.value), name


# ------------------------------------------ known gaps (see the issue-7 faults report)
@pytest.mark.parametrize("fault", ["500", "403", "down"])
def test_failed_publish_names_store_and_operation(s3_store_url, faults, fault):
    store = _store(s3_store_url, faults, retries={"total_max_attempts": 2})
    if fault == "500":
        faults.error(500, "InternalError", methods={"PUT"}, path=r"layer-")
    elif fault == "403":
        faults.deny_writes()
    else:
        faults.down_on(600, methods={"PUT"}, path=r"layer-")
    with pytest.raises(OSError) as raised:
        store.publish("features/d/m/v", {"layer-000.parquet": b"x"}, {})
    message = str(raised.value)
    assert store.display_url in message and "features/d/m/v" in message
    assert "PutObject" in message or "could not reach" in message


def test_lost_response_to_claim_does_not_block_publish(s3_store_url, faults):
    """The claim PUT lands but its response is lost (503 after forwarding): botocore retries it,
    the retry gets 412, and the publisher must recognise the claim as its own."""
    store = _store(s3_store_url, faults)
    files, _, _ = _feature_files("m", 7)
    key = "features/d/m/v"
    faults.error(503, "SlowDown", when="after", methods={"PUT"}, path=r"\.publishing$", count=1)
    outcome, refusals = _publish_in_thread(store, key, files, _manifest("m"))
    try:
        assert faults.counts["error_503_after"] == 1
        assert outcome and not isinstance(outcome[0], BaseException) and outcome[0].written, (outcome, refusals)
        assert refusals == 1  # the retried PUT was answered 412, and the claim then read back as ours
    finally:
        if not outcome:  # unblock the waiting publisher: remove the orphaned claim behind the proxy's back
            s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True).rm(
                store.path(f"{key}/{CLAIM}"))
            deadline = time.monotonic() + 30
            while not outcome and time.monotonic() < deadline:
                time.sleep(0.1)


def test_claim_abandoned_by_this_process_does_not_block_republish(s3_store_url, faults):
    store = _store(s3_store_url, faults, retries={"total_max_attempts": 2})
    files, _, _ = _feature_files("m", 8)
    key = "features/d/m/v"
    faults.down_on(600, methods={"PUT"}, path=r"layer-001\.parquet")
    with pytest.raises(Exception):
        store.publish(key, files, _manifest("m"))
    faults.restart()
    outcome, refusals = _publish_in_thread(store, key, files, _manifest("m"))
    try:
        assert outcome and not isinstance(outcome[0], BaseException) and outcome[0].written, (outcome, refusals)
    finally:
        if not outcome:
            s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True).rm(
                store.path(f"{key}/{CLAIM}"))
            deadline = time.monotonic() + 30
            while not outcome and time.monotonic() < deadline:
                time.sleep(0.1)


# ----------------------------------------------------------------- end to end
def _new_bucket_url() -> str:
    bucket = f"prh-e2e-{random.randrange(16**10):010x}"
    s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/store"


def _results(url: str) -> tuple[list[dict], list[dict], dict[str, dict[str, str]]]:
    """Layer-pair scores, best rows and feature file hashes of the store at ``url`` (read directly)."""
    store = Store(url, {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    con = connect(store)
    scores = query(con, "select metric, model_a, model_b, layer_a, layer_b, score from alignment "
                        "order by metric, model_a, model_b, layer_a, layer_b").to_pylist()
    best = query(con, "select metric, model_a, model_b, layer_a, layer_b, score, calibrated_score, p_value "
                      "from alignment_best order by metric, model_a, model_b").to_pylist()
    hashes = {m["catalog"]["model"]: {n: e["sha256"] for n, e in m["files"].items()} for _, m in store.manifests("features")}
    return scores, best, hashes


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_over_flaky_s3_matches_clean_run(faults, monkeypatch):
    """The whole pipeline on a tiny zoo, once straight to moto and once through the proxy with a
    seeded 15 % of 503 SlowDown and a few connection resets: same scores, same feature bytes."""
    from flows.pipeline import prh_pipeline
    from tasks.params import PipelineConfig

    config = PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": 24, "seed": 0, "image_size": 32},
        "models": [TINY_VIT, TINY_BERT],
        "alignment": {"metrics": ["mutual_knn", "cka"], "topk": 4, "permutations": 9},
    })
    clean_url, flaky_url = _new_bucket_url(), _new_bucket_url()
    started = time.monotonic()
    assert prh_pipeline(config=config, store=clean_url, report=False)["status"] == "COMPLETED"
    clean_s = time.monotonic() - started

    monkeypatch.setenv("AWS_ENDPOINT_URL", faults.url)  # every Store the flow and its tasks open
    # botocore's waits before each retry, a tenth as long: the ~40 SlowDowns here had slept ~20 s
    # (uniform(0, 1) s each). The retries are the same and the results are what is compared; the
    # waits themselves are ridden out at full length in test_bursts_resets_and_slow_responses_are_ridden_out.
    from botocore.retries.standard import ExponentialBackoff

    delay = ExponentialBackoff.delay_amount
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: delay(self, context) / 10)
    faults.reset("before", count=3)
    faults.reset("after", methods={"GET"}, count=2)
    faults.error(503, "SlowDown", p=0.15)
    started = time.monotonic()
    assert prh_pipeline(config=config, store=flaky_url, report=False)["status"] == "COMPLETED"
    flaky_s = time.monotonic() - started
    monkeypatch.undo()

    clean, flaky = _results(clean_url), _results(flaky_url)
    assert clean[0] and len(clean[1]) == 2
    assert flaky == clean
    c = faults.counts
    assert c["error_503_before"] >= 5 and c["reset_before"] == 3 and c["reset_after"] == 2
    print(f"\npipeline: clean {clean_s:.1f} s, through the faults {flaky_s:.1f} s; {faults.injected()} faults over "
          f"{c['requests']} requests: {dict(c)}")


def test_user_retry_options_replace_only_what_they_name() -> None:
    """Inside ``retries`` a user's ``mode`` replaces ours and leaves our attempts; a user's
    attempts replace ours and leave our mode. Listings are read afresh unless the user says
    otherwise."""
    def retries(user: dict) -> dict:
        return with_s3_defaults({"config_kwargs": {"retries": user}}, {})["config_kwargs"]["retries"]

    assert retries({"mode": "adaptive"}) == {"total_max_attempts": DEFAULT_MAX_ATTEMPTS, "mode": "adaptive"}
    assert retries({"total_max_attempts": 8}) == {"total_max_attempts": 8, "mode": DEFAULT_RETRY_MODE}
    assert with_s3_defaults(None, {})["use_listings_cache"] is False
    assert with_s3_defaults({"use_listings_cache": True}, {})["use_listings_cache"] is True


def test_one_attempt_is_allowed_and_errors_of_other_stacks_are_described_as_themselves() -> None:
    """Attempts are "at least 1": one is a valid setting. ``describe_s3_error`` of an error with no
    S3 error in its chain is its own type and message; ``from_s3_client`` tells botocore's
    errors from others."""
    from botocore.exceptions import ClientError

    from storage.s3_options import from_s3_client

    assert s3_config_kwargs({"PRH_S3_MAX_ATTEMPTS": "1"})["retries"]["total_max_attempts"] == 1
    assert s3fs_retries({"PRH_S3_FS_RETRIES": "1"}) == 1
    assert describe_s3_error(RuntimeError("no S3 here")) == "RuntimeError: no S3 here"
    slow = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503, "RetryAttempts": 5}},
                       "GetObject")
    wrapped = OSError("read failed")
    wrapped.__cause__ = slow  # as s3fs re-raises it
    assert describe_s3_error(wrapped) == "GetObject failed: SlowDown (HTTP 503) after 6 attempts"
    assert from_s3_client(slow) and not from_s3_client(wrapped) and not from_s3_client(ValueError())
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                          "ResponseMetadata": {"HTTPStatusCode": 403, "RetryAttempts": 0}}, "PutObject")
    assert describe_s3_error(denied) == "PutObject failed: AccessDenied (HTTP 403) after 1 attempt: Access Denied"
