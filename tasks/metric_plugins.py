"""Your own metrics in the pipeline: modules named by ``$PRH_METRIC_MODULES`` register them.

``tasks.metrics.register_metric`` adds a metric to the engine for a Python session. For
``prh run``, scheduled deployments and workers, set ``PRH_METRIC_MODULES`` to importable module
names (comma or space separated, e.g. ``mylab.metrics``); :func:`load_metric_modules` imports
them before a config's metric names are checked, before the UI form lists them and before an
alignment task computes, so a config can name ``metrics: [my_metric]``. Importing a module runs
its code: the variable belongs to whoever runs the process (never to a config or the UI form),
like ``trust_remote_code``.

A user metric (any registration that is not the shipped built-in one, also one under a built-in
name) has a source digest (:func:`metric_source`) in the alignment versions of the pairs it
scores: the SHA-256 of the source files of the modules named in ``$PRH_METRIC_MODULES``, of the
module defining its function or Engine and of the modules of its package it uses,
**read when it was registered** (``tasks.metrics.origin.source_snapshot``: a long-lived process,
a Dask worker, that imported an older file never stores its numbers under the new file's
version, even after the file was edited; a module reloaded with ``importlib.reload`` or IPython's
autoreload registers and is read again; an installed distribution counts by its version), of its
registration (defaults, bounds, symmetry, direction) and of what its function or engine held
when registered (a partial's arguments, a callable object's or an engine's attributes). Where the
defining module has no readable source file (a function defined in ``__main__`` of a REPL or a
notebook, a ``.pyc``-only or extension module) the digest also covers the function's (or the
Engine class's) compiled code: :func:`code_digest`. Editing any of them gives new versions. It
takes the pipeline's parameters named in its ``defaults`` (``topk``, ``kernel_metric``,
``rbf_sigma``, ``cca_dim``, ``knn_precision``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import re
import sys
import traceback
from typing import Any

# tasks.metrics (the engine, torch) is imported where it is used: a process whose
# $PRH_METRIC_MODULES is unset (`prh report`) reads it without importing torch.

METRIC_MODULES_ENV = "PRH_METRIC_MODULES"
#: Pipeline-wide metric parameters (``AlignmentParams`` fields) a metric may take.
PIPELINE_METRIC_PARAMETERS = ("topk", "knn_precision", "kernel_metric", "rbf_sigma", "cca_dim")


def metric_module_names(environ: Any = None) -> tuple[str, ...]:
    """The module names in ``$PRH_METRIC_MODULES`` (comma or space separated), in order."""
    value = (os.environ if environ is None else environ).get(METRIC_MODULES_ENV, "")
    return tuple(name for name in re.split(r"[,\s]+", value) if name)


def load_metric_modules(environ: Any = None) -> tuple[str, ...]:
    """Import every module of ``$PRH_METRIC_MODULES`` (once: Python caches modules) and note its
    source digest as imported; returns their names. A module that fails is named with the file
    and line of the failure in its own code (ValueError), and the registrations it made before
    failing are undone: metrics it added are removed, built-in or other metrics it overwrote are
    restored (a retry then reports the same failure). None named: nothing is imported, not even
    the engine."""
    names = metric_module_names(environ)
    if not names:
        return names
    from tasks.metrics import METRICS

    for name in names:
        before = dict(METRICS._specs)
        try:
            module = importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure of the user's module, named
            _restore(METRICS._specs, before)
            raise ValueError(f"${METRIC_MODULES_ENV}: cannot import {name!r} ({type(error).__name__}: {error})"
                             f"{_failure_location(name, error)}{_not_found_hint(name, error)}; it names the modules "
                             "that register your metrics (importable from this process)") from error
        _module_digest(module)
    return names


def _restore(specs: dict[str, Any], before: dict[str, Any]) -> None:
    """Put the registry's ``specs`` back to ``before``: names added since are removed, names
    overwritten or removed since get their former spec back (in place, never emptied meanwhile)."""
    for name in [name for name in specs if name not in before]:
        del specs[name]
    for name, spec in before.items():
        if specs.get(name) is not spec:
            specs[name] = spec


def _not_found_hint(name: str, error: BaseException) -> str:
    """Where Python looks for module ``name`` when ``error`` says that it (or a package above it) is
    not there, not a module it imports: ``prh`` (a console script), a Prefect worker's flow run and a
    Dask worker search ``sys.path``, which need not hold the directory they were started in, so a
    ``mylab/`` beside the config was not found. ``''`` for any other failure."""
    missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
    if not missing or not (name == missing or name.startswith(missing + ".")):
        return ""
    top = missing.split(".")[0]
    here = os.getcwd()
    beside = [p for p in (os.path.join(here, top), os.path.join(here, top + ".py")) if os.path.exists(p)]
    where = (f" ({beside[0]} is in the current directory, which this process does not search: "
             f"PYTHONPATH={here})") if beside and here not in [os.path.abspath(p or ".") for p in sys.path] else ""
    return (f"; Python looks for {top!r} on this process's sys.path{where}: add the directory that holds it to "
            "PYTHONPATH where prh, the worker or the Dask workers run, or install your package into this environment")


def _failure_location(name: str, error: BaseException) -> str:
    """`` at FILE:LINE`` of ``error`` in the user's own code: a ``SyntaxError``'s position, else the
    deepest traceback frame run by a module of ``name``'s top-level package (the module, a package
    above it, or a helper module it imports: ``lab.kernels`` of ``lab.metrics``), not the frames
    of prh or importlib it called; ``''`` when no frame is its own (the module does not exist)."""
    if isinstance(error, SyntaxError) and error.filename:
        return f" at {error.filename}:{error.lineno}"
    top = name.split(".")[0]
    own = [(frame, line) for frame, line in traceback.walk_tb(error.__traceback__)
           if str(frame.f_globals.get("__name__") or "").split(".")[0] == top]
    if own:
        frame, line = own[-1]
        return f" at {frame.f_code.co_filename}:{line}"
    return ""


def _module_digest(module: Any) -> str:
    """The digest of ``module``'s file as first read since it was (re)imported; ``no source: NAME``
    without one."""
    from tasks.metrics.origin import module_digest

    return module_digest(module) or f"no source: {module.__name__!r}"


def is_builtin(name: str) -> bool:
    """Whether registered metric ``name`` is the shipped built-in registration."""
    from tasks.metrics import BUILTIN_SPECS, METRICS

    return name in BUILTIN_SPECS and METRICS[name] is BUILTIN_SPECS[name]


def metric_source(name: str) -> str | None:
    """``sha256:<hex>`` naming the code and registration of user metric ``name`` (see the module
    docstring); None for a built-in (its code is in every alignment version's ``code_version``)."""
    if is_builtin(name):
        return None
    from tasks.metrics import METRICS
    from tasks.metrics.engine import FunctionEngine
    from tasks.metrics.origin import code_target, plain, registration_state

    if name not in METRICS:
        raise unregistered_here(name)
    spec = METRICS[name]
    given = spec.engine.fn if isinstance(spec.engine, FunctionEngine) else spec.engine
    target = code_target(given)
    parts = {f"plugin {module}": _digest_of(module) for module in metric_module_names()}
    parts.update({f"source {module}": digest for module, digest in spec.sources.items()})  # read when registered
    defining = inspect.getmodule(target)
    if defining is not None and not spec.sources:  # a spec made without register_metric
        parts[f"defined in {defining.__name__}"] = _module_digest(defining)
    own_source = defining is not None and str(spec.sources.get(defining.__name__) or parts.get(
        f"defined in {defining.__name__}", "")).startswith(("sha256:", "installed:"))
    if not own_source:  # no file to hash: what runs is the code
        parts["code"] = code_digest(target)
    state = spec.state or (registration_state(given, None) if isinstance(spec.engine, FunctionEngine)
                           else registration_state(None, spec.engine))  # as registered; a spec made by hand: now
    parts["registration"] = repr((
        getattr(target, "__module__", None), getattr(target, "__qualname__", type(target).__qualname__), state,
        _describe(spec.bounds), spec.symmetric, spec.locality, spec.higher_is_better,
        sorted((k, plain(v)) for k, v in spec.defaults.items()), _describe(spec.chance),
    ))
    return "sha256:" + hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()


def unregistered_here(name: str) -> Exception:
    """The error for metric ``name``, which a run names but this process has not registered: a
    process the run's config reached without being checked here (a Dask worker unpickles it) whose
    environment lacks the ``$PRH_METRIC_MODULES`` that registered the metric where the run began.
    An ``UnknownMetricError`` that says where user metrics come from and which process lacks them
    (it had read ``unknown metric 'dcor'; valid metrics: ...`` alone, on a worker's host)."""
    import socket

    from tasks.metrics import METRICS
    from tasks.metrics.registry import UnknownMetricError

    modules = metric_module_names()
    here = (f"${METRIC_MODULES_ENV} is {' '.join(modules)!r} here and registers no such metric" if modules
            else f"${METRIC_MODULES_ENV} is unset here")
    return UnknownMetricError(
        f"unknown metric {name!r} in this process (host {socket.gethostname()}, pid {os.getpid()}): {here}. A metric of "
        f"your own is registered by the modules ${METRIC_MODULES_ENV} names: set it, with those modules importable "
        "(PYTHONPATH or installed), wherever the run computes: prh run's machine, each Prefect worker and each Dask "
        f"worker (docs/orchestration.md); registered here: {', '.join(METRICS)}")


def _digest_of(name: str) -> str:
    module = sys.modules.get(name)
    return _module_digest(module) if module is not None else f"not imported: {name}"


def code_digest(target: Any) -> str:
    """SHA-256 of the compiled code of a metric's function or Engine class, for a metric whose
    module has no readable source file.

    Hashed: each function's bytecode (``co_code``), constants (nested functions, lambdas and
    comprehensions recursively), names, argument names and flags; its defaults and keyword
    defaults; its closure's values; and the module-level values it names (``co_names``) that are
    plain values (numbers, text, tuples and lists of them) or functions and classes of its own
    module (hashed the same way, recursively). For a class: the functions, static and class
    methods and properties of it and of its bases from the same module. Not hashed: line numbers
    and file names (moving code does not change what it computes), code of other modules it
    calls (``torch``, a helper package: their versions are not the metric's), and module-level
    objects other than plain values (an array, a model: only their type). The bytecode is the
    interpreter's: another Python version gives another digest.
    """
    return hashlib.sha256(repr(_code_of(target, getattr(target, "__module__", None), set())).encode()).hexdigest()


def _code_of(obj: Any, module: str | None, seen: set[int]) -> Any:
    """A plain, process-independent description of what ``obj`` (a function, a class, a method)
    runs; see :func:`code_digest`."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        return ("property", [_code_of(f, module, seen) for f in (obj.fget, obj.fset, obj.fdel) if f is not None])
    if inspect.ismethod(obj):
        obj = obj.__func__
    name = getattr(obj, "__qualname__", type(obj).__qualname__)
    if id(obj) in seen:
        return ("again", name)
    seen.add(id(obj))
    if isinstance(obj, type):
        members = [(klass.__qualname__, key, _code_of(value, module, seen))
                   for klass in obj.__mro__ if klass.__module__ == module
                   for key, value in sorted(vars(klass).items())
                   if inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod, property))]
        return ("class", name, members)
    code = getattr(obj, "__code__", None)
    if code is None:  # a built-in or an extension's function: its module's file covers it
        return ("object", _describe(obj))
    cells = []
    for cell in obj.__closure__ or ():
        try:
            cells.append(_value_of(cell.cell_contents, module, seen))
        except ValueError:  # an empty cell
            cells.append("<empty>")
    namespace = getattr(obj, "__globals__", {})
    names = sorted(_names_of(code))
    return ("function", name, _code_parts(code), _value_of(obj.__defaults__, module, seen),
            sorted((k, _value_of(v, module, seen)) for k, v in (obj.__kwdefaults__ or {}).items()), cells,
            [(n, _value_of(namespace[n], module, seen)) for n in names if n in namespace])


def _code_parts(code: Any) -> tuple:
    """A code object's bytecode, constants (nested code objects recursively) and names; no lines."""
    consts = []
    for const in code.co_consts:
        if inspect.iscode(const):
            consts.append(_code_parts(const))
        elif isinstance(const, frozenset):  # iteration order follows the process's hash seed
            consts.append(("frozenset", sorted(repr(c) for c in const)))
        else:
            consts.append(repr(const))
    return (code.co_name, code.co_code.hex(), getattr(code, "co_exceptiontable", b"").hex(), consts,
            code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount,
            code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)


def _names_of(code: Any) -> set[str]:
    """The global and attribute names a code object and the code nested in it read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _names_of(const)
    return names


def _value_of(value: Any, module: str | None, seen: set[int]) -> Any:
    """A value a function reads (a default, a closure cell, a module-level name): plain values by
    ``repr``, functions and classes of ``module`` by their code, anything else by its type."""
    from tasks.metrics.origin import plain

    if isinstance(value, (tuple, list)):
        return [_value_of(v, module, seen) for v in value]
    if (inspect.isfunction(value) or isinstance(value, type)) and getattr(value, "__module__", None) == module:
        return _code_of(value, module, seen)
    return plain(value)


def _describe(value: Any) -> str:
    """A stable description of a bounds pair or a callable (its module and qualified name)."""
    from tasks.metrics.origin import plain

    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return plain(value)


def metric_parameters(name: str) -> tuple[str, ...]:
    """The pipeline parameters a user metric takes: those named in its ``defaults``."""
    from tasks.metrics import METRICS

    defaults = METRICS[name].defaults
    return tuple(p for p in PIPELINE_METRIC_PARAMETERS if p in defaults)


def own_defaults(name: str) -> dict[str, Any]:
    """The defaults of user metric ``name`` that the catalog's ``params`` column can name: those
    whose values are JSON values (text, numbers, booleans, null; lists, tuples and string-keyed
    mappings of them), as registered. Every default reaches the metric whether named or not
    (``MetricSpec.resolve``); one of another kind (an array, a model) is left out, as a row's
    ``params`` is JSON that ``score(metric, x, y, **params)`` replays (docs/queries.md): its value is
    in the metric's version (the registration digest of :func:`metric_source`). A keyword default
    of the function itself that ``defaults`` does not name is its code, never passed by prh: not
    named either (its source digest versions it)."""
    from tasks.metrics import METRICS

    return {p: value for p, value in METRICS[name].defaults.items() if _json_value(value)}


def _json_value(value: Any) -> bool:
    """Whether ``value`` reads back from JSON as an equal value (a tuple as a list): no NaN or
    infinity (not JSON), no numpy integer (not serialisable), no mapping with keys other than text."""
    if value is None or isinstance(value, (str, bool, int)) and type(value).__module__ == "builtins":
        return True
    if isinstance(value, float):  # numpy's float64 is one and serialises as one
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    return False
