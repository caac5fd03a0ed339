"""Which files of the alignment code a built-in metric's numbers can depend on.

A metric version (``tasks.align_task.metric_versions``, ``tasks.reused_metrics``) names the code
that computed the metric's results. Naming the whole alignment code made any change to one
engine (``tasks/metrics/cknna.py``, say) a new version of every metric of every stored pair, so
a zoo computed them all again; naming only what can reach the metric's numbers lets the next run
copy the others.

A module of ``tasks/metrics`` is left out of a built-in metric's files only when no chain of
imports (at any depth of the module: a function's local import counts) reaches it, neither from
the module defining the metric's engine nor from the code every metric runs through: the
alignment code outside ``tasks/metrics`` (``tasks.align_task.ALIGNMENT_CODE``) and the modules
that ``tasks/metrics/__init__.py`` and ``builtin.py`` import, besides the built-in engines they
import to register them (those two modules' own text is everyone's). What no import reaches
cannot run. A user metric's code is its own (``tasks.metric_plugins.metric_source``); since it
may call into any module of the package, its version names the whole alignment code, as every
version did before.
"""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path

from storage.versioning import _PROJECT_ROOT

#: the package of the engines, project-relative
PACKAGE = "tasks/metrics"
#: modules of the package whose imports only register the engines (not followed, their own text kept)
REGISTERING = ("__init__", "builtin")


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The modules of :data:`PACKAGE` (file stems in ``modules``) that ``path`` imports anywhere
    in its text: ``from .x import``, ``from . import x``, ``from tasks.metrics.x import``, ``from
    tasks.metrics import x``, ``import tasks.metrics.x``."""
    package = PACKAGE.replace("/", ".")
    inside = path.parent == _PROJECT_ROOT / PACKAGE
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and inside or node.module == package:
                base = node.module if node.level == 1 else None
                found.update([base.split(".")[0]] if base else [alias.name for alias in node.names])
            elif node.module and node.module.startswith(package + "."):
                found.add(node.module[len(package) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name[len(package) + 1:].split(".")[0] for alias in node.names
                         if alias.name.startswith(package + "."))
    return found & modules


@functools.lru_cache(maxsize=8)
def _import_graph(outside: tuple[str, ...]) -> tuple[dict[str, set[str]], set[str]]:
    """(module stem -> the package's modules it imports, for every module of :data:`PACKAGE`;
    the package's modules the files ``outside`` it import), from the sources as they are."""
    files = {path.stem: path for path in sorted((_PROJECT_ROOT / PACKAGE).glob("*.py"))}
    modules = set(files)
    graph = {stem: _imported_modules(path, modules) for stem, path in files.items()}
    roots: set[str] = set()
    for name in outside:
        root = _PROJECT_ROOT / name
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            if not path.is_relative_to(_PROJECT_ROOT / PACKAGE):
                roots |= _imported_modules(path, modules)
    return graph, roots


def _reached(graph: dict[str, set[str]], starts: set[str]) -> set[str]:
    """``starts`` and every module reached from them by imports, not following :data:`REGISTERING`'s."""
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        stem = todo.pop()
        if stem in seen:
            continue
        seen.add(stem)
        if stem not in REGISTERING:
            todo.extend(graph.get(stem, ()))
    return seen


def unreachable_files(engine: object, alignment_code: tuple[str, ...], engine_modules: set[str]) -> tuple[str, ...]:
    """Project-relative paths of the modules of :data:`PACKAGE` that the numbers of a built-in
    metric computed by ``engine`` cannot run (see the module's docstring), for
    ``storage.versioning.code_version``'s ``exclude``. ``alignment_code``: the alignment code's
    packages and files; ``engine_modules``: the module names (``tasks.metrics.x``) of every
    built-in metric's engine. Nothing when ``engine``'s class is defined outside the package."""
    own = inspect.getmodule(type(engine))
    package = PACKAGE.replace("/", ".") + "."
    if own is None or not own.__name__.startswith(package):
        return ()
    graph, roots = _import_graph(tuple(name for name in alignment_code if name != PACKAGE))
    engines = {name[len(package):] for name in engine_modules if name.startswith(package)}
    registered = set().union(*(graph.get(stem, set()) for stem in REGISTERING))
    shared = _reached(graph, roots | set(REGISTERING) | (registered - engines))
    needed = shared | _reached(graph, {own.__name__[len(package):]})
    return tuple(f"{PACKAGE}/{stem}.py" for stem in sorted(set(graph) - needed))
