"""Paired image–caption datasets: the table contract, the OpenMoji builder, and the loader.

Pure loading and validation (no Prefect, no storage): everything returns pyarrow tables that
follow :data:`tasks.data.schema.DATASET_SCHEMA`.
"""

from tasks.data.openmoji import build_openmoji_pairs, describe
from tasks.data.schema import DATASET_SCHEMA, validate_table
from tasks.data.tables import REJECTED_SCHEMA, LoadResult, load_paired_dataset

__all__ = [
    "DATASET_SCHEMA",
    "REJECTED_SCHEMA",
    "LoadResult",
    "build_openmoji_pairs",
    "describe",
    "load_paired_dataset",
    "validate_table",
]
