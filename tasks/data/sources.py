"""Reading paired datasets from disk into raw records, before any validation.

Three layouts are understood (chosen by :func:`read_records` from the path):

Parquet table (``.parquet``, ``.pq``)
    Columns ``image`` and ``text`` are required; ``sample_id`` and ``image_id`` are optional.
    ``image`` is binary (encoded image bytes), string (a path relative to the table's folder),
    or a struct with ``bytes`` and ``path`` fields (the Hugging Face ``datasets`` image layout;
    the bytes are used when present, else the path). ``text`` is string or binary (binary is
    decoded as UTF-8 later, so bad bytes reject the row rather than the file). ``sample_id``
    and ``image_id`` are strings or integers.
CSV table (``.csv``; ``.tsv`` with tabs)
    A header row naming ``image`` and ``text`` (optionally ``sample_id``, ``image_id``); ``image``
    is a path relative to the table's folder. Fields that are not valid UTF-8 are kept as bytes
    so that only their row is rejected. A UTF-8 byte-order mark is skipped; blank lines are
    not rows. A field may be up to 64 MiB (Python's ``csv`` default of 128 KiB is raised, so
    that an over-long caption rejects its row, not the file); a longer one (usually an unclosed
    quote) makes the file unreadable, with the line number.
Folder of images with captions
    ``NAME.<image suffix>`` with ``NAME.txt`` beside it, top level only, hidden files ignored.
    ``sample_id`` is ``NAME``. The ``.txt`` holds one caption per non-empty line: with one
    caption the row is ``NAME`` (its ``image_id`` is not given, so it is ``NAME`` unless
    another file has identical bytes, see :mod:`tasks.data.tables`); with k > 1 captions the
    rows are ``NAME-0`` … ``NAME-{k-1}``, all with ``image_id`` ``NAME``. An image without a caption file,
    a caption file without an image, and a second image with the same ``NAME`` are records
    carrying their problem, so they are reported.

``row`` numbers are 0-based positions among a table's data rows (the CSV header is not a row);
a CSV record's ``origin`` also gives the line it starts on. Folder records have no row.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "IMAGE_SUFFIXES",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "RawRecord",
    "read_records",
    "records_from_table",
]

REQUIRED_COLUMNS = ("image", "text")
OPTIONAL_COLUMNS = ("sample_id", "image_id")
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_CSV_FIELD_LIMIT = 64 * 1024 * 1024  # characters


@dataclass(frozen=True)
class RawRecord:
    """One candidate row as read from the source, not yet checked.

    Attributes:
        row: 0-based data-row position in a table; ``None`` for folder records.
        origin: where the record came from, for messages (``row 3``, ``cat.png``).
        sample_id: the given id; ``None`` when the source gives none (it is then derived).
            A null id in a ``sample_id`` column is ``""``, which is rejected.
        image: encoded bytes, a path relative to the dataset root (``str``), or ``None``.
        text: the caption as bytes (decoded strictly as UTF-8 later), ``str``, or ``None``.
        image_id: the given image id, or ``None`` (null and empty mean "not given").
        problem: ``(reason, detail)`` when the reader already knows the record is unusable.
    """

    row: int | None
    origin: str
    sample_id: str | None
    image: bytes | str | None
    text: bytes | str | None
    image_id: str | None
    problem: tuple[str, str] | None = None


def read_records(path: Path) -> tuple[list[RawRecord], Path]:
    """Read every record of the dataset at ``path``; also return the folder image paths are relative to.

    Raises:
        ValueError: the path does not exist, has an unsupported suffix, cannot be parsed, or
            lacks a required column; a folder without any image or caption file.
    """
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative paths are read from the working directory: {path.absolute()})"
        raise ValueError(f"dataset path {str(path)!r} does not exist{where}")
    if path.is_dir():
        return _read_folder(path), path
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        return _read_parquet(path), path.parent
    if suffix in _CSV_DELIMITERS:
        return _read_csv(path, _CSV_DELIMITERS[suffix]), path.parent
    raise ValueError(
        f"dataset path {str(path)!r}: unsupported file type {path.suffix!r} "
        "(expected .parquet, .pq, .csv, .tsv, or a folder of images with .txt captions)"
    )


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ValueError(
            f"dataset table {str(path)!r} lacks required column(s) {missing}; it has {names}"
        )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"dataset table {str(path)!r} has duplicated column(s) {duplicated}")


# ---------------------------------------------------------------------------------------- Parquet


def _read_parquet(path: Path) -> list[RawRecord]:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"dataset table {str(path)!r} is not a readable Parquet file: {exc}") from exc
    _check_columns(path, schema.names)
    columns = [n for n in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if n in schema.names]
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"dataset table {str(path)!r} could not be read: {exc}") from exc

    return records_from_table(table, str(path))


def records_from_table(table: pa.Table, where: str) -> list[RawRecord]:
    """One record per row of an Arrow table with the Parquet layout's columns (``image``, ``text``,
    optional ``sample_id``, ``image_id``; types as above). ``where`` names the table in messages.

    Raises:
        ValueError: a column of a type this layout does not accept.
    """
    images = _parquet_images(where, table.column("image"))
    texts = _as_bytes(where, "text", table.column("text"), allow_integers=False)
    sample_ids = (
        [_decode_id(v) for v in _as_bytes(where, "sample_id", table.column("sample_id"))]
        if "sample_id" in table.column_names
        else [None] * table.num_rows
    )
    image_ids = (
        [_decode_id(v) or None for v in _as_bytes(where, "image_id", table.column("image_id"))]
        if "image_id" in table.column_names
        else [None] * table.num_rows
    )
    return [
        RawRecord(row=i, origin=f"row {i}", sample_id=sid, image=img, text=txt, image_id=iid)
        for i, (sid, img, txt, iid) in enumerate(zip(sample_ids, images, texts, image_ids))
    ]


def _as_bytes(
    where: str, name: str, column: pa.ChunkedArray, allow_integers: bool = True
) -> list[bytes | None]:
    """A string/binary (or integer) column as raw bytes, nulls as ``None``."""
    kind = column.type
    if allow_integers and pa.types.is_integer(kind):
        column = pc.cast(column, pa.string())
    elif not (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        wanted = "string, binary or integer" if allow_integers else "string or binary"
        raise ValueError(f"dataset table {where!r}: column {name!r} has type {kind}, expected {wanted}")
    # Casting string → binary never checks UTF-8, so undecodable values survive to be reported.
    return pc.cast(column, pa.large_binary()).to_pylist()


def _decode_id(value: bytes | None) -> str:
    """An id as text; null becomes "" and undecodable bytes stay visible (and unsafe)."""
    return "" if value is None else value.decode("utf-8", errors="backslashreplace")


def _parquet_images(where: str, column: pa.ChunkedArray) -> list[bytes | str | None]:
    kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return column.to_pylist()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return [_decode_path(v) for v in pc.cast(column, pa.large_binary()).to_pylist()]
    if pa.types.is_struct(kind) and {"bytes", "path"} <= {kind.field(i).name for i in range(kind.num_fields)}:
        result: list[bytes | str | None] = []
        for item in column.to_pylist():
            if item is None:
                result.append(None)
            elif item["bytes"] is not None:
                result.append(bytes(item["bytes"]))
            else:
                result.append(item["path"])
        return result
    raise ValueError(
        f"dataset table {where!r}: column 'image' has type {kind}, expected binary (image "
        "bytes), string (a path relative to the table) or struct<bytes, path>"
    )


def _decode_path(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="surrogateescape")


# -------------------------------------------------------------------------------------------- CSV


def _read_csv(path: Path, delimiter: str) -> list[RawRecord]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"dataset table {str(path)!r} cannot be read: {exc}") from exc
    # surrogateescape keeps bytes that are not UTF-8 so they can be reported row by row.
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    # Process-wide setting; only ever raised, so concurrent readers see a limit at least this big.
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"dataset table {str(path)!r} is empty (no header row)") from None
    except csv.Error as exc:
        raise ValueError(f"dataset table {str(path)!r} is not valid CSV: {exc}") from exc
    names = [name.strip() for name in header]
    _check_columns(path, names)
    position = {name: names.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in names}

    records: list[RawRecord] = []
    row = 0
    start = reader.line_num + 1  # first physical line of the next record (a quoted field may span lines)
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:  # a blank line is not a row
                continue
            origin = f"row {row} (line {line})"
            if len(fields) != len(names):
                detail = f"{origin} has {len(fields)} fields, the header has {len(names)}"
                records.append(_refused(origin, None, "row_malformed", detail, row=row))
            else:
                value = {name: fields[i] for name, i in position.items()}
                records.append(
                    RawRecord(
                        row=row,
                        origin=origin,
                        sample_id=_clean_id(value.get("sample_id")),
                        image=value["image"],
                        text=value["text"].encode("utf-8", errors="surrogateescape"),
                        image_id=_clean_id(value.get("image_id")) or None,
                    )
                )
            row += 1
    except csv.Error as exc:
        raise ValueError(
            f"dataset table {str(path)!r} is not valid CSV near line {reader.line_num}: {exc}"
        ) from exc
    return records


def _clean_id(value: str | None) -> str | None:
    """An id field with undecodable bytes shown as backslash escapes (so it is reported as unsafe)."""
    if value is None:
        return None
    return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


# ----------------------------------------------------------------------------------------- folder


def _read_folder(root: Path) -> list[RawRecord]:
    images: dict[str, list[str]] = {}
    captions: dict[str, str] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        suffix = entry.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.setdefault(entry.stem, []).append(entry.name)
        elif suffix == ".txt":
            captions[entry.stem] = entry.name
    if not images and not captions:
        raise ValueError(
            f"dataset folder {str(root)!r} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) "
            "or .txt caption files"
        )

    records: list[RawRecord] = []
    for stem in sorted(images.keys() | captions.keys()):
        names = images.get(stem, [])
        caption_name = captions.get(stem)
        for extra in names[1:]:
            detail = f"{extra} has the same name as {names[0]}"
            records.append(_refused(extra, stem, "sample_id_duplicate", detail))
        if not names:
            detail = f"caption file {caption_name} has no image file named {stem}.*"
            records.append(_refused(f"{caption_name}", stem, "image_missing", detail))
        elif caption_name is None:
            detail = f"image {names[0]} has no caption file {stem}.txt"
            records.append(_refused(names[0], stem, "text_missing", detail))
        else:
            records.extend(_folder_records(root, stem, names[0], caption_name))
    return records


def _folder_records(root: Path, stem: str, image_name: str, caption_name: str) -> list[RawRecord]:
    """The record(s) of one image and its caption file: one per non-empty line."""
    origin = f"{image_name} + {caption_name}"
    if not (root / caption_name).resolve().is_relative_to(root.resolve()):
        detail = f"caption file {caption_name} links outside the dataset folder"
        return [_refused(origin, stem, "text_path_unsafe", detail)]
    try:
        content = (root / caption_name).read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        detail = f"{caption_name} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        return [_refused(origin, stem, "text_not_utf8", detail)]
    except OSError as exc:
        return [_refused(origin, stem, "text_missing", f"cannot read {caption_name}: {exc}")]
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    if len(lines) <= 1:
        text = lines[0] if lines else ""
        return [RawRecord(None, origin, sample_id=stem, image=image_name, text=text, image_id=None)]
    return [
        RawRecord(None, f"{origin} caption {i}", f"{stem}-{i}", image=image_name, text=line, image_id=stem)
        for i, line in enumerate(lines)
    ]


def _refused(
    origin: str, sample_id: str | None, reason: str, detail: str, row: int | None = None
) -> RawRecord:
    """A record the reader already knows to be unusable, carrying ``(reason, detail)``."""
    return RawRecord(row, origin, sample_id, image=None, text=None, image_id=None, problem=(reason, detail))
