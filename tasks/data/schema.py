"""The paired-dataset table contract shared by every stage of the pipeline.

A paired dataset is a :class:`pyarrow.Table` with exactly these columns, in this order:

``sample_id`` (string)
    Unique, non-empty, at most 128 characters from ``[A-Za-z0-9._-]``. The join key between
    the features of every model.
``image`` (binary)
    Encoded image bytes that Pillow decodes (PNG for rendered datasets, the original file
    bytes for loaded ones).
``text`` (string)
    The caption: valid UTF-8, stripped of surrounding whitespace, non-empty, at most
    :data:`MAX_CAPTION_CHARS` characters, and free of control characters other than tab,
    line feed and carriage return (no NUL, no escape sequences; see :func:`caption_problem`).
``image_id`` (string)
    The image this caption belongs to, with the same character rules as ``sample_id``. It
    equals ``sample_id`` when an image has one caption; rows that share an image share it.

Rows are sorted by ``sample_id`` (plain code-point order, which for the allowed ASCII
characters is also byte order). No column holds nulls.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DATASET_SCHEMA",
    "MAX_CAPTION_CHARS",
    "MAX_ID_LENGTH",
    "SAFE_ID_PATTERN",
    "byte_order_mark",
    "caption_problem",
    "id_problem",
    "is_safe_id",
    "validate_table",
]

MAX_ID_LENGTH = 128
"""Longest allowed ``sample_id`` / ``image_id``."""

SAFE_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
"""Characters an id may use (matched against the whole id)."""

MAX_CAPTION_CHARS = 65_536
"""Longest allowed caption, in characters (code points) after stripping.

Far above what any model reads (the tokenizer truncates to the model's ``max_length`` tokens,
64 by default), so real captions, dense ones included, pass; a longer "caption" is nearly
always a parsing accident (an unclosed CSV quote swallowing the rest of the file, a whole
document in one cell), and keeping it would cost memory in every later stage."""

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""C0 control characters and DEL, except tab, line feed and carriage return."""

DATASET_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
    ]
)
"""Schema of every paired-dataset table (see the module docstring for the rules)."""


def id_problem(value: str) -> str | None:
    """Say what is wrong with ``value`` as a sample or image id, or return ``None`` if it is fine."""
    if value == "":
        return "is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long (at most {MAX_ID_LENGTH})"
    if SAFE_ID_PATTERN.fullmatch(value) is None:
        bad = sorted({ch for ch in value if SAFE_ID_PATTERN.fullmatch(ch) is None})
        shown = "".join(bad[:10])
        return f"has characters outside [A-Za-z0-9._-]: {shown!r}"
    return None


def caption_problem(text: str) -> str | None:
    """Say what is wrong with a stripped, non-empty caption, or return ``None`` if it is fine.

    Refused: more than :data:`MAX_CAPTION_CHARS` characters; a C0 control character or DEL
    other than tab, line feed and carriage return (a NUL usually means UTF-16 text read as
    UTF-8, an ESC a terminal colour code). Other characters, including C1 controls and
    U+FFFD, are kept as written.
    """
    if len(text) > MAX_CAPTION_CHARS:
        return f"is {len(text):,} characters long (at most {MAX_CAPTION_CHARS:,})"
    found = _CONTROL_CHARACTERS.search(text)
    if found is not None:
        count = len(_CONTROL_CHARACTERS.findall(text))
        return (
            f"has {count} control character(s), the first U+{ord(found.group()):04X} at character "
            f"{found.start()} (only tab, line feed and carriage return are allowed)"
        )
    return None


#: Byte-order marks of the Unicode encodings other than UTF-8, longest first: UTF-32 LE's
#: (``FF FE 00 00``) starts with UTF-16 LE's (``FF FE``), so it is looked for first.
_BYTE_ORDER_MARKS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                     (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def byte_order_mark(raw: bytes) -> tuple[str, str] | None:
    """``(encoding, mark)`` for bytes ``raw`` that start with the byte-order mark of UTF-16 or
    UTF-32 (either byte order), the mark as hex bytes: ``("UTF-32", "FF FE 00 00")``; None
    otherwise (a UTF-8 BOM included: that is UTF-8)."""
    for mark, encoding in _BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            return encoding, mark.hex(" ").upper()
    return None


def not_utf8_problem(raw: bytes, error: UnicodeDecodeError) -> str:
    """What is wrong with caption bytes ``raw`` that ``error`` says are not UTF-8: UTF-16 or UTF-32
    named by its byte-order mark (UTF-16 is what Notepad's "Unicode" and spreadsheets' "Unicode
    text" save), else the decoder's reason and byte offset."""
    found = byte_order_mark(raw)
    if found is not None:
        encoding, mark = found
        return f"is {encoding} encoded (it starts with the byte-order mark {mark}), not UTF-8: save it as UTF-8"
    return f"is not valid UTF-8 ({error.reason} at byte {error.start})"


def is_safe_id(value: str) -> bool:
    """True when ``value`` is a valid sample or image id."""
    return id_problem(value) is None


def validate_table(table: pa.Table) -> None:
    """Check that ``table`` follows the paired-dataset contract.

    Raises:
        ValueError: naming the first problem found (schema, nulls, ids, captions, images, order).
    """
    if not isinstance(table, pa.Table):
        raise ValueError(f"expected a pyarrow.Table, got {type(table).__name__}")
    if table.schema.names != DATASET_SCHEMA.names:
        raise ValueError(
            f"columns are {table.schema.names}, expected exactly {DATASET_SCHEMA.names}"
        )
    for expected in DATASET_SCHEMA:
        actual = table.schema.field(expected.name)
        if actual.type != expected.type:
            raise ValueError(
                f"column {expected.name!r} has type {actual.type}, expected {expected.type}"
            )
        nulls = table.column(expected.name).null_count
        if nulls:
            raise ValueError(f"column {expected.name!r} has {nulls} null value(s)")
    try:
        table.validate(full=True)  # includes UTF-8 validity of the string columns
    except pa.ArrowInvalid as exc:
        raise ValueError(f"table data is invalid: {exc}") from exc

    sample_ids: list[str] = table.column("sample_id").to_pylist()
    for column in ("sample_id", "image_id"):
        for row, value in enumerate(table.column(column).to_pylist()):
            problem = id_problem(value)
            if problem is not None:
                raise ValueError(f"{column} {value!r} (row {row}) {problem}")
    seen: set[str] = set()
    for value in sample_ids:
        if value in seen:
            raise ValueError(f"sample_id {value!r} occurs more than once")
        seen.add(value)
    for row in range(1, len(sample_ids)):
        if sample_ids[row - 1] > sample_ids[row]:
            raise ValueError(
                f"rows are not sorted by sample_id: {sample_ids[row - 1]!r} comes before "
                f"{sample_ids[row]!r} (row {row})"
            )

    for row, text in enumerate(table.column("text").to_pylist()):
        if text.strip() == "":
            raise ValueError(f"text of sample {sample_ids[row]!r} is empty")
        if text != text.strip():
            raise ValueError(
                f"text of sample {sample_ids[row]!r} has surrounding whitespace: {text[:80]!r}"
            )
        problem = caption_problem(text)
        if problem is not None:
            raise ValueError(f"text of sample {sample_ids[row]!r} {problem}")
    if table.num_rows:
        empty = pc.equal(pc.binary_length(table.column("image")), 0)
        if pc.any(empty).as_py():
            row = pc.index(empty, True).as_py()
            raise ValueError(f"image of sample {sample_ids[row]!r} is empty (0 bytes)")
