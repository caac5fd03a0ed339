"""Pairing never misaligns: bad feature files fail with a clear error naming the model and the
layer, odd orders still pair; the writer refuses to store such features in the first place."""

import numpy as np
import pyarrow as pa
import pytest

from storage import layout
from storage.features import FeatureError, layer_table
from storage.pairing import batch_vectors, paired_features
from storage.store import Store


def _publish(store: Store, model: str, tables: list[pa.Table], layer_names: list[str] | None = None) -> dict:
    key = layout.features_key("d1", model, f"fv-{model}")
    files = {layout.layer_file(i): t for i, t in enumerate(tables)}
    catalog = {"model": model, "feature_version": f"fv-{model}", "dataset_version": "d1", "n_layers": len(tables)}
    if layer_names:
        catalog["layer_names"] = layer_names
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
    with pytest.raises(FeatureError, match=r"model 'a' layer 0 \(.*layer-000.parquet\): 1 duplicate sample_id rows \(e.g. s1\)"):
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
    with pytest.raises(FeatureError, match=r"model 'a' layer 1 \(.*layer-001.parquet\): 5 samples, its model's layer 0 "
                                           r"holds 6 \(missing e.g. s5; the model's layers must hold the same samples\)"):
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


def test_models_holding_the_same_samples_in_other_orders_pair_by_id(tmp_path):
    """Every stored row is a common sample (nothing left out), the files in orders of their own:
    rows are still placed by id, never copied as a block in file order."""
    store = Store(str(tmp_path / "s"))
    ids = [f"s{i}" for i in range(8)]
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    order_a, order_b = [0, 2, 1, 3, 4, 5, 6, 7], [0, 6, 5, 4, 3, 2, 1, 7]  # first and last in place
    ma = _publish(store, "a", [layer_table("a", "v", 0, [ids[i] for i in order_a], x[order_a])])
    mb = _publish(store, "b", [layer_table("b", "v", 0, [ids[i] for i in order_b], -x[order_b])])
    pair = paired_features(store, ma, mb)
    assert pair.sample_ids == ids and (pair.only_a, pair.only_b) == (0, 0)
    np.testing.assert_array_equal(pair.xs[0], x)
    np.testing.assert_array_equal(pair.ys[0], -x)


def test_no_common_samples_gives_empty_arrays(tmp_path):
    store = Store(str(tmp_path / "s"))
    ma = _publish(store, "a", [layer_table("a", "v", 0, ["x", "y"], np.ones((2, 3), np.float32))])
    pair = paired_features(store, ma, _good(store))
    assert pair.sample_ids == [] and pair.xs[0].shape == (0, 3) and (pair.only_a, pair.only_b) == (2, 6)
    assert (pair.n_a, pair.n_b) == (2, 6)
    assert pair.examples_only_a == ["x", "y"] and pair.examples_only_b == ["s0", "s1", "s2", "s3", "s4"]


def test_nan_and_inf_in_stored_features_are_refused_naming_model_layer_count_and_ids(store_url):
    """Files written by another tool may hold NaN/Inf (the writer here refuses them): pairing lists
    every bad layer of both models, with its count of bad common samples and a few ids."""
    store = Store(store_url)
    ids = [f"s{i:02d}" for i in range(20)]
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    bad = x.copy()
    bad[[3, 7, 11]] = np.nan
    bad[12, 1] = np.inf
    ma = _publish(store, "a", [layer_table("a", "v", 0, ids, x), _raw(ids, bad.tolist())], layer_names=["embed", "block.1"])
    inf = x[:10].copy()
    inf[4, 0] = -np.inf
    mb = _publish(store, "b", [_raw(ids[:10], inf.tolist())])
    with pytest.raises(FeatureError) as info:
        paired_features(store, ma, mb)
    message = str(info.value)
    assert "non-finite stored features in 2 layer(s)" in message
    # only the 10 common samples count: s11 and s12 are outside them
    assert "model 'a' layer 1 'block.1'" in message and "2 of 10 common samples have NaN or Inf features (2 with NaN" in message
    assert "e.g. s03, s07)" in message
    assert "model 'b' layer 0" in message and "1 of 10 common samples" in message and "e.g. s04)" in message
    assert "model 'a' layer 0" not in message


def test_writer_refuses_features_that_could_not_be_used():
    x = np.ones((3, 2), np.float32)
    with pytest.raises(FeatureError, match=r"model 'm' layer 2: 1 duplicate sample_id rows \(e.g. s1\)"):
        layer_table("m", "v", 2, ["s0", "s1", "s1"], x)
    with pytest.raises(FeatureError, match=r"model 'm' layer 0: 1 rows have a NULL or empty sample_id \(rows 1\)"):
        layer_table("m", "v", 0, ["s0", "", "s2"], x)
    with pytest.raises(FeatureError, match=r"model 'm' layer 0: no samples"):
        layer_table("m", "v", 0, [], np.zeros((0, 2), np.float32))
    x[[0, 2], 1] = [np.nan, np.inf]
    with pytest.raises(FeatureError, match=r"model 'm' layer 4: 2 of 3 samples have NaN or Inf features \(e.g. s0, s2\)"):
        layer_table("m", "v", 4, ["s0", "s1", "s2"], x)


def test_batch_vectors_reads_lists_and_fixed_size_lists():
    fixed = pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.float32(), 2))
    assert batch_vectors(fixed.slice(1)).tolist() == [[3, 4], [5, 6]]
    ragged = pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))
    with pytest.raises(ValueError, match="unequal lengths"):
        batch_vectors(ragged)
    sliced = pa.array([[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())).slice(1)
    assert batch_vectors(sliced).tolist() == [[1, 2], [3, 4]]
