"""Public entry points: ``layer_matrix`` (every layer pair at once) and ``score`` (one pair).

Inputs are used as given (no preprocessing: call ``prepare`` first to reproduce the paper). Either
side may also be a ``Representation``, whose cached Grams / neighbour lists / encodings are then
reused across calls, metrics and partner models.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from tasks.malloc_policy import pin_mmap_threshold

from ._arrays import from_nested, resolve_device, split_layers
from .engine import layer_scores
from .registry import MetricSpec, get_metric
from .representation import Representation, _is_float64, as_representation


def representations(xs: Any, ys: Any, device: str | torch.device | None = None
                    ) -> tuple[Representation, Representation]:
    """Wrap both sides on one device (``device``, else cuda if any input is on cuda, else cpu), raw
    features directly in the pair's dtype (float64 when either side has a float64 layer)."""
    raw = {name: _layers(name, side) for name, side in (("x", xs), ("y", ys)) if not isinstance(side, Representation)}
    if device is not None:
        device = resolve_device(device)  # a bad device is the parameter's error, not a side's
    else:
        held = [r.device for r in (xs, ys) if isinstance(r, Representation)]
        if held:
            device = held[0]
        else:
            device = resolve_device(None, xs, ys, *raw["x"], *raw["y"])
    dtype = _pair_dtype((xs, ys), [z for layers in raw.values() for z in layers])
    ra = _side("x", xs, device, dtype)
    rb = ra if ys is xs else _side("y", ys, device, dtype)
    if ra.dtype != rb.dtype:  # e.g. float32 against float64: the pair computes in float64
        ra, rb = (Representation(r.layers, r.device, keep_gram_max_n=r.n if r.keep_gram else r.n - 1, dtype=torch.float64)
                  if r.dtype != torch.float64 else r for r in (ra, rb))  # same path (Gram or features) as asked
    if ra.n != rb.n:
        raise ValueError(f"x and y must have the same number of paired samples: {ra.n} != {rb.n}")
    return ra, rb


def _layers(name: str, xs: Any) -> list[Any]:
    """``split_layers(xs)`` with input errors prefixed by the side's name."""
    try:
        return list(split_layers(xs))
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name}: {err}") from None


def _pair_dtype(sides: tuple[Any, Any], raw_layers: list[Any]) -> torch.dtype | None:
    """float64 when a side is a float64 ``Representation`` or any raw layer is float64 (the pair
    then computes in float64, so a raw float32 side is checked and stored as float64, not as
    float32 first), else ``None`` (each side's own dtype)."""
    held = any(isinstance(s, Representation) and s.dtype == torch.float64 for s in sides)
    return torch.float64 if held or any(_is_float64(z) for z in raw_layers) else None


def _side(name: str, xs: Any, device: str | torch.device | None, dtype: torch.dtype | None = None
          ) -> Representation:
    """``as_representation(xs, device)`` (raw features in ``dtype``, default their own) with input
    errors (``ValueError``, and ``TypeError`` for complex or object arrays) prefixed by the side's
    name."""
    try:
        if isinstance(xs, Representation):
            return as_representation(xs, device)
        return Representation(xs, device=device, dtype=dtype)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name}: {err}") from None


def encode_pair(spec: MetricSpec, xs: Any, ys: Any, params: dict[str, Any]
                ) -> tuple[Any, Any, dict[str, Any], Representation, Representation]:
    """Resolve parameters and encode both sides (cached on the representations).

    Every public entry point (``layer_matrix``, ``score``, ``calibrate``, ``bootstrap_ci``) starts
    here, and fixes glibc's mmap threshold first (``tasks.malloc_policy``), as every pair of the
    pipeline does: the engine used on its own had run with glibc's dynamic threshold, under
    which its time and peak memory depended on the process's allocation history (linear CKA of
    13 x 13 layers at N=1024 with the bench's floor between calls, 2 threads: 171-182 ms a call
    before, 150-174 ms after)."""
    pin_mmap_threshold()
    params = dict(params)
    device = params.pop("device", None)
    p = spec.resolve(params)
    ra, rb = representations(xs, ys, device)
    a = _encoded("x", spec, ra, p)
    b = a if rb is ra else _encoded("y", spec, rb, p)
    return a, b, p, ra, rb


#: an encoding error about one of a side's layers names it (``layer 3 has rank 2 < cca_dim=4``)
_NAMES_LAYER = re.compile(r"\blayer \d+\b")


def _encoded(name: str, spec: MetricSpec, rep: Representation, params: dict[str, Any]) -> Any:
    """``spec.engine.encode_cached(rep, params)`` with input errors prefixed by the side's name
    (``y: cca_dim must be in [1, min(N, D)] = [1, 3] for layer 0, got 5``). Engines name the layer
    in an error about a side's features; an error that names none is about the parameters (or the
    shared sample count ``N``: ``topk must be in [1, N-1] = [1, 7], got 0``) and is raised as is,
    not blamed on ``x``, the side encoded first."""
    try:
        return spec.engine.encode_cached(rep, params)
    except ValueError as err:
        if not _NAMES_LAYER.search(str(err)):
            raise
        raise ValueError(f"{name}: {err}") from None


def layer_matrix(metric: str | MetricSpec, xs: Any, ys: Any, **params: Any) -> np.ndarray:
    """Score of every layer pair, sharing per-layer work.

    Args:
        metric: a name in ``METRICS`` (or a ``MetricSpec``).
        xs: ``La`` layers: a sequence of ``(N, D_l)`` arrays (widths may differ), a
            ``(La, N, D)`` array/tensor, a single ``(N, D)`` layer, or a ``Representation``.
        ys: ``Lb`` layers, same forms; rows paired with ``xs``.
        **params: the metric's parameters (``topk``, ``kernel_metric``, ``rbf_sigma``,
            ``unbiased``, ``distance_agnostic``, ``cca_dim``, ...) and ``device``. Parameters of
            other metrics are ignored; unknown names raise ``TypeError``. The list metrics
            (``mutual_knn``, ``jaccard_knn``, ``cycle_knn``, ``lcs_knn``,
            ``edit_distance_knn``) also take ``knn_precision``: ``'exact'`` (default),
            ``'bf16'`` (faster, approximate lists; errors in ``docs/metrics.md``) or
            ``'bf16-refine'`` (bfloat16 search certified to give the exact lists).

    Returns:
        ``(La, Lb)`` float64 numpy array; entry ``[i, j]`` equals ``score(metric, xs[i], ys[j])``,
        except that a pair computes in float64 when any layer of either side is float64 (then a
        float32 pair equals the score of its layers cast to float64, not the float32 score).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(3, 50, 8))
        >>> layer_matrix("cka", x, x).shape
        (3, 3)
    """
    spec = get_metric(metric)
    a, b, p, ra, rb = encode_pair(spec, xs, ys, params)
    return layer_scores(spec.engine, a, b, p, (len(ra), len(rb)))


def score(metric: str | MetricSpec, x: Any, y: Any, **params: Any) -> float:
    """Alignment of one layer pair: ``x``, ``y`` are ``(N, D_x)``, ``(N, D_y)``, rows paired.

    Same parameters as ``layer_matrix``; no preprocessing is applied.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 8))
        >>> round(score("mutual_knn", x, x, topk=5), 6)
        1.0
    """
    sides = []
    for name, z in (("x", x), ("y", y)):
        if isinstance(z, (list, tuple)):  # nested Python lists: one (N, D) layer
            try:
                z = from_nested(z)
            except (ValueError, TypeError) as err:
                raise type(err)(f"{name}: {err}") from None
        if not isinstance(z, Representation) and getattr(z, "ndim", 2) != 2:
            raise ValueError(f"{name} must be (N, D); use layer_matrix for stacks of layers")
        sides.append(z)
    m = layer_matrix(metric, *sides, **params)
    if m.shape != (1, 1):
        raise ValueError(f"score takes one layer per side, got a {m.shape} matrix")
    return float(m[0, 0])
