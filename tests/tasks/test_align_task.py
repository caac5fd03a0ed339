"""The pipeline's alignment stage (tasks/align_task.py): its tables (result_tables), a version
another run publishes meanwhile."""

from __future__ import annotations

import math

import duckdb
import numpy as np

from tasks.align_task import best_summary, result_tables
from tasks.alignment import MetricRequest, PairAlignment

CATALOG = {"dataset_version": "d1", "layer_names": ["l0", "l1"]}
MANIFEST_A = {"catalog": {**CATALOG, "model": "vit", "modality": "vision"}}
MANIFEST_B = {"catalog": {**CATALOG, "model": "lm", "modality": "language"}}


def test_a_metric_without_any_score_stores_null_statistics_never_nan() -> None:
    """A metric NaN on every layer pair has no null, threshold, p or interval: NaN there sorted
    first in `order by calibrated_score desc` (DuckDB orders NaN above every number)."""
    nan = math.nan
    empty = PairAlignment(MetricRequest("mutual_knn", {"topk": 3}), np.full((2, 2), nan), nan, (-1, -1), nan,
                          null_mean=nan, null_std=nan, tau=nan, p_value=nan, calibrated=nan, permutations=0,
                          ci_low=nan, ci_high=nan, ci_degenerate=None, bootstrap=0)
    scored = PairAlignment(MetricRequest("cka", {"kernel_metric": "ip"}), np.array([[0.2, 0.4], [0.1, nan]]), 0.4, (0, 1),
                           None, null_mean=0.05, null_std=0.01, tau=0.07, p_value=0.02, calibrated=0.35, permutations=49,
                           ci_low=0.3, ci_high=0.5, ci_degenerate=False, bootstrap=100)
    scores, best = result_tables([empty, scored], MANIFEST_A, MANIFEST_B, "v1", 10)
    stats = ["score", "chance_level", "null_mean", "null_std", "tau", "p_value", "calibrated_score", "ci_low", "ci_high"]
    rows = {r["metric"]: r for r in best.to_pylist()}
    assert all(rows["mutual_knn"][c] is None for c in stats), rows["mutual_knn"]
    assert [rows["cka"][c] for c in stats] == [0.4, None, 0.05, 0.01, 0.07, 0.02, 0.35, 0.3, 0.5]
    assert duckdb.sql("select metric from best order by calibrated_score desc limit 1").fetchall() == [("cka",)]
    assert [r["score"] for r in scores.to_pylist() if r["metric"] == "cka"] == [0.2, 0.4, 0.1, None]


def test_an_infinite_best_score_is_stored_without_its_layers() -> None:
    """A user metric may score -inf (aggregate keeps it as a score); stored, the score is NULL, and
    its layers are NULL too, as for a best row without a finite score (not a NULL score at layers)."""
    inf = PairAlignment(MetricRequest("cka", {"kernel_metric": "ip"}), np.array([[-math.inf, -math.inf]]), -math.inf, (0, 1),
                        None)
    _, best = result_tables([inf], MANIFEST_A, MANIFEST_B, "v1", 10)
    row = best.to_pylist()[0]
    assert (row["score"], row["layer_a"], row["layer_b"], row["layer_name_a"], row["layer_name_b"]) == (None,) * 5


def test_the_run_log_names_the_best_layers_as_the_best_row_does() -> None:
    """The log line of a pair's metric gives the best layers by index and name, as
    ``alignment_best`` holds them (it gave indices only, and ``(-1, -1)`` where no score was finite)."""
    scored = PairAlignment(MetricRequest("cka", {}), np.array([[0.2, 0.4], [0.1, 0.3]]), 0.4, (0, 1), None)
    assert best_summary(scored, ["stem", "head"], ["emb", "layer.00"]) == "best 0.4000 at layers 0 (stem) x 1 (layer.00)"
    for matrix, best, layers in ((np.full((1, 1), math.nan), math.nan, (-1, -1)), (np.array([[-math.inf]]), -math.inf, (0, 0))):
        assert best_summary(PairAlignment(MetricRequest("cka", {}), matrix, best, layers, None), ["a"], ["b"]) == "no finite score"


def test_a_version_another_run_publishes_meanwhile_stops_this_alignment_at_its_next_metric(tmp_path, monkeypatch, caplog):
    """The concurrency hunt: of two runs aligning the same pair at once, the later one computed
    every metric to its end and then dropped its copy. It now stops at its next metric."""
    import tasks.align_task as align_task
    import tasks.stop_request as stop_request
    from storage.store import Store
    from tests.tasks.test_reused_metrics import _align, _models

    monkeypatch.setattr(stop_request, "WATCH_EVERY_S", 0.0)
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    real, other = align_task.align_layers, {}

    def other_run_first(xs, ys, requests, **kw):  # the other run publishes while this one prepares
        if not other:
            other["manifest"] = "computing"
            other["manifest"] = _align(store, ma, mb, ["cka", "mutual_knn"])
        return real(xs, ys, requests, **kw)

    monkeypatch.setattr(align_task, "align_layers", other_run_first)
    with caplog.at_level("INFO"):
        mine = _align(store, ma, mb, ["cka", "mutual_knn"])
    theirs = other["manifest"]
    assert not theirs["reused"] and mine["reused"] and mine["key"] == theirs["key"]
    assert {k: v for k, v in mine.items() if k != "reused"} == {k: v for k, v in theirs.items() if k != "reused"}
    assert "was published by another run meanwhile; this run stopped computing it and uses that copy" in caplog.text
    assert "this run's copy is dropped" not in caplog.text  # it stopped before computing, not at publishing


def test_a_reused_alignment_changed_by_hand_fails_its_pair(tmp_path) -> None:
    """The untrusted-input hunt: a stored alignment whose best.parquet was rewritten by hand
    (valid Parquet, manifest untouched) was reused, and the run's summary, report and record
    showed its numbers as this run's. Now its pair fails naming the version, the file, its size
    against the manifest's and the remedy; checked in the task (in parallel, retried)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from storage.store import Store
    from storage.verify import DamagedVersion
    from tests.tasks.test_reused_metrics import _align, _models

    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    first = _align(store, ma, mb, ["mutual_knn"])
    assert _align(store, ma, mb, ["mutual_knn"])["reused"]  # sound: reused
    best = tmp_path / "store" / first["key"] / "best.parquet"
    rows = pq.read_table(best).to_pylist()
    pq.write_table(pa.Table.from_pylist([{**r, "score": 0.999, "metric": r["metric"] + " (edited by hand)"} for r in rows]), best)
    with pytest.raises(DamagedVersion, match=rf"{first['key']} in store .* is damaged: best\.parquet: \d+ bytes, the manifest "
                                             r"says \d+; nothing is computed from it \(run `prh verify --remove-damaged`"):
        _align(store, ma, mb, ["mutual_knn"])


def test_every_input_of_a_pairs_numbers_is_in_its_versions():
    """``alignment_version`` and each metric's ``metric_versions`` id: both feature versions (in
    order: A x B is not B x A), the outlier clamp, the null and bootstrap sizes and, where it draws
    permutations or resamples, the seed; a change of any gives other ids, the same parameters the
    same ids. Without permutations and bootstrap the seed changes no number, nor the ids."""
    from tasks.align_task import alignment_version, metric_versions
    from tasks.params import AlignmentParams

    a, b = {"catalog": {"feature_version": "fa"}}, {"catalog": {"feature_version": "fb"}}
    base = AlignmentParams(metrics=["cka", "mutual_knn"], permutations=0, bootstrap=0, seed=0)

    def ids(x, y, params):
        return alignment_version(x, y, params), metric_versions(x, y, params)

    reference = ids(a, b, base)
    assert ids(a, b, base.model_copy()) == reference
    changed = [ids(b, a, base), ids(a, {"catalog": {"feature_version": "fc"}}, base),
               ids({"catalog": {"feature_version": "fc"}}, b, base)]
    for field, value in (("outlier_quantile", 0.9), ("outlier_scope", "layer"), ("outlier_exact", True),
                         ("permutations", 19), ("bootstrap", 40)):
        changed.append(ids(a, b, base.model_copy(update={field: value})))
    for drawn in ({"permutations": 19}, {"bootstrap": 40}):
        assert ids(a, b, base.model_copy(update={**drawn, "seed": 1})) != ids(a, b, base.model_copy(update=drawn))
    assert ids(a, b, base.model_copy(update={"seed": 1})) == reference
    for version, by_metric in changed:
        assert version != reference[0]
        assert by_metric.keys() == reference[1].keys() and all(by_metric[m] != reference[1][m] for m in by_metric)


def test_the_default_unit_is_not_hashed_so_stored_versions_keep_their_ids():
    """``unit`` entered the versions after alignments were stored: the default (``sample``) hashes
    what every version hashed before (no ``unit``), ``image`` adds it."""
    from storage.versioning import code_version, content_id
    from tasks.align_task import ALIGNMENT_CODE, alignment_version
    from tasks.params import AlignmentParams

    a, b = {"catalog": {"feature_version": "fa"}}, {"catalog": {"feature_version": "fb"}}
    params = AlignmentParams(metrics=["cka"], permutations=0, bootstrap=0, seed=0)
    before = {"features": ["fa", "fb"], "outlier_quantile": params.outlier_quantile, "outlier_scope": params.outlier_scope,
              "outlier_exact": params.outlier_exact, "permutations": 0, "bootstrap": 0,
              "code_version": code_version(*ALIGNMENT_CODE), "metrics": [["cka", params.metric_params("cka")]]}
    assert alignment_version(a, b, params) == content_id(before)
    assert alignment_version(a, b, params.model_copy(update={"unit": "image"})) == content_id({"unit": "image", **before})


def test_zero_and_duplicate_vectors_are_found_row_by_row() -> None:
    """``zero_vector_samples``: rows whose every value is 0 (one is enough; a row with some zeros
    is not one; a layer of nothing but zero rows is another problem, not reported here).
    ``duplicate_vector_samples``: non-zero rows equal bit for bit to another row (a single pair
    is enough), counted in groups, zero rows aside, ``skip`` layers left out."""
    from tasks.align_task import duplicate_vector_samples, zero_vector_samples

    ids = ["a", "b", "c", "d"]
    catalog = {"model": "m", "layer_names": ["first", "second", "third"]}
    one_zero = np.array([[1, 2], [0, 0], [3, 0], [0, 4]], np.float32)  # only b is all-zero
    all_zero = np.zeros((4, 2), np.float32)
    fine = np.array([[1, 2], [2, 1], [3, 0], [0, 4]], np.float32)
    assert zero_vector_samples([one_zero, all_zero, fine], ids, catalog) == [
        {"model": "m", "layer": 0, "layer_name": "first", "n_samples": 1, "examples": ["b"]}]

    one_pair = np.array([[1, 2], [5, 6], [3, 4], [5, 6]], np.float32)  # b and d
    two_groups = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], np.float32)  # a, b; the zero rows c, d aside
    assert duplicate_vector_samples([one_pair, two_groups, fine], ids, catalog) == [
        {"model": "m", "layer": 0, "layer_name": "first", "n_samples": 2, "n_groups": 1, "examples": ["b", "d"]},
        {"model": "m", "layer": 1, "layer_name": "second", "n_samples": 2, "n_groups": 1, "examples": ["a", "b"]}]
    assert duplicate_vector_samples([one_pair, two_groups], ids, catalog, skip={0}) == [
        {"model": "m", "layer": 1, "layer_name": "second", "n_samples": 2, "n_groups": 1, "examples": ["a", "b"]}]


def test_the_alignment_device_is_where_the_engine_runs_and_not_part_of_a_version(tmp_path, monkeypatch) -> None:
    """``alignment.device``: 'auto' on a machine without CUDA computes on the CPU, with the same
    numbers and the same version as 'cpu' (where a pair ran is not part of its id: a rerun on
    another device reuses it), the manifest says where its metrics ran (None where every one was
    copied); 'cuda' without a GPU fails the pair naming the setting and what torch sees."""
    import json

    import pytest
    import torch

    import tasks.align_task as align_task
    from storage.store import Store
    from tasks.alignment import alignment_device
    from tests.tasks.test_reused_metrics import _align, _models, _tables

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert alignment_device("cpu") == alignment_device("auto") == "cpu"
    for requested in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"^alignment\.device '{requested}': torch .* sees no CUDA device .* in this "
                                             r"process \(host .*\); use 'auto' to align on a GPU where there is one, else 'cpu'$"):
            alignment_device(requested)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert (alignment_device("auto"), alignment_device("cuda:1")) == ("cuda", "cuda:1")
    with pytest.raises(ValueError, match=r"^alignment\.device 'cuda:2': torch sees 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        alignment_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    seen = []
    real = align_task.align_layers
    monkeypatch.setattr(align_task, "align_layers", lambda *a, **kw: seen.append(kw["device"]) or real(*a, **kw))
    on_cpu, on_auto = Store(str(tmp_path / "cpu")), Store(str(tmp_path / "auto"))
    cpu = _align(on_cpu, *_models(on_cpu), ["mutual_knn", "cka"], device="cpu")
    auto = _align(on_auto, *_models(on_auto), ["mutual_knn", "cka"], device="auto")
    assert seen == ["cpu", "cpu"] and cpu["key"] == auto["key"]
    for mine, theirs in zip(_tables(on_cpu, cpu), _tables(on_auto, auto)):
        assert mine.equals(theirs)
    manifest = json.loads((tmp_path / "auto" / auto["key"] / "manifest.json").read_text())
    assert manifest["device"] == "cpu" and "device" not in manifest["params"]
    with pytest.raises(ValueError, match=r"^alignment\.device 'cuda': "):
        _align(Store(str(tmp_path / "cuda")), *_models(Store(str(tmp_path / "cuda"))), ["mutual_knn"], device="cuda")
    copied = _align(on_cpu, *_models(on_cpu), ["mutual_knn", "cka"], device="cuda")  # nothing to compute: no device needed
    assert copied["reused"] and copied["key"] == cpu["key"]


def test_the_sample_image_table_is_read_once_for_every_pair_of_a_dataset(tmp_path, monkeypatch):
    """Every pair read the dataset's sample -> image table again (``permutation_groups``): a zoo of
    V x L pairs read it V·L times. A dataset version names its content, so one read serves every
    pair; a read that fails is not kept, and another store or version is read anew."""
    import logging

    import pyarrow as pa

    import tasks.align_task
    from storage import layout
    from storage.store import Store
    from tasks.align_task import permutation_groups
    from tasks.params import AlignmentParams

    monkeypatch.setattr(tasks.align_task, "_SAMPLE_IMAGES", {}, raising=False)
    reads: list[str] = []
    read_table = Store.read_table
    monkeypatch.setattr(Store, "read_table", lambda self, key, columns=None: (reads.append(key), read_table(self, key, columns))[1])
    params, log = AlignmentParams(permutations=19), logging.getLogger("test")
    samples = pa.table({"sample_id": ["a", "b", "c"], "image_id": ["i", "i", "j"]})
    stores = [Store(str(tmp_path / name)) for name in ("one", "two")]
    for store in stores:
        store.write_bytes(f"{layout.dataset_key('v1')}/{layout.SAMPLES_FILE}", _parquet_bytes(samples))
    missing = Store(str(tmp_path / "three"))
    assert permutation_groups(missing, "v1", ["a", "b", "c"], params, ("m", "n"), log) is None  # unreadable: single rows
    for _ in range(3):  # three pairs of one dataset
        assert permutation_groups(stores[0], "v1", ["c", "a", "b"], params, ("m", "n"), log) == ["j", "i", "i"]
    assert len(reads) == 2  # the failed read, then one read for the three pairs
    missing.write_bytes(f"{layout.dataset_key('v1')}/{layout.SAMPLES_FILE}", _parquet_bytes(samples))
    assert permutation_groups(missing, "v1", ["a", "b", "c"], params, ("m", "n"), log) == ["i", "i", "j"]  # read anew
    assert permutation_groups(stores[1], "v1", ["a", "b", "c"], params, ("m", "n"), log) == ["i", "i", "j"]
    assert len(reads) == 4


def _parquet_bytes(table) -> bytes:
    import io

    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()
