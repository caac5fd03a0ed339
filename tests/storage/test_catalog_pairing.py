import numpy as np
import pyarrow as pa
import pytest

from storage import layout
from storage.catalog import ReadOnlyQueryError, connect, query
from storage.features import layer_tables
from tests.storage.catalog_store import build_catalog_store
from storage.pairing import paired_features
from storage.store import Store, table_to_parquet_bytes


def _publish_features(store, model, ids, layers, dataset="d1"):
    version = f"fv-{model}"
    key = layout.features_key(dataset, model, version)
    catalog = {"model": model, "feature_version": version, "dataset_version": dataset, "n_layers": len(layers),
               "layer_names": [f"l{i}" for i in range(len(layers))], "layer_widths": [x.shape[1] for x in layers]}
    return store.publish(key, layer_tables(model, version, ids, layers), {"kind": "features", "catalog": catalog}).manifest


def test_pairing_joins_on_sample_id_not_position(store_url):
    store = Store(store_url)
    rng = np.random.default_rng(0)
    ids_a = [f"s{i:03d}" for i in range(20)]
    ids_b = [f"s{i:03d}" for i in range(5, 30)]  # overlap s005..s019
    xa = [rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(20, 7)).astype(np.float32)]
    xb = [rng.normal(size=(25, 3)).astype(np.float32)]
    perm = rng.permutation(25)  # store B in a shuffled order
    ma = _publish_features(store, "a", ids_a, xa)
    mb = _publish_features(store, "b", [ids_b[p] for p in perm], [xb[0][perm]])
    pair = paired_features(store, ma, mb)
    assert pair.sample_ids == [f"s{i:03d}" for i in range(5, 20)]
    assert (pair.only_a, pair.only_b) == (5, 10)
    assert [x.shape for x in pair.xs] == [(15, 4), (15, 7)]
    np.testing.assert_array_equal(pair.xs[1], xa[1][5:20])
    np.testing.assert_array_equal(pair.ys[0], xb[0][0:15])  # ids s005..s019 are B's rows 0..14


def test_catalog_views_and_read_only(store_url):
    store = Store(store_url)
    rng = np.random.default_rng(1)
    ids = ["x1", "x2", "x3"]
    _publish_features(store, "m", ids, [rng.normal(size=(3, 2)).astype(np.float32)] * 2)
    con = connect(store)
    assert query(con, "select count(*) as n from features").column("n")[0].as_py() == 6
    assert query(con, "select model, n_layers from models").to_pylist() == [{"model": "m", "n_layers": 2}]
    vec = query(con, "select vector from features where sample_id = 'x2' and layer = 1").column("vector")[0].as_py()
    assert len(vec) == 2
    for view in ("datasets", "samples", "alignment", "alignment_best", "runs"):
        assert query(con, f"select count(*) as n from {view}").column("n")[0].as_py() == 0
    for statement in ("create table t as select 1", "copy (select 1) to 'x.csv'", "drop view features", "attach 'x.db'", "insert into features values (1)"):
        with pytest.raises(ReadOnlyQueryError, match="read-only"):
            query(con, statement)
    with pytest.raises(ReadOnlyQueryError):
        query(con, "select 1; copy (select 1) to 'y.csv'")


def test_a_store_folder_named_with_glob_characters_is_read_literally(store_url, tmp_path):
    """A store at ``.../store [v1]*?`` showed an empty catalog (its path was a glob pattern to
    fsspec: ``[v1]`` is a character class) and never found its runs; DuckDB's readers took the
    layer files' paths as patterns too, so a sibling folder the pattern matches (``store v...``)
    could be read instead, and on S3 no file was found at all."""
    from storage.export import export_catalog, open_catalog
    from storage.runs import run_records
    from storage.verify import verify_store

    url = store_url + " [v1]*?"
    store = build_catalog_store(url)
    decoy = Store(store_url + " v-decoy")  # what the unescaped pattern also matches, other numbers
    # vit-small's layer files only, the ones compared below: a reader that took a layer file's
    # path as a pattern reads these (other numbers) or, for the other models, finds no file and
    # fails; every file more made each of the ~100 listings DuckDB's reads do on S3 slower.
    for key, manifest in store.manifests("features"):
        if "vit-small" not in key:
            continue
        for name in manifest["files"]:
            table = store.read_table(f"{key}/{name}")
            vectors = pa.array([[v + 1.0 for v in row] for row in table.column("vector").to_pylist()], pa.list_(pa.float32()))
            decoy.write_bytes(f"{key}/{name}", table_to_parquet_bytes(table.set_column(table.column_names.index("vector"), "vector", vectors)))
    con = connect(url)
    counts = query(con, "select (select count(*) from alignment_best) best, (select count(*) from runs) runs, "
                        "(select count(*) from models) models").to_pylist()
    assert counts == [{"best": 8, "runs": 2, "models": 4}]
    checks = verify_store(store)  # each version's files read and hashed: once
    assert len(run_records(store)) == 2 and len(checks) == 9 and all(c.ok for c in checks)
    manifests = dict(store.manifests("features"))
    key = next(k for k in manifests if "vit-small" in k)
    want = np.array(store.read_table(f"{key}/layer-000.parquet").column("vector").to_pylist(), dtype=np.float32)
    shown = query(con, "select vector from features where model = 'vit-small' and layer = 0 order by sample_id").column(0).to_pylist()
    np.testing.assert_array_equal(np.array(shown, dtype=np.float32), want)
    lm = next(m for k, m in manifests.items() if "lm-small" in k)
    paired = paired_features(store, manifests[key], lm)
    np.testing.assert_array_equal(paired.xs[0], want)
    exported = export_catalog(url, tmp_path / "prh.duckdb")
    assert query(open_catalog(exported.path), "select count(*) n from features").to_pylist() == \
        query(con, "select count(*) n from features").to_pylist()


def test_a_folder_named_like_the_escaped_store_path_is_refused_not_readable(store_url):
    """The lock allows the store's escaped spelling (``store [[]v1]``, what DuckDB is given), which
    DuckDB also opens literally: a folder of that name beside the store was readable."""
    from storage.store_urls import escape_glob

    url = store_url + " [v1]"
    store = Store(url)  # one version: the refusal does not depend on what the store holds (the
    # catalog of a whole store under such a name: the test above)
    _publish_features(store, "m", ["x1", "x2"], [np.ones((2, 3), dtype=np.float32)])
    assert query(connect(url), "select count(*) n from features").to_pylist() == [{"n": 2}]  # no such folder: opens
    twin = Store(escape_glob(url) if "://" in url else escape_glob(store.root))
    twin.write_bytes("secret.parquet", table_to_parquet_bytes(pa.table({"secret": ["outside the store"]})))
    with pytest.raises(ValueError, match=r"a folder .* exists beside it: the read-only catalog could read that folder too"):
        connect(url)
