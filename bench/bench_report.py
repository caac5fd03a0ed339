"""Benchmark of the run report at a zoo's scale: every figure drawn, then drawn from the figure cache.

Synthetic catalog tables with the catalog's columns: ``--vision`` × ``--language`` model pairs,
``--layers-a`` × ``--layers-b`` layer pairs each, ``--metrics`` metrics (the paper's validation zoo
is 17 vision × 12 language models; DINOv2-giant has 40 blocks, LLaMA-65B 80 layers). Reported in
one run: building the report with no cache (every figure drawn), with a warm cache (the same rows:
a nightly rerun), and after one new language model (its pairs drawn, the rest reused), with the
figure counts; the warm/cold ratio is the figure cache's gain. Only ``tasks.report`` runs: no store.

Usage::

    python bench/bench_report.py                          # 17 x 12 models, 25 x 33 layers, 3 metrics
    python bench/bench_report.py --vision 3 --language 2  # seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.report import ReportInput, build_report  # noqa: E402

TOPK, N = 10, 1024


class CountingCache:
    """An in-memory figure cache that counts what it served and what it was given."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, bytes]] = {}
        self.hits = self.misses = 0

    def get(self, digest: str, formats: tuple[str, ...]) -> dict[str, bytes] | None:
        found = self.files.get(digest)
        if found is None or any(f not in found for f in formats):
            self.misses += 1
            return None
        self.hits += 1
        return found

    def put(self, digest: str, files: dict[str, bytes]) -> None:
        self.files[digest] = dict(files)


def tables(vision: list[str], language: list[str], metrics: list[str], la: int, lb: int, seed: int = 0) -> ReportInput:
    """Catalog-shaped rows: a smooth layer × layer surface per pair, its maximum as the best row."""
    best, scores, models = [], [], []
    grid_a, grid_b = np.meshgrid(np.linspace(0, 1, la), np.linspace(0, 1, lb), indexing="ij")
    for m, metric in enumerate(metrics):
        for i_a, a in enumerate(vision):
            for i_b, b in enumerate(language):
                rng = np.random.default_rng([seed, m, i_a, i_b])  # a pair's rows do not depend on the other pairs
                level = rng.uniform(0.05, 0.4)
                surface = level * (0.5 + 0.5 * grid_a * grid_b) + rng.normal(0, 0.005, (la, lb))
                i, j = np.unravel_index(np.argmax(surface), surface.shape)
                for x in range(la):
                    for y in range(lb):
                        scores.append({"metric": metric, "model_a": a, "model_b": b, "layer_a": x, "layer_b": y,
                                       "layer_name_a": f"block.{x}", "layer_name_b": f"layer.{y:02d}", "score": float(surface[x, y])})
                best.append({"alignment_version": f"{a}-{b}", "dataset_version": "d", "metric": metric, "params": "{}",
                             "model_a": a, "model_b": b, "modality_a": "vision", "modality_b": "language",
                             "layer_a": int(i), "layer_b": int(j), "layer_name_a": f"block.{i}", "layer_name_b": f"layer.{j:02d}",
                             "score": float(surface[i, j]), "chance_level": TOPK / (N - 1) if metric == "mutual_knn" else None,
                             "null_mean": 0.01, "null_std": 0.002, "tau": 0.015, "p_value": 0.001,
                             "calibrated_score": float((surface[i, j] - 0.015) / 0.985), "permutations": 1000,
                             "ci_low": float(surface[i, j]) - 0.01, "ci_high": float(surface[i, j]) + 0.01, "bootstrap": 200,
                             "n_samples": N})
    for k, m in enumerate(vision + language):
        models.append({"model": m, "feature_version": f"f-{m}", "modality": "vision" if m in vision else "language",
                       "model_id": f"org/{m}", "param_count": int(10 ** (7 + k % 4) * (1 + k)), "n_layers": la if m in vision else lb,
                       "bits_per_byte": None if m in vision else 0.9 - 0.02 * k})
    run = {"run_id": "bench", "status": "COMPLETED", "started_at": "2026-12-02T00:00:00+00:00", "store": "memory", "dataset_version": "d"}
    return ReportInput(run, pa.Table.from_pylist(best), pa.Table.from_pylist(scores), pa.Table.from_pylist(models))


def timed(data: ReportInput, cache: CountingCache) -> tuple[float, int, int]:
    """(seconds, figures drawn, figures reused) of one report build through ``cache``."""
    hits, misses = cache.hits, cache.misses
    started = time.perf_counter()
    build_report(data, formats=("png",), cache=cache)
    return time.perf_counter() - started, cache.misses - misses, cache.hits - hits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision", type=int, default=17)
    parser.add_argument("--language", type=int, default=12)
    parser.add_argument("--layers-a", type=int, default=25)
    parser.add_argument("--layers-b", type=int, default=33)
    parser.add_argument("--metrics", default="mutual_knn,cka,cknna")
    args = parser.parse_args(argv)
    vision = [f"vit-{i:02d}" for i in range(args.vision)]
    language = [f"lm-{i:02d}" for i in range(args.language)]
    metrics = args.metrics.split(",")
    started = time.perf_counter()
    data = tables(vision, language, metrics, args.layers_a, args.layers_b)
    grown = tables(vision, language + ["lm-new"], metrics, args.layers_a, args.layers_b)  # same rows + one model's pairs
    print(f"{args.vision} x {args.language} models, {args.layers_a} x {args.layers_b} layers, {len(metrics)} metrics: "
          f"{data.scores.num_rows:,} layer-pair rows (tables built in {time.perf_counter() - started:.1f} s)")

    cache = CountingCache()
    cold = timed(data, cache)
    warm = timed(data, cache)
    added = timed(grown, cache)
    print(f"{'report build':<38} {'seconds':>8} {'drawn':>6} {'reused':>7} {'x cold':>7}")
    for name, (seconds, drawn, reused) in (("no cache (every figure drawn)", cold), ("warm cache, same rows", warm),
                                           ("warm cache, one language model added", added)):
        print(f"{name:<38} {seconds:8.1f} {drawn:6d} {reused:7d} {seconds / cold[0]:7.2f}")


if __name__ == "__main__":
    main()
