"""Pairing never misaligns: bad feature files fail with a clear error, odd orders still pair."""

import numpy as np
import pyarrow as pa
import pytest

from storage import layout
from storage.features import layer_table
from storage.pairing import batch_vectors, paired_features
from storage.store import Store


def _publish(store: Store, model: str, tables: list[pa.Table]) -> dict:
    key = layout.features_key("d1", model, f"fv-{model}")
    files = {layout.layer_file(i): t for i, t in enumerate(tables)}
    catalog = {"model": model, "feature_version": f"fv-{model}", "dataset_version": "d1", "n_layers": len(tables)}
    return store.publish(key, files, {"kind": "features", "catalog": catalog}).manifest


def _good(store: Store, model: str = "b", n: int = 6) -> dict:
    ids = [f"s{i}" for i in range(n)]
    return _publish(store, model, [layer_table(model, "v", 0, ids, np.ones((n, 3), np.float32))])


def _raw(ids: list, vectors: list, d: int = 3) -> pa.Table:
    return pa.table({"model": ["a"] * len(ids), "layer": pa.array([0] * len(ids), pa.int16()), "sample_id": pa.array(ids, pa.string()),
                     "vector": pa.array(vectors, pa.list_(pa.float32(), d))})


def test_duplicate_sample_ids_are_refused(store_url):
    store = Store(store_url)
    ma = _publish(store, "a", [_raw(["s0", "s1", "s1", "s2"], [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]])])
    with pytest.raises(ValueError, match=r"1 duplicate sample_id rows \(e.g. s1\)"):
        paired_features(store, ma, _good(store))


def test_null_vectors_and_null_ids_are_refused(tmp_path):
    store = Store(str(tmp_path / "s"))
    mb = _good(store)
    m_null_vec = _publish(store, "a", [_raw(["s0", "s1", "s2"], [[0, 0, 0], None, [1, 1, 1]])])
    with pytest.raises(ValueError, match="1 feature vectors are NULL"):
        paired_features(store, m_null_vec, mb)
    m_null_id = _publish(store, "c", [_raw(["s0", None, "s2"], [[0, 0, 0], [1, 1, 1], [2, 2, 2]])])
    with pytest.raises(ValueError, match="1 rows have a NULL sample_id"):
        paired_features(store, m_null_id, mb)


def test_a_layer_missing_common_samples_is_refused(tmp_path):
    store = Store(str(tmp_path / "s"))
    ids = [f"s{i}" for i in range(6)]
    x = np.arange(18, dtype=np.float32).reshape(6, 3)
    ma = _publish(store, "a", [layer_table("a", "v", 0, ids, x), layer_table("a", "v", 1, ids[:5], x[:5])])
    with pytest.raises(ValueError, match="layer-001.parquet: expected each of the 6 common samples once, got 5"):
        paired_features(store, ma, _good(store))


def test_layers_stored_in_different_orders_still_pair_by_id(tmp_path):
    store = Store(str(tmp_path / "s"))
    rng = np.random.default_rng(0)
    n = 50_000  # several DuckDB batches
    ids = [f"s{i:06d}" for i in range(n)]
    x = rng.normal(size=(n, 4)).astype(np.float32)
    p0, p1 = rng.permutation(n), rng.permutation(n)
    ma = _publish(store, "a", [layer_table("a", "v", 0, [ids[i] for i in p0], x[p0]),
                               layer_table("a", "v", 1, [ids[i] for i in p1], 2 * x[p1])])
    mb = _publish(store, "b", [layer_table("b", "v", 0, ids[::2], x[::2, :2])])
    pair = paired_features(store, ma, mb)
    assert pair.sample_ids == ids[::2] and (pair.only_a, pair.only_b) == (n - n // 2, 0)
    np.testing.assert_array_equal(pair.xs[0], x[::2])
    np.testing.assert_array_equal(pair.xs[1], 2 * x[::2])
    np.testing.assert_array_equal(pair.ys[0], x[::2, :2])


def test_no_common_samples_gives_empty_arrays(tmp_path):
    store = Store(str(tmp_path / "s"))
    ma = _publish(store, "a", [layer_table("a", "v", 0, ["x", "y"], np.ones((2, 3), np.float32))])
    pair = paired_features(store, ma, _good(store))
    assert pair.sample_ids == [] and pair.xs[0].shape == (0, 3) and (pair.only_a, pair.only_b) == (2, 6)


def test_batch_vectors_reads_lists_and_fixed_size_lists():
    fixed = pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.float32(), 2))
    assert batch_vectors(fixed.slice(1)).tolist() == [[3, 4], [5, 6]]
    ragged = pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))
    with pytest.raises(ValueError, match="unequal lengths"):
        batch_vectors(ragged)
    sliced = pa.array([[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())).slice(1)
    assert batch_vectors(sliced).tolist() == [[1, 2], [3, 4]]
