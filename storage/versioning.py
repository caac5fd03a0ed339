"""Content-addressed version ids.

A version id is the first 16 hex digits of the SHA-256 of a canonical JSON encoding of
everything that determines the versioned object. Same inputs, same id.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import io
import json
import math
import os
import re
import sys
import threading
import time
import tokenize
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from storage import loaded_code

ID_LENGTH = 16
#: the project's root: the packages a code version hashes are named relative to it
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, non-ASCII kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_id(obj: Any) -> str:
    """Version id of a JSON-able object: sha256(canonical_json(obj))[:16]."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:ID_LENGTH]


def table_digest(table: pa.Table, columns: list[str] | None = None) -> str:
    """SHA-256 hex digest of a table's content, column by column, row order included.

    Hashes each column's values (not the Parquet encoding), so the digest is independent of
    compression, chunking and pyarrow version.
    """
    h = hashlib.sha256()
    for name in columns or table.column_names:
        h.update(name.encode("utf-8") + b"\0")
        column = table.column(name).combine_chunks()
        for value in column.to_pylist():
            if value is None:
                h.update(b"\1N")
            elif isinstance(value, bytes):
                h.update(len(value).to_bytes(8, "little") + value)
            else:
                encoded = str(value).encode("utf-8")
                h.update(len(encoded).to_bytes(8, "little") + encoded)
    return h.hexdigest()


#: CPython 3.11 keeps the AST converter's recursion counter in interpreter-wide state: two threads
#: parsing at once (tasks of one flow run computing their versions) can fail with "SystemError: AST
#: constructor recursion depth mismatch". One parse at a time in this process.
_AST_LOCK = threading.Lock()
#: The lock orders our own parses only: a thread of Prefect or of the standard library (3.11's
#: ``traceback`` parses source lines to place its ``^^^`` marks) can still parse during ours. The
#: counter is reset at the start of every parse, so the parse is simply repeated (a nightly run
#: had failed at its first step on this error).
_AST_RACE_ATTEMPTS = 8


def parse_source(source: str) -> ast.Module:
    """``ast.parse(source)``, repeated while CPython 3.11's AST recursion-counter race (another
    thread parsing at the same moment) fails it with ``SystemError``; raises after
    ``_AST_RACE_ATTEMPTS`` such failures in a row, and at once on any other error."""
    for attempt in range(_AST_RACE_ATTEMPTS):
        try:
            with _AST_LOCK:
                return ast.parse(source)
        except SystemError as error:
            if "recursion depth mismatch" not in str(error) or attempt == _AST_RACE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class CodeChangedOnDisk(RuntimeError):
    """The code on disk is not the code this process imported (an upgrade in place under a running
    worker, Dask worker or notebook): what it computes must not be stored under a version."""


def code_version(*packages: str, exclude: tuple[str, ...] = (), watch: bool = True) -> str:
    """Hash of the source of the given project packages (e.g. ``"tasks/extract"``), less the
    files in ``exclude`` (project-relative paths: modules that cannot change the numbers).

    A change to the code that computes a stage changes that stage's versions; edits elsewhere
    (the CLI, the README) do not, and neither do edits to comments, docstrings, blank lines or
    trailing whitespace inside the packages (``behaviour_source``): rewording a docstring must
    not re-extract a model zoo.

    The files of ``tasks/`` and ``storage/`` are hashed as this process imported them
    (``storage.loaded_code``), not as they are on disk now: the version names the code that runs.
    Where one of them (or the set of files of a package) differs in behaviour on disk now, since an
    upgrade in place, this raises :class:`CodeChangedOnDisk` naming the file: the process runs
    the old code and may import some of the new, so nothing it computes has a version;
    :func:`refuse_stale_code` refuses its publishing the same way. ``watch=False``: a version that
    keys no result (a run record's whole-tree version, ``prh --version``), the imported code's hash
    without that check, and its files not watched by :func:`refuse_stale_code` (an edit anywhere
    under ``tasks/`` or ``storage/`` had refused every publish of a run that names it).
    """
    key = (packages, exclude)
    _note_libraries()  # what it runs, as soon as it is imported: an upgrade after this is refused at publishing
    if watch:
        now = time.monotonic()
        if now - _CHECKED_AT.get(key, -math.inf) >= RECHECK_SECONDS:
            _refuse_changed(packages, exclude)
            _CHECKED_AT[key] = now
        with _USED_LOCK:
            _USED.add(key)
    return _code_version(packages, exclude)


@lru_cache(maxsize=None)
def _code_version(packages: tuple[str, ...], exclude: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for package in packages:
        imported = _imported_files(package)
        if imported is None:  # not a package of this checkout's snapshot: as it is on disk
            named = [(path.relative_to(PROJECT_ROOT).as_posix(), path) for path in source_files(package)]
            texts = ((name, path.read_text(encoding="utf-8")) for name, path in named if name not in exclude)
        else:
            texts = ((name, _imported_text(name)) for name in imported if name not in exclude)
        for name, text in texts:
            h.update(name.encode() + b"\0")
            h.update(_file_behaviour(text).encode("utf-8") + b"\0")
    return h.hexdigest()[:ID_LENGTH]


code_version.cache_clear = _code_version.cache_clear  # type: ignore[attr-defined]

#: A code version's files are checked against the disk again at most this often (seconds): a run asks
#: for the alignment code's version once per metric and pair. What is hashed is the imported text
#: either way; publishing checks every time (:func:`refuse_stale_code`).
RECHECK_SECONDS = 1.0
#: (packages, exclude) -> ``time.monotonic()`` of its last check that found the code unchanged
_CHECKED_AT: dict[tuple[tuple[str, ...], tuple[str, ...]], float] = {}
#: the (packages, exclude) of every code version this process worked out: what its publishing checks
_USED: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
_USED_LOCK = threading.Lock()
#: import name -> distribution of the libraries whose installed version enters version ids (read
#: from the distribution's metadata: ``tasks.extract.spec`` and ``tasks.extract_task.model_fingerprint``
#: for a model's features, ``storage.figure_cache.drawing_version`` for the report's figures)
VERSIONED_LIBRARIES = {"transformers": "transformers", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
                       "matplotlib": "matplotlib", "torch": "torch"}
RESTART_ADVICE = "restart this process (the worker, the Dask workers, the notebook's kernel) to run the code installed now"
#: distribution -> its installed version (metadata) when this process first saw the library
#: imported (:func:`_note_libraries`): what it runs. The library's own ``__version__`` is not
#: compared: one that lags its metadata (a hard-coded string, a source checkout) had refused every
#: publish, in every process.
_LIBRARY_SEEN: dict[str, str | None] = {}


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (its metadata), None where it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _note_libraries() -> None:
    """Record the installed version of each library of :data:`VERSIONED_LIBRARIES` imported in
    this process and not seen before (its metadata read once per process)."""
    for module_name, distribution in VERSIONED_LIBRARIES.items():
        if distribution not in _LIBRARY_SEEN and module_name in sys.modules:
            version = installed_version(distribution)
            with _USED_LOCK:
                _LIBRARY_SEEN.setdefault(distribution, version)


def refuse_stale_code() -> None:
    """Raise :class:`CodeChangedOnDisk`, one line naming the file or library, where this process
    no longer runs the code that the versions it worked out name: a file they hashed whose
    behaviour on disk differs from the one this process imported (or a file added to or removed
    from their packages), or a library of :data:`VERSIONED_LIBRARIES` imported here whose
    installed version is another than when this process first saw it (``pip install -U`` under a
    running worker). Called before anything is published (``storage.store.Store.publish``)."""
    with _USED_LOCK:
        used = sorted(_USED)
    shot = loaded_code.taken()
    files: dict[str, None] = {}
    folders: dict[str, set[str]] = {}  # folder -> the files every version watching it leaves out
    for packages, exclude in used:
        watched_files, watched_folders = _watched(packages, exclude)
        files.update(dict.fromkeys(watched_files))
        for folder in watched_folders:
            folders[folder] = folders[folder] & set(exclude) if folder in folders else set(exclude)
    if shot is not None:
        for folder, left_out in folders.items():
            _refuse_changed_listing(shot, folder, tuple(left_out))
        for file in files:
            if how := _how_changed(shot, file):
                raise _changed(file, how)
    _note_libraries()
    for distribution in sorted(set(VERSIONED_LIBRARIES.values())):
        seen = _LIBRARY_SEEN.get(distribution)
        if seen is None:
            continue
        installed = installed_version(distribution)
        if installed is not None and _same_release(installed, seen):
            continue
        now = f"{installed} is installed now" if installed is not None else "it is no longer installed"
        raise CodeChangedOnDisk(f"{distribution} {seen} is what this process imported, but {now} (an upgrade "
                                f"under a running process): results of the old library would be stored under the "
                                f"new one's versions; {RESTART_ADVICE}")


def refuse_loaded_library(distribution: str | None, version: str | None) -> None:
    """Raise :class:`CodeChangedOnDisk` where ``distribution`` (of :data:`VERSIONED_LIBRARIES`) was
    installed at another version than ``version``, the one a version id names, when this process
    first saw it imported (the id read the metadata before the library was imported, and it was
    upgraded between)."""
    _note_libraries()
    seen = _LIBRARY_SEEN.get(distribution) if distribution is not None else None
    if version is not None and seen is not None and not _same_release(seen, version):
        raise CodeChangedOnDisk(f"{distribution} {seen} is what this process imported, but the version being "
                                f"published names {version} (installed meanwhile): {RESTART_ADVICE}")


def _same_release(a: str, b: str) -> bool:
    """Whether two version strings name one release (``1.0`` and ``1.0.0`` do)."""
    if a == b:
        return True
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return False
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def _imported_files(package: str) -> list[str] | None:
    """Project-relative paths of ``package``'s files as this process imported them (sorted as
    :func:`source_files` sorts), or None where the snapshot does not hold it (no snapshot, another
    ``PROJECT_ROOT``, a folder outside ``tasks/`` and ``storage/``). A file or package that is on
    disk now but was not then raises :class:`CodeChangedOnDisk`."""
    shot = loaded_code.taken()
    if shot is None or PROJECT_ROOT != loaded_code.ROOT:
        return None
    name = (PROJECT_ROOT / package).relative_to(PROJECT_ROOT).as_posix()
    if name.split("/")[0] not in loaded_code.PACKAGES:
        return None
    if name in shot.files:
        return [name]
    if name in shot.folders:
        return sorted((f for f in shot.files if f.startswith(name + "/")), key=lambda f: PurePosixPath(f).parts)
    if source_files(package):
        raise _changed(name, "was added")
    return []


def _imported_text(name: str) -> str:
    """The text of project file ``name`` as imported, decoded as ``Path.read_text`` decodes."""
    shot = loaded_code.taken()
    assert shot is not None
    return io.TextIOWrapper(io.BytesIO(shot.files[name]), encoding="utf-8").read()


def _changed(name: str, how: str) -> CodeChangedOnDisk:
    return CodeChangedOnDisk(f"{name} {how} on disk since this process imported prh's code (an upgrade in place "
                             f"under a running process): what it computes would be stored under the version of "
                             f"other code; {RESTART_ADVICE}")


def _watched(packages: tuple[str, ...], exclude: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(files, folders) of the snapshot that the check of a code version of ``packages`` less
    ``exclude`` reads: its files, and its packages' folders (where a file added or removed
    shows). Worked out once per code version (``_WATCHED``): a run asks for the alignment code's
    version once per metric and pair."""
    key = (packages, exclude, PROJECT_ROOT)
    found = _WATCHED.get(key)
    if found is None:
        shot = loaded_code.taken()
        files: list[str] = []
        folders: list[str] = []
        for package in packages:
            imported = _imported_files(package)
            if imported is None or shot is None:
                continue
            name = (PROJECT_ROOT / package).relative_to(PROJECT_ROOT).as_posix()
            if name in shot.folders:
                folders += [f for f in list(shot.folders) if f == name or f.startswith(name + "/")]
            files += [f for f in imported if f not in exclude]
        found = _WATCHED[key] = (tuple(files), tuple(folders))
    return found


#: (packages, exclude, PROJECT_ROOT) -> :func:`_watched`; emptied when a new folder is watched
_WATCHED: dict[tuple[tuple[str, ...], tuple[str, ...], Path], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _refuse_changed(packages: tuple[str, ...], exclude: tuple[str, ...]) -> None:
    """Raise :class:`CodeChangedOnDisk` naming the first file of ``packages`` (less ``exclude``)
    whose behaviour on disk is not the imported one, or that was added or removed since."""
    shot = loaded_code.taken()
    if shot is None:
        return
    files, folders = _watched(packages, exclude)
    for folder in folders:
        _refuse_changed_listing(shot, folder, exclude)
    for file in files:
        if how := _how_changed(shot, file):
            raise _changed(file, how)


#: :data:`storage.loaded_code.ROOT` as text (a ``Path`` join costs more than the ``stat``)
_ROOT_TEXT = str(loaded_code.ROOT)


def _how_changed(shot: loaded_code.Snapshot, name: str) -> str | None:
    """None where project file ``name`` on disk behaves as its imported text: the same ``stat`` (no
    read), else the same bytes or the same :func:`behaviour_source` (an edited comment); else how
    it changed."""
    path = os.path.join(_ROOT_TEXT, name)
    try:
        if loaded_code.stat_key(os.stat(path)) == shot.stats.get(name):
            return None
        with open(path, "rb") as handle:
            key = loaded_code.stat_key(os.fstat(handle.fileno()))
            data = handle.read()
    except FileNotFoundError:
        return "was removed"
    except OSError as error:  # (ESTALE, EACCES on a network checkout): said, not taken for an upgrade
        return f"cannot be read ({error.strerror or error})"
    if data != shot.files[name]:
        try:
            now = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
        except UnicodeDecodeError:
            return "changed"
        if _file_behaviour(now) != _file_behaviour(_imported_text(name)):
            return "changed"
    shot.stats[name] = key  # the same code: no need to read it again while it stays so
    return None


def _refuse_changed_listing(shot: loaded_code.Snapshot, folder: str, exclude: tuple[str, ...]) -> None:
    """Raise :class:`CodeChangedOnDisk` naming a ``*.py`` file added to or removed from ``folder``
    (project-relative) since the snapshot (not one of ``exclude``), or a new subfolder holding one.
    Read only when the folder's modification time moved."""
    mtime_then, names_then = shot.folders[folder]
    path = loaded_code.ROOT / folder
    try:
        if os.stat(path).st_mtime_ns == mtime_then:
            return
        mtime, names, subfolders = loaded_code.folder_listing(path)
    except FileNotFoundError:
        raise _changed(folder, "was removed") from None
    except OSError as error:
        raise _changed(folder, f"cannot be listed ({error.strerror or error})") from error
    for name in sorted(names - names_then):
        if f"{folder}/{name}" not in exclude:
            raise _changed(f"{folder}/{name}", "was added")
    for name in sorted(names_then - names):
        if f"{folder}/{name}" not in exclude:
            raise _changed(f"{folder}/{name}", "was removed")
    for subfolder in subfolders:
        known = loaded_code.relative(subfolder)
        if known not in shot.folders:
            added = [p for p in source_files(known) if loaded_code.relative(p) not in exclude]
            if added:
                raise _changed(loaded_code.relative(added[0]), "was added")
            with contextlib.suppress(OSError):  # a new folder without code (__pycache__): watched from now on
                shot.folders[known] = (os.stat(subfolder).st_mtime_ns, frozenset())
                _WATCHED.clear()
    if names == names_then:  # kept only where nothing differs: a file another exclude leaves out is still seen
        shot.folders[folder] = (mtime, names)


@lru_cache(maxsize=4096)
def _file_behaviour(source: str) -> str:
    """:func:`behaviour_source` of one file's text, worked out once per process and text. A run
    asks :func:`code_version` for several overlapping sets of files (``tasks`` and ``storage`` for
    its record, ``tasks/data``, the extraction code, the alignment code once more per metric with
    its own ``exclude``, the report's), and each set had parsed every one of its files again: 8 s of
    a cold demo run on 2 loaded cores. Keyed by the text itself, so a file edited meanwhile is
    parsed afresh, and the version is the same as without it."""
    return behaviour_source(source)


def source_files(package: str) -> list[Path]:
    """The Python files of the project package (every ``*.py`` file under it, sorted, but hidden
    ones and those in hidden folders: ``storage.loaded_code.is_code_name``) or the one file
    ``package`` names (project-relative), as :func:`code_version` hashes them."""
    root = PROJECT_ROOT / package
    if root.is_file():
        return [root]
    return sorted(path for path in root.rglob("*.py") if path.is_file()
                  and all(loaded_code.is_code_name(part) for part in path.relative_to(root).parts))


def behaviour_source(source: str) -> str:
    """Python ``source`` less what cannot change what it does: comments, docstrings (module,
    class and function), blank lines, trailing whitespace and the wording of messages
    (``_message_nodes``: the text of a raised error, of an ``assert``, of ``warnings.warn``, and
    every argument of a logger call). Indentation and every other token are kept as written, so
    the result is the same on every Python version.

    Source that does not parse is returned unchanged (it is then hashed as it is).
    """
    try:
        tree = parse_source(source)
        comments = [(t.start, t.end) for t in tokenize.generate_tokens(io.StringIO(source).readline)
                    if t.type == tokenize.COMMENT]
    except (SyntaxError, tokenize.TokenError, ValueError):
        return source
    lines = _python_lines(source)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(row: int, column: int, in_bytes: bool) -> int:
        """Character offset of (1-based row, column); ast columns count UTF-8 bytes."""
        if in_bytes:
            column = len(lines[row - 1].encode("utf-8")[:column].decode("utf-8", errors="ignore"))
        return starts[row - 1] + column

    def span(first: ast.AST, last: ast.AST | None = None) -> tuple[int, int]:
        """Characters from the start of ``first`` to the end of ``last`` (default ``first``)."""
        last = last or first
        return (offset(first.lineno, first.col_offset, True),  # type: ignore[attr-defined]
                offset(last.end_lineno or last.lineno, last.end_col_offset or 0, True))  # type: ignore[attr-defined]

    cuts = [(offset(*start, False), offset(*end, False)) for start, end in comments]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                cuts.append(span(first))
        cuts.extend(span(*message) for message in _message_nodes(node))
    kept, position = [], 0
    for begin, end in sorted(cuts):
        kept.append(source[position:begin])
        position = max(position, end)
    kept.append(source[position:])
    stripped = (line.rstrip("\r\n").rstrip(_PYTHON_BLANKS) for line in _python_lines("".join(kept)))
    return "\n".join(line for line in stripped if line) + "\n"


#: What Python reads as blank space between tokens (not ``str.isspace``: ``\x1c`` or ``\u2028`` in a
#: string literal are its characters).
_PYTHON_BLANKS = " \t\f"
#: One line as Python counts them (``ast`` line numbers): ended by ``\r\n``, ``\r`` or ``\n`` only.
_PYTHON_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def _python_lines(source: str) -> list[str]:
    """``source`` split into its lines as Python numbers them, each with its line end: unlike
    ``str.splitlines``, a vertical tab, form feed, ``\x1c``-``\x1e``, ``\x85``, ``\u2028`` or
    ``\u2029`` (legal in a string literal or a comment) ends no line, so every cut lands where
    ``ast`` places it."""
    return _PYTHON_LINE.findall(source)


#: Methods of a logger whose call only writes a record (``logger.warning(...)``).
_LOG_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "log"})


def _is_logger(receiver: ast.expr) -> bool:
    """Whether ``receiver`` names a logger: ``logger``, ``log``, ``_LOG``, ``logging``,
    ``self.logger``, ``logging.getLogger(...)``, ``get_run_logger()`` (not ``math`` in
    ``math.log``)."""
    if isinstance(receiver, ast.Call):
        receiver = receiver.func
        name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
        return name in {"getLogger", "get_run_logger", "get_logger"}
    name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
    return name.strip("_").lower() in {"log", "logger", "logging"}


def _strings(node: ast.expr) -> list[ast.expr]:
    """The outermost string literals and f-strings within ``node`` (what a message is worded with;
    names, numbers and calls around them are kept)."""
    if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return [node]
    return [found for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr) for found in _strings(child)]


def _message_nodes(node: ast.AST) -> list[tuple[ast.expr, ast.expr]]:
    """The parts of ``node`` that only word a message, cut before hashing: the string literals in
    the arguments of ``raise Error(...)`` and of ``warnings.warn(...)`` and in an ``assert``'s
    message (the error class, the condition, ``from`` and a warning's category are kept), and every
    argument of a logger call that stands as a statement (a log record changes no number), as
    (first, last) node pairs: the cut runs from the start of the first to the end of the last."""
    found: list[ast.expr] = []
    if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
        found = [s for arg in [*node.exc.args, *(k.value for k in node.exc.keywords)] for s in _strings(arg)]
    elif isinstance(node, ast.Assert) and node.msg is not None:
        found = _strings(node.msg)
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute):
        call, method = node.value, node.value.func
        if method.attr == "warn" and isinstance(method.value, ast.Name) and method.value.id == "warnings":
            found = [s for arg in call.args[:1] for s in _strings(arg)] + \
                [s for k in call.keywords if k.arg == "message" for s in _strings(k.value)]
        elif method.attr in _LOG_METHODS and _is_logger(method.value) and (call.args or call.keywords):
            arguments = sorted([*call.args, *call.keywords], key=lambda a: (a.lineno, a.col_offset))
            return [(arguments[0], arguments[-1])]  # type: ignore[list-item]
    return [(string, string) for string in found]
