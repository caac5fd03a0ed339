"""Benchmark of the catalog's alignment views: the lineage join against a plain Parquet view.

The ``alignment`` and ``alignment_best`` views add ``feature_version_a`` / ``feature_version_b``
by joining a small VALUES table (one row per alignment version and model) to the files' rows
(``storage.catalog._create_file_view``). This measures what that join costs analysts, in one run on
the same files: each query against the view as the catalog builds it and against a plain
``read_parquet`` view of the same files (no lineage columns), best of ``--repeats``; ratio = with
lineage / plain.

Then the current views (``alignment``, ``alignment_best``: of each pair and metric, the rows of
the latest run that scored it, ``storage.catalog.CURRENT_BEST_SQL``) on a store where every pair
was aligned twice (two runs, the second with other parameters): each query against the current
view and against the history view (``alignment_all`` / ``alignment_best_all``, every version)
over the same files; ratio = current / history (the current views read half the rows).

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

from storage.catalog import _create_file_view, _meta_table, create_derived_views  # noqa: E402
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
                seed: int = 0, label: str = "", best: list[str] | None = None) -> tuple[list[str], list[tuple]]:
    """One alignment-scores file per model pair (versions ``<label>VVVVWWWWdeadbeef``); returns
    the file paths and the lineage rows (``storage.catalog.Lineage``: version, model_a,
    feature_version_a, model_b, feature_version_b, published_at, dataset_version). With ``best``, each pair's
    best-row file (one row per metric, its maximum) is written too and its path appended to it."""
    rng = np.random.default_rng(seed)
    files, lineage = [], []
    la, lb = np.meshgrid(np.arange(layers_a, dtype=np.int32), np.arange(layers_b, dtype=np.int32), indexing="ij")
    pairs = layers_a * layers_b
    for v in range(vision):
        for w in range(language):
            version = f"{label}{v:04d}{w:04d}deadbeef"
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
            if best is not None:
                layer_rows = table  # noqa: F841 (read by name by the query below)
                top = duckdb.sql("SELECT * EXCLUDE (rank) FROM (SELECT *, row_number() OVER (PARTITION BY metric "
                                 "ORDER BY score DESC) rank FROM layer_rows) WHERE rank = 1").to_arrow_table()
                pq.write_table(top, root / f"{version}.best.parquet")
                best.append(str(root / f"{version}.best.parquet"))
            fa, fb = f"fa{v:014d}", f"fb{w:014d}"
            published = "2026-01-01T00:00:00+00:00"
            lineage += [(version, model_a, fa, model_b, fb, published, "0123456789abcdef"),
                        (version, model_b, fb, model_a, fa, published, "0123456789abcdef")]
    return files, lineage


def best_of(con: duckdb.DuckDBPyConnection, sql: str, repeats: int) -> tuple[float, list]:
    best, result = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        result = con.execute(sql).fetchall()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", type=int, default=17)
    parser.add_argument("--language", type=int, default=12)
    parser.add_argument("--layers-a", type=int, default=25)
    parser.add_argument("--layers-b", type=int, default=33)
    parser.add_argument("--metrics", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prh-bench-views-") as tmp:
        files, lineage = write_files(Path(tmp), args.vision, args.language, args.layers_a, args.layers_b, args.metrics)
        con = duckdb.connect()
        _create_file_view(con, "alignment_all", files, lineage, Store(tmp))
        listing = ", ".join(f"'{f}'" for f in files)
        con.execute(f"CREATE VIEW plain AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
        rows = con.execute("SELECT count(*) FROM plain").fetchone()[0]
        print(f"{rows:,} rows in {len(files)} files ({args.vision} x {args.language} pairs, "
              f"{args.layers_a} x {args.layers_b} layers, {args.metrics} metrics); best of {args.repeats}")
        print("| query | plain view (s) | with lineage (s) | ratio |\n|---|---|---|---|")
        for name, sql in QUERIES.items():
            plain_s, plain_rows = best_of(con, sql.format(view="plain", fv="alignment_version"), args.repeats)
            view_s, view_rows = best_of(con, sql.format(view="alignment_all", fv="feature_version_a"), args.repeats)
            if name != "group by feature version":
                assert plain_rows == view_rows, name  # same answers: the join neither drops nor repeats rows
            else:
                assert len(view_rows) == args.vision and sum(r[1] for r in view_rows) == rows
            print(f"| {name} | {plain_s:.3f} | {view_s:.3f} | {view_s / plain_s:.2f} |")
        current_views(Path(tmp) / "history", args, rows)


#: Queries of the current views, against the history views of the same files.
CURRENT_QUERIES = {
    **{name: sql for name, sql in QUERIES.items() if name != "group by feature version"},
    "best rows of one metric": "SELECT model_a, model_b, score FROM {best} WHERE metric = 'metric_0' ORDER BY ALL",
    "best rows, all metrics": "SELECT count(*) n, round(avg(score), 9) s FROM {best}",
}


def current_views(root: Path, args: argparse.Namespace, rows_per_version_set: int) -> None:
    """The second table (see the module's docstring): every pair aligned by run-old, then again
    by run-new; the current views hold run-new's rows."""
    root.mkdir()
    scores, best, lineage, keys = [], [], [], {}
    for seed, label in ((1, "old"), (2, "new")):
        files, rows = write_files(root, args.vision, args.language, args.layers_a, args.layers_b, args.metrics,
                                  seed=seed, label=label, best=best)
        scores += files
        lineage += [(*row[:5], f"2026-01-0{seed}T00:00:00+00:00", row[6]) for row in rows]
        keys[label] = sorted({f"alignment/0123456789abcdef/{r[1]}__{r[3]}/{r[0]}" for r in rows if r[1].startswith("vision")})
    con = duckdb.connect()
    _create_file_view(con, "alignment_all", scores, lineage, Store(str(root)))
    _create_file_view(con, "alignment_best_all", best, lineage, Store(str(root)))
    runs = [{"run_id": f"run-{label}", "status": "COMPLETED", "started_at": f"2026-01-0{day}T00:00:00+00:00",
             "finished_at": f"2026-01-0{day}T00:10:00+00:00", "alignment_versions": keys[label]}
            for day, label in ((1, "old"), (2, "new"))]
    for view, table in (("datasets", _meta_table("datasets", [])), ("models", _meta_table("models", [])),
                        ("runs", _meta_table("runs", runs))):
        con.register(f"_{view}_table", table)
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM _{view}_table")
    create_derived_views(con)
    assert con.execute("SELECT count(*) FROM alignment_all").fetchone()[0] == 2 * rows_per_version_set
    current, history = {"view": "alignment", "best": "alignment_best"}, {"view": "alignment_all", "best": "alignment_best_all"}
    print(f"\ncurrent views: every pair aligned twice ({2 * rows_per_version_set:,} layer-pair rows in {len(scores)} files, "
          f"{len(best)} best files); best of {args.repeats}")
    print("| query | history view (s) | current view (s) | ratio |\n|---|---|---|---|")
    for name, sql in CURRENT_QUERIES.items():
        history_s, _ = best_of(con, sql.format(**history, fv=""), args.repeats)
        current_s, current_rows = best_of(con, sql.format(**current, fv=""), args.repeats)
        newest = {"view": "(SELECT * FROM alignment_all WHERE alignment_version LIKE 'new%')",
                  "best": "(SELECT * FROM alignment_best_all WHERE alignment_version LIKE 'new%')"}
        assert current_rows == con.execute(sql.format(**newest, fv="")).fetchall(), name  # run-new's rows, no others
        print(f"| {name} | {history_s:.3f} | {current_s:.3f} | {current_s / history_s:.2f} |")


if __name__ == "__main__":
    main()
