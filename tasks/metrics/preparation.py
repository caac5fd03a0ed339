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
input too; ``per_layer=False`` gives a list one pooled threshold. The pooled threshold is found a
block of samples at a time (``pooled_outlier_threshold``): no stacked copy of the model's layers;
for a list mixing float32 and float64 layers it is found in float64, and each layer keeps its own
dtype. Computation is float32 (float64 inputs stay float64); the result has the input's kind
(numpy in, numpy out; tensor in, tensor on the same device out; list in, list out). Nested
Python lists are read as ``score`` and ``split_layers`` read them: lists of numbers are the rows
of ONE ``(N, D)`` layer, returned as a numpy array (plain Python data in, numpy out), and a
nested-list layer inside a list of layers comes back as a numpy array too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._arrays import (ArrayLike, as_array, check_finite, from_nested, is_nested_layer, split_layers, to_tensor,
                      unsupported_container)
from .checks import check_flag, check_real


#: Rows of a model's layers pooled at once when a per-sample quantile spans every layer: blocks of
#: at most this many values (64 MiB of float32), so no (N, L, D) copy is ever made.
POOLED_BLOCK_VALUES = 1 << 24


def outlier_threshold(x: torch.Tensor, q: float, exact: bool = False) -> torch.Tensor:
    """Clamp threshold of the paper for features ``x`` of shape ``(N, ...)``: a 0-d tensor.

    ``exact``: ``sort(|x|.flatten())[int(q * numel)]``. Otherwise the mean over dim 0 of the
    per-sample linearly interpolated ``q``-quantiles of ``|x|``.
    """
    return pooled_outlier_threshold([x.reshape(x.shape[0], -1)], q, exact)


def pooled_outlier_threshold(layers: Sequence[torch.Tensor], q: float, exact: bool = False,
                             block_values: int = POOLED_BLOCK_VALUES) -> torch.Tensor:
    """The paper's threshold for a sample's values pooled over several layers: a 0-d tensor.

    ``layers``: ``(N, D_l)`` tensors, rows paired (one dtype and device). The result equals
    ``outlier_threshold`` of the ``(N, sum D_l)`` concatenation (the paper's ``(N, L, D)`` tensor
    flattened per sample), without building it: ``exact`` selects the order statistic from the
    concatenated ``|x|`` values (one copy of them); otherwise the per-sample quantiles are found a
    block of rows at a time (``block_values`` values per block).
    """
    # Order statistics by selection, not a full sort: the same values, without the sort's O(M log M)
    # work (an (N, L, D) model is ~10^8 values).
    if exact:
        flat = torch.cat([layer.abs().reshape(-1) for layer in layers])
        index = min(int(q * flat.numel()), flat.numel() - 1)
        return flat.kthvalue(index + 1).values
    n, m = int(layers[0].shape[0]), sum(int(layer.shape[1]) for layer in layers)
    dtype, device = layers[0].dtype, layers[0].device
    # The rank q (m - 1) and its fraction in the values' dtype, as torch.quantile computes them:
    # a float64 rank moved float32 thresholds by up to ~1e-6 relative (3e-5 at q = 0.999).
    # (half precision, which torch.quantile refuses, takes float32: its rank is too coarse)
    rank = torch.tensor(q, dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float32) * (m - 1)
    lo = min(int(rank.floor()), m - 1)
    hi = min(int(rank.ceil()), m - 1)
    weight = (rank - lo).to(device=device, dtype=dtype)
    per_sample = torch.empty(n, dtype=dtype, device=device)
    step = max(1, block_values // max(m, 1))
    for start in range(0, n, step):
        rows = torch.cat([layer[start:start + step].abs() for layer in layers], dim=1)  # (b, M)
        low, high = order_statistics(rows, lo, hi)
        per_sample[start:start + step] = torch.lerp(low, high, weight)
    return per_sample.mean()


def order_statistics(rows: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``lo``-th and ``hi``-th smallest values (0-based, ``lo <= hi <= lo + 1``) of each row of
    ``rows`` ``(b, M)``: two ``(b,)`` tensors, the values ``kthvalue`` selects. One ``topk`` from the
    nearer end of the order (at ``q = 0.95`` the top 5% of each row) instead of two ``kthvalue``
    selections over the whole row: 3x faster on a CPU, same values."""
    m = int(rows.shape[1])
    if lo >= m // 2:  # near the top: the m - lo largest, in descending order, end at the lo-th smallest
        top = rows.topk(m - lo, dim=1, largest=True, sorted=True).values
        return top[:, -1], top[:, -1 - (hi - lo)]
    bottom = rows.topk(hi + 1, dim=1, largest=False, sorted=True).values
    return bottom[:, lo], bottom[:, hi]


def _clamp_normalize(t: torch.Tensor, threshold: torch.Tensor | None, normalize: bool) -> torch.Tensor:
    """``t`` clamped to ``[-threshold, threshold]`` (when given), rows L2-normalised (when asked)."""
    if threshold is not None:
        t = t.clamp(-threshold, threshold)
    if normalize:
        t = torch.nn.functional.normalize(t, p=2, dim=-1)
    return t


def _common(layers: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The layers in one dtype (float64 when any is float64, else float32) on the first layer's
    device, for one pooled threshold; unchanged (no copy) when they already share both."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in layers) else torch.float32
    return [t.to(device=layers[0].device, dtype=dtype) for t in layers]


def _check_not_empty(layers: Sequence[torch.Tensor]) -> None:
    """``ValueError`` naming the first ``(N, D_l)`` layer with no samples or width 0: its
    threshold would be an order statistic of no values (``kthvalue`` raised ``IndexError``)."""
    for l, t in enumerate(layers):
        if t.shape[0] == 0 or t.shape[1] == 0:
            what = "width 0" if t.shape[1] == 0 else "no samples"
            raise ValueError(f"layer {l} has {what} (shape {tuple(t.shape)}): nothing to prepare")


def _prepare_layers(layers: Sequence[torch.Tensor], q: float, exact: bool, normalize: bool,
                    pooled: bool) -> list[torch.Tensor]:
    """Clamp + normalise ``(N, D_l)`` layers: one threshold for all (``pooled``) or one each."""
    _check_not_empty(layers)
    check_finite(layers)  # one NaN would make the threshold NaN and every value of the layer NaN
    if q >= 1:
        return [_clamp_normalize(t, None, normalize) for t in layers]
    if pooled:
        threshold = pooled_outlier_threshold(_common(layers), q, exact)
        return [_clamp_normalize(t, threshold.to(device=t.device, dtype=t.dtype), normalize) for t in layers]
    return [_clamp_normalize(t, pooled_outlier_threshold([t], q, exact), normalize) for t in layers]


def prepare(x: ArrayLike | Sequence[ArrayLike], q: float = 0.95, exact: bool = False,
            normalize: bool = True, per_layer: bool | None = None):
    """The paper's feature preparation: outlier clamp at a quantile of |x|, then L2 rows.

    Args:
        x: one layer ``(N, D)``, a ``(L, N, D)`` array/tensor, or a list of ``(N, D_l)`` layers
            (numpy or torch; any float dtype). Nested Python lists are read as ``score`` reads
            them: a list of lists of numbers is ONE ``(N, D)`` layer given as its rows (float64),
            not a list of 1-D layers; a layer inside a list may also be nested lists of rows.
        q: quantile of ``|x|`` used as clamp threshold; ``q == 1`` disables the clamp.
        exact: exact sorted-element threshold instead of the mean of per-sample quantiles.
        normalize: divide each row by its L2 norm afterwards.
        per_layer: for 3-D input, ``True`` gives each layer its own threshold; ``None``/``False``
            keeps the paper's single threshold for the whole tensor. For a list, ``None``/``True``
            is the paper's list branch (one threshold per layer) and ``False`` one threshold for
            all layers, each sample's quantile pooling its values in every layer (the tensor
            branch's threshold without stacking the layers; widths may differ).

    Returns:
        The prepared features, same container kind and shape as ``x``; float32 (float64 stays
        float64). Plain Python data comes back as numpy: one nested-list layer gives an
        ``(N, D)`` float64 numpy array, and a nested-list layer in a list a numpy array in the
        returned list (numpy layers stay numpy, tensors stay tensors on their device).

    Raises:
        ValueError: ``q`` not a number in ``(0, 1]``, a flag that is not a bool (``'False'``
            would read as true), ``x`` not an array, tensor, memoryview, array-like
            (``__array__``: a pandas DataFrame, read as the array it holds) or list of layers (a
            string, ``None``, a dict...), a shape other than ``(N, D)``/``(L, N, D)`` (a numpy
            scalar or 0-d array named with its shape ``()``), or a layer with width 0, no
            samples, or a NaN or inf value (named by its index).
        TypeError: complex features, or a numpy dtype torch cannot hold (``np.longdouble``,
            object, text, dates, raw bytes), named with the layer of a list.

    Example:
        >>> import numpy as np
        >>> z = prepare(np.random.default_rng(0).normal(size=(8, 4)))
        >>> bool(np.allclose(np.linalg.norm(z, axis=1), 1))
        True
    """
    if not 0 < check_real("q", q) <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    exact, normalize = check_flag("exact", exact), check_flag("normalize", normalize)
    if per_layer is not None:
        per_layer = check_flag("per_layer", per_layer)
    if is_nested_layer(x):  # Python lists of numbers: the rows of one (N, D) layer, as score reads them
        x = from_nested(x)  # (N, D) float64 numpy: prepared below and returned as numpy
    if isinstance(x, (list, tuple)):
        tensors = [to_tensor(layer) for layer in split_layers(x)]  # (N, D_l) each, one N
        # pooled: one threshold, found in float64 when any layer is float64 (``_common``); each
        # layer is clamped and returned in its own dtype, on its own device
        out = _prepare_layers(tensors, q, exact, normalize, pooled=per_layer is False)
        return [o if isinstance(layer, torch.Tensor) else o.cpu().numpy() for o, layer in zip(out, x)]
    is_numpy = not isinstance(x, torch.Tensor)  # a buffer or array-like comes back as numpy, as the array it holds
    x = as_array(x)  # a memoryview, a pandas DataFrame
    if not isinstance(x, (np.ndarray, torch.Tensor)):  # numpy would read "abc" as a 0-d text array
        raise unsupported_container(x)
    t = to_tensor(x)
    if t.ndim == 2:
        out = _prepare_layers([t], q, exact, normalize, pooled=True)[0]
    elif t.ndim == 3:
        out = torch.stack(_prepare_layers(list(t), q, exact, normalize, pooled=not per_layer))
    else:
        raise ValueError(f"expected (N, D) or (L, N, D), got shape {tuple(x.shape)}")
    return out.cpu().numpy() if is_numpy else out
