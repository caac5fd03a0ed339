"""JSON Lines tables read line by line with Python's ``json``, where pyarrow's reader refuses the
whole file for what concerns one row or a key that is not read.

pyarrow reads a ``.jsonl`` table first (:mod:`tasks.data.sources`: fast, and what sets the
table's types); when it fails to parse the file, this reader takes over, so that:

- a lone UTF-16 surrogate escape (``"\\ud800"``: half of an emoji cut off) rejects its row, as in
  the other JSON layouts: in a caption ``text_not_utf8`` (:mod:`tasks.data.tables`), in a
  ``sample_id`` / ``image_id`` ``sample_id_unsafe`` / ``image_id_unsafe``, in an image path
  ``image_missing`` (it names no file); in a key that is not read it is ignored;
- a line that is not UTF-8 rejects its row where a read value holds the bytes, as pyarrow's
  reading does: in a caption ``text_not_utf8``, in a ``sample_id`` / ``image_id``
  ``sample_id_unsafe`` / ``image_id_unsafe``, in an image path ``image_missing`` (this reader
  takes UTF-8 paths only), each naming the line and the byte; in a key that is not read they
  are ignored;
- a key that is not read (``extra``: a number in one line, text in another) does not matter;
- what still makes the file unreadable (a line that is not JSON, not an object, bytes that are not
  UTF-8 outside a string; a read key whose values mix JSON types) is named with its line number
  (1-based, as an editor counts).

Records of a table read here have the origin ``row R (line L)``: ``R`` the 0-based data row (blank
lines are not rows), ``L`` the line it is on.
"""

from __future__ import annotations

import json
import re
from array import array
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from tasks.data.json_tables import ROW_BATCH, RowTable, lone_surrogate
from tasks.data.sources import ColumnMap, RawRecord, records_with_captions

__all__ = ["json_lines_keys", "read_json_lines"]


def read_json_lines(path: Path, columns: ColumnMap, limit: int | None = None) -> list[RawRecord]:
    """The records of the JSON Lines table at ``path`` (its first ``limit`` rows, or all), read
    with Python's ``json`` (module docstring: what rejects a row, what the file). The lines are
    parsed one at a time and kept as Arrow a batch at a time (:class:`RowTable`), the read keys
    only: what is held is about what pyarrow's reader holds, not every line's parsed objects.

    Raises:
        ValueError: naming ``path`` and the line: not JSON, not an object; a read key mixing JSON
            types; no row with the image or caption key.
    """
    lines = array("q")  # each row's line number
    problems: dict[int, tuple[str, str]] = {}
    table = RowTable(str(path), columns, label=lambda index: f"line {lines[index]}")
    batch: list[Any] = []
    for value, number, utf8 in _head(path, limit):
        row = len(lines)
        lines.append(number)
        if isinstance(value, dict):
            problem = _surrogate_problem(value, columns, f"row {row} (line {number})", not utf8)
            if problem is not None:
                problems[row] = problem
        batch.append(value)
        if len(batch) == ROW_BATCH:
            table.add(batch)
            batch = []
    table.add(batch)
    refused = [row for row, (reason, _) in problems.items() if reason == "sample_id_unsafe"]  # ids taken out
    records = records_with_captions(table.finish(), str(path), columns.captions, columns=columns, ids_refused=refused,
                                    label=lambda row: f"row {row} (line {lines[row]})")
    if problems:
        for index, record in enumerate(records):
            if record.row in problems:
                records[index] = _with_problem(record, problems[record.row])
    return records


def json_lines_keys(path: Path) -> list[str]:
    """The keys of the JSON Lines table at ``path``, in the order first met ([] when a line cannot
    be read: :func:`read_json_lines` then says which)."""
    keys: dict[str, None] = {}
    try:
        for row, _, _ in _lines(path):  # one line at a time: the rows are not kept
            if isinstance(row, dict):
                keys.update(dict.fromkeys(row))
    except ValueError:
        return []
    return list(keys)


def _head(path: Path, limit: int | None) -> Iterator[tuple[Any, int, bool]]:
    """:func:`_lines` of ``path``, the first ``limit`` of them (all when None): the line after the
    last is never read (it may not parse)."""
    if limit is not None and limit <= 0:
        return
    for count, item in enumerate(_lines(path), start=1):
        yield item
        if limit is not None and count >= limit:
            return


def _lines(path: Path) -> Iterator[tuple[Any, int, bool]]:
    """``(parsed value, line number, whether its text is UTF-8)`` of each row of ``path``, read one
    line (up to an LF) at a time. Lines end at LF, CRLF or a lone CR, as an editor counts them; a
    row is numbered by the line it starts on. A CR between rows ends a line (classic Mac OS line
    ends, or a file mixing them with LF: pyarrow's reader takes such a file); inside a row it is
    JSON whitespace, as pyarrow reads it too (:func:`_values`). A line that is not UTF-8 is decoded
    with ``surrogateescape``: each byte that is not UTF-8 is a character U+DC80-U+DCFF in the
    string that holds it (its row is judged by :func:`_surrogate_problem`); outside a string it is
    not JSON.

    Raises:
        ValueError: naming ``path`` and the line: not JSON; the file cannot be read.
    """
    where = str(path)
    number = 1  # the line the next LF-ended line starts on
    try:
        with path.open("rb") as handle:
            for index, raw in enumerate(handle):
                utf8 = True
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text, utf8 = raw.decode("utf-8", errors="surrogateescape"), False
                if index == 0:
                    text = text.removeprefix("\ufeff")
                body = len(text) - (2 if text.endswith("\r\n") else 1 if text.endswith("\n") else 0)  # where its LF or CRLF starts
                try:
                    for value, start, end in ([] if not text.strip() else _values(text)):
                        yield value, number + text.count("\r", 0, start), utf8 or _ESCAPED_BYTE.search(text, start, end) is None
                except json.JSONDecodeError as exc:
                    line, start = _line_at(text, exc.pos, number, body)
                    raise ValueError(f"dataset table {where!r} is not readable JSON Lines (one object per line): line "
                                     f"{line}: {exc.msg} (column {exc.pos - start + 1})"
                                     f"{_not_utf8_at(_line_bytes(raw, text, start))}") from None
                number += 1 + text.count("\r", 0, body)
    except OSError as exc:
        raise ValueError(f"dataset table {where!r} cannot be read: {exc}") from exc


def _line_at(text: str, at: int, first: int, body: int) -> tuple[int, int]:
    """The line of character ``at`` of ``text`` (``first``: the line ``text`` starts on) and where
    in ``text`` that line starts. ``text`` is a line up to its LF, whose lone CRs (those before
    ``body``, where its LF or CRLF starts) end lines too."""
    crs = min(at, body)
    return first + text.count("\r", 0, crs), max(text.rfind("\r", 0, crs), text.rfind("\n", 0, at)) + 1


_LINE_END = re.compile(rb"\r\n?|\n")


def _line_bytes(raw: bytes, text: str, start: int) -> bytes:
    """The bytes of the line that starts at character ``start`` of ``text`` (``raw`` decoded, less
    a BOM: a line at the start of ``raw`` keeps it), up to its line end."""
    head = 0 if start == 0 else (len(raw) - len(text.encode("utf-8", "surrogateescape"))
                                 + len(text[:start].encode("utf-8", "surrogateescape")))
    stop = _LINE_END.search(raw, head)
    return raw[head:stop.start() if stop else len(raw)]


#: JSON whitespace; a byte that is not UTF-8, as ``surrogateescape`` decodes it.
_SPACE = re.compile(r"[ \t\n\r]*")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_DECODER = json.JSONDecoder()


def _values(text: str) -> Iterator[tuple[Any, int, int]]:
    """Each JSON value in ``text`` (a line up to its LF; not blank), with where it starts and ends:
    one, or more where a lone CR ends a line between them. ``json.JSONDecodeError`` (its ``pos`` in
    ``text``) for what is not JSON, and for two values with no line break between them ("Extra
    data", as ``json.loads`` says)."""
    at = _SPACE.match(text).end()
    while True:
        if text.startswith("\ufeff", at):  # as json.loads says of a BOM (the file's first is taken off)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, at)
        value, end = _DECODER.raw_decode(text, at)
        yield value, at, end
        at = _SPACE.match(text, end).end()
        if at == len(text):
            return
        if "\r" not in text[end:at]:
            raise json.JSONDecodeError("Extra data", text, at)


def _surrogate_problem(value: dict[str, Any], columns: ColumnMap, origin: str, not_utf8: bool = False
                       ) -> tuple[str, str] | None:
    """The row's ``(reason, detail)`` when a read id or image path holds a lone UTF-16 surrogate
    (checked in the order the row checks run: ``sample_id``, ``image_id``, caption, image), with
    the offending value taken out of ``value`` (no Arrow column takes it); None otherwise. A
    caption's is left to the caption check (``text_not_utf8``), which runs before the image's.

    ``not_utf8``: the row's line is not UTF-8 (:func:`_lines`), and a read value holding its bytes
    is named as such; a caption holding them is rejected here (``text_not_utf8``, as the caption
    check says of bytes that are not UTF-8) and taken out."""
    found = None
    for key, reason in (("sample_id", "sample_id_unsafe"), ("image_id", "image_id_unsafe")):
        if key not in (columns.image, columns.text) and isinstance(value.get(key), str) and lone_surrogate(value[key]):
            bad = _not_utf8(value[key]) if not_utf8 else None
            shown = value[key].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if bad else ""
            said = f"{shown!r} is not UTF-8 text ({bad})" if bad else f"{_surrogate_at(value[key])}, which is not text"
            found = found or (reason, f"{origin}: {key} {said}")
            value[key] = None
    bad = _not_utf8(value.get(columns.text)) if not_utf8 else None
    if bad is not None:
        found = found or ("text_not_utf8", f"{origin}: caption is not valid UTF-8 ({bad})")
        value[columns.text] = None
    image = value.get(columns.image)
    path = image.get("path") if isinstance(image, dict) else image
    if isinstance(path, str) and lone_surrogate(path):
        if not lone_surrogate(value.get(columns.text)):
            bad = _not_utf8(path) if not_utf8 else None
            said = (f"is not UTF-8 text ({bad}): write the file's name in UTF-8" if bad else
                    f"{_surrogate_at(path)}, which names no file")
            found = found or ("image_missing", f"{origin}: image path {said}")
        value[columns.image] = {**image, "path": None} if isinstance(image, dict) else None
    return found


def _not_utf8(value: Any) -> str | None:
    """``invalid start byte at byte 1`` (the byte counted in the value) for text of a line decoded
    with ``surrogateescape`` (or a list of them) whose first such text is bytes that are not UTF-8;
    None otherwise, also for a lone surrogate that is no such byte (a JSON ``"\\ud83d"``)."""
    for text in value if isinstance(value, list) else [value]:
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8", "surrogateescape").decode("utf-8")
        except UnicodeEncodeError:
            continue
        except UnicodeDecodeError as exc:
            return f"{exc.reason} at byte {exc.start}"
    return None


def _not_utf8_at(raw: bytes) -> str:
    """``; the line is not UTF-8 (invalid start byte at byte 16 of the line)`` for a ``raw`` line
    that is not UTF-8 (a byte outside a string: why it is not JSON), else ``''``."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"; the line is not UTF-8 ({exc.reason} at byte {exc.start} of the line)"
    return ""


def _surrogate_at(text: str) -> str:
    """``holds a lone UTF-16 surrogate (U+D800 at character 4: ...)`` for ``text``."""
    at = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
    return f"holds a lone UTF-16 surrogate (U+{ord(text[at]):04X} at character {at}: half of a character cut off?)"


def _with_problem(record: RawRecord, problem: tuple[str, str]) -> RawRecord:
    """``record`` carrying its row's ``problem`` (``(reason, detail)``: :func:`_surrogate_problem`),
    without the id that problem refuses."""
    return replace(record, problem=problem, sample_id=None if problem[0] == "sample_id_unsafe" else record.sample_id)
