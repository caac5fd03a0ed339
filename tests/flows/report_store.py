"""A small real store for the report tests, published with the same manifest shapes the pipeline's
tasks write (dataset, features per model, alignment per pair, run records)."""

from __future__ import annotations

import json
import math
from collections.abc import Collection

import numpy as np
import pyarrow as pa

from storage import layout
from storage.features import layer_tables
from storage.store import Store
from tasks.align_task import result_tables
from tasks.alignment import MetricRequest, PairAlignment
from tests.tasks.report.synthetic import clustered_features, image_bytes

DATASET = "ds0123456789abcd"
N = 24
TOPK = 3
MODELS = {  # name: (modality, layers, params, bits per byte)
    "vit-tiny": ("vision", 3, 2_000_000, None),
    "vit-small": ("vision", 2, 9_000_000, None),
    "gpt-tiny": ("language", 2, 5_000_000, 2.5),
    "gpt-small": ("language", 3, 20_000_000, 1.8),
}
PAIRS = [(a, b) for a in MODELS if MODELS[a][0] == "vision" for b in MODELS if MODELS[b][0] == "language"]
LATEST_RUN, OLDER_RUN, FAILED_RUN = "run-latest", "run-older", "run-failed"


def pair_score(a: str, b: str, layer_a: int, layer_b: int, shift: float = 0.0) -> float:
    """A distinct score per pair and layer pair; the last layers score highest."""
    base = 0.2 + 0.05 * list(MODELS).index(a) + 0.11 * list(MODELS).index(b) + shift
    return round(base * (layer_a + 1) * (layer_b + 1) / (MODELS[a][1] * MODELS[b][1]), 6)


def build(url: str, pooled_only: Collection[str] = ()) -> dict[str, list[dict]]:
    """Publish the store at ``url``; returns the best rows of each run id. The causal LMs named in
    ``pooled_only`` get the manifest of extraction code older than the per-caption mean (session
    11): their figure of ``MODELS`` is the pooled one, stored as ``bits_per_byte``, no
    ``bits_per_byte_pooled``, and ``extras`` that sum the loss but hold no ``bpb_sum``."""
    store = Store(url)
    ids = [f"s{i:02d}" for i in range(N)]
    texts = [f"picture number {i}" for i in range(N)]
    samples = pa.table({"dataset_version": [DATASET] * N, "sample_id": ids, "image_id": ids,
                        "text": texts, "image": [image_bytes(i) for i in range(N)]})
    store.publish(layout.dataset_key(DATASET), {layout.SAMPLES_FILE: samples},
                  {"kind": "dataset", "catalog": {"dataset_version": DATASET, "name": "synthetic", "n_samples": N, "n_rejected": 0, "source": "test"}})
    manifests = {}
    for k, (name, (modality, n_layers, params, bpb)) in enumerate(MODELS.items()):
        version = f"f{k:015d}"
        layers = [clustered_features(N, d=6, clusters=4, noise=0.3 + 0.2 * layer, seed=10 * k + layer) for layer in range(n_layers)]
        catalog = {"model": name, "feature_version": version, "dataset_version": DATASET, "modality": modality, "loader": "test",
                   "model_id": f"test/{name}", "revision": None, "pooling": "avg", "dtype": "float32", "param_count": params,
                   "n_layers": n_layers, "layer_names": [f"layer.{i}" for i in range(n_layers)], "layer_widths": [6] * n_layers,
                   "bits_per_byte": bpb, "n_samples": N}
        manifest = {"kind": "features", "catalog": catalog}
        if name in pooled_only:
            text_bytes = sum(len(t.encode()) for t in texts)  # bits per byte = nll_nats / ln 2 / text_bytes
            manifest["extras"] = {"nll_nats": bpb * math.log(2) * text_bytes, "predicted_tokens": 4 * N, "text_bytes": text_bytes,
                                  "bpb_truncated_texts": 0}
        manifests[name] = store.publish(layout.features_key(DATASET, name, version), layer_tables(name, version, ids, layers),
                                        manifest).manifest
    runs = {}
    for r, (run_id, shift, started) in enumerate(((OLDER_RUN, -0.1, "2026-01-01T00:00:00+00:00"), (LATEST_RUN, 0.0, "2026-01-02T00:00:00+00:00"))):
        keys, best = [], []
        for p, (a, b) in enumerate(PAIRS):
            matrix = np.array([[pair_score(a, b, i, j, shift) for j in range(MODELS[b][1])] for i in range(MODELS[a][1])])
            top = float(matrix.max())
            result = PairAlignment(MetricRequest("mutual_knn", {"topk": TOPK}), matrix, top, (MODELS[a][1] - 1, MODELS[b][1] - 1),
                                   TOPK / (N - 1), null_mean=0.15, null_std=0.02, tau=0.18, p_value=0.1, calibrated=(top - 0.18) / 0.82,
                                   permutations=9)
            version = f"a{r}{p:014d}"
            scores, best_table = result_tables([result], manifests[a], manifests[b], version, N)
            key = layout.alignment_key(DATASET, a, b, version)
            lineage = {"dataset_version": DATASET, "features": {m: manifests[m]["catalog"]["feature_version"] for m in (a, b)}}
            store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best_table}, {"kind": "alignment", "lineage": lineage})
            keys.append(key)
            best += best_table.to_pylist()
        store.write_json(layout.run_key(run_id), {
            "run_id": run_id, "flow_run_id": run_id, "status": "COMPLETED", "started_at": started, "finished_at": started,
            "store": store.display_url, "dataset_version": DATASET, "alignment_versions": keys,
            "feature_versions": {m: manifests[m]["catalog"]["feature_version"] for m in MODELS}, "extracted": [], "reused": [],
        })
        runs[run_id] = best
    store.write_json(layout.run_key(FAILED_RUN), {"run_id": FAILED_RUN, "status": "FAILED", "started_at": "2026-01-03T00:00:00+00:00"})
    return runs


def run_record(url: str, run_id: str) -> dict:
    """A run record as the pipeline holds it."""
    return json.loads(Store(url).read_bytes(layout.run_key(run_id)))
