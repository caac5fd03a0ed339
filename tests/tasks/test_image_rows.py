"""One row per image (tasks.image_rows): grouping, exact means, and the alignment stage's
``alignment.unit: image`` end to end on stored features (DuckDB pairing, engine, published rows)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import pytest

from storage import layout
from storage.catalog import connect
from storage.features import layer_tables
from storage.store import Store
from tasks import metrics
from tasks.align_task import align_to_store, alignment_version
from tasks.alignment import prepare_layers
from tasks.image_rows import image_rows, mean_rows
from tasks.params import AlignmentParams
from tests.tasks.metrics import reference


def test_rows_group_by_image_in_image_order_keeping_sample_order():
    rows = image_rows(["s3", "s1", "s0", "s2", "s4"], {"s0": "b", "s1": "a", "s2": "b", "s3": "c", "s4": "a"})
    assert rows.image_ids == ["a", "b", "c"]
    assert rows.order.tolist() == [1, 4, 2, 3, 0] and rows.starts.tolist() == [0, 2, 4] and rows.counts.tolist() == [2, 2, 1]


def test_means_are_float64_sums_and_identical_rows_stay_bit_identical():
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(9)]
    image_of = {s: f"i{i // 3}" for i, s in enumerate(ids)}  # three samples per image
    x = rng.normal(size=(9, 600)).astype(np.float32) * 1e3  # more columns than one block
    rows = image_rows(ids, image_of)
    got = mean_rows(x, rows)
    want = x.astype(np.float64).reshape(3, 3, 600).mean(axis=1)
    assert got.dtype == np.float32 and got.shape == (3, 600)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    same = np.repeat(x[:3], 3, axis=0)  # a vision model: one image's samples hold one vector
    np.testing.assert_array_equal(mean_rows(same, rows), x[:3])
    single = image_rows(ids, {s: s for s in ids})
    np.testing.assert_array_equal(mean_rows(x, single), x)


def test_no_samples_give_no_image_rows_and_one_image_gives_its_mean():
    """The edge sizes: zero samples fold into a ``(0, D)`` float32 array (its width kept); the
    captions of a single image fold into that image's one mean row."""
    empty = mean_rows(np.zeros((0, 5), np.float32), image_rows([], {}))
    assert empty.shape == (0, 5) and empty.dtype == np.float32
    x = np.array([[1, 2], [3, 4], [8, 0]], np.float32)
    one = mean_rows(x, image_rows(["s0", "s1", "s2"], dict.fromkeys(["s0", "s1", "s2"], "img")))
    assert one.dtype == np.float32
    np.testing.assert_array_equal(one, [[4, 2]])


def test_unknown_samples_and_wrong_row_counts_are_refused():
    with pytest.raises(ValueError, match=r"2 sample\(s\) have no image_id in the dataset \(e.g. 'x', 'y'\)"):
        image_rows(["a", "x", "y"], {"a": "i"})
    with pytest.raises(ValueError, match="3 rows, but the grouping is of 2 samples"):
        mean_rows(np.zeros((3, 2), np.float32), image_rows(["a", "b"], {"a": "i", "b": "i"}))


# ------------------------------------------------------------------------ through the store

N_IMAGES, CAPTIONS, TOPK = 24, 3, 4


def _publish_pair(store: Store) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """A dataset of N_IMAGES images with CAPTIONS captions each, vision features (equal per image)
    and language features (one per caption), published like the pipeline does."""
    rng = np.random.default_rng(3)
    ids = [f"im{i:02d}-{j}" for i in range(N_IMAGES) for j in range(CAPTIONS)]
    image_ids = [f"im{i:02d}" for i in range(N_IMAGES) for _ in range(CAPTIONS)]
    samples = pa.table({"dataset_version": ["dv"] * len(ids), "sample_id": ids, "image_id": image_ids,
                        "text": ids, "image": [b"png"] * len(ids)})
    store.publish(layout.dataset_key("dv"), {layout.SAMPLES_FILE: samples},
                  {"kind": "dataset", "catalog": {"dataset_version": "dv", "name": "toy", "n_samples": len(ids)}})
    latent = rng.normal(size=(N_IMAGES, 4))
    vision = [np.repeat(latent @ rng.normal(size=(4, w)), CAPTIONS, axis=0).astype(np.float32) for w in (6, 8)]
    language = [(np.repeat(latent, CAPTIONS, axis=0) @ rng.normal(size=(4, 5)) + rng.normal(size=(len(ids), 5))).astype(np.float32)]
    manifests = []
    for model, modality, layers in (("vit", "vision", vision), ("lm", "language", language)):
        catalog = {"model": model, "feature_version": f"fv-{model}", "dataset_version": "dv", "modality": modality,
                   "n_layers": len(layers), "layer_names": [f"{model}.l{i}" for i in range(len(layers))], "n_samples": len(ids)}
        key = layout.features_key("dv", model, f"fv-{model}")
        manifests.append(store.publish(key, layer_tables(model, f"fv-{model}", ids, layers), {"kind": "features", "catalog": catalog}).manifest)
    return manifests[0], manifests[1], vision, language


def test_unit_image_aligns_one_row_per_image_with_caption_vectors_averaged(tmp_path, caplog):
    store = Store(str(tmp_path / "store"))
    ma, mb, vision, language = _publish_pair(store)
    names = ["mutual_knn", "cka", "cknna"]
    per_sample = align_to_store(store.url, ma, mb, AlignmentParams(metrics=names, topk=TOPK))
    params = AlignmentParams(metrics=names, topk=TOPK, unit="image")
    with caplog.at_level(logging.INFO):
        per_image = align_to_store(store.url, ma, mb, params, logging.getLogger("test"))
    assert "72 paired samples averaged into 24 images" in caplog.text
    assert per_image["key"] != per_sample["key"] and per_image["n_samples"] == N_IMAGES and per_image["n_paired_samples"] == 72
    assert per_sample["duplicate_vectors"] and not per_image["duplicate_vectors"]  # the vision copies are gone

    # independent of the pipeline: one row per image (vision: the image's vector; language: the
    # mean of its captions' vectors in float64), prepared, scored pair by pair
    xs = [v[::CAPTIONS] for v in vision]
    ys = [lang.astype(np.float64).reshape(N_IMAGES, CAPTIONS, -1).mean(axis=1).astype(np.float32) for lang in language]
    xs, ys = prepare_layers(xs), prepare_layers(ys)
    scores = store.read_table(f"{per_image['key']}/{layout.SCORES_FILE}").to_pylist()
    assert {r["unit"] for r in scores} == {"image"} and {r["n_samples"] for r in scores} == {N_IMAGES}
    for r in scores:
        want = metrics.score(r["metric"], xs[r["layer_a"]], ys[r["layer_b"]], **params.metric_params(r["metric"]))
        assert r["score"] == pytest.approx(want, abs=1e-6), r
    con = connect(store.url)
    units = con.sql("select unit, n_samples, count(*) from alignment_best_all group by all order by unit").fetchall()
    assert units == [("image", 24, 3), ("sample", 72, 3)]
    # the current rows: the later run's, by image
    assert con.sql("select unit, n_samples, count(*) from alignment_best group by all").fetchall() == [("image", 24, 3)]


def test_unit_is_in_the_version_only_when_not_the_default(tmp_path):
    manifest = {"catalog": {"feature_version": "f"}}
    default = alignment_version(manifest, manifest, AlignmentParams())
    assert alignment_version(manifest, manifest, AlignmentParams(unit="sample")) == default
    assert alignment_version(manifest, manifest, AlignmentParams(unit="image")) != default


def test_too_few_images_is_refused_counting_images(tmp_path):
    store = Store(str(tmp_path / "store"))
    ma, mb, _, _ = _publish_pair(store)
    with pytest.raises(ValueError, match=r"vit x lm: the pair has 24 image\(s\) \(alignment.unit 'image'\), too few: "
                                         r"alignment.topk=30 \(mutual_knn\) needs topk \+ 2 = 32"):
        align_to_store(store.url, ma, mb, AlignmentParams(metrics=["mutual_knn"], topk=30, unit="image"))
    assert align_to_store(store.url, ma, mb, AlignmentParams(metrics=["mutual_knn"], topk=30))["n_samples"] == 72


def test_metrics_listed_in_another_order_are_the_same_alignment():
    """Each metric is seeded alone, so [cka, mutual_knn] and [mutual_knn, cka] give the same
    numbers: the same version (a reordered config re-scored every pair and stored a copy), computed
    in the same (name) order; another metric set is another version."""
    from tasks.align_task import metric_requests

    manifest = {"catalog": {"feature_version": "f"}}
    one = AlignmentParams(metrics=["mutual_knn", "cka", "cknna"])
    other = AlignmentParams(metrics=["cknna", "mutual_knn", "cka"])
    assert alignment_version(manifest, manifest, one) == alignment_version(manifest, manifest, other)
    assert [r.name for r in metric_requests(one)] == [r.name for r in metric_requests(other)] == ["cka", "cknna", "mutual_knn"]
    assert alignment_version(manifest, manifest, AlignmentParams(metrics=["mutual_knn", "cka"])) != alignment_version(manifest, manifest, one)


def test_unit_sample_permutes_whole_images_when_images_have_several_captions(tmp_path, caplog):
    """``unit: sample`` with three captions per image: the permutation null moves an image's
    samples together. A vision side that knows only which image a row is (a random vector per
    image) is independent of the captions' content, yet a null that shuffled single samples
    gave it p = 1/(K+1) with every metric (both sides group the rows by image)."""
    store = Store(str(tmp_path / "store"))
    ma, mb, _, language = _publish_pair(store)
    rng = np.random.default_rng(8)
    identity = [np.repeat(rng.normal(size=(N_IMAGES, w)), CAPTIONS, axis=0).astype(np.float32) for w in (6, 8)]
    ids = [f"im{i:02d}-{j}" for i in range(N_IMAGES) for j in range(CAPTIONS)]
    catalog = {**ma["catalog"], "feature_version": "fv-id"}
    key = layout.features_key("dv", "vit", "fv-id")
    ma = store.publish(key, layer_tables("vit", "fv-id", ids, identity), {"kind": "features", "catalog": catalog}).manifest
    params = AlignmentParams(metrics=["mutual_knn", "cka"], topk=TOPK, permutations=49)
    with caplog.at_level(logging.INFO):
        manifest = align_to_store(store.url, ma, mb, params, logging.getLogger("test"))
    assert f"vit x lm: the permutation null moves whole images ({N_IMAGES * CAPTIONS} samples of {N_IMAGES} images)" in caplog.text
    best = {r["metric"]: r for r in store.read_table(f"{manifest['key']}/{layout.BEST_FILE}").to_pylist()}
    assert best["mutual_knn"]["p_value"] > 0.05 and best["cka"]["p_value"] > 0.05, best
    assert best["mutual_knn"]["calibrated_score"] == 0 and best["cka"]["calibrated_score"] == 0
    # the same rows with single samples shuffled: every draw below the observed score
    grouped_away = metrics.calibrate("mutual_knn", prepare_layers(identity), prepare_layers(language), permutations=49, topk=TOPK)
    assert grouped_away.p_value == pytest.approx(1 / 50)


def test_unit_sample_bootstrap_subsamples_whole_images(tmp_path):
    """``unit: sample`` with three captions per image: each bootstrap subsample takes half the
    images, all of their captions (``bootstrap_ci(groups=...)``), so the stored interval equals
    its definition recomputed in float64 from the features: images in ``image_id`` order,
    replicate ``r`` the samples of images ``rng.choice(G, G/2, replace=False)``."""
    store = Store(str(tmp_path / "store"))
    ma, mb, vision, language = _publish_pair(store)
    params = AlignmentParams(metrics=["cka"], permutations=9, bootstrap=30, seed=7)
    manifest = align_to_store(store.url, ma, mb, params)
    best = store.read_table(f"{manifest['key']}/{layout.BEST_FILE}").to_pylist()[0]
    xs, ys = prepare_layers(vision), prepare_layers(language)
    image = np.repeat(np.arange(N_IMAGES), CAPTIONS)  # samples in sample_id order: im00-0, im00-1, ...
    rng = np.random.default_rng(7)
    g = N_IMAGES // 2
    reps = []
    for _ in range(30):
        rows = np.flatnonzero(np.isin(image, rng.choice(N_IMAGES, g, replace=False)))
        reps.append(max(reference.cka(a[rows].astype(np.float64), b[rows].astype(np.float64)) for a in xs for b in ys))
    reps = np.array(reps)
    estimate = max(reference.cka(a.astype(np.float64), b.astype(np.float64)) for a in xs for b in ys)
    q_low, q_high = np.quantile(reps - reps.mean(), [0.025, 0.975])
    c = math.sqrt(g / (N_IMAGES - g))
    assert best["score"] == pytest.approx(estimate, abs=2e-6)
    assert best["ci_low"] == pytest.approx(max(estimate + c * q_low, 0.0), abs=2e-6)
    assert best["ci_high"] == pytest.approx(min(estimate + c * q_high, 1.0), abs=2e-6)
    assert best["bootstrap"] == 30
