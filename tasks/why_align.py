"""Why a model pair's metrics are computed although the store holds an alignment of that pair.

An alignment version hashes both feature versions, the metrics' parameters and the alignment
code (``tasks.align_task.alignment_version``), so after an upgrade of prh's alignment code, a
re-extraction of either model or another parameter every pair of a zoo is aligned again (metrics
whose own inputs are unchanged are copied: ``tasks.reused_metrics``). The alignment stage says why
for each pair it computes, from the pair's newest stored version, so that a long nightly run on
a store that already held every pair is not taken for lost results. Not part of the alignment
code: this module only reads manifests and words what it finds.
"""

from __future__ import annotations

import json
from typing import Any

from storage.store import Store
from tasks.version_reasons import differing_fields, published_at, published_words


def why_align(store: Store, pair_folder: str, current_key: str, features: dict[str, str], params: dict[str, Any],
              code: str) -> str | None:
    """Why the alignment ``current_key`` is computed: the newest other stored version in the pair's
    folder ``pair_folder`` (``alignment/<dataset>/<a>__<b>``, by ``published_at``) and what makes
    it another version: other alignment code (``code``, the current ``code_version`` of the
    alignment code), other feature versions (``features``: model -> feature version), other
    parameters (``params``: ``AlignmentParams.model_dump()``), or none of these (a user metric's
    edited module). None when the folder holds no other version. Damaged manifests are passed over."""
    stored = [manifest for key, manifest in store.manifests(pair_folder, on_damaged=lambda _: None, folders="*")
              if key != current_key and manifest.get("kind") == "alignment" and isinstance(manifest.get("lineage"), dict)]
    if not stored:
        return None
    newest = max(stored, key=published_at)
    lineage = newest["lineage"]
    reasons = []
    if lineage.get("code_version") != code:
        reasons.append(f"is of other alignment code (code version {lineage.get('code_version')}, now {code})")
    older = lineage.get("features") if isinstance(lineage.get("features"), dict) else {}
    moved = [f"{model} ({older.get(model)}, now {version})" for model, version in features.items() if older.get(model) != version]
    if moved:
        reasons.append(f"was computed from other features of {', '.join(moved)}")
    differing = differing_fields(newest.get("params"), json.loads(json.dumps(params)))  # as stored: lists, not tuples
    if differing:
        reasons.append(f"was computed with another {', '.join(differing)}")
    if not reasons:
        reasons.append("has the same code, features and parameters (a user metric's module changed, or its metric versions)")
    return f"the pair's stored alignment {str(newest.get('key', '?')).rsplit('/', 1)[-1]} ({published_words(newest)}) " \
           + " and ".join(reasons)

