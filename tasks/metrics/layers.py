"""Layer-list helpers: add the "all layers concatenated" candidate to a model's layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._arrays import ArrayLike, split_layers, to_tensor
from .checks import check_flag


def _l2_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every row divided by ``max(||row||, 1e-12)`` (``F.normalize``)."""
    return torch.nn.functional.normalize(x, p=2, dim=1)


def with_concatenated(xs: ArrayLike | Sequence[ArrayLike], normalize: bool = True,
                      normalize_layers: bool = False) -> list[ArrayLike]:
    """``xs``'s layers plus one extra layer: all layers concatenated along features.

    The extra candidate lets the model-pair max also consider the whole network at once.
    ``normalize`` L2-normalises the concatenated rows (for L2-normalised layers this is the
    concatenation divided by ``sqrt(L)``). ``normalize_layers`` also L2-normalises each of the
    ``L`` single layers in the output; the concatenation is always built from the layers as
    given. The paper's candidate set (``measure_alignment.compute_score``: every single layer
    and the concatenation of the clamped layers, each normalised once) is
    ``with_concatenated(prepare(xs, normalize=False), normalize_layers=True)``: there a layer
    weighs in the concatenation by its norm. ``with_concatenated(prepare(xs))`` instead joins
    normalised layers, so every layer weighs the same. Layers keep their kind (numpy or torch).

    Args:
        xs: ``L`` layers: a sequence of ``(N, D_l)`` arrays or an ``(L, N, D)`` array/tensor.
        normalize: L2-normalise the rows of the concatenation.
        normalize_layers: L2-normalise the rows of every single layer returned.

    Returns:
        A list of ``L + 1`` ``(N, D_l)`` arrays; the last is ``(N, sum D_l)``.

    Raises:
        ValueError: ``normalize`` or ``normalize_layers`` not a bool (``'False'`` would read as
            true).
    """
    normalize, normalize_layers = check_flag("normalize", normalize), check_flag("normalize_layers", normalize_layers)
    layers = split_layers(xs)
    tensors = [to_tensor(x) for x in layers]
    cat = torch.cat(tensors, dim=1)
    if normalize:
        cat = _l2_rows(cat)
    if normalize_layers:
        layers = [_l2_rows(t).cpu().numpy() if isinstance(x, np.ndarray) else _l2_rows(t)
                  for x, t in zip(layers, tensors)]
    extra: ArrayLike = cat.cpu().numpy() if isinstance(layers[0], np.ndarray) else cat
    return list(layers) + [extra]
