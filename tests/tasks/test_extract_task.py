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
