"""Content-addressed version ids.

A version id is the first 16 hex digits of the SHA-256 of a canonical JSON encoding of
everything that determines the versioned object. Same inputs, same id.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import threading
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

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


@lru_cache(maxsize=None)
def code_version(*packages: str, exclude: tuple[str, ...] = ()) -> str:
    """Hash of the source of the given project packages (e.g. ``"tasks/extract"``), less the
    files in ``exclude`` (project-relative paths: modules that cannot change the numbers).

    A change to the code that computes a stage changes that stage's versions; edits elsewhere
    (the CLI, the README) do not, and neither do edits to comments, docstrings, blank lines or
    trailing whitespace inside the packages (``behaviour_source``): rewording a docstring must
    not re-extract a model zoo.
    """
    h = hashlib.sha256()
    for package in packages:
        for path in source_files(package):
            if path.relative_to(PROJECT_ROOT).as_posix() in exclude:
                continue
            h.update(path.relative_to(PROJECT_ROOT).as_posix().encode() + b"\0")
            h.update(_file_behaviour(path.read_text(encoding="utf-8")).encode("utf-8") + b"\0")
    return h.hexdigest()[:ID_LENGTH]


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
    """The Python files of the project package (every ``*.py`` under it, sorted) or the one file
    ``package`` names (project-relative), as :func:`code_version` hashes them."""
    root = PROJECT_ROOT / package
    return [root] if root.is_file() else sorted(root.rglob("*.py"))


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
