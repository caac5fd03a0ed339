"""Content-addressed version ids.

A version id is the first 16 hex digits of the SHA-256 of a canonical JSON encoding of
everything that determines the versioned object. Same inputs, same id.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import threading
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

ID_LENGTH = 16
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


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


def _parse(source: str) -> ast.Module:
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
        root = _PROJECT_ROOT / package
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            if path.relative_to(_PROJECT_ROOT).as_posix() in exclude:
                continue
            h.update(path.relative_to(_PROJECT_ROOT).as_posix().encode() + b"\0")
            h.update(behaviour_source(path.read_text(encoding="utf-8")).encode("utf-8") + b"\0")
    return h.hexdigest()[:ID_LENGTH]


def behaviour_source(source: str) -> str:
    """Python ``source`` less what cannot change what it does: comments, docstrings (module,
    class and function), blank lines and trailing whitespace. Indentation and every other
    token are kept as written, so the result is the same on every Python version.

    Source that does not parse is returned unchanged (it is then hashed as it is).
    """
    try:
        tree = _parse(source)
        comments = [(t.start, t.end) for t in tokenize.generate_tokens(io.StringIO(source).readline)
                    if t.type == tokenize.COMMENT]
    except (SyntaxError, tokenize.TokenError, ValueError):
        return source
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(row: int, column: int, in_bytes: bool) -> int:
        """Character offset of (1-based row, column); ast columns count UTF-8 bytes."""
        if in_bytes:
            column = len(lines[row - 1].encode("utf-8")[:column].decode("utf-8", errors="ignore"))
        return starts[row - 1] + column

    cuts = [(offset(*start, False), offset(*end, False)) for start, end in comments]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                cuts.append((offset(first.lineno, first.col_offset, True),
                             offset(first.end_lineno or first.lineno, first.end_col_offset or 0, True)))
    kept, position = [], 0
    for begin, end in sorted(cuts):
        kept.append(source[position:begin])
        position = max(position, end)
    kept.append(source[position:])
    return "\n".join(line.rstrip() for line in "".join(kept).splitlines() if line.strip()) + "\n"
