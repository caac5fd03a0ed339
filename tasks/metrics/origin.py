"""Where a registered metric's code comes from, read when it is registered.

``register_metric`` runs while the module defining the metric is being imported (or when a
notebook cell runs), so the files read then are the ones whose code the process runs; a file
edited afterwards, without a reload, is not what computes. :func:`source_snapshot` records, for a
registration's function or ``Engine`` class:

- the defining module's file: SHA-256 of its source (``sha256:...``), of its compiled file where
  it has no source (``compiled:...``), or nothing where neither can be read (a notebook's
  ``__main__``: ``tasks.metric_plugins.code_digest`` then covers the compiled code);
- the modules of its top-level package that it uses, transitively (a helper ``mylab.kernels``
  whose module or functions ``mylab.metrics`` imports), read the same way, when the package is the
  user's own code (not installed in a site-packages folder, not the standard library);
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
from types import ModuleType
from typing import Any

import numpy as np

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
    family = [module] if top == _OWN_PACKAGE else _package_modules_used(module, top)
    return {member.__name__: digest for member in family if (digest := module_digest(member)) is not None}


def _package_modules_used(module: ModuleType, top: str) -> list[ModuleType]:
    """``module`` and the modules of its package ``top`` that it uses, transitively: those its
    namespace holds (``from lab import kernels``) or whose functions and classes it holds (``from
    lab.kernels import scaled``), not installed ones. What other modules of the package happen to
    be imported does not matter (an unrelated ``lab.viz`` imported first gave another version)."""
    found = {module.__name__: module}
    todo = [module]
    while todo:
        for value in list(vars(todo.pop()).values()):
            if isinstance(value, ModuleType):
                used: ModuleType | None = value
            elif inspect.isfunction(value) or inspect.isclass(value):
                used = sys.modules.get(getattr(value, "__module__", None) or "")
            else:
                continue
            if used is None or used.__name__ in found or is_installed(used):
                continue
            if used.__name__ == top or used.__name__.startswith(top + "."):
                found[used.__name__] = used
                todo.append(used)
    return [found[name] for name in sorted(found)]


def registration_state(fn: Any = None, engine: Any = None) -> str:
    """What a registration's function or engine holds besides its code, as registered (before any
    use can change it: an engine filling a cache, an object building a projection on its first
    call): a ``functools.partial``'s arguments (every level), a callable object's or a bound
    method's object's attributes, an engine's attributes; arrays and tensors by value."""
    if engine is not None:
        return repr(("engine", sorted((k, plain(v)) for k, v in vars(engine).items() if k not in ("fn", "variant"))))
    return repr(("function", _settings_of(fn)))


def _settings_of(fn: Any) -> Any:
    if fn is None or inspect.isfunction(fn) or inspect.isclass(fn) or inspect.isbuiltin(fn):
        return ()
    if isinstance(fn, functools.partial):
        return ("partial", plain(fn.args), sorted((k, plain(v)) for k, v in fn.keywords.items()), _settings_of(fn.func))
    if inspect.ismethod(fn):
        return ("method of", _state(fn.__self__))
    return ("instance", _state(fn))


def _state(obj: Any) -> Any:
    """An object's attributes as plain values, or the object's own description."""
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        return sorted((k, plain(v)) for k, v in attributes.items())
    return plain(obj)


def plain(value: Any) -> str:
    """``repr`` of plain values (numbers, text, None, tuples, lists and dicts of them); arrays and
    tensors by dtype, shape and the SHA-256 of their values (a weight matrix a metric holds); the
    type name of anything else (an object's repr may hold its address, which would change every
    process)."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return repr([plain(v) for v in value])
    if isinstance(value, dict):
        return repr(sorted((plain(k), plain(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return f"<numpy {value.dtype} {value.shape} {hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}>"
    torch = sys.modules.get("torch")  # a tensor's module is loaded
    if torch is not None and isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return f"<torch {value.dtype} {tuple(value.shape)} {hashlib.sha256(data).hexdigest()}>"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _distribution_of(top: str) -> str:
    """``name==version`` of the distribution(s) that install package ``top``, or its name alone."""
    from importlib import metadata

    try:
        names = metadata.packages_distributions().get(top) or [top]
        return ", ".join(f"{name}=={metadata.version(name)}" for name in sorted(set(names)))
    except Exception:  # noqa: BLE001 - no metadata: the package's name alone
        return top
