"""Feature preparation of the paper: clamp outliers at a quantile of |x|, then L2-normalise rows.

This reproduces ``remove_outliers`` (``metrics.py``) and the ``F.normalize`` done in
``compute_score`` (``measure_alignment.py``) of the paper's code (minyoungg/platonic-rep):

1. threshold ``t`` (skipped when ``q == 1``):

   - ``exact=True``: sort ``|x|`` over the whole tensor and take the element at index
     ``int(q * numel)`` (no interpolation; the paper's code, used with ``--precise``);
   - ``exact=False``: for every sample (dim 0 of the paper's ``(N, L, D)`` tensor) take the
     linearly interpolated ``q``-quantile of its ``|x|`` values (``torch.quantile`` semantics),
     then average these per-sample quantiles over the samples. Nothing is sampled; the
     approximation is "mean of per-sample quantiles" instead of "quantile of all values".

2. ``x = clamp(x, -t, t)``;
3. ``normalize=True``: each row (sample) divided by ``max(||row||_2, 1e-12)``.

Scope of the threshold, as in the paper: a single ``(N, D)`` layer gets its own threshold; a list
of layers gets one threshold per layer (the paper's list branch); a 3-D ``(L, N, D)`` tensor gets
ONE threshold over all its layers (the paper's tensor branch, whose per-sample quantile pools the
sample's values over every layer). ``per_layer=True`` forces one threshold per layer for 3-D
input too. Computation is float32 (float64 inputs stay float64); the result has the input's kind
(numpy in, numpy out; tensor in, tensor on the same device out; list in, list out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._arrays import ArrayLike, to_tensor


def outlier_threshold(x: torch.Tensor, q: float, exact: bool = False) -> torch.Tensor:
    """Clamp threshold of the paper for features ``x`` of shape ``(N, ...)``: a 0-d tensor.

    ``exact``: ``sort(|x|.flatten())[int(q * numel)]``. Otherwise the mean over dim 0 of the
    per-sample linearly interpolated ``q``-quantiles of ``|x|``.
    """
    # Order statistics by selection (kthvalue), not a full sort: the same values, without the
    # sort's int64 index tensor and its O(M log M) work (an (N, L, D) model is ~10^8 values).
    a = x.abs()
    if exact:
        flat = a.reshape(-1)
        index = min(int(q * flat.numel()), flat.numel() - 1)
        return flat.kthvalue(index + 1).values
    rows = a.reshape(a.shape[0], -1)  # (N, M)
    pos = q * (rows.shape[1] - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, rows.shape[1] - 1)
    low = rows.kthvalue(lo + 1, dim=1).values
    high = low if hi == lo else rows.kthvalue(hi + 1, dim=1).values
    weight = torch.tensor(pos - lo, dtype=rows.dtype, device=rows.device)
    return torch.lerp(low, high, weight).mean()


def _prepare_tensor(t: torch.Tensor, q: float, exact: bool, normalize: bool,
                    sample_dim_first: bool) -> torch.Tensor:
    """Clamp + normalise one tensor. ``t``: ``(N, D)`` or ``(L, N, D)`` (then one threshold)."""
    if q < 1:
        pooled = t if sample_dim_first else t.transpose(0, 1)  # samples first, as in the paper
        thr = outlier_threshold(pooled, q, exact)
        t = t.clamp(-thr, thr)
    if normalize:
        t = torch.nn.functional.normalize(t, p=2, dim=-1)
    return t


def prepare(x: ArrayLike | Sequence[ArrayLike], q: float = 0.95, exact: bool = False,
            normalize: bool = True, per_layer: bool | None = None):
    """The paper's feature preparation: outlier clamp at a quantile of |x|, then L2 rows.

    Args:
        x: one layer ``(N, D)``, a ``(L, N, D)`` array/tensor, or a list of ``(N, D_l)`` layers
            (numpy or torch; any float dtype).
        q: quantile of ``|x|`` used as clamp threshold; ``q == 1`` disables the clamp.
        exact: exact sorted-element threshold instead of the mean of per-sample quantiles.
        normalize: divide each row by its L2 norm afterwards.
        per_layer: for 3-D input, ``True`` gives each layer its own threshold; ``None``/``False``
            keeps the paper's single threshold for the whole tensor. Lists are always per layer.

    Returns:
        The prepared features, same container kind and shape as ``x``; float32 (float64 stays
        float64).

    Example:
        >>> import numpy as np
        >>> z = prepare(np.random.default_rng(0).normal(size=(8, 4)))
        >>> bool(np.allclose(np.linalg.norm(z, axis=1), 1))
        True
    """
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if isinstance(x, (list, tuple)):
        return [prepare(layer, q=q, exact=exact, normalize=normalize) for layer in x]
    is_numpy = isinstance(x, np.ndarray)
    t = to_tensor(x)
    if t.ndim == 2:
        out = _prepare_tensor(t, q, exact, normalize, sample_dim_first=True)
    elif t.ndim == 3:
        if per_layer:
            out = torch.stack([_prepare_tensor(layer, q, exact, normalize, True) for layer in t])
        else:
            out = _prepare_tensor(t, q, exact, normalize, sample_dim_first=False)
    else:
        raise ValueError(f"expected (N, D) or (L, N, D), got shape {tuple(t.shape)}")
    return out.cpu().numpy() if is_numpy else out
