"""The accelerator's code paths give the CPU's numbers (a check for `bench/gpu_checks.sh`).

Engine: `layer_matrix` of every registered metric on the same features on both devices (600
samples: the CPU's blocked Gram products against the GPU's single ones; layers of one width and
of another, so that layers are searched and packed in stacks). Alignment: the pipeline's pair
alignment (`alignment.device`) with permutations and resamples on both devices. Extraction (skipped with
``--skip-extract``): a small float32 Llama with bits per byte and a small float32 ViT through
`extract_all` on both devices (the GPU queues each batch and copies results back without waiting;
a ViT beside a GPU prepares in threads). Prints one line per comparison; exit 1 when a difference
is beyond its tolerance (float32 rounding; a k-NN list may change at a near-tie: 1 entry of
600 x 10 moves a score by 1.7e-4).

    python bench/cuda_vs_cpu.py [--device cuda] [--skip-extract] [--n 600]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

KNN_TOL = 2e-3  # a few list entries at near-ties
TOL = 1e-4


def engine(device: str, n: int = 600) -> bool:
    from tasks.metrics import METRICS, Representation, layer_matrix

    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 8, generator=g)
    xs = [z @ torch.randn(8, 96, generator=g) + 2 * torch.randn(n, 96, generator=g) for _ in range(4)]
    xs.append(z @ torch.randn(8, 64, generator=g) + torch.randn(n, 64, generator=g))
    ys = [z @ torch.randn(8, 48, generator=g) + 3 * torch.randn(n, 48, generator=g) for _ in range(3)]
    ok = True
    for name in sorted(METRICS):
        try:  # each metric's defaults (topk 10)
            ref = np.asarray(layer_matrix(name, Representation(xs, device="cpu"), Representation(ys, device="cpu")))
            got = np.asarray(layer_matrix(name, Representation(xs, device=device), Representation(ys, device=device)))
        except Exception as exc:  # noqa: BLE001 - report every metric
            print(f"engine {name}: FAILED {exc!r}"[:300], flush=True)
            ok = False
            continue
        tol = KNN_TOL if "knn" in name else TOL
        diff = float(np.nanmax(np.abs(got - ref))) if np.isfinite(ref).any() else 0.0
        same_nan = bool((np.isnan(got) == np.isnan(ref)).all())
        good = diff <= tol and same_nan
        ok &= good
        print(f"engine {name:<18} max |{device} - cpu| {diff:.1e} (tol {tol:.0e}){'' if good else '  BEYOND'}", flush=True)
    return ok


def alignment_stage(device: str, n: int = 600) -> bool:
    """The pipeline's alignment of one pair (``tasks.alignment.align_layers``, what
    ``alignment.device`` places) on both devices: best score, calibrated score, p and interval of
    mutual_knn and cka with 19 permutations and 10 resamples."""
    from tasks.alignment import MetricRequest, align_layers

    rng = np.random.default_rng(1)
    z = rng.standard_normal((n, 8))
    xs = [(z @ rng.standard_normal((8, 64)) + 2 * rng.standard_normal((n, 64))).astype(np.float32) for _ in range(3)]
    ys = [(z @ rng.standard_normal((8, 32)) + 3 * rng.standard_normal((n, 32))).astype(np.float32) for _ in range(2)]
    requests = [MetricRequest("mutual_knn", {"topk": 10}), MetricRequest("cka", {"kernel_metric": "ip", "rbf_sigma": 1.0})]
    ok = True
    results = {d: align_layers(xs, ys, requests, permutations=19, seed=3, bootstrap=10, device=d) for d in ("cpu", device)}
    for ref, got in zip(results["cpu"], results[device]):
        pairs = {"best": (ref.best, got.best), "calibrated": (ref.calibrated, got.calibrated),
                 "p": (ref.p_value, got.p_value), "ci_low": (ref.ci_low, got.ci_low), "ci_high": (ref.ci_high, got.ci_high)}
        diff = max(abs(a - b) for a, b in pairs.values())
        tol = KNN_TOL if "knn" in ref.metric.name else TOL
        good = diff <= tol and ref.best_layers == got.best_layers
        ok &= good
        print(f"alignment {ref.metric.name:<12} max |{device} - cpu| over best, calibrated, p, interval {diff:.1e} (tol {tol:.0e})"
              f"{'' if good else '  BEYOND'}", flush=True)
    return ok


def extraction(device: str) -> bool:
    from PIL import Image

    from tasks.extract import ModelSpec, extract_all, load_extractor

    rng = np.random.default_rng(0)
    words = ["red", "apple", "on", "a", "wooden", "table", "cat", "sleeps", "under", "the", "window"]
    captions = [" ".join(rng.choice(words, int(rng.integers(1, 12)))) for _ in range(40)]
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(24)]
    specs = [
        (ModelSpec(name="llama-small", loader="random_hf", id="LlamaConfig", modality="language", batch_size=8,
                   config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=128)), captions),
        (ModelSpec(name="vit-small", loader="random_hf", id="ViTConfig", modality="vision", batch_size=8,
                   config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                               image_size=32, patch_size=8)), images),
    ]
    ok = True
    for spec, items in specs:
        feats = [extract_all(load_extractor(spec, device=d), items) for d in ("cpu", device)]
        for name, a, b in zip(feats[0].layer_names, feats[0].layers, feats[1].layers):
            diff = float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-30)
            good = diff <= TOL and a.shape == b.shape
            ok &= good
            print(f"extract {spec.name} {name:<12} max relative |{device} - cpu| {diff:.1e}{'' if good else '  BEYOND'}",
                  flush=True)
        if "bits_per_byte" in feats[0].extras:
            a, b = feats[0].extras["bits_per_byte"], feats[1].extras["bits_per_byte"]
            good = abs(a - b) <= TOL * abs(a)
            ok &= good
            print(f"extract {spec.name} bits_per_byte cpu {a:.6f} {device} {b:.6f}{'' if good else '  BEYOND'}", flush=True)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-extract", action="store_true")
    p.add_argument("--n", type=int, default=600, help="samples of the engine's comparison (above 512: the CPU's "
                   "blocked Gram products)")
    a = p.parse_args()
    ok = engine(a.device, a.n)
    ok &= alignment_stage(a.device, a.n)
    if not a.skip_extract:
        ok &= extraction(a.device)
    print("cuda_vs_cpu:", "all within tolerance" if ok else "SOME BEYOND TOLERANCE", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
