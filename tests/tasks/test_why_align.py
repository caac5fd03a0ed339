"""Why a pair's metrics are computed although the store holds an alignment of the pair: after an
upgrade of prh's alignment code, a re-extraction or another parameter, a whole zoo is aligned
again, and the stage said only what it computed (a store whose pairs were all aligned looked like
one that had lost them). The stored versions here are made by the stage itself; an "older code"
version is one whose manifest names another code version."""

from __future__ import annotations

import json
import logging

from storage.store import MANIFEST, Store
from tasks.align_task import ALIGNMENT_CODE
from tasks.why_align import why_align
from storage.versioning import code_version
from tests.tasks.test_reused_metrics import _align, _models


def _reasons(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if ": computing " in r.getMessage()]


def test_a_pair_aligned_again_says_which_stored_version_differs_and_how(tmp_path, caplog) -> None:
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    with caplog.at_level(logging.INFO, logger="test"):
        first = _align(store, ma, mb, ["mutual_knn"])
    assert _reasons(caplog) == []  # never aligned: nothing to explain
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        second = _align(store, ma, mb, ["mutual_knn"], topk=3)
    version = first["key"].rsplit("/", 1)[1]
    (reason,) = _reasons(caplog)
    assert reason.startswith(f"vit x lm: computing mutual_knn: the pair's stored alignment {version} (published ")
    assert reason.endswith("was computed with another topk (4, now 3)") and "code" not in reason

    # the closest stored version is compared; one of other code names both code versions
    manifest_path = tmp_path / "store" / second["key"] / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["lineage"]["code_version"] = "0123456789abcdef"
    manifest_path.write_text(json.dumps(manifest))
    reason = why_align(store, second["key"].rsplit("/", 1)[0], "alignment/x/vit__lm/none", {"vit": ma["catalog"]["feature_version"],
                       "lm": "ffffffffffffffff"}, {**manifest["params"]}, code_version(*ALIGNMENT_CODE))
    assert reason is not None and second["key"].rsplit("/", 1)[1] in reason
    assert f"is of other alignment code (code version 0123456789abcdef, now {code_version(*ALIGNMENT_CODE)})" in reason
    assert f"was computed from other features of lm ({mb['catalog']['feature_version']}, now ffffffffffffffff)" in reason
    assert "another" not in reason  # the same parameters


def test_a_damaged_or_missing_pair_folder_gives_no_reason(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    assert why_align(store, "alignment/d/a__b", "alignment/d/a__b/v", {}, {}, "c") is None
    (tmp_path / "store" / "alignment" / "d" / "a__b" / "0000000000000000").mkdir(parents=True)
    (tmp_path / "store" / "alignment" / "d" / "a__b" / "0000000000000000" / MANIFEST).write_text("{not json")
    assert why_align(store, "alignment/d/a__b", "alignment/d/a__b/v", {}, {}, "c") is None


def test_the_stored_alignment_closest_to_the_run_is_compared_not_merely_the_newest(tmp_path) -> None:
    """A pair stored at two settings (topk 4, then a newer trial at topk 3): a run at topk 4 after
    an upgrade of the alignment code differs from its own stored version by the code alone."""
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    own = _align(store, ma, mb, ["mutual_knn"])
    trial = _align(store, ma, mb, ["mutual_knn"], topk=3)
    features = {"vit": ma["catalog"]["feature_version"], "lm": mb["catalog"]["feature_version"]}
    params = json.loads((tmp_path / "store" / own["key"] / MANIFEST).read_text())["params"]
    reason = why_align(store, own["key"].rsplit("/", 1)[0], "alignment/x/vit__lm/none", features, params, "0123456789abcdef")
    assert trial["key"] != own["key"] and reason is not None
    assert reason.startswith(f"the pair's stored alignment {own['key'].rsplit('/', 1)[1]} (published ")
    assert reason.endswith(f"is of other alignment code (code version {code_version(*ALIGNMENT_CODE)}, now 0123456789abcdef)")


def test_metrics_listed_in_another_order_or_other_pairs_are_not_named_as_a_difference(tmp_path, caplog) -> None:
    """The metrics' order and ``pairs`` do not enter an alignment version (the same metrics in
    another order, or a zoo run with ``pairs: all``, find the stored one), so they are not a
    reason either: the stage names only what made the version another one."""
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    first = _align(store, ma, mb, ["mutual_knn", "cka"])
    assert _align(store, ma, mb, ["cka", "mutual_knn"], pairs="all")["key"] == first["key"]  # the same version
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        _align(store, ma, mb, ["cka", "mutual_knn"], topk=3, pairs="all")
    (reason,) = _reasons(caplog)
    # cka takes no topk: copied from the stored version, only mutual_knn is computed
    assert reason.startswith(f"vit x lm: computing mutual_knn: the pair's stored alignment {first['key'].rsplit('/', 1)[1]} ")
    assert reason.endswith("was computed with another topk (4, now 3)"), reason


def test_the_seed_is_no_difference_where_neither_version_draws_anything(tmp_path, caplog) -> None:
    """Without permutations and resamples the seed draws nothing and is not in the version."""
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    first = _align(store, ma, mb, ["mutual_knn"], permutations=0, bootstrap=0, seed=5)
    assert _align(store, ma, mb, ["mutual_knn"], permutations=0, bootstrap=0, seed=0)["key"] == first["key"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        _align(store, ma, mb, ["mutual_knn"], permutations=0, bootstrap=0, seed=0, topk=3)
    (reason,) = _reasons(caplog)
    assert reason.endswith("was computed with another topk (4, now 3)"), reason
    # where either version draws, the seed is a difference like any other
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        _align(store, ma, mb, ["mutual_knn"], permutations=9, bootstrap=0, seed=0, topk=3)
    (reason,) = _reasons(caplog)
    assert "permutations (0, now 9)" in reason and "topk" not in reason  # the closest: the topk 3 version


def test_a_parameter_no_listed_metric_takes_is_no_difference(tmp_path, caplog) -> None:
    """``cca_dim`` without SVCCA and ``rbf_sigma`` under the linear kernel enter no version (a
    metric's version holds the parameters it takes: ``AlignmentParams.metric_params``), so a run
    that changes them beside ``topk`` is computing for its ``topk`` alone; they had been named
    too, as the metrics' order and ``pairs`` were."""
    store = Store(str(tmp_path / "store"))
    ma, mb = _models(store)
    first = _align(store, ma, mb, ["mutual_knn", "cka"], cca_dim=10, rbf_sigma=1.0)
    assert _align(store, ma, mb, ["mutual_knn", "cka"], cca_dim=5, rbf_sigma=0.5)["key"] == first["key"]  # the same version
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        _align(store, ma, mb, ["mutual_knn", "cka"], cca_dim=5, rbf_sigma=0.5, topk=3)
    (reason,) = _reasons(caplog)
    assert reason.endswith("was computed with another topk (4, now 3)"), reason
    # where a listed metric takes it, it is a difference like any other
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        _align(store, ma, mb, ["mutual_knn", "svcca"], cca_dim=5, topk=3)
    (reason,) = _reasons(caplog)
    assert "metrics (['cka', 'mutual_knn'], now ['mutual_knn', 'svcca'])" in reason, reason


def _old_manifest(root, params: dict, code: str = "1c39a4a920d59b44") -> str:
    """An alignment manifest as prh wrote it on 2026-11-28..12-02 (the layout of a store that
    commit 354f99f wrote: ``params`` without ``knn_precision``, ``outlier_scope``,
    ``outlier_exact`` and ``unit``, which came later), in the pair folder ``alignment/d/vit__lm``."""
    key = "alignment/d/vit__lm/1ecb675723d97ae1"
    folder = root / key
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps({
        "files": {"best.parquet": {"bytes": 1, "sha256": "0" * 64}, "scores.parquet": {"bytes": 1, "sha256": "0" * 64}},
        "key": key, "kind": "alignment",
        "lineage": {"code_version": code, "dataset_version": "d", "features": {"lm": "cddadae0bfa9035b", "vit": "0427bf2a8617408b"}},
        "n_samples": 40, "only_a": 0, "only_b": 0, "params": params,
        "published_at": "2026-12-01T13:38:03+00:00", "seconds": 0.151}))
    return key


def test_parameters_a_manifest_written_before_they_existed_lacks_are_what_prh_did_then(tmp_path) -> None:
    """A store aligned by an older prh, whose manifests' ``params`` predate ``knn_precision``,
    ``outlier_scope``, ``outlier_exact``, ``unit`` (and, the oldest, ``bootstrap``): after an
    upgrade the run named every one of them (``knn_precision (None, now 'exact')``, ``unit (None,
    now 'sample')``...) as computed with another value, though prh then ran exact k-NN, one row
    per sample, the mean-of-quantiles clamp and no bootstrap. Only what really differs is named:
    the code, and the clamp's scope (each layer alone then, one threshold per model now)."""
    from tasks.params import AlignmentParams

    store = Store(str(tmp_path / "store"))
    features = {"vit": "0427bf2a8617408b", "lm": "cddadae0bfa9035b"}
    now = AlignmentParams(metrics=["mutual_knn", "cka", "cknna"], topk=5, permutations=9, bootstrap=20).model_dump()
    key = _old_manifest(tmp_path / "store", {"bootstrap": 20, "cca_dim": 10, "kernel_metric": "ip",
                                             "metrics": ["mutual_knn", "cka", "cknna"], "outlier_quantile": 0.95,
                                             "pairs": "cross_modal", "permutations": 9, "rbf_sigma": 1.0, "seed": 0, "topk": 5})
    reason = why_align(store, "alignment/d/vit__lm", "alignment/d/vit__lm/none", features, now, "5fa57cc0cbc2a6c0")
    assert reason == ("the pair's stored alignment 1ecb675723d97ae1 (published 2026-12-01 13:38 UTC) is of other alignment "
                      "code (code version 1c39a4a920d59b44, now 5fa57cc0cbc2a6c0) and was computed with another "
                      "outlier_scope ('layer', now 'model')")

    # the first stores had no bootstrap either: none then, so a run without one names no bootstrap,
    # and a run at the old per-layer scope names the code alone
    (tmp_path / "store" / key / MANIFEST).unlink()
    (tmp_path / "store" / key).rmdir()
    _old_manifest(tmp_path / "store", {"cca_dim": 10, "kernel_metric": "ip", "metrics": ["mutual_knn"], "outlier_quantile": 0.95,
                                       "pairs": "cross_modal", "permutations": 9, "rbf_sigma": 1.0, "seed": 0, "topk": 5})
    layer = AlignmentParams(metrics=["mutual_knn"], topk=5, permutations=9, outlier_scope="layer").model_dump()
    reason = why_align(store, "alignment/d/vit__lm", "alignment/d/vit__lm/none", features, layer, "5fa57cc0cbc2a6c0")
    assert reason is not None and reason.endswith("is of other alignment code (code version 1c39a4a920d59b44, now 5fa57cc0cbc2a6c0)")
    with_bootstrap = {**layer, "bootstrap": 20}
    reason = why_align(store, "alignment/d/vit__lm", "alignment/d/vit__lm/none", features, with_bootstrap, "5fa57cc0cbc2a6c0")
    assert reason is not None and reason.endswith("and was computed with another bootstrap (0, now 20)")
