"""Metric registry: names, metadata and engines (one module-level registry, like sklearn scorers).

``METRICS`` is a read-only mapping ``name -> MetricSpec``; ``name in METRICS`` and iteration over
names work, and looking up an unknown name raises ``UnknownMetricError`` (a ``ValueError`` and a
``KeyError``) that lists the valid names. ``register_metric`` adds a metric, from a plain pairwise
function or from an ``Engine``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .checks import check_flag, check_real
from .engine import Engine, FunctionEngine
from .origin import registration_state, source_snapshot

Bounds = tuple[float, float]
#: parameters every metric accepts (engine placement), never forwarded to engines
COMMON_PARAMS = ("device",)
#: Names the public functions take for themselves (``score``, ``layer_matrix``, ``calibrate``,
#: ``bootstrap_ci``, ``chance_level``): a metric parameter of one of these names would never reach
#: the metric there (``calibrate(..., seed=3)`` seeds the permutations), so none may be registered.
RESERVED_PARAMS = frozenset({"metric", "x", "y", "xs", "ys", "n", "permutations", "alpha", "seed", "aggregate",
                             "n_boot", "level", "observed", "subsample", "progress", "groups", *COMMON_PARAMS})


class UnknownMetricError(ValueError, KeyError):
    """Raised for a metric name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: registry name.
        engine: computes all layer pairs (see ``tasks.metrics.engine``).
        bounds: ``(low, high)`` or a callable ``params -> (low, high)`` (e.g. ``lcs_knn``: ``k``).
        symmetric: ``score(x, y) == score(y, x)``.
        locality: ``'local'`` (neighbourhoods) or ``'global'`` (whole kernel / subspace).
        higher_is_better: larger means more aligned.
        defaults: parameter names and default values.
        description: one line for listings.
        chance: optional ``(n, params) -> float | None``: analytical chance level.
    """

    name: str
    engine: Engine
    bounds: Bounds | Callable[[dict[str, Any]], Bounds]
    symmetric: bool
    locality: Literal["local", "global"]
    higher_is_better: bool = True
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    chance: Callable[[int, dict[str, Any]], float | None] | None = None
    #: module name -> digest of its code when registered (``origin.source_snapshot``): what
    #: ``tasks.metric_plugins.metric_source`` versions a user metric by
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: what its function or engine held when registered (``origin.registration_state``)
    state: str = field(default="", compare=False, repr=False)

    def bounds_for(self, params: Mapping[str, Any] | None = None) -> Bounds:
        """Bounds for the given (resolved) parameters (a callable's result checked as
        :func:`checked_bounds` checks fixed ones)."""
        if callable(self.bounds):
            return checked_bounds(self.name, self.bounds(dict(self.resolve(params or {}))))
        return self.bounds

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults updated with ``params``; drops parameters that belong to other metrics.

        Raises ``TypeError`` for a name no registered metric knows (a typo), ``ValueError`` for a
        value of the wrong kind for its default (`_checked`).
        """
        known = METRICS.param_names()
        unknown = sorted(set(params) - known - set(COMMON_PARAMS))
        if unknown:
            raise TypeError(f"unknown metric parameter(s) {unknown}; known: {sorted(known)}")
        out = dict(self.defaults)
        for name, value in params.items():
            if name in self.defaults:
                try:
                    out[name] = _checked(name, value, self.defaults[name])
                except ValueError as error:  # which metric's parameter, where several share a name
                    raise ValueError(f"{error} (a parameter of metric {self.name!r})") from None
        return out


def checked_bounds(name: str, bounds: Any) -> Bounds:
    """``bounds`` as ``(low, high)`` floats: two real numbers (not bools, not NaN; infinite for
    an open side) with ``low < high``. ``ValueError`` naming metric ``name`` otherwise: reversed
    or NaN bounds made ``calibrate`` return 0 or NaN and ``bootstrap_ci`` a zero-width interval."""
    try:
        low, high = bounds
    except (TypeError, ValueError):
        raise ValueError(f"metric {name!r}: bounds must be (low, high), got {bounds!r}") from None
    for side, value in (("low", low), ("high", high)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise ValueError(f"metric {name!r}: bounds {side} must be a real number (or an infinity), got {value!r}")
    if not low < high:
        raise ValueError(f"metric {name!r}: bounds must have low < high, got ({low!r}, {high!r})")
    return float(low), float(high)


#: Integer parameters that may be None (``cknna``: ``topk=None`` masks nothing).
_NULLABLE_INTS = frozenset({"topk"})


def _checked(name: str, value: Any, default: Any) -> Any:
    """``value`` if it is of the kind of ``default``: a bool for a bool (``'False'`` would read as
    true), an integer for an integer (``2.7`` is not truncated), a number for a number (or a
    string: ``rbf_sigma='median'``, checked by its engine; not NaN, and finite unless the default
    is infinite). Raises ``ValueError`` naming it."""
    if isinstance(default, bool):
        return check_flag(name, value)
    if isinstance(default, int):
        if value is None and name in _NULLABLE_INTS:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float) and not isinstance(value, str):
        number = float(check_real(name, value))
        if math.isnan(number):  # every score would come back NaN, without a word
            raise ValueError(f"{name} must be a number, got {value!r}")
        if math.isinf(number) and math.isfinite(default):  # an infinite default: an open threshold takes one
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return number
    return value


class MetricRegistry(Mapping[str, MetricSpec]):
    """Name -> ``MetricSpec``; unknown names raise ``UnknownMetricError`` listing the valid ones."""

    def __init__(self) -> None:
        self._specs: dict[str, MetricSpec] = {}

    def __getitem__(self, name: str) -> MetricSpec:
        try:
            return self._specs[name]
        except (KeyError, TypeError):
            raise UnknownMetricError(
                f"unknown metric {name!r}; valid metrics: {', '.join(self._specs)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"MetricRegistry({list(self._specs)})"

    def param_names(self) -> set[str]:
        return {p for spec in self._specs.values() for p in spec.defaults}

    def _add(self, spec: MetricSpec, overwrite: bool) -> None:
        if spec.name in self._specs and not overwrite:
            raise ValueError(f"metric {spec.name!r} is already registered "
                             + ("(one of prh's own metrics: give yours another name, or pass overwrite=True to replace "
                                "prh's everywhere this module is loaded)" if _shipped(self._specs[spec.name])
                                else "(pass overwrite=True)"))
        self._specs[spec.name] = spec


def _shipped(spec: MetricSpec) -> bool:
    """Whether ``spec`` is one of prh's own registrations: its code is this package's."""
    return bool(spec.sources) and all(module.startswith(f"{__package__}.") for module in spec.sources)


METRICS = MetricRegistry()


def get_metric(name: str | MetricSpec) -> MetricSpec:
    """The ``MetricSpec`` of ``name`` (a spec passes through)."""
    return name if isinstance(name, MetricSpec) else METRICS[name]


def unregister_metric(name: str) -> MetricSpec:
    """Remove a registered metric and return its spec (unknown names raise ``UnknownMetricError``)."""
    spec = METRICS[name]
    del METRICS._specs[name]
    return spec


def _as_engine(obj: Any, what: str) -> Engine:
    """The engine that computes a metric given as ``obj``: an ``Engine`` instance as it is, an
    ``Engine`` subclass instantiated without arguments, a plain callable wrapped in a
    ``FunctionEngine``. Anything else, or a subclass whose constructor needs arguments, raises
    ``TypeError`` saying which forms work."""
    forms = ("a function fn(x, y, **params) -> float, an Engine instance (engine=MyEngine(...)) "
             "or an Engine subclass that takes no constructor arguments")
    if isinstance(obj, Engine):
        return obj
    if isinstance(obj, type):
        if not issubclass(obj, Engine):
            raise TypeError(f"register_metric: {what} is the class {obj.__name__}, not an Engine subclass; "
                            f"give {forms}")
        try:
            return obj()
        except TypeError as error:
            raise TypeError(f"register_metric: the Engine subclass {obj.__name__} cannot be built without "
                            f"arguments ({error}); pass an instance: engine={obj.__name__}(...)") from None
    if what == "fn" and callable(obj):
        return FunctionEngine(obj)
    raise TypeError(f"register_metric: {what} must be {forms}; got {type(obj).__name__}")


def _check_takes(name: str, fn: Callable[..., Any], defaults: Mapping[str, Any]) -> None:
    """``ValueError`` naming metric ``name`` and the parameter where ``fn`` cannot be called as
    ``fn(x, y, **defaults)`` for want of a keyword (it failed only at the first call, in the
    pipeline after the extraction); nothing where its signature cannot be read."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or a C callable: its call will say
        return
    kinds = {p.name: p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_KEYWORD in kinds.values():
        return
    takes = {n for n, kind in kinds.items()
             if kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    for param in defaults:
        if param not in takes:
            raise ValueError(f"metric {name!r}: its function takes no parameter {param!r}, which its defaults name "
                             "(every parameter in defaults is passed as a keyword: fn(x, y, **params)); add it to "
                             "the function's signature, or **params")


def register_metric(name: str, fn: Callable[..., float] | type[Engine] | Engine | None = None, *,
                    engine: Engine | type[Engine] | None = None,
                    bounds: Bounds | Callable[[dict[str, Any]], Bounds] = (-math.inf, math.inf),
                    symmetric: bool = False, locality: Literal["local", "global"] = "global",
                    higher_is_better: bool = True, defaults: Mapping[str, Any] | None = None,
                    description: str = "", chance: Callable[[int, dict[str, Any]], float | None] | None = None,
                    overwrite: bool = False):
    """Register a metric; usable directly or as a decorator.

    Args:
        name: registry name.
        fn: ``fn(x, y, **params) -> float`` on ``(N, D)`` torch tensors, called per layer pair
            (one number: a float, or a one-element tensor or array; anything else, or an error
            it raises, is a ``MetricFunctionError`` naming the metric and the layer pair);
            or an ``Engine`` (an instance, or a subclass built without arguments) to share work
            across layers.
        engine: an ``Engine`` given by keyword (same forms); not together with ``fn``.
        bounds, symmetric, locality, higher_is_better, description, chance: metadata
            (see ``MetricSpec``); calibration uses ``bounds[1]`` as the maximum (``bounds[0]``
            as the minimum where lower is better; an infinite one: ``score - tau`` unscaled).
        defaults: the metric's parameter names and default values (only these are forwarded).
        overwrite: replace an existing registration.

    Returns:
        The ``MetricSpec`` (or, used as ``@register_metric(name, ...)`` on a function or an
        ``Engine`` subclass, a decorator returning it unchanged).

    Raises:
        TypeError: ``fn`` and ``engine`` both given, or an object of none of these forms.
        ValueError: a ``name`` that is not a non-empty string, a flag (``symmetric``,
            ``higher_is_better``, ``overwrite``) that is not a bool, ``chance`` neither None nor
            callable, bad ``bounds``, ``defaults`` not a mapping or a parameter name in it that is
            not an identifier, a reserved parameter name, or (without ``overwrite``) a name
            already registered.

    Example:
        >>> import torch
        >>> spec = register_metric("mean_cos", lambda x, y: float((x * y).sum(1).mean()),
        ...                        bounds=(-1.0, 1.0), symmetric=True, overwrite=True)
        >>> "mean_cos" in METRICS
        True
    """
    if locality not in ("local", "global"):
        raise ValueError("locality must be 'local' or 'global'")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a metric's name must be a non-empty string, got {name!r}")
    for flag, value in (("symmetric", symmetric), ("higher_is_better", higher_is_better), ("overwrite", overwrite)):
        check_flag(f"metric {name!r}: {flag}", value)  # 'False' reads as true
    if chance is not None and not callable(chance):
        raise ValueError(f"metric {name!r}: chance must be a function (n, params) -> float or None, got {chance!r}")
    if not callable(bounds):
        bounds = checked_bounds(name, bounds)
    if defaults is not None and not isinstance(defaults, Mapping):
        raise ValueError(f"metric {name!r}: defaults must be a mapping of parameter names to default values, "
                         f"got {type(defaults).__name__}")
    named = [p for p in (defaults or {}) if not (isinstance(p, str) and p.isidentifier())]
    if named:  # 1 broke every metric's unknown-parameter error (sorting str with int), 'a b' no call could pass
        raise ValueError(f"metric {name!r}: parameter names must be Python identifiers (keyword arguments), got "
                         f"{', '.join(repr(p) for p in named)}")
    reserved = sorted(RESERVED_PARAMS & set(defaults or {}))
    if reserved:
        raise ValueError(f"metric {name!r}: parameter name(s) {reserved} are taken by score, layer_matrix, calibrate or "
                         "bootstrap_ci for themselves and would never reach the metric; rename them")
    if fn is not None and engine is not None:
        raise TypeError("register_metric: give fn or engine, not both")
    given_engine = _as_engine(engine, "engine") if engine is not None else None

    def build(f: Any) -> MetricSpec:
        eng = given_engine if given_engine is not None else _as_engine(f, "fn")
        if isinstance(eng, FunctionEngine):
            _check_takes(name, eng.fn, defaults or {})
        spec = MetricSpec(name=name, engine=eng, bounds=bounds, symmetric=bool(symmetric),
                          locality=locality, higher_is_better=bool(higher_is_better),
                          defaults=dict(defaults or {}), description=description, chance=chance,
                          sources=source_snapshot(f if given_engine is None else given_engine),
                          state=registration_state(f, None) if isinstance(eng, FunctionEngine) else registration_state(None, eng))
        METRICS._add(spec, overwrite)
        return spec

    if fn is None and engine is None:
        def decorator(f: Any) -> Any:
            build(f)
            return f
        return decorator
    return build(fn)
