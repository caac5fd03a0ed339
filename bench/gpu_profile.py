"""Where the GPU time goes (a diagnostic, not a benchmark): engine layer_matrix, the 7B LM and the
giant ViT extraction, each timed against plain alternatives and profiled with torch.profiler
(tables in DIR/profiles.txt, one section per profile; BENCHMARKS.md, "GPU (session 22)", cites what it found).

    python bench/gpu_profile.py --out DIR [--small] [--parts metrics,llm,vit,shapes,vitprep]

Parts: ``metrics`` (layer_matrix against a batched prototype; Gram products per layer, per
stack, and per stack in row strips of 128/256/512), ``llm`` / ``vit`` (extract_all
against the model's plain forward, image preparation alone), ``shapes`` (first call at a new
input shape against warm calls, per attention backend), ``vitprep`` (the ViT's extract_all with
preparing threads against processes, PIL images and JPEG bytes). Exit 1 when a part failed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OUT = Path(".")


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def best(fn, repeats: int = 3) -> float:
    t = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        t = min(t, time.perf_counter() - t0)
    return t


def say(*a) -> None:
    print(*a, flush=True)


def prof(fn, name: str) -> None:
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV.type == "cuda" else [])
    sync()
    with profile(activities=acts) as p:
        fn()
        sync()
    ka = p.key_averages()
    key = "cuda_time_total" if DEV.type == "cuda" else "cpu_time_total"
    text = ka.table(sort_by=key, row_limit=30, max_name_column_width=60)
    text += "\n\nby self CPU time\n" + ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
    with open(OUT / "profiles.txt", "a") as f:  # one file: the device tool brings back a few files only
        f.write(f"\n===== {name}\n{text}\n")
    say(f"[profile {name} -> profiles.txt]")
    say("\n".join(text.splitlines()[:22]))


def part_metrics(small: bool) -> None:
    from bench_metrics import make_layers
    from tasks.metrics import Representation, layer_matrix

    la, wa, lb, wb, n = (4, 64, 5, 32, 128) if small else (33, 4096, 40, 1536, 1024)
    xs = make_layers(n, la, wa, 1, DEV)
    ys = make_layers(n, lb, wb, 2, DEV)
    floor = best(lambda: [x @ x.T for x in xs + ys])
    say(f"metrics: floor fp32 {1e3 * floor:.2f} ms")
    if DEV.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        say(f"  floor tf32 {1e3 * best(lambda: [x @ x.T for x in xs + ys]):.2f} ms")
        torch.backends.cuda.matmul.allow_tf32 = False
    X, Y = torch.stack(xs), torch.stack(ys)
    say(f"  batched bmm grams {1e3 * best(lambda: (X @ X.transpose(1, 2), Y @ Y.transpose(1, 2))):.2f} ms")
    from tasks.metrics.gram import gram_stack, stacked_gram_upper

    for block in (128, 256, 512):  # the engine's stacks: gram.BLOCK row strips of each stack
        strips = lambda: (stacked_gram_upper(X, block), stacked_gram_upper(Y, block))  # noqa: E731
        say(f"  stacked row-strip grams, block {block}: {1e3 * best(strips):.2f} ms")
    say(f"  gram_stack of the layer lists (copy, strips, symmetrise): {1e3 * best(lambda: (gram_stack(xs), gram_stack(ys))):.2f} ms")
    k = 10

    def proto_knn():
        ga, gb = X @ X.transpose(1, 2), Y @ Y.transpose(1, 2)
        ga.diagonal(dim1=1, dim2=2).fill_(-float("inf"))
        gb.diagonal(dim1=1, dim2=2).fill_(-float("inf"))
        ia = ga.topk(k, dim=2).indices  # (La, N, k)
        ib = gb.topk(k, dim=2).indices
        ha = torch.zeros(la, n, n, device=DEV, dtype=torch.bfloat16).scatter_(2, ia, 1.0)
        hb = torch.zeros(lb, n, n, device=DEV, dtype=torch.bfloat16).scatter_(2, ib, 1.0)
        # overlap counts per row summed: (La, N*N) @ (N*N, Lb), fp32 accumulate
        return (ha.reshape(la, -1).float() @ hb.reshape(lb, -1).float().T) / (n * k)

    say(f"  prototype batched mutual_knn {1e3 * best(proto_knn):.2f} ms")
    for metric in ("mutual_knn", "cka", "cknna"):
        run = lambda: layer_matrix(metric, Representation(xs), Representation(ys), topk=k)  # noqa: E731
        run()
        say(f"  layer_matrix {metric} {1e3 * best(run):.2f} ms")
        if metric == "mutual_knn":
            ref = torch.as_tensor(run(), dtype=torch.float64)
            say(f"  prototype vs engine max diff {float((proto_knn().double().cpu() - ref).abs().max()):.2e}")
        prof(run, f"metric_{metric}")


def part_llm(small: bool) -> None:
    from bench_extract import LLAMA_7B, SMALL, _fast_random

    from tasks.extract import ModelSpec, extract_all
    from tasks.extract.extractor import batch_order

    cfg = SMALL["llm"] if small else LLAMA_7B
    n = 64 if small else 1024
    spec = ModelSpec(name="llama-7b-shaped", loader="random_hf", id="LlamaConfig", modality="language",
                     config=cfg, dtype="bfloat16" if DEV.type == "cuda" else "float32", batch_size=256, max_length=64)
    rng = np.random.default_rng(0)
    words = ["red", "apple", "on", "a", "wooden", "table", "next", "to", "the", "window", "cat", "sleeps"]
    captions = [" ".join(rng.choice(words, 10)) for _ in range(n)]
    ex = _fast_random(spec, str(DEV))
    say(f"llm: attn {ex.model.config._attn_implementation}, params {ex.param_count / 1e9:.2f} B")
    extract_all(ex, captions[:256])
    say(f"  extract_all {best(lambda: extract_all(ex, captions), 2):.3f} s")
    say(f"  extract_all no nll {best(lambda: extract_all(ex, captions, bits_per_byte=False), 2):.3f} s")
    order = batch_order(ex.sort_lengths(captions), n)
    batches = [[captions[i] for i in order[j:j + 256]] for j in range(0, n, 256)]
    t0 = time.perf_counter()
    prepared = [ex.prepare(b) for b in batches]
    say(f"  prepare (tokenize+pin) all {time.perf_counter() - t0:.3f} s; shapes {[tuple(p.input_ids.shape) for p in prepared]}")
    ids = [(p.input_ids.to(DEV), p.attention_mask.to(DEV)) for p in prepared]

    def plain(lm: bool, hs: bool):
        with torch.inference_mode():
            for i, m in ids:
                (ex.lm if lm else ex.model)(input_ids=i, attention_mask=m, output_hidden_states=hs, use_cache=False)

    for lm in (False, True):
        for hs in (False, True):
            say(f"  plain forward lm={lm} hidden={hs}: {best(lambda: plain(lm, hs), 2):.3f} s")
    with torch.inference_mode():
        say(f"  ex.forward only (prepared, nll): {best(lambda: [ex.forward(p, with_nll=True) for p in prepared], 2):.3f} s")
    prof(lambda: extract_all(ex, captions[:512]), "llm_extract")
    ex.close()


def part_vit(small: bool) -> None:
    from PIL import Image

    from bench_extract import DINOV2_G, SMALL, _fast_random, warm_workers

    from tasks.extract import ModelSpec, extract_all
    from tasks.extract.extractor import PreparePlan, _prepared, plan_prepare

    cfg = SMALL["vit"] if small else DINOV2_G
    n = 64 if small else 1024
    bs = 16 if small else 64
    size = cfg["image_size"]
    spec = ModelSpec(name="dinov2-g-shaped", loader="random_hf", id="Dinov2Config", modality="vision",
                     pooling="cls", config=cfg, dtype="bfloat16" if DEV.type == "cuda" else "float32", batch_size=bs)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    ex = _fast_random(spec, str(DEV))
    say(f"vit: attn {ex.model.config._attn_implementation}, params {ex.param_count / 1e9:.2f} B")
    plan = plan_prepare(ex, n, mode="processes")
    extract_all(ex, images[:bs], prepare=plan.mode, workers=plan.workers)
    warm_workers(ex, images, plan.workers)
    say(f"  plan {plan}")
    say(f"  extract_all {best(lambda: extract_all(ex, images, prepare=plan.mode, workers=plan.workers), 2):.3f} s")
    batches = [np.arange(i, min(i + bs, n)) for i in range(0, n, bs)]

    def stream(p: PreparePlan):
        return [x.pixel_values.shape for x in _prepared(ex, images, batches, p)]

    say(f"  prepare stream only (processes, {plan.workers}): {best(lambda: stream(plan), 1):.3f} s")
    say(f"  prepare stream only (threads 8): {best(lambda: stream(PreparePlan('threads', 8)), 1):.3f} s")
    one = ex.prepare(images[:bs])
    say(f"  one batch pixel_values {tuple(one.pixel_values.shape)} {one.pixel_values.dtype}, pinned {one.pixel_values.is_pinned()}")
    x = one.pixel_values.to(DEV, dtype=ex.dtype)

    def plain(hs: bool):
        with torch.inference_mode():
            for _ in batches:
                ex.model(pixel_values=x, output_hidden_states=hs)

    for hs in (False, True):
        say(f"  plain forward (device-resident pixels) hidden={hs}: {best(lambda: plain(hs), 2):.3f} s")
    with torch.inference_mode():
        say(f"  ex.forward only (one prepared batch x {len(batches)}): {best(lambda: [ex.forward(one) for _ in batches], 2):.3f} s")
    prof(lambda: extract_all(ex, images[:4 * bs], prepare=plan.mode, workers=plan.workers), "vit_extract")
    ex.close()


def _backends(name: str):
    """A context manager choosing SDPA backends: default, no_cudnn, cudnn."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "default":
        return contextlib.nullcontext()
    if name == "no_cudnn":
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH])


def first_and_warm(fn) -> tuple[float, float, float]:
    out = []
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out[0], out[1], out[2]


def part_shapes(small: bool) -> None:
    """First call of a new input shape against warm calls, per SDPA backend choice."""
    from bench_extract import DINOV2_G, LLAMA_7B, SMALL, _fast_random

    from tasks.extract import ModelSpec

    dt = "bfloat16" if DEV.type == "cuda" else "float32"
    cfg = SMALL["llm"] if small else LLAMA_7B
    spec = ModelSpec(name="llama-7b-shaped", loader="random_hf", id="LlamaConfig", modality="language",
                     config=cfg, dtype=dt, batch_size=256, max_length=64)
    ex = _fast_random(spec, str(DEV))
    t_next = iter(range(20, 64))
    for backend, masked in (("default", True), ("no_cudnn", True), ("default", False), ("cudnn", True),
                            ("no_cudnn", False)):
        for _ in range(2):
            T = next(t_next)
            ids = torch.randint(3, 200, (256, T), device=DEV)
            m = torch.ones_like(ids)
            if masked:
                m[::2, T - 7:] = 0

            def fwd():
                with _backends(backend), torch.inference_mode():
                    ex.lm(input_ids=ids, attention_mask=m, output_hidden_states=True, use_cache=False)
            try:
                f, w1, w2 = first_and_warm(fwd)
                say(f"llm T={T} {backend} masked={masked}: first {f:.3f} s, warm {w1:.3f} / {w2:.3f} s")
            except Exception as exc:  # noqa: BLE001
                say(f"llm T={T} {backend} masked={masked}: FAILED {exc!r}"[:300])
    ids = torch.randint(3, 200, (256, 61), device=DEV)
    m = torch.ones_like(ids)
    m[::2, 54:] = 0

    def cold():
        with torch.inference_mode():
            ex.lm(input_ids=ids, attention_mask=m, output_hidden_states=True, use_cache=False)
    prof(cold, "llm_cold_T61")
    ex.close()
    del ex
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
    cfg = SMALL["vit"] if small else DINOV2_G
    spec = ModelSpec(name="dinov2-g-shaped", loader="random_hf", id="Dinov2Config", modality="vision",
                     pooling="cls", config=cfg, dtype=dt, batch_size=64)
    ex = _fast_random(spec, str(DEV))
    size = cfg["image_size"]
    for backend, b in (("default", 48), ("no_cudnn", 40), ("default", 64), ("no_cudnn", 64)):
        x = torch.randn(b, 3, size, size, device=DEV).to(ex.dtype)

        def fwdv():
            with _backends(backend), torch.inference_mode():
                ex.model(pixel_values=x, output_hidden_states=True)
        f, w1, w2 = first_and_warm(fwdv)
        say(f"vit batch={b} {backend}: first {f:.3f} s, warm {w1:.3f} / {w2:.3f} s")
    ex.close()


def part_vitprep(small: bool) -> None:
    """extract_all of the giant ViT with worker threads against worker processes."""
    from PIL import Image

    from bench_extract import DINOV2_G, SMALL, _fast_random, warm_workers

    from tasks.extract import ModelSpec, extract_all
    from tasks.extract.extractor import plan_prepare

    cfg = SMALL["vit"] if small else DINOV2_G
    n, bs = (64, 16) if small else (1024, 64)
    size = cfg["image_size"]
    spec = ModelSpec(name="dinov2-g-shaped", loader="random_hf", id="Dinov2Config", modality="vision",
                     pooling="cls", config=cfg, dtype="bfloat16" if DEV.type == "cuda" else "float32", batch_size=bs)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    import io
    jpegs = []
    for im in images[: n // 4]:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    jpegs = jpegs * 4
    ex = _fast_random(spec, str(DEV))
    plan = plan_prepare(ex, n, mode="processes")
    extract_all(ex, images[:bs], prepare="threads", workers=plan.workers)
    extract_all(ex, images[:bs], prepare=plan.mode, workers=plan.workers)
    warm_workers(ex, images, plan.workers)
    ref = None
    for what, items in (("PIL", images), ("JPEG bytes", jpegs)):
        combos = [("processes", plan.workers), ("threads", plan.workers)] + ([("threads", 12)] if what != "PIL" else [])
        for mode, w in combos:
            feats = []
            t = best(lambda: feats.append(extract_all(ex, items, prepare=mode, workers=w)), 1)
            if what == "PIL":
                diff = 0.0 if ref is None else max(float(np.abs(a - b).max()) for a, b in zip(ref.layers, feats[-1].layers))
                ref = ref or feats[-1]
            else:
                diff = float("nan")
            say(f"vit {what} extract_all prepare={mode} workers={w}: {t:.3f} s (max diff vs first {diff:.1e})")
    ex.close()


def main() -> int:
    global OUT
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/prh-profile")
    p.add_argument("--small", action="store_true")
    p.add_argument("--parts", default="metrics,llm,vit")
    a = p.parse_args()
    OUT = Path(a.out)
    OUT.mkdir(parents=True, exist_ok=True)
    if DEV.type == "cuda":
        say(torch.cuda.get_device_name(), torch.__version__)
    failed = []
    for part in a.parts.split(","):
        t0 = time.perf_counter()
        try:
            {"metrics": part_metrics, "llm": part_llm, "vit": part_vit, "shapes": part_shapes,
             "vitprep": part_vitprep}[part](a.small)
        except Exception as exc:  # noqa: BLE001 - keep the other parts' figures
            import traceback
            traceback.print_exc()
            say(f"{part} FAILED: {exc!r}")
            failed.append(part)
        if DEV.type == "cuda":  # the part's models are gone with its frame: hand their memory back
            torch.cuda.empty_cache()
        say(f"== {part} took {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
