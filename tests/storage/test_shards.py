"""Resumable shards: removing a published version's shards is safe when two extractions of the
same model finish at once (both remove the folder)."""

from __future__ import annotations

import threading
import types
import time
from datetime import datetime, timezone

from storage.shards import PARTIAL, remove_partial
from storage.store import Store


def test_two_processes_removing_one_partial_folder_both_succeed(tmp_path):
    store = Store(str(tmp_path / "store"))
    for round_ in range(3):
        key = f"features/d/m/v{round_}"
        for shard in range(200):
            store.write_bytes(f"{key}/{PARTIAL}/shard-{shard:05d}.parquet", b"x")
        errors: list[BaseException] = []
        barrier = threading.Barrier(3)

        def remove() -> None:
            try:
                barrier.wait()
                remove_partial(store, key)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=remove) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert not store.exists(f"{key}/{PARTIAL}")


def test_gc_aborts_uploads_a_killed_writer_left_on_s3(s3_store_url, capsys, monkeypatch):
    """s3fs uploads a file of 100 MiB or more in parts; a writer killed mid-upload leaves the parts
    stored (invisible, billed) until the upload is aborted: gc lists and aborts old ones."""
    from flows.cli import main

    store = Store(s3_store_url)
    store.write_bytes("features/d/m/v1/manifest-free.bin", b"x")  # the store exists
    bucket, _, prefix = store.root.partition("/")
    started = store.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"{prefix}/features/d/m/v2/_partial/shard-00000.parquet")
    store.fs.call_s3("upload_part", Bucket=bucket, Key=started["Key"], UploadId=started["UploadId"], PartNumber=1, Body=b"p" * 1000)
    elsewhere = store.fs.call_s3("create_multipart_upload", Bucket=bucket, Key="not-the-store/x.bin")  # outside the root

    def pending() -> list[str]:
        return sorted(u["Key"] for u in store.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []))

    assert store.abandoned_uploads(1e12, dry_run=True) == []  # younger than the age asked: kept (could be live)
    assert store.abandoned_uploads(0, dry_run=True, keep_since=0.0) == []  # started while a run was alive: kept
    # a live run (started long ago, alive now: its process is this one, its heartbeat fresh): gc
    # leaves the uploads it may be making; moto dates uploads years back, so the run starts earlier
    from storage import layout
    from storage.owner import current_owner
    from storage.runs import RUN_HEARTBEAT_SECONDS, RUNNING, alive_key

    store.write_json(layout.run_key("live"), {"run_id": "live", "status": RUNNING, "started_at": "2000-01-01T00:00:00+00:00",
                                              "process": current_owner(), "heartbeat_s": RUN_HEARTBEAT_SECONDS})
    store.write_json(alive_key("live"), {"run_id": "live", "heartbeat_at": time.time()})
    assert main(["gc", "--store", s3_store_url, "--older-than-days", "0"]) == 0
    assert "incomplete upload" not in capsys.readouterr().out and len(pending()) == 2
    store.delete(alive_key("live"))
    store.write_json(layout.run_key("live"), {"run_id": "live", "status": "COMPLETED", "started_at": "2000-01-01T00:00:00+00:00"})
    assert [u["bytes"] for u in store.abandoned_uploads(0, dry_run=True)] == [1000]  # its one part
    # no live run, but gc began a minute before the upload (moto dates every upload at that
    # moment): a run that started during gc may be making it, so it stays
    moto_initiated = datetime(2010, 11, 10, 20, 48, 33, tzinfo=timezone.utc).timestamp()
    assert store.fs.call_s3("list_multipart_uploads", Bucket=bucket)["Uploads"][0]["Initiated"].timestamp() == moto_initiated
    monkeypatch.setattr("flows.cli.time", types.SimpleNamespace(time=lambda: moto_initiated - 60))
    assert main(["gc", "--store", s3_store_url, "--older-than-days", "0"]) == 0
    assert "incomplete upload" not in capsys.readouterr().out and len(pending()) == 2
    monkeypatch.undo()
    assert main(["gc", "--store", s3_store_url, "--older-than-days", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would abort the incomplete upload of features/d/m/v2/_partial/shard-00000.parquet" in out
    assert out.rstrip().endswith("would be freed: 1 incomplete upload(s) 1,000 bytes")
    assert len(pending()) == 2
    assert main(["gc", "--store", s3_store_url, "--older-than-days", "0"]) == 0
    assert "aborted the incomplete upload of features/d/m/v2/_partial/shard-00000.parquet" in capsys.readouterr().out
    assert pending() == [elsewhere["Key"]]
    assert Store(str(s3_store_url)).abandoned_uploads(0) == []


def test_stale_partials_skips_a_version_whose_manifest_is_damaged(tmp_path):
    """store.manifest() raised DamagedManifest out of stale_partials; that version is skipped now
    (its error handed to ``damaged``), the others listed as before."""
    import numpy as np

    from storage.shards import stale_partials, write_shard
    from storage.store_errors import DamagedManifest

    store = Store(str(tmp_path / "store"))
    keys = [store.publish(f"features/d/m/v{i}", {"layer-000.parquet": b"x"}, {"kind": "features"}).manifest["key"] for i in range(3)]
    for key in keys:
        write_shard(store, key, 0, [np.zeros((2, 3), np.float32)])
    store.write_bytes(f"{keys[1]}/manifest.json", b"{not json")
    damaged: list[DamagedManifest] = []
    found = stale_partials(store, damaged=damaged)
    assert [(e["version"], e["reason"]) for e in found] == [(keys[0], "published"), (keys[2], "published")]
    assert [e.version_key for e in damaged] == [keys[1]]
    assert [e["version"] for e in stale_partials(store)] == [keys[0], keys[2]]  # without a collector too


def test_gc_keeps_a_shard_a_live_run_wrote_in_the_second_it_started_on_s3(s3_store_url, capsys):
    """S3's ``LastModified`` has whole seconds and a run's ``started_at`` microseconds: a shard a
    live run wrote in the second it started dated from before the start, and ``prh gc
    --older-than-days 0`` removed it as abandoned. Shards since the live run's start less the
    clock skew are kept."""
    import numpy as np

    from flows.cli import main
    from storage import layout
    from storage.owner import current_owner
    from storage.runs import RUN_HEARTBEAT_SECONDS, RUNNING, alive_key
    from storage.shards import shard_key, write_shard
    from storage.store import modified_at

    store = Store(s3_store_url)
    write_shard(store, "features/d/m/v1", 0, [np.ones((4, 3), np.float32)])
    written = modified_at(store.fs.info(store.path(shard_key("features/d/m/v1", 0))))
    assert written == int(written)  # whole seconds
    started = datetime.fromtimestamp(written + 0.999, timezone.utc).isoformat(timespec="microseconds")
    store.write_json(layout.run_key("live"), {"run_id": "live", "status": RUNNING, "process": current_owner(),
                                              "heartbeat_s": RUN_HEARTBEAT_SECONDS, "started_at": started})
    store.write_json(alive_key("live"), {"run_id": "live", "heartbeat_at": time.time()})
    assert main(["gc", "--store", s3_store_url, "--older-than-days", "0"]) == 0
    assert "_partial" not in capsys.readouterr().out and store.exists(shard_key("features/d/m/v1", 0))


def test_a_shard_is_read_back_only_when_it_holds_what_is_expected(tmp_path):
    """``read_shard``: a stored shard comes back (layers, extras) only for its row count, its
    layers' widths and the items it holds; a shard of other items (another shard size), rows or
    widths is None (computed again); one written without its items is checked by its rows only."""
    import numpy as np

    from storage.shards import read_shard, write_shard

    store = Store(str(tmp_path / "store"))
    layers = [np.arange(8, dtype=np.float32).reshape(4, 2), np.ones((4, 3), np.float32)]
    write_shard(store, "features/d/m/v", 2, layers, {"loss": 1.5}, items=(8, 12))
    got, extras = read_shard(store, "features/d/m/v", 2, 4, [2, 3], items=(8, 12))
    assert extras == {"loss": 1.5} and [x.tolist() for x in got] == [x.tolist() for x in layers]
    assert read_shard(store, "features/d/m/v", 2, 4) is not None  # nothing more asked
    assert read_shard(store, "features/d/m/v", 2, 5, [2, 3], items=(8, 12)) is None  # other rows
    assert read_shard(store, "features/d/m/v", 2, 4, [2, 4], items=(8, 12)) is None  # other widths
    assert read_shard(store, "features/d/m/v", 2, 4, [2, 3], items=(4, 8)) is None  # other items
    assert read_shard(store, "features/d/m/v", 3, 4, [2, 3], items=(12, 16)) is None  # absent
    write_shard(store, "features/d/m/v", 0, layers)  # written before items were recorded
    assert read_shard(store, "features/d/m/v", 0, 4, [2, 3], items=(0, 4)) is not None


def test_a_partial_folder_with_a_fresh_shard_is_not_abandoned(tmp_path):
    """``stale_partials``: a folder is abandoned when its newest shard is older than the limit: one
    old shard beside a fresh one is an extraction still under way. A folder written at
    ``live_since`` or later is never listed (a live run may be extracting into it)."""
    import os

    from storage.shards import stale_partials

    store = Store(str(tmp_path / "store"))
    now = 2_000_000_000.0
    for version, ages in (("mixed", (30 * 86400, 60)), ("old", (30 * 86400, 20 * 86400))):
        for i, age in enumerate(ages):
            key = f"features/d/m/{version}/{PARTIAL}/shard-{i:05d}.parquet"
            store.write_bytes(key, b"x")
            os.utime(store.path(key), (now - age, now - age))
    found = stale_partials(store, older_than_s=7 * 86400, now=now)
    assert [(e["version"], e["shards"], e["newest"], e["reason"]) for e in found] == [
        ("features/d/m/old", 2, now - 20 * 86400, "abandoned")]
    assert stale_partials(store, older_than_s=7 * 86400, now=now, live_since=now - 20 * 86400) == []  # written at its start
    assert [e["version"] for e in stale_partials(store, older_than_s=7 * 86400, now=now, live_since=now - 20 * 86400 + 1)] == [
        "features/d/m/old"]
    # abandoned once its newest shard is older than the limit, not when exactly that old
    assert stale_partials(store, older_than_s=20 * 86400, now=now) == []
    assert [e["version"] for e in stale_partials(store, older_than_s=20 * 86400 - 1, now=now)] == ["features/d/m/old"]


def test_gc_of_an_unpublished_versions_old_shards_leaves_no_empty_folder(tmp_path, capsys):
    """`prh gc` removing the old shards of a version never published removed `_partial/` and left
    the version's folder behind, empty; now that goes too, and a published version's folder (its
    files) stays whole after its leftover shards go."""
    import os

    import numpy as np

    from flows.cli import main
    from storage.shards import write_shard

    store = Store(str(tmp_path / "store"))
    unpublished = "features/0123456789abcdef/m/fedcba9876543210"
    published = store.publish("features/0123456789abcdef/m/00112233445566ff", {"layer-000.parquet": b"x"},
                              {"kind": "features"}).manifest["key"]
    for version in (unpublished, published):
        write_shard(store, version, 0, [np.ones((4, 3), np.float32)])
    old = time.time() - 30 * 86400
    for root, dirs, files in os.walk(tmp_path / "store" / "features"):
        for name in files + dirs:
            os.utime(os.path.join(root, name), (old, old))
    assert main(["gc", "--store", store.url]) == 0
    assert "2 shard folder(s)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "store" / "features" / "0123456789abcdef" / "m")) == ["00112233445566ff"]
    assert sorted(os.listdir(store.path(published))) == ["layer-000.parquet", "manifest.json"]
