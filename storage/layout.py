"""Keys of the store's boxes (see docs/storage.md). Every component is validated."""

from __future__ import annotations

from storage.store import Store

DATASETS = "datasets"
FEATURES = "features"
ALIGNMENT = "alignment"
RUNS = "runs"

SAMPLES_FILE = "samples.parquet"
#: The rows a dataset's load refused (``tasks.data.tables.REJECTED_SCHEMA``), beside its samples; only
#: in a version that has some.
REJECTED_FILE = "rejected.parquet"
SCORES_FILE = "scores.parquet"
BEST_FILE = "best.parquet"


def dataset_key(dataset_version: str) -> str:
    return Store.key(DATASETS, dataset_version)


def rendered_dataset_key(source_id: str) -> str:
    """Where a generated dataset's source (the demo's rendering recipe) points to its version."""
    return Store.key(DATASETS, "rendered", f"{source_id}.json")


def features_key(dataset_version: str, model: str, feature_version: str) -> str:
    return Store.key(FEATURES, dataset_version, model, feature_version)


def layer_file(layer: int) -> str:
    return f"layer-{layer:03d}.parquet"


def alignment_key(dataset_version: str, model_a: str, model_b: str, alignment_version: str) -> str:
    Store.key(model_a, model_b)  # validate both names before joining them
    return Store.key(ALIGNMENT, dataset_version, f"{model_a}__{model_b}", alignment_version)


def run_key(run_id: str) -> str:
    return Store.key(RUNS, f"{run_id}.json")


#: Folder under ``runs/`` of the extraction stage's records (``prh-extract``): liveness and the
#: versions it published or reused, kept apart from the pipeline runs of the ``runs`` view.
EXTRACTIONS = "extractions"


def extraction_key(run_id: str) -> str:
    return Store.key(RUNS, EXTRACTIONS, f"{run_id}.json")
