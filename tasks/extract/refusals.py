"""Checks that only refuse: each raises a `ModelInputError` (or an error the extraction turns into
one) or returns None, and never changes what a model computes. So this module is left out of the
feature code version (``tasks.extract_task.FEATURE_CODE_EXCLUDED``), like `preflight` and `errors`:
a clearer or better-aimed refusal does not make every user extract every model again. Code that
shapes an input or a feature does not belong here.

- `check_vocabulary`: a tokenizer that cannot be the model's (special tokens only, too few or too
  many tokens for the model's embedding table).
- `raise_if_mixed_sizes` / `named_pixel_sizes`: a batch of images that an aspect-keeping image
  processor turns into pixel arrays of different sizes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from tasks.extract.errors import ModelInputError
from tasks.extract.spec import ModelSpec


def ordinary_tokens(tokenizer: Any) -> int:
    """Tokens of ``tokenizer`` that are not special tokens (``[CLS]``, ``<|endoftext|>``, ...)."""
    return max(0, len(tokenizer) - len(set(tokenizer.all_special_ids)))


def check_vocabulary(spec: ModelSpec, tokenizer: Any, config: Any) -> None:
    """Refuse a tokenizer that cannot be the model's: special tokens only (transformers builds one
    from a folder without tokenizer files, so every caption would read as unknown tokens), fewer
    than half the model's embedding rows (``config.vocab_size``), or more tokens than rows (an id
    past the table fails inside the forward: ``index out of range``). A small vocabulary of its own
    (a character-level tokenizer of a few dozen tokens) is a tokenizer like any other."""
    size = len(tokenizer)
    rows = getattr(config, "vocab_size", None)
    source = spec.tokenizer or spec.id
    special_only = ordinary_tokens(tokenizer) == 0
    if special_only or (isinstance(rows, int) and size < rows // 2):
        what = f"only its special tokens ({', '.join(tokenizer.all_special_tokens)})" if special_only else f"{size} tokens"
        raise ModelInputError(spec.name, spec.id, f"the tokenizer read from {source!r} has {what}"
                              f"{f' for a model with {rows} embedding rows' if isinstance(rows, int) else ''}: not this model's "
                              "tokenizer (a folder without tokenizer files?); name one with 'tokenizer:' (a hub id or a folder)")
    if isinstance(rows, int) and size > rows:
        raise ModelInputError(spec.name, spec.id, f"the tokenizer read from {source!r} has {size} tokens for a model with "
                              f"{rows} embedding rows: ids {rows}..{size - 1} would fail inside the model; use the model's "
                              "own tokenizer" + (" or leave config.vocab_size to the tokenizer" if spec.loader == "random_hf" else ""))


class MixedPixelSizes(ValueError):
    """Pixel arrays of different sizes for the images of one batch: an image processor that keeps
    each image's aspect ratio (a shortest-edge resize without a centre crop) fed images of different
    aspect ratios; they cannot be stacked into one batch (`raise_if_mixed_sizes`)."""


def raise_if_mixed_sizes(processor: Any, images: Sequence[Any], exc: BaseException) -> None:
    """Raise `MixedPixelSizes` (from ``exc``, the processor's own error on the whole batch) when
    ``processor`` gives two of the PIL ``images``, each alone, pixel arrays of different sizes and
    none of them fails alone; return otherwise (the caller re-raises ``exc``: an image the
    processor cannot take is that error, whatever the order of the batch)."""
    sizes: dict[tuple[int, int], tuple[int, int]] = {}  # pixel array (height, width) -> an image's (height, width)
    for image in images:
        try:
            pixels = processor(images=[image], return_tensors="np")["pixel_values"]
        except Exception:  # noqa: BLE001 - it fails on one image alone: not this problem, its own error stands
            return
        sizes.setdefault((int(pixels.shape[-2]), int(pixels.shape[-1])), (image.height, image.width))
    if len(sizes) > 1:
        (one, one_image), (other, other_image) = list(sizes.items())[:2]
        raise MixedPixelSizes(
            f"the image processor {type(processor).__name__} gives the images of one batch pixel arrays of "
            f"different sizes ({_hw(one)} from an image of {_hw(one_image)}, {_hw(other)} from one of "
            f"{_hw(other_image)}; height x width): it keeps each image's aspect ratio (a shortest-edge resize "
            "without a centre crop)") from exc


def _hw(shape: tuple[int, int]) -> str:
    return f"{shape[0]} x {shape[1]}"


@contextlib.contextmanager
def named_pixel_sizes(spec: ModelSpec) -> Iterator[None]:
    """`ModelInputError` naming the model and the fix for a `MixedPixelSizes` raised inside (in
    this process or in an image worker's)."""
    try:
        yield
    except MixedPixelSizes as exc:
        raise ModelInputError(spec.name, spec.id, f"{exc}, so images of different aspect ratios cannot share a batch: "
                              "set crop_pct (1.0 keeps the whole shorter side) and image_size (the side of the square "
                              "it keeps) on the model's entry") from exc
