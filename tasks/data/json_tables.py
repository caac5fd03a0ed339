"""Paired datasets kept as one JSON document (``.json``), turned into the table layout of
:mod:`tasks.data.sources`.

Two shapes are understood, told apart by the document's top level:

COCO captions (an object with ``images`` and ``annotations`` lists)
    As MS-COCO's ``annotations/captions_val2017.json``: each image is an object with ``id``
    (integer or string) and ``file_name`` (a path relative to the image folder), each
    annotation an object with ``image_id`` and ``caption``. The table has one row per image in
    the file's order: ``image`` = ``file_name``, ``text`` = its captions in annotation order (a
    list, so ``captions`` picks the first or all of them), ``sample_id`` = the image ``id``.
    An image without any annotation keeps its row with no caption, so that it is reported.
    Other keys (``info``, ``licenses``, ``width`` ...) are ignored.
An array of objects (one per row)
    As BLIP's ``coco_karpathy_test.json`` (``image``, ``caption``: a string or a list of
    strings): every object is a row, read under the :class:`~tasks.data.sources.ColumnMap`
    column names like any other table; keys other than the image, caption and id columns are
    ignored.

Karpathy's split file (an object with an ``images`` list whose entries have ``sentences``)
    As ``dataset_coco.json`` / ``dataset_flickr30k.json`` of Karpathy & Fei-Fei's splits: each
    image is an object with ``filename`` (under ``filepath`` when given: ``val2014/...``),
    ``split`` (``train``, ``restval``, ``val`` or ``test``), ``sentences`` (objects whose ``raw``
    is the caption) and ``cocoid`` (COCO) or ``imgid``. The table has one row per image of the
    chosen ``split`` (all images when None) in the file's order: ``image`` = the path,
    ``text`` = its captions, ``sample_id`` = ``cocoid``, else ``imgid``.

A document that is none of these, that is not valid UTF-8 JSON, or whose structure is broken (an image
without ``file_name``, two images with one ``id``, an annotation naming no image, a caption that
is not a string), or a ``split`` that the file does not have (or that a file without splits is
given) makes the file unreadable, with a message naming the file and the entry; the
usual row checks (missing or unreadable image files, empty captions ...) come later and reject
single rows only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from tasks.data.sources import ColumnMap, refuse_split

__all__ = ["coco_captions_table", "karpathy_split_table", "lone_surrogate", "read_json_table", "records_table", "RowTable"]

_COCO_KEYS = ("images", "annotations")
_JSON_KINDS = {str: "string", bytes: "string", list: "array", dict: "object", int: "number", float: "number", bool: "boolean"}  # bytes: a caption with a lone surrogate


def read_json_table(path: Path, columns: ColumnMap, limit: int | None = None, split: str | None = None) -> pa.Table:
    """The ``.json`` document at ``path`` as a table with columns ``image``, ``text`` (a string,
    or a list of strings) and, when given, ``sample_id`` / ``image_id``; the first ``limit`` rows
    (images of a COCO or Karpathy file) or all; ``split``: the images of that split of a
    Karpathy file (None: all).

    Raises:
        ValueError: naming the file: unreadable or invalid JSON, no known layout, a broken entry,
            column names set for a COCO or Karpathy file (their fields are fixed), a split the
            file does not have, or a split given for a file without splits.
    """
    where = str(path)
    try:
        document = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"dataset file {where!r} is not readable JSON: {exc}") from exc
    except RecursionError:
        raise ValueError(f"dataset file {where!r} nests JSON arrays/objects too deeply to be a dataset") from None
    karpathy = _is_karpathy(document)
    if karpathy or (isinstance(document, dict) and all(key in document for key in _COCO_KEYS)):
        kind, fields = ("a Karpathy split file", "images[].filename and images[].sentences[].raw") if karpathy else \
            ("a COCO captions file", "images[].file_name and annotations[].caption")
        if (columns.image, columns.text) != ("image", "text"):
            raise ValueError(f"dataset file {where!r} is {kind}: its fields are {fields}, so image_column / "
                             "text_column do not apply")
        if karpathy:
            return karpathy_split_table(document, where, split, limit)
        refuse_split(split, f"dataset file {where!r}", kind)
        return coco_captions_table(document, where, limit)
    if isinstance(document, list):
        refuse_split(split, f"dataset file {where!r}", "an array of rows")
        return records_table(document, where, columns, limit)
    found = f"an object with keys {sorted(document)[:12]}" if isinstance(document, dict) else f"a JSON {type(document).__name__}"
    raise ValueError(
        f"dataset file {where!r} is {found}; expected a COCO captions file (an object with 'images' and "
        "'annotations' lists), a Karpathy split file (an object with an 'images' list, each with 'filename', 'split' "
        "and 'sentences') or an array of objects, one per row (e.g. {\"image\": ..., \"text\": ...})"
    )


def _is_karpathy(document: Any) -> bool:
    """Whether a parsed document is a Karpathy split file: an object with a non-empty ``images``
    list whose first entry has ``sentences``, and no COCO ``annotations``."""
    images = document.get("images") if isinstance(document, dict) and "annotations" not in document else None
    return isinstance(images, list) and bool(images) and isinstance(images[0], dict) and "sentences" in images[0]


def _element(index: int) -> str:
    """How a message names the row object at ``index`` of an array of rows."""
    return f"element {index}"


def coco_captions_table(document: dict[str, Any], where: str, limit: int | None = None) -> pa.Table:
    """A parsed COCO captions document as the table layout (module docstring): one row per
    image (the first ``limit`` images, or all), captions as a list. ``where`` names the file."""
    images, annotations = document["images"], document["annotations"]
    for key, value in (("images", images), ("annotations", annotations)):
        if not isinstance(value, list):
            raise ValueError(f"dataset file {where!r}: '{key}' is a JSON {type(value).__name__}, not a list")
    ids: list[str] = []
    files: list[Any] = []
    captions: dict[str, list[str]] = {}
    for index, image in enumerate(images):
        image_id = _coco_id(image, "id", f"images[{index}]", where)
        if image_id in captions:
            raise ValueError(f"dataset file {where!r}: images[{index}] repeats image id {image_id!r}")
        if "file_name" not in image:
            raise ValueError(f"dataset file {where!r}: images[{index}] (id {image_id!r}) has no 'file_name'")
        ids.append(image_id)
        files.append(image["file_name"])
        captions[image_id] = []
    unknown: list[tuple[int, str]] = []
    for index, annotation in enumerate(annotations):
        image_id = _coco_id(annotation, "image_id", f"annotations[{index}]", where)
        caption = annotation.get("caption")
        if not isinstance(caption, str):
            raise ValueError(f"dataset file {where!r}: annotations[{index}] 'caption' is "
                             f"{_shown_field(annotation, 'caption')}, not a string")
        if image_id in captions:
            captions[image_id].append(caption)
        else:
            unknown.append((index, image_id))
    if unknown:
        index, image_id = unknown[0]
        raise ValueError(f"dataset file {where!r}: {len(unknown)} annotation(s) name no image of 'images' "
                         f"(first: annotations[{index}], image_id {image_id!r})")
    ids, files = ids[:limit], files[:limit]
    try:
        image_column = pa.array(files, pa.string())
    except (pa.ArrowException, TypeError) as exc:
        raise ValueError(f"dataset file {where!r}: every images[].file_name must be a string ({exc})") from exc
    except UnicodeEncodeError:
        raise _surrogate_error(where, "images", files, "file_name") from None
    try:
        id_column = pa.array(ids, pa.string())
    except UnicodeEncodeError:
        raise _surrogate_error(where, "images", ids, "id") from None
    return pa.table({
        "image": image_column,
        "text": _caption_lists([captions[i] for i in ids]),
        "sample_id": id_column,
    })


def _surrogate_error(where: str, entries: str, values: list[Any], key: str, indices: list[int] | None = None
                     ) -> ValueError:
    """The error for a file name or id (``key`` of ``entries[i]``) holding a lone UTF-16 surrogate
    (JSON's ``"\\ud83d"``), which names no file and is no id: it was a bare ``UnicodeEncodeError``
    naming neither the file nor the entry."""
    at = next(i for i, value in enumerate(values) if lone_surrogate(value))
    index = at if indices is None else indices[at]  # the entry's position in the file
    return ValueError(f"dataset file {where!r}: {entries}[{index}] {key!r} {values[at]!r} holds a lone UTF-16 "
                      "surrogate (half of a character cut off?), which is not text")


def karpathy_split_table(document: dict[str, Any], where: str, split: str | None = None,
                         limit: int | None = None) -> pa.Table:
    """A parsed Karpathy split document as the table layout (module docstring): one row per
    image of ``split`` (all when None), the first ``limit`` of them or all, captions as a list.
    ``where`` names the file.

    Raises:
        ValueError: naming the file and entry: ``images`` not a list, an image that is not an
            object or lacks a string ``filename`` or id (or ``split``, when one is chosen), repeats an id, or has
            ``sentences`` that are not a list of objects with a string ``raw``; a ``split`` no
            image has (the message counts the file's images per split).
    """
    images = document["images"]
    if not isinstance(images, list):
        raise ValueError(f"dataset file {where!r}: 'images' is a JSON {type(images).__name__}, not a list")
    per_split: dict[str, int] = {}
    seen: set[str] = set()
    rows: dict[str, list[Any]] = {"image": [], "text": [], "sample_id": [], "index": []}
    for index, image in enumerate(images):
        what = f"images[{index}]"
        image_id = _coco_id(image, "cocoid" if isinstance(image, dict) and "cocoid" in image else "imgid", what, where)
        if image_id in seen:
            raise ValueError(f"dataset file {where!r}: {what} repeats image id {image_id!r}")
        seen.add(image_id)
        name, folder, part = (image.get(key) for key in ("filename", "filepath", "split"))
        for key, value, optional in (("filename", name, False), ("filepath", folder, True), ("split", part, split is None)):
            if not isinstance(value, str) and not (optional and value is None):
                raise ValueError(f"dataset file {where!r}: {what} (id {image_id!r}) '{key}' is "
                                 f"{_shown_field(image, key)}, not a string")
        if part is not None:
            per_split[part] = per_split.get(part, 0) + 1
        if split is not None and part != split:
            continue
        rows["image"].append(f"{folder.rstrip('/')}/{name}" if folder else name)
        rows["text"].append(_karpathy_captions(image, f"{what} (id {image_id!r})", where))
        rows["sample_id"].append(image_id)
        rows["index"].append(index)
    if split is not None and split not in per_split:
        counts = ", ".join(f"{name!r} ({count} images)" for name, count in sorted(per_split.items())) or "none"
        raise ValueError(f"dataset file {where!r} has no image in split {split!r}; its splits: {counts}")
    columns = {}
    for name, key in (("image", "filename"), ("sample_id", "cocoid / imgid")):
        try:
            columns[name] = pa.array(rows[name][:limit], pa.string())
        except UnicodeEncodeError:
            raise _surrogate_error(where, "images", rows[name][:limit], key, rows["index"]) from None
    return pa.table({"image": columns["image"], "text": _caption_lists(rows["text"][:limit]),
                     "sample_id": columns["sample_id"]})


def _karpathy_captions(image: dict[str, Any], what: str, where: str) -> list[str]:
    """The ``raw`` captions of a Karpathy ``image`` entry's ``sentences``, in order."""
    sentences = image.get("sentences")
    if not isinstance(sentences, list):
        raise ValueError(f"dataset file {where!r}: {what} 'sentences' is {_shown_field(image, 'sentences')}, not a list")
    captions = []
    for j, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            raise ValueError(f"dataset file {where!r}: {what} sentences[{j}] has no string 'raw'")
        captions.append(raw)
    return captions


def _shown_field(entry: dict[str, Any], key: str) -> str:
    """What ``entry[key]`` is, for a message: ``missing``, ``null`` or ``a JSON <type>``."""
    if key not in entry:
        return "missing"
    return "null" if entry[key] is None else f"a JSON {type(entry[key]).__name__}"


def _coco_id(entry: Any, key: str, what: str, where: str) -> str:
    """The integer or string id under ``key`` of a COCO entry, as a string."""
    if not isinstance(entry, dict):
        raise ValueError(f"dataset file {where!r}: {what} is a JSON {type(entry).__name__}, not an object")
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        shown = repr(value) if value is not None else _shown_field(entry, key)
        raise ValueError(f"dataset file {where!r}: {what} '{key}' is {shown}; expected an integer or a string")
    return str(value)


#: Row objects turned into Arrow at a time by :class:`RowTable`: the Python objects of one batch
#: are alive at once, not those of a whole file (a JSON Lines table read line by line had taken
#: ~10 times its size).
ROW_BATCH = 8192


def records_table(rows: list[Any], where: str, columns: ColumnMap, limit: int | None,
                  label: Callable[[int], str] = _element) -> pa.Table:
    """Row objects (an array's elements) as a table of the wanted columns (the first ``limit``
    rows); other keys are not read. ``label`` names the row at an index in messages (``element
    3``; ``line 4`` for JSON Lines). A caption holding a lone UTF-16 surrogate makes the caption
    column binary (its UTF-8 bytes), so that only its row is rejected.

    Raises:
        ValueError: naming ``where``: a row that is not an object, no row with the image or
            caption key, a key whose values mix JSON types, an integer beyond 64 bits, an id
            holding a lone surrogate.
    """
    rows = rows[:limit]
    table = RowTable(where, columns, label)
    for start in range(0, len(rows), ROW_BATCH):
        table.add(rows[start:start + ROW_BATCH])
    return table.finish()


class RowTable:
    """The table of :func:`records_table`, built from row objects given a batch at a time
    (:meth:`add`, in order; :meth:`finish`): each batch is kept as Arrow (the wanted keys only), so
    a file read row by row never holds its rows as Python objects all at once. The result, and
    every message, are those of the rows given in one list."""

    def __init__(self, where: str, columns: ColumnMap, label: Callable[[int], str] = _element) -> None:
        self.where, self.columns, self.label = where, columns, label
        self.wanted = columns.wanted()
        self.rows = 0  # rows added so far
        self.present: set[str] = set()  # wanted keys some row has
        self.kinds: dict[str, dict[str, int]] = {}  # key -> JSON kind -> first row holding one
        self.first_keys: set[str] = set()  # every key of the first 100 rows, for a message
        self.binary_text = False  # a caption held a lone surrogate: captions are their UTF-8 bytes
        self.batches: list[pa.Table] = []

    def add(self, rows: list[Any]) -> None:
        """Take the next ``rows`` (row objects); ``ValueError`` for one that is not an object, or a
        batch that Arrow cannot hold (module's messages)."""
        start, text = self.rows, self.columns.text
        kept: list[dict[str, Any]] = []
        for index, row in enumerate(rows, start):
            if not isinstance(row, dict):
                whole = f"{self.label(index)} of the array" if self.label is _element else self.label(index)
                raise ValueError(f"dataset file {self.where!r}: {whole} is a JSON {type(row).__name__}, not an object "
                                 "(one object per row)")
            if index < 100:
                self.first_keys.update(row)
            kept.append({name: row[name] for name in self.wanted if name in row})
            self._refuse_caption_items(kept[-1].get(text), index)
            for name, value in kept[-1].items():
                self.present.add(name)
                if value is not None:
                    self.kinds.setdefault(name, {}).setdefault(_JSON_KINDS.get(type(value), type(value).__name__), index)
        self.rows += len(rows)
        if not kept:
            return
        if self._captions_mixed():  # a string beside lists is a list of one (earlier batches: finish)
            kept = [{**row, text: [row[text]]} if isinstance(row.get(text), str) else row for row in kept]
        if any(lone_surrogate(row.get(text)) for row in kept):  # captions as their (invalid) UTF-8 bytes
            self.binary_text = True
            kept = [{**row, text: _utf8_bytes(row[text])} if text in row else row for row in kept]
        names = self.wanted  # every one, so that a batch whose rows have none still has its rows

        def label(index: int) -> str:  # the batch's row at ``index``, as the file's
            return self.label(start + index)

        try:
            self.batches.append(pa.Table.from_pylist([{name: row.get(name) for name in names} for row in kept]))
        except UnicodeEncodeError as exc:
            raise ValueError(f"dataset file {self.where!r}: a value holds a lone UTF-16 surrogate "
                             f"({exc.object[exc.start:exc.end]!r}: half of a character cut off?), which is not text") from exc
        except OverflowError as exc:  # a JSON integer beyond 64 bits (Python reads any size)
            raise ValueError(f"dataset file {self.where!r}: {_big_integer(kept, names, label)}: write an id that large "
                             "as a string") from exc
        except (pa.ArrowException, TypeError) as exc:
            raise ValueError(f"dataset file {self.where!r}: {self._mixed_key()} ({exc})") from exc

    def _refuse_caption_items(self, value: Any, index: int) -> None:
        """``ValueError`` naming the row at ``index``, the caption key and the item when ``value``
        (its caption) is a list holding an item that is neither a string nor null: Arrow's
        "Expected bytes, got a 'list' object" had been told as "a key mixes value types"."""
        if not isinstance(value, list):
            return
        for item, caption in enumerate(value):
            if caption is not None and not isinstance(caption, str):
                kind = _JSON_KINDS.get(type(caption), type(caption).__name__)
                raise ValueError(f"dataset file {self.where!r}: {self.label(index)} key {self.columns.text!r} is a list of "
                                 f"captions whose item {item} is a JSON {kind}, not a string")

    def finish(self) -> pa.Table:
        """The rows added, as one table (canonical column names); ``ValueError`` when no row has
        the image or caption key, or a key's values in different batches mix JSON types."""
        missing = [name for name in (self.columns.image, self.columns.text) if name not in self.present]
        if missing:
            hint = "" if (self.columns.image, self.columns.text) != ("image", "text") else " (name others with image_column / text_column; --image-column / --text-column on the command line)"
            raise ValueError(f"dataset file {self.where!r}: no row has the required key(s) {missing}; keys read: "
                             f"{sorted(self.first_keys)[:20]}{hint}")
        batches = [self._text_as_lists(batch) for batch in self.batches] if self._captions_mixed() else self.batches
        batches = [self._text_as_bytes(batch) for batch in batches] if self.binary_text else batches
        try:  # a key missing from a batch, or null in all its rows, takes the type of the others
            table = pa.concat_tables(batches, promote_options="permissive")
        except (pa.ArrowException, TypeError) as exc:
            raise ValueError(f"dataset file {self.where!r}: {self._mixed_key()} ({exc})") from exc
        return self.columns.canonical(table.select([name for name in self.wanted if name in self.present]))

    def _captions_mixed(self) -> bool:
        """Whether the caption key holds a string in some row and an array (a list of captions) in
        another so far: each string is then read as a list of one caption, which the ``captions``
        policy takes as any list (a caption of another JSON type is still refused: `_mixed_key`)."""
        return {"string", "array"} <= self.kinds.get(self.columns.text, {}).keys()

    def _text_as_lists(self, batch: pa.Table) -> pa.Table:
        """``batch`` with its single captions (text, or the UTF-8 bytes of one with a lone
        surrogate) as lists of one, a null caption staying null, as a batch kept after the first
        list has them; a batch of lists (or without captions) as it is."""
        name = self.columns.text
        if name not in batch.column_names:
            return batch
        kind = batch.schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_binary(kind)):
            return batch
        lists = pa.array([None if value is None else [value] for value in batch.column(name).to_pylist()], pa.list_(kind))
        return batch.set_column(batch.column_names.index(name), name, lists)

    def _text_as_bytes(self, batch: pa.Table) -> pa.Table:
        """``batch`` with its text captions (or lists of them) as their UTF-8 bytes, as a batch
        holding a caption with a lone surrogate has them."""
        name = self.columns.text
        if name not in batch.column_names:
            return batch
        kind = batch.schema.field(name).type
        if pa.types.is_string(kind):
            kind = pa.binary()
        elif pa.types.is_list(kind) and pa.types.is_string(kind.value_type):
            kind = pa.list_(kind.value_field.with_type(pa.binary()))
        else:
            return batch
        return batch.set_column(batch.column_names.index(name), name, batch.column(name).cast(kind))

    def _mixed_key(self) -> str:
        """Which wanted key's values mix JSON types, and where each kind is first met."""
        for name in [name for name in self.wanted if name in self.present]:
            kinds = dict(self.kinds.get(name, {}))
            if name == self.columns.text and self._captions_mixed():  # strings and lists go together
                del kinds[max(("string", "array"), key=kinds.__getitem__)]
            if len(kinds) > 1:
                (first, at_first), (second, at) = sorted(kinds.items(), key=lambda item: item[1])[:2]
                return f"key {name!r} mixes JSON {first} ({self.label(at_first)}) and {second} ({self.label(at)}) values"
        return "a key mixes value types"


#: The integers an Arrow column of Python ints takes: ``pa.Table.from_pylist`` infers ``int64``, so
#: 2**63 to 2**64 - 1 overflow too (they had been taken for unsigned, the message "a value is an integer").
_INT64_RANGE = (-2**63, 2**63 - 1)


def _big_integer(rows: list[dict[str, Any]], names: list[str], label: Callable[[int], str] = _element) -> str:
    """Where the row objects hold an integer that no Arrow integer column of them takes
    (:data:`_INT64_RANGE`): ``element 1 key 'sample_id' is the integer 18446744073709551615, outside
    the range of a 64-bit integer (-9223372036854775808 to 9223372036854775807)``."""
    low, high = _INT64_RANGE
    limit = f"outside the range of a 64-bit integer ({low} to {high})"
    for index, row in enumerate(rows):
        for name in names:
            value = row.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
                return f"{label(index)} key {name!r} is the integer {value}, {limit}"
    return f"an integer is {limit}"


def _caption_lists(lists: list[list[str]]) -> pa.Array:
    """Caption lists as ``list<string>``; as ``list<binary>`` (each caption's UTF-8 bytes) when one
    holds a lone UTF-16 surrogate (JSON's ``"\\ud83d"``: half of an emoji cut off), which no
    string column takes: its bytes are not valid UTF-8, so only its row is rejected
    (``text_not_utf8``), as a binary caption of invalid UTF-8 is."""
    if any(lone_surrogate(captions) for captions in lists):
        return pa.array([_utf8_bytes(captions) for captions in lists], pa.list_(pa.binary()))
    return pa.array(lists, pa.list_(pa.string()))


def lone_surrogate(value: Any) -> bool:
    """Whether ``value`` (text, or a list of them) holds a character that UTF-8 cannot encode."""
    if isinstance(value, list):
        return any(lone_surrogate(item) for item in value)
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _utf8_bytes(value: Any) -> Any:
    """Text (or a list of them) as UTF-8 bytes, a lone surrogate as the 3 bytes it would take."""
    if isinstance(value, list):
        return [_utf8_bytes(item) for item in value]
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
