"""One row per image: the paired samples of one image (its captions) averaged into one row.

With several captions per image (COCO's five, ``captions: all``), a dataset holds one sample per
image–caption pair. Aligning those rows as they are repeats each image's vision features once
per caption: the copies are each other's nearest neighbours in every vision layer, and which
copies fill the last places of a k-NN list is tie-breaking. ``alignment.unit: image`` aligns one
row per image instead: for every model and layer, the mean of the pooled vectors of the image's
samples (for a vision model those are identical, so the mean is that vector, bit for bit; for a
language model it is the mean caption embedding), taken before the outlier clamp and L2
normalisation. Pure numpy: no storage, no Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["ImageRows", "image_rows", "mean_rows"]

_COLUMNS = 256


@dataclass(frozen=True)
class ImageRows:
    """How ``N`` sample rows fold into ``G`` image rows.

    ``image_ids``: ``(G,)`` the images, sorted; ``order``: ``(N,) int64`` the sample rows sorted
    by image (stable, so an image's samples keep their order); ``starts``: ``(G,) int64`` where
    each image's samples begin in ``order``; ``counts``: ``(G,) int64`` samples per image.
    """

    image_ids: list[str]
    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.image_ids)


def image_rows(sample_ids: Sequence[str], image_of: dict[str, str]) -> ImageRows:
    """Group sample rows by their image: ``image_of`` maps each ``sample_id`` to its ``image_id``.

    Raises:
        ValueError: a sample id that ``image_of`` does not know (with a few examples).
    """
    missing = [s for s in sample_ids if s not in image_of]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) have no image_id in the dataset (e.g. {', '.join(map(repr, missing[:3]))})")
    images = np.asarray([image_of[s] for s in sample_ids], dtype=object)
    unique, inverse, counts = np.unique(images.astype(str), return_inverse=True, return_counts=True)
    order = np.argsort(inverse.ravel(), kind="stable").astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ImageRows([str(u) for u in unique], order, starts, counts.astype(np.int64))


def mean_rows(x: np.ndarray, rows: ImageRows) -> np.ndarray:
    """``(N, D)`` sample rows → ``(G, D) float32`` image rows: each image's mean, summed in
    float64 (so ``k`` identical float32 rows average to that row exactly)."""
    if x.shape[0] != rows.order.size:
        raise ValueError(f"{x.shape[0]} rows, but the grouping is of {rows.order.size} samples")
    if rows.n_images == 0:
        return np.zeros((0, x.shape[1]), dtype=np.float32)
    if rows.n_images == rows.order.size:  # one sample per image: the rows themselves
        return np.ascontiguousarray(x[rows.order], dtype=np.float32)
    out = np.empty((rows.n_images, x.shape[1]), dtype=np.float32)
    for c in range(0, x.shape[1], _COLUMNS):  # a block of columns at a time: float64 memory N x _COLUMNS
        block = x[rows.order, c:c + _COLUMNS].astype(np.float64)
        out[:, c:c + _COLUMNS] = np.add.reduceat(block, rows.starts, axis=0) / rows.counts[:, None]
    return out
