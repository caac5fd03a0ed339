"""Image decoding and preprocessing in worker processes, overlapped with the forward pass.

A vision extractor describes its CPU-side preprocessing as a *recipe*: plain data that a fresh
process can rebuild (no model, no torch state):

- `CropRecipe` (EfficientNet-Lite): decode, central crop, resize; the worker returns the
  `(B, S, S, 3) uint8` crops and the parent normalises them (4x less to move than float32).
- `ProcessorRecipe` (Hugging Face vision): the image processor's class name (a class of the
  `transformers` namespace) and its JSON config; the worker rebuilds the processor once and
  returns `(B, 3, H, W) float32` pixel values, or for a patch processor (SigLIP 2 NaFlex) its
  patches with their mask and grid (`PatchPixels`).

`run_recipe(recipe, items)` is the one function both paths call: in process (`Extractor.prepare`)
and in a worker, so the results are identical by construction (and tested).

Workers are started with the ``forkserver`` context (``spawn`` where it is missing), never
``fork`` (the parent runs torch's thread pools). Between our own processes only recipes, the
items (encoded image bytes, paths or PIL images) and numpy arrays travel; nothing from outside
is unpickled. One pool is kept per process and reused across calls (`get_pool`); it is shut down
by `shutdown_pool` (called by `Extractor.close`) or at exit.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence, Union

import numpy as np

from tasks.extract.images import ImageItem, center_crop_resize, decode_image
from tasks.extract.refusals import raise_if_mixed_sizes

#: Fewest items for which worker processes pay off (starting them costs ~1-3 s).
PROCESS_MIN_ITEMS = 512


@dataclass(frozen=True)
class CropRecipe:
    """Decode, centre-crop ``crop_fraction`` of the shorter side, resize to ``size`` x ``size``
    with PIL filter ``resample``; output `(B, size, size, 3) uint8`."""

    size: int
    crop_fraction: float
    resample: int


@dataclass(frozen=True)
class ProcessorRecipe:
    """A `transformers` image processor: ``getattr(transformers, class_name).from_dict(json.loads(config_json))``;
    output `(B, 3, H, W) float32` (``processor(images=..., return_tensors='pt')['pixel_values']``), or
    `PatchPixels` from a patch processor (`apply_processor`)."""

    class_name: str
    config_json: str


@dataclass(frozen=True)
class PatchPixels:
    """What a patch processor (SigLIP 2's NaFlex ``Siglip2ImageProcessorPil``) gives for B images:
    each resized keeping its aspect ratio to at most N = ``max_num_patches`` patches of p x p pixels,
    cut into patches, padded with zero patches to N.

    pixel_values: `(B, N, p * p * C) float32` patches, row-major over the image's patch grid.
    pixel_attention_mask: `(B, N) int32`, 1 for the image's patches, 0 for padding.
    spatial_shapes: `(B, 2) int64`, the image's patch rows and columns (rows * cols = its mask's sum).
    """

    pixel_values: np.ndarray
    pixel_attention_mask: np.ndarray
    spatial_shapes: np.ndarray


Recipe = Union[CropRecipe, ProcessorRecipe]


def crop_batch(recipe: CropRecipe, items: Sequence[ImageItem]) -> np.ndarray:
    """`(B, S, S, 3) uint8` centre crops (see `CropRecipe`)."""
    crops = [center_crop_resize(decode_image(it), recipe.size, recipe.crop_fraction, recipe.resample) for it in items]
    return np.stack([np.asarray(img, dtype=np.uint8) for img in crops])


def apply_processor(processor: Any, items: Sequence[ImageItem]) -> np.ndarray | PatchPixels:
    """`(B, 3, H, W) float32` pixel values of the decoded items through a transformers image
    processor; `PatchPixels` from a patch processor (its output has ``spatial_shapes``). A
    vision-language processor's `(samples, images, 3, H, W)` output is flattened to one row per item
    (`one_row_per_image`)."""
    images = [decode_image(it) for it in items]
    try:
        out = processor(images=images, return_tensors="pt")
    except ValueError as exc:
        raise_if_mixed_sizes(processor, images, exc)
        raise
    if "spatial_shapes" in out:
        return PatchPixels(*(np.ascontiguousarray(out[key].numpy()) for key in
                             ("pixel_values", "pixel_attention_mask", "spatial_shapes")))
    pixels = out["pixel_values"].numpy()
    if pixels.ndim == 5:
        mask = out.get("pixel_attention_mask")
        pixels = one_row_per_image(pixels, None if mask is None else mask.numpy(), len(images), type(processor).__name__)
    return np.ascontiguousarray(pixels)


class NotOneImagePerRow(ValueError):
    """An image processor's output that is not one unpadded image per input image (`one_row_per_image`)."""


def one_row_per_image(pixels: np.ndarray, mask: np.ndarray | None, n_items: int, processor: str) -> np.ndarray:
    """`(n_items, 3, H, W)` from the `(S, I, 3, H, W)` pixel values of a vision-language processor
    (Idefics3's and SmolVLM's with ``do_image_splitting`` off take a list of B images as one sample of
    B images: S = 1, I = B; each image squashed to ``max_image_size`` x ``max_image_size``), in the
    items' order. ``mask``: its `(S, I, H, W)` ``pixel_attention_mask`` (1 = pixel of the image).

    Raises `NotOneImagePerRow` naming the processor when its output is not one unpadded image per
    item: S x I differs from ``n_items`` (tiles, as LLaVA-NeXT's any-resolution grid gives, or
    padding images), or the mask marks padded pixels."""
    samples, per_sample = pixels.shape[:2]
    if samples * per_sample != n_items:
        raise NotOneImagePerRow(f"the image processor {processor} gave {samples} x {per_sample} images for {n_items} "
                                "input image(s), not one per input (tiles of each image?)")
    if mask is not None and not mask.all():
        raise NotOneImagePerRow(f"the image processor {processor} padded some images (pixel_attention_mask has 0s), "
                                "whose padding the features would average")
    return pixels.reshape(n_items, *pixels.shape[2:])


@lru_cache(maxsize=8)
def _processor(class_name: str, config_json: str) -> Any:
    import transformers

    cls = getattr(transformers, class_name, None)
    if not isinstance(cls, type) or not hasattr(cls, "from_dict"):
        raise ValueError(f"{class_name!r} is not a transformers image processor class")
    return cls.from_dict(json.loads(config_json))


def run_recipe(recipe: Recipe, items: Sequence[ImageItem]) -> np.ndarray | PatchPixels:
    """Preprocess a batch as the recipe says (runs in a worker process or in process)."""
    if isinstance(recipe, CropRecipe):
        return crop_batch(recipe, items)
    if isinstance(recipe, ProcessorRecipe):
        return apply_processor(_processor(recipe.class_name, recipe.config_json), items)
    raise TypeError(f"unknown recipe {type(recipe).__name__}")


def processor_recipe(processor: Any) -> ProcessorRecipe | None:
    """The recipe of a transformers image processor, or None when a worker could not rebuild the
    very same processor (a class outside the `transformers` namespace, e.g. remote code; a config
    that does not survive JSON)."""
    import transformers

    name = type(processor).__name__
    if getattr(transformers, name, None) is not type(processor) or not hasattr(processor, "to_dict"):
        return None
    try:
        config = json.dumps(processor.to_dict(), sort_keys=True)
        rebuilt = _processor(name, config)
        same = json.dumps(rebuilt.to_dict(), sort_keys=True) == config
    except (TypeError, ValueError):
        return None
    return ProcessorRecipe(name, config) if same else None


# --------------------------------------------------------------------------- the worker pool
_LOCK = threading.Lock()
_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0


def _worker_init() -> None:
    """One compute thread per worker: the parallelism comes from the processes."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    torch = sys.modules.get("torch")  # preloaded by the fork server
    if torch is not None:
        torch.set_num_threads(1)


#: Modules the fork server imports once, so that workers fork with them loaded (the transformers
#: image processors take seconds to import; every worker would pay it otherwise).
_PRELOAD_BASE = ["tasks.extract.image_pool"]
_PRELOAD_PROCESSORS = ["transformers.image_processing_utils", "transformers.image_processing_backends"]


def _context(preload_processors: bool) -> multiprocessing.context.BaseContext:
    """``forkserver`` (``spawn`` where missing). The preload list applies when the fork server
    starts, i.e. on the first pool of this process."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD_BASE + (_PRELOAD_PROCESSORS if preload_processors else []))
        return ctx
    return multiprocessing.get_context("spawn")


def get_pool(workers: int, recipe: Recipe | None = None) -> ProcessPoolExecutor:
    """The process's worker pool with ``workers`` processes (re-created when the count changes).
    ``recipe``: what the pool will run (a `ProcessorRecipe` preloads transformers in the fork server)."""
    global _POOL, _POOL_WORKERS
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with _LOCK:
        if _POOL is not None and _POOL_WORKERS != workers:
            _POOL.shutdown(wait=True, cancel_futures=True)
            _POOL = None
        if _POOL is None:
            ctx = _context(isinstance(recipe, ProcessorRecipe))
            _POOL = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
            _POOL_WORKERS = workers
        return _POOL


def shutdown_pool() -> None:
    """Stop the worker processes (a later `get_pool` starts new ones)."""
    global _POOL, _POOL_WORKERS
    with _LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
        _POOL, _POOL_WORKERS = None, 0


atexit.register(shutdown_pool)


def usable_cpus() -> int:
    """CPUs this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers(accelerator: bool, cpus: int | None = None) -> int:
    """Decode processes to use by default: 0 (decode in process) on 2 CPUs or fewer, where a worker
    only takes cores from the model (measured, see BENCHMARKS.md); else half the CPUs beside an
    accelerator (at most 8), a quarter beside a CPU model (at most 4).

    ``PRH_DECODE_WORKERS`` (an integer >= 0) overrides it.
    """
    raw = os.environ.get("PRH_DECODE_WORKERS", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"PRH_DECODE_WORKERS must be an integer >= 0, got {raw!r}")
        return value
    cpus = usable_cpus() if cpus is None else cpus
    if cpus <= 2:
        return 0
    return min(8, cpus // 2) if accelerator else min(4, cpus // 4)
