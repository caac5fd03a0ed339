"""Benchmark of the alignment stage over a model zoo: every pair prepared and encoded on its own
against each model prepared once and shared by its pairs (``tasks.alignment.PreparedModel``, kept
by ``storage.pairing.kept_for_later_pairs`` inside ``shared_features``).

A zoo of ``--vision`` × ``--language`` models (``--layers`` random float32 layers of ``(n, dim)``
sharing a low-rank signal, so that the scores are not all chance) is published to three local
stores; then the pipeline's alignment task (``tasks.align_task.align_to_store``, no Prefect) scores
every pair, vision-major as the stage does, three ways: plainly ("per pair": each pair reads,
clamps, normalises and encodes both sides), inside ``shared_features`` with every model's pair
count but each pair preparing its sides itself ("reads shared": what the stage did before this
change, session 25's shared reads only), and inside it with preparations shared too ("shared").
Every store must hold the same scores, calibrations and intervals (checked on every pair).
Reported: seconds for the whole zoo, the ratio to "shared", and how many times a model was
prepared (measured).

Usage::

    python bench/bench_zoo_alignment.py --vision 4 --language 4 --n 1024 --layers 13 --dim 768
    python bench/bench_zoo_alignment.py --vision 2 --language 2 --n 64 --layers 2 --dim 8   # seconds
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage import layout  # noqa: E402
from storage.features import layer_tables  # noqa: E402
from storage.pairing import clear_feature_cache, shared_features  # noqa: E402
from storage.store import Store  # noqa: E402
import tasks.align_task as align_task  # noqa: E402
from tasks.params import AlignmentParams  # noqa: E402


def make_zoo(url: str, vision: int, language: int, n: int, layers: int, dim: int, seed: int = 0) -> dict[str, dict]:
    """Publish the zoo's features (a shared rank-8 signal plus noise); model name -> manifest."""
    store = Store(url)
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, 8))
    ids = [f"s{i:07d}" for i in range(n)]
    manifests = {}
    for m, model in enumerate([f"vision-{i}" for i in range(vision)] + [f"language-{i}" for i in range(language)]):
        model_rng = np.random.default_rng(seed + 1 + m)
        xs = [(signal @ model_rng.standard_normal((8, dim)) + 2 * model_rng.standard_normal((n, dim))).astype(np.float32)
              for _ in range(layers)]
        version = f"bench-{model}"
        catalog = {"model": model, "feature_version": version, "dataset_version": "bench", "n_layers": layers,
                   "layer_widths": [dim] * layers, "layer_names": [f"blocks.{l}" for l in range(layers)], "n_samples": n,
                   "modality": model.split("-")[0]}
        key = layout.features_key("bench", model, version)
        manifests[model] = store.publish(key, layer_tables(model, version, ids, xs), {"kind": "features", "catalog": catalog}).manifest
    return manifests


def pairs_of(manifests: dict[str, dict]) -> list[tuple[str, str]]:
    return [(a, b) for a in manifests if a.startswith("vision") for b in manifests if b.startswith("language")]


#: the paths measured: (label, inside ``shared_features``, preparations shared)
PATHS = (("per pair", False, False), ("reads shared (session 25)", True, False), ("shared", True, True))


def align_all(url: str, manifests: dict[str, dict], params: AlignmentParams, block: bool, share_preparation: bool
              ) -> tuple[float, list, int]:
    """(seconds to align every pair, each pair's stored best rows, models prepared). ``block``:
    inside ``shared_features`` (each model read once); ``share_preparation`` False: every pair
    prepares its sides itself (``kept_for_later_pairs`` builds for the pair alone), as the stage did
    before this session."""
    pairs = pairs_of(manifests)
    clear_feature_cache()
    prepared, prepare, keep = [], align_task.prepare_layers, align_task.kept_for_later_pairs
    align_task.prepare_layers = lambda layers, **kw: (prepared.append(1), prepare(layers, **kw))[1]
    if not share_preparation:
        align_task.kept_for_later_pairs = lambda store, manifest, name, build: build()
    quiet = logging.getLogger("bench_zoo_alignment")
    quiet.disabled = True
    try:
        started = time.perf_counter()
        with shared_features(url, Counter(name for pair in pairs for name in pair)) if block else nullcontext():
            done = [align_task.align_to_store(url, manifests[a], manifests[b], params, quiet) for a, b in pairs]
        seconds = time.perf_counter() - started
    finally:
        align_task.prepare_layers, align_task.kept_for_later_pairs = prepare, keep
    store = Store(url)
    best = [store.read_table(f"{m['key']}/{layout.BEST_FILE}").to_pylist() for m in done]
    return seconds, best, len(prepared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", type=int, default=4)
    parser.add_argument("--language", type=int, default=4)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--metrics", default="mutual_knn,cka,cknna")
    parser.add_argument("--permutations", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=0)
    args = parser.parse_args(argv)
    params = AlignmentParams(metrics=args.metrics.split(","), permutations=args.permutations, bootstrap=args.bootstrap,
                             topk=min(10, args.n - 1))
    results = {}
    with tempfile.TemporaryDirectory(prefix="prh-bench-zoo-align-") as tmp:
        for number, (name, block, share) in enumerate(PATHS):
            url = str(Path(tmp) / f"store-{number}")
            manifests = make_zoo(url, args.vision, args.language, args.n, args.layers, args.dim)
            results[name] = align_all(url, manifests, params, block, share)
    for name in results:
        for got, want in zip(results[name][1], results["per pair"][1]):
            strip = [{k: v for k, v in row.items() if k != "alignment_version"} for row in got]
            assert strip == [{k: v for k, v in row.items() if k != "alignment_version"} for row in want], (name, got, want)
    n_pairs = len(results["shared"][1])
    print(f"zoo {args.vision} vision x {args.language} language ({n_pairs} pairs), each model {args.layers} x "
          f"({args.n}, {args.dim}) float32; metrics {args.metrics}, permutations {args.permutations}, "
          f"bootstrap {args.bootstrap}; same stored scores on every pair")
    print("| path | seconds | models prepared | x shared |")
    print("|---|---|---|---|")
    for name, (seconds, _, prepared) in results.items():
        print(f"| {name} | {seconds:.2f} | {prepared} | {seconds / results['shared'][0]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
