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
holding the layers), which is what ``register_metric(name, fn)`` uses for user metrics. When ``fn``
raises, or returns something that is not one number, ``MetricFunctionError`` (a ``ValueError``)
names the metric, the layer pair and what it raised or returned, the original chained. A subclass
that lacks a method a computation calls raises ``MissingEngineMethod`` (a ``NotImplementedError``)
naming the metric, the class and the method (e.g. ``permute``, which ``calibrate`` needs).

Encoding cache (``encode_cached``): an encoding is kept on the ``Representation`` under
``encode_key(params)``. The default key is this engine *instance* (so two instances of one class
built with different constructor settings never share an encoding) plus the values of
``encode_params``, the parameters the encoding depends on; ``encode_params = None`` (the default)
means every parameter of the metric (``params`` holds exactly the registered ``defaults``, updated
by the caller), so a parameter read by ``encode`` can never be forgotten. An engine whose encoding
does not depend on some parameters lists the ones it does depend on (``()``: none); engines whose
instances encode identically (the built-in CKA and list engines) override ``encode_key`` to share
one encoding across metrics.
"""

from __future__ import annotations

import math
import numbers
import reprlib
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._arrays import inverse_permutation
from .representation import Representation


#: relative distance below which ``calibrate`` counts a null draw as tying the observed value,
#: per computation dtype (about 100 units in the last place of a sum of many terms): one statistic
#: computed on two row orders differs by rounding alone
TIE_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


#: what an infinite score is told (``FunctionEngine.matrix``, ``layer_scores``)
FINITE_RULE = ("scores must be finite: return NaN where the metric is undefined (that layer pair is then left out of the "
               "best score and the calibration)")


class MissingEngineMethod(NotImplementedError):
    """An ``Engine`` subclass lacks a method that a computation needs; the message names the
    metric(s) registered with it, the class and the method."""


class MetricFunctionError(ValueError):
    """A user metric's function (``FunctionEngine``) raised, or returned something that is not one
    number; the message names the metric and the layer pair, and ``__cause__`` is the original."""


def _registered_as(engine: Engine) -> str:
    """``metric 'name'`` (or ``metrics 'a', 'b'``) of the registrations computed by ``engine``;
    an unregistered engine is named by its class."""
    from .registry import METRICS  # the registry imports this module

    names = [name for name, spec in METRICS.items() if spec.engine is engine]
    if names:
        return ("metric " if len(names) == 1 else "metrics ") + ", ".join(repr(name) for name in names)
    return f"an unregistered {type(engine).__qualname__}"


class Engine:
    """Base class; subclasses implement ``encode``, ``matrix`` and ``permute``."""

    #: parameters that change the per-layer encoding (memo key); others only affect ``matrix``.
    #: ``None`` (default): every parameter of the metric, the safe choice.
    encode_params: tuple[str, ...] | None = None

    def encode_key(self, params: dict[str, Any]) -> tuple:
        """Key of ``encode(rep, params)`` in the representation's cache: this instance and the
        values of ``encode_params`` (all of ``params`` when ``None``). Two keys are equal only
        when the encodings are: override to share encodings between instances."""
        names = sorted(params) if self.encode_params is None else self.encode_params
        return ("encoding", _Same(self), tuple((k, _frozen(params.get(k))) for k in names))

    def tie_rtol(self, params: dict[str, Any]) -> float | None:
        """How far apart (relative to ``max(1, |value|)``) two of this metric's values may be and
        still be one value computed on two row orders: ``calibrate`` counts a null draw that close
        to the observed value as reaching it. ``None`` (default): the rounding of the computation
        dtype, ``TIE_RTOL[dtype]``. An engine whose values are exact (integer counts divided once:
        equal counts give equal floats, and the nearest different value is a whole count away)
        returns ``0.0``; one whose values are float64 sums whatever the features' dtype returns
        ``TIE_RTOL[torch.float64]``. A tolerance wider than the spacing of the metric's values
        counts strictly smaller draws as ties."""
        return None

    def quadratic_memory(self, params: dict[str, Any]) -> str | None:
        """``'rbf'`` / ``'rsa'`` for an engine whose encoding holds ``O(L N^2)`` at every ``N`` (the
        key of ``tasks.alignment.QUADRATIC_MEMORY``, whose measured sizes the pipeline reserves
        before a pair's work), else None (default). A method, not an ``isinstance`` in the pipeline:
        its memory estimate then imports no engine, so a change to one engine's module versions
        only the metrics that run it (``tasks.metric_code``)."""
        return None

    def encode_cached(self, rep: Representation, params: dict[str, Any]) -> Any:
        return rep.memo(self.encode_key(params), lambda: self.encode(rep, params))

    def encode(self, rep: Representation, params: dict[str, Any]) -> Any:
        raise self._missing("encode(rep, params)", "every computation needs it (the per-layer work of one side)")

    def matrix(self, a: Any, b: Any, params: dict[str, Any]) -> torch.Tensor:
        raise self._missing("matrix(a, b, params)", "every computation needs it (the (La, Lb) scores of two encodings)")

    def permute(self, state: Any, perm: torch.Tensor, inv: torch.Tensor) -> Any:
        raise self._missing("permute(state, perm, inv)",
                            "calibrate needs it for its permutation null (the encoding of x[perm] from the "
                            "encoding of x), unless the engine overrides null_matrices")

    def _missing(self, method: str, why: str) -> MissingEngineMethod:
        """The error for a method this subclass does not implement, naming its metric(s)."""
        return MissingEngineMethod(f"{_registered_as(self)}: the Engine subclass {type(self).__qualname__} does not "
                                   f"implement {method}: {why} (docs/metrics.md, 'Custom engines')")

    def null_matrices(self, a: Any, b: Any, perms: torch.Tensor, params: dict[str, Any]
                      ) -> torch.Tensor:
        """``(B, La, Lb)`` float64: ``matrix(a, permute(b, perm))`` for each row ``perm`` of
        ``perms`` ``(B, N)`` int64 (``b``'s rows permuted: the encoding of ``y[perm]``)."""
        return torch.stack([self.matrix(a, self.permute(b, perm, inverse_permutation(perm)), params)
                            .to(torch.float64) for perm in perms])


def layer_scores(engine: Engine, a: Any, b: Any, params: dict[str, Any], shape: tuple[int, ...],
                 perms: torch.Tensor | None = None) -> np.ndarray:
    """``engine.matrix(a, b, params)`` (with ``perms``: ``engine.null_matrices(a, b, perms,
    params)``) as float64 numpy of ``shape``: ``(La, Lb)``, or ``(B, La, Lb)`` for ``B``
    permutations. ``MetricFunctionError`` when the engine returns another shape (a transposed
    ``(Lb, La)`` matrix would name the wrong layers as the best pair)."""
    out = engine.matrix(a, b, params) if perms is None else engine.null_matrices(a, b, perms, params)
    out = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    method = "matrix" if perms is None else "null_matrices"
    if tuple(out.shape) != tuple(shape):
        raise MetricFunctionError(f"{_registered_as(engine)}: {type(engine).__qualname__}.{method} returned shape "
                                  f"{tuple(out.shape)}, not {tuple(shape)} ({'' if perms is None else 'permutations, '}"
                                  "layers of x, layers of y)")
    values = out.detach().cpu().numpy().astype(np.float64)
    infinite = np.argwhere(np.isinf(values))
    if infinite.size:  # a max over layer pairs, a null quantile, a calibrated score of inf mean nothing
        at = tuple(int(i) for i in infinite[0])
        where = f"layer pair {at}" if perms is None else f"layer pair {at[1:]} of permutation {at[0]}"
        raise MetricFunctionError(f"{_registered_as(engine)}: {type(engine).__qualname__}.{method} returned "
                                  f"{values[at]} at {where} ({len(infinite)} infinite value(s) in all); {FINITE_RULE}")
    return values


class FunctionEngine(Engine):
    """Engine for a plain pairwise function ``fn(x, y, **params) -> float``.

    ``fn`` receives ``(N, D)`` torch tensors (computation dtype, engine device) and the metric's
    parameters; it is called once per layer pair, each time with its own copies of the two
    layers: what it changes in them (in place, or through ``.numpy()``) reaches neither the
    caller's arrays nor any other call.
    """

    encode_params = ()  # the encoding is the layers themselves, whatever the parameters

    def __init__(self, fn: Callable[..., float]) -> None:
        self.fn = fn
        self.variant = getattr(fn, "__qualname__", repr(fn))

    def encode(self, rep: Representation, params: dict[str, Any]) -> list[torch.Tensor]:
        return list(rep.layers)

    def matrix(self, a: list[torch.Tensor], b: list[torch.Tensor], params: dict[str, Any]
               ) -> torch.Tensor:
        """``(len(a), len(b))`` float64: ``fn`` on every layer pair. Raises ``MetricFunctionError``
        (the function's own error chained) when ``fn`` raises or returns something that is not
        one number, naming the metric and the layer pair."""
        out = torch.empty((len(a), len(b)), dtype=torch.float64)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                try:  # copies: the layers may be the caller's own arrays (torch.from_numpy shares them)
                    value = self.fn(x.clone(), y.clone(), **params)
                except Exception as error:  # noqa: BLE001 - the user's function: named, chained
                    raise self._raised(i, j, error) from error
                try:
                    out[i, j] = number = _one_number(value)  # NaN: undefined here (aggregate and calibrate leave it out)
                except Exception as error:  # noqa: BLE001 - whatever it returned
                    raise self._not_a_number(i, j, value) from error
                if math.isinf(number):
                    raise MetricFunctionError(f"{_registered_as(self)}: its function {self.variant} returned {number} on layer "
                                              f"pair ({i}, {j}) (layer {i} of x, layer {j} of y); {FINITE_RULE}")
        return out

    def _raised(self, i: int, j: int, error: Exception) -> MetricFunctionError:
        """The error for ``fn`` raising on layer pair ``(i, j)``, with the line of ``fn``'s file."""
        code = getattr(self.fn, "__code__", None)
        lines = [line for frame, line in traceback.walk_tb(error.__traceback__)
                 if code is not None and frame.f_code.co_filename == code.co_filename]
        at = f" at {code.co_filename}:{lines[-1]}" if lines else ""
        return MetricFunctionError(f"{_registered_as(self)}: its function {self.variant} raised "
                                   f"{type(error).__name__}: {error}{at} (layer pair ({i}, {j}): layer {i} of x, "
                                   f"layer {j} of y)")

    def _not_a_number(self, i: int, j: int, value: Any) -> MetricFunctionError:
        """The error for ``fn`` returning ``value``, which ``float()`` refused, on layer pair ``(i, j)``."""
        if isinstance(value, (torch.Tensor, np.ndarray)):
            what = f"a {type(value).__module__}.{type(value).__name__} of shape {tuple(value.shape)}"
        else:
            what = f"{reprlib.repr(value)} ({type(value).__name__})"
        return MetricFunctionError(f"{_registered_as(self)}: its function {self.variant} returned {what} on layer "
                                   f"pair ({i}, {j}) (layer {i} of x, layer {j} of y); it must return one number: "
                                   "a float, or a tensor or array of one element (e.g. a per-sample vector's .mean())")

    def permute(self, state: list[torch.Tensor], perm: torch.Tensor, inv: torch.Tensor
                ) -> list[torch.Tensor]:
        return [x.index_select(0, perm) for x in state]


def _one_number(value: Any) -> float:
    """``value`` as a float: a real number (a Python or numpy scalar, not a bool), or a tensor or
    array of one element of such a number; TypeError for anything else (a string such as ``'0.5'``,
    which ``float()`` would read, a list, a vector)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if (value.numel() if isinstance(value, torch.Tensor) else value.size) != 1:
            raise TypeError("not one element")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"not a real number: {type(value).__name__}")
    return float(value)


class _Same:
    """Wraps an object for a cache key: equal only to a wrapper of the same object (identity, so
    an engine that defines ``__eq__``/``__hash__``, or none, still keys correctly). The key holds
    the object, so its ``id`` cannot be reused while the entry exists."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        return f"<{type(self.obj).__name__} at {id(self.obj):#x}>"


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a parameter value, equal only for equal values: containers by
    content, arrays/tensors by dtype, shape and bytes, anything else unhashable by identity."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((repr(k), _frozen(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_frozen(v) for v in value))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    try:
        hash(value)
    except TypeError:
        return ("object", _Same(value))
    return (type(value).__name__, value)
