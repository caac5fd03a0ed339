"""Prefect task: extract every layer's pooled features of one model over a stored dataset."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow.compute as pc
from prefect import get_run_logger, task

from storage import layout
from storage.features import layer_tables
from storage.store import Store
from storage.versioning import code_version, content_id
from tasks.extract.spec import ModelSpec

FEATURE_SCHEMA_VERSION = 1


def feature_version(dataset_version: str, spec: ModelSpec) -> str:
    """Content id of a model's features: dataset, everything about the model, the code."""
    return content_id(
        {
            "dataset_version": dataset_version,
            "model": spec.fingerprint(),
            "code_version": code_version("tasks/extract", "storage/features.py"),
            "schema": FEATURE_SCHEMA_VERSION,
        }
    )


def stored_features(store_url: str, dataset_manifest: dict[str, Any], spec: ModelSpec) -> dict[str, Any] | None:
    """Manifest of this model's features if already published, else None."""
    dataset_version = dataset_manifest["catalog"]["dataset_version"]
    key = layout.features_key(dataset_version, spec.name, feature_version(dataset_version, spec))
    return Store(store_url).manifest(key)


@task(name="extract-features", task_run_name="extract-{spec.name}", retries=1, retry_delay_seconds=10)
def extract_features(store_url: str, dataset_manifest: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """Extract (or reuse) ``spec``'s features for the dataset; returns the feature manifest.

    Vision models run once per distinct image (rows of captions of the same image share it);
    language models once per caption. Progress is logged per batch.
    """
    from tasks.extract.extractor import extract_all, load_extractor

    logger = get_run_logger()
    store = Store(store_url)
    dataset_version = dataset_manifest["catalog"]["dataset_version"]
    version = feature_version(dataset_version, spec)
    key = layout.features_key(dataset_version, spec.name, version)
    existing = store.manifest(key)
    if existing is not None:
        logger.info("%s: features %s already stored, nothing to extract", spec.name, version)
        return {**existing, "reused": True}

    samples = store.read_table(f"{dataset_manifest['key']}/{layout.SAMPLES_FILE}", columns=["sample_id", "image_id", "text"] + (["image"] if spec.modality == "vision" else []))
    sample_ids = samples.column("sample_id").to_pylist()
    if spec.modality == "vision":
        image_ids = samples.column("image_id").to_pylist()
        first = {}
        for row, image_id in enumerate(image_ids):
            first.setdefault(image_id, row)
        rows = list(first.values())
        items = pc.take(samples.column("image"), rows).to_pylist()
        position = {image_id: i for i, image_id in enumerate(first)}
        expand = np.array([position[i] for i in image_ids]) if len(rows) != len(image_ids) else None
    else:
        items = samples.column("text").to_pylist()
        expand = None

    started = time.perf_counter()
    logger.info("%s: loading %s (%s, %s)", spec.name, spec.id, spec.loader, spec.modality)
    extractor = load_extractor(spec)
    n_batches = -(-len(items) // spec.batch_size)
    last_logged = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last_logged[0] > 5 or done <= spec.batch_size:
            last_logged[0] = now
            batch = -(-done // spec.batch_size)
            logger.info("%s: batch %d/%d (%d/%d items, %.1fs)", spec.name, batch, n_batches, done, total, now - started)

    features = extract_all(extractor, items, progress=progress)
    layers = features.layers if expand is None else [x[expand] for x in features.layers]
    seconds = time.perf_counter() - started

    device = getattr(extractor, "device", "cpu")
    catalog = {
        "model": spec.name,
        "feature_version": version,
        "dataset_version": dataset_version,
        "modality": spec.modality,
        "loader": spec.loader,
        "model_id": spec.id,
        "revision": spec.revision,
        "pooling": spec.pooling,
        "dtype": spec.dtype,
        "param_count": int(features.param_count),
        "n_layers": len(layers),
        "layer_names": list(features.layer_names),
        "layer_widths": [int(x.shape[1]) for x in layers],
        "bits_per_byte": features.extras.get("bits_per_byte"),
        "n_samples": len(sample_ids),
        "code_version": code_version("tasks/extract", "storage/features.py"),
        "device": str(device),
        "seconds": round(seconds, 3),
    }
    manifest = {"kind": "features", "catalog": catalog, "spec": spec.fingerprint()}
    published = store.publish(key, layer_tables(spec.name, version, sample_ids, layers), manifest)
    logger.info("%s: %d layers x %d samples in %.1fs -> %s", spec.name, len(layers), len(sample_ids), seconds, key)
    return {**published.manifest, "reused": False}
