"""Benchmark of the paper's outlier clamp at one model's scale (``outlier_scope: model``).

A model whose layers share a width gets ONE clamp threshold, each sample's quantile pooling its
values over every layer (the paper's ``(N, L, D)`` tensor branch). Compared in one run, each in a
fresh child process (so its peak memory is its own):

- ``paper``: the paper's ``remove_outliers`` on the ``(N, L, D)`` tensor its extraction stores
  (``torch.quantile`` of each sample's flattened ``|x|``, averaged; ``exact``: the whole tensor
  sorted), then ``F.normalize`` of each layer: the baseline, written here from the paper's code;
- ``pooled``: ``prepare(layers, per_layer=False)``, the threshold found a block of samples at a
  time, no stacked copy (what ``tasks.alignment.prepare_layers`` does now).

Printed: seconds, peak memory above the input (RSS high-water mark of the child), and the
largest difference from the paper's output (float32 rounding of the interpolation at most). Default shape: LLaMA-7B's
33 hidden states of width 4096 over the paper's 1024 samples (0.52 GiB of float32).

Usage::

    python bench/bench_prepare.py                        # 33 x 1024 x 4096
    python bench/bench_prepare.py --layers 4 --n 256 --width 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _layers(n_layers: int, n: int, width: int, seed: int) -> list[np.ndarray]:
    """Heavy-tailed float32 layers whose scale grows with depth, as a transformer's do."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_t(4, size=(n, width)) * (1 + l)).astype(np.float32) for l in range(n_layers)]


def _paper(layers: list[np.ndarray], q: float, exact: bool) -> list[np.ndarray]:
    """The paper's clamp of an ``(N, L, D)`` tensor and its per-layer normalisation."""
    import torch

    feats = torch.from_numpy(np.stack(layers, axis=1))  # (N, L, D), as the paper stores features
    if exact:
        threshold = feats.view(-1).abs().sort().values[int(q * feats.numel())]
    else:
        threshold = torch.quantile(feats.abs().flatten(start_dim=1), q, dim=1).mean()
    feats = feats.clamp(-threshold, threshold)
    return [torch.nn.functional.normalize(feats[:, l], dim=-1).numpy() for l in range(feats.shape[1])]


def _measure(mode: str, args: argparse.Namespace) -> dict:
    """In this (child) process: prepare the layers one way; seconds, peak bytes, output slice."""
    from tasks.metrics import prepare

    layers = _layers(args.layers, args.n, args.width, args.seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "paper":
        out = _paper(layers, args.q, args.exact)
    else:
        out = prepare(layers, q=args.q, exact=args.exact, per_layer=False)
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # ru_maxrss: KiB
    checksum = np.stack([o[:, :8] for o in out])  # a slice of every layer, to compare the modes
    return {"seconds": seconds, "peak": peak, "checksum": checksum.tolist()}


def run(mode: str, argv: list[str]) -> tuple[float, int, np.ndarray]:
    """``_measure`` in a fresh Python process (its peak memory is its own)."""
    done = subprocess.run([sys.executable, __file__, *argv, "--child", mode], check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak"], np.asarray(result["checksum"], dtype=np.float32)


def main(argv: list[str] | None = None) -> dict[str, tuple[float, int, np.ndarray]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=33)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--q", type=float, default=0.95)
    parser.add_argument("--exact", action="store_true", help="the sorted-element threshold (the paper's --precise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=("paper", "pooled"), help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child, args)))
        return {}

    size = args.layers * args.n * args.width * 4
    print(f"outlier clamp, one threshold for {args.layers} layers x N={args.n} x width {args.width} "
          f"({size / 2**30:.2f} GiB float32), q={args.q}, {'exact' if args.exact else 'mean of per-sample quantiles'}")
    results = {mode: run(mode, argv) for mode in ("paper", "pooled")}
    base_s, base_mem, base_out = results["paper"]
    print(f"{'mode':<10}{'seconds':>10}{'peak GiB':>10}{'time ratio':>12}{'memory ratio':>14}{'max |diff|':>12}")
    for mode, (seconds, peak, out) in results.items():
        print(f"{mode:<10}{seconds:>10.2f}{peak / 2**30:>10.2f}{seconds / base_s:>12.2f}"
              f"{peak / max(base_mem, 1):>14.2f}{float(np.abs(out - base_out).max()):>12.1e}")
    return results


if __name__ == "__main__":
    main()
