"""The run report of a store of the paper's zoo shape: build time, page size, figures.

A real store (``--store``, default a temporary folder) holding features of 17 vision and 12 language
models named and shaped as the paper's (timm ViTs, MAE, DINOv2, CLIP of 12-40 blocks; BLOOMZ,
OpenLLaMA, LLaMA of 24-48 layers; their parameter counts; bits per byte for the LMs), N samples with
images, published through the store's API as the pipeline does, and the 204 vision–language pairs'
alignment results (``mutual_knn``, ``cka``, ``cknna`` over every layer pair: a smooth layer surface
per pair, not computed from the features, with 19 permutations and 10 bootstrap resamples recorded)
as the alignment task's manifests, then one run record. ``prh report``'s ``write_report`` then
builds the page twice: every figure drawn, then from the store's figure cache.

Usage::

    python bench/bench_report_zoo.py                              # 17 x 12 models, their own layer counts
    python bench/bench_report_zoo.py --vision 3 --language 2 --layers 3 --n 16   # seconds
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import layout  # noqa: E402
from storage.features import layer_tables  # noqa: E402
from storage.store import Store  # noqa: E402
from tasks.align_task import result_tables  # noqa: E402
from tasks.alignment import MetricRequest, PairAlignment  # noqa: E402

VISION = {  # name: (blocks, parameters)
    "vit_tiny_patch16_224.augreg_in21k": (12, 5.7e6), "vit_small_patch16_224.augreg_in21k": (12, 22e6),
    "vit_base_patch16_224.augreg_in21k": (12, 86e6), "vit_large_patch16_224.augreg_in21k": (24, 304e6),
    "vit_base_patch16_224.mae": (12, 86e6), "vit_large_patch16_224.mae": (24, 304e6), "vit_huge_patch14_224.mae": (32, 632e6),
    "vit_small_patch14_dinov2.lvd142m": (12, 22e6), "vit_base_patch14_dinov2.lvd142m": (12, 86e6),
    "vit_large_patch14_dinov2.lvd142m": (24, 304e6), "vit_giant_patch14_dinov2.lvd142m": (40, 1.1e9),
    "vit_base_patch16_clip_224.laion2b": (12, 86e6), "vit_large_patch14_clip_224.laion2b": (24, 304e6),
    "vit_huge_patch14_clip_224.laion2b": (32, 632e6), "vit_base_patch16_clip_224.laion2b_ft_in12k": (12, 86e6),
    "vit_large_patch14_clip_224.laion2b_ft_in12k": (24, 304e6), "vit_huge_patch14_clip_224.laion2b_ft_in12k": (32, 632e6),
}
LANGUAGE = {  # name: (layers, parameters, bits per byte)
    "bloomz-560m": (24, 560e6, 1.10), "bloomz-1b1": (24, 1.1e9, 1.02), "bloomz-1b7": (24, 1.7e9, 0.97), "bloomz-3b": (30, 3e9, 0.92),
    "bloomz-7b1": (30, 7.1e9, 0.86), "open_llama_3b": (26, 3e9, 0.80), "open_llama_7b": (32, 7e9, 0.74),
    "open_llama_13b": (40, 13e9, 0.70), "llama-7b": (32, 7e9, 0.72), "llama-13b": (40, 13e9, 0.68),
    "llama-33b": (48, 33e9, 0.63), "llama-65b": (48, 65e9, 0.60),
}
METRICS, TOPK, DATASET, RUN = ("mutual_knn", "cka", "cknna"), 10, "dszoo0000000000a", "run-zoo"


def _png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 24), (i * 37 % 256, i * 91 % 256, i * 53 % 256)).save(out, format="PNG")
    return out.getvalue()


def build_store(url: str, vision: dict, language: dict, n: int, layers: int | None = None) -> dict:
    """Publish the dataset, every model's features and every pair's alignment; returns the run record."""
    store = Store(url)
    ids = [f"s{i:03d}" for i in range(n)]
    samples = pa.table({"dataset_version": [DATASET] * n, "sample_id": ids, "image_id": ids,
                        "text": [f"a picture of thing number {i}" for i in range(n)], "image": [_png(i) for i in range(n)]})
    store.publish(layout.dataset_key(DATASET), {layout.SAMPLES_FILE: samples},
                  {"kind": "dataset", "catalog": {"dataset_version": DATASET, "name": "zoo-shape", "n_samples": n, "n_rejected": 0,
                                                  "source": "bench"}})
    manifests, depth = {}, {}
    for k, name in enumerate([*vision, *language]):
        modality = "vision" if name in vision else "language"
        spec = vision[name] if modality == "vision" else language[name]
        depth[name] = layers or spec[0]
        rng = np.random.default_rng(k)
        centres = rng.normal(size=(6, 16))
        features = [(centres[np.arange(n) % 6] + (0.3 + 0.02 * i) * rng.normal(size=(n, 16))).astype(np.float32) for i in range(depth[name])]
        version = f"f{k:015d}"
        layer_name = "blocks.{}" if modality == "vision" else "model.layers.{}"
        catalog = {"model": name, "feature_version": version, "dataset_version": DATASET, "modality": modality, "loader": "bench",
                   "model_id": f"{'timm' if modality == 'vision' else 'org'}/{name}", "revision": None, "pooling": "avg",
                   "dtype": "float32", "param_count": int(spec[1]), "n_layers": depth[name],
                   "layer_names": [layer_name.format(i) for i in range(depth[name])], "layer_widths": [16] * depth[name],
                   "bits_per_byte": spec[2] if modality == "language" else None, "n_samples": n}
        manifests[name] = store.publish(layout.features_key(DATASET, name, version), layer_tables(name, version, ids, features),
                                        {"kind": "features", "catalog": catalog}).manifest
    keys = []
    for i_a, a in enumerate(vision):
        for i_b, b in enumerate(language):
            grid_a, grid_b = np.meshgrid(np.linspace(0, 1, depth[a]), np.linspace(0, 1, depth[b]), indexing="ij")
            results = []
            for m, metric in enumerate(METRICS):
                rng = np.random.default_rng([m, i_a, i_b])
                matrix = rng.uniform(0.05, 0.4) * (0.5 + 0.5 * grid_a * grid_b) + rng.normal(0, 0.005, grid_a.shape)
                i, j = np.unravel_index(np.argmax(matrix), matrix.shape)
                top, tau = float(matrix[i, j]), 0.15
                results.append(PairAlignment(
                    MetricRequest(metric, {} if metric == "cka" else {"topk": TOPK}), matrix, top, (int(i), int(j)),
                    TOPK / (n - 1) if metric == "mutual_knn" else None, null_mean=tau - 0.03, null_std=0.02, tau=tau,
                    p_value=0.05 if top > tau else 0.45, calibrated=max(0.0, (top - tau) / (1 - tau)), permutations=19,
                    ci_low=top - 0.02, ci_high=top + 0.015, ci_degenerate=False, bootstrap=10))
            version = f"a{i_a:03d}{i_b:03d}{0:09d}"
            scores, best = result_tables(results, manifests[a], manifests[b], version, n)
            key = layout.alignment_key(DATASET, a, b, version)
            lineage = {"dataset_version": DATASET, "features": {x: manifests[x]["catalog"]["feature_version"] for x in (a, b)}}
            store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best}, {"kind": "alignment", "lineage": lineage})
            keys.append(key)
    record = {"run_id": RUN, "flow_run_id": RUN, "status": "COMPLETED", "started_at": "2026-12-01T00:00:00+00:00",
              "finished_at": "2026-12-01T01:00:00+00:00", "store": store.display_url, "dataset_version": DATASET,
              "alignment_versions": keys, "feature_versions": {x: m["catalog"]["feature_version"] for x, m in manifests.items()},
              "extracted": [], "reused": []}
    store.write_json(layout.run_key(RUN), record)
    return record


def main(argv: list[str] | None = None) -> None:
    from flows.report import write_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision", type=int, default=len(VISION), help="the first VISION models")
    parser.add_argument("--language", type=int, default=len(LANGUAGE), help="the first LANGUAGE models")
    parser.add_argument("--layers", type=int, default=None, help="layers of every model (default: each model's own)")
    parser.add_argument("--n", type=int, default=64, help="samples")
    parser.add_argument("--store", default=None, help="store folder (default: a temporary one)")
    args = parser.parse_args(argv)
    vision, language = dict(list(VISION.items())[:args.vision]), dict(list(LANGUAGE.items())[:args.language])
    with tempfile.TemporaryDirectory() as scratch:
        url = args.store or str(Path(scratch) / "store")
        started = time.perf_counter()
        build_store(url, vision, language, args.n, args.layers)
        print(f"{len(vision)} x {len(language)} models, N = {args.n}: store written in {time.perf_counter() - started:.1f} s")
        print(f"{'report build':<34} {'seconds':>8} {'page MB':>8} {'figures':>8} {'largest PNG kB':>15}")
        for name in ("no cache (every figure drawn)", "warm figure cache"):
            started = time.perf_counter()
            path, report = write_report(url, Path(scratch) / "report", formats=("png",))
            seconds = time.perf_counter() - started
            largest = max(len(f.png) for f in report.figures)
            print(f"{name:<34} {seconds:8.1f} {path.stat().st_size / 1e6:8.2f} {len(report.figures):8d} {largest / 1e3:15.0f}")


if __name__ == "__main__":
    main()
