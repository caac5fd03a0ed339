"""Benchmark of the alignment stage's feature reads over a model zoo: every pair read on its own
against each model read once and shared by its pairs (``storage.pairing.shared_features``).

A zoo of ``--vision`` × ``--language`` models (``--layers`` layers of ``(n, dim)`` float32 each,
random, as the pipeline stores them) is published to a local store; then, in one run and in the
same order as the pipeline's pairs (vision-major), ``paired_features`` is called for every pair
plainly ("per pair": what the stage did before) and inside ``shared_features`` with every model's
pair count ("shared"). Both must hand over the same arrays (checked on every pair); reported:
seconds (best of ``--repeats``, page cache warm), the ratio, and how many models were read whole
(into the cache) and how many read for one pair's common rows (measured).

Usage::

    python bench/bench_zoo_pairing.py --vision 4 --language 4 --n 1024 --layers 13 --dim 768
    python bench/bench_zoo_pairing.py --vision 2 --language 2 --n 64 --layers 2 --dim 8 --repeats 1   # seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage import layout  # noqa: E402
from storage.features import layer_tables  # noqa: E402
from storage import pairing  # noqa: E402
from storage.pairing import clear_feature_cache, paired_features, shared_features  # noqa: E402
from storage.store import Store  # noqa: E402


def make_zoo(url: str, vision: int, language: int, n: int, layers: int, dim: int, seed: int = 0) -> dict[str, dict]:
    """Publish the zoo's features; returns model name -> features manifest."""
    store = Store(url)
    rng = np.random.default_rng(seed)
    ids = [f"s{i:07d}" for i in range(n)]
    manifests = {}
    for model in [f"vision-{i}" for i in range(vision)] + [f"language-{i}" for i in range(language)]:
        version = f"bench-{model}"
        xs = [rng.standard_normal((n, dim), dtype=np.float32) for _ in range(layers)]
        catalog = {"model": model, "feature_version": version, "dataset_version": "bench", "n_layers": layers,
                   "layer_widths": [dim] * layers, "n_samples": n}  # as the pipeline writes: the cache's size check
        key = layout.features_key("bench", model, version)
        manifests[model] = store.publish(key, layer_tables(model, version, ids, xs), {"kind": "features", "catalog": catalog}).manifest
    return manifests


def pairs_of(manifests: dict[str, dict]) -> list[tuple[str, str]]:
    return [(a, b) for a in manifests if a.startswith("vision") for b in manifests if b.startswith("language")]


def read_all(store: Store, manifests: dict[str, dict], shared: bool) -> tuple[float, list, tuple[int, int]]:
    """(seconds to pair every pair, each pair's arrays for the comparison, (models read whole,
    models read for one pair's common rows))."""
    pairs = pairs_of(manifests)
    clear_feature_cache()
    with counted_reads() as reads:
        started = time.perf_counter()
        with shared_features(store.url, Counter(name for pair in pairs for name in pair)) if shared else nullcontext():
            out = [paired_features(store, manifests[a], manifests[b]) for a, b in pairs]
        seconds = time.perf_counter() - started
    return seconds, out, (len(reads["whole"]), len(reads["files"]) - len(reads["whole"]))


@contextmanager
def counted_reads() -> Iterator[dict[str, list[str]]]:
    """Within the block, the models ``storage.pairing`` reads whole (``"whole"``) and every read
    of a model's layer files, whole or for a pair's common rows (``"files"``); restored after."""
    reads: dict[str, list[str]] = {"whole": [], "files": []}
    read_model, layer_files = pairing._read_model, pairing._local_layer_files

    def counted_model(store: Store, manifest: dict):
        reads["whole"].append(manifest["catalog"]["model"])
        return read_model(store, manifest)

    def counted_files(store: Store, manifest: dict, stack):
        reads["files"].append(manifest["catalog"]["model"])
        return layer_files(store, manifest, stack)

    pairing._read_model, pairing._local_layer_files = counted_model, counted_files
    try:
        yield reads
    finally:
        pairing._read_model, pairing._local_layer_files = read_model, layer_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", type=int, default=4)
    parser.add_argument("--language", type=int, default=4)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prh-bench-zoo-") as tmp:
        store = Store(str(Path(tmp) / "store"))
        manifests = make_zoo(store.url, args.vision, args.language, args.n, args.layers, args.dim)
        best = {"per pair": float("inf"), "shared": float("inf")}
        whole = {}
        for _ in range(args.repeats):
            for name in best:  # alternating, so that load changes hit both
                seconds, pairs, whole[name] = read_all(store, manifests, name == "shared")
                best[name] = min(best[name], seconds)
                if name == "per pair":
                    reference = pairs
                else:
                    for got, want in zip(pairs, reference):
                        assert got.sample_ids == want.sample_ids
                        for x, y in zip(got.xs + got.ys, want.xs + want.ys):
                            np.testing.assert_array_equal(x, y)
        n_pairs = len(pairs_of(manifests))
        model_bytes = args.layers * args.n * args.dim * 4
        print(f"zoo {args.vision} vision x {args.language} language ({n_pairs} pairs), each model {args.layers} x "
              f"({args.n}, {args.dim}) float32 = {model_bytes / 1e6:.1f} MB; best of {args.repeats}")
        print("| path | seconds | models read whole | models read for their common rows | x shared |")
        print("|---|---|---|---|---|")
        for name in best:
            print(f"| {name} | {best[name]:.3f} | {whole[name][0]} | {whole[name][1]} | {best[name] / best['shared']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
