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

A document that is neither, that is not valid UTF-8 JSON, or whose structure is broken (an image
without ``file_name``, two images with one ``id``, an annotation naming no image, a caption that
is not a string) makes the file unreadable, with a message naming the file and the entry; the
usual row checks (missing or unreadable image files, empty captions ...) come later and reject
single rows only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.data.sources import ColumnMap

__all__ = ["coco_captions_table", "read_json_table"]

_COCO_KEYS = ("images", "annotations")


def read_json_table(path: Path, columns: ColumnMap, limit: int | None = None) -> pa.Table:
    """The ``.json`` document at ``path`` as a table with columns ``image``, ``text`` (a string,
    or a list of strings) and, when given, ``sample_id`` / ``image_id``; the first ``limit`` rows
    (images of a COCO file) or all.

    Raises:
        ValueError: naming the file: unreadable or invalid JSON, neither layout, a broken entry,
            or column names set for a COCO file (its fields are fixed).
    """
    where = str(path)
    try:
        document = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"dataset file {where!r} is not readable JSON: {exc}") from exc
    if isinstance(document, dict) and all(key in document for key in _COCO_KEYS):
        if (columns.image, columns.text) != ("image", "text"):
            raise ValueError(f"dataset file {where!r} is a COCO captions file: its fields are images[].file_name and "
                             "annotations[].caption, so image_column / text_column do not apply")
        return coco_captions_table(document, where, limit)
    if isinstance(document, list):
        return _records_table(document, where, columns, limit)
    found = f"an object with keys {sorted(document)[:12]}" if isinstance(document, dict) else f"a JSON {type(document).__name__}"
    raise ValueError(
        f"dataset file {where!r} is {found}; expected a COCO captions file (an object with 'images' and "
        "'annotations' lists) or an array of objects, one per row (e.g. {\"image\": ..., \"text\": ...})"
    )


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
                             f"{'missing' if caption is None else 'a JSON ' + type(caption).__name__}, not a string")
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
    return pa.table({
        "image": image_column,
        "text": pa.array([captions[i] for i in ids], pa.list_(pa.string())),
        "sample_id": pa.array(ids, pa.string()),
    })


def _coco_id(entry: Any, key: str, what: str, where: str) -> str:
    """The integer or string id under ``key`` of a COCO entry, as a string."""
    if not isinstance(entry, dict):
        raise ValueError(f"dataset file {where!r}: {what} is a JSON {type(entry).__name__}, not an object")
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"dataset file {where!r}: {what} '{key}' is {'missing' if value is None else repr(value)}; "
                         "expected an integer or a string")
    return str(value)


def _records_table(rows: list[Any], where: str, columns: ColumnMap, limit: int | None) -> pa.Table:
    """An array of row objects as a table of the wanted columns (the first ``limit`` rows)."""
    rows = rows[:limit]
    wanted = columns.wanted()
    present: list[str] = []
    kept: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"dataset file {where!r}: element {index} of the array is a JSON {type(row).__name__}, "
                             "not an object (one object per row)")
        kept.append({name: row[name] for name in wanted if name in row})
        present.extend(name for name in kept[-1] if name not in present)
    missing = [name for name in (columns.image, columns.text) if name not in present]
    if missing:
        hint = "" if (columns.image, columns.text) != ("image", "text") else " (name others with image_column / text_column)"
        raise ValueError(f"dataset file {where!r}: no row has the required key(s) {missing}; keys read: "
                         f"{sorted({k for row in rows[:100] if isinstance(row, dict) for k in row})[:20]}{hint}")
    names = [name for name in wanted if name in present]
    try:
        table = pa.Table.from_pylist([{name: row.get(name) for name in names} for row in kept])
    except (pa.ArrowException, TypeError) as exc:
        raise ValueError(f"dataset file {where!r}: a column mixes value types ({exc})") from exc
    return columns.canonical(table)
