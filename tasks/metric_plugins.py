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
scores: the SHA-256 of the source files of the modules named in ``$PRH_METRIC_MODULES`` and of
the module defining its function or Engine, **as they were when imported** (a long-lived process,
a Dask worker, that imported an older file never stores its numbers under the new file's
version), and of its registration (defaults, bounds, symmetry, direction, the engine's settings).
Editing any of them gives new versions. It takes the pipeline's parameters named in its
``defaults`` (``topk``, ``kernel_metric``, ``rbf_sigma``, ``cca_dim``, ``knn_precision``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import re
import sys
import traceback
from typing import Any

METRIC_MODULES_ENV = "PRH_METRIC_MODULES"
#: Pipeline-wide metric parameters (``AlignmentParams`` fields) a metric may take.
PIPELINE_METRIC_PARAMETERS = ("topk", "knn_precision", "kernel_metric", "rbf_sigma", "cca_dim")
#: Module name -> digest of its source file when this process first saw it imported.
_IMPORTED: dict[str, str] = {}


def metric_module_names(environ: Any = None) -> tuple[str, ...]:
    """The module names in ``$PRH_METRIC_MODULES`` (comma or space separated), in order."""
    value = (os.environ if environ is None else environ).get(METRIC_MODULES_ENV, "")
    return tuple(name for name in re.split(r"[,\s]+", value) if name)


def load_metric_modules(environ: Any = None) -> tuple[str, ...]:
    """Import every module of ``$PRH_METRIC_MODULES`` (once: Python caches modules) and note its
    source digest as imported; returns their names. A module that fails is named with the file
    and line of the failure (ValueError), and the metrics it registered before failing are
    removed again (a retry then reports the same failure)."""
    from tasks.metrics import METRICS

    names = metric_module_names(environ)
    for name in names:
        before = set(METRICS)
        try:
            module = importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure of the user's module, named
            for added in set(METRICS) - before:
                METRICS._specs.pop(added, None)
            where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
            at = f" at {where.filename}:{where.lineno}" if where is not None else ""
            raise ValueError(f"${METRIC_MODULES_ENV}: cannot import {name!r} ({type(error).__name__}: {error}){at}; "
                             "it names the modules that register your metrics (importable from this process)") from error
        _IMPORTED.setdefault(name, _file_digest(module))
    return names


def _file_digest(module: Any) -> str:
    """SHA-256 of a module's source file (its name where it has none)."""
    try:
        path = inspect.getsourcefile(module)
        if path:
            with open(path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
    except (OSError, TypeError):
        pass
    return f"no source: {getattr(module, '__name__', module)!r}"


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

    spec = METRICS[name]
    target = spec.engine.fn if isinstance(spec.engine, FunctionEngine) else type(spec.engine)
    if isinstance(target, functools.partial):  # its settings are part of what it computes
        settings = (_plain(target.args), sorted((k, _plain(v)) for k, v in target.keywords.items()))
        target = target.func
    else:
        settings = ()
    parts = {f"plugin {module}": _IMPORTED.get(module) or _digest_of(module) for module in metric_module_names()}
    defining = inspect.getmodule(target)
    if defining is not None:
        parts[f"defined in {defining.__name__}"] = _IMPORTED.get(defining.__name__) or _remember(defining)
    parts["registration"] = repr((
        getattr(target, "__module__", None), getattr(target, "__qualname__", type(target).__qualname__), settings,
        _describe(spec.bounds), spec.symmetric, spec.locality, spec.higher_is_better,
        sorted((k, _plain(v)) for k, v in spec.defaults.items()), _describe(spec.chance),
        sorted((k, _plain(v)) for k, v in vars(spec.engine).items() if k not in ("fn", "variant")),
    ))
    return "sha256:" + hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()


def _remember(module: Any) -> str:
    return _IMPORTED.setdefault(module.__name__, _file_digest(module))


def _digest_of(name: str) -> str:
    module = sys.modules.get(name)
    return _remember(module) if module is not None else f"not imported: {name}"


def _plain(value: Any) -> str:
    """``repr`` of plain values (numbers, text, None, tuples and lists of them); the type name of
    anything else (an object's repr may hold its address, which would change every process)."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return repr([_plain(v) for v in value])
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _describe(value: Any) -> str:
    """A stable description of a bounds pair or a callable (its module and qualified name)."""
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return _plain(value)


def metric_parameters(name: str) -> tuple[str, ...]:
    """The pipeline parameters a user metric takes: those named in its ``defaults``."""
    from tasks.metrics import METRICS

    defaults = METRICS[name].defaults
    return tuple(p for p in PIPELINE_METRIC_PARAMETERS if p in defaults)
