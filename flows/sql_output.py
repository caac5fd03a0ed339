"""How ``prh sql`` writes a query's result: a terminal table, CSV or JSON.

Rows are taken by position, never through a name → value mapping, so a result with two columns of
one name (``select *`` over a join: ``n_samples``, ``dataset_version``) keeps both. CSV and JSON
hold every value whole (a DECIMAL with all its digits); the table shortens numbers (6 significant
digits, in lists too) and long lists for reading. A column of dates or times that Python cannot
hold (DuckDB's ``infinity``, years before 1 or after 9999, nanoseconds, a ``TIME`` of
``24:00:00``) is shown in every format as DuckDB's own text of its values (``CAST(... AS VARCHAR)``).

DuckDB types that Python or Arrow would show wrongly are written, in every format and inside
lists, structs and maps too, as follows:

* ``INTERVAL``: DuckDB's text (``00:00:08``, ``1 year 2 months -3 days 04:05:06.5``), a JSON string.
* ``FLOAT`` (single precision): the shortest decimal that reads back as the same float32
  (``0.142``, not ``0.1420000046491623``); a ``DOUBLE`` keeps all 17 digits.
* ``MAP``: an object, a JSON object (what DuckDB's ``to_json`` gives); a key that is not text is
  written as CSV writes it (``MAP {1: 'x'}`` → ``{"1": "x"}``, a list key as JSON).
* ``BIGNUM``: an integer with all its digits (Arrow carries it as DuckDB's bytes).
* ``TIMETZ``: ISO text with its offset (``12:00:00+02:00``), ``BIT``: its bits (``101``), and
  ``HUGEINT``/``UHUGEINT`` whole, when the connection exports them losslessly (DuckDB's
  ``arrow_lossless_conversion``, on for ``prh sql``: ``storage.catalog.connect(lossless_arrow=True)``); without it DuckDB's Arrow export itself turns a ``TIMETZ`` into
  a ``TIME`` (the offset is gone), a ``BIT`` into a ``BLOB`` (written as bytes: base64) and a
  ``UHUGEINT`` above 2**127 - 1 into a negative number (``340282366920938463463374607431768211455``
  comes out as ``-1``; cast such a column to ``VARCHAR`` in the query to see it whole).

JSON is written as UTF-8 text (``café``); a character the output's encoding cannot hold (a
non-UTF-8 terminal) is written as a JSON ``\\u`` escape, which reads back to the same text; the
table shows it as its backslash escape (``caf\\xe9``); CSV has no escape: ``prh sql`` stops with an
error naming the character and the encoding.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import tempfile
from decimal import Decimal
from typing import IO, Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from tasks.shown_text import for_terminal


def positional_rows(table: pa.Table) -> Iterator[tuple[Any, ...]]:
    """The rows of ``table`` as tuples, one value per column in column order."""
    columns = [column_values(column, name) for column, name in zip(table.columns, table.column_names)]
    return zip(*columns) if columns else iter(())


def column_values(column: pa.ChunkedArray, name: str = "", as_text: bool | None = None) -> list[Any]:
    """The Python values of one result column (the types of the module docstring converted, at
    any depth), or, for a column whose values Python cannot hold (``OverflowError`` for
    ``infinity`` or the year 10000, nanoseconds, a ``TIME`` of 24:00:00 that Arrow would turn
    into 00:00:00), DuckDB's text of each value (NULL stays None). ``as_text``: whether the
    whole column is DuckDB's text, decided over all of a result that ``column`` is a part of
    (:func:`result_rows`); None: decided by ``column`` itself."""
    if as_text or (as_text is None and _past_end_of_day(column)):
        return _duckdb_text(column, name)
    column = _float32_as_shortest(column)
    try:
        values = column.to_pylist()
    except (OverflowError, ValueError):  # pa.ArrowInvalid is a ValueError
        return _duckdb_text(column, name)
    convert = _converter(column.type)
    return values if convert is None else [convert(v) for v in values]


def _needs_duckdb_text(column: pa.ChunkedArray) -> bool:
    """Whether :func:`column_values` writes ``column`` as DuckDB's text (see there)."""
    if _past_end_of_day(column):
        return True
    try:
        _float32_as_shortest(column).to_pylist()
    except (OverflowError, ValueError):
        return True
    return False


def _may_need_duckdb_text(arrow_type: pa.DataType) -> bool:
    """Whether a column of ``arrow_type`` may hold values Python cannot (dates, times, timestamps
    and durations, at any depth): whether :func:`_needs_duckdb_text` depends on its values."""
    if pa.types.is_date(arrow_type) or pa.types.is_time(arrow_type) or pa.types.is_timestamp(arrow_type) \
            or pa.types.is_duration(arrow_type):
        return True
    if pa.types.is_dictionary(arrow_type):
        return _may_need_duckdb_text(arrow_type.value_type)
    if isinstance(arrow_type, pa.BaseExtensionType):
        return _may_need_duckdb_text(arrow_type.storage_type)
    return any(_may_need_duckdb_text(arrow_type.field(i).type) for i in range(arrow_type.num_fields))


#: Most bytes of Arrow data converted to Python values at once when a result is streamed
#: (:func:`result_rows`): a batch of long vectors is cut into slices of about this size (4 MB of
#: FLOAT[] become about 60 MB of Python floats).
PIECE_BYTES = 4 << 20


def result_rows(schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                piece_bytes: int = PIECE_BYTES) -> Iterator[tuple[Any, ...]]:
    """The rows of a result read as record batches (``storage.catalog.query_batches``), as
    :func:`positional_rows` gives them for the whole result as one table, converted a slice of
    at most about ``piece_bytes`` at a time (memory: one batch and its slice's Python values).

    Whether a column is written as DuckDB's text is decided over the whole result (one
    ``infinity`` in the last row makes all its dates text), so a result with a column that may
    need it (dates, times, timestamps) is first written to an anonymous temporary file (Arrow
    IPC, on the default temporary folder: disk as large as the result, memory one batch) while
    that is decided, then read back; this happens before the first row is given, so a query that
    fails while it runs raises here, having given no row. A temporary folder that cannot take that
    file (full, read-only, missing, no permission) is a ``ValueError`` naming it and ``TMPDIR``
    (:func:`_spill_errors`)."""
    risky = [i for i, f in enumerate(schema) if _may_need_duckdb_text(f.type)]
    if not risky:
        return _rows_of(schema, batches, [None] * len(schema), piece_bytes)
    with _spill_errors():
        spill = tempfile.TemporaryFile(prefix="prh-sql-")  # noqa: SIM115 - closed by _spilled_rows
    try:
        as_text: list[bool | None] = [False if i in risky else None for i in range(len(schema))]
        with _spill_errors():
            writer = pa.ipc.new_stream(spill, schema)
        for batch in batches:  # the query's own errors pass unchanged
            with _spill_errors():
                writer.write_batch(batch)
            for i in risky:
                as_text[i] = as_text[i] or _needs_duckdb_text(pa.chunked_array([batch.column(i)], schema.field(i).type))
        with _spill_errors():
            writer.close()
            spill.seek(0)
    except BaseException:
        with contextlib.suppress(OSError):  # its buffer's flush fails again on a full disk; the file is closed all the same
            spill.close()
        raise
    return _spilled_rows(spill, schema, as_text, piece_bytes)


@contextlib.contextmanager
def _spill_errors() -> Iterator[None]:
    """An ``OSError`` of the temporary file :func:`result_rows` spills a result to (``No space left
    on device``, ``Read-only file system``, no usable temporary folder) re-raised as a
    ``ValueError`` naming the temporary folder and what to do: ``prh sql`` had said "cannot write
    the output" (the output was fine) or printed Python's bare error."""
    try:
        yield
    except OSError as error:
        try:
            folder = f"the temporary folder {tempfile.gettempdir()!r}"
        except OSError:  # none of TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp, the working folder takes a file
            folder = "the temporary folders"
        raise ValueError(f"{folder} cannot take the result ({error.strerror or error}): a result with date or time "
                         "columns is first written to a temporary file there, as large as the result; set TMPDIR to a "
                         "folder this user can write, with room for it") from None


def _spilled_rows(spill: IO[bytes], schema: pa.Schema, as_text: list[bool | None],
                  piece_bytes: int) -> Iterator[tuple[Any, ...]]:
    """:func:`_rows_of` of the batches in ``spill`` (an Arrow IPC stream), which is closed (and
    so removed) at the end."""
    with spill:
        yield from _rows_of(schema, pa.ipc.open_stream(spill), as_text, piece_bytes)


def _rows_of(schema: pa.Schema, batches: Iterable[pa.RecordBatch], as_text: list[bool | None],
             piece_bytes: int) -> Iterator[tuple[Any, ...]]:
    """The rows of ``batches``, one slice of at most about ``piece_bytes`` converted at a time,
    each column as DuckDB's text or not as ``as_text`` says (:func:`column_values`)."""
    for batch in batches:
        for piece in _pieces(batch, piece_bytes):
            columns = [column_values(pa.chunked_array([column], field.type), field.name, text)
                       for column, field, text in zip(piece.columns, schema, as_text)]
            yield from zip(*columns)


def _pieces(batch: pa.RecordBatch, piece_bytes: int) -> Iterator[pa.RecordBatch]:
    """``batch`` in consecutive slices of about ``piece_bytes`` each (one row at least)."""
    if batch.num_rows == 0:
        return
    rows = max(1, piece_bytes // max(1, batch.nbytes // batch.num_rows))
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def _float32_as_shortest(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` with each FLOAT (float32), at any depth, replaced by the float64 of its shortest
    decimal text (Arrow writes the shortest text that reads back as the same float32: ``0.142``
    for 0.14200000464916229..., ``1e-45``; NaN and infinities stay), a whole column at once (a
    ``FLOAT[]`` of 512,000 features: 0.05 s)."""
    as_double = _with_float32_as(column.type, pa.float64())
    if as_double == column.type:
        return column
    return column.cast(_with_float32_as(column.type, pa.string())).cast(as_double)


def _with_float32_as(arrow_type: pa.DataType, replacement: pa.DataType) -> pa.DataType:
    """``arrow_type`` with ``replacement`` for each float32 in it (in lists, structs and maps)."""
    if pa.types.is_float32(arrow_type):
        return replacement
    if pa.types.is_map(arrow_type):
        return pa.map_(_with_float32_as(arrow_type.key_type, replacement), _with_float32_as(arrow_type.item_type, replacement))
    if isinstance(arrow_type, pa.FixedSizeListType):
        return pa.list_(_with_float32_as(arrow_type.value_type, replacement), arrow_type.list_size)
    if isinstance(arrow_type, pa.LargeListType):
        return pa.large_list(_with_float32_as(arrow_type.value_type, replacement))
    if isinstance(arrow_type, pa.ListType):
        return pa.list_(_with_float32_as(arrow_type.value_type, replacement))
    if pa.types.is_struct(arrow_type):
        return pa.struct([f.with_type(_with_float32_as(f.type, replacement)) for f in arrow_type])
    return arrow_type


Convert = Callable[[Any], Any]


def _converter(arrow_type: pa.DataType) -> Convert | None:
    """The function that turns a ``to_pylist`` value of ``arrow_type`` into the value written
    (NULL stays None), or None where the value is written as it is (no cost per value)."""
    leaf = _leaf_converter(arrow_type)
    if leaf is not None:
        return _keep_null(leaf)
    if pa.types.is_map(arrow_type):
        key = _converter(arrow_type.key_type) or _same
        item = _converter(arrow_type.item_type) or _same
        return _keep_null(lambda pairs: {_key_text(key(k)): item(v) for k, v in pairs})
    if isinstance(arrow_type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType, pa.ListViewType,
                               pa.LargeListViewType)):
        element = _converter(arrow_type.value_type)
        return None if element is None else _keep_null(lambda values: [element(v) for v in values])
    if pa.types.is_struct(arrow_type):
        fields = {f.name: _converter(f.type) for f in arrow_type}
        if all(c is None for c in fields.values()):
            return None
        return _keep_null(lambda row: {k: (v if fields.get(k) is None else fields[k](v)) for k, v in row.items()})
    if pa.types.is_dictionary(arrow_type):  # ENUM
        return _converter(arrow_type.value_type)
    return None


def _leaf_converter(arrow_type: pa.DataType) -> Convert | None:
    """The converter of a type that is not nested (see the module docstring), or None."""
    if arrow_type == pa.month_day_nano_interval():
        return interval_text
    if isinstance(arrow_type, pa.OpaqueType) and arrow_type.vendor_name == "DuckDB":
        return _DUCKDB_OPAQUE.get(arrow_type.type_name)
    return None


def _same(value: Any) -> Any:
    return value


def _keep_null(convert: Convert) -> Convert:
    """``convert`` applied to every value but None."""
    return lambda value: None if value is None else convert(value)


def _key_text(key: Any) -> str:
    """A MAP key as an object key: text as it is, any other value as CSV writes it."""
    return key if isinstance(key, str) else csv_cell(key)


def interval_text(value: Any) -> str:
    """An INTERVAL (Arrow's ``MonthDayNano``: months, days, nanoseconds) as DuckDB writes it:
    ``1 year 2 months -3 days 04:05:06.5``, ``-00:00:08``, ``00:00:00`` for zero."""
    months, days, nanoseconds = value.months, value.days, value.nanoseconds
    parts = []
    years, months = int(months / 12), months - int(months / 12) * 12  # both toward zero, as C++
    for count, unit in ((years, "year"), (months, "month"), (days, "day")):
        if count:
            parts.append(f"{count} {unit}" + ("" if abs(count) == 1 else "s"))
    if nanoseconds or not parts:
        sign = "-" if nanoseconds < 0 else ""
        seconds, fraction = divmod(abs(nanoseconds), 10**9)
        clock = f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if fraction:
            clock += "." + f"{fraction:09d}".rstrip("0")
        parts.append(clock)
    return " ".join(parts)


#: DuckDB's TIMETZ: 40 bits of microseconds since midnight, then 24 bits of 15:59:59 - offset
_TIME_TZ_MAX_OFFSET = 16 * 60 * 60 - 1


def _time_tz_text(bits: bytes) -> str:
    """A DuckDB TIMETZ (8 bytes, little-endian) as ISO text with its offset, as Python's
    ``time.isoformat`` writes one: ``12:00:00+02:00``, ``01:02:03.500000-05:30:07``."""
    word = int.from_bytes(bits, "little")
    micros, offset = word >> 24, _TIME_TZ_MAX_OFFSET - (word & 0xFFFFFF)
    seconds, fraction = divmod(micros, 10**6)
    text = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" + (f".{fraction:06d}" if fraction else "")
    sign, offset = ("-" if offset < 0 else "+"), abs(offset)
    zone = f"{sign}{offset // 3600:02d}:{offset // 60 % 60:02d}" + (f":{offset % 60:02d}" if offset % 60 else "")
    return text + zone


def _bit_text(data: bytes) -> str:
    """A DuckDB BIT (a byte of padding count, then the bits, first ones padding) as ``101``."""
    bits = "".join(f"{byte:08b}" for byte in data[1:])
    return bits[data[0]:]


def _bignum(data: bytes) -> int | Decimal:
    """A DuckDB BIGNUM (3 header bytes whose top bit is set for a positive number, then the
    magnitude big-endian; a negative number has every bit inverted) as an integer (a ``Decimal``
    past 4,000 digits, which Python will not write as an ``int``)."""
    positive = data[0] & 0x80
    magnitude = data[3:] if positive else bytes(255 - b for b in data[3:])
    number = int.from_bytes(magnitude, "big") * (1 if positive else -1)
    return number if number.bit_length() < 13_000 else Decimal(number)


_DUCKDB_OPAQUE: dict[str, Convert] = {
    "time_tz": _time_tz_text,
    "bit": _bit_text,
    "hugeint": lambda data: int.from_bytes(data, "little", signed=True),
    "uhugeint": lambda data: int.from_bytes(data, "little", signed=False),
    "bignum": _bignum,
    "varint": _bignum,  # BIGNUM's name before DuckDB 1.4
}


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


def json_value(value: Any, nonfinite: bool = False) -> Any:
    """A value as JSON holds it: integers and decimals as numbers (a whole DECIMAL or HUGEINT as an
    integer, any other DECIMAL kept a ``Decimal``, which :func:`json_text` writes with all its
    digits), a NaN or infinite float as null (JSON has no such number; with ``nonfinite`` kept,
    for :func:`json_text` ``allow_nan``), bytes as base64, lists and structs element by element,
    dates and times as ISO text."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if nonfinite or math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        whole = value == value.to_integral_value() and value.adjusted() < 4000  # Python writes no longer int
        return int(value) if whole else value
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [json_value(v, nonfinite) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v, nonfinite) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def json_text(value: Any, indent: int | None = None, depth: int = 0, ensure_ascii: bool = True,
              allow_nan: bool = False) -> str:
    """``json.dumps(value, indent=indent, allow_nan=allow_nan, ensure_ascii=ensure_ascii)`` of a
    :func:`json_value` result, except that a ``Decimal`` is written as a number with its exact
    digits (``json`` would refuse it, and a float keeps 17 digits: DECIMAL(38, 3) has 38)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if not (isinstance(value, (list, dict)) and value):
        return json.dumps(value, allow_nan=allow_nan, ensure_ascii=ensure_ascii)
    outer, inner = ("", "") if indent is None else ("\n" + " " * (indent * depth), "\n" + " " * (indent * (depth + 1)))
    comma = "," if indent is not None else ", "
    if isinstance(value, list):
        items = [inner + json_text(v, indent, depth + 1, ensure_ascii, allow_nan) for v in value]
        return "[" + comma.join(items) + outer + "]"
    items = [inner + json.dumps(str(k), ensure_ascii=ensure_ascii) + ": "
             + json_text(v, indent, depth + 1, ensure_ascii, allow_nan) for k, v in value.items()]
    return "{" + comma.join(items) + outer + "}"


def csv_cell(value: Any) -> str:
    """A value as CSV holds it, whole: floats at full precision (``repr``: ``nan``, ``inf`` too),
    lists, structs and maps as JSON (text in UTF-8; a NaN or infinite float in them as ``NaN`` /
    ``Infinity``, which Python's ``json`` and pandas read, not as null: a NULL element is null),
    bytes as base64 (as ``--format json``), NULL as an empty field."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json_text(json_value(value, nonfinite=True), ensure_ascii=False, allow_nan=True)
    return str(value)


def table_cell(value: Any) -> str:
    """A value as the terminal table shows it: short (floats to 6 significant digits, lists of
    more than 8 values cut, both inside lists, structs and maps too); NULL as nothing."""
    if value is None:
        return ""
    return _table_text(value)


def _table_text(value: Any) -> str:
    """:func:`table_cell` of a value that is not NULL."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        shown = ", ".join(_table_item(v) for v in value[:8])
        return "[" + shown + (f", ... ({len(value)})]" if len(value) > 8 else "]")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_table_item(k)}: {_table_item(v)}" for k, v in value.items()) + "}"
    return str(value)


def _table_item(value: Any) -> str:
    """A value inside a list or an object as the table shows it: text quoted (``'1'`` is not
    ``1``), NULL as ``None``."""
    if value is None or isinstance(value, str):
        return repr(value)
    return _table_text(value)


def write_json(table: pa.Table, out: IO[str]) -> None:
    """A JSON array of objects, one per row (repeated column names made distinct, see
    :func:`unique_names`); strict JSON (no NaN or Infinity tokens). The same path as a streamed
    result's (:func:`write_json_stream`)."""
    write_json_stream(table.schema, table.to_batches(), out)


def write_json_stream(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: IO[str]) -> None:
    """:func:`write_json` of a result read as record batches (``storage.catalog.query_batches``),
    the same text, written as the batches come (:func:`result_rows`). A ``QueryError`` raised
    while a later batch is computed is raised saying how many rows were written before it
    (the output is then incomplete: an unfinished JSON array). One row at a time: ``[``, each
    row an object indented as ``json_text(rows, indent=2)`` writes it, ``]`` (``[]`` without rows)."""
    names = unique_names(schema.names)
    encoding = getattr(out, "encoding", None)

    def write(row: tuple[Any, ...], number: int) -> None:
        text = json_text(dict(zip(names, (json_value(v) for v in row))), indent=2, depth=1, ensure_ascii=False)
        out.write(_encodable(("," if number else "") + "\n  " + text, encoding))

    rows = result_rows(schema, batches)  # a result spilled first (dates, times) fails here, before "[" is written
    out.write("[")
    written = _each_written(rows, write)
    out.write("]\n" if written == 0 else "\n]\n")


def _each_written(rows: Iterator[tuple[Any, ...]], write: Callable[[tuple[Any, ...], int], None]) -> int:
    """``write(row, number)`` of each row (numbered from 0); the number of rows. A query that
    fails while its rows are read (``storage.catalog.QueryError``) is raised again saying that
    the output written is incomplete and how many rows it holds."""
    from storage.catalog import QueryError

    written = 0
    try:
        for row in rows:
            write(row, written)
            written += 1
    except QueryError as error:
        what = str(error).removeprefix("the query failed: ")
        raise QueryError(f"the output is incomplete: {written:,} row{'' if written == 1 else 's'} of the result were "
                         f"written before the query failed: {what}") from error.__cause__
    return written


def _encodable(text: str, encoding: str | None) -> str:
    """JSON ``text`` with each character that ``encoding`` cannot hold (``€`` on a Latin-1
    terminal) written as a ``\\uXXXX`` escape (two for one past U+FFFF), which JSON reads back as
    that character; such a character can only lie inside a JSON string."""
    if not encoding:
        return text
    try:
        text.encode(encoding)
        return text
    except UnicodeEncodeError:
        return "".join(c if _can_encode(c, encoding) else json.dumps(c, ensure_ascii=True)[1:-1] for c in text)
    except LookupError:  # an encoding Python does not know: leave the stream to report it
        return text


def _can_encode(character: str, encoding: str) -> bool:
    try:
        character.encode(encoding)
        return True
    except UnicodeEncodeError:
        return False


def write_csv(table: pa.Table, out: IO[str]) -> None:
    """A header line with the column names as the query gave them, then one line per row; lines
    end with ``\n`` (not the csv module's ``\r\n``: the output goes to Unix tools and files). A
    value holding a line break (``\r`` too) is quoted whole, as with ``\r\n`` lines. The same
    path as a streamed result's (:func:`write_csv_stream`)."""
    write_csv_stream(table.schema, table.to_batches(), out)


def write_csv_stream(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: IO[str]) -> None:
    """:func:`write_csv` of a result read as record batches (``storage.catalog.query_batches``),
    the same text, written as the batches come (:func:`result_rows`); a query that fails while
    a later batch is computed as in :func:`write_json_stream`."""
    line = io.StringIO()
    writer = csv.writer(line)  # lines end "\r\n": every value holding "\r" or "\n" is quoted

    def write(cells: list[Any]) -> None:
        line.seek(0)
        line.truncate()
        writer.writerow(cells)
        out.write(line.getvalue()[:-2] + "\n")

    rows = result_rows(schema, batches)  # a result spilled first (dates, times) fails here, before the header
    write(schema.names)
    _each_written(rows, lambda row, _: write([csv_cell(v) for v in row]))


#: Most rows the table format prints: a terminal table of 2,000,000 rows took minutes and 1.9 GB
#: before its first line (the whole table is laid out first); CSV and JSON write every row.
MAX_TABLE_ROWS = 10_000


def print_table(table: pa.Table, width: int = 200, max_rows: int = MAX_TABLE_ROWS, total_rows: int | None = None) -> None:
    """The result as a terminal table (numbers right-aligned) and its row count: its first
    ``max_rows`` rows, then a line saying how many were left out and how to get them all
    (``total_rows``: the result's row count where ``table`` holds only its first rows,
    `storage.catalog.query_each_head`; default ``table``'s own). Text is
    shown as it is, except what a terminal would obey: a caption such as ``[red]apple[/red]`` is
    not read as the table library's markup, and a control character in a value or a column name
    (an ESC that would clear the screen or recolour it, a line break) is shown as its escape
    (``\\x1b``, ``\\n``; :func:`tasks.shown_text.for_terminal`), and so is a character the output's
    encoding cannot hold (``caf\\xe9`` on an ASCII or Latin-1 output). CSV and JSON keep every value whole."""
    from rich.table import Table
    from rich.text import Text

    from flows.cli_console import output_console

    console = output_console(width=width)
    encoding = console.encoding

    def shown(text: str) -> Text:
        return Text(_held_by(for_terminal(text), encoding))

    headers = [shown(field.name) for field in table.schema]
    cells = [[shown(table_cell(v)) for v in row] for row in positional_rows(table.slice(0, max_rows))]
    kept = _columns_that_fit(headers, cells, [_wraps(field.type) for field in table.schema], width)
    out = Table(show_lines=False)
    for index, least in kept:
        out.add_column(headers[index], justify="right" if _is_number(table.schema.field(index).type) else "left",
                       min_width=least, overflow="fold")
    for row in cells:
        out.add_row(*[row[index] for index, _ in kept])
    console.print(out)
    if len(kept) < table.num_columns:
        left_out = [headers[i].plain for i in range(table.num_columns) if i not in dict(kept)]
        print(f"{len(left_out)} of {table.num_columns} columns not shown (the table is wider than {width} characters): "
              f"{', '.join(left_out)}; name the columns to see in the query, or use --format csv or json")
    total = table.num_rows if total_rows is None else total_rows
    count = f"{total} row{'' if total == 1 else 's'}"
    if total > max_rows:
        count += (f" (the first {max_rows:,} shown; --format csv or json writes them all, or add LIMIT/OFFSET "
                  "to the query)")
    print(count)


#: The narrowest a column of text is drawn while a column after it is left out: its text folds over
#: lines of this many characters (a shorter header or value keeps its own width).
TEXT_COLUMN_MIN = 24
#: The longest value of one word (no space) read as an id and kept on one line, as a number is: a
#: flow run's id (36 characters), a ``local-...`` run id (31), a version id. A folded one could not
#: be copied whole.
ID_MAX = 40


def _wraps(arrow_type: pa.DataType) -> bool:
    """Whether the table may fold a column's values over lines: text and nested values (lists,
    structs, maps: shown as text), not numbers, times, dates or booleans, which are read whole."""
    return not (_is_number(arrow_type) or pa.types.is_temporal(arrow_type) or pa.types.is_boolean(arrow_type))


def _columns_that_fit(headers: list[Any], rows: list[list[Any]], wraps: list[bool], width: int) -> list[tuple[int, int]]:
    """(column index, least width in characters) of the columns, from the left, that fit in a table
    ``width`` characters wide with every header and every number, time and id whole: a column's
    least width is its widest header or value, where a column that ``wraps`` (text) takes at most
    :data:`TEXT_COLUMN_MIN` (its values fold). The first column is always kept. ``headers`` and
    ``rows``' cells are ``rich.text.Text``."""
    kept: list[tuple[int, int]] = []
    used = 1  # the table's left border
    for index, header in enumerate(headers):
        least = max(header.cell_len, max((_least_cell(row[index], wraps[index]) for row in rows), default=0), 1)
        # the first column is kept however wide: within the table, where its header folds (a
        # longer least width had pushed its values out of the table: blank cells)
        least = min(least, max(width - 4, 1))
        if kept and used + least + 3 > width:  # a space either side and a border
            break
        kept.append((index, least))
        used += least + 3
    return kept


def _least_cell(cell: Any, wraps: bool) -> int:
    """The least width in characters of one table cell (``rich.text.Text``): its whole width, but
    at most :data:`TEXT_COLUMN_MIN` for text that may fold (``wraps``) unless it reads as an id (one
    word of at most :data:`ID_MAX` characters)."""
    if not wraps or (cell.cell_len <= ID_MAX and not any(c.isspace() for c in cell.plain)):
        return cell.cell_len
    return min(cell.cell_len, TEXT_COLUMN_MIN)


def _held_by(text: str, encoding: str) -> str:
    """``text`` with each character that ``encoding`` (the output's: ASCII, Latin-1) cannot hold
    written as its backslash escape (``caf\\xe9``), before the table is laid out, so that its
    columns stay aligned; unchanged where the encoding holds it all (UTF-8) or is unknown."""
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text


def _is_number(arrow_type: pa.DataType) -> bool:
    """Whether a column holds plain numbers (shown right-aligned, as DuckDB's CLI shows them)."""
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)
