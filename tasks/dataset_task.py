"""Prefect task: load and validate a paired dataset, publish it as a content-addressed version.

Rows the loader refuses are counted in the log (per reason, with their ids) and stored beside
the samples as ``rejected.parquet``. A dataset with too few valid rows (fewer than 2, or fewer
than the alignment parameters need when they are given) is an error raised before anything is
written, so a failed load leaves the store as it was.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task

from storage import layout
from storage.store import Store
from storage.versioning import ID_LENGTH, code_version, content_id, table_digest
from tasks.no_results import TASK_OPTIONS
from tasks.params import AlignmentParams, DatasetParams
from tasks.retries import backoff, retry_transient
from tasks.task_attempts import noting_failed_attempts
from tasks.shown_text import for_terminal
from tasks.why_dataset import why_new_dataset

DATASET_COLUMNS = ["sample_id", "image_id", "text", "image"]


def build_table(params: DatasetParams) -> tuple[pa.Table, pa.Table | None, str, dict[str, Any]]:
    """(valid rows, rejected rows (row, sample_id, reason, detail) or None, dataset name, source)."""
    if params.kind == "openmoji":
        from tasks.data import openmoji

        table = openmoji.build_openmoji_pairs(n=params.sample_n(), seed=params.seed, image_size=params.image_size)
        source = {"kind": "openmoji", "n": params.sample_n(), "seed": params.seed, "image_size": params.image_size, **openmoji.describe()}
        return table, None, params.name or f"openmoji-{table.num_rows}", source
    if params.kind == "huggingface":
        from tasks.data.hf_datasets import load_hf_dataset

        # split unset: train, or the split a save_to_disk folder records (a DatasetDict's split folder)
        result, provenance = load_hf_dataset(params.path, revision=params.revision, split=params.split, image_column=params.image_column,
                                             text_column=params.text_column, captions=params.captions, n=params.n)
        default = "-".join(p for p in (params.path.rstrip("/").rsplit("/", 1)[-1], params.revision, provenance["split"]) if p)
        return result.table, result.rejected, params.name or _safe_name(default), {"kind": "huggingface", **provenance}
    from tasks.data.sources import ColumnMap, effective_columns
    from tasks.data.tables import load_paired_dataset

    result = load_paired_dataset(params.path, columns=params.columns(), n=params.n, image_root=params.image_root,
                                 split=params.split)
    name = params.name or _stem(params.path) + (f"-{_safe_name(params.split)}" if params.split else "")
    # absolute paths: a relative one is read from the working directory, which the record would lose
    source: dict[str, Any] = {"kind": "path", "path": _absolute(params.path), "n": params.n}
    for field in ("image_root", "split"):
        if getattr(params, field) is not None:
            source[field] = _absolute(params.image_root) if field == "image_root" else params.split
    columns = effective_columns(Path(params.path), params.columns())
    if columns != ColumnMap():  # say which columns were read when they are not the defaults
        source.update(image_column=columns.image, text_column=columns.text, captions=columns.captions)
    return result.table, result.rejected, name, source


#: How the loaders (``tasks.data``) name the image or caption column a dataset lacks: a table's
#: ``lacks required column(s) [...]; it has [...]``, a hub dataset file's ``lacks column(s) [...];
#: it has [...]``, a JSON array's ``no row has the required key(s) [...]; keys read: [...]``.
_MISSING_COLUMNS = re.compile(r"(?:lacks (?:required )?column\(s\)|no row has the required key\(s\)) (\[[^\]]*\])")
_PRESENT_COLUMNS = re.compile(r"; (?:it has|keys read:) (\[[^\]]*\])")

#: The dataset fields that name a column: (field, what its column holds, the ``prh run`` flag).
_COLUMN_FIELDS = (("text_column", "caption", "--text-column"), ("image_column", "image", "--image-column"))


def column_keys_named(error: ValueError, params: DatasetParams) -> ValueError | None:
    """``error`` (a loader's refusal of a dataset that lacks its image or caption column) with the
    setting that named that column added: ``dataset.text_column is 'captoin', which the dataset
    lacks: set it to its caption column ('caption'?); on the command line --text-column, with
    --dataset``, the column it likely meant among those the message lists. The loaders listed the
    columns but named no setting where the name came from the config or a flag (a misspelling).
    None for any other error (those stay as they are)."""
    import ast
    import difflib

    message = str(error)
    found = _MISSING_COLUMNS.search(message)
    if found is None:
        return None
    try:
        missing = ast.literal_eval(found.group(1))
        present = ast.literal_eval(listed.group(1)) if (listed := _PRESENT_COLUMNS.search(message, found.end())) else []
    except (ValueError, SyntaxError):
        return None
    names = [str(name) for name in present] if isinstance(present, list) else []
    hints = []
    for field, holds, flag in _COLUMN_FIELDS:
        value = _column_read(params, field)
        if value not in missing:
            continue
        close = difflib.get_close_matches(value, [n for n in names if n not in missing], n=1, cutoff=0.6)
        hints.append(f"dataset.{field} is {value!r}, which the dataset lacks: set it to its {holds} column"
                     f"{f' ({close[0]!r}?)' if close else ''}; on the command line {flag}, with --dataset")
    return ValueError(f"{message}; {'; '.join(hints)}") if hints else None


def _column_read(params: DatasetParams, field: str) -> str:
    """The column a ``path`` or hub dataset reads for ``field`` (``image_column``, ``text_column``):
    as set, or the layout's own default where it has one (an ImageFolder table's ``file_name``)."""
    value = str(getattr(params, field))
    if params.kind == "path" and params.path:
        from tasks.data.sources import effective_columns

        try:
            columns = effective_columns(Path(params.path), params.columns())
        except (ValueError, OSError):
            return value
        return columns.text if field == "text_column" else columns.image
    return value


def _stem(path: str) -> str:
    """A table's or folder's name without its suffix, as a safe dataset name."""
    return _safe_name(path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0])


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text).strip(".-") or "dataset"


@task(name="load-dataset", tags=["prh-data"], retries=3, retry_delay_seconds=backoff(2, 3, factor=3),
      retry_jitter_factor=0.5, retry_condition_fn=retry_transient, **TASK_OPTIONS)  # the store is the cache: tasks/no_results.py
def load_dataset(params: DatasetParams, store_url: str, alignment: AlignmentParams | None = None) -> dict[str, Any]:
    """Load, validate and publish the dataset; returns its manifest (reused if already stored), with
    ``reused``: True where the version was found stored, as an extraction's and a pair's manifest
    say (the run record counts the bytes a run published itself).

    With ``alignment``, a dataset with fewer valid rows than ``alignment.min_samples()`` fails
    here, before extraction, instead of after it.
    """
    with noting_failed_attempts():  # a retried load: the run record says what each attempt said
        manifest, written = _publish_dataset(params, store_url, get_run_logger(), alignment=alignment)
        return {**manifest, "reused": not written}


class DatasetNotStored(LookupError):
    """The dataset version a run was given is not (completely) published in its store."""


@task(name="stored-dataset", tags=["prh-data"], retries=3, retry_delay_seconds=backoff(2, 3, factor=3),
      retry_jitter_factor=0.5, retry_condition_fn=retry_transient, **TASK_OPTIONS)
def stored_dataset(dataset_version: str, store_url: str, params: DatasetParams | None = None,
                   alignment: AlignmentParams | None = None) -> dict[str, Any]:
    """The manifest of the published dataset ``dataset_version``, read from the store only.

    What the alignment stage of ``prh-staged`` uses instead of :func:`load_dataset`: the
    extraction stage published the dataset, so its source (a table, a folder, a hub dataset) need
    not exist where this runs, and it is neither read nor hashed again.
    """
    with noting_failed_attempts():
        return stored_dataset_manifest(dataset_version, store_url, params, get_run_logger(), alignment=alignment)


def stored_dataset_manifest(
    dataset_version: str,
    store_url: str,
    params: DatasetParams | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    alignment: AlignmentParams | None = None,
) -> dict[str, Any]:
    """The manifest of the stored dataset version ``dataset_version`` (as :func:`publish_dataset`
    returns it), without reading the dataset's source.

    ``params`` (the run's ``config.dataset``) only serves a warning when the stored version was
    published from another kind of source or another path; the stored version is used either way.

    Raises:
        DatasetNotStored: the version is not (completely) published in this store; the message
            names the store and the version.
        ValueError: not a dataset version id, or too few rows for ``alignment`` (as in
            :func:`publish_dataset`).
    """
    logger = logger or logging.getLogger("prh.dataset")
    store = Store(store_url)
    if not (isinstance(dataset_version, str) and re.fullmatch(rf"[0-9a-f]{{{ID_LENGTH}}}", dataset_version)):
        raise ValueError(f"dataset_version {dataset_version!r} is not a dataset version id ({ID_LENGTH} hex digits, "
                         "as in the `datasets` view or the extraction stage's summary)")
    key = layout.dataset_key(dataset_version)
    manifest = store.manifest(key)
    if manifest is None or manifest.get("kind") != "dataset":
        raise DatasetNotStored(
            f"dataset version {dataset_version} is not in the store {store.display_url} (no published {key}/): "
            "run the extraction stage (prh-extract) against this store first, or leave dataset_version empty "
            "to load config.dataset from its source")
    catalog = manifest["catalog"]
    _check_enough_rows(catalog["name"], catalog["n_samples"], stored_image_count(store, key, catalog), {}, alignment)
    differs = _source_differs(params, catalog.get("source"))
    if differs:
        logger.warning("dataset version %s (dataset %r) was published from %s, but config.dataset is %s; the stored version "
                       "is used (dataset_version decides)", dataset_version, catalog["name"],
                       _source_text(catalog.get("source")), differs)
    logger.info("dataset %s: %d pairs, version %s (from the store; its source is not read here)",
                catalog["name"], catalog["n_samples"], dataset_version)
    return manifest


def stored_image_count(store: Store, key: str, catalog: dict[str, Any]) -> int:
    """The number of distinct images of the stored dataset version at ``key``: its manifest's
    ``n_images``, or, for a version published before prh recorded it, the distinct ``image_id``
    values of its samples (the caption count would pass a unit 'image' run that has too few
    images, failing it only after extraction)."""
    if "n_images" in catalog:
        return int(catalog["n_images"])
    try:
        ids = store.read_table(f"{key}/{layout.SAMPLES_FILE}", columns=["image_id"]).column("image_id")
    except (KeyError, pa.ArrowInvalid):  # no image_id column: every sample its own image
        return int(catalog["n_samples"])
    return len(pc.unique(ids))


def _source_differs(params: DatasetParams | None, source: Any) -> str | None:
    """How ``params`` names another source than the stored ``source`` (its kind, its path or hub
    id, or the rows drawn from it: ``n``, and the demo's ``seed`` and ``image_size``), for a
    warning; None when they agree or cannot be compared."""
    if params is None or not isinstance(source, dict):
        return None
    if source.get("kind") != params.kind:
        return f"kind {params.kind!r}"
    stored = {source.get("path"), source.get("hub_id"), source.get("local_path")}
    if params.kind != "openmoji" and params.path and params.path not in stored and _absolute(params.path) not in stored:
        return repr(params.path)
    asked = {"n": params.sample_n()} | ({"seed": params.seed, "image_size": params.image_size} if params.kind == "openmoji" else {})
    other = [f"{key} {value!r} (stored: {source[key]!r})" for key, value in asked.items() if key in source and source[key] != value]
    return ", ".join(other) or None


def publish_dataset(
    params: DatasetParams,
    store_url: str,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    alignment: AlignmentParams | None = None,
) -> dict[str, Any]:
    """Load and validate the dataset, publish it as a content-addressed version; its manifest.

    The demo's OpenMoji pairs are drawn once per rendering recipe: a rerun with the same recipe
    (``_recipe_id``) returns the stored version's manifest without drawing a glyph; it keeps the
    name it was stored under (a warning says so when ``params.name`` differs), as any version does.

    Raises:
        ValueError: the loader's errors (naming the path), or too few valid rows: fewer than 2,
            or fewer than ``alignment.min_samples()`` (the message names the parameter and
            counts the rejected rows per reason). Nothing is written to the store then.
    """
    return _publish_dataset(params, store_url, logger, alignment)[0]


def _publish_dataset(params: DatasetParams, store_url: str, logger: logging.Logger | logging.LoggerAdapter | None = None,
                     alignment: AlignmentParams | None = None) -> tuple[dict[str, Any], bool]:
    """:func:`publish_dataset`'s manifest, and whether this call published the version (False:
    found stored, by its rendering recipe or its content)."""
    logger = logger or logging.getLogger("prh.dataset")
    store = Store(store_url)
    recipe = _recipe_id(params) if params.kind == "openmoji" else None
    rendered = None if recipe is None else _rendered_before(recipe, store)
    if rendered is not None:  # the demo's pairs from the same recipe: the stored version, not drawn again
        catalog = rendered["catalog"]
        _check_enough_rows(catalog["name"], catalog["n_samples"], stored_image_count(store, layout.dataset_key(catalog["dataset_version"]),
                                                                                     catalog), {}, alignment)
        name = params.name or f"openmoji-{catalog['n_samples']}"  # as build_table would name it
        if name != catalog["name"]:
            _warn_stored_as(logger, name, catalog["n_samples"], catalog)
        logger.info("dataset %s: %d pairs, version %s (already stored; same rendering recipe, not drawn again)",
                    catalog["name"], catalog["n_samples"], catalog["dataset_version"])
        return rendered, False
    try:
        table, rejected, name, source = build_table(params)
    except ValueError as error:
        named = column_keys_named(error, params)
        if named is None:
            raise
        raise named from None
    n_rejected = 0 if rejected is None else rejected.num_rows
    counts: dict[str, int] = {}
    if n_rejected:
        rows = rejected.to_pylist()
        for row in rows:
            counts[row["reason"]] = counts.get(row["reason"], 0) + 1
        shown = ", ".join(for_terminal(_rejected_label(r)) for r in rows[:20])
        logger.warning(
            "dataset %s: rejected %d rows (%s); ids: %s%s",
            name, n_rejected, ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), shown,
            " ..." if n_rejected > 20 else "",
        )
    n_images = len(pc.unique(table.column("image_id")))
    _check_enough_rows(name, table.num_rows, n_images, counts, alignment)
    table = table.select(DATASET_COLUMNS).sort_by("sample_id")
    version = content_id({"samples": table_digest(table)})
    key = layout.dataset_key(version)
    samples = table.add_column(0, "dataset_version", pa.array([version] * table.num_rows).dictionary_encode())
    files: dict[str, Any] = {layout.SAMPLES_FILE: samples}
    if n_rejected:
        files[layout.REJECTED_FILE] = rejected
    catalog = {
        "dataset_version": version,
        "name": name,
        "n_samples": table.num_rows,
        "n_images": n_images,
        "n_rejected": n_rejected,
        "source": source,
        "code_version": code_version("tasks/data"),
    }
    published = store.publish(key, files, {"kind": "dataset", "catalog": catalog}, row_group_size=256)
    if recipe is not None:
        store.write_json(layout.rendered_dataset_key(recipe), {"dataset_version": version, "source": source})
    stored = published.manifest.get("catalog", {})
    if not published.written and (stored.get("name"), _source_path(stored.get("source")), stored.get("n_rejected")) != (
            name, _source_path(source), n_rejected):
        _warn_stored_as(logger, name, table.num_rows, {**stored, "dataset_version": version})
    cut = f" from its first {params.n} rows (dataset.n; null reads all)" if params.kind != "openmoji" and params.n else ""
    if cut and params.captions == "first" and table.num_rows + n_rejected < params.n:  # fewer rows than n: all read
        cut = f" from all its {table.num_rows + n_rejected} rows (dataset.n={params.n} asks for more)"
    logger.info(
        "dataset %s: %d pairs%s, version %s (%s)",
        name, table.num_rows, cut, version, "published" if published.written else "already stored",
    )
    if published.written:
        _log_why_new(store, catalog, logger)
    return published.manifest, published.written


def _log_why_new(store: Store, catalog: dict[str, Any], logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Log why a newly published dataset version is not the stored one of that name
    (``tasks.why_dataset``): every model is extracted again over it. Only words: a store that
    cannot say is passed over."""
    try:
        reason = why_new_dataset(store, catalog)
    except Exception:  # noqa: BLE001 - a message only
        return
    if reason is not None:
        logger.info("dataset %s: a new version, so every model is extracted again over it: %s", catalog["name"], reason)


def _warn_stored_as(logger: logging.Logger | logging.LoggerAdapter, name: str, n_rows: int, stored: dict[str, Any]) -> None:
    """Warn that the dataset ``name`` (its ``n_rows`` valid rows) is the stored version whose catalog
    entry is ``stored`` under another name, source or rejected-row count, which it keeps."""
    logger.warning(
        "dataset %s: its %d valid rows are already stored as dataset %r (version %s, published from %s with %s rejected "
        "rows); a version is its valid rows, so that version is used and keeps its name, source and rejected rows",
        name, n_rows, stored.get("name"), stored.get("dataset_version"), _source_text(stored.get("source")),
        stored.get("n_rejected"))


def _rejected_label(row: dict[str, Any]) -> str:
    """How a rejected row is named in the warning: its sample id, else its table row, else (a
    file no id was derived for) its detail up to the first colon."""
    if row.get("sample_id") is not None:
        return str(row["sample_id"])
    if row.get("row") is not None:
        return f"row {row['row']}"
    return str(row.get("detail", "")).split(":", 1)[0]


def _absolute(path: str) -> str:
    """``path`` absolute (``~`` expanded, links resolved), as the dataset source records it."""
    return str(Path(path).expanduser().resolve())


def _source_path(source: Any) -> str:
    """``_source_text`` of a stored source, a local path made absolute (read from the working
    directory: a version published before prh recorded absolute paths kept it as typed)."""
    text = _source_text(source)
    return _absolute(text) if isinstance(source, dict) and source.get("kind") == "path" else text


def _source_text(source: Any) -> str:
    """Where a stored dataset came from, for a message: its path or hub id, else its kind."""
    if not isinstance(source, dict):
        return repr(source)
    return str(source.get("path") or source.get("hub_id") or source.get("local_path") or source.get("kind"))


def _recipe_id(params: DatasetParams) -> str:
    """Id of everything that decides the demo's rendered pairs: n, seed, size, the font, caption
    and renderer versions (``openmoji.describe``) and the data code."""
    from tasks.data import openmoji

    recipe = {"n": params.sample_n(), "seed": params.seed, "image_size": params.image_size, **openmoji.describe()}
    return content_id({"recipe": recipe, "code_version": code_version("tasks/data")})


def stored_demo(params: DatasetParams, store: Store) -> dict[str, Any] | None:
    """The manifest of the demo's OpenMoji pairs that ``params`` describe when ``store`` holds them
    (drawn before from the same recipe: the dataset task reuses them without drawing), else None;
    None for a dataset of another kind."""
    return _rendered_before(_recipe_id(params), store) if params.kind == "openmoji" else None


def _rendered_before(recipe: str, store: Store) -> dict[str, Any] | None:
    """The manifest of the demo dataset ``recipe`` rendered before, if it is still stored."""
    try:
        known = store.read_json(layout.rendered_dataset_key(recipe))
        return store.manifest(layout.dataset_key(str(known["dataset_version"])))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None  # never rendered here, or its version was removed: render it


def _check_enough_rows(name: str, n_valid: int, n_images: int, rejected: dict[str, int], alignment: AlignmentParams | None) -> None:
    """Raise if ``n_valid`` rows (``n_images`` images, for ``alignment.unit`` 'image') cannot be
    aligned (``alignment.min_samples()``; without ``alignment``, 2 rows: a dataset published on
    its own)."""
    try:
        if alignment is None:
            if n_valid < 2:
                raise ValueError(f"dataset {name!r} has {n_valid} sample(s), too few: a dataset needs at least 2")
        else:
            alignment.check_sample_count(n_images if alignment.unit == "image" else n_valid, f"dataset {name!r}")
    except ValueError as error:
        counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(rejected.items())) or "none"
        raise ValueError(f"{error}; rejected rows by reason: {counts}") from None
