"""WebDataset tar shards: the layout of img2dataset, CC3M/CC12M, LAION and DataComp downloads.

A shard is a tar archive whose members are grouped by key: ``KEY.jpg`` (or any image suffix of
:data:`tasks.data.sources.IMAGE_SUFFIXES`) beside ``KEY.txt`` (the caption) and/or ``KEY.json`` (a
caption field: the text column, ``text`` by default, else ``caption``; a list of captions is read
as a table's list is, by ``captions``). The key is the member's path up to the first dot of its
file name; a sample's members follow each other in the archive. Shards are read in name order
(``shards/00000.tar`` ... or one ``.tar``), ``.tar.gz``/``.tgz`` too, straight from the archive:
nothing is extracted to disk, links and other non-file members are skipped, and a member larger
than :data:`MAX_MEMBER_BYTES` is refused without being read. With ``limit`` the reading stops
after that many samples.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from tasks.data.sources import IMAGE_SUFFIXES, ColumnMap, RawRecord, folder_id

#: Suffixes of a WebDataset shard.
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: Largest member read (an image or a caption file): bigger ones are refused unread.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
_TEXT_SUFFIXES = (".txt", ".text", ".caption")


def is_shard(path: Path) -> bool:
    """Whether ``path``'s name ends like a WebDataset shard."""
    return path.name.lower().endswith(SHARD_SUFFIXES)


def shards_in(folder: Path) -> list[Path]:
    """The shards directly in ``folder``, in name order (empty when it has none)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_shard(p)),
                  key=lambda p: p.name)


def read_shards(shards: list[Path], columns: ColumnMap | None = None, limit: int | None = None) -> list[RawRecord]:
    """The records of WebDataset ``shards`` (read in the given order): one per sample, or one per
    caption (``columns.captions == "all"``; their ``image_id`` is the sample's id). A sample
    without an image or a caption is a refused record naming what it lacks.

    Raises:
        ValueError: a shard that is not a readable tar archive (naming it).
    """
    columns = columns or ColumnMap()
    records: list[RawRecord] = []
    samples = 0
    for shard in shards:
        for key, members in _samples(shard):
            if limit is not None and samples >= limit:
                return records
            records.extend(_records(shard, key, members, columns))
            samples += 1
    return records


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes | str]]]:
    """``(key, {suffix: content})`` of each sample of ``shard`` in archive order; an oversized
    member's content is a ``str`` saying so."""
    try:
        archive = tarfile.open(shard, mode="r:*")
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"WebDataset shard {str(shard)!r} is not a readable tar archive: {error}") from None
    key: str | None = None
    members: dict[str, bytes | str] = {}
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue  # folders, links, devices: never followed
                path = PurePosixPath(member.name)
                if path.name.startswith("."):
                    continue
                stem, dot, suffix = path.name.partition(".")
                member_key = str(path.with_name(stem))
                if member_key != key:
                    if key is not None:
                        yield key, members
                    key, members = member_key, {}
                suffix = "." + suffix.lower() if dot else ""
                if member.size > MAX_MEMBER_BYTES:
                    members[suffix] = f"{member.name} is {member.size:,} bytes, more than the {MAX_MEMBER_BYTES:,} read"
                    continue
                handle = archive.extractfile(member)
                members[suffix] = handle.read() if handle is not None else b""
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ValueError(f"WebDataset shard {str(shard)!r} is damaged after {key!r}: {error}") from None
    if key is not None:
        yield key, members


def _records(shard: Path, key: str, members: dict[str, bytes | str], columns: ColumnMap) -> list[RawRecord]:
    sample_id = folder_id(re.sub(r"[/\\]+", "_", key))
    origin = f"{shard.name}:{key}"
    images = [s for s in members if s in IMAGE_SUFFIXES]
    if not images:
        return [_refused(origin, sample_id, "image_missing", f"sample {key} has no image member ({', '.join(sorted(members)) or 'none'})")]
    image = members[images[0]]
    if isinstance(image, str):
        return [_refused(origin, sample_id, "image_too_large", image)]
    captions, problem = _captions(key, members, columns)
    if problem is not None:
        return [_refused(origin, sample_id, *problem)]
    if columns.captions == "first" or len(captions) <= 1:
        return [RawRecord(None, origin, sample_id, image, captions[0] if captions else "", None)]
    return [RawRecord(None, f"{origin} caption {i}", f"{sample_id}-{i}", image, text, sample_id)
            for i, text in enumerate(captions)]


def _captions(key: str, members: dict[str, bytes | str], columns: ColumnMap) -> tuple[list[bytes | str], tuple[str, str] | None]:
    """The sample's caption(s): the lines of its text member, else its JSON's caption field."""
    for suffix in _TEXT_SUFFIXES:
        if suffix in members:
            content = members[suffix]
            if isinstance(content, str):
                return [], ("text_too_long", content)
            lines = [line.strip() for line in re.split(rb"\r\n|\n|\r", content.removeprefix(b"\xef\xbb\xbf")) if line.strip()]
            return (lines if columns.captions == "all" else lines[:1]), None
    if ".json" in members:
        return _json_captions(key, members[".json"], columns)
    return [], ("text_missing", f"sample {key} has no caption member ({', '.join(_TEXT_SUFFIXES)} or .json)")


def _json_captions(key: str, content: bytes | str, columns: ColumnMap) -> tuple[list[bytes | str], tuple[str, str] | None]:
    if isinstance(content, str):
        return [], ("text_too_long", content)
    try:
        meta = json.loads(content)
    except (ValueError, RecursionError) as error:
        return [], ("row_malformed", f"{key}.json is not valid JSON: {error}")
    fields = [columns.text] if columns.text != "text" else ["text", "caption"]
    value = next((meta[f] for f in fields if isinstance(meta, dict) and meta.get(f) is not None), None)
    if value is None:
        return [], ("text_missing", f"{key}.json has no {' or '.join(repr(f) for f in fields)} field")
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        return [], ("row_malformed", f"{key}.json's caption field is not text or a list of texts")
    captions: list[bytes | str] = [v for v in values if v.strip()]
    return (captions if columns.captions == "all" else captions[:1]), None


def _refused(origin: str, sample_id: str, reason: str, detail: str) -> RawRecord:
    return RawRecord(None, origin, sample_id, None, None, None, problem=(reason, detail))

