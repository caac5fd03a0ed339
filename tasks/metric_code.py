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
(nor a read of ``tasks.metrics.x`` off the package) cannot run, but for what the registering
modules call in an engine's module (``subspace_metrics.register``): a test holds each built-in's
registration to a file of its version (``tests/tasks/test_metric_code.py``). Code an engine
module runs when imported (a global setting) would reach every metric unseen; none does. A user
metric's code is its own (``tasks.metric_plugins.metric_source``); since it may call into any
module of the package, its version names the whole alignment code, as every version did before.
"""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path

from storage.versioning import PROJECT_ROOT, parse_source, source_files

#: the package of the engines, project-relative
PACKAGE = "tasks/metrics"
#: modules of the package whose imports only register the engines (not followed, their own text kept)
REGISTERING = ("__init__", "builtin")


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The modules of :data:`PACKAGE` (file stems in ``modules``) that the file ``path`` imports
    anywhere in its text (``_modules_named``); its relative imports are read from where it lies
    in the project (none resolve for a file outside it)."""
    try:
        parts = path.resolve().relative_to(PROJECT_ROOT).with_suffix("").parts
    except ValueError:
        parts = ()
    return _modules_named(path.read_text(encoding="utf-8"), ".".join(parts), modules)


def _absolute(node: ast.ImportFrom, importer: str) -> str | None:
    """The module a ``from ... import`` names, made absolute from the dotted name of the module
    that holds it (``importer``; its package when it is an ``__init__``); None when it cannot be."""
    if not node.level:
        return node.module
    package = importer.split(".")[:-1]  # a module's package; an ``__init__``'s is its own
    if not importer or node.level - 1 > len(package):
        return None
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else [])) or None


def _modules_named(source: str, importer: str, modules: set[str]) -> set[str]:
    """The modules of :data:`PACKAGE` (file stems in ``modules``) that Python ``source`` (the text
    of module ``importer``, dotted) imports anywhere, whatever the form: ``from .x import``,
    ``from . import x``, ``from ..metrics.x import`` and other relative forms,
    ``from tasks.metrics.x import``, ``from tasks.metrics import x``, ``import tasks.metrics.x``;
    and a module read as an attribute of a name bound to the package (``metrics.x`` after ``from
    tasks import metrics``, ``tasks.metrics.x`` after ``import tasks.metrics``), which runs a
    module that another import loaded."""
    package = PACKAGE.replace("/", ".")
    found: set[str] = set()
    bound = {package}  # names that are the package in this file, as dotted text
    tree = parse_source(source)  # ast.parse, safe from CPython 3.11's race of threads parsing at once
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer)
            for alias in node.names:
                full = f"{module}.{alias.name}" if module else alias.name
                if full == package:
                    bound.add(alias.asname or alias.name)
            if module == package:
                found.update(alias.name for alias in node.names)
            elif module and module.startswith(package + "."):
                found.add(module[len(package) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(package + "."):
                    found.add(alias.name[len(package) + 1:].split(".")[0])
                elif alias.name == package and alias.asname:
                    bound.add(alias.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in modules:
            if ast.unparse(node.value) in bound:
                found.add(node.attr)
    return found & modules


@functools.lru_cache(maxsize=8)
def _import_graph(outside: tuple[str, ...]) -> tuple[dict[str, set[str]], set[str]]:
    """(module stem -> the package's modules it imports, for every module of :data:`PACKAGE`;
    the package's modules the files ``outside`` it import), from the sources as they are."""
    files = {path.stem: path for path in sorted((PROJECT_ROOT / PACKAGE).glob("*.py"))}
    modules = set(files)
    graph = {stem: _imported_modules(path, modules) for stem, path in files.items()}
    roots: set[str] = set()
    for name in outside:
        for path in source_files(name):
            if not path.is_relative_to(PROJECT_ROOT / PACKAGE):
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
