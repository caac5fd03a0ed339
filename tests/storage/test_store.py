import errno
import re
import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest

from storage.keys import safe_component
from storage.store import MANIFEST, Store
from storage.store_errors import StoreIOError
from storage.versioning import content_id, table_digest


@pytest.mark.parametrize("bad", ["..", "../x", "/etc", "a/b", "s3://x", "", ".hidden", "a..b", "x" * 129, "a b", "a\\b"])
def test_unsafe_components_are_refused(bad):
    with pytest.raises(ValueError, match="not a safe storage key"):
        safe_component(bad, "model name")


def test_safe_component_passes_normal_names():
    assert safe_component("efficientnet-lite0_v1.2") == "efficientnet-lite0_v1.2"


def test_publish_writes_data_then_manifest_and_is_idempotent(store_url):
    store = Store(store_url)
    table = pa.table({"x": [1, 2, 3]})
    first = store.publish("features/v1", {"a.parquet": table, "b.bin": b"hello"}, {"kind": "t", "catalog": {"n": 3}})
    assert first.written
    assert store.read_table("features/v1/a.parquet").equals(table)
    assert store.read_bytes("features/v1/b.bin") == b"hello"
    manifest = store.manifest("features/v1")
    assert manifest["files"]["b.bin"]["bytes"] == 5
    assert manifest["catalog"] == {"n": 3}
    again = store.publish("features/v1", {"a.parquet": pa.table({"x": [9]})}, {"kind": "t"})
    assert not again.written
    assert store.read_table("features/v1/a.parquet").equals(table)  # immutable: not overwritten
    assert [k for k, _ in store.manifests("features")] == ["features/v1"]


def test_version_without_manifest_is_invisible(store_url):
    store = Store(store_url)
    store.write_bytes("features/half/a.parquet", b"partial")
    assert store.manifest("features/half") is None
    assert list(store.manifests("features")) == []


def test_versions_published_within_one_second_still_order_by_time(tmp_path):
    """The catalog's current rows order versions by ``published_at``: to the second, two versions
    published back to back tied and the version id picked the "current" one."""
    store = Store(str(tmp_path / "s"))
    for i in range(3):
        store.publish(f"x/v{i}", {"a.bin": b"1"}, {})
    times = [store.manifest(f"x/v{i}")["published_at"] for i in range(3)]
    moments = [datetime.fromisoformat(t) for t in times]
    assert all(m.tzinfo is not None and m.utcoffset().total_seconds() == 0 for m in moments)
    assert moments == sorted(moments) and len(set(moments)) == 3, times


def test_local_writes_leave_no_temporary_files(tmp_path):
    store = Store(str(tmp_path / "s"))
    store.publish("x/v", {"a.bin": b"1" * 1000}, {})
    names = sorted(p.name for p in (tmp_path / "s" / "x" / "v").iterdir())
    assert names == ["a.bin", MANIFEST]
    assert json.loads((tmp_path / "s" / "x" / "v" / MANIFEST).read_text())["key"] == "x/v"


def test_content_id_is_order_independent_and_sensitive():
    assert content_id({"a": 1, "b": [1, 2]}) == content_id({"b": [1, 2], "a": 1})
    assert content_id({"a": 1}) != content_id({"a": 2})
    assert len(content_id({})) == 16


def test_table_digest_ignores_chunking_but_not_content():
    t1 = pa.table({"id": ["a", "b"], "img": [b"\x00\x01", b""]})
    t2 = pa.concat_tables([t1.slice(0, 1), t1.slice(1, 1)])
    assert table_digest(t1) == table_digest(t2)
    t3 = pa.table({"id": ["a", "b"], "img": [b"\x00", b"\x01"]})  # same bytes, other split
    assert table_digest(t1) != table_digest(t3)


def test_stale_partials_by_age_and_publication(store_url):
    """Shard folders count as stale when their version is published or their newest shard is
    older than the limit; the ages come from the store's own listing (local mtime, S3
    LastModified)."""
    import time

    import numpy as np

    from storage.shards import remove_stale_partials, shard_key, stale_partials, write_shard

    store = Store(store_url)
    layer = [np.zeros((2, 3), np.float32)]
    write_shard(store, "features/d/m/v1", 0, layer)
    write_shard(store, "features/d/m/v1", 1, layer)
    write_shard(store, "features/d/m/v2", 0, layer)
    store.publish("features/d/m/v2", {"layer-000.parquet": b"x"}, {"kind": "features"})
    assert [(e["version"], e["reason"]) for e in stale_partials(store, 3600.0)] == [("features/d/m/v2", "published")]
    later = stale_partials(store, 3600.0, now=time.time() + 7200.0)
    assert [(e["version"], e["shards"], e["reason"]) for e in later] == [("features/d/m/v1", 2, "abandoned"),
                                                                       ("features/d/m/v2", 1, "published")]
    assert later[0]["bytes"] > 0 and time.time() - 600 < later[0]["newest"] <= time.time() + 60
    assert remove_stale_partials(store, 3600.0) and not store.exists(shard_key("features/d/m/v2", 0))
    assert store.exists(shard_key("features/d/m/v1", 1)) and store.manifest("features/d/m/v2") is not None


def test_key_of_inverts_path(store_url):
    store = Store(store_url)
    assert store.key_of(store.path("features/d/m/v1/manifest.json")) == "features/d/m/v1/manifest.json"
    assert store.key_of(store.uri("runs/r.json")) == "runs/r.json"  # with a protocol prefix (s3://) too
    with pytest.raises(ValueError, match="is not under the store root"):
        store.key_of(store.root + "-sibling/x")


@pytest.mark.parametrize("url, message", [
    ("", "is empty"), ("   ", "is empty"), (" store", "starts or ends with spaces"),
    ("s3:/my-bucket/prh", "looks like a s3 URL without '//': write s3://my-bucket/prh"),
    ("s3:my-bucket", "write s3://my-bucket"), ("s3://", "names no bucket or host"), ("s3:///", "names no bucket or host"),
    ("file:///", "names the filesystem's root"), ("file://", "names the filesystem's root"),
    # the suggested fix of a one-slash file URL kept its path absolute (it said file://tmp/x, a
    # relative folder), and file://tmp/x itself was read as the relative folder tmp/x
    ("file:/tmp/prh-store", "write file:///tmp/prh-store"), ("file:tmp/x", "write tmp/x (a folder in the working directory)"),
    ("file://tmp/x", "is ambiguous: write file:///tmp/x for the absolute path /tmp/x, or tmp/x for a folder"),
    ("file://localhost/tmp/x", "write file:///tmp/x (or /tmp/x)"), ("file:", "write file:///ABSOLUTE/PATH or a folder's path"),
    # the path '/' (and '//', '/tmp/..') became the URL 'file:', whose root fsspec takes for the
    # working directory: `prh run --store /` wrote a store there and `prh gc --store /` cleaned it
    ("/", "names the filesystem's root"), ("//", "names the filesystem's root"), ("/tmp/..", "names the filesystem's root"),
    ("file:///tmp/..", "names the filesystem's root"),
])
def test_store_urls_that_cannot_mean_what_was_meant_are_refused(url, message, tmp_path, monkeypatch):
    """A one-slash 's3:/bucket' became a folder 's3:' in the working directory, 's3://' a folder
    's3:', and '' or 'file:///' the working directory itself: a run 'to S3' COMPLETED locally."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        Store(url)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["s3://AKIAURLKEY77:UrlSecret77zz@bucket/store", "s3://UrlSecret77zz@bucket", "gs://x:UrlSecret77zz@b/p",
                                 # a link of a chained URL: s3fs gets it as its own URL (and had shown the secret)
                                 "simplecache::s3://AKIAURLKEY77:UrlSecret77zz@bucket/store"])
def test_credentials_in_an_object_store_url_are_refused_without_showing_them(url, capsys):
    """s3fs took 'KEY:SECRET@bucket' for the bucket's name and botocore's "Invalid bucket name"
    error printed the secret (the URL itself was shown redacted)."""
    from flows.cli import main

    with pytest.raises(ValueError, match="names credentials in the URL") as refused:
        Store(url)
    assert "UrlSecret77zz" not in str(refused.value) and "://b" in str(refused.value)
    assert main(["sql", "select 1", "--store", url]) == 2
    err = capsys.readouterr().err
    assert "names credentials in the URL" in err and "UrlSecret77zz" not in err


@pytest.mark.parametrize("url", ["s3://AKIAURLKEY77:Url/Secret77zz@bucket/store", "gs://x:Url/Secret77zz+/q@b/p",
                                 "simplecache::s3://AKIAURLKEY77:Url/Secret77zz@bucket/store"])
def test_credentials_whose_secret_holds_a_slash_are_refused_without_showing_them(url, capsys):
    """About half of AWS secret keys hold a '/': the authority then ends inside the secret, the
    '@' was read as part of the path, and the URL was neither refused nor shown without it
    (s3fs would take 'KEY:Url' for the bucket's name). A bucket name holds no ':'."""
    from flows.cli import main

    with pytest.raises(ValueError, match="names credentials in the URL") as refused:
        Store(url)
    assert "Secret77zz" not in str(refused.value) and "Url/" not in str(refused.value) and "://b" in str(refused.value)
    assert main(["sql", "select 1", "--store", url]) == 2
    err = capsys.readouterr().err
    assert "names credentials in the URL" in err and "Secret77zz" not in err and "Url/" not in err


def test_local_paths_with_colons_stay_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Store("my:folder").root == str(tmp_path / "my:folder")
    assert Store("./s3:/bucket").root == str(tmp_path / "s3:" / "bucket")


def test_float_columns_are_written_without_a_dictionary():
    """Feature vectors were dictionary-encoded (nearly every float distinct: each stored twice),
    1.04-1.48x their raw float32 size at N=1024; byte-stream-split floats compress below it."""
    import io

    import pyarrow.parquet as pq

    from storage.store import table_to_parquet_bytes

    x = np.random.default_rng(0).normal(size=(1024, 192)).astype(np.float32)
    table = pa.table({"model": ["vit"] * 1024, "sample_id": [f"s{i:04d}" for i in range(1024)],
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 192),
                      "score": x[:, 0].astype(np.float64)})
    data = table_to_parquet_bytes(table)
    assert pq.read_table(io.BytesIO(data)).equals(table)
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["vector.list.element"] and "RLE_DICTIONARY" not in encodings["vector.list.element"]
    assert "BYTE_STREAM_SPLIT" in encodings["score"] and "RLE_DICTIONARY" in encodings["model"]
    assert len(data) < x.nbytes  # was 1.48x at this width


def test_read_many_fetches_files_and_skips_vanished_ones(store_url):
    store = Store(store_url)
    for i in range(5):
        store.write_bytes(f"runs/r{i}.json", f'{{"run_id": "r{i}"}}'.encode())
    paths = [store.path(f"runs/r{i}.json") for i in range(5)] + [store.path("runs/gone.json")]
    assert store.read_many(paths, "runs") == [f'{{"run_id": "r{i}"}}'.encode() for i in range(5)] + [None]
    assert store.read_many([], "runs") == []


def test_s3_listings_see_what_other_writers_published_since(s3_store_url):
    """A long-lived process (a Dask worker, a served flow) lists the store, another process or
    host publishes a version, and the next listing must see it: s3fs's listings cache (on by
    default in s3fs) answered from the earlier listing and missed it."""
    import s3fs

    reader = Store(s3_store_url)
    reader.publish("features/d/a/v1", {"layer-000.parquet": b"a"}, {"kind": "features"})
    assert [k for k, _ in reader.manifests("features")] == ["features/d/a/v1"]
    assert len(reader.glob("features", "*/*/*/manifest.json")) == 1
    other = s3fs.S3FileSystem(endpoint_url=reader.fs.endpoint_url, skip_instance_cache=True)  # another process
    bucket_path = reader.path("features/d/b/v2")
    other.pipe_file(f"{bucket_path}/layer-000.parquet", b"b")
    other.pipe_file(f"{bucket_path}/manifest.json", json.dumps({"kind": "features", "files": {}}).encode())
    assert len(reader.glob("features", "*/*/*/manifest.json")) == 2
    assert reader.exists("features/d/b/v2/manifest.json")


def test_a_local_write_survives_its_folder_removed_meanwhile(tmp_path, monkeypatch):
    """Two runs extract one version: the first publishes and clears `_partial/` while the second
    renames its shard there; the rename failed with FileNotFoundError and the second run's model
    failed. The write now makes the folder again and retries."""
    import os as os_module
    import shutil

    store = Store(str(tmp_path / "store"))
    real = os_module.replace
    calls = []

    def replace_after_removal(src, dst):
        if not calls:
            calls.append(dst)
            shutil.rmtree(os_module.path.dirname(dst))  # the other run's remove_partial
        return real(src, dst)

    monkeypatch.setattr("storage.store.os.replace", replace_after_removal)
    store.write_bytes("features/d/m/v/_partial/shard-00000.parquet", b"shard")
    assert store.read_bytes("features/d/m/v/_partial/shard-00000.parquet") == b"shard" and calls
    assert sorted(p.name for p in (tmp_path / "store/features/d/m/v/_partial").iterdir()) == ["shard-00000.parquet"]


def test_runs_starting_together_both_find_the_store_writable(tmp_path):
    """Every prh run and prh gc first probes the store; probes shared a `_probe/` folder that one
    prober removed while another wrote into it: ~2% of two processes' probes failed with 'not
    writable' (a nightly run and a UI run starting together). Each probe is now its own file."""
    import subprocess
    import sys

    loop = ("import sys; from storage.store import Store\n"
            "store, failures = Store(sys.argv[1]), 0\n"
            "for _ in range(600):\n"
            "    try:\n"
            "        store.check_writable(min_free_mb=0)\n"
            "    except Exception:\n"
            "        failures += 1\n"
            "print(failures)\n")
    url = str(tmp_path / "store")
    probers = [subprocess.Popen([sys.executable, "-c", loop, url], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    assert [int(p.communicate(timeout=120)[0]) for p in probers] == [0, 0]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == []  # no probe and no folder left


def test_a_local_store_is_probed_as_before(tmp_path, monkeypatch):
    """The probe for endpoints that ignore conditional writes is for object stores: a local disk's
    exclusive create is a hard link, atomic. Its probe is one plain write and removal, and
    ``PRH_SINGLE_WRITER`` is not read."""
    created: list[str] = []
    original = Store.create_exclusive
    monkeypatch.setattr(Store, "create_exclusive", lambda self, key, data: created.append(key) or original(self, key, data))
    monkeypatch.setenv("PRH_SINGLE_WRITER", "maybe")
    for url in (str(tmp_path / "store"), f"file://{tmp_path}/other"):
        Store(url).check_writable(min_free_mb=0)
    assert created == [] and sorted(p.name for p in (tmp_path / "store").iterdir()) == []


def test_single_writer_takes_on_and_off_as_the_other_yes_no_variables_do():
    """``PRH_SINGLE_WRITER`` reads as ``storage.env_numbers.env_flag``: ``on``/``off`` too (``on``
    had been refused by name, while the hub's offline variables take it); anything else is still
    refused by name, never read as a yes."""
    from storage.store import single_writer_accepted

    assert single_writer_accepted({"PRH_SINGLE_WRITER": "on"}) is True
    assert single_writer_accepted({"PRH_SINGLE_WRITER": "Off"}) is False
    assert single_writer_accepted({"PRH_SINGLE_WRITER": "yes"}) is True and single_writer_accepted({}) is False
    with pytest.raises(ValueError, match="^PRH_SINGLE_WRITER='maybe' is not "):
        single_writer_accepted({"PRH_SINGLE_WRITER": "maybe"})


def test_a_manifest_temporary_file_of_a_killed_writer_is_removed_by_gc(tmp_path):
    """A local manifest is created by linking a temporary file to its name; a writer killed
    between the link and the unlink left `.manifest.json.tmp-*` in a published folder for good."""
    import os
    import time

    store = Store(str(tmp_path / "store"))
    store.publish("features/d/m/v", {"a.bin": b"1"}, {"kind": "t"})
    store.write_bytes("features/d/m/v/.manifest.json.tmp-0123", b"{}")
    store.write_bytes("features/d/m/v/.manifest.json.tmp-4567", b"{}")  # in flight: fresh
    old = time.time() - 3600
    os.utime(store.path("features/d/m/v/.manifest.json.tmp-0123"), (old, old))
    assert store.remove_dead_claim_attempts() == {"features/d/m/v/.manifest.json.tmp-0123": 2}
    assert store.exists("features/d/m/v/.manifest.json.tmp-4567") and store.manifest("features/d/m/v") is not None


def test_a_min_free_space_that_is_not_a_number_is_refused_by_name(tmp_path, monkeypatch):
    """PRH_MIN_FREE_MB=abc failed `prh run` with "could not convert string to float: 'abc'"."""
    monkeypatch.setenv("PRH_MIN_FREE_MB", "abc")
    with pytest.raises(ValueError, match=r"^PRH_MIN_FREE_MB='abc' is not a number of MiB, 0 or more$"):
        Store(str(tmp_path / "s")).check_writable()
    monkeypatch.setenv("PRH_MIN_FREE_MB", "0")
    Store(str(tmp_path / "s")).check_writable()


@pytest.mark.parametrize("below", ["", "sub/store"])
def test_a_store_path_that_is_a_file_says_so(tmp_path, below):
    """The untrusted-input hunt: `prh run --store notes.txt` said "is not writable: File exists
    (errno 17)" (and "Not a directory (errno 20)" for notes.txt/sub/store); the file is untouched."""
    from storage.store_errors import StoreNotWritable

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(StoreNotWritable, match=re.escape(f"{str(notes)!r} is a file, not a folder")):
        Store(str(notes / below) if below else str(notes)).check_writable()
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_relative_store_path_that_resolves_to_the_root_is_refused(monkeypatch):
    """The review: the textual check let '..' from /tmp (and '.' from /) through; the resolved
    root became the URL 'file:', which fsspec reads as the working directory."""
    monkeypatch.chdir("/tmp")
    with pytest.raises(ValueError, match=r"store URL '\.\.' names the filesystem's root \(/\)"):
        Store("..")
    monkeypatch.chdir("/")
    with pytest.raises(ValueError, match=r"store URL '\.' names the filesystem's root"):
        Store(".")


def test_a_file_url_is_percent_decoded_and_a_store_url_opens_its_folder_again(tmp_path):
    """``file:///…/my%20store`` (as ``Path.as_uri()`` and file managers write it) was the folder
    ``my%20store``: RFC 8089 decodes it, so it is ``my store``, the folder its plain path names.
    A plain path is used as written (``50%25`` stays), and every store's URL opens its own folder
    again, as runs pass it on to their tasks."""
    (tmp_path / "my store").mkdir()
    encoded = Store((tmp_path / "my store").as_uri())
    assert "%20" in (tmp_path / "my store").as_uri() and encoded.root == str(tmp_path / "my store")
    assert encoded.url == Store(str(tmp_path / "my store")).url == f"file://{tmp_path}/my store"
    literal = Store(str(tmp_path / "50%25"))
    assert literal.root == str(tmp_path / "50%25") and literal.url == f"file://{tmp_path}/50%2525"
    for store in (encoded, literal, Store(f"local://{tmp_path}/a%20b/")):
        assert Store(store.url).root == store.root
    encoded.write_bytes("runs/x.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my store"]
    assert Store("s3://bucket/my%20store").root == "bucket/my%20store"  # s3fs keys are used as written


@pytest.mark.parametrize("suffix, message", [
    ("%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E", "names the filesystem's root"),
    ("a%00b", "decodes to a path holding a NUL character (%00)"),
    ("st%F6re", "holds bytes that are not UTF-8 text"),
])
def test_a_file_url_that_decodes_to_no_folder_is_refused(tmp_path, suffix, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Store(f"file://{tmp_path}/{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_a_local_stores_read_errors_are_the_operating_systems_own(tmp_path):
    """A local store's errors are returned unchanged (only an object store's are re-raised naming
    the store and the S3 cause): the OS's error, its errno and the file it names."""
    store = Store(str(tmp_path))
    with pytest.raises(FileNotFoundError) as missing:
        store.read_bytes("runs/missing.json")
    assert missing.value.errno == errno.ENOENT and missing.value.filename == str(tmp_path / "runs" / "missing.json")
    with pytest.raises(OSError) as too_long:
        store.read_bytes("n" * 300)
    assert too_long.value.errno == errno.ENAMETOOLONG and not isinstance(too_long.value, StoreIOError)


def test_a_store_an_older_prh_wrote_under_the_escaped_name_is_named_not_left_behind(tmp_path):
    """An older prh took ``file:///…/my%20store`` literally and wrote the folder ``my%20store``: the
    same URL now means ``my store``; it is refused while only the old folder exists, naming it,
    instead of starting a new empty store beside it."""
    (tmp_path / "my%20store" / "runs").mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(f"but the folder '{tmp_path}/my%20store' does (written by a prh that "
                                                   f"read the escapes literally): give that folder's path")):
        Store(f"file://{tmp_path}/my%20store")
    assert Store(str(tmp_path / "my%20store")).root == str(tmp_path / "my%20store")


def test_unpublish_takes_a_dead_writers_claim_over_and_leaves_a_live_writers_version(tmp_path):
    """``unpublish`` works under the version's claim: a stale one (its writer long silent) is
    taken over, the version removed and no claim left behind; a live writer's claim leaves the
    version as it is (False)."""
    import time

    from storage.store import CLAIM

    store = Store(str(tmp_path / "store"))
    for key in ("features/d/m/v1", "features/d/m/v2"):
        store.publish(key, {"a.bin": b"1"}, {})
    store.write_bytes(f"features/d/m/v1/{CLAIM}", json.dumps({"owner": "dead", "claimed_at": 0}).encode())
    assert store.unpublish("features/d/m/v1") is True
    assert store.manifest("features/d/m/v1") is None
    assert not store.exists(f"features/d/m/v1/{CLAIM}") and not store.exists("features/d/m/v1/a.bin")
    live = json.dumps({"owner": "someone-else", "claimed_at": time.time(), "process": {"host": "elsewhere", "pid": 1}}).encode()
    store.write_bytes(f"features/d/m/v2/{CLAIM}", live)
    assert store.unpublish("features/d/m/v2") is False
    assert store.manifest("features/d/m/v2") is not None and store.read_bytes("features/d/m/v2/a.bin") == b"1"
    assert store.read_bytes(f"features/d/m/v2/{CLAIM}") == live


def test_a_store_folder_named_in_another_encoding_is_refused_naming_it(tmp_path):
    """The environment hunt: a store folder named in Latin-1 (`st\\xf6re`, bytes that are not
    UTF-8: an old disk, a mounted share), or any non-ASCII path under `LC_ALL=C PYTHONUTF8=0`,
    reaches Python as lone surrogates; the store opened, then the catalog failed with a bare
    `RuntimeError: std::bad_cast` from DuckDB. Refused when the store is opened, naming it."""
    import os

    from storage.catalog import connect
    from tests.storage.catalog_store import build_catalog_store

    build_catalog_store(str(tmp_path / "store"))
    latin1 = os.fsencode(str(tmp_path)) + b"/st\xf6re"
    os.rename(tmp_path / "store", latin1)
    path = os.fsdecode(latin1)  # what sys.argv or os.listdir gives for it
    with pytest.raises(ValueError, match=r"store URL 'file://.*/st\\udcf6re' holds bytes that are not UTF-8 text"):
        connect(Store(path))
    with pytest.raises(ValueError, match="LC_ALL=C.UTF-8 or PYTHONUTF8=1"):
        Store("file://" + path)


def test_a_chained_url_whose_filesystem_cannot_write_through_it_is_refused_naming_it():
    """The researcher review: `--store s3://bucket/x::file` opened (fsspec hands s3fs the chain's
    `target_options`), then the write probe failed with aiobotocore's bare `TypeError`
    (`AioSession.__init__() got an unexpected keyword argument 'target_options'`), which named
    neither the store nor what was wrong with it. A ValueError naming the URL, before any write."""
    store = Store("s3://bucket/x::file")
    with pytest.raises(ValueError, match=r"^store s3://bucket/x::file cannot be written through: .*'target_options'.*"
                                         r"chained URL.*a store is a folder, file://PATH or s3://BUCKET/PREFIX"):
        store.check_writable()
