"""Prefect task: join two models' stored features with DuckDB, score every layer pair, publish."""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from storage import layout
from storage.pairing import paired_features
from storage.store import Store
from storage.versioning import code_version, content_id
from tasks.alignment import MetricRequest, PairAlignment, align_layers, prepare_layers
from tasks.params import AlignmentParams
from tasks.retries import backoff, retry_transient

ALIGNMENT_CODE = ("tasks/metrics", "tasks/alignment.py", "storage/pairing.py")


def metric_requests(params: AlignmentParams) -> list[MetricRequest]:
    return [MetricRequest(name, params.metric_params(name)) for name in params.metrics]


def alignment_version(manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams) -> str:
    """Content id of a pair's alignment: both feature versions, metrics and parameters, code."""
    return content_id(
        {
            "features": [manifest_a["catalog"]["feature_version"], manifest_b["catalog"]["feature_version"]],
            "metrics": [[r.name, r.params] for r in metric_requests(params)],
            "outlier_quantile": params.outlier_quantile,
            "permutations": params.permutations,
            "bootstrap": params.bootstrap,
            "seed": params.seed,
            "code_version": code_version(*ALIGNMENT_CODE),
        }
    )


def _alignment_key(manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams) -> str:
    a, b = manifest_a["catalog"], manifest_b["catalog"]
    return layout.alignment_key(a["dataset_version"], a["model"], b["model"], alignment_version(manifest_a, manifest_b, params))


def stored_alignment(store_url: str, manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams) -> dict[str, Any] | None:
    return Store(store_url).manifest(_alignment_key(manifest_a, manifest_b, params))


def result_tables(
    results: list[PairAlignment], manifest_a: dict[str, Any], manifest_b: dict[str, Any], version: str, n_samples: int
) -> tuple[pa.Table, pa.Table]:
    """(scores: one row per metric × layer pair, best: one row per metric) as Arrow tables."""
    a, b = manifest_a["catalog"], manifest_b["catalog"]
    common = {"alignment_version": version, "dataset_version": a["dataset_version"], "model_a": a["model"], "model_b": b["model"]}
    scores, best = [], []
    for r in results:
        params = json.dumps(r.metric.params, sort_keys=True)
        la, lb = r.matrix.shape
        for i in range(la):
            for j in range(lb):
                scores.append({**common, "metric": r.metric.name, "params": params, "layer_a": i, "layer_b": j,
                               "layer_name_a": a["layer_names"][i], "layer_name_b": b["layer_names"][j],
                               "score": float(r.matrix[i, j]), "n_samples": n_samples})
        i, j = r.best_layers
        best.append({**common, "metric": r.metric.name, "params": params, "modality_a": a["modality"], "modality_b": b["modality"],
                     "layer_a": i, "layer_b": j, "layer_name_a": a["layer_names"][i], "layer_name_b": b["layer_names"][j],
                     "score": r.best, "chance_level": r.chance_level, "null_mean": r.null_mean, "null_std": r.null_std,
                     "tau": r.tau, "p_value": r.p_value, "calibrated_score": r.calibrated, "permutations": r.permutations,
                     "ci_low": r.ci_low, "ci_high": r.ci_high, "bootstrap": r.bootstrap,
                     "n_samples": n_samples})
    schema_types = {"layer_a": pa.int32(), "layer_b": pa.int32(), "n_samples": pa.int32(), "permutations": pa.int32(),
                    "bootstrap": pa.int32(), "ci_low": pa.float64(), "ci_high": pa.float64()}
    return _table(scores, schema_types), _table(best, schema_types)


def _table(rows: list[dict[str, Any]], types: dict[str, pa.DataType]) -> pa.Table:
    columns = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        dtype = types.get(name)
        if dtype is None and all(v is None or isinstance(v, float) for v in values):
            dtype = pa.float64()
        columns[name] = pa.array(values, type=dtype)
    return pa.table(columns)


@task(name="align-pair", task_run_name="align-{model_a}-{model_b}", tags=["prh-align"], retries=3,
      retry_delay_seconds=backoff(5, 3), retry_jitter_factor=0.5, retry_condition_fn=retry_transient)
def align_pair(
    store_url: str, manifest_a: dict[str, Any], manifest_b: dict[str, Any], params: AlignmentParams, model_a: str, model_b: str
) -> dict[str, Any]:
    """Score every layer pair of two models with every metric (or reuse a stored result)."""
    logger = get_run_logger()
    store = Store(store_url)
    key = _alignment_key(manifest_a, manifest_b, params)
    existing = store.manifest(key)
    if existing is not None:
        logger.info("%s x %s: alignment already stored (%s)", model_a, model_b, key)
        return {**existing, "reused": True}
    started = time.perf_counter()
    pair = paired_features(store, manifest_a, manifest_b)
    if pair.only_a or pair.only_b:
        logger.warning("%s x %s: %d samples only in %s, %d only in %s; aligning the %d common samples",
                       model_a, model_b, pair.only_a, model_a, pair.only_b, model_b, len(pair.sample_ids))
    min_n = params.topk + 2
    if len(pair.sample_ids) < min_n:
        raise ValueError(f"{model_a} x {model_b}: {len(pair.sample_ids)} common samples; topk={params.topk} needs at least {min_n}")
    xs = prepare_layers(pair.xs, q=params.outlier_quantile)
    ys = prepare_layers(pair.ys, q=params.outlier_quantile)
    results = align_layers(xs, ys, metric_requests(params), permutations=params.permutations, seed=params.seed,
                           bootstrap=params.bootstrap)
    version = key.rsplit("/", 1)[1]
    scores, best = result_tables(results, manifest_a, manifest_b, version, len(pair.sample_ids))
    seconds = time.perf_counter() - started
    manifest = {
        "kind": "alignment",
        "lineage": {
            "dataset_version": manifest_a["catalog"]["dataset_version"],
            "features": {model_a: manifest_a["catalog"]["feature_version"], model_b: manifest_b["catalog"]["feature_version"]},
            "code_version": code_version(*ALIGNMENT_CODE),
        },
        "params": params.model_dump(),
        "n_samples": len(pair.sample_ids),
        "only_a": pair.only_a,
        "only_b": pair.only_b,
        "seconds": round(seconds, 3),
    }
    published = store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best}, manifest)
    for r in results:
        logger.info("%s x %s: %s best %.4f at layers (%d, %d)%s", model_a, model_b, r.metric.label(), r.best, *r.best_layers,
                    f", chance {r.chance_level:.4f}" if r.chance_level is not None else "")
    return {**published.manifest, "reused": False}
