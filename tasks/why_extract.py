"""Why a model is extracted although the store holds features of it over the run's dataset.

A feature version hashes the model's fingerprint and the extraction code (``tasks.extract_task.
feature_version``), so an upgrade of prh's extraction code, or of a library the fingerprint names
(``transformers``), gives every model of a zoo a new version: the whole zoo is extracted again,
once. A run says so per model (the stored version of that name closest to the run, and what
differs), so that hours of re-extraction on a long-lived store are not taken for lost features.
Not part of the feature code: this module only reads manifests.
"""

from __future__ import annotations

from typing import Any

from storage import layout
from storage.store import Store
from storage.versioning import code_version
from tasks.extract.spec import ModelSpec
from tasks.extract_task import FEATURE_CODE, FEATURE_CODE_EXCLUDED, model_fingerprint
from tasks.version_reasons import closest, differing_fields, published_words, stored_manifests


def why_extract(store_url: str, dataset_manifest: dict[str, Any], spec: ModelSpec) -> str | None:
    """Why ``spec``'s features are computed although the store holds a version of that model name
    over the same dataset: the stored version closest to this run (fewest differences; the newest,
    by ``published_at``, among equals) and what makes it another version (other extraction code,
    fingerprint fields that differ, both, or neither: the feature schema number). The closest, not
    merely the newest: a store holding the model at two settings (float32, then a float16 trial)
    names only the code for a float32 run after an upgrade, not the trial's dtype. None when the
    store holds no version of that name over this dataset. Damaged manifests are passed over
    (``prh verify`` names them)."""
    dataset_version = dataset_manifest["catalog"]["dataset_version"]
    stored = stored_manifests(Store(store_url), Store.key(layout.FEATURES, dataset_version, spec.name), "features", "catalog")
    if not stored:
        return None
    now = code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)
    fingerprint = model_fingerprint(spec)
    nearest = closest(stored, lambda manifest: _differences(manifest, fingerprint, now))
    code_differs, differing = _differences(nearest, fingerprint, now)
    catalog = nearest["catalog"]
    head = f"its stored features {catalog.get('feature_version')} ({published_words(nearest)})"
    reasons = []
    if code_differs:
        reasons.append(f"are of other extraction code (code version {catalog.get('code_version')}, now {now})")
    if differing:
        reasons.append(f"were extracted with another {', '.join(differing)}")
    if not reasons:  # the same code and fingerprint: only the hand-raised schema number is left
        reasons.append("are of another feature schema (tasks.extract_task.FEATURE_SCHEMA_VERSION)")
    return f"{head} {' and '.join(reasons)}"


def _differences(manifest: dict[str, Any], fingerprint: dict[str, Any], code: str) -> tuple[bool, list[str]]:
    """What differs between a stored feature version and this run: whether its extraction code
    does, and each fingerprint field that does (as :func:`differing_fields` words them)."""
    return manifest["catalog"].get("code_version") != code, differing_fields(manifest.get("spec"), fingerprint)

