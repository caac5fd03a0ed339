"""Your own metrics in the pipeline: modules named by ``$PRH_METRIC_MODULES`` register them.

``tasks.metrics.register_metric`` adds a metric to the engine for a Python session. For
``prh run``, scheduled deployments and workers, set ``PRH_METRIC_MODULES`` to importable module
names (comma or space separated, e.g. ``mylab.metrics``); :func:`load_metric_modules` imports
them before a config's metric names are checked, before the UI form lists them and before an
alignment task computes, so a config can name ``metrics: [my_metric]``. Importing a module runs
its code: the variable belongs to whoever runs the process (never to a config or the UI form),
like ``trust_remote_code``.

A user metric's alignment version includes the SHA-256 of the source file of the module that
defines it (:func:`metric_source`): editing that file gives new versions, so stored scores of
the old code are never reused. It takes the pipeline's parameters named in its ``defaults``
(``topk``, ``kernel_metric``, ``rbf_sigma``, ``cca_dim``, ``knn_precision``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
from typing import Any

METRIC_MODULES_ENV = "PRH_METRIC_MODULES"
#: Pipeline-wide metric parameters (``AlignmentParams`` fields) a metric may take.
PIPELINE_METRIC_PARAMETERS = ("topk", "knn_precision", "kernel_metric", "rbf_sigma", "cca_dim")
_BUILTIN_PREFIX = "tasks.metrics"


def metric_module_names(environ: Any = None) -> tuple[str, ...]:
    """The module names in ``$PRH_METRIC_MODULES`` (comma or space separated), in order."""
    value = (os.environ if environ is None else environ).get(METRIC_MODULES_ENV, "")
    return tuple(name for name in re.split(r"[,\s]+", value) if name)


def load_metric_modules(environ: Any = None) -> tuple[str, ...]:
    """Import every module of ``$PRH_METRIC_MODULES`` (once: Python caches modules); returns
    their names. Raises ValueError naming the variable and the module that cannot be imported."""
    names = metric_module_names(environ)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure of the user's module, named
            raise ValueError(f"${METRIC_MODULES_ENV}: cannot import {name!r} ({type(error).__name__}: {error}); "
                             "it names the modules that register your metrics (importable from this process)") from None
    return names


def _defined_by(name: str) -> Any:
    """The function or Engine class that implements registered metric ``name``."""
    from tasks.metrics import METRICS
    from tasks.metrics.engine import FunctionEngine

    engine = METRICS[name].engine
    return engine.fn if isinstance(engine, FunctionEngine) else type(engine)


def metric_source(name: str) -> str | None:
    """``sha256:<hex>`` of the source file of the module defining registered metric ``name``;
    None for a built-in metric (``tasks.metrics``: its code is in every alignment version). A
    metric defined where no source file exists (an interactive session) is named by its module
    and qualified name instead (a changed definition is then not noticed)."""
    target = _defined_by(name)
    module = inspect.getmodule(target)
    module_name = module.__name__ if module is not None else str(getattr(target, "__module__", ""))
    if module_name == _BUILTIN_PREFIX or module_name.startswith(_BUILTIN_PREFIX + "."):
        return None
    try:
        path = inspect.getsourcefile(module) if module is not None else None
        if path:
            with open(path, "rb") as handle:
                return "sha256:" + hashlib.sha256(handle.read()).hexdigest()
    except (OSError, TypeError):
        pass
    return f"{module_name}:{getattr(target, '__qualname__', repr(target))}"


def metric_parameters(name: str) -> tuple[str, ...]:
    """The pipeline parameters a user metric takes: those named in its ``defaults``."""
    from tasks.metrics import METRICS

    defaults = METRICS[name].defaults
    return tuple(p for p in PIPELINE_METRIC_PARAMETERS if p in defaults)
