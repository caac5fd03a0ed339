"""The check behind ``prh sql``: which statements an analyst's query may run on the catalog.

:func:`checked_statements` parses the query, refuses every statement that could write or change
the connection's state, and returns the SQL text of each statement to run: what was checked.
Only SELECT (with WITH, FROM ..., DESCRIBE, SUMMARIZE, SHOW, PIVOT ... IN, which DuckDB types
SELECT) and EXPLAIN [ANALYZE] of one such query pass, and only when the statement's parse tree
(DuckDB's ``json_serialize_sql``) holds no write: DuckDB 2.0 types ``WITH x AS (COPY ... TO
'file') SELECT 1`` as SELECT and runs the copy. Pure DuckDB; it knows nothing of the store.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from typing import Any

import duckdb


class ReadOnlyQueryError(ValueError):
    """Raised when an analyst's query would change something."""


_READ_ONLY_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def checked_statements(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The SQL text of each statement of ``sql`` to run on ``con``, every one checked (an EXPLAIN
    rebuilt around the statement it explains). Raises :class:`ReadOnlyQueryError` naming what is
    refused, before anything runs; ``ValueError`` for a query DuckDB cannot parse, or an empty one."""
    try:
        sql.encode()
    except UnicodeEncodeError as error:  # a lone surrogate: bytes that were not UTF-8 on the command line
        raise ValueError(f"cannot parse query: it is not valid UTF-8 text ({error.reason} at character {error.start})") from None
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise ValueError(f"cannot parse query: {str(error).rstrip()}{refused_advice_hint(str(error))}") from None
    if not statements:
        raise ValueError("empty query")
    checked: list[str] = []
    for statement in statements:
        explained = _innermost(con, statement)
        kind = _type_of(explained[0]) if explained is not None else duckdb.StatementType.INVALID
        if kind not in _READ_ONLY_TYPES:
            subject, instead = _refused_kind(kind, statement)
            raise ReadOnlyQueryError(
                f"the catalog is read-only: {subject} not allowed "
                f"(only SELECT, WITH, FROM, DESCRIBE, SUMMARIZE, SHOW, PIVOT ... IN and EXPLAIN of a query){instead}; "
                f"refused: {_short(statement.query)}"
            )
        hidden = _hidden_write(con, explained[0].query)
        if hidden:
            raise ReadOnlyQueryError(f"the catalog is read-only: {hidden} is not allowed inside a query; refused: {_short(statement.query)}")
        text = explained[1]
        again = _statements(con, text)
        if [_type_of(s) for s in again] != [_type_of(statement)] or (
                _type_of(statement) == duckdb.StatementType.EXPLAIN and _parts_of(con, again[0]) != (explained[0].query, text)):
            # a second guard: what runs must be one statement of the type checked (an EXPLAIN rebuilt wrongly is not)
            raise ReadOnlyQueryError(f"the catalog is read-only: this statement could not be checked; refused: {_short(statement.query)}")
        checked.append(text)
    return checked


@dataclass(frozen=True)
class CheckedQuery:
    """A query that :func:`check_query` passed: the text of each statement to run, in order
    (:func:`checked_statements`'s). The catalog's query functions take one instead of the SQL
    text and run it without checking it again (``prh sql`` counts the statements first), but only
    one that :func:`check_query` made (:func:`issued_statements`): one built by hand, or changed
    with ``dataclasses.replace``, holds statements nothing checked."""

    statements: tuple[str, ...]


#: The queries :func:`check_query` made, held weakly (an equal one holds the same checked text).
_ISSUED: weakref.WeakSet[CheckedQuery] = weakref.WeakSet()


def check_query(con: duckdb.DuckDBPyConnection, sql: str) -> CheckedQuery:
    """:func:`checked_statements` of ``sql`` as a :class:`CheckedQuery`; the same refusals."""
    query = CheckedQuery(tuple(checked_statements(con, sql)))
    _ISSUED.add(query)
    return query


def issued_statements(query: CheckedQuery) -> list[str]:
    """The statements of ``query`` to run, in order; :class:`ReadOnlyQueryError` where
    :func:`check_query` did not make it (a forged one had run ``CREATE TABLE`` and ``ATTACH`` on a
    locked-down catalog connection)."""
    if query not in _ISSUED:
        raise ReadOnlyQueryError("this CheckedQuery was not made by storage.sql_guard.check_query (built or changed by "
                                 "hand), so its statements were not checked: pass the SQL text, or check_query's result")
    return list(query.statements)


def _type_of(statement: Any) -> duckdb.StatementType | int:
    """``statement.type``, or DuckDB's number for a type that the Python API's enum has no name
    for (DuckDB 2.0's ``UPDATE EXTENSIONS`` is 29: reading ``.type`` raises ``ValueError``)."""
    try:
        return statement.type
    except ValueError as error:
        number = re.match(r"\s*(-?\d+)", str(error))
        return int(number.group(1)) if number else -1


def _refused_kind(kind: duckdb.StatementType | int, statement: Any) -> tuple[str, str]:
    """What is refused, as the subject of "... not allowed", and what to write instead (or ``''``):
    the statement type's name, or what the analyst wrote where DuckDB's name for it would not
    tell them (``MULTI``: a PIVOT without an IN list of values, which DuckDB runs as a query, a
    CREATE TYPE and the pivot; a type the Python API has no name for, such as ``UPDATE EXTENSIONS``)."""
    if kind == duckdb.StatementType.INVALID:
        return "EXPLAIN of anything but one query (options as plain words: EXPLAIN (FORMAT json) SELECT ...) is", ""
    if kind == duckdb.StatementType.MULTI:
        return ("a PIVOT without an IN list of values (or with a subquery there; DuckDB runs it as several statements, "
                "one of which creates a type) is", "; list the values instead: PIVOT ... ON k IN ('a', 'b') USING ...")
    if isinstance(kind, duckdb.StatementType):
        return f"{kind.name} statements are", ""
    return f"{' '.join(statement.query.split()[:2]).upper()} (DuckDB statement type {kind}) statements are", ""


#: DuckDB's advice to run a statement that ``prh sql`` refuses (``Use "SET max_expression_depth
#: TO x"``, ``Use SET lambda_syntax=...``, ``(SET threads=X)``, ``INSTALL spatial; LOAD spatial;``):
#: a statement's shape, not the bare word (a table named LOAD, a string 'RESET all' in the error).
_REFUSED_ADVICE = re.compile(r"\b(?:(?:SET|RESET)\s+(?:GLOBAL\s+|SESSION\s+|LOCAL\s+)?[A-Za-z_]\w*\s*(?:=|\bTO\b)"
                             r"|PRAGMA\s+[A-Za-z_]\w*\s*[(=]|(?:INSTALL|LOAD)\s+[A-Za-z_]\w*\s*;)")


def refused_advice_hint(message: str) -> str:
    """``' (...)'`` saying that the SET, INSTALL or LOAD that DuckDB's error ``message`` suggests
    cannot run on the read-only catalog, and what to do instead; ``''`` when it suggests none."""
    advice = [line for line in message.splitlines() if not line.startswith("LINE ")]  # not the query quoted back
    if not any(_REFUSED_ADVICE.search(line) for line in advice):
        return ""
    instead = "write a lambda as `lambda x: x * 2`" if "lambda" in message else \
        "export the catalog (`prh catalog export FILE`) and open it in DuckDB yourself to change them"
    return (f" (prh sql cannot run the SET, INSTALL or LOAD that DuckDB suggests: the catalog's settings are locked and "
            f"it loads no extension; {instead})")


def _parts_of(con: duckdb.DuckDBPyConnection, statement: Any) -> tuple[str, str] | None:
    """(the text checked, the text run) of ``statement``, as :func:`_innermost` finds them."""
    found = _innermost(con, statement)
    return None if found is None else (found[0].query, found[1])


def _statements(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    """``con.extract_statements(sql)``; [] where DuckDB cannot parse it."""
    try:
        return con.extract_statements(sql)
    except duckdb.Error:
        return []


def _innermost(con: duckdb.DuckDBPyConnection, statement: Any) -> tuple[Any, str] | None:
    """``(the statement to check, the SQL to run)``. For most statements: itself and its text.
    For EXPLAIN [ANALYZE] [(options)] ...: the statement it explains (ANALYZE runs it) and the
    EXPLAIN rebuilt from DuckDB's own tokens (:func:`_explain_parts`) around that statement's
    text, so that what runs is what was checked. None when the EXPLAIN is not of one statement
    or its option list is not plain words."""
    if _type_of(statement) != duckdb.StatementType.EXPLAIN:
        return statement, statement.query
    parts = _explain_parts(statement.query)
    if parts is None:
        return None
    prefix, inner = parts
    parsed = _statements(con, inner) if inner.strip() else []
    if len(parsed) != 1:
        return None
    nested = _innermost(con, parsed[0])
    return None if nested is None else (nested[0], prefix + nested[1])


_OPTION_TOKENS = {duckdb.token_type.keyword, duckdb.token_type.identifier, duckdb.token_type.string_const,
                  duckdb.token_type.numeric_const}
#: Tokens that open a query in parentheses (never an EXPLAIN option's name).
_QUERY_STARTS = {"select", "from", "with", "values", "table", "pivot", "unpivot", "describe", "summarize", "show", "("}
#: The EXPLAIN options accepted, with the values each may take (rebuilt as bare words).
_EXPLAIN_OPTIONS = {"analyze": {None, "true", "false", "on", "off", "1", "0"},
                    "analyse": {None, "true", "false", "on", "off", "1", "0"},
                    "format": {"text", "json", "html", "graphviz", "yaml", "mermaid"}}


def _named_arguments(function: Any) -> list[str]:
    """The lower-cased names of a serialized function call's named arguments, in either spelling
    (``name := value`` or ``name = value``)."""
    names = []
    for argument in (function.get("arguments") or []) if isinstance(function, dict) else []:
        name = argument.get("name") if isinstance(argument, dict) else None
        expression = argument.get("expression") if isinstance(argument, dict) else None
        if not name and isinstance(expression, dict) and expression.get("type") == "COMPARE_EQUAL":
            left = expression.get("left") or {}
            if left.get("type") == "COLUMN_REF" and left.get("column_names"):
                name = left["column_names"][-1]
        if isinstance(name, str) and name:
            names.append(name.lower())
    return names


def _explain_parts(sql: str) -> tuple[str, str] | None:
    """``EXPLAIN [ANALYZE] [(options)] <inner>`` → (the prefix rebuilt without comments, ``<inner>``'s
    text), read with DuckDB's tokenizer (so comments and strings cannot fake a parenthesis:
    ``EXPLAIN (ANALYZE /*(*/) ...``). The tokenizer gives UTF-8 byte offsets: the text is cut as
    bytes. The options may be only words, quoted strings, numbers and commas; a parenthesis that
    opens a query (``EXPLAIN (SELECT 1)``: an option name is never a reserved word) starts
    ``<inner>``. None when it is not of that form."""
    data = sql.encode()
    raw = duckdb.tokenize(sql)
    ends = [start for start, _ in raw[1:]] + [len(data)]
    tokens = [(start, kind, data[start:end].decode(errors="replace").strip()) for (start, kind), end in zip(raw, ends)
              if kind != duckdb.token_type.comment]
    if not tokens or tokens[0][2].lower() != "explain":
        return None
    prefix, i = ["EXPLAIN"], 1
    if i < len(tokens) and tokens[i][2].lower() in ("analyze", "analyse"):
        prefix, i = ["EXPLAIN", "ANALYZE"], i + 1
    opens_query = i + 1 < len(tokens) and tokens[i + 1][2].lower() in _QUERY_STARTS
    if i < len(tokens) and tokens[i][2] == "(" and not opens_query:
        words: list[str] = []
        i += 1
        while i < len(tokens) and tokens[i][2] != ")":
            _, kind, text = tokens[i]
            if kind in (duckdb.token_type.string_const, duckdb.token_type.identifier) and len(text) > 2 \
                    and text[0] == text[-1] and text[0] in "'\"":
                text = text[1:-1]  # FORMAT 'json' or "json": rebuilt bare, so that no quote is left in the prefix
            elif text != "," and kind not in _OPTION_TOKENS:
                return None
            words.append(text.lower())
            i += 1
        options = _explain_options(words)
        if i == len(tokens) or options is None:
            return None
        prefix.append(f"({options})")
        i += 1
    if i == len(tokens):
        return None
    return " ".join(prefix) + " ", data[tokens[i][0]:].decode()


def _explain_options(words: list[str]) -> str | None:
    """``['format', 'json', ',', 'analyze']`` → ``'FORMAT json, ANALYZE'``: only the options of
    :data:`_EXPLAIN_OPTIONS` with their listed values, so that the rebuilt prefix holds nothing
    but ASCII words (no quote or comment that DuckDB's pre-parse pass could read differently
    from its parser). None for anything else."""
    items, item = [], []
    for word in [*words, ","]:
        if word != ",":
            item.append(word)
            continue
        if not item or len(item) > 2 or item[0] not in _EXPLAIN_OPTIONS:
            return None
        value = item[1] if len(item) == 2 else None
        if value not in _EXPLAIN_OPTIONS[item[0]]:
            return None
        items.append(" ".join([item[0].upper().replace("ANALYSE", "ANALYZE"), *([value] if value else [])]))
        item = []
    return ", ".join(items)


#: Query node types of a read-only query in DuckDB's serialized parse tree; any other
#: (``COPY_QUERY_NODE``, ``INSERT_QUERY_NODE``, ``UPDATE_QUERY_NODE``, ``DELETE_QUERY_NODE``, ...)
#: is a write that DuckDB accepts in a WITH clause of a statement it still types SELECT.
_READ_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
#: Table functions a query may call: readers of the store's files, generators, and DuckDB's
#: information functions. Any other is refused, since DuckDB has table functions that run SQL
#: or call another function named in a string (``query``, ``json_execute_serialized_sql``,
#: ``destroy_external_resource``), flush or log (``checkpoint``, ``enable_logging``), and adds
#: new ones with each release: a list of what is allowed keeps up, one of what is not cannot.
READ_TABLE_FUNCTIONS = frozenset({
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "parquet_file_metadata",
    "parquet_kv_metadata", "parquet_full_metadata", "parquet_bloom_probe",
    "read_csv", "read_csv_auto", "sniff_csv", "read_json", "read_json_auto", "read_json_objects",
    "read_json_objects_auto", "read_ndjson", "read_ndjson_auto", "read_ndjson_objects", "read_text", "read_blob", "glob",
    "range", "generate_series", "unnest", "repeat", "repeat_row", "query_table", "summary", "json_each", "json_tree",
    "histogram", "histogram_values", "icu_calendar_names", "pg_timezone_names",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies", "duckdb_functions",
    "duckdb_indexes", "duckdb_keywords", "duckdb_schemas", "duckdb_sequences", "duckdb_settings", "duckdb_tables",
    "duckdb_types", "duckdb_views", "duckdb_extensions", "duckdb_memory", "duckdb_optimizers", "duckdb_variables",
    "pragma_table_info", "pragma_show", "pragma_version", "pragma_platform", "pragma_database_size",
    "pragma_collations", "pragma_storage_info", "pragma_metadata_info", "pragma_user_agent",
    "duckdb_temporary_files", "duckdb_table_sample", "duckdb_available_metrics", "duckdb_profiling_settings",
})
#: Named parameters of the readers that create tables (the CSV reader's rejects tables, which
#: would hide a catalog view of that name from later queries on the connection).
_TABLE_CREATING_OPTIONS = {"store_rejects", "rejects_table", "rejects_scan"}
#: Functions refused wherever they appear, with why.
_REFUSED_FUNCTIONS = {"json_execute_serialized_sql": "it runs SQL text", "query": "it runs SQL text",
                      "json_serialize_plan": "it binds SQL text", "setseed": "it changes random() for later queries"}


def _hidden_write(con: duckdb.DuckDBPyConnection, sql: str) -> str | None:
    """What in a statement typed SELECT could write or run other SQL, or None.

    DuckDB 2.0 types ``WITH x AS (COPY (...) TO 'file') SELECT 1`` (and INSERT, UPDATE or DELETE
    in a WITH) as SELECT, and runs the write: under the lock it may still write inside the store.
    The statement's serialized parse tree (``json_serialize_sql``) shows every query node and
    every function by name: only read nodes (:data:`_READ_NODES`) and the table functions of
    :data:`READ_TABLE_FUNCTIONS` pass. A statement DuckDB cannot serialize cannot be checked, so
    it is refused."""
    try:
        serialized = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    except duckdb.Error:  # no JSON extension
        serialized = {"error": True}
    except RecursionError:
        return "a statement nested too deeply to check"
    if serialized.get("error"):
        return "a statement DuckDB cannot check (it cannot serialize its parse tree)"
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            kind = node.get("type")
            if isinstance(kind, str) and kind.endswith("_NODE") and kind not in _READ_NODES:
                found.append(kind.removesuffix("_QUERY_NODE").removesuffix("_NODE").replace("_", " "))
            if kind == "TABLE_FUNCTION":
                called = node.get("function")
                name = called.get("function_name") if isinstance(called, dict) else None
                if not isinstance(name, str) or name.lower() not in READ_TABLE_FUNCTIONS:
                    found.append(f"the table function {name}() (allowed: readers such as read_parquet, glob, range, "
                                 "unnest, query_table, summary, and DuckDB's duckdb_*/pragma_* information functions)")
                creating = _TABLE_CREATING_OPTIONS & set(_named_arguments(called))
                if creating:
                    found.append(f"the option {sorted(creating)[0]} of {name}() (it creates a table)")
            name = node.get("function_name")
            if isinstance(name, str) and name.lower() in _REFUSED_FUNCTIONS:
                found.append(f"the function {name}() ({_REFUSED_FUNCTIONS[name.lower()]})")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    try:
        walk(serialized.get("statements", []))
    except RecursionError:
        return "a statement nested too deeply to check"
    return found[0] if found else None


def _short(sql: str, limit: int = 80) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
