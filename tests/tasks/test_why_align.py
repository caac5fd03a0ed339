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
