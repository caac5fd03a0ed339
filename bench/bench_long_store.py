"""What a long-lived store costs the commands that compute nothing: a year of nightly runs, a big zoo.

Builds synthetic stores at growing sizes, written straight to disk (:func:`build`: no model, no
engine, no claim protocol; files and manifests as the pipeline writes them), and times, on each, the catalog (``connect``, then queries of ``prh sql``), a run's start (marking dead runs,
sweeping, placing the run after the others), ``prh report``'s reading (``load_report_input``), the
closing table (``flows.pipeline.best_rows``, q-values, the table printed), the reuse checks of a rerun that finds every pair stored,
``prh gc --keep-runs --dry-run`` and ``prh verify --quick``, best of ``--repeats``; and counts the
run records read (each a GET on an object store) by each operation. Doubling one size at a time
(runs, then pairs) shows what grows faster than the store: the ratio per doubling (1 ≈ flat,
2 ≈ linear, 4 ≈ quadratic).

Usage::

    python bench/bench_long_store.py                       # runs 100/200/400 at 12x12 models, pairs 36/72/144 at 100 runs
    python bench/bench_long_store.py --runs 100 200 --vision 6 --language 6 12 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from storage import layout  # noqa: E402
from storage.features import layer_tables  # noqa: E402
from storage.parquet_schema import schema_fingerprint  # noqa: E402
from storage.store import MANIFEST, table_to_parquet_bytes  # noqa: E402

DATASET = "ds00112233445566"
START = datetime(2025, 1, 1, 3, 0, tzinfo=timezone.utc)


def _publish(root: Path, key: str, files: dict[str, bytes], manifest: dict, published_at: datetime) -> None:
    folder = root / key
    folder.mkdir(parents=True, exist_ok=True)
    listing = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        listing[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        fingerprint = schema_fingerprint(data) if name.endswith(".parquet") else None
        if fingerprint is not None:
            listing[name]["schema"] = fingerprint
    full = {**manifest, "key": key, "files": listing, "published_at": published_at.isoformat()}
    (folder / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True))


def _alignment_files(version: str, a: str, b: str, metrics: int, layers: int, rng: np.random.Generator
                     ) -> tuple[bytes, bytes]:
    pairs = layers * layers
    rows = pairs * metrics
    la, lb = np.meshgrid(np.arange(layers, dtype=np.int32), np.arange(layers, dtype=np.int32), indexing="ij")
    metric_names = [f"metric_{m}" for m in range(metrics)]
    score = rng.random(rows)
    scores = pa.table({
        "alignment_version": [version] * rows, "dataset_version": [DATASET] * rows, "model_a": [a] * rows,
        "model_b": [b] * rows, "metric": np.repeat(metric_names, pairs).tolist(), "params": ['{"topk": 10}'] * rows,
        "layer_a": pa.array(np.tile(la.ravel(), metrics), pa.int32()),
        "layer_b": pa.array(np.tile(lb.ravel(), metrics), pa.int32()),
        "layer_name_a": [f"layer.{i:02d}" for i in np.tile(la.ravel(), metrics)],
        "layer_name_b": [f"layer.{i:02d}" for i in np.tile(lb.ravel(), metrics)],
        "score": score, "n_samples": pa.array(np.full(rows, 64), pa.int32()), "unit": ["sample"] * rows})
    best_at = [m * pairs + int(np.argmax(score[m * pairs:(m + 1) * pairs])) for m in range(metrics)]
    p = rng.random(metrics) * 0.2
    best = pa.table({
        "alignment_version": [version] * metrics, "dataset_version": [DATASET] * metrics, "model_a": [a] * metrics,
        "model_b": [b] * metrics, "metric": metric_names, "params": ['{"topk": 10}'] * metrics,
        "modality_a": ["vision"] * metrics, "modality_b": ["language"] * metrics,
        "layer_a": pa.array([int(la.ravel()[i % pairs]) for i in best_at], pa.int32()),
        "layer_b": pa.array([int(lb.ravel()[i % pairs]) for i in best_at], pa.int32()),
        "layer_name_a": [f"layer.{int(la.ravel()[i % pairs]):02d}" for i in best_at],
        "layer_name_b": [f"layer.{int(lb.ravel()[i % pairs]):02d}" for i in best_at],
        "score": [float(score[i]) for i in best_at], "chance_level": [0.15] * metrics, "null_mean": [0.16] * metrics,
        "null_std": [0.01] * metrics, "tau": [0.18] * metrics, "p_value": p.tolist(),
        "calibrated_score": [0.5] * metrics, "permutations": pa.array([20] * metrics, pa.int32()),
        "ci_low": [0.1] * metrics, "ci_high": [0.9] * metrics, "ci_degenerate": [False] * metrics,
        "bootstrap": pa.array([50] * metrics, pa.int32()), "n_samples": pa.array([64] * metrics, pa.int32()),
        "unit": ["sample"] * metrics})
    return table_to_parquet_bytes(scores), table_to_parquet_bytes(best)


def build(root: str | os.PathLike, vision: int, language: int, runs: int, epochs: int = 2, metrics: int = 3,
          layers: int = 13, n: int = 16, seed: int = 0) -> dict[str, int]:
    """Write the store under ``root`` (a local folder); returns counts of what it holds."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = [f"s{i:04d}" for i in range(n)]
    samples = pa.table({"dataset_version": [DATASET] * n, "sample_id": ids, "image_id": ids,
                        "text": [f"caption {i}" for i in range(n)], "image": [bytes([i % 256]) * 32 for i in range(n)]})
    _publish(root, layout.dataset_key(DATASET), {layout.SAMPLES_FILE: table_to_parquet_bytes(samples)},
             {"kind": "dataset", "catalog": {"dataset_version": DATASET, "name": "synthetic", "n_samples": n, "n_images": n,
                                             "n_rejected": 0, "source": {"kind": "table"}, "code_version": "c0"}}, START)
    models = {**{f"vis-{i:02d}": "vision" for i in range(vision)}, **{f"lang-{i:02d}": "language" for i in range(language)}}
    features = {}
    for model, modality in models.items():
        version = hashlib.sha256(model.encode()).hexdigest()[:16]
        features[model] = version
        vectors = [rng.normal(size=(n, 8)).astype(np.float32) for _ in range(layers)]
        files = {name: table_to_parquet_bytes(t) for name, t in layer_tables(model, version, ids, vectors).items()}
        catalog = {"model": model, "feature_version": version, "dataset_version": DATASET, "modality": modality,
                   "loader": "toy", "model_id": f"toy/{model}", "pooling": "avg", "dtype": "float32", "param_count": 1000,
                   "n_layers": layers, "layer_names": [f"layer.{i:02d}" for i in range(layers)],
                   "layer_widths": [8] * layers, "n_samples": n, "code_version": "c1", "device": "cpu"}
        _publish(root, layout.features_key(DATASET, model, version), files, {"kind": "features", "catalog": catalog}, START)
    pairs = [(a, b) for a in models if models[a] == "vision" for b in models if models[b] == "language"]
    keys: list[list[str]] = []
    for epoch in range(epochs):
        published = START + timedelta(days=epoch * runs / epochs)
        keys.append([])
        for a, b in pairs:
            version = hashlib.sha256(f"{a}|{b}|{epoch}".encode()).hexdigest()[:16]
            key = layout.alignment_key(DATASET, a, b, version)
            scores, best = _alignment_files(version, a, b, metrics, layers, rng)
            lineage = {"dataset_version": DATASET, "features": {a: features[a], b: features[b]}, "code_version": "c3"}
            _publish(root, key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best},
                     {"kind": "alignment", "lineage": lineage, "params": {"topk": 10, "epoch": epoch}}, published)
            keys[-1].append(key)
    (root / layout.RUNS).mkdir(parents=True, exist_ok=True)
    config = {"dataset": {"kind": "table", "path": "/data/pairs.parquet", "n": n},
              "models": [{"name": m, "loader": "hf", "id": f"toy/{m}", "modality": t} for m, t in models.items()],
              "alignment": {"metrics": [f"metric_{m}" for m in range(metrics)], "topk": 10, "permutations": 20}}
    for day in range(runs):
        epoch = min(epochs - 1, day * epochs // runs)
        started = START + timedelta(days=day, hours=1)
        finished = started + timedelta(minutes=7)
        run_id = f"{hashlib.sha256(str(day).encode()).hexdigest()[:8]}-{day:04d}-local"
        record = {"run_id": run_id, "flow_run_id": run_id, "flow": "prh-pipeline", "status": "COMPLETED",
                  "process": {"host": "box", "pid": 1000 + day}, "started_at": started.isoformat(),
                  "finished_at": finished.isoformat(), "ordered_at": finished.isoformat(), "store": str(root),
                  "config": config, "code_version": "c2", "heartbeat_s": 60.0, "dataset_version": DATASET,
                  "feature_versions": features, "alignment_versions": keys[epoch], "extracted": [],
                  "reused": sorted(models), "aligned": 0, "metrics_computed": 0, "metrics_copied": 0,
                  "failures": [], "error": None}
        (root / layout.run_key(run_id)).write_text(json.dumps(record, indent=2, sort_keys=True))
    return {"models": len(models), "pairs": len(pairs), "alignment_versions": len(pairs) * epochs, "runs": runs}


class RecordReads:
    """Counts the run records read while installed (``Store.read_many`` / ``read_bytes`` of ``runs/*.json``)."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> "RecordReads":
        from storage.store import Store

        self._many, self._bytes = Store.read_many, Store.read_bytes
        counter, many, one = self, Store.read_many, Store.read_bytes

        def read_many(store: Any, paths: list[str], what: str = "") -> Any:
            counter.count += sum(1 for p in paths if "/runs/" in p and p.endswith(".json") and "/alive/" not in p)
            return many(store, paths, what)

        def read_bytes(store: Any, key: str, large: bool = False) -> Any:
            counter.count += key.startswith("runs/") and key.endswith(".json") and not key.startswith("runs/alive/")
            return one(store, key, large)

        Store.read_many, Store.read_bytes = read_many, read_bytes
        return self

    def __exit__(self, *exc: object) -> None:
        from storage.store import Store

        Store.read_many, Store.read_bytes = self._many, self._bytes


def operations(root: str) -> dict[str, Callable[[], Any]]:
    from flows.cli import main, print_summary
    from flows.pipeline import best_rows
    from storage import layout
    from storage.catalog import connect
    from storage.runs import open_for_run, sweep_ended_signs, latest_placed
    from storage.store import Store
    from storage.verify import checked_for_reuse
    from tasks.grid_fdr import add_q_values
    from tasks.report_source import load_report_input

    store = Store(root)

    def catalog(sql: str) -> Callable[[], Any]:
        def run() -> Any:
            con = connect(store)
            try:
                return con.execute(sql).fetchall()
            finally:
                con.close()
        return run

    def run_start() -> None:
        read: dict[str, Any] = {}
        open_for_run(Store(root), min_free_mb=0, run_id="new-run", read=read)
        sweep_ended_signs(store)
        latest_placed(store, layout.RUNS, "new-run", read.get(layout.RUNS))

    def closing_table() -> None:
        record = store.read_json(store.key_of(sorted(store.glob(layout.RUNS, "*.json"))[-1]))
        best = add_q_values(best_rows(store, [{"key": key} for key in record["alignment_versions"]]))
        with contextlib.redirect_stdout(io.StringIO()):
            print_summary({**record, "best": best, "store": root})

    def reuse_checks() -> None:
        record = store.read_json(store.key_of(sorted(store.glob(layout.RUNS, "*.json"))[-1]))
        for key in record["alignment_versions"]:
            checked_for_reuse(store, key, store.manifest(key), key)

    def cli(*argv: str) -> Callable[[], Any]:
        def run() -> None:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = main([*argv, "--store", root])
            assert code == 0, (argv, code)
        return run

    return {
        "connect + count(runs)": catalog("select count(*) from runs"),
        "alignment_best": catalog("select count(*), avg(score) from alignment_best"),
        "alignment (current layer rows)": catalog("select count(*), avg(score) from alignment"),
        "alignment_best_latest": catalog("select count(*) from alignment_best_latest"),
        "alignment_fdr": catalog("select count(*), avg(q_value) from alignment_fdr"),
        "models_current": catalog("select count(*) from models_current"),
        "run start": run_start,
        "report input (latest run)": lambda: load_report_input(store),
        "closing table": closing_table,
        "reuse checks (every pair)": reuse_checks,
        "gc --keep-runs 30 --dry-run": cli("gc", "--keep-runs", "30", "--dry-run"),
        "verify --quick": cli("verify", "--quick"),
    }


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, int]:
    best, reads = float("inf"), 0
    for _ in range(repeats):
        with RecordReads() as counter:
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        reads = counter.count
    return best, reads


def series(label: str, sizes: list[tuple[int, int, int]], args: argparse.Namespace, tmp: Path) -> None:
    results: list[dict[str, tuple[float, int]]] = []
    shapes = []
    for vision, language, runs in sizes:
        root = tmp / f"store-{vision}x{language}-{runs}"
        started = time.perf_counter()
        counts = build(root, vision, language, runs, epochs=args.epochs, metrics=args.metrics, layers=args.layers)
        shapes.append(f"{counts['pairs']} pairs, {counts['alignment_versions']} versions, {runs} runs")
        print(f"built {shapes[-1]} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        results.append({name: timed(fn, args.repeats) for name, fn in operations(str(root)).items()})
    print(f"\n{label}: best of {args.repeats} (s), run records read; ratio = time / previous size's")
    print("| operation | " + " | ".join(shapes) + " | ratios |\n|---|" + "---|" * (len(shapes) + 1))
    for name in results[0]:
        cells = [f"{r[name][0]:.3f} ({r[name][1]})" for r in results]
        ratios = [f"{b[name][0] / a[name][0]:.2f}" for a, b in zip(results, results[1:])]
        print(f"| {name} | " + " | ".join(cells) + f" | {' / '.join(ratios)} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--vision", type=int, default=12)
    parser.add_argument("--language", type=int, nargs="+", default=[3, 6, 12])
    parser.add_argument("--fixed-runs", type=int, default=100, help="runs of the stores of the pairs series")
    parser.add_argument("--epochs", type=int, default=2, help="alignment versions per pair (parameter changes)")
    parser.add_argument("--metrics", type=int, default=3)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["runs", "pairs"], default=None)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="prh-bench-long-") as tmp:
        if args.only != "pairs":
            series(f"runs doubling ({args.vision}x{args.language[-1]} models)",
                   [(args.vision, args.language[-1], r) for r in args.runs], args, Path(tmp))
        if args.only != "runs":
            series(f"pairs doubling ({args.fixed_runs} runs)",
                   [(args.vision, language, args.fixed_runs) for language in args.language], args, Path(tmp))


if __name__ == "__main__":
    main()
