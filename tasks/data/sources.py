"""Reading paired datasets from disk into raw records, before any validation.

These layouts are understood (chosen by :func:`read_records` from the path):

Parquet table (``.parquet``, ``.pq``)
    Columns ``image`` and ``text`` are required; ``sample_id`` and ``image_id`` are optional.
    ``image`` is binary (encoded image bytes), string (a path relative to the table's folder),
    or a struct with ``bytes`` and ``path`` fields (the Hugging Face ``datasets`` image layout;
    the bytes are used when present, else the path). ``text`` is string or binary (binary is
    decoded as UTF-8 later, so bad bytes reject the row rather than the file). ``sample_id``
    and ``image_id`` are strings, binary (an id that is not UTF-8 rejects its row) or integers.
    Dictionary-encoded and ``string_view``/``binary_view`` columns are read as their values
    (:func:`plain_encodings`): the dataset version does not depend on the encoding.
CSV table (``.csv``; ``.tsv`` with tabs)
    A header row naming ``image`` and ``text`` (optionally ``sample_id``, ``image_id``); ``image``
    is a path relative to the table's folder. A ``.csv`` whose header has no comma but semicolons
    is read at semicolons (a spreadsheet's CSV where decimal commas are written), and so is one
    whose header's every comma lies inside a quoted name of a header well-formed at semicolons
    (``image;"caption, en"``); a comma outside quotes keeps it comma-separated. A first line
    ``sep=X`` (Excel's ``sep=;``, ``sep=,``, ``sep=<tab>``; any suffix) declares the separator
    ``X`` and is not the header (rows keep their line numbers). A column not
    read may be named twice (empty header cells right of the data: ``image,text,,``). Fields
    that are not valid UTF-8 are kept as bytes so that only their row is rejected. A UTF-8
    byte-order mark is skipped; a UTF-16 or UTF-32 one refuses the file, naming the encoding
    (as it does a JSON Lines table or JSON document); blank lines are not rows. A field may be up to 64 MiB (Python's
    ``csv`` default of 128 KiB is raised, so that an over-long caption rejects its row, not the
    file); a longer one makes the file unreadable, with the line number. Quotes are read strictly: a quoted field left open to the
    end of the file, or text after a closing quote, makes the file unreadable (naming the line)
    instead of swallowing the rows after it into one caption.
JSON Lines table (``.jsonl``, ``.ndjson``)
    One JSON object per line with the Parquet layout's fields (``image`` a path relative to the
    table's folder); read with pyarrow (with ``limit``, reading stops at the block that holds the
    first ``limit`` rows), or, where pyarrow refuses the file, line by line
    (:mod:`tasks.data.json_lines`: a lone UTF-16 surrogate escape rejects its row only, keys not
    read do not matter, and a line that does not parse makes the file unreadable, naming it), and
    so is a table whose ids or captions pyarrow reads as times (strings such as ``2024-01-01``).
    One object per line, lines ending at LF, CRLF or a lone CR: two objects on one line, or one
    broken over lines (pretty-printed), make the file unreadable, naming the line, whichever
    reader would read it (pyarrow's takes both, the second only in a file of one read block).
JSON document (``.json``)
    A COCO captions file (``images`` + ``annotations``, one row per image with its list of
    captions, ``sample_id`` the image id), a Karpathy split file (``dataset_coco.json``: the
    same, for the images of one ``split``) or an array of row objects with the table layout's
    fields (:mod:`tasks.data.json_tables`).
    In JSON Lines and JSON rows, a caption key that is a string in some rows and a list of strings
    in others reads each string as a list of one (so ``captions: all`` names its row ``ID-0``, as
    any list's); a caption of another JSON type (a number, an object) beside them refuses the
    file, naming both lines (elements).
Folder with a metadata table (the Hugging Face ImageFolder convention)
    A folder holding ``metadata.jsonl``, ``metadata.csv`` or ``metadata.parquet`` (exactly one):
    that table is read as above, image paths relative to the folder (subfolders allowed); its
    image column defaults to ``file_name`` (the convention) when it has no ``image`` column, also
    when the table itself is given as the dataset path (the same rows either way, for each of the
    three; only its folder's reading reports images it does not name). Image
    files anywhere under the folder that the table does not name are reported (``text_missing``);
    the table may name them by absolute paths inside the folder.
Folder of images with captions
    ``NAME.<image suffix>`` with ``NAME.txt`` beside it, top level only, hidden files ignored.
    ``sample_id`` is ``NAME`` (a name with characters outside ``[A-Za-z0-9._-]``, e.g. spaces,
    gets a safe id with a digest of the name: :func:`folder_id`). The ``.txt`` holds one caption per non-empty line,
    read like a table's list of captions: the first (``captions="first"``) makes the row ``NAME``
    (its ``image_id`` is not given, so it is ``NAME`` unless another file has identical bytes, see
    :mod:`tasks.data.tables`); with ``"all"`` and k > 1 captions the rows are ``NAME-0`` …
    ``NAME-{k-1}``, all with ``image_id`` ``NAME``. An image without a caption file,
    a caption file without an image, and a second image with the same ``NAME`` are records
    carrying their problem, so they are reported.

Column names: every table layout reads its image and caption columns under the names given
by :class:`ColumnMap` (default ``image`` and ``text``). A caption column holding lists (Parquet,
JSON Lines) gives one caption per image: the first (``captions="first"``, what the paper's code
does) or one row per caption (``"all"``, rows linked to their image by ``image_id``).

``row`` numbers are 0-based positions among a table's data rows (the CSV header is not a row);
a CSV record's ``origin`` also gives the line it starts on. Folder records have no row.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from tasks.data.schema import MAX_ID_LENGTH, byte_order_mark, id_problem, not_utf8_problem

__all__ = [
    "ColumnMap",
    "effective_columns",
    "head_of",
    "IMAGE_SUFFIXES",
    "OPTIONAL_COLUMNS",
    "plain_encodings",
    "REQUIRED_COLUMNS",
    "RawRecord",
    "read_records",
    "records_from_table",
    "records_with_captions",
]

REQUIRED_COLUMNS = ("image", "text")
OPTIONAL_COLUMNS = ("sample_id", "image_id")
IMAGE_SUFFIXES = frozenset(
    {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".avif", ".bmp", ".gif", ".tif", ".tiff", ".ppm",
     ".pgm", ".pbm", ".pnm", ".tga", ".jp2"}
)
#: Image formats a folder may hold that are not read (no decoder here): named when a caption
#: file's image has one, rather than "no image file".
UNREAD_IMAGE_SUFFIXES = frozenset({".heic", ".heif", ".jxl", ".svg", ".dng", ".cr2", ".nef", ".arw", ".raw", ".psd",
                                   ".ico", ".eps"})
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
_TABLE_SUFFIXES = frozenset({*_PARQUET_SUFFIXES, *_CSV_DELIMITERS, *_JSONL_SUFFIXES, ".json"})
_CSV_FIELD_LIMIT = 64 * 1024 * 1024  # characters
#: Metadata tables of a Hugging Face ImageFolder, and the image column its convention uses.
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
METADATA_IMAGE_COLUMN = "file_name"
Captions = Literal["first", "all"]


@dataclass(frozen=True)
class ColumnMap:
    """Where a table keeps its pairs: the ``image`` and ``text`` column names, and what to do
    with a list of captions per image (``captions``: ``"first"`` or ``"all"``)."""

    image: str = "image"
    text: str = "text"
    captions: Captions = "first"

    def __post_init__(self) -> None:
        if self.captions not in ("first", "all"):
            raise ValueError(f"captions must be 'first' or 'all', got {self.captions!r}")
        if not self.image or not self.text or self.image == self.text:
            raise ValueError(f"image and text columns must be two different names, got {self.image!r}, {self.text!r}")

    def wanted(self) -> list[str]:
        """The source columns read: image, text, and the optional id columns."""
        return [self.image, self.text, *(c for c in OPTIONAL_COLUMNS if c not in (self.image, self.text))]

    def canonical(self, table: pa.Table) -> pa.Table:
        """``table`` with its image and text columns renamed ``image`` and ``text``."""
        rename = {self.image: "image", self.text: "text"}
        return table.rename_columns([rename.get(c, c) for c in table.column_names])


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One candidate row as read from the source, not yet checked. Slotted: a table is read into
    one record per row, and a per-record ``__dict__`` took ~11% of what they hold (the records of
    500,000 short CSV rows: 206 MB with one, 183 MB without; the rest is their strings).

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


def read_records(path: Path, columns: ColumnMap | None = None, limit: int | None = None, split: str | None = None
                 ) -> tuple[list[RawRecord], Path]:
    """Read every record of the dataset at ``path``; also return the folder image paths are relative to.

    ``columns``: the table layouts' column names and caption policy (default ``ColumnMap()``).
    ``limit``: read only the first ``limit`` rows of a table (before captions are expanded; a
    Parquet table's later row groups are never read) or images of a folder (by name), or samples
    of WebDataset tar shards (a ``.tar``/``.tar.gz`` file, or a folder of them without images of
    its own: ``tasks.data.webdataset``); the
    images a metadata table leaves out are then not reported. ``split``: only the images of this
    split of a Karpathy split ``.json`` (None: all rows); other layouts have no splits.

    Raises:
        ValueError: the path does not exist, has an unsupported suffix, cannot be parsed, or
            lacks a required column; a folder without any image or caption file; a split the
            file does not have, or a split for a layout without splits.
    """
    columns = columns or ColumnMap()
    check_dataset_path(path)
    check_split(path, split)
    layout = check_layout(path, columns.image, columns.text)
    from tasks.data.webdataset import read_shards

    if layout.kind == "shard":
        return read_shards([path], columns, limit), path.parent
    if layout.kind == "metadata":
        return _read_image_folder(path, layout.files[0], columns, limit), path
    if layout.kind == "shards":
        return read_shards(list(layout.files), columns, limit), path
    if layout.kind == "folder":
        return _read_folder(path, limit, columns.captions), path
    # a folder's metadata table given itself reads as its folder does: file_name for its image column
    return _read_table(path, effective_columns(path, columns), limit, split), path.parent


def check_dataset_path(path: Path) -> None:
    """Raise ``ValueError`` when the dataset ``path`` does not exist (a relative one: saying where
    it was looked for)."""
    if not path_exists(path, "dataset path"):
        where = "" if path.is_absolute() else f" (relative paths are read from the working directory: {path.absolute()})"
        raise ValueError(f"dataset path {str(path)!r} does not exist{where}")


class DatasetLayout(NamedTuple):
    """How :func:`read_records` reads a dataset path: ``kind`` ``shard`` (a WebDataset tar file),
    ``table`` (a table or JSON document), ``metadata`` (a folder with a metadata table:
    ``files`` holds it), ``shards`` (a folder of shards without images of its own: ``files``, in
    name order) or ``folder`` (images with ``.txt`` captions)."""

    kind: Literal["shard", "table", "metadata", "shards", "folder"]
    files: tuple[Path, ...] = ()


def check_layout(path: Path, image_column: str = REQUIRED_COLUMNS[0], text_column: str = REQUIRED_COLUMNS[1]
                 ) -> DatasetLayout:
    """The layout of the dataset ``path`` (an existing file or folder), the one decision
    :func:`read_records` reads by; ``ValueError`` for what it refuses before reading a file: a file
    of a type no reader takes; a folder with more than one metadata table; a folder with no
    metadata table, no WebDataset shards and no images or ``.txt`` captions at its top level;
    ``image_column`` / ``text_column`` other than the defaults for a folder of images with ``.txt``
    captions, which has no columns.
    Told from names and the folder's listing, no file read, so that ``prh run --check`` refuses
    what ``prh run`` would refuse first thing (with the same words)."""
    from tasks.data.webdataset import is_shard, shards_in

    if not path.is_dir():
        if is_shard(path):
            return DatasetLayout("shard")
        if path.suffix.lower() not in _TABLE_SUFFIXES:
            raise _unsupported_file(path)
        return DatasetLayout("table")
    metadata = _metadata_table(path)  # (which raises for more than one)
    if metadata is not None:
        return DatasetLayout("metadata", (metadata,))
    shards = shards_in(path)
    if shards and not _has_folder_pairs(path):
        return DatasetLayout("shards", tuple(shards))
    if (image_column, text_column) != REQUIRED_COLUMNS:
        raise ValueError(f"dataset {str(path)!r} is a folder of images with .txt captions, which has no columns: "
                         f"image_column / text_column ({image_column!r}, {text_column!r}) apply to tables and to a "
                         f"folder with a {' / '.join(METADATA_FILES)} table")
    if not any(entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in (*IMAGE_SUFFIXES, ".txt")
               for entry in path.iterdir()):
        raise _no_pairs_in(path)
    return DatasetLayout("folder")


def check_table_columns(path: Path, layout: DatasetLayout, image_column: str = REQUIRED_COLUMNS[0],
                        text_column: str = REQUIRED_COLUMNS[1]) -> None:
    """Refuse (``ValueError``, the reader's own words) a Parquet or CSV/TSV table, the dataset
    ``path`` itself or its folder's metadata table (``layout``: :func:`check_layout`), whose schema
    or header row lacks the image or text column or names a column twice: what
    :func:`read_records` refuses first thing, told from the schema or the header alone, for
    ``prh run --check``. A JSON Lines table or a JSON document is left to its reader (its keys are
    known only once it is read whole), and so is a table that cannot be read."""
    table = path if layout.kind == "table" else layout.files[0] if layout.kind == "metadata" else None
    if table is None or table.suffix.lower() not in (*_PARQUET_SUFFIXES, *_CSV_DELIMITERS):
        return
    names = _column_names(table)
    if names:
        _check_columns(table, names, effective_columns(path, ColumnMap(image_column, text_column)))


def path_exists(path: Path, what: str) -> bool:
    """Whether ``path`` exists; a path that cannot name a file (a NUL character, a name longer than
    the file system allows) does not. Raises ``ValueError`` naming ``what`` (``dataset path``) for a
    name that is too long, rather than the ``OSError`` a task's retry policy takes for a storage
    hiccup; other ``OSError`` s (disk or network I/O errors) propagate."""
    try:
        return path.exists()
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise ValueError(f"{what} {str(path)[:200]!r}{'...' if len(str(path)) > 200 else ''} is too long to name a file "
                         f"({exc.strerror})") from None


def check_split(path: Path, split: str | None) -> None:
    """Raise ``ValueError`` when ``split`` is set for a dataset ``path`` (an existing file or
    folder) whose layout has no splits: any but a ``.json`` document (a Karpathy split file tells
    its splits when read, ``tasks.data.json_tables``)."""
    if split is None or (path.is_file() and path.suffix.lower() == ".json"):
        return
    from tasks.data.webdataset import is_shard

    kind = "a folder" if path.is_dir() else "a WebDataset shard" if is_shard(path) else f"a {path.suffix} table"
    refuse_split(split, f"dataset {str(path)!r}", kind)


def refuse_split(split: str | None, what: str, kind: str) -> None:
    """Refuse ``dataset.split`` (when set) for ``what`` (the dataset, in a message), a ``kind`` of
    source that has no splits; only Karpathy split files and hub datasets have them."""
    if split is not None:
        raise ValueError(f"{what} is {kind}, which has no splits: dataset.split {split!r} applies to Karpathy split "
                         "files (dataset_coco.json) and hub datasets; leave it unset")


def _metadata_table(folder: Path) -> Path | None:
    """The folder's ImageFolder metadata table, None if it has none; more than one is an error."""
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise ValueError(f"dataset folder {str(folder)!r} has {len(found)} metadata tables "
                         f"({', '.join(m.name for m in found)}); keep one")
    return found[0] if found else None


def _read_table(path: Path, columns: ColumnMap, limit: int | None = None, split: str | None = None) -> list[RawRecord]:
    suffix = path.suffix.lower()
    if suffix in (*_JSONL_SUFFIXES, ".json"):
        try:
            with path.open("rb") as handle:
                head = handle.read(4)
        except OSError as exc:
            raise ValueError(f"dataset table {str(path)!r} cannot be read: {exc}") from exc
        _refuse_another_unicode_encoding(path, head)
    if suffix in _CSV_DELIMITERS:
        return _read_csv(path, _CSV_DELIMITERS[suffix], columns, limit)
    if suffix in _PARQUET_SUFFIXES:
        table = _read_parquet(path, columns, limit)
    elif suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path, columns, limit)
    elif suffix == ".json":
        from tasks.data.json_tables import read_json_table

        table = read_json_table(path, columns, limit, split)
    else:
        raise _unsupported_file(path)
    return records_with_captions(table, str(path), columns.captions, columns=columns)


def _refuse_another_unicode_encoding(path: Path, head: bytes, kind: str = "") -> None:
    """``ValueError`` naming the text table at ``path`` when its first bytes ``head`` (4 are enough)
    are the byte-order mark of UTF-16 (a spreadsheet's 'Unicode text' export, Notepad's "Unicode")
    or UTF-32: named with the mark, where the UTF-8 readers said "invalid start byte" (JSON) or, for a
    UTF-32 CSV, "UTF-16". ``kind``: what to save it as (``CSV``)."""
    found = byte_order_mark(head)
    if found is None:
        return
    encoding, mark = found
    export = "; a spreadsheet's 'Unicode text' export" if encoding == "UTF-16" and kind == "CSV" else ""
    raise ValueError(f"dataset table {str(path)!r} is {encoding} encoded (it starts with the byte-order mark {mark}"
                     f"{export}), not UTF-8: save it as UTF-8{' ' + kind if kind else ''}")


def _unsupported_file(path: Path) -> ValueError:
    """The error for a dataset file of a type no reader takes."""
    return ValueError(
        f"dataset path {str(path)!r}: unsupported file type {path.suffix!r} (expected .parquet, .pq, .csv, "
        ".tsv, .jsonl, .json (COCO captions, a Karpathy split file or an array of rows), WebDataset shards (.tar, .tar.gz, .tgz), a folder of images with .txt captions, or one with a metadata.jsonl/.csv/.parquet table)"
    )


def _check_columns(path: Path, names: list[str], columns: ColumnMap) -> None:
    """``ValueError`` naming the table at ``path`` (its column ``names``) when it lacks the image or
    text column, or names a column it reads (``columns.wanted()``) twice; a column not read may be
    named twice (a spreadsheet's empty header cells right of the data: ``image,text,,``)."""
    missing = [name for name in (columns.image, columns.text) if name not in names]
    if missing:
        hint = "" if (columns.image, columns.text) != REQUIRED_COLUMNS else " (name others with image_column / text_column; --image-column / --text-column on the command line)"
        raise ValueError(
            f"dataset table {str(path)!r} lacks required column(s) {missing}; it has {names}{hint}"
        )
    duplicated = sorted({name for name in names if names.count(name) > 1 and name in columns.wanted()})
    if duplicated:
        raise ValueError(f"dataset table {str(path)!r} has duplicated column(s) {duplicated}")


# ------------------------------------------------------------------------------ Parquet, JSON Lines


def _read_parquet(path: Path, columns: ColumnMap, limit: int | None = None) -> pa.Table:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"dataset table {str(path)!r} is not a readable Parquet file: {exc}") from exc
    _check_columns(path, schema.names, columns)
    try:
        table = read_parquet_head(path, [n for n in columns.wanted() if n in schema.names], limit)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"dataset table {str(path)!r} could not be read: {exc}") from exc
    return columns.canonical(table)


def read_parquet_head(path: Path, columns: list[str], limit: int | None = None) -> pa.Table:
    """``columns`` of a Parquet file, all rows (``limit`` None) or the first ``limit``: reading
    stops at the batch that reaches it. Raises Arrow's or the OS's error."""
    with pq.ParquetFile(path) as parquet:
        if limit is None:
            return parquet.read(columns=columns)
        schema = pa.schema([parquet.schema_arrow.field(c) for c in columns])
        return head_of(parquet.iter_batches(batch_size=max(limit, 1), columns=columns), schema, limit)


def head_of(batches: Iterable[pa.RecordBatch], schema: pa.Schema, limit: int | None) -> pa.Table:
    """The first ``limit`` rows of a stream of record batches (all when None): batches are
    pulled only until they hold that many, so the rest of the file is never read."""
    taken, rows = [], 0
    for batch in batches:
        taken.append(batch)
        rows += batch.num_rows
        if limit is not None and rows >= limit:
            break  # checked before the next pull: the stream is never asked for a batch past the limit
    table = pa.Table.from_batches(taken, schema=schema)
    return table if limit is None else table.slice(0, limit)


#: Deepest nesting of ``[``/``{`` a JSON Lines row may have: pyarrow's reader crashes the process
#: (a segfault, no error) on rows nested some ten thousand levels deep.
MAX_JSON_DEPTH = 512


#: Each byte's change of nesting depth: +1 for ``[`` ``{``, -1 for ``]`` ``}``.
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def check_json_nesting(path: Path, limit: int = MAX_JSON_DEPTH, chunk_bytes: int = 1 << 20) -> int | None:
    """Raise ``ValueError`` naming ``path`` and the line when ``[``/``{`` nest deeper than ``limit``.
    Counts the brackets outside strings across lines, a chunk of the file at a time: a row whose
    brackets each stand on a line of their own is as deep as one on a single line (per-line counts
    had passed it, and pyarrow's reader crashed the process), and brackets in a caption do not
    count (:func:`_unescaped_quotes`; a string ends at its line's end at the latest, as JSON has no
    raw line break in one). The depth never goes below 0: a stray closing bracket hides nothing
    after it. Lines end at LF, CRLF or a lone CR, as the JSON Lines readers and an editor count
    them. A 91 MB table's count peaks at ~15 MB (1 MiB chunks, the positions of its quotes and
    brackets only).

    Returns the first line (1-based) on which a row does not stand alone, None when every row
    does: a second row starts on the line of the one before, or a row goes on past an LF (a CR
    inside a row is JSON whitespace). pyarrow's reader takes both (a row over several lines only
    while the file fits one read block); JSON Lines holds one object per line, and the
    line-by-line reader refuses them (:func:`_read_jsonl`). Told from the brackets alone, which is
    exact for a file of objects that parses."""
    depth, in_string, escaping, lines = 0, False, False, 0  # at the end of the chunk before; its lines
    after_cr, last_close, alone = False, -1, None  # the chunk before ended in a CR; the line a row last closed on
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            b = np.frombuffer(chunk, dtype=np.uint8)
            lf, cr = b == 10, b == 13
            after = np.concatenate(([after_cr], cr[:-1]))  # each byte follows a CR
            feeds = np.flatnonzero(lf)
            crlf = after[feeds]  # an LF after a CR
            ends = np.flatnonzero(cr | (lf & ~after))  # a CRLF's line ends at its CR
            quotes = _unescaped_quotes(b, escaping)
            brackets = np.flatnonzero(_BRACKET_STEP[b])
            line = np.searchsorted(ends, brackets)  # each bracket's line in the chunk
            # quotes before each line (the first: one when the chunk starts inside a string)
            line_quotes = np.concatenate(([-int(in_string)], np.searchsorted(quotes, ends)))
            outside = (np.searchsorted(quotes, brackets) - line_quotes[line]) % 2 == 0
            brackets, line = brackets[outside], line[outside]
            if brackets.size:  # the depth after each bracket: its running sum reflected at 0
                total = np.cumsum(_BRACKET_STEP[b[brackets]], dtype=np.int32) + depth
                total -= np.minimum(np.minimum.accumulate(total), 0)
                if int(total.max()) > limit:
                    at = int(np.argmax(total > limit))
                    raise ValueError(f"dataset table {str(path)!r}: line {lines + int(line[at]) + 1} nests JSON "
                                     f"arrays/objects more than {limit} levels deep; not a table of image-caption rows")
                if alone is None:  # the chunk's first line of either kind
                    shared, last_close = _row_not_alone(total, depth, line + lines, last_close)
                    before = np.searchsorted(brackets, feeds)
                    open_at = np.where(before > 0, total[np.maximum(before - 1, 0)], depth) > 0
                    if open_at.any():  # a row open at an LF goes on past it
                        first = int(np.argmax(open_at))  # its line: a CRLF's is the one its CR ends
                        shared = min(shared or lines + ends.size + 1,
                                     lines + int(np.searchsorted(ends, feeds[first])) + 1 - int(crlf[first]))
                    alone = shared
                depth = int(total[-1])
            elif alone is None and depth > 0 and feeds.size:
                alone = lines + int(np.searchsorted(ends, feeds[0])) + 1 - int(crlf[0])
            in_string = bool((quotes.size - line_quotes[-1]) % 2)
            escaping = _ends_escaping(b, escaping)
            after_cr = bool(b[-1] == 13)
            lines += ends.size
    return alone


def _row_not_alone(total: np.ndarray, depth: int, line: np.ndarray, last_close: int) -> tuple[int | None, int]:
    """The 1-based line on which a row starts where the row before it closed, if any, and the line
    the last row closed on (``-1``: none yet). ``total``: the depth after each bracket of a chunk
    (outside strings), ``depth`` the depth before the first, ``line`` each bracket's 0-based line in
    the file, ``last_close`` the line a row closed on in the chunks before."""
    before = np.concatenate(([depth], total[:-1]))
    opens = np.flatnonzero((before == 0) & (total == 1))
    closes = np.flatnonzero((before == 1) & (total == 0))
    previous = np.searchsorted(closes, opens) - 1  # the close before each open, in the chunk
    closed_on = np.where(previous >= 0, line[closes[np.maximum(previous, 0)]] if closes.size else -1, last_close)
    shared = closed_on == line[opens]
    if shared.any():
        return int(line[opens[int(np.argmax(shared))]]) + 1, last_close
    return None, int(line[closes[-1]]) if closes.size else last_close


def _unescaped_quotes(b: np.ndarray, escaping: bool) -> np.ndarray:
    """The positions of the quotes in ``b`` (a chunk, ``uint8``) that no odd run of backslashes
    precedes (``escaping``: the chunk before ended in one)."""
    quotes, slashes = np.flatnonzero(b == 34), np.flatnonzero(b == 92)
    if not slashes.size:
        return quotes[~((quotes == 0) & escaping)]
    first = np.maximum.accumulate(np.where(np.diff(slashes, prepend=-2) != 1, np.arange(slashes.size), 0))  # each run's start
    last = np.searchsorted(slashes, quotes) - 1  # the last backslash before each quote
    after = (last >= 0) & (slashes[last] == quotes - 1)  # just before it
    run = np.where(after, last - first[last] + 1, 0)
    carried = escaping & ((quotes == 0) | (after & (slashes[first[last]] == 0)))  # a run from the chunk's start
    return quotes[(run + carried) % 2 == 0]


def _ends_escaping(b: np.ndarray, escaping: bool) -> bool:
    """Whether chunk ``b`` ends in an odd run of backslashes (``escaping``: as the one before did)."""
    if b[-1] != 92:
        return False
    others = np.flatnonzero(b != 92)
    run = b.size - 1 - int(others[-1]) if others.size else b.size + int(escaping)
    return bool(run % 2)


def _read_jsonl(path: Path, columns: ColumnMap, limit: int | None = None) -> list[RawRecord]:
    """The records of a JSON Lines table: parsed by pyarrow, or, where pyarrow refuses the file
    (a lone UTF-16 surrogate escape in one row, a key that is not read changing type, a syntax
    error) or reads a key's strings as times (:func:`_holds_time`), line by line by
    :mod:`tasks.data.json_lines`, which rejects such a row alone, ignores keys not read, reads
    strings as text and names the line of what makes the file unreadable. So is a file whose rows
    do not stand one per line (:func:`check_json_nesting`), which pyarrow takes and the line-by-line
    reader refuses, naming the line: whichever reader would have read it, one answer."""
    crowded = check_json_nesting(path)
    if crowded is not None:
        from tasks.data.json_lines import read_json_lines

        try:
            return read_json_lines(path, columns, limit)
        except ValueError as error:
            raise ValueError(f"{error} (line {crowded} holds a row that does not stand alone on its line: two objects "
                             "on one line, or one broken over lines as pretty-printed JSON is; JSON Lines holds one "
                             "object per line)") from error
    try:
        if limit is None:
            table = pj.read_json(path)
        else:  # stream blocks until the first limit rows are in
            with pj.open_json(path) as reader:
                table = head_of(reader, reader.schema, limit)
    except pa.ArrowInvalid:
        table = None
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"dataset table {str(path)!r} is not readable JSON Lines (one object per line): {exc}") from exc
    if (table is None or any(_holds_time(table.schema.field(n).type) for n in columns.wanted() if n in table.column_names)
            or _ids_as_floats(table, columns)):
        from tasks.data.json_lines import read_json_lines

        return read_json_lines(path, columns, limit)
    _check_columns(path, table.column_names, columns)
    table = columns.canonical(table.select([n for n in columns.wanted() if n in table.column_names]))
    return records_with_captions(table, str(path), columns.captions, columns=columns)


def _ids_as_floats(table: pa.Table, columns: ColumnMap) -> bool:
    """Whether pyarrow's JSON reader typed an id column (``sample_id``, ``image_id``) as floating
    point: what it makes of an integer beyond 64 bits (``18446744073709551615``), refused as "has
    type double" naming neither the line nor the value; the line-by-line reader names both (and
    refuses a column of fractions as before)."""
    return any(pa.types.is_floating(table.schema.field(name).type) for name in OPTIONAL_COLUMNS
               if name in table.column_names and name not in (columns.image, columns.text))


def _holds_time(kind: pa.DataType) -> bool:
    """Whether ``kind`` is, or nests, a time: what pyarrow's JSON reader makes of a key whose strings
    all read as ISO 8601 times (JSON has none), which refused the file (``sample_id`` ``2024-01-01``:
    "has type timestamp[s]") where the same strings beside one line pyarrow refuses were read as text."""
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _holds_time(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_holds_time(kind.field(i).type) for i in range(kind.num_fields))
    return False


def _row_label(row: int) -> str:
    """How a record's origin names its 0-based table row: ``row 3``."""
    return f"row {row}"


def records_with_captions(table: pa.Table, where: str, captions: Captions = "first", *,
                          columns: ColumnMap | None = None, ids_refused: Collection[int] = (),
                          label: Callable[[int], str] = _row_label) -> list[RawRecord]:
    """``records_from_table`` of a table whose ``text`` column may hold a list of captions per
    row: one caption per record (``captions``: the first, or all; see the module docstring), a
    record of an expanded row naming its table row and caption. ``columns``: the source's column
    names, for messages (default: the canonical ``image`` and ``text``); ``label``: how a record's
    origin names its table row (``row 3``; a JSON Lines table read line by line adds the line).

    A column that holds no value at all (Arrow's null type: every row null, as pandas writes a
    column of ``None``) is judged as its values: an ``image_id`` column is then not given (null
    means "not given"); an ``image``, ``text`` or ``sample_id`` column is refused, naming it. So is
    a ``sample_id`` column whose every value is null or empty (``""``, as a spreadsheet's unfilled
    column is written), the rows in ``ids_refused`` (0-based table rows whose id the reader
    already refused and took out) not counted; a few empty ids among given ones are rejected row
    by row (``sample_id_empty``).

    Raises:
        ValueError: naming ``where`` and the column, for a column of a type this layout does not
            accept (checked before the captions are expanded, which would cast an id column), or
            a used column that is null in every row, or a ``sample_id`` column empty in every row.
    """
    table = _null_columns_judged(plain_encodings(table), where, columns or ColumnMap())
    _check_column_types(table, where)
    _refuse_ids_empty_in_every_row(table, where, ids_refused)
    table, origins = one_caption_per_row(table, captions)
    if origins is None:
        return records_from_table(table, where, label)
    records = records_from_table(table, where)
    # name the table's row and caption, not the expanded position
    return [replace(r, row=row, origin=f"{label(row)}, caption {j}") for r, (row, j) in zip(records, origins)]


def plain_encodings(table: pa.Table) -> pa.Table:
    """``table`` with its columns' storage encodings undone, the values unchanged: a dictionary-
    encoded column as its values (``dictionary<values=string>`` → ``string``), a ``string_view`` /
    ``binary_view`` column as ``large_string`` / ``large_binary``, also inside lists and structs (a
    list of dictionary-encoded captions, a ``struct<bytes, path>`` image). What a column holds,
    and so the dataset version, does not depend on how its writer chose to encode it."""
    for index, field in enumerate(table.schema):
        plain = _plain_type(field.type)
        if plain != field.type:
            table = table.set_column(index, field.name, table.column(index).cast(plain))
    return table


def _plain_type(kind: pa.DataType) -> pa.DataType:
    """The type that holds ``kind``'s values without its encoding (see :func:`plain_encodings`)."""
    if pa.types.is_dictionary(kind):
        return _plain_type(kind.value_type)
    if pa.types.is_string_view(kind):
        return pa.large_string()
    if pa.types.is_binary_view(kind):
        return pa.large_binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        item = kind.value_field.with_type(_plain_type(kind.value_type))
        if pa.types.is_fixed_size_list(kind):
            return pa.list_(item, kind.list_size)
        return pa.large_list(item) if pa.types.is_large_list(kind) else pa.list_(item)
    if pa.types.is_struct(kind):
        return pa.struct([kind.field(i).with_type(_plain_type(kind.field(i).type)) for i in range(kind.num_fields)])
    return kind


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_text_or_binary(kind: pa.DataType) -> bool:
    return _is_text(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _null_columns_judged(table: pa.Table, where: str, columns: ColumnMap) -> pa.Table:
    """``table`` without an ``image_id`` column of Arrow's null type (no row gives one), and with a
    ``text`` column of lists of null type (every list empty or null) as lists of strings (each row
    then ``text_empty``); ``ValueError`` naming the column (by its source name from ``columns``)
    when ``image``, ``text`` or ``sample_id`` is of null type: no row could be used."""
    for name in table.column_names:
        kind = table.schema.field(name).type
        if name == "image_id" and pa.types.is_null(kind):
            table = table.drop_columns([name])
        elif name == "text" and (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_null(kind.value_type):
            strings = pa.large_list(pa.string()) if pa.types.is_large_list(kind) else pa.list_(pa.string())
            table = table.set_column(table.column_names.index(name), name, table.column(name).cast(strings))
        elif name in ("image", "text", "sample_id") and pa.types.is_null(kind):
            shown = {"image": columns.image, "text": columns.text}.get(name, name)
            role = {"image": "image", "text": "caption"}.get(name, "id")
            hint = (" (leave the column out to have ids derived from each image and caption)" if name == "sample_id" else "")
            raise ValueError(f"dataset table {where!r}: {role} column {shown!r} holds no value: it is null in all "
                             f"{table.num_rows} row(s){hint}")
    return table


def _refuse_ids_empty_in_every_row(table: pa.Table, where: str, ids_refused: Collection[int] = ()) -> None:
    """``ValueError`` naming ``where`` and the ``sample_id`` column when it gives no id in any row
    (each null or ``""``; the rows in ``ids_refused`` not counted): the column of nulls that
    :func:`_null_columns_judged` refuses, written as empty strings or typed as text, rather than
    one ``sample_id_empty`` per row and then "0 valid row(s)". None when a row gives an id."""
    if "sample_id" not in table.column_names or table.num_rows == 0:
        return
    ids = table.column("sample_id")
    given = pc.fill_null(pc.greater(pc.binary_length(ids), 0), False) if _is_text_or_binary(ids.type) else pc.is_valid(ids)
    counted = np.ones(table.num_rows, dtype=bool)
    counted[[row for row in ids_refused if 0 <= row < table.num_rows]] = False
    if not counted.any() or (given.to_numpy(zero_copy_only=False) & counted).any():
        return
    nulls = int((ids.is_null().to_numpy(zero_copy_only=False) & counted).sum())
    kind = "null" if nulls == counted.sum() else "empty" if nulls == 0 else "null or empty"
    raise ValueError(f"dataset table {where!r}: id column 'sample_id' holds no value: it is {kind} in all "
                     f"{int(counted.sum())} row(s) (leave the column out to have ids derived from each image and caption)")


def _check_column_types(table: pa.Table, where: str) -> None:
    """Refuse (``ValueError`` naming ``where``) a ``text`` column that is neither text nor a list
    of texts, and a ``sample_id`` / ``image_id`` column that is not text, binary or integers, the
    same for either caption policy: expanding ``captions: all`` cast ids to text first (a struct
    id was a raw ``ArrowNotImplementedError``; ``true`` and ``1.5`` became the ids ``true-0`` and
    ``1.5-0``, which ``first`` refuses)."""
    kind = table.schema.field("text").type
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if listed and not _is_text_or_binary(kind.value_type):
        raise ValueError(f"dataset table {where!r}: column 'text' has type {kind}, expected string or binary, or a "
                         "list of them (one or more captions per image)")
    for name in OPTIONAL_COLUMNS:
        if name in table.column_names:
            kind = table.schema.field(name).type
            if not (_is_text_or_binary(kind) or pa.types.is_integer(kind)):
                raise ValueError(f"dataset table {where!r}: column {name!r} has type {kind}, expected string, binary "
                                 "or integer")


def one_caption_per_row(table: pa.Table, captions: Captions) -> tuple[pa.Table, list[tuple[int, int]] | None]:
    """A list-valued ``text`` column as one caption per row (the first, or all of them), and for
    ``all`` each new row's (table row, caption index); None when ``text`` holds single captions.
    A row without captions stays, with no caption, so that it is reported rather than dropped.
    Expanded rows get ``sample_id`` ``ID-j`` and ``image_id`` ``ID`` when the table gives ids."""
    kind = table.schema.field("text").type
    if pa.types.is_fixed_size_list(kind):  # datasets' Sequence(Value("string"), length=N)
        kind = pa.list_(kind.value_type)
        table = table.set_column(table.column_names.index("text"), "text", table.column("text").cast(kind))
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return table, None
    column = table.column_names.index("text")
    texts = table.column("text").to_pylist()
    if captions == "first":
        return table.set_column(column, "text", pa.array([v[0] if v else None for v in texts], kind.value_type)), None
    origins = [(row, j) for row, values in enumerate(texts) for j in range(max(len(values or ()), 1))]
    flat = [(texts[row] or [None])[j] for row, j in origins]
    expanded = table.take(pa.array([row for row, _ in origins], pa.int64())).set_column(column, "text", pa.array(flat, kind.value_type))
    if "sample_id" in expanded.column_names:
        ids = expanded.column("sample_id")
        # binary ids stay bytes (an id that is not UTF-8 is then rejected as unsafe, row by row,
        # as with captions "first"); others are joined as text
        kind = pa.large_binary() if pa.types.is_binary(ids.type) or pa.types.is_large_binary(ids.type) else pa.string()
        ids = pc.cast(ids, kind)
        # an empty id stays one ("" would join as the id "-0", taken for given): sample_id_empty
        ids = pc.if_else(pc.equal(pc.binary_length(ids), 0), pa.scalar(None, kind), ids)
        if "image_id" not in expanded.column_names:
            expanded = expanded.append_column("image_id", ids)
        suffixes = pa.array([str(j).encode() for _, j in origins], kind)
        expanded = expanded.set_column(expanded.column_names.index("sample_id"), "sample_id",
                                       pc.binary_join_element_wise(ids, suffixes, pa.scalar(b"-", kind)))
    return expanded, origins


def records_from_table(table: pa.Table, where: str, label: Callable[[int], str] = _row_label) -> list[RawRecord]:
    """One record per row of an Arrow table with the Parquet layout's columns (``image``, ``text``,
    optional ``sample_id``, ``image_id``; types as above). ``where`` names the table in messages;
    ``label`` names a row in its record's origin (``row 3``).

    Dictionary-encoded and view-typed columns are read as their values (:func:`plain_encodings`).

    Raises:
        ValueError: a column of a type this layout does not accept.
    """
    table = plain_encodings(table)
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
        RawRecord(row=i, origin=label(i), sample_id=sid, image=img, text=txt, image_id=iid)
        for i, (sid, img, txt, iid) in enumerate(zip(sample_ids, images, texts, image_ids))
    ]


def _as_bytes(
    where: str, name: str, column: pa.ChunkedArray, allow_integers: bool = True
) -> list[bytes | None]:
    """A string/binary (or integer) column as raw bytes, nulls as ``None``."""
    kind = column.type
    if allow_integers and pa.types.is_integer(kind):
        column = pc.cast(column, pa.string())
    elif not _is_text_or_binary(kind):
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
    if _is_text(kind):
        return [_decode_path(v) for v in pc.cast(column, pa.large_binary()).to_pylist()]
    if pa.types.is_struct(kind) and {"bytes", "path"} <= {kind.field(i).name for i in range(kind.num_fields)}:
        data, path = kind.field("bytes").type, kind.field("path").type
        # a field that is all null may have Arrow's null type (JSON rows giving only a path)
        if not (pa.types.is_binary(data) or pa.types.is_large_binary(data) or pa.types.is_fixed_size_binary(data)
                or pa.types.is_null(data)) or not (_is_text(path) or pa.types.is_null(path)):
            raise ValueError(
                f"dataset table {where!r}: column 'image' has type {kind}, expected struct<bytes: binary, path: string> "
                "(the Hugging Face image layout: the encoded image, else a path relative to the table)"
            )
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


def _read_csv(path: Path, delimiter: str, columns: ColumnMap, limit: int | None = None) -> list[RawRecord]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"dataset table {str(path)!r} cannot be read: {exc}") from exc
    _refuse_another_unicode_encoding(path, raw[:4], "CSV")
    # surrogateescape keeps bytes that are not UTF-8 so they can be reported row by row.
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    # Process-wide setting; only ever raised, so concurrent readers see a limit at least this big.
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    # strict: a quote left open (or text after a closing quote) is an error, not a field that
    # silently swallows the rows after it
    handle = io.StringIO(text, newline="")
    delimiter, skipped = _csv_separator(handle, delimiter)  # skipped: a sep= line, before the header
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        after = f" after its separator line (line 1: sep={delimiter.replace(chr(9), '<tab>')})" if skipped else ""
        raise ValueError(f"dataset table {str(path)!r} is empty (no header row{after})") from None
    except csv.Error as exc:
        raise ValueError(f"dataset table {str(path)!r} is not valid CSV at its header (line {skipped + 1}): {exc}") from exc
    names = [name.strip() for name in header]
    _check_columns(path, names, columns)
    canonical = {columns.image: "image", columns.text: "text"}
    position = {canonical.get(name, name): names.index(name) for name in columns.wanted() if name in names}

    records: list[RawRecord] = []
    row = 0
    start = skipped + reader.line_num + 1  # first physical line of the next record (a quoted field may span lines)
    try:
        for fields in reader:
            line, start = start, skipped + reader.line_num + 1
            if not fields:  # a blank line is not a row
                continue
            if limit is not None and row >= limit:
                break
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
        if "unexpected end of data" in str(exc):
            raise ValueError(f"dataset table {str(path)!r} is not valid CSV: the quoted field of the record starting on line "
                             f"{start} is never closed (a stray '\"'? a quote inside a quoted field is written '\"\"')") from exc
        raise ValueError(
            f"dataset table {str(path)!r} is not valid CSV near line {skipped + reader.line_num}: {exc} (a quote inside a quoted "
            "field is written '\"\"')"
        ) from exc
    _refuse_an_empty_id_column(path, records)
    return records


#: Excel's first line declaring a CSV's separator (``sep=;``, ``sep=,``, ``sep=<tab>``): one
#: character, not a quote; the line is not the header.
_DECLARED_SEPARATOR = re.compile(r'sep=([^"\r\n])(?:\r\n|\n|\r)?')
#: Longest header line the quoted-header rule of :func:`_csv_delimiter` reads (characters).
_HEADER_LINE_LIMIT = 1 << 16
#: A CSV field as a writer makes it, at semicolons: quoted whole (``""`` for a quote inside), or
#: without quotes and semicolons; a header line of two or more such fields.
_QUOTED_FIELD = r'"(?:[^"]|"")*"'
_SEMICOLON_HEADER = re.compile(rf'(?:{_QUOTED_FIELD}|[^";\r\n]*)(?:;(?:{_QUOTED_FIELD}|[^";\r\n]*))+')


def _csv_separator(handle: io.TextIOBase, delimiter: str) -> tuple[str, int]:
    """How to read the CSV/TSV text of ``handle`` (at its start, a UTF-8 BOM already taken off):
    its separator and the number of lines before its header. A first line ``sep=X`` (Excel's)
    declares the separator ``X``, whatever the suffix, and is skipped: ``(X, 1)``, ``handle``
    left after it. Otherwise ``(_csv_delimiter(...), 0)`` (``delimiter``: the suffix's), ``handle``
    back at its start."""
    first = handle.readline(_HEADER_LINE_LIMIT)
    declared = _DECLARED_SEPARATOR.fullmatch(first)
    if declared is not None:
        return declared.group(1), 1
    handle.seek(0)
    found = _csv_delimiter(handle, delimiter, first)
    handle.seek(0)
    return found, 0


def _csv_delimiter(text: io.TextIOBase, delimiter: str, first_line: str = "") -> str:
    """``delimiter``, or ``;`` for a comma-separated table (``delimiter`` ``,``) whose header row
    (the first record of ``text``, read from its start; ``first_line``: its first physical line,
    with its line end) is a spreadsheet's semicolon CSV (locales that write decimal commas):
    it has no comma and splits at semicolons; or its every comma lies inside a quoted field of
    two or more well-formed fields at semicolons (:func:`_semicolons_quote_its_commas`:
    ``image;"caption, en"``, which read at commas leaves quotes inside unquoted fields). A header
    with a comma outside quotes stays comma-separated (a column named ``a;b`` and others); so does
    one that is not CSV (its reader says why)."""
    if delimiter != ",":
        return delimiter
    try:
        header = next(csv.reader(text, delimiter=","), [])
        # (a quoted name holding a line break is no semicolon header: csv refuses it as one line)
        if len(header) == 1 and len(next(csv.reader([header[0]], delimiter=";"), [])) > 1:
            return ";"
    except csv.Error:  # a quote opened at its start and never closed, past the field limit
        return delimiter
    return ";" if _semicolons_quote_its_commas(first_line) else delimiter


def _semicolons_quote_its_commas(line: str) -> bool:
    """Whether a header ``line`` (one physical line, with or without its line end) is two or more
    fields at semicolons, each quoted whole or free of quotes (as a CSV writer makes them), with
    every comma inside a quoted one: read at commas, such a header splits quoted names and leaves
    quotes inside unquoted fields, which no writer makes. False for a line cut at
    ``_HEADER_LINE_LIMIT`` or a quoted name that goes on to the next line."""
    if len(line) >= _HEADER_LINE_LIMIT and not line.endswith(("\n", "\r")):
        return False
    line = line.removesuffix("\n").removesuffix("\r")
    if "," not in line or _SEMICOLON_HEADER.fullmatch(line) is None:
        return False
    return "," not in re.sub(_QUOTED_FIELD, "", line)


def _refuse_an_empty_id_column(path: Path, records: list[RawRecord]) -> None:
    """ValueError naming the ``sample_id`` column of the CSV table at ``path`` when it is empty in
    every row read (``records``, less the malformed ones): CSV cannot tell null from empty, so
    this is the column of nulls that the other layouts refuse as a whole
    (:func:`_null_columns_judged`), not one ``sample_id_empty`` per row."""
    read = [record for record in records if record.problem is None]
    if read and all(record.sample_id == "" for record in read):
        raise ValueError(f"dataset table {str(path)!r}: id column 'sample_id' holds no value: it is empty in all "
                         f"{len(read)} row(s) (leave the column out to have ids derived from each image and caption)")


def _clean_id(value: str | None) -> str | None:
    """An id field with undecodable bytes shown as backslash escapes (so it is reported as unsafe)."""
    if value is None:
        return None
    return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


# ----------------------------------------------------------------------------------------- folder


def _read_image_folder(root: Path, metadata: Path, columns: ColumnMap, limit: int | None = None) -> list[RawRecord]:
    """Records of a folder whose metadata table pairs its images with captions, then (unless
    ``limit`` cuts the table) one ``text_missing`` record per image file under ``root`` that the
    table does not name."""
    records = _read_table(metadata, effective_columns(metadata, columns), limit)
    if limit is not None:
        return records
    named = {_normalised(root, r.image) for r in records if isinstance(r.image, str)}
    return records + _unread_images(root, lambda relative: relative in named,
                                    f"is not named in {metadata.name}")


def _unread_images(root: Path, read: Callable[[str], bool], why: str) -> list[RawRecord]:
    """One ``text_missing`` record per image file under ``root`` (none in a hidden file or folder)
    whose POSIX path relative to ``root`` the layout did not ``read``: ``image PATH {why}``."""
    records = []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        relative = image.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or read(relative.as_posix()):
            continue
        records.append(_refused(relative.as_posix(), None, "text_missing", f"image {relative.as_posix()} {why}"))
    return records


def effective_columns(path: Path, columns: ColumnMap | None = None) -> ColumnMap:
    """The columns read from the dataset at ``path``: ``columns`` (default ``ColumnMap()``), with
    a metadata table's image column ``file_name`` when none is named and it has no ``image``."""
    columns = columns or ColumnMap()
    if path.is_dir():
        path = _metadata_table(path) or path
    if columns.image == "image" and path.name in METADATA_FILES:
        names = _column_names(path)
        if "image" not in names and METADATA_IMAGE_COLUMN in names:
            return replace(columns, image=METADATA_IMAGE_COLUMN)
    return columns


def _column_names(path: Path) -> list[str]:
    """The column names of a table (its header, schema or first objects), [] if unreadable."""
    try:
        if path.suffix.lower() in _PARQUET_SUFFIXES:
            return list(pq.read_schema(path).names)
        if path.suffix.lower() in _JSONL_SUFFIXES:
            check_json_nesting(path)
            try:
                with pj.open_json(path) as reader:  # the first block's fields, not the whole file
                    return list(reader.schema.names)
            except pa.ArrowInvalid:  # one line pyarrow refuses (a lone surrogate): the keys of every line
                from tasks.data.json_lines import json_lines_keys

                return json_lines_keys(path)
        # utf-8-sig: a BOM is no part of the first name, nor before its quote ('\ufeff"image"' read as '"image"')
        with path.open("rb") as raw:
            _refuse_another_unicode_encoding(path, raw.read(4), "CSV")  # the words of the table's reader
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
            delimiter, _ = _csv_separator(handle, _CSV_DELIMITERS[path.suffix.lower()])
            return [name.strip() for name in next(csv.reader(handle, delimiter=delimiter), [])]
    except (pa.ArrowException, OSError, csv.Error):
        return []  # the table's reader reports it


def _normalised(root: Path, image: str) -> str:
    """An image path of a table as a POSIX path relative to ``root`` (``./a/../b.png`` → ``b.png``;
    an absolute path inside ``root``, ``/data/ds/a/b.png`` of the folder ``/data/ds``, → ``a/b.png``,
    whether ``root`` is named through a symbolic link or not). Lexical: links inside are not followed.
    An absolute path outside ``root`` stays absolute (it names no image of the folder)."""
    if image.startswith("/"):
        absolute = _absolute_name(image)
        for base in _folder_names(root):
            if absolute == base or absolute.startswith(base.rstrip("/") + "/"):
                return absolute[len(base.rstrip("/")) + 1:]
        return absolute
    parts: list[str] = []
    for part in Path(image.replace("\\", "/")).parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", "/"):
            parts.append(part)
    return "/".join(parts)


def _absolute_name(path: str) -> str:
    """An absolute POSIX path with ``.``, ``..`` and repeated slashes taken out (lexically)."""
    return "/" + os.path.normpath(path).lstrip("/")


def _folder_names(root: Path) -> list[str]:
    """The absolute names of the folder ``root``: as given (made absolute) and with its symbolic
    links resolved (a table written on the machine may use either)."""
    names = [_absolute_name(str(root.absolute()))]
    try:
        names.append(str(root.resolve()))
    except (OSError, RuntimeError):
        pass  # the folder was read a moment ago; its plain name is enough
    return list(dict.fromkeys(names))


def _has_folder_pairs(root: Path) -> bool:
    """Whether ``root`` holds image files at its top level (a stray ``urls.txt`` beside WebDataset
    shards does not make it an image folder)."""
    return any(entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_SUFFIXES
               for entry in root.iterdir())


def _read_folder(root: Path, limit: int | None = None, policy: Captions = "first") -> list[RawRecord]:
    """Records of a folder of images with same-named ``.txt`` captions (``policy``: the first
    caption of each file, or all), read at its top level; then (unless ``limit`` cuts the read)
    one ``text_missing`` record per image file in a subfolder, which this layout does not read."""
    images: dict[str, list[str]] = {}
    captions: dict[str, list[str]] = {}  # cat.txt and cat.TXT: one stem, two files
    unread: dict[str, list[str]] = {}  # photo.heic: an image file of a suffix not read
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        suffix = entry.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.setdefault(entry.stem, []).append(entry.name)
        elif suffix == ".txt":
            captions.setdefault(entry.stem, []).append(entry.name)
        elif suffix in UNREAD_IMAGE_SUFFIXES:
            unread.setdefault(entry.stem, []).append(entry.name)
    if not images and not captions:
        raise _no_pairs_in(root)

    records: list[RawRecord] = []
    for stem in sorted(images.keys() | captions.keys())[:limit]:
        names = images.get(stem, [])
        caption_names = captions.get(stem, [])
        caption_name = caption_names[0] if caption_names else None
        name_id = folder_id(stem)
        for group in (names, caption_names):
            for extra in group[1:]:
                detail = f"{extra} has the same name as {group[0]}"
                records.append(_refused(extra, name_id, "sample_id_duplicate", detail))
        if not names:
            others = unread.get(stem, [])
            detail = f"caption file {caption_name} has no image file named {stem}.*" + (
                f" ({', '.join(others[:3])}: a suffix not read as an image; convert it to one of "
                f"{', '.join(sorted(IMAGE_SUFFIXES))})" if others else "")
            records.append(_refused(f"{caption_name}", name_id, "image_missing", detail))
        elif caption_name is None:
            detail = f"image {names[0]} has no caption file {stem}.txt"
            records.append(_refused(names[0], name_id, "text_missing", detail))
        else:
            records.extend(_folder_records(root, name_id, names[0], caption_name, policy))
    if limit is None:  # the images in subfolders, which this layout does not read: said, not dropped silently
        records.extend(_unread_images(root, lambda relative: "/" not in relative,
                                      "is in a subfolder: a folder of images with .txt captions is read at its top level "
                                      "only (a metadata.jsonl/.csv/.parquet table in the folder can name images in subfolders)"))
    return records


def _no_pairs_in(root: Path) -> ValueError:
    """The error for a dataset folder without images or .txt captions at its top level, without
    WebDataset shards and without a metadata table, with a hint at what it seems to hold."""
    tables = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in (*_PARQUET_SUFFIXES, *_CSV_DELIMITERS, *_JSONL_SUFFIXES))
    hint = f"; to read a table in it, give the table's path (e.g. {str(root / tables[0])!r})" if tables else ""
    splits = sorted(p.name for p in root.iterdir() if p.is_dir() and _metadata_table(p) is not None)
    if splits and not tables:  # an ImageFolder with one subfolder per split (train/metadata.jsonl)
        hint = f"; its subfolder(s) {', '.join(splits[:6])} hold a metadata table: give one as the dataset (e.g. {str(root / splits[0])!r})"
    elif not tables and ((root / "state.json").is_file() or (root / "dataset_dict.json").is_file()
                         or any(root.rglob("*.parquet")) or any(root.rglob("*.arrow"))):
        hint = ("; it looks like a Hugging Face dataset folder (data files in subfolders, or save_to_disk): read it "
                "with dataset kind 'huggingface' and this path in a config file (dataset: {kind: huggingface, path: ...})")
    return ValueError(
        f"dataset folder {str(root)!r} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) "
        f"or .txt caption files at its top level, no WebDataset shards (.tar, .tar.gz) and no {' / '.join(METADATA_FILES)}{hint}"
    )


def folder_id(stem: str) -> str:
    """The id of a folder's ``NAME.*`` files: ``NAME`` when it is a safe id (``[A-Za-z0-9._-]``,
    at most 128 characters), else its safe characters (others as ``_``) and 8 hex digits of its
    SHA-256, so that ``Screenshot 2024-05-01 at 10.00.png`` is the sample
    ``Screenshot_2024-05-01_at_10.00-1a2b3c4d`` and two names never share an id."""
    if id_problem(stem) is None:
        return stem
    digest = hashlib.sha256(stem.encode("utf-8", errors="surrogateescape")).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_")[: MAX_ID_LENGTH - 24] or "file"
    return f"{safe}-{digest}"


#: Largest caption file of an image folder read, in bytes (a caption of at most 65,536 characters
#: takes at most 256 KiB; ``captions: all`` reads one per line): a larger one is refused unread.
MAX_CAPTION_FILE_BYTES = 64 * 1024 * 1024


def _folder_records(root: Path, stem: str, image_name: str, caption_name: str, policy: Captions = "first") -> list[RawRecord]:
    """The record(s) of one image and its caption file: its first non-empty line, or one per
    non-empty line (``policy="all"``)."""
    origin = f"{image_name} + {caption_name}"
    try:
        inside = (root / caption_name).resolve().is_relative_to(root.resolve())
    except (RuntimeError, OSError) as exc:  # RuntimeError: a symbolic-link loop (ELOOP from Python 3.13)
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise  # an I/O error of the file system, not of the file: the load fails (and may be retried)
        detail = f"caption file {caption_name} is a symbolic-link loop: it leads to no file"
        return [_refused(origin, stem, "text_missing", detail)]
    if not inside:
        detail = f"caption file {caption_name} links outside the dataset folder"
        return [_refused(origin, stem, "text_path_unsafe", detail)]
    try:
        regular = (root / caption_name).is_file()  # a FIFO named cat.txt: reading it waited forever
        size = (root / caption_name).stat().st_size if regular else 0
    except OSError as exc:
        return [_refused(origin, stem, "text_missing", f"cannot read {caption_name}: {exc}")]
    if not regular:
        return [_refused(origin, stem, "text_missing", f"caption file {caption_name} is not a regular file")]
    if size > MAX_CAPTION_FILE_BYTES:
        return [_refused(origin, stem, "text_too_long", f"caption file {caption_name} is {size:,} bytes, more than the "
                         f"{MAX_CAPTION_FILE_BYTES:,} read")]
    try:
        raw = (root / caption_name).read_bytes()
        content = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        detail = f"{caption_name} {not_utf8_problem(raw, exc)}"
        return [_refused(origin, stem, "text_not_utf8", detail)]
    except OSError as exc:
        return [_refused(origin, stem, "text_missing", f"cannot read {caption_name}: {exc}")]
    # lines end at LF, CRLF or CR only: str.splitlines would also cut a caption at U+2028, U+0085,
    # form feed or group separator, which the caption rules judge as in a table
    lines = [line.strip() for line in re.split(r"\r\n|\n|\r", content) if line.strip()]
    if policy == "first":
        lines = lines[:1]
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
