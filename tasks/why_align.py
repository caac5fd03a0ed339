"""Why a model pair's metrics are computed although the store holds an alignment of that pair.

An alignment version hashes both feature versions, the metrics' parameters and the alignment
code (``tasks.align_task.alignment_version``), so after an upgrade of prh's alignment code, a
re-extraction of either model or another parameter every pair of a zoo is aligned again (metrics
whose own inputs are unchanged are copied: ``tasks.reused_metrics``). The alignment stage says why
for each pair it computes, from the pair's stored version closest to the run, so that a long
nightly run on a store that already held every pair is not taken for lost results. Not part of
the alignment code: this module only reads manifests and words what it finds.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from storage.store import Store
from storage.versioning import code_version
from tasks.params import AlignmentParams
from tasks.version_reasons import closest, differing_fields, published_words, stored_manifests


def why_align(store: Store, pair_folder: str, current_key: str, features: dict[str, str], params: dict[str, Any],
              code: str) -> str | None:
    """Why the alignment ``current_key`` is computed: the other stored version in the pair's folder
    ``pair_folder`` (``alignment/<dataset>/<a>__<b>``) closest to this run (fewest differences; the
    newest, by ``published_at``, among equals) and what makes it another version: other alignment
    code (``code``, the current ``code_version`` of the alignment code), other feature versions
    (``features``: model -> feature version), other parameters (``params``:
    ``AlignmentParams.model_dump()``), or none of these (a user metric's edited module). The
    closest, not merely the newest: a pair stored at topk 10 and by a newer topk 3 trial names
    only the code for a topk 10 run after an upgrade. None when the folder holds no other version.
    Damaged manifests are passed over."""
    stored = [manifest for manifest in stored_manifests(store, pair_folder, "alignment", "lineage")
              if manifest.get("key") != current_key]
    if not stored:
        return None
    current = json.loads(json.dumps(params))  # as stored: lists, not tuples
    nearest = closest(stored, lambda manifest: _differences(manifest, features, current, code))
    other_code, moved, differing = _differences(nearest, features, current, code)
    reasons = []
    if other_code:
        reasons.append(f"is of other alignment code (code version {nearest['lineage'].get('code_version')}, now {code})")
    if moved:
        reasons.append(f"was computed from other features of {', '.join(moved)}")
    if differing:
        reasons.append(f"was computed with another {', '.join(differing)}")
    if not reasons:
        reasons.append("has the same code, features and parameters (a user metric's module changed, or its metric versions)")
    return f"the pair's stored alignment {str(nearest.get('key', '?')).rsplit('/', 1)[-1]} ({published_words(nearest)}) " \
           + " and ".join(reasons)


def _differences(manifest: dict[str, Any], features: dict[str, str], params: dict[str, Any],
                 code: str) -> tuple[bool, list[str], list[str]]:
    """What differs between a stored alignment and this run: whether its code does, the models
    whose feature versions differ (``model (stored, now current)``) and the parameters that do
    (as :func:`differing_fields`)."""
    lineage = manifest["lineage"]
    older = lineage.get("features") if isinstance(lineage.get("features"), dict) else {}
    moved = [f"{model} ({older.get(model)}, now {version})" for model, version in features.items() if older.get(model) != version]
    return lineage.get("code_version") != code, moved, differing_fields(*_comparable(manifest.get("params"), params))


#: What prh did before an alignment parameter existed, for manifests written before their
#: ``params`` recorded it: no bootstrap (``bootstrap``), exact neighbour lists (``knn_precision``
#: came with ``exact`` as its default), each layer clamped at its own threshold by the
#: mean-of-quantiles rule (``outlier_scope`` / ``outlier_exact`` came with the per-model scope as
#: their default) and one row per sample (``unit``). Compared as such, a store written then is
#: not said to have been computed with another ``knn_precision (None, now 'exact')``.
LEGACY_PARAMS: dict[str, Any] = {"bootstrap": 0, "knn_precision": "exact", "outlier_scope": "layer",
                                 "outlier_exact": False, "unit": "sample"}


def _comparable(stored: Any, current: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored manifest's ``params`` and this run's (``AlignmentParams.model_dump()``) as far as
    they can make another alignment version (``tasks.align_task.alignment_version``): the metrics
    as sorted lists (their order is not part of a version), without ``pairs`` (which pairs a zoo
    makes, not how one is scored) and ``device`` (where it ran), without a metric parameter that none of its metrics takes
    (``cca_dim`` without SVCCA, ``rbf_sigma`` under the linear kernel: `_unused`), and without
    ``seed`` where neither draws permutations or resamples (the seed then draws nothing and is not
    in the version). A stored value that is not a record is an empty one; a parameter a stored
    record lacks (written before it existed) is what prh did then (:data:`LEGACY_PARAMS`)."""
    def reduced(params: Any) -> dict[str, Any]:
        out = {key: value for key, value in params.items() if key not in ("pairs", "device")} if isinstance(params, dict) else {}
        if isinstance(out.get("metrics"), list):
            out["metrics"] = sorted(out["metrics"], key=str)
            for name in _unused(out):
                out.pop(name, None)
        return out

    def draws(params: dict[str, Any]) -> bool:
        return bool(params.get("permutations")) or bool(params.get("bootstrap"))

    old, new = reduced({**LEGACY_PARAMS, **stored} if isinstance(stored, dict) else stored), reduced(current)
    if not draws(old) and not draws(new):
        old.pop("seed", None)
        new.pop("seed", None)
    return old, new


def _unused(params: dict[str, Any]) -> set[str]:
    """The metric parameters of ``params`` (built-ins' ``tasks.params.METRIC_PARAMETERS``) that none
    of its ``metrics`` takes (``AlignmentParams.metric_params``, which a metric's version holds:
    ``rbf_sigma`` not under the linear kernel); none where a metric is not registered here (what it
    takes is not known)."""
    from tasks.metric_plugins import is_builtin
    from tasks.metrics import METRICS
    from tasks.params import METRIC_PARAMETERS, parameters_of

    metrics = params["metrics"]
    if not all(isinstance(name, str) and name in METRICS for name in metrics):
        return set()
    taken: set[str] = set()
    for name in metrics:
        takes = set(parameters_of(name))
        if is_builtin(name) and params.get("kernel_metric") == "ip":
            takes.discard("rbf_sigma")
        taken |= takes
    return {p for names in METRIC_PARAMETERS.values() for p in names} - taken


def log_why_computed(store: Store, key: str, manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams,
                     metrics: list[str], logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Log why ``metrics`` of the pair are computed where the store holds another alignment of
    it (:func:`why_align`: other code, features or parameters); a pair never aligned logs
    nothing here. Only words: a store that cannot say is passed over (the stage reads it again).
    Here, not in the stage: rewording or reshaping the message changes no alignment version."""
    from tasks.align_task import ALIGNMENT_CODE  # the stage imports this module

    a, b = manifest_a["catalog"], manifest_b["catalog"]
    try:
        reason = why_align(store, key.rsplit("/", 1)[0], key, {a["model"]: a.get("feature_version"), b["model"]: b.get("feature_version")},
                           params.model_dump(), code_version(*ALIGNMENT_CODE))
    except Exception:  # noqa: BLE001 - a message only
        return
    if reason is not None:
        logger.info("%s x %s: computing %s: %s", a["model"], b["model"], ", ".join(metrics), reason)
