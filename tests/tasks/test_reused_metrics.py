"""A new alignment version of a pair copies the stored results of every metric whose metric
version is unchanged and computes only the others (tasks/reused_metrics.py, used by
tasks/align_task.py): what it stores equals a computation from scratch."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.align_task as align_task
from storage import layout
from storage.store import Store
from tasks.align_task import align_to_store
from tasks.params import AlignmentParams
from tests.tasks.test_align_warnings import TOPK, _cls_layer, _publish, _view

#: Small but complete: permutations, bootstrap, a constant layer left out of every metric and a
#: narrow layer (width 6) that svcca with cca_dim=8 refuses (left out of svcca only).
SETTINGS = {"topk": TOPK, "cca_dim": 8, "permutations": 19, "bootstrap": 40, "seed": 3}
#: Manifest fields computed from the results (the rest: key, timing, files, reuse record).
RESULT_FIELDS = ("degenerate_layers", "out_of_bounds", "zero_vectors", "duplicate_vectors", "metric_versions", "n_samples",
                 "params", "lineage")


def _models(store: Store) -> tuple[dict, dict]:
    ma = _publish(store, "vit", [_cls_layer(), _view(1, 6), _view(2, 12)])
    mb = _publish(store, "lm", [_view(3, 9), _view(4, 10)], modality="language")
    return ma, mb


def _spy(monkeypatch) -> list[list[str]]:
    """The metric names of every align_layers call of the stage."""
    calls: list[list[str]] = []
    real = align_task.align_layers

    def spy(xs, ys, requests, **kw):
        calls.append([r.name for r in requests])
        return real(xs, ys, requests, **kw)

    monkeypatch.setattr(align_task, "align_layers", spy)
    return calls


def _align(store: Store, ma: dict, mb: dict, metrics: list[str], **changes) -> dict:
    params = AlignmentParams(metrics=metrics, **{**SETTINGS, **changes})
    return align_to_store(store.url, ma, mb, params, logging.getLogger("test"))


def _tables(store: Store, manifest: dict) -> tuple:
    return tuple(store.read_table(f"{manifest['key']}/{name}") for name in (layout.SCORES_FILE, layout.BEST_FILE))


def _from_scratch(tmp_path, metrics: list[str], **changes) -> tuple[Store, dict]:
    store = Store(str(tmp_path / "scratch"))
    ma, mb = _models(store)
    return store, _align(store, ma, mb, metrics, **changes)


def _assert_same_as_scratch(store: Store, manifest: dict, scratch: Store, fresh: dict) -> None:
    assert manifest["key"] == fresh["key"]
    for got, want in zip(_tables(store, manifest), _tables(scratch, fresh)):
        assert got.equals(want), (got.to_pylist(), want.to_pylist())
    for field in RESULT_FIELDS:
        assert manifest[field] == fresh[field], field


def test_adding_a_metric_computes_only_it_and_stores_what_scratch_stores(tmp_path, monkeypatch) -> None:
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    calls = _spy(monkeypatch)
    first = _align(store, ma, mb, ["mutual_knn", "svcca"])
    second = _align(store, ma, mb, ["cka", "mutual_knn", "svcca"])
    assert calls == [["mutual_knn", "svcca"], ["cka"]]
    assert second["reused_metrics"] == {"mutual_knn": first["key"].rsplit("/", 1)[1], "svcca": first["key"].rsplit("/", 1)[1]}
    assert first["reused_metrics"] == {}
    # the reused metrics' exclusions came back from the stored manifest: vit layer 0 everywhere, layer 1 in svcca only
    svcca = second["metric_versions"]["svcca"]
    assert sorted(svcca["excluded_a"]) == ["0", "1"] and sorted(second["metric_versions"]["mutual_knn"]["excluded_a"]) == ["0"]
    scratch, fresh = _from_scratch(tmp_path, ["cka", "mutual_knn", "svcca"])
    _assert_same_as_scratch(store, second, scratch, fresh)


def test_dropping_a_metric_computes_nothing(tmp_path, monkeypatch) -> None:
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    _align(store, ma, mb, ["cka", "mutual_knn"])
    calls = _spy(monkeypatch)
    with monkeypatch.context() as patched:
        patched.setattr(align_task, "prepare_layers", lambda *a, **kw: pytest.fail("layers prepared, nothing to compute"))
        kept = _align(store, ma, mb, ["cka"])
    assert calls == [] and set(kept["reused_metrics"]) == {"cka"}
    scratch, fresh = _from_scratch(tmp_path, ["cka"])
    _assert_same_as_scratch(store, kept, scratch, fresh)


@pytest.mark.parametrize("change, recomputed", [({"topk": TOPK + 1}, ["mutual_knn"]), ({"seed": 4}, ["cka", "mutual_knn"]),
                                                ({"permutations": 20}, ["cka", "mutual_knn"]),
                                                ({"outlier_quantile": 0.9}, ["cka", "mutual_knn"])])
def test_a_metric_whose_inputs_changed_is_computed_again(tmp_path, monkeypatch, change, recomputed) -> None:
    """topk is a mutual_knn parameter, not cka's: cka is still copied; the seed, the permutations
    and the preprocessing enter every metric."""
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    _align(store, ma, mb, ["cka", "mutual_knn"])
    calls = _spy(monkeypatch)
    again = _align(store, ma, mb, ["cka", "mutual_knn"], **change)
    assert calls == [recomputed]
    scratch, fresh = _from_scratch(tmp_path, ["cka", "mutual_knn"], **change)
    _assert_same_as_scratch(store, again, scratch, fresh)


def test_a_stored_version_that_cannot_be_read_is_computed_again(tmp_path, monkeypatch, caplog) -> None:
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    first = _align(store, ma, mb, ["mutual_knn"])
    store.delete(f"{first['key']}/{layout.SCORES_FILE}")
    calls = _spy(monkeypatch)
    with caplog.at_level(logging.WARNING):
        second = _align(store, ma, mb, ["cka", "mutual_knn"])
    assert calls == [["cka", "mutual_knn"]] and second["reused_metrics"] == {}
    assert f"not reusing mutual_knn from the stored alignment {first['key']} (" in caplog.text
    scratch, fresh = _from_scratch(tmp_path, ["cka", "mutual_knn"])
    _assert_same_as_scratch(store, second, scratch, fresh)


def test_a_stored_file_edited_after_publishing_is_not_copied(tmp_path, monkeypatch, caplog) -> None:
    """A valid Parquet file with one score changed: copied, the damage would be published again
    under a fresh checksum that `prh verify` passes."""
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    first = _align(store, ma, mb, ["cka", "mutual_knn"])
    scores = store.read_table(f"{first['key']}/{layout.SCORES_FILE}")
    edited = scores.set_column(scores.column_names.index("score"), "score",
                               pa.array([0.999] + scores.column("score").to_pylist()[1:], pa.float64()))
    buffer = pa.BufferOutputStream()
    pq.write_table(edited, buffer)
    store.write_bytes(f"{first['key']}/{layout.SCORES_FILE}", buffer.getvalue().to_pybytes())
    calls = _spy(monkeypatch)
    with caplog.at_level(logging.WARNING):
        second = _align(store, ma, mb, ["cka"])
    assert calls == [["cka"]] and second["reused_metrics"] == {}
    assert "is not the file its manifest lists" in caplog.text
    scratch, fresh = _from_scratch(tmp_path, ["cka"])
    _assert_same_as_scratch(store, second, scratch, fresh)


def test_an_older_intact_version_is_used_when_the_newest_cannot_be_read(tmp_path, monkeypatch) -> None:
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    older = _align(store, ma, mb, ["mutual_knn"])
    newer = _align(store, ma, mb, ["cka", "mutual_knn"])
    store.delete(f"{newer['key']}/{layout.BEST_FILE}")
    calls = _spy(monkeypatch)
    third = _align(store, ma, mb, ["mutual_knn", "svcca"])
    assert calls == [["svcca"]] and third["reused_metrics"] == {"mutual_knn": older["key"].rsplit("/", 1)[1]}


def test_a_reused_degenerate_interval_is_warned_about_again(tmp_path, caplog) -> None:
    """Identical features on both sides: every CKA subsample scores 1, a degenerate interval,
    which computing it logged; copying it logs it too."""
    store = Store(str(tmp_path / "store"))
    layers = [_view(1, 6), _view(2, 12)]
    ma = _publish(store, "vit", layers)
    mb = _publish(store, "lm", layers, modality="language")
    _align(store, ma, mb, ["cka"])
    with caplog.at_level(logging.WARNING):
        again = _align(store, ma, mb, ["cka", "mutual_knn"])
    assert again["reused_metrics"].keys() == {"cka"}
    assert "cka(kernel_metric=ip): the bootstrap interval [1, 1] is degenerate" in caplog.text


def _stored_best(**changes) -> dict:
    row = {"layer_a": 1, "layer_b": 0, "score": 0.5, "chance_level": 0.1, "null_mean": 0.1, "null_std": 0.01, "tau": 0.2,
           "p_value": 0.05, "calibrated_score": 0.4, "permutations": 19, "ci_low": 0.4, "ci_high": 0.6, "ci_degenerate": False,
           "bootstrap": 40}
    return {**row, **changes}


def test_stored_rows_that_are_not_one_per_layer_pair_and_one_best_are_refused() -> None:
    """A stored metric's rows must be one score per layer pair, each pair within the shapes, and
    one best row (``stored_results``: else ValueError, and the caller computes it)."""
    from tasks.alignment import MetricRequest
    from tasks.reused_metrics import _result

    request, entry = MetricRequest("cka"), {"version": "v", "excluded_a": {}, "excluded_b": {"1": "constant"}}
    scores = [{"layer_a": i, "layer_b": j, "score": float(10 * i + j) if (i, j) != (1, 1) else None}
              for i in range(2) for j in range(2)]
    result = _result(request, scores, [_stored_best()], entry, (2, 2), "k")
    assert result.matrix.tolist()[0] == [0.0, 1.0] and result.matrix[1, 0] == 10.0 and result.matrix[1, 1] != result.matrix[1, 1]  # NULL: NaN
    assert result.best_layers == (1, 0) and result.excluded_b == {1: "constant"}
    nothing = _result(request, scores, [_stored_best(layer_a=None, layer_b=None, score=None)], entry, (2, 2), "k")
    assert nothing.best_layers == (-1, -1) and nothing.best != nothing.best  # no best layer pair: NaN at (-1, -1)
    with pytest.raises(ValueError, match="2 best rows"):
        _result(request, scores, [_stored_best(), _stored_best()], entry, (2, 2), "k")
    with pytest.raises(ValueError, match="3 layer-pair rows"):
        _result(request, scores[:3], [_stored_best()], entry, (2, 2), "k")
    for bad in ((0, -1), (0, 2), (-1, 0), (2, 1)):  # one index within its shape, the other not
        rows = [*scores[:3], {"layer_a": bad[0], "layer_b": bad[1], "score": 0.0}]
        with pytest.raises(ValueError, match="bad or repeated layer pair"):
            _result(request, rows, [_stored_best()], entry, (2, 2), "k")


def test_stored_versions_are_listed_newest_publication_first(tmp_path) -> None:
    """``stored_versions``: the pair's alignments holding some wanted metric at its wanted metric
    version, by publication time, newest first, each with the names of those metrics."""
    from tasks.reused_metrics import stored_versions

    store = Store(str(tmp_path / "store"))
    prefix = "alignment/d/vit__lm"

    def put(version: str, when: str, metric_versions: dict) -> None:
        key = f"{prefix}/{version}"
        store.publish(key, {"a.bin": b"1"}, {"metric_versions": metric_versions})
        store.write_json(f"{key}/manifest.json", {**store.manifest(key), "published_at": when})

    put("v1", "2026-01-03T00:00:00+00:00", {"cka": {"version": "c1"}, "mutual_knn": {"version": "k1"}})
    put("v2", "2026-01-01T00:00:00+00:00", {"cka": {"version": "c1"}})
    put("v3", "2026-01-02T00:00:00+00:00", {"cka": {"version": "c0"}, "mutual_knn": {"version": "k1"}})
    put("v4", "2026-01-02T00:00:00+00:00", {"cka": {"version": "c1"}})  # published at the same time as v3
    put("v5", "2026-01-04T00:00:00+00:00", {"svcca": {"version": "s1"}, "cka": {"version": "c0"}})  # nothing wanted
    found = [(key.rsplit("/", 1)[1], names) for key, _, names in stored_versions(store, prefix, {"cka": "c1", "mutual_knn": "k1"})]
    assert found[0] == ("v1", ["cka", "mutual_knn"]) and found[-1] == ("v2", ["cka"])
    assert sorted(found[1:3]) == [("v3", ["mutual_knn"]), ("v4", ["cka"])] and len(found) == 4
