"""The project's code as this process imported it.

A version id names the code that computed what it keys (``storage.versioning.code_version``). A
process runs the code it imported, while the files on disk are what a ``git pull`` or ``pip
install -U`` left there since: a worker, a Dask worker or a notebook that imported prh before an
in-place upgrade and hashed the files as they are now would store results of its old code under
the new code's version (served as fresh to every later run), or the reverse.

:func:`snapshot` runs when the ``tasks`` or ``storage`` package is first imported (their
``__init__``) and keeps every Python file under ``tasks/`` and ``storage/`` as it is then: its bytes
and its ``stat`` (to tell cheaply later that it did not change). ``code_version`` hashes these
texts, and refuses where a file's behaviour on disk differs from them now. Standard library only:
``tasks.metrics`` stays light to import.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

#: the project's root: the folder that holds the ``tasks`` and ``storage`` packages
ROOT = Path(__file__).resolve().parent.parent
#: the packages whose files are kept (every package a code version names lies in one of them)
PACKAGES = ("tasks", "storage")


def stat_key(st: os.stat_result) -> tuple[int, int, int]:
    """What tells that a file may have been rewritten: modification time, size and inode."""
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class Snapshot:
    """The files of :data:`PACKAGES` when this process first imported one of them.

    ``files``: project-relative POSIX path -> its bytes then; ``stats``: path -> :func:`stat_key`
    (of the file then, or of a later reading whose bytes were the same); ``folders``: folder
    (project-relative, ``""`` for none) -> (its ``st_mtime_ns``, the names of the ``*.py`` files
    directly in it), where a file added or removed since shows."""

    files: dict[str, bytes] = field(default_factory=dict)
    stats: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    folders: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)


_SNAPSHOT: Snapshot | None = None
_LOCK = threading.Lock()


def snapshot() -> Snapshot:
    """The files as first seen by this process: read the first time (``tasks/__init__.py``,
    ``storage/__init__.py``), the same object afterwards. A file that cannot be read then is left
    out (a later version that names it refuses, as for a file added since)."""
    global _SNAPSHOT
    with _LOCK:
        if _SNAPSHOT is None:
            taken = Snapshot()
            for package in PACKAGES:
                _read_folder(ROOT / package, taken)
            _SNAPSHOT = taken
        return _SNAPSHOT


def taken() -> Snapshot | None:
    """The snapshot, None before it is taken."""
    return _SNAPSHOT


def relative(path: Path) -> str:
    """``path`` (under :data:`ROOT`) as a project-relative POSIX path."""
    return path.relative_to(ROOT).as_posix()


def is_code_name(name: str) -> bool:
    """Whether a file or folder named ``name`` can hold prh's code: not hidden (an editor's lock
    ``.#cka.py``, a dangling symbolic link Emacs makes as soon as a buffer is edited, had counted
    as a file added to the code; ``.ipynb_checkpoints/``)."""
    return not name.startswith(".")


def folder_listing(folder: Path) -> tuple[int, frozenset[str], list[Path]]:
    """(``st_mtime_ns`` of ``folder``, names of its ``*.py`` files, its subfolders); raises
    ``OSError``. Regular files (or links to one) only, hidden names left out (:func:`is_code_name`),
    as ``storage.versioning.source_files`` lists them."""
    mtime = os.stat(folder).st_mtime_ns
    names, subfolders = set(), []
    with os.scandir(folder) as entries:
        for entry in entries:  # as ``Path.rglob("*.py")`` walks: no symbolic link to a folder followed
            if not is_code_name(entry.name):
                continue
            if entry.is_dir():
                if not entry.is_symlink():
                    subfolders.append(Path(entry.path))
            elif entry.name.endswith(".py") and entry.is_file():
                names.add(entry.name)
    return mtime, frozenset(names), subfolders


def _read_folder(folder: Path, into: Snapshot) -> None:
    try:
        mtime, names, subfolders = folder_listing(folder)
    except OSError:
        return
    into.folders[relative(folder)] = (mtime, names)
    for name in sorted(names):
        path = folder / name
        try:
            with open(path, "rb") as handle:
                key = stat_key(os.fstat(handle.fileno()))
                data = handle.read()
        except OSError:
            continue
        into.files[relative(path)] = data
        into.stats[relative(path)] = key
    for subfolder in sorted(subfolders):
        _read_folder(subfolder, into)
