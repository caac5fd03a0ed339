"""The catalog over S3 reads the files of one schema together (``union_by_name = false``, one
footer bound per schema fingerprint) and finds damaged files from one listing: same answers as
binding every footer, fewer requests, the same warnings.

The reference for the answers is the same store copied to a local folder, whose catalog still
binds every footer (``union_by_name = true`` over all files)."""

from __future__ import annotations

import logging

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from storage import layout
from storage.catalog import QueryError, connect, query
from storage.features import layer_table, layer_tables
from storage.parquet_schema import schema_fingerprint
from storage.store import MANIFEST, Store, table_to_parquet_bytes
from storage.verify import verify_store
from tests.storage.catalog_store import DATASET, build_catalog_store
from tests.storage.s3_fault_proxy import FaultProxy

VIEWS = ("samples", "features", "alignment", "alignment_best", "alignment_all", "alignment_best_all", "datasets", "models", "runs")
OLD_COLUMNS = ("ci_low", "ci_high", "bootstrap")  # best.parquet gained them later


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    """A proxy in front of the moto server, without faults: it counts the requests."""
    with FaultProxy(s3_endpoint) as p:
        yield p


def _through(proxy: FaultProxy, url: str) -> Store:
    """The store at ``url`` reached through ``proxy`` (its own client, nothing cached)."""
    return Store(url, {"endpoint_url": proxy.url, "skip_instance_cache": True})


def _rows(con, view: str) -> list[dict]:
    return query(con, f"select * from {view} order by all").to_pylist()


def _describe(con, view: str) -> list[tuple]:
    return [(r["column_name"], r["column_type"]) for r in query(con, f"describe {view}").to_pylist()]


def _local_copy(store: Store, tmp_path) -> Store:
    """The S3 store copied to a local folder (the catalog there binds every footer)."""
    target = tmp_path / "copy"
    store.fs.get(store.root + "/", str(target), recursive=True)
    return Store(str(target))


def _strip_fingerprints(store: Store, version_key: str) -> None:
    """Rewrite a version's manifest as it was before fingerprints (a store published earlier)."""
    manifest = store.manifest(version_key)
    for entry in manifest["files"].values():
        entry.pop("schema", None)
    store.write_json(f"{version_key}/{MANIFEST}", manifest)


def _mixed_store(url: str) -> tuple[Store, dict[str, str]]:
    """The catalog test store plus files of other schemas: an old ``best.parquet`` without the
    bootstrap columns and without fingerprints, and a features version whose ``layer`` is int32
    (fingerprinted: a second schema group). Returns the store and the added versions' keys."""
    store = build_catalog_store(url)
    [(old_key, _)] = list(store.manifests(layout.ALIGNMENT))[:1]
    best = store.read_table(f"{old_key}/{layout.BEST_FILE}")
    version = "al-old-schema"
    key = layout.alignment_key(DATASET, "vit-small", "lm-old", version)
    best = best.drop_columns(list(OLD_COLUMNS))
    for column, value in (("alignment_version", version), ("model_a", "vit-small"), ("model_b", "lm-old")):
        best = best.set_column(best.schema.get_field_index(column), column, pa.array([value] * best.num_rows))
    lineage = {"features": {"vit-small": "fv-vit-small", "lm-old": "fv-lm-old"}}
    store.publish(key, {layout.BEST_FILE: best}, {"kind": "alignment", "lineage": lineage})
    _strip_fingerprints(store, key)
    rng = np.random.default_rng(3)
    ids = [f"s{i:02d}" for i in range(8)]
    layers = [rng.normal(size=(8, d)).astype(np.float32) for d in (7, 9)]
    wide = {}
    for name, table in layer_tables("lm-int32", "fv-lm-int32", ids, layers).items():
        wide[name] = table.set_column(2, "layer", table.column("layer").cast(pa.int32()))
    int32_key = layout.features_key(DATASET, "lm-int32", "fv-lm-int32")
    store.publish(int32_key, wide, {"kind": "features", "catalog": {"model": "lm-int32", "feature_version": "fv-lm-int32"}})
    return store, {"old_best": key, "int32_features": int32_key}


def test_schema_groups_give_the_answers_of_binding_every_footer(s3_store_url, proxy, tmp_path):
    store, added = _mixed_store(s3_store_url)
    # the set-up holds what the test is about: two schema groups in features, old best files without fingerprints
    features = {e.get("schema") for _, m in store.manifests(layout.FEATURES) for e in m["files"].values()}
    assert len(features) == 2 and None not in features  # widths 6..12 share one; int32 layer is another
    assert all("schema" not in e for e in store.manifest(added["old_best"])["files"].values())
    reference = connect(_local_copy(store, tmp_path))
    con = connect(_through(proxy, s3_store_url))
    for view in VIEWS:
        assert _describe(con, view) == _describe(reference, view), view
        assert _rows(con, view) == _rows(reference, view), view
    sql = dict(con.execute("select view_name, sql from duckdb_views() where not internal").fetchall())
    assert "union_by_name = false" in sql["features"] and "UNION ALL BY NAME" in sql["alignment_best_all"]
    old = query(con, "select count(*) n, count(ci_low) c, count(feature_version_a) f from alignment_best_all "
                     "where alignment_version = 'al-old-schema'").to_pylist()
    assert old == [{"n": 2, "c": 0, "f": 2}]  # read, the columns it lacks null, its lineage joined
    assert all(check.ok for check in verify_store(store))  # old and new manifests both verify


def _cut(store: Store, key: str, keep: int) -> None:
    store.fs.pipe_file(store.path(key), store.read_bytes(key)[:keep])


def test_damaged_files_are_left_out_with_a_warning_from_the_listing(s3_store_url, proxy, tmp_path, caplog):
    store = build_catalog_store(s3_store_url)
    reference = connect(_local_copy(store, tmp_path))
    keys = {m["catalog"]["model"]: k for k, m in store.manifests(layout.FEATURES)}
    cut = f"{keys['lm-large']}/layer-002.parquet"
    _cut(store, cut, 300)  # cut short: the listing shows another size than the manifest's
    gone = f"{keys['vit-small']}/layer-001.parquet"
    store.fs.rm_file(store.path(gone))
    # the first file of its schema group overwritten by garbage of its own size: the listing
    # cannot tell, binding fails, and the old fallback names it
    [first_best, *_] = [f"{k}/{layout.BEST_FILE}" for k, _ in store.manifests(layout.ALIGNMENT)]
    size = len(store.read_bytes(first_best))
    store.fs.pipe_file(store.path(first_best), b"\0" * size)
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        con = connect(_through(proxy, s3_store_url))
    assert f"{store.read_uri(gone)}: the file is missing; left out of the features view" in caplog.text
    assert f"{store.read_uri(cut)}: 300 bytes, the manifest says" in caplog.text
    assert f"{store.read_uri(first_best)}: " in caplog.text and "left out of the alignment_best_all view" in caplog.text
    left = query(reference, "select count(*) from features where not ((model = 'lm-large' and layer = 2) "
                            "or (model = 'vit-small' and layer = 1))").column(0)[0].as_py()
    assert query(con, "select count(*) from features").column(0)[0].as_py() == left
    assert _rows(con, "features") == query(reference, "select * from features where not ((model = 'lm-large' and layer = 2) "
                                                      "or (model = 'vit-small' and layer = 1)) order by all").to_pylist()
    version = first_best.split("/")[-2]
    assert _rows(con, "alignment_best_all") == query(
        reference, f"select * from alignment_best_all where alignment_version <> '{version}' order by all").to_pylist()
    assert _rows(con, "alignment_all") == _rows(reference, "alignment_all")  # the other views are whole


def _features_store(url: str, layers: int) -> Store:
    """Two models' features, ``layers`` layer files each (widths 4, 5, ...), nothing else."""
    store = Store(url)
    rng = np.random.default_rng(5)
    ids = [f"s{i}" for i in range(4)]
    for model in ("a", "b"):
        vectors = [rng.normal(size=(len(ids), 4 + i)).astype(np.float32) for i in range(layers)]
        store.publish(layout.features_key(DATASET, model, f"fv-{model}"), layer_tables(model, f"fv-{model}", ids, vectors),
                      {"kind": "features", "catalog": {"model": model, "feature_version": f"fv-{model}"}})
    return store


def _connect_requests(proxy: FaultProxy, url: str) -> tuple[int, int]:
    """(requests that ``connect`` sent, rows of the features view)."""
    store = _through(proxy, url)
    before = proxy.counts["requests"]
    con = connect(store)
    sent = proxy.counts["requests"] - before
    return sent, query(con, "select count(*) from features").column(0)[0].as_py()


def test_connect_requests_do_not_grow_with_the_number_of_files(s3_endpoint, proxy):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    urls = {}
    for layers in (4, 8):
        fs.mkdir(bucket := f"prh-requests-{layers}")
        urls[layers] = f"s3://{bucket}/store"
        _features_store(urls[layers], layers)
    few, rows_few = _connect_requests(proxy, urls[4])
    many, rows_many = _connect_requests(proxy, urls[8])
    assert (rows_few, rows_many) == (2 * 4 * 4, 2 * 8 * 4)  # every file is in the view
    # twice the files, the same requests (binding every footer cost at least one more per file)
    assert many - few <= 1, (few, many)


def _describe_file(path: str) -> list[tuple]:
    return duckdb.sql(f"describe select * from read_parquet('{path}')").fetchall()


def test_equal_fingerprints_are_files_duckdb_binds_alike(tmp_path):
    """Variants of a layer file: DuckDB binds two files to the same columns exactly when their
    fingerprints are equal (widths, dictionary encoding and list kinds are invisible to it)."""
    ids = ["a", "b", "c"]
    base = layer_table("m", "v", 0, ids, np.ones((3, 4), np.float32))
    vector = base.column("vector").combine_chunks()
    variants = {
        "width 4": base,
        "width 9": layer_table("m", "v", 3, ids, np.ones((3, 9), np.float32)),
        "plain strings": base.set_column(0, "model", base.column("model").cast(pa.string())),
        "large strings": base.set_column(3, "sample_id", base.column("sample_id").cast(pa.large_string())),
        "variable list": base.set_column(4, "vector", pa.array(vector.to_pylist(), pa.list_(pa.float32()))),
        "int32 layer": base.set_column(2, "layer", base.column("layer").cast(pa.int32())),
        "double vector": base.set_column(4, "vector", pa.array(vector.to_pylist(), pa.list_(pa.float64()))),
        "no sample_id": base.drop_columns(["sample_id"]),
        "columns reordered": base.select(["sample_id", "model", "feature_version", "layer", "vector"]),
    }
    bound, fingerprints = {}, {}
    for name, table in variants.items():
        data = table_to_parquet_bytes(table)
        path = tmp_path / f"{name.replace(' ', '_')}.parquet"
        path.write_bytes(data)
        bound[name], fingerprints[name] = _describe_file(str(path)), schema_fingerprint(data)
    for a in variants:
        for b in variants:
            assert (fingerprints[a] == fingerprints[b]) == (bound[a] == bound[b]), (a, b)
    assert len(set(fingerprints.values())) == 5  # the widths, string and list kinds share one
    assert schema_fingerprint(b"not parquet") is None


def test_select_star_has_the_canonical_column_order_on_s3_and_locally(s3_store_url, proxy, tmp_path):
    """An old version (no fingerprints, no ``unit`` or ``ci_degenerate``, read first) beside new
    ones: ``SELECT *`` had the old file's order plus the rest on one kind of store and the new
    files' on the other. Both now have ``_EMPTY_VIEWS``' order, then the added columns, and the
    old rows show ``unit = 'sample'``."""
    from storage.catalog import _EMPTY_VIEWS, catalog_sources

    store = build_catalog_store(s3_store_url)
    [(source, _), *_] = list(store.manifests(layout.ALIGNMENT))
    version, model_a = "al-old-first", "vit-a-old"  # its pair folder sorts before every other
    tables = {}
    for name in (layout.SCORES_FILE, layout.BEST_FILE):
        table = store.read_table(f"{source}/{name}")
        table = table.drop_columns([c for c in ("unit", "ci_degenerate") if c in table.column_names])
        for column, value in (("alignment_version", version), ("model_a", model_a)):
            table = table.set_column(table.column_names.index(column), column, pa.array([value] * table.num_rows))
        tables[name] = table.select(list(reversed(table.column_names)))  # another order, too
    model_b = tables[layout.BEST_FILE].column("model_b")[0].as_py()
    key = layout.alignment_key(DATASET, model_a, model_b, version)
    store.publish(key, tables, {"kind": "alignment", "lineage": {"features": {model_a: "fv-vit-small", model_b: f"fv-{model_b}"}}})
    _strip_fingerprints(store, key)
    assert catalog_sources(store).files["alignment_best_all"][0] == store.read_uri(f"{key}/{layout.BEST_FILE}")  # read first
    lineage = ["feature_version_a", "feature_version_b", "published_at"]
    added = {"alignment_all": lineage, "alignment_best_all": lineage, "features": ["dataset_version"]}
    for con in (connect(_local_copy(store, tmp_path)), connect(_through(proxy, s3_store_url))):
        for view in ("samples", "features", "alignment_all", "alignment_best_all", "alignment", "alignment_best"):
            files = view if view in _EMPTY_VIEWS else f"{view}_all"  # the current rows have the history's columns
            names = [name for name, _ in _describe(con, view)]
            assert names == [c.split(" ")[0] for c in _EMPTY_VIEWS[files].split(", ")] + added.get(files, []), view
        old = query(con, f"select distinct unit, ci_degenerate from alignment_best_all where alignment_version = '{version}'").to_pylist()
        assert old == [{"unit": "sample", "ci_degenerate": None}]


def test_queries_ask_nothing_about_the_published_files_the_listing_described(s3_store_url, proxy):
    """DuckDB asks about every file a query reads (glob, open, size, modified): four HEAD requests
    per file and query on S3 (130 of the 160 requests of a pipeline run's report). The catalog's
    own listing answers them: a query sends no HEAD, only the reads of the files' bytes."""
    _features_store(s3_store_url, 3)
    store = _through(proxy, s3_store_url)
    con = connect(store)
    sql = "select model, layer, sum(list_sum(vector)) s from features group by all order by all"
    sent = []
    for _ in range(2):
        before, heads = proxy.counts["requests"], proxy.methods["HEAD"]
        rows = query(con, sql).to_pylist()
        sent.append((proxy.counts["requests"] - before, proxy.methods["HEAD"] - heads))
    assert len(rows) == 2 * 3
    assert [heads for _, heads in sent] == [0, 0], sent
    # a footer and a data read per file, and the footer binding the one schema group
    assert all(requests <= 2 * 2 * 3 + 1 for requests, _ in sent), sent
    assert rows == query(connect(Store(s3_store_url)), sql).to_pylist()


def test_a_published_file_rewritten_after_connect_fails_its_read_instead_of_being_read_as_listed(s3_store_url, proxy):
    """The catalog answers DuckDB from the listing it read at ``connect``; a file rewritten since
    (same size, other bytes: a hand edit, a copy over the store) is not read as if it were the
    listed one: its reads are conditional on the listed ETag and fail."""
    store = _features_store(s3_store_url, 2)
    key = next(k for k, _ in store.manifests(layout.FEATURES)) + "/layer-001.parquet"
    con = connect(_through(proxy, s3_store_url))
    data = store.read_bytes(key)
    store.fs.pipe_file(store.path(key), data[:-12] + bytes(reversed(data[-12:-8])) + data[-8:])  # other bytes, same size
    with pytest.raises(Exception, match="(?i)expired|precondition|pre-conditions|changed") as failed:
        query(con, "select sum(list_sum(vector)) from features").to_pylist()
    assert "was written again since" in str(failed.value), failed.value  # what to make of it


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_file_removed_after_connect_is_named_gone_with_what_to_do(where, tmp_path, s3_store_url, proxy):
    """A file the catalog listed when it opened, removed since (``prh gc`` while an analyst's
    connection stays open): the query fails saying so and that opening the catalog again reads the
    store as it is (the hint had been "if one was damaged, `prh verify` names it": no file is)."""
    url = str(tmp_path / "store") if where == "local" else s3_store_url
    store = _features_store(url, 2)
    key = next(k for k, _ in store.manifests(layout.FEATURES)) + "/layer-001.parquet"
    con = connect(store if where == "local" else _through(proxy, url))
    store.delete(key)
    with pytest.raises(QueryError, match="was removed since, by `prh gc`") as failed:
        query(con, "select sum(list_sum(vector)) from features").to_pylist()
    assert "open the catalog again" in str(failed.value)


def test_a_server_without_if_match_reads_published_files_checked_by_s3fs(s3_store_url, proxy):
    """An S3-compatible server that refuses ``If-Match`` on reads (VAST S3: 501 NotImplemented) is
    reached with s3fs's ``local_expiry_check``: s3fs then compares each response's ETag itself.
    The ETags the catalog gives DuckDB's opens honour it (sending the header failed every read,
    the binding at connect first), and a file rewritten after connect still fails its read."""
    import inspect

    import s3fs

    if "local_expiry_check" not in inspect.signature(s3fs.S3FileSystem.__init__).parameters:
        pytest.skip(f"s3fs {s3fs.__version__} has no local_expiry_check (2026.3 and later; the store names "
                    "the s3fs it needs: tests/storage/test_s3_options.py)")
    store = _features_store(s3_store_url, 2)
    key = next(k for k, _ in store.manifests(layout.FEATURES)) + "/layer-001.parquet"
    proxy.error(501, "NotImplemented", header="If-Match")
    try:
        con = connect(Store(s3_store_url, {"endpoint_url": proxy.url, "skip_instance_cache": True,
                                           "local_expiry_check": True}))
        assert query(con, "select count(*) n from features").to_pylist() == [{"n": 2 * 2 * 4}]
        data = store.read_bytes(key)
        store.fs.pipe_file(store.path(key), data[:-12] + bytes(reversed(data[-12:-8])) + data[-8:])  # same size
        with pytest.raises(Exception, match="(?i)expired|changed"):
            query(con, "select sum(list_sum(vector)) from features").to_pylist()
    finally:
        proxy.clear()
