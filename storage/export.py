"""Export the catalog as a DuckDB database file that opens in the DuckDB CLI and in Python.

The file holds the same names as :func:`storage.catalog.connect`:

- views ``samples``, ``rejected_samples``, ``features``, ``alignment_all``, ``alignment_best_all``: ``read_parquet``
  over the absolute paths (or ``s3://`` URLs) of every published file: they only read the store;
- tables ``datasets``, ``models``, ``runs``: the manifests' and run records' rows, copied in
  (times as ``TIMESTAMPTZ``);
- views ``alignment_best``, ``alignment`` (the current results), ``alignment_latest``,
  ``alignment_best_latest``, ``alignment_fdr``, ``models_current`` over those
  (``storage.catalog.DERIVED_VIEWS``);
- table ``prh_catalog``: one row (store URL without credentials, exported_at, file count).

It is a snapshot: versions published later appear after the next export. Writing is atomic
(a temporary file in the same folder, checkpointed, then renamed). DuckDB reads a ``?`` in a
database path as the start of options (its write-ahead log went to ``q.wal?m/...``): a catalog
file whose path holds one is built in a fresh temporary folder, then copied beside the file and
renamed. It reads ``\\`` as ``/`` on every system, so no DuckDB could open a file whose POSIX
path holds one: such a path is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from storage.catalog import (UTC_TIMESTAMP, _create_file_view, _exists_in, _literal, catalog_sources, create_derived_views,
                             linked_files, lock_down, register_store_filesystem, stored_files, utc_time)
from storage.store import Store, utc_now
from storage.store_urls import check_duckdb_spelling

INFO_TABLE = "prh_catalog"


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_catalog` wrote: the file, its store, view and table row counts."""

    path: Path
    store: str
    remote: bool
    files: int
    views: list[str]
    tables: dict[str, int]


def export_catalog(store: Store | str, path: str | Path, storage_options: dict[str, Any] | None = None) -> ExportSummary:
    """Write the catalog of ``store`` to the DuckDB file ``path`` (replaced if it exists and is a
    DuckDB database, as an earlier export is).

    Raises ValueError naming ``path`` when it cannot be that file: empty, a folder, under a file,
    inside the store, an existing file that is not a DuckDB database, a ``\\`` in its POSIX path
    (see the module's docstring)."""
    if not isinstance(store, Store):
        store = Store(store, storage_options)
    # inside the store first: a published file there (samples.parquet) is not replaceable either,
    # but that message ("not a DuckDB database") had hidden the reason that holds for every name
    if store.is_local and str(path).strip() and Path(path).expanduser().resolve().is_relative_to(Path(store.root).resolve()):
        raise ValueError(f"catalog file {str(Path(path).expanduser().resolve())!r} is inside the store {store.display_url}: "
                         "write it elsewhere (it would replace or sit among the store's files)")
    path = _checked_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # raced by a file of that name, or no permission
        raise ValueError(f"catalog file {str(path)!r}: cannot create its folder: {error.strerror or error}") from None
    tmp = _temporary_beside(path)
    sources = catalog_sources(store)
    build = tmp if _duckdb_can_write(tmp) else Path(tempfile.mkdtemp(prefix="prh-export-")) / "catalog.duckdb"
    try:
        try:
            con = duckdb.connect(str(build))
        except duckdb.Error as error:  # a folder without write permission, a full disk
            raise ValueError(f"catalog file {str(path)!r}: cannot write it: {str(error).splitlines()[0]}") from None
        try:
            register_store_filesystem(con, store)  # views are bound (their schema read) when created
            stored = stored_files(store, sources)
            read = {view: _create_file_view(con, view, files, sources.lineage, store, stored, sources.feature_datasets)
                    for view, files in sources.files.items()}
            for name, table in sources.tables.items():
                con.register("_source", table)
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM _source")
                con.unregister("_source")
            derived = create_derived_views(con)
            n_files = sum(len(f) for f in read.values())  # a damaged file left out (warned) is not counted
            info = pa.table({"store": [store.display_url], "store_root": [store.uri("")], "remote": [not store.is_local],
                             "exported_at": pa.array([utc_time(utc_now())], UTC_TIMESTAMP), "parquet_files": [n_files],
                             # the files reached through a symbolic link out of the store (open_catalog allows them)
                             "linked_files": pa.array([_in_store_spellings(store, read)], pa.list_(pa.string()))})
            con.register("_source", info)
            con.execute(f"CREATE TABLE {INFO_TABLE} AS SELECT * FROM _source")
            con.unregister("_source")
            con.execute("CHECKPOINT")
        except duckdb.Error as error:
            _raise_if_not_written(error, path)
            raise
        finally:
            con.close()
        if build != tmp:
            _copy_beside(build, tmp, path)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            if leftover.exists():
                leftover.unlink()
        if build != tmp:
            shutil.rmtree(build.parent, ignore_errors=True)
    return ExportSummary(path, store.display_url, not store.is_local, n_files, sorted([*sources.files, *derived]),
                         {name: table.num_rows for name, table in sources.tables.items()})


def _duckdb_can_write(path: Path) -> bool:
    """Whether DuckDB writes a database at ``path`` where it says: not when the path holds ``?``
    (DuckDB takes what follows as options, and its write-ahead log went to a mangled path)."""
    return "?" not in str(path)


#: How DuckDB says that a database file could not be written (its disk full, over ``ulimit -f``).
_WRITE_FAILED = ("Could not write file", "No space left on device", "File too large", "Disk quota exceeded")


def _raise_if_not_written(error: duckdb.Error, path: Path) -> None:
    """ValueError naming ``path`` and DuckDB's reason when ``error`` is the database file failing
    to be written (a full disk, the process's file-size limit: a raw ``FatalException`` or
    ``TransactionException`` traceback before); other errors are left to the caller."""
    first = (str(error).splitlines() or [""])[0]
    if any(marker in first for marker in _WRITE_FAILED):
        raise ValueError(f"catalog file {str(path)!r}: cannot write it: {first} (nothing was written: an earlier "
                         "file of that name is unchanged)") from None


def _copy_beside(built: Path, tmp: Path, path: Path) -> None:
    """Copy the database ``built`` elsewhere to ``tmp`` (beside ``path``, for an atomic rename);
    ValueError naming ``path`` when it cannot be written there."""
    try:
        shutil.copyfile(built, tmp)
    except OSError as error:  # no write permission, a full disk
        raise ValueError(f"catalog file {str(path)!r}: cannot write it: {error.strerror or error}") from None


def _refuse_backslash(path: Path) -> None:
    """ValueError naming ``path`` when its POSIX path holds ``\\``: DuckDB reads it as ``/`` on
    every system, so it would write (and later look for) another file than the one named."""
    if os.sep == "/" and "\\" in str(path):
        raise ValueError(f"catalog file {str(path)!r} has a backslash in its path, which DuckDB reads as '/' "
                         "(it could not open the file by this name): choose a path without '\\'")


def _checked_file(path: str | Path) -> Path:
    """``path`` resolved, if a file can be written there: not empty, not a folder, its nearest
    existing ancestor a folder, and no ``\\`` in it (:func:`_refuse_backslash`). Else
    ValueError naming it."""
    if not str(path).strip():
        raise ValueError(f"catalog file {str(path)!r} is empty: give the .duckdb file to write, e.g. prh.duckdb")
    path = Path(path).expanduser().resolve()
    _refuse_backslash(path)
    check_duckdb_spelling(str(path), "catalog file")  # DuckDB writes it, Python then renames it
    try:
        if path.is_dir():
            raise ValueError(f"catalog file {str(path)!r} is a folder: give a file name, e.g. {str(path / 'prh.duckdb')!r}")
        for place in path.parents:
            if place.is_dir():
                break
            if place.exists():
                raise ValueError(f"catalog file {str(path)!r} is under {str(place)!r}, which is not a folder")
        replaceable = _replaceable(path)
    except OSError as error:  # a name longer than the disk takes (ENAMETOOLONG), a folder that cannot be searched
        raise ValueError(f"catalog file {str(path)!r}: {error.strerror or error}") from None
    if not replaceable:
        raise ValueError(f"catalog file {str(path)!r} exists and is not a DuckDB database (an earlier export): it is not "
                         "replaced; remove it yourself or give another name, e.g. prh.duckdb")
    return path


def _temporary_beside(path: Path) -> Path:
    """``.<name>.tmp-<32 hex>`` beside ``path``, ``name`` cut where needed so that it and DuckDB's
    ``<it>.wal`` fit in the 255 bytes of a file name: a catalog file named with 210 to 255 bytes,
    which the disk takes, had made them too long, and the export ended in a traceback
    (``OSError: [Errno 36] File name too long``)."""
    suffix = f".tmp-{uuid.uuid4().hex}"
    name = path.name
    while name and len(os.fsencode(f".{name}{suffix}.wal")) > 255:
        name = name[:-1]
    return path.with_name(f".{name}{suffix}")


#: Where a DuckDB database file holds its magic bytes (after an 8-byte checksum).
_DUCKDB_MAGIC = (8, b"DUCK")


def _replaceable(path: Path) -> bool:
    """Whether an export may replace ``path``: absent, empty, or a DuckDB database (an earlier
    export); a typo such as ``prh catalog export pairs.jsonl`` had replaced the user's data file.
    A file this user cannot read is refused naming why (ValueError): the export replaces it by a
    rename in its folder, which needs no right to the file itself, so another user's file in a
    shared folder had been replaced unseen."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return not path.exists() or path.is_file()
        offset, magic = _DUCKDB_MAGIC
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(len(magic)) == magic
    except OSError as error:
        raise ValueError(f"catalog file {str(path)!r} exists and cannot be read ({error.strerror or error}) to tell whether "
                         "it is an earlier export: it is not replaced; remove it yourself or give another name, "
                         "e.g. prh.duckdb") from None


def open_catalog(
    path: str | Path, storage_options: dict[str, Any] | None = None, *, read_only: bool = True
) -> duckdb.DuckDBPyConnection:
    """Open an exported catalog file read-only; for an S3 store, register s3fs on the connection.

    With ``read_only`` (the default) the connection is also locked down like
    :func:`storage.catalog.connect`: it reads only under the store's root and its configuration
    cannot change. Credentials and endpoint come from the AWS environment or ``storage_options``.

    The file is attached (read-only) to a fresh in-memory database, so that each call gets its own
    settings and filesystems: DuckDB shares one database per file within a process, and a lock or
    an s3fs registration made on it would otherwise carry over to every later connection to the
    file (a second ``open_catalog`` failed, a plain ``duckdb.connect(path)`` came back locked).
    """
    path = Path(path).expanduser().resolve()
    _refuse_backslash(path)
    check_duckdb_spelling(str(path), "catalog file")
    if not path.is_file():
        raise FileNotFoundError(f"catalog file {str(path)!r} does not exist (write it with `prh catalog export FILE`)")
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {_literal(str(path))} AS prh_export (READ_ONLY)")
    except duckdb.Error as error:
        con.close()
        raise ValueError(f"catalog file {str(path)!r} is not a DuckDB database: {str(error).splitlines()[0]}") from None
    con.execute("USE prh_export")
    con.execute("SET TimeZone = 'UTC'")  # as storage.catalog.connect: times shown in UTC
    root, remote = con.execute(f"SELECT store_root, remote FROM {INFO_TABLE}").fetchall()[0]
    columns = {row[0] for row in con.execute(f"DESCRIBE {INFO_TABLE}").fetchall()}
    linked = con.execute(f"SELECT linked_files FROM {INFO_TABLE}").fetchall()[0][0] if "linked_files" in columns else None
    exported_root = root
    if not remote and Path(root).is_absolute():
        root = Path(root).resolve().as_posix()  # the folder the lock allows, without '..'
    if read_only and not _looks_like_a_store(root, bool(remote), storage_options):
        con.close()  # the lock would let the views read wherever the file says: '/' opened everything
        raise ValueError(f"catalog file {str(path)!r} names {root!r} as its store, which is not a prh store "
                         "(no datasets/, features/ or alignment/ under it); not opened")
    exists = None
    if remote:
        store = Store(root, storage_options)
        register_store_filesystem(con, store, read_only)
        exists = _exists_in(store)
    if read_only:
        try:
            lock_down(con, [root.rstrip("/") + "/"], exists, [] if remote else _linked_files(exported_root, linked))
        except ValueError:
            con.close()
            raise
    return con


def _in_store_spellings(store: Store, read: dict[str, list[str]]) -> list[str]:
    """The files of ``read`` (view → the paths its views read) of a local ``store`` that lie
    outside its folder once symbolic links are followed (:func:`storage.catalog.linked_files`),
    as the views name them."""
    if not store.is_local:
        return []
    files = [file for view_files in read.values() for file in view_files]
    named = set(files)
    return sorted({file for file in linked_files(store.root, files) if file in named})


def _linked_files(root: str, recorded: list[str] | None) -> list[str]:
    """What :func:`lock_down` allows besides ``root`` for an exported file: of the files it
    recorded as reached through a symbolic link (none in files exported before this was
    recorded), those its views name under ``root``, with where each lies now (the links are
    followed again here, not taken from the file)."""
    inside = [file for file in recorded or [] if isinstance(file, str) and file.startswith(root.rstrip("/") + "/")]
    return linked_files(root, inside)


def _looks_like_a_store(root: str, remote: bool, storage_options: dict[str, Any] | None) -> bool:
    """Whether ``root`` (an exported file's ``store_root``) holds a prh store: a folder below the
    filesystem's root with at least one of the store's top-level folders."""
    if not [p for p in root.split("://", 1)[-1].split("/") if p] or (not remote and not Path(root).is_absolute()):
        return False
    try:
        store = Store(root, storage_options)
        return any(store.exists(prefix) for prefix in ("datasets", "features", "alignment"))
    except Exception:  # noqa: BLE001 - unreachable or unreadable: not shown to be a store
        return False
