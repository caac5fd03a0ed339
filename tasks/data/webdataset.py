"""WebDataset tar shards: the layout of img2dataset, CC3M/CC12M, LAION and DataComp downloads.

A shard is a tar archive whose members are grouped by key: ``KEY.jpg`` (or any image suffix of
:data:`tasks.data.sources.IMAGE_SUFFIXES`) beside ``KEY.txt`` (the caption, whole, as WebDataset
readers take it: a newline inside it stays) and/or ``KEY.json``. The key is the member's path up
to the first dot of its file name; a sample's members follow each other in the archive.

Captions: ``KEY.txt`` (also ``.text``, ``.caption``), else the ``text`` or ``caption`` field of
``KEY.json`` (a list of captions is read as a table's list is, by ``captions``). A text column
other than ``text`` names the JSON field to read instead (img2dataset's ``.txt`` is then not
used). An image column other than ``image`` names the image suffix to read (``png`` when a
sample has ``KEY.jpg`` and ``KEY.png``); else a sample's one image member is read, and a sample
with several (``KEY.jpg`` beside ``KEY.png``: a photo and its mask, or a re-encoding) is one
rejected row, ``image_ambiguous``, naming them and the image column that picks one (the first in
the archive had been read, the tar writer's order deciding, and the other reported as a rejected
``sample_id_duplicate`` row of an id that was not repeated).

Shards are read in name order (``shards/00000.tar`` ... or one ``.tar``; ``.tar.gz``/``.tgz``
too) straight from the archive: nothing is extracted to disk; links, devices and sparse members
are skipped; members prh does not read (other suffixes) are never decompressed into memory; a
member larger than :data:`MAX_MEMBER_BYTES` is refused unread; a shard that expands to more than
:data:`MAX_EXPANSION` times its size (a compression bomb) is refused. A shard is read to its end
(a damaged header, or a cut inside one, would otherwise end it silently); with ``limit`` the
reading stops after that many samples. A sample refused for lacking its image or caption names
its members not read because their names have more dots and that end like the one it lacks
(``IMG_1.final.jpg`` is member ``.final.jpg`` of sample ``IMG_1``: named where it lacks an image,
not where it lacks a caption).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from tasks.data.sources import IMAGE_SUFFIXES, ColumnMap, RawRecord, folder_id

#: Suffixes of a WebDataset shard, and the tarfile mode that reads each.
SHARD_MODES = {".tar": "r:", ".tar.gz": "r:gz", ".tgz": "r:gz"}
#: Largest member read (an image or a caption file): bigger ones are refused unread.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
#: Largest extended header (a GNU long name, a pax record) read: tarfile reads one whole before
#: the member it describes, so a crafted size would be allocated before any other check.
MAX_HEADER_BYTES = 1 << 20
#: Most bytes read from a shard per byte of its file (plus one member): images are compressed
#: already, so a real shard expands ~1x; a compression bomb far more.
MAX_EXPANSION = 100
_TEXT_SUFFIXES = (".txt", ".text", ".caption")
_CHUNK = 1 << 20


def is_shard(path: Path) -> bool:
    """Whether ``path``'s name ends like a WebDataset shard."""
    return _suffix(path) is not None


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SHARD_MODES if name.endswith(s)), None)


def shards_in(folder: Path) -> list[Path]:
    """The shards directly in ``folder``, in name order (empty when it has none)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_shard(p)),
                  key=lambda p: p.name)


def read_shards(shards: list[Path], columns: ColumnMap | None = None, limit: int | None = None) -> list[RawRecord]:
    """The records of WebDataset ``shards`` (read in the given order): one per sample, or one per
    caption of a JSON list (``columns.captions == "all"``; their ``image_id`` is the sample's id).
    A sample without an image or a caption is a refused record naming what it lacks.

    Raises:
        ValueError: a shard that is not a readable tar archive, is damaged, or expands like a
            compression bomb (naming it).
    """
    columns = columns or ColumnMap()
    records: list[RawRecord] = []
    if limit is not None and limit <= 0:
        return records
    samples = 0
    for shard in shards:
        for sample in _samples(shard, _wanted(columns)):
            records.extend(_records(shard, sample, columns))
            samples += 1
            if limit is not None and samples >= limit:
                return records
    return records


def _wanted(columns: ColumnMap) -> frozenset[str]:
    """The member suffixes worth reading: images (or the named one), captions and JSON."""
    images = IMAGE_SUFFIXES if columns.image == "image" else frozenset({"." + columns.image.lower().lstrip(".")})
    return frozenset({*images, *_TEXT_SUFFIXES, ".json"})


class ShardRefused(ValueError):
    """A shard refused whole (a compression bomb): its message names it."""


@dataclass
class _Sample:
    key: str
    members: dict[str, bytes | str] = field(default_factory=dict)  # suffix -> content (str: why it was not read)
    repeated: list[str] = field(default_factory=list)  # member names seen twice in this sample
    scattered: bool = False  # the key came back after other samples (its members are not together)
    dotted: list[str] = field(default_factory=list)  # members not read whose name ends like one read (a.b.png), 3 per ending


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an extended header (GNU long name or link, pax) larger than
    :data:`MAX_HEADER_BYTES` before tarfile reads it into memory."""

    _EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in self._EXTENDED and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(f"an extended header of {self.size:,} bytes (more than the {MAX_HEADER_BYTES:,} read)")
        return super()._proc_member(archive)


def _open(shard: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(shard, mode=SHARD_MODES[_suffix(shard) or ".tar"], tarinfo=_BoundedTarInfo)
    except (tarfile.TarError, OSError, EOFError) as error:
        kind = "gzip-compressed tar" if (_suffix(shard) or "").endswith(("gz", "tgz")) else "tar"
        raise ValueError(f"WebDataset shard {str(shard)!r} is not a readable {kind} archive: {error}") from None


def _samples(shard: Path, wanted: frozenset[str]) -> Iterator[_Sample]:
    """Each sample of ``shard`` in archive order, reading only the ``wanted`` suffixes' members."""
    archive = _open(shard)
    budget = MAX_EXPANSION * max(shard.stat().st_size, 1) + MAX_MEMBER_BYTES
    current: _Sample | None = None
    keys: set[str] = set()  # the shard's keys so far: a key that comes back is refused, not read as new
    with archive:
        try:
            while (member := archive.next()) is not None:
                archive.members.clear()  # read once, in order: tarfile need not keep every header
                if not member.isfile() or member.issparse():
                    continue  # folders, links, devices: never followed; sparse: zeros made up
                path = PurePosixPath(member.name)
                if path.name.startswith("."):
                    continue
                stem, dot, rest = path.name.partition(".")
                key = str(path.with_name(stem))
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = _Sample(key, scattered=key in keys)
                    keys.add(key)
                suffix = "." + rest.lower() if dot else ""
                if suffix not in wanted:
                    last = _last_suffix(member.name)
                    if "." in rest and last in wanted and sum(_last_suffix(n) == last for n in current.dotted) < 3:
                        current.dotted.append(member.name)  # three of each ending at most
                    continue
                if suffix in current.members:
                    current.repeated.append(member.name)
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    current.members[suffix] = f"{member.name} is {member.size:,} bytes, more than the {MAX_MEMBER_BYTES:,} read"
                    continue
                budget -= member.size
                if budget < 0:
                    raise ShardRefused(f"WebDataset shard {str(shard)!r} expands to more than {MAX_EXPANSION} times its "
                                     f"{shard.stat().st_size:,} bytes (a compression bomb?): refused at {member.name!r}")
                handle = archive.extractfile(member)
                current.members[suffix] = handle.read() if handle is not None else b""
            _check_end(archive)
        except ShardRefused:
            raise
        except (tarfile.TarError, OSError, EOFError, ValueError) as error:
            after = f"after {current.key!r}" if current is not None else "at its start"
            raise ValueError(f"WebDataset shard {str(shard)!r} is damaged {after}: {error}") from None
    if current is not None:
        yield current


def _check_end(archive: tarfile.TarFile) -> None:
    """Raise unless the archive's stream ends in zero blocks (at least one) after its last
    header: tarfile ends its iteration silently at a damaged header, or where the file was cut,
    past the first member. Reading to the end also checks a gzip stream's CRC."""
    stream = archive.fileobj
    stream.seek(archive.offset)
    zeros = 0
    while chunk := stream.read(_CHUNK):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError(f"a damaged header at byte {archive.offset:,} (the samples after it would be lost)")
        zeros += len(chunk)
    if zeros < tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"it ends at byte {archive.offset:,} without the end-of-archive blocks (cut short?)")


def _records(shard: Path, sample: _Sample, columns: ColumnMap) -> list[RawRecord]:
    key, members = sample.key, sample.members
    sample_id = folder_id(key)
    origin = f"{shard.name}:{key}"
    if sample.scattered:
        return [_refused(origin, sample_id, "sample_id_duplicate",
                         f"{shard.name}: members of sample {key} appear again after other samples (a WebDataset shard "
                         f"keeps each sample's files together: write the tar sorted by key); its earlier members were "
                         f"read as a sample of their own")]
    if sample.repeated:
        return [_refused(origin, sample_id, "sample_id_duplicate",
                         f"{shard.name}: member {sample.repeated[0]} appears twice in sample {key}")]
    is_image = (lambda s: s in IMAGE_SUFFIXES) if columns.image == "image" else (lambda s: s == "." + columns.image.lower().lstrip("."))
    images = [s for s in members if is_image(s)]
    if not images:
        wanted = "image member" if columns.image == "image" else f"{columns.image!r} member (image column)"
        return [_refused(origin, sample_id, "image_missing",
                         f"{shard.name}: sample {key} has no {wanted}{_dots(sample, is_image)}")]
    if len(images) > 1:
        return [_refused(origin, sample_id, "image_ambiguous", f"{shard.name}: {_ambiguous(key, images)}")]
    image = members[images[0]]
    if isinstance(image, str):
        return [_refused(origin, sample_id, "image_too_large", f"{shard.name}: {image}")]
    captions, problem = _captions(key, members, columns)
    if problem is not None:
        sources = (*_TEXT_SUFFIXES, ".json") if columns.text == "text" else (".json",)
        why = _dots(sample, lambda s: s in sources) if problem[0] == "text_missing" else ""
        return [_refused(origin, sample_id, problem[0], f"{shard.name}: {problem[1]}{why}")]
    if columns.captions == "first" or len(captions) <= 1:
        return [RawRecord(None, origin, sample_id, image, captions[0] if captions else "", None)]
    return [RawRecord(None, f"{origin} caption {i}", f"{sample_id}-{i}", image, text, sample_id)
            for i, text in enumerate(captions)]


def _ambiguous(key: str, images: list[str]) -> str:
    """Why a sample with several image members (``images``: their suffixes) is refused when no image
    column picks one: which of them is the sample's image (a photo, its mask, a re-encoding) is not
    for the reader to guess, and the archive's order is only the tar writer's."""
    names = sorted(images)
    choices = [repr(s.lstrip(".")) for s in names]
    either = f"{', '.join(choices[:-1])} or {choices[-1]}"
    return (f"sample {key} has {len(names)} image members ({', '.join(key + s for s in names)}) and the image column "
            f"names none of them: set the image column to one suffix ({either})")


def _dots(sample: _Sample, could_be: Callable[[str], bool]) -> str:
    """Why a sample's members named like the member it lacks with more dots (``IMG_1.final.jpg``
    for an image: ``could_be`` tells the suffixes that member is read from) were not read, for the
    message of a sample that lacks it; ``''`` when it has none."""
    named = [name for name in sample.dotted if could_be(_last_suffix(name))][:3]
    if not named:
        return ""
    first = PurePosixPath(named[0]).name
    return (f" ({', '.join(named)} not read: a member's suffix starts at the first dot of its name, so "
            f"{named[0]} is '{first[first.index('.'):]}')")


def _last_suffix(name: str) -> str:
    """The last suffix of a member's file name, lower-case (``a/IMG_1.final.JPG``: ``.jpg``; ``''`` without a dot)."""
    base = PurePosixPath(name).name
    return "." + base.rsplit(".", 1)[1].lower() if "." in base else ""


def _captions(key: str, members: dict[str, bytes | str], columns: ColumnMap) -> tuple[list[bytes | str], tuple[str, str] | None]:
    """The sample's caption(s): its text member whole (unless a text column names a JSON field),
    else its JSON's caption field."""
    if columns.text == "text":
        for suffix in _TEXT_SUFFIXES:
            if suffix in members:
                content = members[suffix]
                if isinstance(content, str):
                    return [], ("text_too_long", content)
                return [content.removeprefix(b"\xef\xbb\xbf").strip()], None
    if ".json" in members:
        return _json_captions(key, members[".json"], columns)
    sources = f"{', '.join(_TEXT_SUFFIXES)} or .json" if columns.text == "text" else f".json with a {columns.text!r} field"
    return [], ("text_missing", f"sample {key} has no caption member ({sources})")


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
    captions: list[bytes | str] = list(values)  # an empty one is reported (text_empty), as in a table's list
    return (captions if columns.captions == "all" else captions[:1]), None


def _refused(origin: str, sample_id: str, reason: str, detail: str) -> RawRecord:
    return RawRecord(None, origin, sample_id, None, None, None, problem=(reason, detail))
