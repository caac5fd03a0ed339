"""Hugging Face datasets as paired image–caption data, read with pyarrow (no ``datasets`` package).

Where the data comes from (``source``):

- a hub dataset id (``minhuh/prh``, the paper's data, at ``revision`` ``wit_1024``): its Parquet
  and Arrow files (every split's, once) are fetched into the Hugging Face hub cache with
  ``huggingface_hub``, or taken from that cache when the machine is offline (``HF_HUB_OFFLINE=1``,
  or the hub unreachable);
- a local folder: a copy of a dataset repository (Parquet or Arrow data files, any depth), or a
  folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

Which files hold ``split``: a ``save_to_disk`` folder lists them (``state.json``; a
``dataset_dict.json`` names the split folders). In a repository folder the hub's own layout
decides first: a file is ``split``'s when a folder is named exactly ``split``, or its name is
``{split}-00000-of-00002.parquet`` (the hub's shards, ``data/test_hard-*`` is ``test_hard``'s,
never ``test``'s; ``default/validation_unseen/0000.parquet`` is ``validation_unseen``'s), or
``{split}.parquet`` / ``{split}-0000.parquet``. Only when no file is named so does a word of the
path (words split at ``-``, ``_``, ``.`` and spaces) or a usual alias (``training``; ``valid``,
``val``, ``dev``; ``testing``, ``eval``) match, so ``plain_text/imdb-train.parquet`` is ``train``'s
and ``data/eval-*`` is ``test``'s when no ``data/test-*`` exists; a word never pulls in a file
the hub's layout gives to another split. Files that name no split at all form the ``train``
split (unless the hub's layout names several). An unknown split's error lists the splits found by their whole names. The hub's Parquet
conversion of a dataset with several configs (``<config>/<split>/NNNN.parquet``) is refused
naming them: give one config's folder. A ``save_to_disk`` folder of one Dataset is read only as
the split its ``state.json`` records, or, a split folder of a ``DatasetDict`` (``dd/test``), as
that split; with ``split`` unset it is read as that split. One that records no split (``_split``
null) is read only as the default, ``train``. A saved Dataset of 0 rows is refused as such.
The README's ``configs:`` list is not read.
Shards are read in path order and their rows kept in that order.

Columns: ``image_column`` (default ``image``) holds the ``datasets`` Image layout
(``struct<bytes, path>``), encoded bytes, or a path relative to its own data file (inside the
folder of the data files read; from the hub, the image files the rows read name are fetched after the data files,
only those, and the snapshot's links into the hub cache's ``blobs/`` are followed); ``text_column``
(default ``text``) a caption, or a list of captions per image (also a fixed-length list): ``captions="first"`` keeps the
first (what the paper's code does), ``"all"`` makes one row per caption, all linked to their image.
Optional ``sample_id`` and ``image_id`` columns are kept; without them ids are derived from the
content (:mod:`tasks.data.tables`). ``n`` keeps the first ``n`` rows of the split (before
captions are expanded); reading stops there, so later shards are never opened. Every record
then goes through the same checks as any other table.
"""

from __future__ import annotations

import glob
import logging
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.data.sources import (METADATA_FILES, Captions, ColumnMap, RawRecord, head_of, plain_encodings, read_parquet_head,
                                records_with_captions)
from tasks.data.tables import LoadResult, validate_records

__all__ = ["HubDataset", "load_hf_dataset", "read_hf_dataset", "resolve_source", "split_files", "split_of"]

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".parquet", ".arrow")
# The files a dataset snapshot needs: data, and the JSON that describes a save_to_disk folder. Image
# files the rows name by path are fetched afterwards, those only (_fetch_image_files): not every
# image of a repository (an ImageFolder repository has no data files to read and is refused).
HUB_PATTERNS = ["*.parquet", "*.arrow", "*.json"]
#: At most this many image files are fetched by name; more are fetched by their folders (``images/*``).
MAX_IMAGE_PATTERNS = 1000
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


@dataclass(frozen=True)
class HubDataset:
    """A dataset's local folder and where it came from (recorded in the dataset manifest)."""

    root: Path
    provenance: dict[str, Any] = field(default_factory=dict)


def resolve_source(source: str, revision: str | None = None, patterns: list[str] | None = None) -> HubDataset:
    """The local folder of ``source``: an existing folder as it is, else a hub dataset id fetched
    into (or found in) the hub cache at ``revision`` (a branch, tag or commit; default ``main``):
    the files matching ``patterns`` (default ``HUB_PATTERNS``: data files and JSON).

    Raises:
        ValueError: naming the source and revision: no such folder and not a valid hub id; the
            dataset or revision does not exist; offline and not in the cache (with the cache path).
    """
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"Hugging Face dataset {source!r} is a file; expected a dataset folder or a hub id "
                             "(a single Parquet/CSV table is dataset kind 'path')")
        if revision:
            raise ValueError(f"Hugging Face dataset {source!r} is a local folder: revision {revision!r} does not apply")
        return HubDataset(local.resolve(), {"local_path": str(local.resolve())})
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ValueError(f"Hugging Face dataset {source!r}: no such folder ({local.absolute()}) and not a hub id "
                         "(expected 'name' or 'org/name')") from None

    where = f"Hugging Face dataset {source!r} at revision {revision or 'main'!r}"
    nor_local = f"; nor is there a local folder {local.absolute()}"
    try:
        folder = snapshot_download(source, repo_type="dataset", revision=revision, allow_patterns=patterns or HUB_PATTERNS)
    except GatedRepoError:
        raise ValueError(f"{where}: the dataset is gated; accept its terms on the hub and log in (HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ValueError(f"{where}: no such revision on the hub (a branch, tag or commit of the dataset)") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{where}: no such dataset on the hub (or it is private: log in with HF_TOKEN){nor_local}") from None
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise ValueError(f"{where}: {how} and it is not in the local hub cache ({constants.HF_HUB_CACHE}){nor_local}; "
                         "fetch it on a connected machine, or copy the dataset folder here and give its path") from None
    except HFValidationError as error:
        raise ValueError(f"{where}: not a valid hub id or revision: {error}") from None
    except (HfHubHTTPError, OSError) as error:
        raise ValueError(f"{where}: could not be fetched: {type(error).__name__}: {error}") from None
    root = Path(folder)
    return HubDataset(root, {"hub_id": source, "revision": revision or "main", "commit": root.name})


# ------------------------------------------------------------------------------------------ splits


def _words(relative: Path) -> set[str]:
    """Folder names, the file's stem, and their words (split at ``-``, ``_``, ``.``, spaces), lower case."""
    words: set[str] = set()
    for part in (*relative.parent.parts, relative.name.rsplit(".", 1)[0]):
        words.update(w.lower() for w in re.split(r"[-_. ]+", part) if w)
        words.add(part.lower())
    return words


def _split_of(relative: Path) -> set[str]:
    """The usual splits a data file's relative path names."""
    words = _words(relative)
    return {split for split, aliases in SPLIT_ALIASES.items() if words & set(aliases)}


#: The hub's file name of a split's shard: ``{split}-00000-of-00002`` (``push_to_hub`` may add ``-<hash>``).
_SHARD_NAME = re.compile(r"(?P<split>.+?)-\d+-of-\d+(?:-[^/]*)?")


def _layout_name(relative: Path) -> str | None:
    """The split the hub's own layout gives a data file: ``data/{split}-00000-of-00001.parquet``
    (any folder), or a numbered shard in a split folder (the Parquet conversion's
    ``{config}/{split}/0000.parquet``); None for other names."""
    stem = relative.name.rsplit(".", 1)[0]
    shard = _SHARD_NAME.fullmatch(stem)
    if shard:
        return shard["split"]
    if stem.isdigit() and len(relative.parts) >= 2:
        return relative.parent.name
    return None


def _exactly_of(relative: Path, split: str) -> bool:
    """Whether a data file is ``split``'s by its exact name: a folder named ``split``, its hub
    layout name (:func:`_layout_name`), or, for other file names, a stem that is ``split`` or
    ``split`` followed by a shard number (``train-0000``, ``train.1``, ``train_2``). Case is ignored."""
    wanted = split.lower()
    if wanted in (part.lower() for part in relative.parent.parts):
        return True
    layout = _layout_name(relative)
    if layout is not None:
        return layout.lower() == wanted  # test_hard-00000-of-00001 is test_hard's, not test's
    stem = relative.name.rsplit(".", 1)[0].lower()
    return stem == wanted or re.fullmatch(re.escape(wanted) + r"[-._]\d.*", stem) is not None


def _loosely_of(relative: Path, split: str, by_alias: bool) -> bool:
    """Whether a data file is ``split``'s by a word of its path (``by_alias``: by one of the usual
    split's aliases, ``eval`` for ``test``) -- unless its hub layout name is another split's: a
    layout name counts only for a usual split, when its last word is that split or (``by_alias``)
    an alias (``imdb-train`` is ``train``'s; ``test_hard`` and ``validation_unseen`` are splits
    of their own, not ``test``'s, ``hard``'s or ``validation``'s)."""
    usual = split.lower() in SPLIT_ALIASES
    names = {split.lower(), *SPLIT_ALIASES.get(split.lower(), ())} if by_alias else {split.lower()}
    layout = _layout_name(relative)
    if layout is not None and not (usual and re.split(r"[-_. ]+", layout.lower())[-1] in names):
        return False
    return split in _split_of(relative) if by_alias else split.lower() in _words(relative)


def _split_names(relatives: list[Path]) -> list[str]:
    """The splits of a repository folder's data files, for a message: each file's hub layout name,
    else the usual splits its words name; ``train`` when none names any."""
    names: set[str] = set()
    for relative in relatives:
        layout = _layout_name(relative)
        names.update({layout} if layout is not None else _split_of(relative))
    return sorted(names) or ["train"]


def _saved_split_files(root: Path, split: str | None) -> tuple[list[Path], str] | None:
    """Data files of ``split`` in a ``save_to_disk`` folder and the split's name (``split``, or
    when None the split the folder records, else ``train``); None if ``root`` is not one."""
    if (root / "dataset_dict.json").is_file():
        splits = _dict_splits(root)
        split = split or "train"
        if split not in splits:
            raise ValueError(f"Hugging Face dataset {str(root)!r} has no split {split!r}; its splits: {', '.join(map(str, splits))}")
        return _saved_split_files(root / split, split)
    if not (root / "state.json").is_file():
        return None
    state = _json(root / "state.json")
    recorded = _recorded_split(root, state)
    if recorded is not None and split is not None and recorded != split:  # one Dataset, saved from one split
        raise ValueError(f"Hugging Face dataset {str(root)!r} is one saved split, {recorded!r} (state.json), not {split!r}: "
                         f"set split: {recorded}")
    if recorded is None and split not in (None, "train"):
        raise ValueError(f"Hugging Face dataset {str(root)!r} is one saved Dataset that records no split (state.json "
                         f"_split is null), so it has no split {split!r}: leave split unset to read it (as 'train')")
    split = recorded or "train"
    entries = state.get("_data_files")
    if entries == []:  # save_to_disk of 0 rows writes no data file
        raise ValueError(f"Hugging Face dataset {str(root)!r}, split {split!r}, has 0 rows (state.json lists no data files)")
    names = [entry.get("filename") if isinstance(entry, dict) else None for entry in entries or []]
    if not names or not all(isinstance(n, str) and n and "/" not in n and "\\" not in n and n != ".." for n in names):
        raise ValueError(f"Hugging Face dataset {str(root)!r}: state.json lists no usable data files (_data_files)")
    files = [root / n for n in names]
    missing = [n for n, f in zip(names, files) if not f.is_file()]
    if missing:
        raise ValueError(f"Hugging Face dataset {str(root)!r}: data file(s) listed in state.json are missing: {', '.join(missing)}")
    return files, split


def _dict_splits(folder: Path) -> list[str]:
    """The splits a ``DatasetDict.save_to_disk`` folder lists (``dataset_dict.json``), else its
    sub-folders holding a ``state.json``."""
    listed = _json(folder / "dataset_dict.json").get("splits")
    return listed or sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())


def _recorded_split(root: Path, state: dict[str, Any]) -> str | None:
    """The split a saved Dataset folder records: ``_split`` of its ``state.json``, else its
    folder name when it is a split folder of a ``DatasetDict`` (the parent's
    ``dataset_dict.json`` lists it); None when neither says."""
    recorded = state.get("_split")
    if isinstance(recorded, str) and recorded:
        return recorded
    if (root.parent / "dataset_dict.json").is_file() and root.name in _dict_splits(root.parent):
        return root.name
    return None


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Hugging Face dataset file {str(path)!r} is not readable JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"Hugging Face dataset file {str(path)!r}: expected a JSON object")
    return value


#: What to do about a hub dataset without Parquet/Arrow files (ImageFolder, CSV, a loading script).
CONVERTED_HINT = ("; the hub keeps a Parquet conversion of every public dataset: read revision 'refs/convert/parquet' "
                  "(prh run --dataset hf://datasets/ORG/NAME@refs%2Fconvert%2Fparquet)")


def split_files(root: Path, split: str | None = "train", hub: bool = False) -> list[Path]:
    """The data files (``.parquet``/``.arrow``) of ``split`` under ``root``, in path order
    (:func:`split_of` says which split None reads).

    Raises:
        ValueError: as :func:`split_of`.
    """
    return split_of(root, split, hub)[0]


def split_of(root: Path, split: str | None = None, hub: bool = False) -> tuple[list[Path], str]:
    """The data files (``.parquet``/``.arrow``) of ``split`` under ``root``, in path order, and the
    split's name: ``split``, or when None the split a ``save_to_disk`` folder records (a split
    folder of a DatasetDict is that split), else ``train``. ``hub``: ``root`` is a hub snapshot
    (an error without data files then names the hub's Parquet conversion).

    Raises:
        ValueError: no data files at all, or none of ``split`` (listing the splits present).
    """
    saved = _saved_split_files(root, split)
    if saved is not None:
        return saved
    split = split or "train"
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in DATA_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not found:
        hint = CONVERTED_HINT if hub else ""
        if any((root / name).is_file() for name in METADATA_FILES):
            hint = "; it is an ImageFolder (images and a metadata table): read it with dataset kind 'path'"
        raise ValueError(f"Hugging Face dataset {str(root)!r} holds no data files ({', '.join(DATA_SUFFIXES)}) "
                         f"and is not a save_to_disk folder{hint}")
    chosen = _chosen(root, found, split)
    configs = sorted({p.relative_to(root).parts[0] for p in chosen if len(p.relative_to(root).parts) >= 3})
    if len(configs) > 1 and all(len(p.relative_to(root).parts) >= 3 for p in chosen):  # <config>/<split>/NNNN.parquet
        raise ValueError(f"Hugging Face dataset {str(root)!r} holds several configs with a split {split!r}: "
                         f"{', '.join(configs)}; give one config's folder as the dataset (e.g. {str(root / configs[0])!r})")
    if not chosen:
        raise ValueError(f"Hugging Face dataset {str(root)!r} has no files of split {split!r}; splits found: "
                         f"{', '.join(_split_names([p.relative_to(root) for p in found]))} (files are matched by folder "
                         "or file name, e.g. data/train-00000-of-00001.parquet)")
    return chosen, split


def _chosen(root: Path, found: list[Path], split: str) -> list[Path]:
    """The files of ``split`` among a repository folder's data files ``found``: those named
    exactly for it (the hub's layout); when there are none, those with a word of their path that
    is ``split``, else those naming one of its aliases (never files whose hub layout name is
    another split's); when no file names a split at all, every file is ``train``'s (unless the
    hub layout gives them several split names)."""
    relative = {p: p.relative_to(root) for p in found}
    for matches in (lambda r: _exactly_of(r, split), lambda r: _loosely_of(r, split, by_alias=False),
                    lambda r: _loosely_of(r, split, by_alias=True)):
        chosen = [p for p in found if matches(relative[p])]
        if chosen:
            return chosen
    unnamed = not any(_split_of(r) for r in relative.values()) and len({_layout_name(r) for r in relative.values()} - {None}) <= 1
    return found if split == "train" and unnamed else []


# ------------------------------------------------------------------------------------------- rows


def _read_file(path: Path, columns: list[str], limit: int | None = None) -> tuple[pa.Table, list[str]]:
    """A data file's ``columns`` (those it has), its first ``limit`` rows (all when None; reading
    stops at the batch that reaches them), and the names of all its columns. Parquet, or
    Arrow IPC (stream, as ``datasets`` writes it, or file format)."""
    try:
        if path.suffix.lower() == ".parquet":
            names = pq.read_schema(path).names
            return read_parquet_head(path, [c for c in columns if c in names], limit), names
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                file_reader = pa.ipc.open_file(source)
                batches = [file_reader.get_batch(i) for i in range(file_reader.num_record_batches)]
                table = pa.Table.from_batches(batches, schema=file_reader.schema)
            else:
                table = head_of(reader, reader.schema, limit)
        return table.select([c for c in columns if c in table.column_names]), table.column_names
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"Hugging Face dataset file {str(path)!r} could not be read: {error}") from None


def read_hf_dataset(
    source: str,
    revision: str | None = None,
    split: str | None = None,
    image_column: str = "image",
    text_column: str = "text",
    captions: Captions = "first",
    n: int | None = None,
) -> tuple[list[RawRecord], Path, dict[str, Any]]:
    """Raw records of a Hugging Face dataset (rules: module docstring), the folder that relative
    image paths are read from, and the provenance (hub id, revision, commit, split, files).
    ``split`` None: the split a ``save_to_disk`` folder records, else ``train``.

    Raises:
        ValueError: naming the dataset: it cannot be found or fetched, has no such split, lacks
            ``image_column``/``text_column``, or a column has a type the table layout refuses.
    """
    columns = ColumnMap(image_column, text_column, captions)
    dataset = resolve_source(source, revision)
    files, split = split_of(dataset.root, split, hub="hub_id" in dataset.provenance)
    wanted = columns.wanted()
    tables, rows = [], 0
    for path in files:
        if n is not None and rows >= n:
            break  # the first n rows are read: later shards are not opened
        table, names = _read_file(path, wanted, None if n is None else n - rows)
        rows += table.num_rows
        missing = [c for c in (image_column, text_column) if c not in names]
        if missing:
            raise ValueError(f"Hugging Face dataset {source!r}, split {split!r}: file {path.relative_to(dataset.root)} lacks "
                             f"column(s) {missing}; it has {names} (set image_column / text_column)")
        tables.append(plain_encodings(table))  # dictionary/view encodings as values: shards then agree, paths rebase
    read = files[:len(tables)]
    folder = Path(os.path.commonpath([str(p.parent) for p in read]))  # image paths are relative to their own file
    tables = [_rebase_image_paths(t, image_column, p.parent.relative_to(folder)) for t, p in zip(tables, read)]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as error:
        first = tables[0].schema
        other = next((p for t, p in zip(tables, read) if not t.schema.equals(first)), read[-1])
        raise ValueError(f"Hugging Face dataset {source!r}, split {split!r}: the columns of {other.relative_to(dataset.root)} "
                         f"do not agree with those of {read[0].relative_to(dataset.root)}: {error}") from None
    if n is not None:
        table = table.slice(0, n)
    if "hub_id" in dataset.provenance:
        _fetch_image_files(source, dataset, folder, table, image_column)
    records = records_with_captions(columns.canonical(table), f"{source} ({split})", captions, columns=columns)  # as load_hf_dataset names it
    provenance = {**dataset.provenance, "split": split, "captions": captions, "n": n,
                  "files": [p.relative_to(dataset.root).as_posix() for p in read]}
    return records, folder, provenance


def _image_paths(table: pa.Table, column: str) -> list[str]:
    """The image paths of ``column`` that name a file to read: path strings, and the paths of
    image structs whose ``bytes`` are null (not absolute, not empty)."""
    if column not in table.column_names:
        return []
    kind = table.schema.field(column).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        paths = table.column(column).to_pylist()
    elif pa.types.is_struct(kind) and {"bytes", "path"} <= {f.name for f in kind}:
        paths = [v.get("path") for v in table.column(column).to_pylist() if v is not None and v.get("bytes") is None]
    else:
        return []
    return [p for p in paths if isinstance(p, str) and p and not os.path.isabs(p)]


def _fetch_image_files(source: str, dataset: HubDataset, folder: Path, table: pa.Table, column: str) -> None:
    """Fetch into the hub snapshot the image files that rows of a hub dataset name by path and the
    snapshot lacks (only data files are fetched first: a repository's images are fetched only
    when its rows name them, and only those). From the same commit; offline, the cache's copies
    are used and a file not there is the row's ``image_missing``."""
    wanted = set()
    for path in _image_paths(table, column):
        normal = os.path.normpath(path)
        if normal == os.pardir or normal.startswith(os.pardir + os.sep):
            continue  # a path leading outside the folder is refused by the checks, never fetched
        inside = (folder.relative_to(dataset.root) / normal).as_posix()
        try:
            if not (dataset.root / inside).exists():
                wanted.add(inside)
        except (ValueError, OSError):
            continue  # a path that names no file (a NUL, a name too long): the checks say so
    by_folder = len(wanted) > MAX_IMAGE_PATTERNS  # the hub client matches every repository file against every pattern
    patterns = {glob.escape(os.path.dirname(p)) + "/*" if by_folder and os.path.dirname(p) else glob.escape(p) for p in wanted}
    if patterns:
        try:
            resolve_source(source, dataset.provenance["commit"], sorted(patterns))
        except ValueError as error:  # offline, or the hub refused: the files not there are their rows' image_missing
            logger.warning("%s: the image files its rows name could not all be fetched (%s); rows whose file is not in the "
                           "hub cache are rejected as image_missing", source, error)


def _hub_cache_folder(folder: Path) -> Path | None:
    """The hub cache folder (``<cache>/datasets--ORG--NAME``, whose ``blobs/`` a snapshot's files
    are links to) when ``folder`` lies in a snapshot of it (``snapshots/<commit>/``: a hub id, or
    such a folder given as a local path), else None."""
    for snapshot in (folder, *folder.parents):
        repo = snapshot.parent.parent
        if snapshot.parent.name == "snapshots" and repo.name.startswith("datasets--") and (repo / "blobs").is_dir():
            return repo
    return None


def _rebase_image_paths(table: pa.Table, column: str, prefix: Path) -> pa.Table:
    """``table`` with the relative image paths of ``column`` (a path string, or an image struct
    whose ``bytes`` are null) prefixed by ``prefix``: the file's folder relative to the folder all
    paths are read from. Absolute paths and embedded bytes stay as they are."""
    if prefix == Path(".") or column not in table.column_names:
        return table
    kind = table.schema.field(column).type
    values = table.column(column).to_pylist()

    def rebased(path: Any) -> Any:
        return (prefix / path).as_posix() if isinstance(path, str) and path and not Path(path).is_absolute() else path

    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        new = pa.array([rebased(v) for v in values], kind)
    elif pa.types.is_struct(kind) and "path" in [f.name for f in kind]:
        new = pa.array([v if v is None or v.get("bytes") is not None else {**v, "path": rebased(v.get("path"))}
                        for v in values], kind)
    else:
        return table
    return table.set_column(table.column_names.index(column), column, new)


def load_hf_dataset(source: str, **options: Any) -> tuple[LoadResult, dict[str, Any]]:
    """``read_hf_dataset(source, **options)``'s records checked like any table
    (``tasks.data.tables``): the valid rows, every refused one with its reason, and the provenance.

    Raises:
        ValueError: as ``read_hf_dataset``, or fewer than 2 valid rows.
    """
    records, root, provenance = read_hf_dataset(source, **options)
    links = _hub_cache_folder(root)  # a hub snapshot's image files are links into the cache's blobs/
    return validate_records(records, root, f"{source} ({provenance['split']})", links_within=links,
                            outside_advice=OUTSIDE_ADVICE), provenance


#: What a Hugging Face dataset's user can do about an absolute image path outside its folder
#: (``images.read_image_file``'s ``outside_advice``): ``DatasetParams`` refuses its ``image_root``.
OUTSIDE_ADVICE = ("a Hugging Face dataset takes no image_root: keep its images as image bytes in the image column, or as "
                  "files inside its folder named by paths relative to their data file")
