"""Benchmark of the alignment engine (``tasks.metrics``) against a paper-style per-pair loop.

What it measures, in one run on the same data:

- floor: computing every layer's Gram matrix once (``x @ x.T`` for all layers of both models);
- ``layer_matrix`` for ``mutual_knn``, ``cka`` and ``cknna`` (fresh caches each repeat, so the
  Gram / neighbour work is included), as a multiple of the floor;
- a per-pair loop in the style of the paper's code (torch; neighbours, kernels and HSIC recomputed
  for every layer pair, dense ``trace(K H L H)``), its time and the largest difference from the
  engine's matrix (same numbers);
- ``calibrate`` with ``--permutations`` row permutations (max over layer pairs) for each
  ``--calibrate`` metric (encoding included: fresh ``Representation`` objects), with the
  1-minute load average before and after (the machine is shared: ``--threads 1`` is the
  steadier setting when other work runs);
- optionally ``--large-n N``: ``mutual_knn`` on one layer pair of width 1024 with ``N`` samples,
  blockwise, for exact fp32 neighbours and the opt-in ``knn_precision='bf16'`` /
  ``'bf16-refine'`` searches side by side: best of ``--large-n-repeats`` warm runs (each mode
  first warmed up on a few thousand rows, so CUDA set-up and idle clocks stay out of the clock)
  and the first run, ratio to exact, peak memory (GB and GiB), share of neighbour lists that
  differ from exact and the score change; then the exact search through
  ``topk_neighbors(..., block_elements=...)`` for each ``--large-n-blocks`` size (``layer_matrix``
  takes no block size: this sweep says which default block to use), time and peak memory;
- optionally ``--precision-error N [N ...]``: the error of the bfloat16 search against exact
  fp32 on isotropic Gaussian and low-rank + noise data (width 1024), per mode.

Usage::

    python bench/bench_metrics.py                 # N=1024, 13x13 layers of width 768, CPU
    python bench/bench_metrics.py --small         # seconds; what CI runs
    python bench/bench_metrics.py --device cuda --layers-a 33 --width-a 4096 \\
        --layers-b 40 --width-b 1536              # the paper's largest shape, on a GPU
    python bench/bench_metrics.py --large-n 20000 --skip-layers
    python bench/bench_metrics.py --skip-layers --precision-error 2000 20000
    python bench/bench_metrics.py --skip-paper --threads 1 --calibrate mutual_knn cka cknna
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.metrics import Representation, calibrate, layer_matrix  # noqa: E402

# ----------------------------------------------------------------------------- paper-style loop


def paper_neighbors(f: torch.Tensor, k: int) -> torch.Tensor:
    """Full argsort of the similarity rows, self pushed to the end (the paper's approach)."""
    return (f @ f.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :k]


def paper_mutual_knn(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    ka, kb = paper_neighbors(a, k), paper_neighbors(b, k)
    n = a.shape[0]
    rows = torch.arange(n, device=a.device).unsqueeze(1)
    ma = torch.zeros(n, n, device=a.device)
    mb = torch.zeros(n, n, device=a.device)
    ma[rows, ka] = 1.0
    mb[rows, kb] = 1.0
    return ((ma * mb).sum(1) / k).mean().item()


def paper_hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    h = torch.eye(k.shape[0], dtype=k.dtype, device=k.device) - 1.0 / k.shape[0]
    return torch.trace(k @ h @ l @ h)


def paper_hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    m = k.shape[0]
    kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    value = ((kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
             - 2 * (kt @ lt).sum() / (m - 2))
    return value / (m * (m - 3))


def paper_cka(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    kk, ll = a @ a.T, b @ b.T
    kl = paper_hsic_biased(kk, ll)
    return (kl / (torch.sqrt(paper_hsic_biased(kk, kk) * paper_hsic_biased(ll, ll)) + 1e-6)).item()


def paper_cknna(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    n = a.shape[0]
    kk, ll = a @ a.T, b @ b.T

    def sim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xh = x.clone().fill_diagonal_(float("-inf"))
        yh = y.clone().fill_diagonal_(float("-inf"))
        mx = torch.zeros(n, n, device=x.device).scatter_(1, torch.topk(xh, k, dim=1).indices, 1)
        my = torch.zeros(n, n, device=x.device).scatter_(1, torch.topk(yh, k, dim=1).indices, 1)
        mask = mx * my
        return paper_hsic_unbiased(mask * x, mask * y)

    return sim(kk, ll).item() / (torch.sqrt(sim(kk, kk) * sim(ll, ll)) + 1e-6).item()


PAPER = {"mutual_knn": paper_mutual_knn, "cka": paper_cka, "cknna": paper_cknna}

# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time over ``repeats`` calls (after synchronising the device) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def make_layers(n: int, layers: int, width: int, seed: int, device: torch.device,
                latent_dim: int = 16) -> list[torch.Tensor]:
    """L2-normalised float32 layers ``z W_l + noise_l`` of a latent ``z`` shared by every model
    (same ``n``), so that the two models are genuinely but imperfectly aligned."""
    z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(12345))
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(layers):
        signal = z @ torch.randn(latent_dim, width, generator=g)
        noise = torch.randn(n, width, generator=g) * (2.0 + 4.0 * i / max(layers - 1, 1))
        out.append(torch.nn.functional.normalize(signal + noise, dim=1).to(device))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- benchmarks


def bench_layers(args: argparse.Namespace, device: torch.device) -> None:
    xs = make_layers(args.n, args.layers_a, args.width_a, 0, device)
    ys = make_layers(args.n, args.layers_b, args.width_b, 1, device)
    if args.copies > 1:  # an image's captions under unit: sample: the vision rows come in groups of equal rows
        xs = [x[torch.arange(args.n, device=x.device) // args.copies] for x in xs]
    la, lb = len(xs), len(ys)
    flops = 2.0 * args.n * args.n * (args.width_a * la + args.width_b * lb)
    floor, _ = timed(lambda: [x @ x.T for x in xs + ys], device, args.repeats)
    print(f"N={args.n}  layers {la}x{lb}  widths {args.width_a}/{args.width_b}  device {device}  "
          f"threads {torch.get_num_threads()}  topk {args.topk}"
          + (f"  model A's rows in groups of {args.copies} copies" if args.copies > 1 else ""))
    print(f"floor: {la + lb} Gram matrices once: {1e3 * floor:.2f} ms ({flops / floor / 1e9:.0f} GFLOP/s)"
          f"; 'x floor' is the median over {args.repeats} repeats of engine time / a floor "
          f"measured right before it")
    print()
    header = (f"{'metric':<12} {'layer_matrix ms':>15} {'x floor':>8} {'paper loop s':>13} "
              f"{'speedup':>8} {'max |diff|':>11}")
    print(header)
    print("-" * len(header))
    pairs = [(i, j) for i in range(la) for j in range(lb)]
    if args.paper_pairs:
        rng = np.random.default_rng(0)
        pairs = [pairs[p] for p in sorted(rng.choice(len(pairs), args.paper_pairs, replace=False))]
    for metric in args.metrics:
        ratios, engine_t, m = [], float("inf"), None
        for _ in range(args.repeats):  # interleave floor and engine: the machine's speed drifts
            f_t, _ = timed(lambda: [x @ x.T for x in xs + ys], device, 1)
            e_t, m = timed(lambda: layer_matrix(metric, Representation(xs), Representation(ys),
                                                topk=args.topk), device, 1)
            ratios.append(e_t / f_t)
            engine_t = min(engine_t, e_t)
        ratio = float(np.median(ratios))
        paper_col, diff_col, speed_col = "skipped", "", ""
        if not args.skip_paper:
            def loop() -> list[float]:
                return [PAPER[metric](xs[i], ys[j], args.topk) for i, j in pairs]

            paper_t, vals = timed(loop, device, 1)
            scale = (la * lb) / len(pairs)
            paper_t *= scale
            diff = max(abs(v - m[i, j]) for v, (i, j) in zip(vals, pairs))  # type: ignore[union-attr]
            est = "~" if scale != 1 else ""
            paper_col = f"{est}{paper_t:.2f}"
            speed_col = f"{paper_t / engine_t:.0f}x"
            diff_col = f"{diff:.1e}"
        print(f"{metric:<12} {1e3 * engine_t:>15.2f} {ratio:>8.2f} {paper_col:>13} "
              f"{speed_col:>8} {diff_col:>11}")
    if args.paper_pairs:
        print(f"(paper loop timed on {len(pairs)} random layer pairs and scaled to all {la * lb})")
    if "cknna" in args.metrics:
        print(cknna_path_note(xs, ys, args.topk))
    if args.profile:
        for metric in args.metrics:
            try:  # a diagnostic: the timings above stand whatever happens here
                profile_layer_matrix(metric, xs, ys, args.topk, device)
            except Exception as exc:  # noqa: BLE001
                print(f"\nprofile of layer_matrix {metric} failed: {exc!r}")
    if args.permutations:
        print()
        for metric in args.calibrate:
            ra, rb = Representation(xs), Representation(ys)
            load = os.getloadavg()[0]
            t, res = timed(lambda: calibrate(metric, ra, rb, permutations=args.permutations,
                                             topk=args.topk), device, 1)
            print(f"calibrate {metric:<11} K={args.permutations}: {t:7.2f} s "
                  f"({1000 * t / args.permutations:.1f} ms/perm, load {load:.1f}->"
                  f"{os.getloadavg()[0]:.1f})   observed {res.observed:.4f}  tau {res.tau:.4f}  "
                  f"p {res.p_value:.4f}  calibrated {res.calibrated:.4f}  argmax {res.argmax}")


def cknna_path_note(xs: list[torch.Tensor], ys: list[torch.Tensor], k: int) -> str:
    """Which sums ``cknna``'s matrix took on this data: the share of the ``La Lb N k``
    (x-layer, y-layer, x-entry) combinations whose entry the y-list also holds, against
    ``cknna.SPARSE_MAX_SHARE`` (sparse sums over those entries at or below it, dense above)."""
    from tasks.metrics.cknna import SPARSE_MAX_SHARE
    from tasks.metrics.knn_hits import build_list_table, member_counts, pair_keys

    ia, ib = Representation(xs).knn_indices(k), Representation(ys).knn_indices(k)
    share = int(member_counts(build_list_table(ia), pair_keys(ib), "total").sum()) / (ia.shape[0] * ib.numel())
    path = "sparse" if share <= SPARSE_MAX_SHARE else "dense"
    return (f"(cknna: {100 * share:.1f}% of the layer pairs' list entries are shared, so its matrix took the {path} "
            f"sums; sparse up to {100 * SPARSE_MAX_SHARE:.0f}%)")


def profile_layer_matrix(metric: str, xs: list[torch.Tensor], ys: list[torch.Tensor], k: int,
                         device: torch.device, rows: int = 12) -> None:
    """Where one warm ``layer_matrix`` call spends its time: the ``rows`` operators with the most
    device time (self time: kernels on a GPU, CPU time otherwise), their calls, and the totals
    (kernel launches on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    run = lambda: layer_matrix(metric, Representation(xs), Representation(ys), topk=k)  # noqa: E731
    run()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        run()
        sync(device)
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    averages = sorted(prof.key_averages(), key=lambda a: -getattr(a, key))
    total = sum(getattr(a, key) for a in averages)
    launches = sum(a.count for a in prof.key_averages() if gpu and str(a.device_type).endswith("CUDA"))
    print(f"\nprofile of one layer_matrix {metric}: {total / 1e3:.2f} ms of {'kernel' if gpu else 'CPU'} self time"
          + (f", {launches} kernels" if gpu else ""))
    for a in averages[:rows]:
        t = getattr(a, key)
        print(f"  {t / 1e3:8.3f} ms {100 * t / max(total, 1e-9):5.1f}% {a.count:6d}x  {a.key[:90]}")


def peak_memory(device: torch.device) -> str:
    """Peak memory since the last ``reset_peak``: GPU allocations in GB and GiB (the issue's
    target is stated in GB), or on the CPU the process's peak RSS so far."""
    if device.type == "cuda":
        b = torch.cuda.max_memory_allocated(device)
        return f"{b / 1e9:.2f} GB ({b / 2**30:.2f} GiB) GPU"
    return f"RSS {peak_rss_mb():.0f} MiB (max so far)"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def warm_up(xs: list[torch.Tensor], ys: list[torch.Tensor], args: argparse.Namespace,
            device: torch.device) -> None:
    """Run every timed ``--large-n`` code path once on the first ``--large-n-warmup`` rows
    (CUDA context, cuBLAS handles and workspaces, kernel loading and the GPU's idle clocks are
    paid here, not inside the first timed call): each ``knn_precision`` through ``layer_matrix``,
    and the blockwise exact search of the block sweep (a block smaller than those rows)."""
    from tasks.metrics.neighbors import topk_neighbors

    rows = min(args.large_n_warmup, xs[0].shape[0])
    if rows <= args.topk:
        return
    wx, wy = [x[:rows] for x in xs], [y[:rows] for y in ys]
    for precision in args.large_n_precisions:
        layer_matrix("mutual_knn", Representation(wx), Representation(wy), topk=args.topk,
                     knn_precision=precision)
    topk_neighbors(wx[0], args.topk, block_elements=max(1, rows * rows // 4))
    sync(device)


def bench_large_n(args: argparse.Namespace, device: torch.device) -> None:
    """``mutual_knn`` on one layer pair at ``--large-n``, for each ``--large-n-precisions`` mode
    side by side: best and first time, ratio to exact, peak memory, changed-list share and score
    change; then the exact search's block-size sweep (``block_sweep``)."""
    n, width = args.large_n, 1024
    xs = make_layers(n, 1, width, 2, device)
    ys = make_layers(n, 1, width, 3, device)
    repeats = max(1, args.large_n_repeats)
    warm_up(xs, ys, args, device)
    print(f"\nmutual_knn N={n} width {width} topk {args.topk} one layer pair, device {device}, "
          f"threads {torch.get_num_threads()}; time s: best of {repeats} after a warm-up on "
          f"{min(args.large_n_warmup, n)} rows; first s: the first of them")
    header = (f"{'knn_precision':<13} {'time s':>7} {'first s':>7} {'vs exact':>8} {'peak':>28} "
              f"{'lists changed':>13} {'score':>8} {'|score diff|':>12}")
    print(header)
    print("-" * len(header))
    exact_t, exact_idx, exact_score = None, None, None
    for precision in args.large_n_precisions:
        reset_peak(device)
        times, m, ra, rb = [], None, None, None
        for _ in range(repeats):  # fresh Representations each time: their neighbour lists are cached
            ra, rb = Representation(xs), Representation(ys)
            t, m = timed(lambda: layer_matrix("mutual_knn", ra, rb, topk=args.topk,
                                              knn_precision=precision), device, 1)
            times.append(t)
        peak = peak_memory(device)
        t = min(times)
        idx = torch.cat([ra.knn_indices(args.topk, precision=precision),  # cached: no search
                         rb.knn_indices(args.topk, precision=precision)])
        score_ = float(m[0, 0])
        if exact_idx is None and precision == "exact":
            exact_t, exact_idx, exact_score = t, idx, score_
        ratio = f"{exact_t / t:.2f}x" if exact_t else "-"
        changed = diff = "-"
        if exact_idx is not None and exact_score is not None:
            changed = f"{100 * changed_share(idx, exact_idx):.2f}%"
            diff = f"{abs(score_ - exact_score):.1e}"
        print(f"{precision:<13} {t:>7.3f} {times[0]:>7.3f} {ratio:>8} {peak:>28} {changed:>13} "
              f"{score_:>8.4f} {diff:>12}")
    print(f"(N^2 fp32 = {n * n * 4 / 2**20:.0f} MiB; 'lists changed': share of the 2N neighbour "
          f"sets that differ from the exact ones)")
    if args.large_n_blocks:
        block_sweep(xs[0], ys[0], args, device, exact_score)


def overlap_total(ia: torch.Tensor, ib: torch.Tensor) -> int:
    """``sum_i |kNN_a(i) ∩ kNN_b(i)|`` of two ``(N, k)`` int64 lists (the engine's own count)."""
    from tasks.metrics.knn_hits import build_list_table, member_counts, pair_keys

    return int(member_counts(build_list_table(ia[None]), pair_keys(ib[None]), "total"))


def block_sweep(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, device: torch.device,
                reference: float | None) -> None:
    """Exact fp32 ``mutual_knn`` of ``x`` and ``y`` (``(N, D)`` each) through the public
    ``topk_neighbors(..., block_elements=...)`` and ``overlap_total``, once per
    ``--large-n-blocks`` size (MiB of one float32 similarity block; the engine's default is
    ``default_block_elements``): best of ``--large-n-repeats`` times and peak memory, so one run
    says which default block to use. The score must equal ``layer_matrix``'s (``reference``)."""
    from tasks.metrics.neighbors import default_block_elements, topk_neighbors

    n, k = int(x.shape[0]), args.topk
    print(f"\nexact search block size (topk_neighbors block_elements; engine default "
          f"{default_block_elements(x.device) * 4 / 2**20:.0f} MiB here), both sides + overlap, best of "
          f"{max(1, args.large_n_repeats)}")
    header = (f"{'block MiB':>9} {'rows':>7} {'time s':>7} {'first s':>7} {'peak':>28} {'score':>8} "
              f"{'|vs layer_matrix|':>17} {'full rows s':>11} {'speedup':>7} {'same lists':>10}")
    print(header)
    print("-" * len(header))
    for mib in args.large_n_blocks:
        elements = max(1, int(mib * 2**20) // 4)
        rows = max(1, min(n, elements // n))
        lists: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def run(search=topk_neighbors, name: str = "engine") -> float:
            ia = search(x, k, block_elements=elements)[1]
            ib = search(y, k, block_elements=elements)[1]
            lists[name] = (ia, ib)
            return overlap_total(ia, ib) / (n * k)

        reset_peak(device)
        times, score_ = [], float("nan")
        for _ in range(max(1, args.large_n_repeats)):
            t, score_ = timed(run, device, 1)
            times.append(t)
        peak = peak_memory(device)
        base = [timed(lambda: run(full_row_blocks, "full rows"), device, 1)[0] for _ in range(max(1, args.large_n_repeats))]
        same = all(torch.equal(a.sort(-1).values, b.sort(-1).values) for a, b in zip(lists["engine"], lists["full rows"]))
        diff = f"{abs(score_ - reference):.1e}" if reference is not None else "-"
        print(f"{mib:>9g} {rows:>7} {min(times):>7.3f} {times[0]:>7.3f} {peak:>28} "
              f"{score_:>8.4f} {diff:>17} {min(base):>11.3f} {min(base) / min(times):>6.2f}x {'yes' if same else 'NO':>10}")
    print(f"(rows: query rows per block at N={n}; a block of N rows or more is one full Gram. 'full rows': "
          "the baseline search, each row block against all N rows, every inner product twice; "
          "'same lists': its neighbour sets equal the engine's)")


def full_row_blocks(x: torch.Tensor, k: int, block_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline exact search (the engine's before its symmetric blocks): each block of
    ``block_elements // N`` query rows against all ``N`` rows, self excluded; ``(N, k)`` values
    and indices."""
    n = int(x.shape[0])
    rows = max(1, min(n, block_elements // n))
    values = torch.empty((n, k), dtype=x.dtype, device=x.device)
    indices = torch.empty((n, k), dtype=torch.int64, device=x.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = x[start:stop] @ x.T
        r = torch.arange(stop - start, device=x.device)
        block[r, r + start] = float("-inf")
        values[start:stop], indices[start:stop] = torch.topk(block, k, dim=1)
        del block
    return values, indices


def changed_share(idx: torch.Tensor, ref: torch.Tensor) -> float:
    """Share of rows whose neighbour *set* differs between ``idx`` and ``ref`` (``(..., N, k)``)."""
    a, b = idx.sort(-1).values, ref.sort(-1).values
    return float((a != b).any(-1).double().mean())


def changed_entries(idx: torch.Tensor, ref: torch.Tensor) -> float:
    """Share of neighbour entries of ``idx`` not in the same row of ``ref`` (``(S, N, k)``)."""
    from tasks.metrics.neighbors import is_member

    return 1.0 - float(is_member(ref.sort(-1).values, idx).double().mean())


def gaussian_pair(n: int, width: int, seed: int, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised isotropic Gaussian rows ``x`` and ``y = x + g`` (``g`` an independent
    Gaussian of the same scale, so ``y`` is isotropic too): all similarities alike (the hardest
    case for a reduced-precision search), and a mid-range ``mutual_knn``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    y = x + torch.randn(n, width, generator=g)
    return (torch.nn.functional.normalize(x, dim=1).to(device),
            torch.nn.functional.normalize(y, dim=1).to(device))


def bench_precision_error(args: argparse.Namespace, device: torch.device) -> None:
    """Error of the opt-in bfloat16 neighbour search against exact fp32, width 1024.

    Two data sets per ``N``: isotropic Gaussians (``gaussian_pair``), and the low-rank + noise
    pair of ``make_layers`` (a shared 16-dim latent). For each ``knn_precision`` mode: share of
    neighbour sets that differ from exact (over both sides' ``2N`` lists), ``mutual_knn`` and its
    absolute change, rows recomputed by the refinement's certificate, and time (both sides)."""
    from tasks.metrics.bf16_neighbors import reduced_topk
    from tasks.metrics.neighbors import topk_neighbors

    k, width = args.topk, 1024
    header = (f"{'data':<8} {'N':>6} {'knn_precision':<12} {'time s':>7} {'lists changed':>13} "
              f"{'entries':>8} {'mutual_knn':>10} {'|diff|':>8} {'recomputed':>10}")
    print("\nopt-in bf16 neighbour search vs exact fp32 (width 1024, topk "
          f"{k}, device {device}, threads {torch.get_num_threads()})")
    print(header)
    print("-" * len(header))
    for n in args.precision_error:
        for data in ("gaussian", "lowrank"):
            if data == "gaussian":
                x, y = gaussian_pair(n, width, 10, device)
            else:
                x, y = make_layers(n, 1, width, 2, device)[0], make_layers(n, 1, width, 3, device)[0]

            def score_of(ix: torch.Tensor, iy: torch.Tensor) -> float:
                return overlap_total(ix, iy) / (n * k)

            t_exact, (ex, ey) = timed(lambda: (topk_neighbors(x, k)[1], topk_neighbors(y, k)[1]),
                                      device, 1)
            ref = torch.stack([ex, ey])
            s_exact = score_of(ex, ey)
            print(f"{data:<8} {n:>6} {'exact':<12} {t_exact:>7.2f} {'-':>13} {'-':>8} "
                  f"{s_exact:>10.5f} {'-':>8} {'-':>10}")
            for mode in ("bf16", "bf16-refine"):
                refine = mode == "bf16-refine"
                t, (rx, ry) = timed(lambda: (reduced_topk(x, k, refine=refine),
                                             reduced_topk(y, k, refine=refine)), device, 1)
                s = score_of(rx.indices, ry.indices)
                both = torch.stack([rx.indices, ry.indices])
                changed, entries = changed_share(both, ref), changed_entries(both, ref)
                redo = f"{(rx.recomputed + ry.recomputed) / (2 * n):.2%}" if refine else "-"
                print(f"{data:<8} {n:>6} {mode:<12} {t:>7.2f} {changed:>13.2%} {entries:>8.2%} "
                      f"{s:>10.5f} {abs(s - s_exact):>8.1e} {redo:>10}")
    print("(lists changed: share of the 2N neighbour sets that differ from exact; entries: share "
          "of neighbours replaced; recomputed: rows whose certificate failed)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny sizes (CI smoke run, seconds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default). On the 2-core CI VM one thread "
                        "is faster than two for both GEMM and elementwise kernels")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--layers-a", type=int, default=13)
    p.add_argument("--layers-b", type=int, default=13)
    p.add_argument("--width-a", type=int, default=768)
    p.add_argument("--width-b", type=int, default=768)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--copies", type=int, default=1,
                   help="model A's rows in groups of this many equal rows (an image's captions, unit: sample)")
    p.add_argument("--metrics", nargs="+", default=["mutual_knn", "cka", "cknna"],
                   choices=sorted(PAPER))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paper-pairs", type=int, default=0,
                   help="time the paper loop on this many random layer pairs (0: all)")
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="after the layer table, one profiled layer_matrix call per metric: its costliest operators")
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--calibrate", nargs="+", default=["mutual_knn"])
    p.add_argument("--large-n", type=int, default=0)
    p.add_argument("--large-n-precisions", nargs="+", default=["exact", "bf16", "bf16-refine"],
                   choices=["exact", "bf16", "bf16-refine"],
                   help="knn_precision modes timed side by side by --large-n ('exact' first "
                        "gives the ratio and the changed-list share)")
    p.add_argument("--large-n-repeats", type=int, default=2,
                   help="--large-n: timed runs per mode (the best is reported, and the first)")
    p.add_argument("--large-n-warmup", type=int, default=4096,
                   help="--large-n: rows of the untimed warm-up run of every code path")
    p.add_argument("--large-n-blocks", type=float, nargs="*", default=[128, 512, 2048],
                   metavar="MIB",
                   help="--large-n: exact-search block sizes to sweep, MiB of one float32 "
                        "similarity block (none: no sweep)")
    p.add_argument("--precision-error", type=int, nargs="*", default=[], metavar="N",
                   help="error of the bf16 neighbour search vs exact at these N (Gaussian and "
                        "low-rank + noise data, width 1024), e.g. --precision-error 2000 20000")
    args = p.parse_args(argv)
    if args.small:
        args.n, args.layers_a, args.layers_b, args.width_a, args.width_b = 128, 3, 4, 32, 24
        args.permutations = min(args.permutations, 20)
        args.large_n = min(args.large_n, 2000) if args.large_n else 0
        args.precision_error = [min(n, 2000) for n in args.precision_error]
        args.repeats = 1
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.skip_layers:
        bench_layers(args, device)
    if args.large_n:
        bench_large_n(args, device)
    if args.precision_error:
        bench_precision_error(args, device)


if __name__ == "__main__":
    main()
