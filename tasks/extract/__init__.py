"""Feature extraction: model specs, model adapters, pooled per-layer features as numpy.

Pure computation: no Prefect, no storage. Importing this package is cheap; torch and transformers
load only when an extractor is used.

    from tasks.extract import ModelSpec, load_zoo, check_model, load_extractor, extract_all
"""

from __future__ import annotations

from typing import Any

from tasks.extract.errors import ModelInputError, NonFiniteFeaturesError
from tasks.extract.spec import EXTRACT_SEMANTICS_VERSION, ModelSpec, ZooError, load_zoo

__all__ = [
    "EXTRACT_SEMANTICS_VERSION",
    "ExtractedFeatures",
    "Extractor",
    "ModelInputError",
    "ModelSpec",
    "NonFiniteFeaturesError",
    "ZooError",
    "check_model",
    "extract_all",
    "load_extractor",
    "load_zoo",
]

_LAZY = {"ExtractedFeatures", "Extractor", "check_model", "extract_all", "load_extractor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tasks.extract import extractor

        return getattr(extractor, name)
    raise AttributeError(f"module 'tasks.extract' has no attribute {name!r}")
