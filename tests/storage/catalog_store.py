"""A small store with every box (dataset, features, alignment, runs), published through the real
store API, for catalog and query tests. Scores are synthetic but shaped like real ones."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from storage import layout
from storage.catalog import _EMPTY_VIEWS
from storage.features import layer_tables
from storage.store import Store

DATASET = "ds0123456789abcd"
CAPTIONS = ["grinning cat", "cat with tears of joy", "dog face", "red apple", "green apple", "bicycle", "cat face", "rocket"]
# name: (modality, param_count, n_layers, width)
MODELS = {
    "vit-small": ("vision", 2_000_000, 4, 8),
    "vit-large": ("vision", 9_000_000, 5, 12),
    "lm-small": ("language", 5_000_000, 3, 6),
    "lm-large": ("language", 20_000_000, 4, 10),
}


def _schema(view: str) -> list[str]:
    """The columns of the view's Parquet files (the view adds the lineage columns)."""
    return [c.split(" ", 1)[0] for c in _EMPTY_VIEWS[view].split(", ")]


def _positional(view: str) -> list[str]:
    """The file columns in the order :func:`_alignment_rows` writes each row (metric and params
    before the models; the views unite files by name, so the order is the test's own)."""
    names = _schema(view)
    moved = [c for c in ("metric", "params") if c in names]
    rest = [c for c in names if c not in moved]
    at = rest.index("model_a")
    return rest[:at] + moved + rest[at:]


def build_catalog_store(url: str) -> Store:
    """Publish a dataset of 8 samples (two captions share an image), four models' features, the
    four vision × language alignments (mutual_knn, cka) and two run records."""
    store = Store(url)
    rng = np.random.default_rng(7)
    ids = [f"s{i:02d}" for i in range(len(CAPTIONS))]
    image_ids = [f"img{min(i, 6):02d}" for i in range(len(CAPTIONS))]  # s06 and s07 share img06
    samples = pa.table({"dataset_version": [DATASET] * len(ids), "sample_id": ids, "image_id": image_ids,
                        "text": CAPTIONS, "image": [bytes([i]) * (100 + i) for i in range(len(ids))]})
    store.publish(layout.dataset_key(DATASET), {layout.SAMPLES_FILE: samples},
                  {"kind": "dataset", "catalog": {"dataset_version": DATASET, "name": "toy", "n_samples": len(ids), "n_images": 7, "n_rejected": 1,
                                                  "source": {"kind": "toy", "license": "CC0"}, "code_version": "c0"}})
    manifests = {}
    for model, (modality, params, n_layers, width) in MODELS.items():
        version = f"fv-{model}"
        layers = [rng.normal(size=(len(ids), width)).astype(np.float32) for _ in range(n_layers)]
        catalog = {"model": model, "feature_version": version, "dataset_version": DATASET, "modality": modality,
                   "loader": "toy", "model_id": f"toy/{model}", "pooling": "avg", "dtype": "float32", "param_count": params,
                   "n_layers": n_layers, "layer_names": [f"layer.{i:02d}" for i in range(n_layers)],
                   "layer_widths": [width] * n_layers, "n_samples": len(ids), "code_version": "c1", "device": "cpu"}
        key = layout.features_key(DATASET, model, version)
        manifests[model] = store.publish(key, layer_tables(model, version, ids, layers), {"kind": "features", "catalog": catalog}).manifest
    versions = []
    for a in (m for m in MODELS if MODELS[m][0] == "vision"):
        for b in (m for m in MODELS if MODELS[m][0] == "language"):
            version = f"al-{a}-{b}"
            scores, best = _alignment_rows(a, b, version, len(ids))
            key = layout.alignment_key(DATASET, a, b, version)
            lineage = {"dataset_version": DATASET, "features": {a: f"fv-{a}", b: f"fv-{b}"}}
            store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best}, {"kind": "alignment", "lineage": lineage})
            versions.append(key)
    feature_versions = {m: f"fv-{m}" for m in MODELS}
    for i, (extracted, reused, aligned) in enumerate([(list(MODELS), [], 4), ([], list(MODELS), 0)]):
        record = {"run_id": f"run-{i}", "status": "COMPLETED", "started_at": f"2026-01-0{i + 1}T00:00:00+00:00",
                  "finished_at": f"2026-01-0{i + 1}T00:05:00+00:00", "store": url, "config": {"alignment": {"topk": 2}},
                  "dataset_version": DATASET, "feature_versions": feature_versions, "alignment_versions": versions,
                  "extracted": extracted, "reused": reused, "aligned": aligned, "code_version": "c2", "error": None}
        store.write_json(layout.run_key(f"run-{i}"), record)
    return store


def _alignment_rows(a: str, b: str, version: str, n: int) -> tuple[pa.Table, pa.Table]:
    """Scores that grow with both models' size and with depth; best row with a fake null."""
    (ma, pa_, la, _), (mb, pb, lb, _) = MODELS[a], MODELS[b]
    scores, best = [], []
    for metric, params, chance in (("mutual_knn", {"topk": 2}, 2 / (n - 1)), ("cka", {"kernel_metric": "ip"}, None)):
        grid = np.array([[0.2 + 0.05 * np.log10(pa_ * pb) / 14 + 0.1 * (i / la) * (j / lb) for j in range(lb)] for i in range(la)])
        if metric == "cka":
            grid = grid + 0.2
        for i in range(la):
            for j in range(lb):
                scores.append([version, DATASET, metric, json.dumps(params), a, b, i, j, f"layer.{i:02d}", f"layer.{j:02d}",
                               float(grid[i, j]), n, "sample"])
        i, j = np.unravel_index(int(grid.argmax()), grid.shape)
        null_mean = 0.1 if metric == "cka" else 0.3
        tau = null_mean + 0.02
        calibrated = max(0.0, (grid.max() - tau) / (1 - tau))
        best.append([version, DATASET, metric, json.dumps(params), a, b, ma, mb, int(i), int(j), f"layer.{i:02d}",
                     f"layer.{j:02d}", float(grid.max()), chance, null_mean, 0.01, tau, 1 / 21, calibrated, 20,
                     float(grid.max()) - 0.02 if metric == "mutual_knn" else None,
                     float(grid.max()) + 0.02 if metric == "mutual_knn" else None,
                     False if metric == "mutual_knn" else None,
                     50 if metric == "mutual_knn" else 0, n, "sample"])
    int_columns = {"layer_a", "layer_b", "n_samples", "permutations", "bootstrap"}

    def table(view: str, rows: list[list]) -> pa.Table:
        names = _positional(view)
        return pa.table({c: pa.array([r[k] for r in rows], pa.int32() if c in int_columns else None) for k, c in enumerate(names)})

    return table("alignment_all", scores), table("alignment_best_all", best)
