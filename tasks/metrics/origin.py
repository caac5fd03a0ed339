"""Where a registered metric's code comes from, read when it is registered.

``register_metric`` runs while the module defining the metric is being imported (or when a
notebook cell runs), so the files read then are the ones whose code the process runs; a file
edited afterwards, without a reload, is not what computes. :func:`source_snapshot` records, for a
registration's function or ``Engine`` class:

- the defining module's file: SHA-256 of its source (``sha256:...``), of its compiled file where
  it has no source (``compiled:...``), or nothing where neither can be read (a notebook's
  ``__main__``: ``tasks.metric_plugins.code_digest`` then covers the compiled code);
- the other modules of its top-level package imported by then (a helper ``mylab.kernels`` that
  ``mylab.metrics`` calls), read the same way, when the package is the user's own code (not
  installed in a site-packages folder, not the standard library);
- for a module installed as a distribution (site-packages): the distribution's name and version
  instead of its files.

Modules a metric imports only when it runs, and packages other than its own (``torch``, another
of the user's packages), are not covered. ``tasks.metric_plugins.metric_source`` hashes the
snapshot into the metric's alignment versions. Pure file reading: no import, no code run.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import sys
import sysconfig
from typing import Any

#: module name -> (its ``__spec__`` when read, :func:`file_digest` then): a module's file is read
#: once per import (a reload gives the module a new ``__spec__`` object, and so a new reading)
_READ: dict[str, tuple[Any, str | None]] = {}
#: this project's own top-level package: its metrics' code is in the alignment code version
_OWN_PACKAGE = __name__.split(".")[0]
#: folders of the standard library and of installed distributions (their modules are not the user's)
_INSTALLED = tuple({os.path.realpath(p) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib")
                    if (p := sysconfig.get_paths().get(key))})


def code_target(obj: Any) -> Any:
    """What a registration runs: the function under a ``functools.partial``, the function of a
    bound method, the class of a callable instance or an engine; a function or class as is."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.ismethod(obj):
        obj = obj.__func__
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
        obj = type(obj)
    return obj


def file_digest(module: Any) -> str | None:
    """``sha256:<hex>`` of a module's source file; ``compiled:<hex>`` of its compiled file
    (``.pyc``, an extension) where it has no source; None where neither can be read."""
    try:
        path = inspect.getsourcefile(module)
    except TypeError:  # a module without a file: __main__ of a REPL or notebook, a built-in
        path = None
    prefix = "sha256:"
    if not path:
        path, prefix = getattr(module, "__file__", None), "compiled:"
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return prefix + hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def module_digest(module: Any) -> str | None:
    """:func:`file_digest` of ``module`` as first read since it was (re)imported."""
    name, marker = module.__name__, getattr(module, "__spec__", None)
    seen = _READ.get(name)
    if seen is None or seen[0] is not marker:
        seen = _READ[name] = (marker, file_digest(module))
    return seen[1]


def is_installed(module: Any) -> bool:
    """Whether ``module``'s file lies in the standard library or a site-packages folder."""
    path = getattr(module, "__file__", None)
    return bool(path) and os.path.realpath(path).startswith(_INSTALLED)


def source_snapshot(obj: Any) -> dict[str, str]:
    """Module name -> what its code was, for the registration of ``obj`` (see the module docstring)."""
    module = inspect.getmodule(code_target(obj))
    if module is None:
        return {}
    top = module.__name__.split(".")[0]
    if is_installed(module):
        return {module.__name__: f"installed: {_distribution_of(top)}"}
    family = [module]
    if top != _OWN_PACKAGE:
        family += [m for name, m in list(sys.modules.items()) if isinstance(m, type(sys))
                   and m is not module and (name == top or name.startswith(top + ".")) and not is_installed(m)]
    return {member.__name__: digest for member in family if (digest := module_digest(member)) is not None}


def _distribution_of(top: str) -> str:
    """``name==version`` of the distribution(s) that install package ``top``, or its name alone."""
    from importlib import metadata

    try:
        names = metadata.packages_distributions().get(top) or [top]
        return ", ".join(f"{name}=={metadata.version(name)}" for name in sorted(set(names)))
    except Exception:  # noqa: BLE001 - no metadata: the package's name alone
        return top
