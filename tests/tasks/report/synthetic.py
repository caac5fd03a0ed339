"""Small synthetic catalog tables (the catalog's column names) for the report tests."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

VISION = ["vit-s", "vit-b"]
LANGUAGE = ["lm-a", "lm-b", "lm-c"]
METRICS = ["mutual_knn", "cka"]
LAYERS = {"vit-s": 3, "vit-b": 4, "lm-a": 2, "lm-b": 3, "lm-c": 3}
N = 30
TOPK = 5


def score_of(metric: str, i: int, j: int) -> float:
    """A distinct, recognisable score for every (metric, vision i, language j)."""
    return round((0.1 if metric == "mutual_knn" else 0.3) + 0.0123 * i + 0.0371 * j, 6)


def best_rows(ci: bool = False, calibrated: bool = True) -> list[dict]:
    rows = []
    for metric in METRICS:
        for i, a in enumerate(VISION):
            for j, b in enumerate(LANGUAGE):
                score = score_of(metric, i, j)
                row = {"alignment_version": f"v{i}{j}", "dataset_version": "ds0", "metric": metric, "params": "{}",
                       "model_a": a, "model_b": b, "modality_a": "vision", "modality_b": "language",
                       "layer_a": LAYERS[a] - 1, "layer_b": LAYERS[b] - 1, "layer_name_a": f"block.{LAYERS[a] - 1}",
                       "layer_name_b": f"layer.{LAYERS[b] - 1}", "score": score,
                       "chance_level": TOPK / (N - 1) if metric == "mutual_knn" else None,
                       "null_mean": 0.02 if calibrated else None, "null_std": 0.01 if calibrated else None,
                       "tau": 0.04 if calibrated else None, "p_value": 0.05 if calibrated else None,
                       "calibrated_score": round((score - 0.04) / 0.96, 6) if calibrated else None,
                       "permutations": 19 if calibrated else 0, "n_samples": N}
                if ci:
                    row.update(ci_low=score - 0.01, ci_high=score + 0.02)
                rows.append(row)
    return rows


def score_rows() -> list[dict]:
    """Every layer pair; the best pair (last layers) holds the best score."""
    rows = []
    for metric in METRICS:
        for i, a in enumerate(VISION):
            for j, b in enumerate(LANGUAGE):
                top = score_of(metric, i, j)
                for la in range(LAYERS[a]):
                    for lb in range(LAYERS[b]):
                        s = top * (la + 1) * (lb + 1) / (LAYERS[a] * LAYERS[b])
                        rows.append({"metric": metric, "model_a": a, "model_b": b, "layer_a": la, "layer_b": lb,
                                     "layer_name_a": f"block.{la}", "layer_name_b": f"layer.{lb}", "score": s})
    return rows


def model_rows() -> list[dict]:
    rows = []
    for k, m in enumerate(VISION + LANGUAGE):
        rows.append({"model": m, "feature_version": f"f-{m}", "modality": "vision" if m in VISION else "language",
                     "model_id": f"org/{m}", "param_count": 10 ** (6 + k % 3) * (k + 1), "n_layers": LAYERS[m],
                     "bits_per_byte": None if m in VISION or m == "lm-c" else 1.5 - 0.4 * LANGUAGE.index(m)})
    return rows


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def image_bytes(i: int, size: int = 24) -> bytes:
    """A PNG of a distinct colour."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), (i * 37 % 256, i * 91 % 256, i * 53 % 256)).save(out, format="PNG")
    return out.getvalue()


def clustered_features(n: int = N, d: int = 8, clusters: int = 5, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Rows near one of ``clusters`` centres (cluster = row % clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return (centres[np.arange(n) % clusters] + noise * rng.normal(size=(n, d))).astype(np.float32)
