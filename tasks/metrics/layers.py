"""Layer-list helpers: add the "all layers concatenated" candidate to a model's layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._arrays import ArrayLike, split_layers, to_tensor


def with_concatenated(xs: ArrayLike | Sequence[ArrayLike], normalize: bool = True) -> list[ArrayLike]:
    """``xs``'s layers plus one extra layer: all layers concatenated along features.

    The extra candidate lets the model-pair max also consider the whole network at once.
    ``normalize`` L2-normalises the concatenated rows (for L2-normalised layers this is the
    concatenation divided by ``sqrt(L)``). Layers keep their kind (numpy or torch).

    Returns:
        A list of ``L + 1`` ``(N, D_l)`` arrays; the last is ``(N, sum D_l)``.
    """
    layers = split_layers(xs)
    cat = torch.cat([to_tensor(x) for x in layers], dim=1)
    if normalize:
        cat = torch.nn.functional.normalize(cat, p=2, dim=1)
    extra: ArrayLike = cat.cpu().numpy() if isinstance(layers[0], np.ndarray) else cat
    return list(layers) + [extra]
