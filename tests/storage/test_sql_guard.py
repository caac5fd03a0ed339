"""The statement check behind `prh sql` (storage/sql_guard.py), on plain DuckDB connections."""

from __future__ import annotations

import duckdb
import pytest

from storage import sql_guard
from storage.sql_guard import READ_TABLE_FUNCTIONS, ReadOnlyQueryError, checked_statements


def utf8_explain(payload: str, n: int = 8, pad: int = 4) -> str:
    """A security review's EXPLAIN: ``n`` two-byte characters in a comment shifted the tokenizer's
    (byte) offsets against the text's (character) ones, so the rebuilt EXPLAIN ran ``payload``
    from inside a string literal while a clean tail was checked. Parsed whole it is one harmless
    ``EXPLAIN SELECT '...' || '...'``."""
    literal = "(      FORMAT json) SELECT 1; " + payload + "; SELECT --"
    comment = " " * pad + ")" + " " * 20
    tail = "x" * (n - 1) + "SELECT\n42 --"
    return "EXPLAIN /*" + "é" * n + "*/ SELECT '" + literal + "' || /*" + comment + "*/ '" + tail + "'"


def unicode_space_explain(payload: str) -> str:
    """A fourth review's EXPLAIN: DuckDB's parser first turns no-break spaces into spaces, reading
    quotes naively (blind to comments and E'' escapes); a prefix rebuilt without its comment then
    flipped that pass's view of the rest, and ``payload`` (no single quotes) ran in a WITH."""
    nbsp = "\u00a0"
    return ("EXPLAIN (ANALYZE /*'*/ E'\\'') WITH q AS (SELECT 1 /* ' */, varchar" + nbsp + "$a$, '$a$ AS y), "
            "w AS (" + payload + ") SELECT 1 --') SELECT 1")


def test_explain_runs_the_statement_that_was_checked():
    parts = sql_guard._explain_parts
    assert parts("EXPLAIN (ANALYZE /*(*/) WITH x AS (COPY (SELECT 1) TO 'f') SELECT ') SELECT 1 --'") == (
        "EXPLAIN (ANALYZE) ", "WITH x AS (COPY (SELECT 1) TO 'f') SELECT ') SELECT 1 --'")
    assert parts("EXPLAIN -- c\n ANALYSE (FORMAT json , ANALYZE) SELECT 1") == ("EXPLAIN ANALYZE (FORMAT json, ANALYZE) ", "SELECT 1")
    assert parts("EXPLAIN SELECT '(' AS p") == ("EXPLAIN ", "SELECT '(' AS p")
    assert parts("EXPLAIN /* naïve café */ SELECT 'é' AS e") == ("EXPLAIN ", "SELECT 'é' AS e")  # offsets are bytes
    assert parts("EXPLAIN (SELECT 1)") == ("EXPLAIN ", "(SELECT 1)")  # a query in parentheses, not options
    assert parts("EXPLAIN ANALYZE (FROM models)") == ("EXPLAIN ANALYZE ", "(FROM models)")
    assert parts("EXPLAIN (PIVOT t ON a IN (1) USING max(b))") == ("EXPLAIN ", "(PIVOT t ON a IN (1) USING max(b))")
    assert parts("EXPLAIN (format 'JSON', analyse) SELECT 1") == ("EXPLAIN (FORMAT json, ANALYZE) ", "SELECT 1")  # bare words only
    assert parts("EXPLAIN (ANALYZE false) SELECT 1") == ("EXPLAIN (ANALYZE false) ", "SELECT 1")
    assert parts('EXPLAIN (FORMAT "json") SELECT 1') == ("EXPLAIN (FORMAT json) ", "SELECT 1")
    assert parts("EXPLAIN (ANALYZE '1') SELECT 1") == ("EXPLAIN (ANALYZE 1) ", "SELECT 1")  # a one-character value too
    for bad in ("EXPLAIN", "EXPLAIN (FORMAT json", "EXPLAIN (FORMAT json)", "EXPLAIN (FORMAT (json)) SELECT 1", "SELECT 1",
                "EXPLAIN (ANALYZE E'\\'') SELECT 1", "EXPLAIN (ANALYZE x) SELECT 1", "EXPLAIN (FORMAT json json) SELECT 1",
                "EXPLAIN (VERBOSE) SELECT 1", "EXPLAIN (, ANALYZE) SELECT 1", unicode_space_explain("COPY (SELECT 1) TO $b$x$b$"),
                "EXPLAIN (", "EXPLAIN (ANALYZE true false) SELECT 1"):
        assert parts(bad) is None, bad


@pytest.mark.parametrize("n", [1, 3, 8])
def test_multibyte_text_cannot_move_what_runs(n):
    con = duckdb.connect()
    attack = utf8_explain("COPY (SELECT 1 AS a) TO $$/tmp/never$$", n=n)
    assert len(con.extract_statements(attack)) == 1
    assert checked_statements(con, attack) == ["EXPLAIN " + attack[attack.index("*/ SELECT") + 3:]]


def test_checked_statements_returns_each_statement_to_run():
    con = duckdb.connect()
    first, second = checked_statements(con, "SELECT 1; /* c */ EXPLAIN (FORMAT json) SELECT 2")
    assert first.startswith("SELECT 1;") and second == "EXPLAIN (FORMAT json) SELECT 2"
    with pytest.raises(ReadOnlyQueryError, match="EXPLAIN of anything but one query"):
        checked_statements(con, "EXPLAIN (FORMAT (json)) SELECT 1")
    with pytest.raises(ValueError, match="empty query"):
        checked_statements(con, " ; ")
    with pytest.raises(ValueError, match="not valid UTF-8"):  # '\xff' on a command line arrives as a lone surrogate
        checked_statements(con, b"SELECT '\xff' AS a".decode("utf-8", "surrogateescape"))
    with pytest.raises(ReadOnlyQueryError, match="json_serialize_plan"):
        checked_statements(con, "SELECT json_serialize_plan('COPY (SELECT 1) TO ''x''')")


def test_state_changes_and_unchecked_depths_are_refused():
    con = duckdb.connect()
    with pytest.raises(ReadOnlyQueryError, match="setseed"):
        checked_statements(con, "SELECT setseed(0.5)")
    with pytest.raises(ReadOnlyQueryError, match="nested too deeply"):  # was a RecursionError traceback
        checked_statements(con, "SELECT " + " + ".join(["1"] * 500))
    assert checked_statements(con, "SELECT " + " + ".join(["1"] * 100)) != []
    with pytest.raises(ReadOnlyQueryError, match="EXPLAIN of anything but one query"):
        checked_statements(con, unicode_space_explain("COPY (SELECT 1) TO $b$x$b$"))


def test_a_statement_duckdb_cannot_serialize_is_refused():
    """The parse tree is the check: where DuckDB cannot give it (no JSON extension), nothing passes."""

    class NoJson:
        def execute(self, *args):
            raise duckdb.CatalogException("Catalog Error: Scalar Function with name json_serialize_sql does not exist!")

    assert "cannot check" in sql_guard._hidden_write(NoJson(), "SELECT 1")
    assert sql_guard._hidden_write(duckdb.connect(), "SELECT 1") is None


def test_every_allowed_table_function_exists_and_reads():
    """The allow list names DuckDB's own table functions (a misspelling would refuse a reader)."""
    con = duckdb.connect()
    table_functions = {name for (name,) in con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type IN ('table', 'table_macro')").fetchall()}
    assert READ_TABLE_FUNCTIONS <= table_functions, READ_TABLE_FUNCTIONS - table_functions
    assert not READ_TABLE_FUNCTIONS & {"query", "json_execute_serialized_sql", "destroy_external_resource", "checkpoint",
                                       "enable_logging", "register_external_resource", "read_duckdb"}


@pytest.mark.parametrize("spelling", [":=", "="])
def test_reader_options_that_create_tables_are_refused_in_either_spelling(spelling: str) -> None:
    """A named argument reads ``name := value`` or ``name = value``; an option that creates a
    table (the CSV reader's rejects tables) is refused in both, other options pass."""
    con = duckdb.connect()
    for option in ("rejects_table", "REJECTS_SCAN"):
        sql = f"SELECT * FROM read_csv('t.csv', store_rejects {spelling} true, {option} {spelling} 'alignment_best')"
        with pytest.raises(ReadOnlyQueryError, match=f"the option {option.lower()} of read_csv"):
            checked_statements(con, sql)
    allowed = f"SELECT * FROM read_csv('t.csv', header {spelling} true, ignore_errors {spelling} true)"
    assert checked_statements(con, allowed) == [allowed]


def test_only_the_listed_table_functions_pass() -> None:
    """Table functions outside ``READ_TABLE_FUNCTIONS`` are refused (they flush, log or run SQL);
    the listed readers and generators pass."""
    con = duckdb.connect()
    for sql in ("SELECT * FROM checkpoint()", "SELECT * FROM range(2), enable_logging()"):
        with pytest.raises(ReadOnlyQueryError, match=r"the table function \w+\(\)"):
            checked_statements(con, sql)
    allowed = "SELECT * FROM range(3), glob('x/*'), read_parquet('a.parquet')"
    assert checked_statements(con, allowed) == [allowed]


def test_what_runs_is_read_again_and_must_be_what_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second guard: the text to run, parsed again, must be one statement of the checked type,
    and an EXPLAIN must explain the statement that was checked. A rebuild gone wrong (simulated
    here: the tokenizer and the parser disagreeing, as in the reviews' attacks) is refused."""
    con = duckdb.connect()
    innermost = sql_guard._innermost
    monkeypatch.setattr(sql_guard, "_innermost", lambda c, statement: (statement, "DELETE FROM runs")
                        if statement.type == duckdb.StatementType.SELECT else innermost(c, statement))
    with pytest.raises(ReadOnlyQueryError, match="could not be checked"):
        checked_statements(con, "SELECT 1")
    monkeypatch.setattr(sql_guard, "_innermost", innermost)
    explain_parts, reads = sql_guard._explain_parts, []

    def read_differently_the_second_time(sql: str) -> tuple[str, str] | None:
        reads.append(sql)
        parts = explain_parts(sql)
        return parts if len(reads) == 1 or parts is None else (parts[0], "SELECT 2")

    monkeypatch.setattr(sql_guard, "_explain_parts", read_differently_the_second_time)
    with pytest.raises(ReadOnlyQueryError, match="could not be checked"):
        checked_statements(con, "EXPLAIN SELECT 1")


def test_a_statement_type_the_python_api_cannot_name_is_refused_by_name() -> None:
    """DuckDB 2.0's ``UPDATE EXTENSIONS`` is statement type 29, which the Python API's enum lacks:
    reading its type raised ``ValueError: 29 is not a valid StatementType.`` (what `prh sql`
    printed). It is refused as a statement that is not a query, named in the message."""
    con = duckdb.connect()
    for sql in ("UPDATE EXTENSIONS", "SELECT 1; UPDATE EXTENSIONS (httpfs)"):
        with pytest.raises(ReadOnlyQueryError, match=r"type 29\) statements are not allowed .*refused: UPDATE EXTENSIONS"):
            checked_statements(con, sql)


def test_a_pivot_without_an_in_list_is_refused_saying_what_to_write() -> None:
    """A PIVOT without an IN list of values (or with a subquery there) is a MULTI statement to
    DuckDB (it runs a query, creates an ENUM type, then pivots): the message had said only
    "MULTI statements are not allowed", which names nothing the analyst wrote."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 'a' AS k, 1 AS v")
    for sql in ("PIVOT t ON k USING max(v)", "SELECT * FROM (PIVOT t ON k IN (SELECT k FROM t) USING max(v))"):
        with pytest.raises(ReadOnlyQueryError, match=r"a PIVOT without an IN list of values .* not allowed .*; list the values instead: PIVOT ... ON k IN \('a', 'b'\)"):
            checked_statements(con, sql)
    assert checked_statements(con, "PIVOT t ON k IN ('a') USING max(v)") == ["PIVOT t ON k IN ('a') USING max(v)"]


def test_duckdbs_advice_to_run_a_refused_statement_is_answered() -> None:
    """DuckDB's messages suggest statements `prh sql` refuses (``Use "SET max_expression_depth TO
    x"``, ``INSTALL spatial; LOAD spatial;``): the error then says that they cannot run here."""
    con = duckdb.connect()
    with pytest.raises(ValueError, match=r"max_expression_depth.*\(prh sql cannot run the SET"):
        checked_statements(con, "SELECT " + "+".join(["1"] * 1200))
    assert sql_guard.refused_advice_hint("Binder Error: Referenced column x not found") == ""
    assert "INSTALL or LOAD" in sql_guard.refused_advice_hint("Please try installing and loading the spatial extension:\n"
                                                               "INSTALL spatial;\nLOAD spatial;")


def test_a_word_set_or_load_in_a_name_or_value_is_not_duckdbs_advice() -> None:
    """The hint fired on any ``SET``/``LOAD``/``RESET`` followed by a letter: a table named ``LOAD``,
    a string ``'RESET all'`` or a column ``"my SET x"`` in DuckDB's error was read as advice to run
    a statement. DuckDB's advice (``SET name=...``/``TO``, ``INSTALL x;``, ``LOAD x;``) still is."""
    for message in ("Catalog Error: Table with name LOAD does not exist!\nDid you mean \"samples\"?",
                    "Conversion Error: Could not convert string 'RESET all' to INT32",
                    "Binder Error: Referenced column \"nope\" not found in FROM clause!\nCandidate bindings: \"my SET x\"",
                    "Binder Error: Referenced column \"SET_x\" not found"):
        assert sql_guard.refused_advice_hint(message) == "", message
    for advice in ("Out of Memory Error: failed to allocate\nPossible solutions:\n* Reducing the number of threads (SET threads=X)",
                   "Use SET lambda_syntax='ENABLE_SINGLE_ARROW' to revert",
                   'Use "SET max_expression_depth TO x" to increase the maximum expression depth.',
                   "Please try installing and loading the spatial extension:\nINSTALL spatial;\nLOAD spatial;"):
        assert "prh sql cannot run" in sql_guard.refused_advice_hint(advice), advice


def test_a_checked_query_not_made_by_the_check_is_refused_before_it_runs(tmp_path) -> None:
    """The catalog's query functions run a :class:`CheckedQuery` without checking it again (``prh
    sql`` checks once). One built by hand, or changed from a checked one, had run as given: ``CREATE
    TABLE`` and ``ATTACH`` on a locked-down catalog connection. Only :func:`check_query`'s run."""
    import dataclasses

    from storage.catalog import connect, query_batches, query_each_head
    from storage.sql_guard import CheckedQuery, check_query

    (tmp_path / "store" / "runs").mkdir(parents=True)
    con = connect(str(tmp_path / "store"))
    checked = check_query(con, "select 1 as a")
    forged = [CheckedQuery(("create table t as select 1",)), CheckedQuery(("attach ':memory:' as m",)),
              dataclasses.replace(checked, statements=("create table u as select 2",))]
    for query in forged:
        with pytest.raises(ReadOnlyQueryError, match="not made by storage.sql_guard.check_query"):
            list(query_each_head(con, query, 10))
        with pytest.raises(ReadOnlyQueryError, match="not made by storage.sql_guard.check_query"):
            query_batches(con, query)
    assert con.sql("select count(*) from duckdb_tables() where table_name in ('t', 'u')").fetchall() == [(0,)]
    assert con.sql("select count(*) from duckdb_databases() where database_name = 'm'").fetchall() == [(0,)]
    # what the check made runs, and so does an equal copy of it (the same checked text)
    assert [t.to_pylist() for t, _ in query_each_head(con, checked, 10)] == [[{"a": 1}]]
    assert query_batches(con, CheckedQuery(checked.statements))[0].names == ["a"]
