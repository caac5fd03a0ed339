"""How ``prh sql`` writes a query's result: a terminal table, CSV or JSON.

Rows are taken by position, never through a name → value mapping, so a result with two columns of
one name (``select *`` over a join: ``n_samples``, ``dataset_version``) keeps both. CSV and JSON
hold every value whole (a DECIMAL with all its digits); the table shortens numbers and long lists
for reading. A column of dates or times that Python cannot hold (DuckDB's ``infinity``, years
before 1 or after 9999, nanoseconds, a ``TIME`` of ``24:00:00``) is shown in every format as DuckDB's
own text of its values (``CAST(... AS VARCHAR)``).

One exception, DuckDB's: its Arrow export, which every result passes through, turns a
``UHUGEINT`` above 2**127 - 1 into a negative number (``340282366920938463463374607431768211455``
comes out as ``-1``); cast such a column to ``VARCHAR`` in the query to see it whole.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from decimal import Decimal
from typing import IO, Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc


def positional_rows(table: pa.Table) -> Iterator[tuple[Any, ...]]:
    """The rows of ``table`` as tuples, one value per column in column order."""
    columns = [column_values(column, name) for column, name in zip(table.columns, table.column_names)]
    return zip(*columns) if columns else iter(())


def column_values(column: pa.ChunkedArray, name: str = "") -> list[Any]:
    """The Python values of one result column, or, for a column whose values Python cannot hold
    (``OverflowError`` for ``infinity`` or the year 10000, nanoseconds, a ``TIME`` of 24:00:00
    that Arrow would turn into 00:00:00), DuckDB's text of each value (NULL stays None)."""
    if _past_end_of_day(column):
        return _duckdb_text(column, name)
    try:
        return column.to_pylist()
    except (OverflowError, ValueError):  # pa.ArrowInvalid is a ValueError
        return _duckdb_text(column, name)


_TIME_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _past_end_of_day(column: pa.ChunkedArray) -> bool:
    """Whether a time column holds 24:00:00 or later (DuckDB's ``TIME`` allows 24:00:00)."""
    if not pa.types.is_time(column.type) or column.length() == column.null_count:
        return False
    top = pc.max(column.cast(pa.int64())).as_py()
    return top >= 86_400 * _TIME_UNITS[column.type.unit]


def _duckdb_text(column: pa.ChunkedArray, name: str) -> list[str | None]:
    """Each value of ``column`` as DuckDB prints it (``CAST(v AS VARCHAR)``), in order."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.register("_column", pa.table({"i": pa.array(range(len(column)), pa.int64()), "v": column}))
        return [row[0] for row in con.execute("SELECT CAST(v AS VARCHAR) FROM _column ORDER BY i").fetchall()]
    except duckdb.Error as error:
        raise ValueError(f"column {name!r} ({column.type}): values Python cannot hold and DuckDB cannot print: "
                         f"{str(error).splitlines()[0]}") from None
    finally:
        con.close()


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats made distinct for JSON objects: ``n``, ``n_2``, ``n_3`` (a suffix
    that another column already has is skipped)."""
    used: set[str] = set()
    out = []
    for name in names:
        candidate, i = name, 1
        while candidate in used or (candidate != name and candidate in names):
            i += 1
            candidate = f"{name}_{i}"
        used.add(candidate)
        out.append(candidate)
    return out


def json_value(value: Any) -> Any:
    """A value as JSON holds it: integers and decimals as numbers (a whole DECIMAL or HUGEINT as an
    integer, any other DECIMAL kept a ``Decimal``, which :func:`json_text` writes with all its
    digits), a NaN or infinite float as null (JSON has no such number), bytes as base64, lists
    and structs element by element, dates and times as ISO text."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def json_text(value: Any, indent: int | None = None, depth: int = 0) -> str:
    """``json.dumps(value, indent=indent, allow_nan=False)`` of a :func:`json_value` result, except
    that a ``Decimal`` is written as a number with its exact digits (``json`` would refuse it, and a
    float keeps 17 digits: DECIMAL(38, 3) has 38)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if not (isinstance(value, (list, dict)) and value):
        return json.dumps(value, allow_nan=False)
    outer, inner = ("", "") if indent is None else ("\n" + " " * (indent * depth), "\n" + " " * (indent * (depth + 1)))
    comma = "," if indent is not None else ", "
    if isinstance(value, list):
        items = [inner + json_text(v, indent, depth + 1) for v in value]
        return "[" + comma.join(items) + outer + "]"
    items = [inner + json.dumps(str(k)) + ": " + json_text(v, indent, depth + 1) for k, v in value.items()]
    return "{" + comma.join(items) + outer + "}"


def csv_cell(value: Any) -> str:
    """A value as CSV holds it, whole: floats at full precision (``repr``: ``nan``, ``inf`` too),
    lists and structs as JSON, bytes as base64 (as ``--format json``), NULL as an empty field."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json_text(json_value(value))
    return str(value)


def table_cell(value: Any) -> str:
    """A value as the terminal table shows it: short (6 significant digits, long lists cut)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and len(value) > 8:
        return "[" + ", ".join(table_cell(v) for v in value[:8]) + f", ... ({len(value)})]"
    return str(value)


def write_json(table: pa.Table, out: IO[str]) -> None:
    """A JSON array of objects, one per row (repeated column names made distinct, see
    :func:`unique_names`); strict JSON (no NaN or Infinity tokens)."""
    names = unique_names(table.column_names)
    rows = [dict(zip(names, (json_value(v) for v in row))) for row in positional_rows(table)]
    out.write(json_text(rows, indent=2) + "\n")


def write_csv(table: pa.Table, out: IO[str]) -> None:
    """A header line with the column names as the query gave them, then one line per row."""
    writer = csv.writer(out)
    writer.writerow(table.column_names)
    for row in positional_rows(table):
        writer.writerow([csv_cell(v) for v in row])


def print_table(table: pa.Table, width: int = 200) -> None:
    """The result as a terminal table and its row count. Text is shown as it is: a caption such as
    ``[red]apple[/red]`` is not read as the table library's markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Table(show_lines=False)
    for name in table.column_names:
        out.add_column(Text(name))
    for row in positional_rows(table):
        out.add_row(*[Text(table_cell(v)) for v in row])
    Console(width=width).print(out)
    print(f"{table.num_rows} rows")
