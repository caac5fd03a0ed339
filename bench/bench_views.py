"""Benchmark of the catalog's alignment views: the lineage join against a plain Parquet view.

The ``alignment`` and ``alignment_best`` views add ``feature_version_a`` / ``feature_version_b``
by joining a small VALUES table (one row per alignment version and model) to the files' rows
(``storage.catalog._create_file_view``). This measures what that join costs analysts, in one run on
the same files: each query against the view as the catalog builds it and against a plain
``read_parquet`` view of the same files (no lineage columns), best of ``--repeats``; ratio = with
lineage / plain.

Synthetic files with the catalog's columns: ``--vision`` x ``--language`` model pairs (one
alignment version each), ``--layers-a`` x ``--layers-b`` layer pairs, ``--metrics`` metrics; the
default is the paper's validation zoo (17 x 12 models, 25 x 33 layers, 3 metrics: 504,900 rows in
204 files).

Usage::

    python bench/bench_views.py
    python bench/bench_views.py --vision 3 --language 2 --repeats 1   # seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.catalog import _create_file_view  # noqa: E402
from storage.store import Store  # noqa: E402

QUERIES = {
    "mean score per metric": "SELECT metric, round(avg(score), 9) s, count(*) n FROM {view} GROUP BY metric ORDER BY metric",
    "best layer pair per model pair": (
        "SELECT model_a, model_b, metric, max(score) best FROM {view} GROUP BY ALL ORDER BY ALL"),
    "one model's rows": "SELECT count(*) n, round(avg(score), 9) s FROM {view} WHERE model_a = 'vision-03'",
    "group by feature version": (
        "SELECT {fv} fv, count(*) n FROM {view} GROUP BY fv ORDER BY fv"),
}


def write_files(root: Path, vision: int, language: int, layers_a: int, layers_b: int, metrics: int,
                seed: int = 0) -> tuple[list[str], list[tuple[str, str, str, str, str]]]:
    """One alignment-scores file per model pair; returns the file paths and the lineage rows
    (``storage.catalog.Lineage``: version, model_a, feature_version_a, model_b, feature_version_b)."""
    rng = np.random.default_rng(seed)
    files, lineage = [], []
    la, lb = np.meshgrid(np.arange(layers_a, dtype=np.int32), np.arange(layers_b, dtype=np.int32), indexing="ij")
    pairs = layers_a * layers_b
    for v in range(vision):
        for w in range(language):
            version = f"{v:04d}{w:04d}deadbeef"
            model_a, model_b = f"vision-{v:02d}", f"language-{w:02d}"
            rows = pairs * metrics
            table = pa.table({
                "alignment_version": [version] * rows, "dataset_version": ["0123456789abcdef"] * rows,
                "metric": np.repeat([f"metric_{m}" for m in range(metrics)], pairs), "params": ['{"topk": 10}'] * rows,
                "model_a": [model_a] * rows, "model_b": [model_b] * rows,
                "layer_a": np.tile(la.ravel(), metrics), "layer_b": np.tile(lb.ravel(), metrics),
                "layer_name_a": [f"layer.{i:02d}" for i in np.tile(la.ravel(), metrics)],
                "layer_name_b": [f"layer.{i:02d}" for i in np.tile(lb.ravel(), metrics)],
                "score": rng.random(rows), "n_samples": np.full(rows, 1024, dtype=np.int32), "unit": ["sample"] * rows,
            })
            path = root / f"{version}.parquet"
            pq.write_table(table, path)
            files.append(str(path))
            fa, fb = f"fa{v:014d}", f"fb{w:014d}"
            lineage += [(version, model_a, fa, model_b, fb), (version, model_b, fb, model_a, fa)]
    return files, lineage


def best_of(con: duckdb.DuckDBPyConnection, sql: str, repeats: int) -> tuple[float, list]:
    best, result = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        result = con.execute(sql).fetchall()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", type=int, default=17)
    parser.add_argument("--language", type=int, default=12)
    parser.add_argument("--layers-a", type=int, default=25)
    parser.add_argument("--layers-b", type=int, default=33)
    parser.add_argument("--metrics", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prh-bench-views-") as tmp:
        files, lineage = write_files(Path(tmp), args.vision, args.language, args.layers_a, args.layers_b, args.metrics)
        con = duckdb.connect()
        _create_file_view(con, "alignment", files, lineage, Store(tmp))
        listing = ", ".join(f"'{f}'" for f in files)
        con.execute(f"CREATE VIEW plain AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
        rows = con.execute("SELECT count(*) FROM plain").fetchone()[0]
        print(f"{rows:,} rows in {len(files)} files ({args.vision} x {args.language} pairs, "
              f"{args.layers_a} x {args.layers_b} layers, {args.metrics} metrics); best of {args.repeats}")
        print(f"| query | plain view (s) | with lineage (s) | ratio |\n|---|---|---|---|")
        for name, sql in QUERIES.items():
            plain_s, plain_rows = best_of(con, sql.format(view="plain", fv="alignment_version"), args.repeats)
            view_s, view_rows = best_of(con, sql.format(view="alignment", fv="feature_version_a"), args.repeats)
            if name != "group by feature version":
                assert plain_rows == view_rows, name  # same answers: the join neither drops nor repeats rows
            else:
                assert len(view_rows) == args.vision and sum(r[1] for r in view_rows) == rows
            print(f"| {name} | {plain_s:.3f} | {view_s:.3f} | {view_s / plain_s:.2f} |")


if __name__ == "__main__":
    main()
