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
