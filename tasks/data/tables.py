"""Loading a user's paired dataset into the contract table, reporting every row it refuses.

:func:`load_paired_dataset` reads a Parquet/CSV/JSON Lines table, a JSON document (COCO captions, a
Karpathy split file or an array of rows), a folder of images with ``.txt`` captions or a folder with a metadata table
(layouts: :mod:`tasks.data.sources`), checks each record, and returns the valid rows as a
:data:`~tasks.data.schema.DATASET_SCHEMA` table together with one rejection record per refused row. Nothing is dropped without a record.

Checks, in this order; a record gets the first reason that applies (so a row with both a bad
caption and a bad image is reported once, for the caption; the image is then not decoded):

==========================  ==================================================================
``row_malformed``           a CSV line whose field count differs from the header's
``sample_id_empty``         a ``sample_id`` column value that is null or empty (a column with
                            no id in any row refuses the table, naming it)
``sample_id_unsafe``        characters outside ``[A-Za-z0-9._-]`` or longer than 128
``image_id_unsafe``         a given ``image_id`` with such characters (null/empty = not given)
``text_missing``            (folder) an image without its ``.txt`` caption file (or with one
                            that is a symbolic-link loop), or one the folder's metadata table
                            does not name
``text_path_unsafe``        (folder) a caption file that links outside the folder
``text_not_utf8``           the caption bytes are not valid UTF-8 (UTF-16 or UTF-32 named by its
                            byte-order mark), or the caption holds a lone
                            UTF-16 surrogate (JSON's ``"\\ud83d"``: half of an emoji cut off)
``text_empty``              null, empty or whitespace-only caption (after stripping), or one made
                            only of invisible format characters (zero-width space, BOM, joiners)
``text_too_long``           more than ``MAX_CAPTION_CHARS`` (65,536) characters after stripping
``text_control_chars``      a NUL or other control character (tab, LF and CR are allowed)
``image_missing``           null image, empty path, no such file, a folder caption w/o image, a
                            path that names no file (a NUL, a name over 255 bytes, a link loop)
``image_ambiguous``         (WebDataset) a sample with several image members (``KEY.jpg`` and
                            ``KEY.png``) and no image column naming one suffix
``image_path_unsafe``       an image path that resolves outside the folder of the table (or
                            ``image_root``): ``../``, symbolic links (not a hub snapshot's,
                            into its cache's ``blobs/``), absolute paths elsewhere
``image_empty``             a 0-byte image
``image_too_large``         more pixels than ``max_image_pixels`` (decompression-bomb guard)
``image_aspect``            one side more than ``MAX_IMAGE_ASPECT`` (32) times the other (a
                            shorter-side resize would blow a thin strip up to gigabytes)
``image_unreadable``        Pillow cannot fully decode it (unknown format, truncated, corrupt),
                            or it cannot be turned into RGB (a float image with NaN pixels)
``sample_id_duplicate``     the ``sample_id`` of an earlier accepted row (input order)
``image_id_conflict``       an ``image_id`` already used for different image bytes
==========================  ==================================================================

Duplicates: the first occurrence (in input order) among rows that pass the per-row checks is
kept; every later copy is rejected and reported with its own row/id and the row it repeats.
``image_id`` groups work the same way: the first row fixes the image bytes of an ``image_id``.

Derived ids: without a ``sample_id`` column, ``sample_id = "pair-" + sha256(sha256(image bytes)
+ UTF-8 stripped caption)[:16 hex]``: stable when rows are reordered or image files renamed, and an exact
duplicate pair (same image bytes, same caption) is caught as ``sample_id_duplicate``.
Without a given ``image_id``, rows with byte-identical images share an ``image_id``: the
smallest ``sample_id`` among them; an image used once gets ``image_id == sample_id``; where other
rows give that id to another image, ``"image-" + sha256(image bytes)[:16 hex]`` instead.

Captions are stripped of surrounding whitespace and otherwise kept as written (no truncation:
models truncate to their own ``max_length`` tokens; see ``tasks.data.schema.MAX_CAPTION_CHARS``;
no Unicode normalisation: a caption in NFC and in NFD, or with CRLF and LF line breaks inside,
are different captions, with different derived ids).

Images are stored as the original file bytes, whatever their mode: greyscale, palette,
transparent, CMYK, 16-bit and float images are accepted, and turned into 8-bit RGB only where
pixels are consumed (:func:`tasks.data.images.to_rgb` says how each mode is converted).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pyarrow as pa

from tasks.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageProblem, check_image, read_image_file
from tasks.data.schema import DATASET_SCHEMA, MAX_CAPTION_CHARS, caption_problem, id_problem, not_utf8_problem, validate_table
from tasks.data.sources import METADATA_FILES, ColumnMap, RawRecord, path_exists, read_records

__all__ = ["REJECTED_SCHEMA", "LoadResult", "Reason", "load_paired_dataset"]

_DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


def _invisible(text: str) -> bool:
    """Whether ``text`` is made only of whitespace and format characters (Unicode category Cf:
    zero-width space and joiners, BOM, word joiner): empty to a reader, not to ``str.strip``."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


class Reason(StrEnum):
    """Why a record was rejected (the ``reason`` column of :attr:`LoadResult.rejected`)."""

    ROW_MALFORMED = "row_malformed"
    SAMPLE_ID_EMPTY = "sample_id_empty"
    SAMPLE_ID_UNSAFE = "sample_id_unsafe"
    IMAGE_ID_UNSAFE = "image_id_unsafe"
    TEXT_MISSING = "text_missing"
    TEXT_PATH_UNSAFE = "text_path_unsafe"
    TEXT_NOT_UTF8 = "text_not_utf8"
    TEXT_EMPTY = "text_empty"
    TEXT_TOO_LONG = "text_too_long"
    TEXT_CONTROL_CHARS = "text_control_chars"
    IMAGE_MISSING = "image_missing"
    IMAGE_AMBIGUOUS = "image_ambiguous"
    IMAGE_PATH_UNSAFE = "image_path_unsafe"
    IMAGE_EMPTY = "image_empty"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_ASPECT = "image_aspect"
    IMAGE_UNREADABLE = "image_unreadable"
    SAMPLE_ID_DUPLICATE = "sample_id_duplicate"
    IMAGE_ID_CONFLICT = "image_id_conflict"


REJECTED_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),  # 0-based data row of a table; null for folder records
        pa.field("sample_id", pa.string()),  # given or derived id; null when there is none yet
        pa.field("reason", pa.string(), nullable=False),  # a Reason value
        pa.field("detail", pa.string(), nullable=False),  # human-readable specifics
    ]
)
"""Schema of :attr:`LoadResult.rejected`, one row per refused record, in input order."""


@dataclass(frozen=True)
class LoadResult:
    """The valid rows of a dataset and the records that were refused.

    Attributes:
        table: valid rows, :data:`~tasks.data.schema.DATASET_SCHEMA`, sorted by ``sample_id``.
        rejected: one row per refused record (:data:`REJECTED_SCHEMA`), in input order.
        source: the path that was loaded.
    """

    table: pa.Table
    rejected: pa.Table
    source: str = ""

    @property
    def n_valid(self) -> int:
        """Number of valid rows."""
        return self.table.num_rows

    @property
    def n_rejected(self) -> int:
        """Number of refused records."""
        return self.rejected.num_rows

    def summary(self) -> dict[str, int]:
        """Count of refused records per reason, sorted by reason (empty when nothing was refused)."""
        counts: dict[str, int] = {}
        for reason in self.rejected.column("reason").to_pylist():
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))

    def report(self, max_ids: int = 20) -> str:
        """A short human-readable account: counts, then per reason the ids (or rows) refused."""
        lines = [f"{self.source}: {self.n_valid} valid row(s), {self.n_rejected} rejected"]
        by_reason: dict[str, list[str]] = {}
        for item in self.rejected.to_pylist():
            name = item["sample_id"] if item["sample_id"] is not None else f"row {item['row']}"
            by_reason.setdefault(item["reason"], []).append(name)
        for reason, names in sorted(by_reason.items()):
            shown = ", ".join(names[:max_ids]) + (" ..." if len(names) > max_ids else "")
            lines.append(f"  {reason}: {len(names)} ({shown})")
        return "\n".join(lines)


@dataclass
class _Candidate:
    """A record that passed the checks that need no decoding."""

    index: int  # position among all records: rejections are reported in input order
    row: int | None
    origin: str
    sample_id: str
    image: bytes
    image_digest: bytes
    text: str
    given_image_id: str | None


def read_linked_image_file(root: Path, relative: str, links_within: Path | None = None,
                           outside_advice: str = "") -> bytes | ImageProblem:
    """``images.read_image_file``, where a symbolic link inside ``root`` may also lead into
    ``links_within`` (a Hugging Face hub snapshot, whose files are links into the cache's
    ``blobs/``: every image was refused as leading outside the dataset folder). The path as written
    must still stay inside ``root`` (its normalised text, before any link is followed), and where a
    link leads must lie inside ``root`` or ``links_within``; the file there is read by the same rules.
    ``outside_advice``: ``read_image_file``'s (`outside_advice`). (Here, not in ``images``, whose
    source is part of every feature version.)"""
    found = read_image_file(root, relative, outside_advice)
    if links_within is None or not isinstance(found, ImageProblem) or found.reason != "image_path_unsafe":
        return found
    if relative.startswith("\\") or os.path.isabs(relative):
        return found
    base = root.resolve()
    written = Path(os.path.normpath(base / relative))
    if not written.is_relative_to(base):  # the text itself leaves the folder: refused as before
        return found
    try:
        target = written.resolve()
    except (ValueError, RuntimeError, OSError):
        return found
    if not target.is_relative_to(links_within.resolve()):
        return ImageProblem("image_path_unsafe", f"image path {relative!r} is a link that leads outside the dataset folder "
                            f"{base} (to {str(target)!r})")
    return read_image_file(target.parent, target.name)


#: An image path that is a URL (``https://``, ``s3://``, ``file://``): never read as a file name.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def image_file_limit(max_pixels: int) -> int:
    """Largest image file read, in bytes: an image of ``max_pixels`` pixels stored uncompressed at
    8 bytes a pixel (RGBA, 16 bits a channel: the widest mode read) plus 16 MiB of metadata (EXIF,
    ICC, XMP). Any image the pixel limit lets through fits; a bigger file cannot be one, and was
    read whole into memory before it was found out (a 100 GB sparse file named ``x.png``)."""
    return max_pixels * 8 + (16 << 20)


def _oversized(root: Path, relative: str, limit: int, links_within: Path | None = None) -> ImageProblem | None:
    """``image_too_large`` for a regular file inside ``root`` or ``links_within`` (after links: a
    hub snapshot's images are links into its cache's ``blobs/``) larger than ``limit`` bytes,
    judged by its size, unread; None otherwise (``read_image_file`` then decides: a path outside
    them is refused as before, never sized here)."""
    try:
        base = root.resolve()
        target = (base / relative).resolve()
        inside = target.is_relative_to(base) or (links_within is not None and target.is_relative_to(links_within.resolve()))
        size = target.stat().st_size if inside and target.is_file() else None
    except (OSError, ValueError, RuntimeError):
        return None
    if size is None or size <= limit:
        return None
    shown = repr(relative) if len(relative) <= 160 else repr(relative[:157] + "...")
    return ImageProblem("image_too_large", f"image file {shown} is {size:,} bytes, more than the {limit:,} that an image "
                        "within the pixel limit can take: not read")


@dataclass
class _FileReader:
    """Reads image files under ``root`` once each (several captions may share one file); a file
    larger than ``max_bytes`` (`image_file_limit`) is refused unread."""

    root: Path
    links_within: Path | None = None  # read_linked_image_file's: where links inside root may also lead
    outside_advice: str = ""  # read_image_file's: what to do about an absolute path outside root
    cache: dict[str, bytes | ImageProblem] = field(default_factory=dict)
    max_bytes: int = image_file_limit(DEFAULT_MAX_IMAGE_PIXELS)

    def read(self, relative: str) -> bytes | ImageProblem:
        """The file's bytes or why not (``read_image_file``); backslashes separate folders when no
        file has the name with them (``imgs\\x.png`` in a table written on Windows)."""
        if relative not in self.cache and _URL.match(relative):
            self.cache[relative] = ImageProblem("image_missing", f"image path {relative[:160]!r} is a URL: images are read "
                                                "from files, never fetched (download them, and name the files)")
        if relative not in self.cache:
            found = self._sized_read(relative)
            if isinstance(found, ImageProblem) and found.reason == "image_missing" and "\\" in relative.lstrip("\\"):
                posix = self._sized_read(relative.replace("\\", "/"))
                found = found if isinstance(posix, ImageProblem) and posix.reason == "image_missing" else posix
            self.cache[relative] = found
        return self.cache[relative]

    def _sized_read(self, relative: str) -> bytes | ImageProblem:
        """``read_linked_image_file``, unless the file is larger than ``max_bytes`` (`_oversized`:
        the file the path leads to, a hub snapshot's blob or the folder a Windows path names)."""
        big = _oversized(self.root, relative, self.max_bytes, self.links_within)
        return big if big is not None else read_linked_image_file(self.root, relative, self.links_within,
                                                                  self.outside_advice)


def _prepare(index: int, record: RawRecord, files: _FileReader) -> _Candidate | tuple[str, str]:
    """Every check except decoding the image: the candidate row, or ``(reason, detail)``."""
    where = record.origin
    if record.problem is not None:
        return record.problem
    if record.sample_id is not None:
        problem = id_problem(record.sample_id)
        if problem is not None:
            reason = Reason.SAMPLE_ID_EMPTY if record.sample_id == "" else Reason.SAMPLE_ID_UNSAFE
            return reason, f"{where}: sample_id {record.sample_id!r} {problem}"
    if record.image_id is not None:
        problem = id_problem(record.image_id)
        if problem is not None:
            return Reason.IMAGE_ID_UNSAFE, f"{where}: image_id {record.image_id!r} {problem}"

    text = record.text
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            try:  # the bytes of a lone UTF-16 surrogate (a JSON caption's "\ud83d")?
                text = text.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                return Reason.TEXT_NOT_UTF8, f"{where}: caption {not_utf8_problem(text, exc)}"
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone UTF-16 surrogate (JSON "\ud83d"): half of an emoji cut off
            return Reason.TEXT_NOT_UTF8, (f"{where}: caption holds a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X} at "
                                          f"character {exc.start}: half of a character cut off?), not text")
    if text is None or text.strip() == "":
        return Reason.TEXT_EMPTY, f"{where}: caption is {'null' if text is None else 'empty'}"
    if _invisible(text):
        codes = ", ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(text.strip()))
        return Reason.TEXT_EMPTY, f"{where}: caption has only invisible characters ({codes[:80]})"
    text = text.strip()
    problem = caption_problem(text)
    if problem is not None:
        reason = Reason.TEXT_TOO_LONG if len(text) > MAX_CAPTION_CHARS else Reason.TEXT_CONTROL_CHARS
        return reason, f"{where}: caption {problem}"

    image = record.image
    if image is None:
        return Reason.IMAGE_MISSING, f"{where}: image is null"
    if isinstance(image, str):
        image = files.read(image)
        if isinstance(image, ImageProblem):
            return image.reason, f"{where}: {image.detail}"
    if len(image) == 0:
        return Reason.IMAGE_EMPTY, f"{where}: image is 0 bytes"
    digest = hashlib.sha256(image).digest()
    sample_id = record.sample_id
    if sample_id is None:
        sample_id = "pair-" + hashlib.sha256(digest + text.encode("utf-8")).hexdigest()[:16]
    return _Candidate(index, record.row, where, sample_id, image, digest, text, record.image_id)


def _decode_all(images: dict[bytes, bytes], max_pixels: int) -> dict[bytes, ImageProblem | None]:
    """Decode each distinct image once, in threads (Pillow's decoders release the GIL)."""
    if len(images) < 16:
        return {digest: check_image(data, max_pixels) for digest, data in images.items()}
    with ThreadPoolExecutor(max_workers=_DECODE_THREADS) as pool:
        problems = pool.map(lambda data: check_image(data, max_pixels), images.values())
        return dict(zip(images.keys(), problems))


def _rejection(
    index: int, row: int | None, sample_id: str | None, reason: str, detail: str
) -> tuple[int, dict]:
    item = {"row": row, "sample_id": _printable(sample_id), "reason": str(reason), "detail": _printable(detail)}
    return index, item


def _printable(value: str | None) -> str | None:
    """Text safe to store: undecodable bytes kept by the readers become backslash escapes."""
    if value is None:
        return None
    return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def load_paired_dataset(
    path: str | Path,
    *,
    columns: ColumnMap | None = None,
    n: int | None = None,
    image_root: str | Path | None = None,
    split: str | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_valid_rows: int = 2,
) -> LoadResult:
    """Load and validate a paired image–caption dataset (layouts and rules: module docstring).

    Args:
        path: a ``.parquet``/``.pq``/``.csv``/``.tsv``/``.jsonl`` table, a ``.json`` document (COCO
            captions, a Karpathy split file or an array of row objects), a folder of images +
            ``.txt``, or a folder with a ``metadata.jsonl``/``.csv``/``.parquet`` table.
        columns: the tables' image and caption column names and caption policy
            (``tasks.data.sources.ColumnMap``; default ``image``, ``text``, first caption).
        n: only the first ``n`` rows of a table, or images of a folder by name (None: all);
            taken before the checks, so rejected rows count among them.
        image_root: the folder a table's relative image paths are read from, and that they may
            not leave (default: the table's folder), e.g. COCO-style ``annotations/x.csv``
            naming files of ``val2017/``. Tables only.
        split: a Karpathy split ``.json``'s images of this split only (``test``, ...; None:
            all); other layouts have no splits (an error if given).
        max_image_pixels: images with more pixels are rejected as ``image_too_large``.
        min_valid_rows: fewer valid rows than this is an error (alignment needs pairs).

    Raises:
        ValueError: naming the path: it does not exist, has an unsupported type, cannot be
            parsed, lacks ``image``/``text``, or yields fewer than ``min_valid_rows`` valid rows
            (the message then counts the rejections per reason).
    """
    source = Path(path).expanduser()
    records, root = read_records(source, columns, n, split)
    if image_root is not None:
        root = checked_image_root(source, image_root)
    return validate_records(records, root, str(source), max_image_pixels=max_image_pixels, min_valid_rows=min_valid_rows,
                            outside_advice=outside_advice(source))


def outside_advice(source: Path) -> str:
    """What the user of the dataset at ``source`` can do about an image path outside its folder
    (``read_image_file``'s ``outside_advice``): a table file takes ``image_root``; a folder does not
    (`checked_image_root`), but its metadata table given itself as the dataset path does, read with
    the image column the folder's reading uses (``file_name`` by default: `effective_columns`, for
    the folder and for the table alike), so the same columns serve."""
    if not source.is_dir():
        return "set image_root to a folder that holds the images"
    table = next((name for name in METADATA_FILES if (source / name).is_file()), None)
    if table is None:  # a folder of images with .txt captions names no path: nothing to advise
        return ""
    return (f"image_root applies to a table, not to a folder: give its {table} itself as the dataset path, with "
            "image_root a folder that holds the images")


def checked_image_root(source: Path, image_root: str | Path) -> Path:
    """``image_root`` as a Path when it can serve the dataset at ``source`` (a table, and an existing
    folder); else ``ValueError`` saying which."""
    if source.is_dir():
        raise ValueError(f"dataset {str(source)!r} is a folder: image_root applies to a table, whose image paths it resolves")
    root = Path(image_root).expanduser()
    if not (path_exists(root, "image_root") and root.is_dir()):
        raise ValueError(f"image_root {str(image_root)!r} of dataset {str(source)!r} is not a folder")
    return root


def validate_records(
    records: list[RawRecord],
    root: Path,
    source: str,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_valid_rows: int = 2,
    links_within: Path | None = None,
    outside_advice: str = "",
) -> LoadResult:
    """Check raw records from any reader (a table, a folder, a Hugging Face dataset) by the rules
    of the module docstring. ``root``: the folder that relative image paths are read from;
    ``source``: how messages name the dataset; ``links_within``: a folder that symbolic links
    inside ``root`` may also lead into (a hub snapshot's files link into the hub cache's
    ``blobs/``; :func:`read_linked_image_file`); ``outside_advice``: what the dataset's kind lets its
    user do about an absolute image path outside ``root`` (``images.read_image_file``'s).

    Raises:
        ValueError: fewer than ``min_valid_rows`` valid rows (counting the rejections per reason).
    """
    files = _FileReader(root, links_within, outside_advice, max_bytes=image_file_limit(max_image_pixels))
    prepared = [_prepare(index, record, files) for index, record in enumerate(records)]
    distinct = {c.image_digest: c.image for c in prepared if isinstance(c, _Candidate)}
    image_problems = _decode_all(distinct, max_image_pixels)

    rejected: list[tuple[int, dict]] = []
    accepted: list[_Candidate] = []
    first_by_id: dict[str, _Candidate] = {}
    for index, (record, outcome) in enumerate(zip(records, prepared)):
        if isinstance(outcome, tuple):
            rejected.append(_rejection(index, record.row, record.sample_id, *outcome))
            continue
        problem = image_problems[outcome.image_digest]
        if problem is not None:
            detail = f"{outcome.origin}: {problem.detail}"
            rejected.append(_rejection(index, record.row, record.sample_id, problem.reason, detail))
            continue
        earlier = first_by_id.get(outcome.sample_id)
        if earlier is not None:
            rejected.append(
                _rejection(
                    index, outcome.row, outcome.sample_id, Reason.SAMPLE_ID_DUPLICATE,
                    f"{outcome.origin}: sample_id {outcome.sample_id!r} already used by {earlier.origin}",
                )
            )
            continue
        first_by_id[outcome.sample_id] = outcome
        accepted.append(outcome)

    kept = _assign_image_ids(accepted, rejected)
    kept.sort(key=lambda item: item[0].sample_id)
    table = pa.table(
        {
            "sample_id": [row.sample_id for row, _ in kept],
            "image": [row.image for row, _ in kept],
            "text": [row.text for row, _ in kept],
            "image_id": [image_id for _, image_id in kept],
        },
        schema=DATASET_SCHEMA,
    )
    validate_table(table)
    rejected.sort(key=lambda item: item[0])
    result = LoadResult(
        table=table,
        rejected=pa.Table.from_pylist([item for _, item in rejected], schema=REJECTED_SCHEMA),
        source=source,
    )
    if result.n_valid < min_valid_rows:
        counts = ", ".join(f"{reason}: {count}" for reason, count in result.summary().items()) or "none"
        first = f"; first: {rejected[0][1]['detail']}" if rejected else ""
        raise ValueError(
            f"dataset {source!r} has {result.n_valid} valid row(s), at least {min_valid_rows} "
            f"needed; rejected rows by reason: {counts}{first}"
        )
    return result


def _assign_image_ids(
    accepted: list[_Candidate], rejected: list[tuple[int, dict]]
) -> list[tuple[_Candidate, str]]:
    """Give every accepted row its ``image_id``; reject rows whose ``image_id`` names other bytes.

    A row without one takes the id given to its image's bytes by other rows (the smallest, if they
    give several), else the smallest ``sample_id`` among the rows of those bytes: a partly filled
    ``image_id`` column no longer splits one picture into two images. That sample id is not taken
    when rows give it as the image id of other bytes (`_implicit_image_ids`). Rows that give two
    different ids to identical bytes keep them (the ids are the user's: two images)."""
    given_by_digest: dict[bytes, str] = {}
    smallest_by_digest: dict[bytes, str] = {}
    for row in accepted:
        ids = given_by_digest if row.given_image_id is not None else smallest_by_digest
        candidate = row.given_image_id if row.given_image_id is not None else row.sample_id
        current = ids.get(row.image_digest)
        if current is None or candidate < current:
            ids[row.image_digest] = candidate
    smallest_by_digest = _implicit_image_ids(smallest_by_digest, accepted)

    first_with_image_id: dict[str, _Candidate] = {}
    kept: list[tuple[_Candidate, str]] = []
    for row in accepted:
        image_id = row.given_image_id or given_by_digest.get(row.image_digest) or smallest_by_digest[row.image_digest]
        first = first_with_image_id.setdefault(image_id, row)
        if first.image_digest != row.image_digest:
            rejected.append(
                _rejection(
                    row.index, row.row, row.sample_id, Reason.IMAGE_ID_CONFLICT,
                    f"{row.origin}: image_id {image_id!r} already names a different image ({first.origin})",
                )
            )
            continue
        kept.append((row, image_id))
    return kept


def _implicit_image_ids(smallest_by_digest: dict[bytes, str], accepted: list[_Candidate]) -> dict[bytes, str]:
    """``smallest_by_digest`` (image digest -> the smallest sample id of its rows, the image id of
    an image no row names) with each id that a row gives as the ``image_id`` of other bytes
    replaced by ``image-`` and 16 hex digits of the image's SHA-256: the image took the id of
    another (sample ``y`` beside the image id ``y`` given to another picture), and the later of
    the two was rejected as ``image_id_conflict``, though neither row's id was wrong."""
    given: dict[str, set[bytes]] = {}
    for row in accepted:
        if row.given_image_id is not None:
            given.setdefault(row.given_image_id, set()).add(row.image_digest)
    return {digest: f"image-{digest.hex()[:16]}" if given.get(image_id, {digest}) != {digest} else image_id
            for digest, image_id in smallest_by_digest.items()}
