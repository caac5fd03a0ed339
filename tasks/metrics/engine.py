"""The engine protocol: how a metric computes all layer pairs from cached per-layer encodings.

An ``Engine`` splits a metric into three steps so that work is shared:

- ``encode(rep, params)``: per-layer structures of one side (Gram matrices, neighbour lists,
  singular vectors...). Called once per (representation, params); cached on the representation.
- ``matrix(a, b, params)``: the ``(La, Lb)`` float64 scores of every layer pair from two encodings.
- ``permute(state, perm, inv)``: the encoding of the row-permuted features ``x[perm]``, obtained by
  re-indexing the cached structures (never recomputed from features).
- ``null_matrices(a, b, perms, params)``: the ``(B, La, Lb)`` matrices of ``a`` against ``b``
  permuted by each of ``B`` permutations. Calibration uses it. The default is ``permute`` then
  ``matrix`` per permutation; engines override it to batch permutations (CKA: one gather and one
  matrix product for several; CKNNA: sparse mutual-neighbour entries) with the same values.

``FunctionEngine`` turns a plain ``fn(x, y, **params) -> float`` into an engine (no sharing beyond
holding the layers), which is what ``register_metric(name, fn)`` uses for user metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._arrays import inverse_permutation
from .representation import Representation


class Engine:
    """Base class; subclasses implement ``encode``, ``matrix`` and ``permute``."""

    #: parameters that change the per-layer encoding (memo key); others only affect ``matrix``.
    encode_params: tuple[str, ...] = ()

    def encode_key(self, params: dict[str, Any]) -> tuple:
        return (type(self).__name__, getattr(self, "variant", None),
                tuple((k, params.get(k)) for k in self.encode_params))

    def encode_cached(self, rep: Representation, params: dict[str, Any]) -> Any:
        return rep.memo(self.encode_key(params), lambda: self.encode(rep, params))

    def encode(self, rep: Representation, params: dict[str, Any]) -> Any:
        raise NotImplementedError

    def matrix(self, a: Any, b: Any, params: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def permute(self, state: Any, perm: torch.Tensor, inv: torch.Tensor) -> Any:
        raise NotImplementedError

    def null_matrices(self, a: Any, b: Any, perms: torch.Tensor, params: dict[str, Any]
                      ) -> torch.Tensor:
        """``(B, La, Lb)`` float64: ``matrix(a, permute(b, perm))`` for each row ``perm`` of
        ``perms`` ``(B, N)`` int64 (``b``'s rows permuted: the encoding of ``y[perm]``)."""
        return torch.stack([self.matrix(a, self.permute(b, perm, inverse_permutation(perm)), params)
                            .to(torch.float64) for perm in perms])


class FunctionEngine(Engine):
    """Engine for a plain pairwise function ``fn(x, y, **params) -> float``.

    ``fn`` receives ``(N, D)`` torch tensors (computation dtype, engine device) and the metric's
    parameters; it is called once per layer pair.
    """

    def __init__(self, fn: Callable[..., float]) -> None:
        self.fn = fn
        self.variant = getattr(fn, "__qualname__", repr(fn))

    def encode(self, rep: Representation, params: dict[str, Any]) -> list[torch.Tensor]:
        return list(rep.layers)

    def matrix(self, a: list[torch.Tensor], b: list[torch.Tensor], params: dict[str, Any]
               ) -> torch.Tensor:
        out = torch.empty((len(a), len(b)), dtype=torch.float64)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                out[i, j] = float(self.fn(x, y, **params))
        return out

    def permute(self, state: list[torch.Tensor], perm: torch.Tensor, inv: torch.Tensor
                ) -> list[torch.Tensor]:
        return [x.index_select(0, perm) for x in state]
