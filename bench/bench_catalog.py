"""Benchmark of the pairing path: DuckDB join on ``sample_id`` → torch, against a plain pyarrow read.

What it measures, in one run on the same store:

- ``duckdb``: ``storage.pairing.paired_features`` (DuckDB joins the two models' ids, streams each
  layer's vectors and scatters them into aligned ``(N, D)`` float32 arrays), then
  ``torch.from_numpy`` on every layer;
- ``arrow``: every layer file read straight into numpy with ``pyarrow.parquet.read_table``
  (``vector`` column only, no alignment), then ``torch.from_numpy``: the floor.

Each path runs in its own fresh process (``spawn``) so that its peak RSS is its own; files are read
once beforehand so both paths read from the page cache. Reported: seconds (best of ``--repeats``),
the ratio duckdb / arrow, and peak RSS above the process's RSS before loading, as a multiple of
the bytes of the arrays handed over (both models, all layers).

Model B is stored in a shuffled order and lacks ``--missing`` of A's samples, so the join does real
work. ``--s3-n``: the same against a moto S3 server on loopback (started here), at a smaller size.

Usage::

    python bench/bench_catalog.py --n 100000 --layers 4           # 3.3 GB of arrays
    python bench/bench_catalog.py --n 25000 --layers 13
    python bench/bench_catalog.py --n 2000 --layers 2 --dim 64 --s3-n 2000 --repeats 1   # seconds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import warnings

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage import layout  # noqa: E402
from storage.features import layer_table  # noqa: E402
from storage.loopback_s3 import loopback_s3  # noqa: E402
from storage.store import Store  # noqa: E402


def _status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc/self/status, in bytes.

    ``VmHWM`` belongs to the current address space, so unlike ``ru_maxrss`` it does not inherit
    the parent's peak across fork + exec.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_store(url: str, n: int, layers: int, dim: int, missing: float, seed: int = 0) -> tuple[dict, dict]:
    """Publish two models' features (``layers`` × ``(n, dim)`` float32 each); returns both manifests.

    Model B holds a shuffled subset: ``missing`` of A's samples are left out.
    """
    store = Store(url)
    rng = np.random.default_rng(seed)
    ids = [f"s{i:07d}" for i in range(n)]
    keep = np.sort(rng.permutation(n)[: n - int(n * missing)])
    order_b = rng.permutation(keep)
    manifests = []
    for model, rows in (("model-a", np.arange(n)), ("model-b", order_b)):
        version = f"bench-{model}-{n}-{layers}-{dim}"
        key = layout.features_key("bench", model, version)
        files = {}
        for layer in range(layers):
            x = rng.standard_normal((len(rows), dim), dtype=np.float32)
            files[layout.layer_file(layer)] = layer_table(model, version, layer, [ids[r] for r in rows], x)
        catalog = {"model": model, "feature_version": version, "dataset_version": "bench", "n_layers": layers,
                   "layer_widths": [dim] * layers}
        manifests.append(store.publish(key, files, {"kind": "features", "catalog": catalog}).manifest)
        del files
    return manifests[0], manifests[1]


def _child(path: str, url: str, manifests: tuple[dict, dict], env: dict[str, str], queue: Any) -> None:
    """Run one path in this fresh process; put (seconds, peak RSS above start, bytes handed over)."""
    os.environ.update(env)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    import pyarrow.parquet as pq
    import torch

    from storage.pairing import batch_vectors, paired_features

    store = Store(url)
    before = _status_bytes("VmRSS")
    started = time.perf_counter()
    if path == "duckdb":
        pair = paired_features(store, *manifests)
        tensors = [torch.from_numpy(x) for x in pair.xs + pair.ys]
    else:
        tensors = []
        for manifest in manifests:
            for layer in range(int(manifest["catalog"]["n_layers"])):
                with store.fs.open(store.path(f"{manifest['key']}/{layout.layer_file(layer)}"), "rb") as handle:
                    column = pq.read_table(handle, columns=["vector"]).column("vector")
                x = batch_vectors(column.chunk(0)) if column.num_chunks == 1 else batch_vectors(column.combine_chunks())
                tensors.append(torch.from_numpy(x))
                del column
    seconds = time.perf_counter() - started
    peak = _status_bytes("VmHWM")
    queue.put((seconds, peak - before, sum(t.numel() * t.element_size() for t in tensors)))
    queue.close()
    queue.join_thread()
    os._exit(0)  # skip interpreter teardown (DuckDB / torch threads)


def run_path(path: str, url: str, manifests: tuple[dict, dict], env: dict[str, str]) -> tuple[float, int, int]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(path, url, manifests, env, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def compare(url: str, manifests: tuple[dict, dict], repeats: int, env: dict[str, str]) -> dict[str, Any]:
    """Best seconds and peak RSS of both paths over ``repeats`` alternating runs."""
    results: dict[str, list[tuple[float, int, int]]] = {"arrow": [], "duckdb": []}
    for _ in range(repeats):
        for path in ("arrow", "duckdb"):
            results[path].append(run_path(path, url, manifests, env))
    out: dict[str, Any] = {}
    for path, runs in results.items():
        array_bytes = runs[0][2]
        out[path] = {
            "seconds": min(r[0] for r in runs),
            "peak_rss_gb": max(r[1] for r in runs) / 1e9,
            "arrays_gb": array_bytes / 1e9,
            "rss_over_arrays": max(r[1] for r in runs) / array_bytes,
        }
    out["ratio_duckdb_over_arrow"] = out["duckdb"]["seconds"] / out["arrow"]["seconds"]
    return out


def _warm(folder: Path) -> None:
    for file in folder.rglob("*.parquet"):
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass


def describe(label: str, n: int, layers: int, dim: int, result: dict[str, Any]) -> str:
    a, d = result["arrow"], result["duckdb"]
    return (f"{label}: N={n}, {layers} layers x {dim} per model, arrays {d['arrays_gb']:.2f} GB | "
            f"arrow {a['seconds']:.2f} s (peak +{a['peak_rss_gb']:.2f} GB, {a['rss_over_arrays']:.2f}x) | "
            f"duckdb {d['seconds']:.2f} s (peak +{d['peak_rss_gb']:.2f} GB, {d['rss_over_arrays']:.2f}x) | "
            f"ratio {result['ratio_duckdb_over_arrow']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="samples of model A")
    parser.add_argument("--layers", type=int, default=4, help="layers per model (the issue asks for 13)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--missing", type=float, default=0.01, help="share of A's samples that B lacks")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--s3-n", type=int, default=0, help="also run against loopback S3 with this N (0: skip)")
    parser.add_argument("--s3-layers", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"}
    with tempfile.TemporaryDirectory(prefix="prh-bench-catalog-") as tmp:
        url = str(Path(tmp) / "store")
        t0 = time.perf_counter()
        manifests = make_store(url, args.n, args.layers, args.dim, args.missing)
        print(f"local store written in {time.perf_counter() - t0:.1f} s", flush=True)
        _warm(Path(url))
        report["local"] = {"n": args.n, "layers": args.layers, "dim": args.dim,
                           **compare(url, manifests, args.repeats, {})}
        print(describe("local", args.n, args.layers, args.dim, report["local"]), flush=True)
    if args.s3_n:
        with loopback_s3("bench", "bench") as env:
            import s3fs

            s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"]).mkdir("prh-bench")
            url = "s3://prh-bench/store"
            manifests = make_store(url, args.s3_n, args.s3_layers, args.dim, args.missing)
            report["s3"] = {"n": args.s3_n, "layers": args.s3_layers, "dim": args.dim,
                            **compare(url, manifests, args.repeats, env)}
            print(describe("s3 (moto, loopback)", args.s3_n, args.s3_layers, args.dim, report["s3"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
