"""How ``prh sql`` writes a query's result: a terminal table, CSV or JSON.

Rows are taken by position, never through a name → value mapping, so a result with two columns of
one name (``select *`` over a join: ``n_samples``, ``dataset_version``) keeps both. CSV and JSON
hold every value whole; the table shortens numbers and long lists for reading.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from decimal import Decimal
from typing import IO, Any, Iterator

import pyarrow as pa


def positional_rows(table: pa.Table) -> Iterator[tuple[Any, ...]]:
    """The rows of ``table`` as tuples, one value per column in column order."""
    columns = [column.to_pylist() for column in table.columns]
    return zip(*columns) if columns else iter(())


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
    integer), a NaN or infinite float as null (JSON has no such number), bytes as base64, lists
    and structs element by element, dates and times as ISO text."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


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
        return json.dumps(json_value(value))
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
    out.write(json.dumps(rows, indent=2, allow_nan=False) + "\n")


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
