"""Least-privilege credentials on S3: what read-only analyst keys and the writer's policy of
docs/storage.md ("Permissions on S3") may do, against moto's server with its IAM checks on
(``tests/storage/iam_s3.py``: each request is checked against the policy of the key that signed it).

The policies are read from the documentation, so the policy a platform engineer pastes is the one
tested. The writer's work is the store operations a run and ``prh gc`` make (the probe,
publishing under claims, run records, signs of life, shards, a report and cached figures, the
removal of old versions and of incomplete uploads), not a pipeline run."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flows.cli import main
from storage import layout
from storage.catalog import connect, query
from storage.export import open_catalog
from storage.features import layer_tables
from storage.figure_cache import StoreFigureCache
from storage.runs import alive_key, open_for_run
from storage.shards import remove_partial, write_shard
from storage.store import CLAIM, Store, table_to_parquet_bytes
from storage.store_errors import StoreNotWritable
from tests.storage.catalog_store import DATASET, build_catalog_store
from tests.storage.iam_s3 import IamS3, moto_resources, use_credentials
from tests.storage.s3_fault_proxy import WRITE_METHODS, FaultProxy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage.md"
DENIED = "which these credentials lack or a policy denies"


def _documented_policies() -> tuple[str, str]:
    """The analyst's and the writer's policy of docs/storage.md, "Permissions on S3" (JSON text
    with ``BUCKET`` and ``PREFIX`` in place)."""
    section = DOCS.read_text(encoding="utf-8").split("## Permissions on S3\n", 1)[1].split("\n## ", 1)[0]
    analyst, writer = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    return analyst, writer


def _policy(which: int, bucket: str, prefix: str = "store") -> dict:
    return json.loads(_documented_policies()[which].replace("BUCKET", bucket).replace("PREFIX", prefix))


def _writer_policy(bucket: str, less: str | None = None, deny: list[dict] | None = None) -> dict:
    """The documented writer policy (less the permission ``less``; with the Deny statements
    ``deny``), with moto's bucket ARN for bulk removals (iam_s3's docstring)."""
    policy = _policy(1, bucket)
    statements = []
    for statement in policy["Statement"]:
        actions = [a for a in statement["Action"] if a != less] if isinstance(statement["Action"], list) else \
            [statement["Action"]] if statement["Action"] != less else []
        if actions:
            statements.append({**statement, "Action": actions})
    return moto_resources({**policy, "Statement": statements + (deny or [])}, bucket)


def _layers(seed: int) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    return layer_tables("m", "fv", [f"s{i}" for i in range(6)], [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(3)])


@pytest.fixture(scope="module")
def iam():
    server = IamS3()
    yield server
    server.close()


@pytest.fixture(scope="module")
def analyst_store(iam):
    """A bucket holding the catalog test store (tests/storage/catalog_store.py) under ``store``,
    written by the admin; returns (bucket, the analyst's documented keys)."""
    bucket = iam.bucket()
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_credentials(monkeypatch, iam.admin)
        build_catalog_store(f"s3://{bucket}/store")
    return bucket, iam.user(_policy(0, bucket))


def test_read_only_keys_read_every_way_and_send_no_write(iam, analyst_store, monkeypatch, tmp_path, capsys):
    """`prh sql`, `prh verify`, `prh catalog export`, `storage.catalog.connect` and the exported
    catalog work with the analyst's documented keys (GetObject on the store's prefix, ListBucket),
    and no PUT, POST or DELETE reaches the endpoint (no probe, no lock, no temporary object):
    counted by a proxy in front of it. `prh sql` had failed: s3fs's HEAD of the prefix itself as a
    key is outside ``PREFIX/*`` ("cannot read the root ... HeadObject failed: 403")."""
    bucket, analyst = analyst_store
    url = f"s3://{bucket}/store"
    before = iam.objects(bucket)
    with FaultProxy(iam.endpoint) as proxy:
        use_credentials(monkeypatch, {**analyst, "AWS_ENDPOINT_URL": proxy.url})
        assert main(["sql", "select count(*) n, count(distinct model) m from features", "--store", url, "--format", "csv"]) == 0
        assert capsys.readouterr().out.splitlines() == ["n,m", f"{8 * (4 + 5 + 3 + 4)},4"]  # 8 samples, the models' layers
        assert main(["verify", "--store", url]) == 0
        assert capsys.readouterr().out.startswith(f"{url}: 9 published versions, 25 files")  # 1 + 4 + 4 versions
        assert main(["catalog", "export", str(tmp_path / "c.duckdb"), "--store", url]) == 0
        con = connect(url)
        assert query(con, "select count(*) n from alignment_best").to_pylist() == [{"n": 8}]  # 4 pairs x 2 metrics
        con.close()
        exported = open_catalog(str(tmp_path / "c.duckdb"))
        assert exported.execute("select count(*) from samples").fetchone() == (8,)
        exported.close()
        assert proxy.methods["GET"] + proxy.methods["LIST"] > 0
        assert {m: n for m, n in proxy.methods.items() if m in WRITE_METHODS} == {}
    assert iam.objects(bucket) == before


def test_read_only_keys_cannot_run_or_gc_and_are_told_why(iam, analyst_store, monkeypatch, capsys):
    """`prh run` and `prh gc` with the analyst's keys stop at their write probe, exit 2, one line
    naming the store, the refused request and the permission it needs (it had been "store ... is
    not writable: Access Denied"); nothing stored changes."""
    bucket, analyst = analyst_store
    url = f"s3://{bucket}/store"
    before = iam.objects(bucket)
    use_credentials(monkeypatch, analyst)
    for command in (["run"], ["gc"], ["gc", "--keep-runs", "1"]):
        assert main([*command, "--store", url]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf"prh {command[0]}: error: store {url} is not writable: writing the probe \.probe-[0-9a-f]{{32}}: "
                            rf"PutObject failed: AccessDenied \(HTTP 403\) after 1 attempt: Access Denied \(needs s3:PutObject, "
                            rf"{DENIED}\)\n", err), err
    assert iam.objects(bucket) == before


def test_the_documented_writer_policy_does_a_runs_and_gcs_store_work(iam, monkeypatch, capsys):
    """With exactly the writer's documented policy: a run's start (probe, crashed runs, sweep),
    publishing under claims and run records (two nights of tests/flows/test_gc_keep_runs.py's
    kind: the vision model's features changed on the second), a sign of life, shards and their
    removal, a report and a cached figure, the abort of an incomplete multipart upload, then
    `prh gc --keep-runs 1`, which removes the first night's alignment and vision features. `prh
    gc` had failed at its look for dead probes (a HEAD of the prefix itself as a key)."""
    from tests.flows.test_gc_keep_runs import D1, _alignment, _dataset, _day, _features, _run, _versions

    bucket = iam.bucket()
    url = f"s3://{bucket}/store"
    use_credentials(monkeypatch, iam.user(_writer_policy(bucket)))
    store = Store(url)
    assert open_for_run(store) == ([], [])
    d1, l1 = _dataset(store, D1, _day(1, 2)), _features(store, D1, "lm", "fl1", _day(1, 2))
    f1, f2 = _features(store, D1, "vit", "fv1", _day(1, 2)), _features(store, D1, "vit", "fv2", _day(2, 2))
    a1, a2 = _alignment(store, D1, "fv1", "fl1", "al1", _day(1, 3)), _alignment(store, D1, "fv2", "fl1", "al2", _day(2, 3))
    _run(store, "run-1", "COMPLETED", _day(1, 1), _day(1, 4), D1, {"vit": "fv1", "lm": "fl1"}, [a1])
    _run(store, "run-2", "COMPLETED", _day(2, 1), _day(2, 4), D1, {"vit": "fv2", "lm": "fl1"}, [a2])
    store.write_json(alive_key("run-3"), {"run_id": "run-3"})
    store.delete(alive_key("run-3"))
    features = layout.features_key(D1, "vit", "fv3")
    write_shard(store, features, 0, [np.ones((3, 2), np.float32)])
    assert list(store.sizes(features)) == [f"{features}/_partial/shard-00000.parquet"]
    remove_partial(store, features)
    assert store.sizes(features) == {}
    cache = StoreFigureCache(store, namespace="ns")
    cache.put("d", {"png": b"\x89PNG\r\n\x1a\nfigure"})
    assert cache.writable and cache.get("d", ("png",)) == {"png": b"\x89PNG\r\n\x1a\nfigure"}
    store.write_bytes("reports/run-2/report.html", b"<html></html>")
    # a writer killed mid-upload of a large file: its parts stay until gc aborts the upload
    s3_key = f"store/{features}/layer-000.parquet"
    upload = store.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=s3_key)["UploadId"]
    store.fs.call_s3("upload_part", Bucket=bucket, Key=s3_key, UploadId=upload, PartNumber=1, Body=b"x" * 1000)
    aborted = store.abandoned_uploads(0, keep_since=None)
    assert [(u["key"], u["bytes"]) for u in aborted] == [(f"{features}/layer-000.parquet", 1000)]
    assert store.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []
    assert _versions(store) == {d1, l1, f1, f2, a1, a2}
    capsys.readouterr()
    assert main(["gc", "--keep-runs", "1", "--store", url]) == 0, capsys.readouterr().err
    assert _versions(store) == {d1, l1, f2, a2}
    assert [key for key in iam.objects(bucket) if "/.probe-" in key or key.endswith(f"/{CLAIM}")] == []


@pytest.fixture(scope="module")
def minimal_store(iam):
    """A bucket with a run record and an incomplete multipart upload under ``store`` (admin)."""
    bucket = iam.bucket()
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_credentials(monkeypatch, iam.admin)
        admin = Store(f"s3://{bucket}/store")
        admin.write_json("runs/run-1.json", {"run_id": "run-1"})
        s3_key = "store/features/d/m/v/layer-000.parquet"
        upload = admin.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=s3_key)["UploadId"]
        admin.fs.call_s3("upload_part", Bucket=bucket, Key=s3_key, UploadId=upload, PartNumber=1, Body=b"x" * 10)
    return bucket


@pytest.mark.parametrize("permission, needed_by", [
    ("s3:ListBucket", "list"), ("s3:GetObject", "read"), ("s3:PutObject", "probe"), ("s3:DeleteObject", "probe"),
    ("s3:ListBucketMultipartUploads", "uploads"), ("s3:ListMultipartUploadParts", "uploads"),
    ("s3:AbortMultipartUpload", "uploads"),
])
def test_every_permission_of_the_writer_policy_is_needed_and_named(iam, minimal_store, monkeypatch, permission, needed_by):
    """The writer's policy less any one of its permissions fails the store operation that needs
    it, naming that permission (the messages had said "Access Denied" alone, or "AccessDenied
    (HTTP 403)"): the policy holds nothing a run or gc could do without."""
    use_credentials(monkeypatch, iam.user(_writer_policy(minimal_store, less=permission)))
    store = Store(f"s3://{minimal_store}/store")
    action = {"list": lambda: store.sizes("runs"), "read": lambda: store.read_bytes("runs/run-1.json"),
              "probe": store.check_writable, "uploads": lambda: store.abandoned_uploads(0, keep_since=None)}[needed_by]
    with pytest.raises(PermissionError, match=rf"\(needs {re.escape(permission)}, {DENIED}\)"):
        action()


def test_a_writer_without_delete_is_stopped_at_once_and_its_probe_named(iam, monkeypatch):
    """No s3:DeleteObject: the probe is written, its removal refused; the error says so and that
    the probe stays (the message had been "store ... is not writable: Access Denied")."""
    bucket = iam.bucket()
    use_credentials(monkeypatch, iam.user(_writer_policy(bucket, less="s3:DeleteObject")))
    store = Store(f"s3://{bucket}/store")
    with pytest.raises(StoreNotWritable) as raised:
        store.check_writable()
    probe = [key for key in iam.objects(bucket) if "/.probe-" in key]
    assert len(probe) == 1
    assert str(raised.value) == (
        f"store s3://{bucket}/store is not writable: removing the probe {probe[0].split('/', 1)[1]} it had written: "
        f"DeleteObject failed: AccessDenied (HTTP 403) after 1 attempt: Access Denied (needs s3:DeleteObject, {DENIED}); "
        "the probe stays in the store (credentials that may s3:DeleteObject remove it: any prh gc once it is 5 minutes old)")


def test_a_bulk_removal_refused_key_by_key_is_an_error_not_a_silent_success(iam, monkeypatch):
    """S3 answers DeleteObjects 200 and lists the keys it kept (AccessDenied). s3fs's removal drops
    that list: a writer without s3:DeleteObject had `remove_partial` (the shards of a published
    version), `Store.remove_tree` (gc's removal of report folders and figure namespaces) and a
    version's removal (`unpublish`'s files after its manifest) return as if done, every file still
    there. Now each names the first key kept and the permission; nothing is reported removed."""
    bucket = iam.bucket()
    url = f"s3://{bucket}/store"
    use_credentials(monkeypatch, iam.admin)
    admin = Store(url)
    features = layout.features_key(DATASET, "m", "fv")
    write_shard(admin, features, 0, [np.ones((3, 2), np.float32)])
    admin.write_bytes("reports/run-1/report.html", b"<html></html>")
    before = iam.objects(bucket)
    use_credentials(monkeypatch, iam.user(_writer_policy(bucket, less="s3:DeleteObject")))
    store = Store(url)
    shard = f"{features}/_partial/shard-00000.parquet"
    with pytest.raises(StoreNotWritable, match=rf"^cannot remove {re.escape(shard)} in store {url}: DeleteObjects answered "
                                               rf"AccessDenied for it \(needs s3:DeleteObject, {DENIED}\)$"):
        remove_partial(store, features)
    with pytest.raises(StoreNotWritable, match=r"^cannot remove reports/run-1/report\.html in store "):
        store.remove_tree("reports/run-1")
    with pytest.raises(StoreNotWritable, match=r"^cannot remove features/\S+/shard-00000\.parquet in store "):
        store._remove_paths([store.path(shard)])
    assert iam.objects(bucket) == before


def test_a_publish_refused_midway_names_the_key_leaves_nothing_published_and_a_rerun_completes(iam, monkeypatch):
    """A writer denied s3:PutObject on one layer file and s3:DeleteObject on the version's folder
    (so that the cleanup of the files it wrote fails too): the publish fails naming that key and
    the permission (it had named neither: "cannot publish ...: PutObject failed: AccessDenied (HTTP
    403) after 1 attempt: Access Denied"); no manifest, so nothing is published; a rerun with the
    documented policy removes the leftovers and publishes the version whole. A run record refused
    names its key too (it had been a bare "PermissionError: Access Denied")."""
    bucket = iam.bucket()
    url = f"s3://{bucket}/store"
    key = layout.features_key(DATASET, "m", "0123456789abcdef")
    files = _layers(0)
    deny = [{"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/store/{key}/layer-001.parquet"},
            {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": f"arn:aws:s3:::{bucket}/store/features/*"},
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/store/runs/*"}]
    use_credentials(monkeypatch, iam.user(_writer_policy(bucket, deny=deny)))
    store = Store(url)
    with pytest.raises(StoreNotWritable) as raised:
        store.publish(key, files, {"kind": "features", "catalog": {"model": "m"}})
    assert str(raised.value) == (f"cannot write {key}/layer-001.parquet in store {url}: PutObject failed: AccessDenied (HTTP 403) "
                                 f"after 1 attempt: Access Denied (needs s3:PutObject, {DENIED})")
    left = {k.split("/", 1)[1] for k in iam.objects(bucket)}
    assert f"{key}/manifest.json" not in left and f"{key}/layer-000.parquet" in left  # written, could not be removed
    assert store.manifest(key) is None and [m for m in store.manifests("features")] == []
    with pytest.raises(StoreNotWritable, match=rf"^cannot write runs/run-1\.json in store {url}: PutObject failed: AccessDenied"):
        store.write_json(layout.run_key("run-1"), {"run_id": "run-1"})

    use_credentials(monkeypatch, iam.user(_writer_policy(bucket)))
    store = Store(url)
    assert store.publish(key, files, {"kind": "features", "catalog": {"model": "m"}}).written
    manifest = store.manifest(key)
    assert sorted(store.sizes(key)) == [f"{key}/{name}" for name in sorted([*files, "manifest.json"])]
    for name, table in files.items():
        data = table_to_parquet_bytes(table)
        assert store.read_bytes(f"{key}/{name}") == data
        assert manifest["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()


def refused(operation: str, code: str = "AccessDenied", status: int = 403) -> OSError:
    """The error s3fs raises for a request S3 refused: botocore's ``ClientError`` of ``operation``
    (``code``, HTTP ``status``) as the cause of a ``PermissionError``."""
    from botocore.exceptions import ClientError

    wrapped = PermissionError("Access Denied")
    wrapped.__cause__ = ClientError({"Error": {"Code": code, "Message": "Access Denied"},
                                     "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
    return wrapped


def test_a_refusal_names_the_iam_permission_of_its_request():
    """The permission is AWS's name for what the request does, not the operation's name; a HEAD
    (no error document: its code is the status) is a refusal too; other errors name none."""
    from storage.s3_options import denied_permission, describe_s3_failure

    expected = {"ListObjectsV2": "s3:ListBucket", "HeadObject": "s3:GetObject", "UploadPart": "s3:PutObject",
                "DeleteObjects": "s3:DeleteObject", "ListMultipartUploads": "s3:ListBucketMultipartUploads",
                "ListParts": "s3:ListMultipartUploadParts", "AbortMultipartUpload": "s3:AbortMultipartUpload",
                "GetBucketAcl": "the permission for GetBucketAcl"}
    assert {op: denied_permission(refused(op)) for op in expected} == expected
    assert denied_permission(refused("HeadObject", code="403")) == "s3:GetObject"
    assert denied_permission(refused("PutObject", code="SlowDown", status=503)) is None
    assert denied_permission(RuntimeError("no S3 here")) is None
    assert describe_s3_failure(refused("ListParts")) == (
        f"ListParts failed: AccessDenied (HTTP 403) after 1 attempt: Access Denied (needs s3:ListMultipartUploadParts, {DENIED})")


def test_a_probe_refused_at_its_second_write_is_not_said_to_be_refused_at_its_removal(iam, monkeypatch):
    """The probe is created twice (the second must be refused: the condition is honoured); a
    refusal of that second PUT was reported as "removing the probe ... it had written", a removal
    never tried."""
    bucket = iam.bucket()
    use_credentials(monkeypatch, iam.user(_writer_policy(bucket)))
    store = Store(f"s3://{bucket}/store")
    creates, create = [], Store.create_exclusive

    def refused_second(self, key, data):
        creates.append(key)
        if len(creates) == 2:
            raise refused("PutObject")
        return create(self, key, data)

    monkeypatch.setattr(Store, "create_exclusive", refused_second)
    with pytest.raises(StoreNotWritable) as raised:
        store.check_writable()
    assert str(raised.value).startswith(f"store s3://{bucket}/store is not writable: writing the probe {creates[0]} again "
                                        "(its first copy was written): PutObject failed: AccessDenied")
    assert "the probe stays in the store" in str(raised.value)
