"""The code that makes features is pinned: a change to it changes every feature version, so every
user's next run extracts every model again (GPU hours). A session changed tasks/data/images.py
for a dataset-loading fix and the demo store re-extracted all six models."""

from __future__ import annotations

from storage.versioning import code_version
from tasks.extract_task import FEATURE_CODE, FEATURE_CODE_EXCLUDED

#: ``code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)`` of the features users hold
PINNED_FEATURE_CODE = "66630ab94b6687bc"


def test_the_feature_code_is_unchanged_unless_meant():
    now = code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)
    assert now == PINNED_FEATURE_CODE, (
        f"the feature code changed ({PINNED_FEATURE_CODE} -> {now}): every stored feature version changes and every "
        "model is extracted again on the next run. If the change cannot alter a feature, move it out of FEATURE_CODE's "
        "files; if it is meant, update PINNED_FEATURE_CODE and say so in the commit and the session's note")


def test_a_model_load_timeout_names_the_model_and_the_limit(monkeypatch):
    """The extraction hunt: a load over PRH_MODEL_LOAD_TIMEOUT failed with Prefect's "Scope timed
    out after 0.001 second(s).", naming neither the model nor the variable."""
    import time

    import pytest

    import tasks.extract.extractor as extractor
    from tasks.extract.spec import ModelSpec
    from tasks.extract_task import _load_with_timeout
    from tasks.retries import ModelLoadTimeout

    spec = ModelSpec.model_validate({"name": "slow-vit", "id": "org/slow-vit", "modality": "vision", "loader": "hf"})
    monkeypatch.setattr(extractor, "load_extractor", lambda spec: time.sleep(2))
    monkeypatch.setenv("PRH_MODEL_LOAD_TIMEOUT", "0.2")
    with pytest.raises(ModelLoadTimeout, match=r"^slow-vit: loading 'org/slow-vit' took longer than PRH_MODEL_LOAD_TIMEOUT=0.2 s"):
        _load_with_timeout(spec)
