"""Check published versions against their manifests (``prh verify``).

Every published version's manifest lists its files with their size in bytes and SHA-256
(:meth:`storage.store.Store.publish`). Runs trust a published version and never write it again,
so a file damaged afterwards (a disk fault, a partial copy or sync, someone's edit) would be read
as it is by every later run and query. This module finds such versions: every listed file must be
present, of its size and, unless ``quick``, of its SHA-256 (read in chunks, never whole).

:func:`remove_version` deletes a damaged version, manifest first (so that it is unpublished at
once and the next run computes it again: versions are content-addressed by their inputs, so the
recomputed one takes the same key, and results that were computed from it stay valid).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from storage.layout import ALIGNMENT, DATASETS, FEATURES
from storage.store import MANIFEST, DamagedManifest, Store

#: The boxes whose versions have manifests, in the order runs produce them.
BOXES = (DATASETS, FEATURES, ALIGNMENT)
#: Components of a version's key in each box: ``datasets/<v>``, ``features/<dataset>/<model>/<v>``,
#: ``alignment/<dataset>/<a>__<b>/<v>``. A manifest anywhere else is stray, never a version.
VERSION_DEPTH = {DATASETS: 2, FEATURES: 4, ALIGNMENT: 4}
STRAY = "a manifest outside any version folder (stray or copied there); not a version, never removed"


def is_version_key(key: str) -> bool:
    """Whether ``key`` has the layout of a version folder of its box (see ``VERSION_DEPTH``)."""
    parts = key.split("/")
    return VERSION_DEPTH.get(parts[0]) == len(parts) and all(parts)
#: Bytes read at a time while hashing (memory stays at one chunk whatever the file size).
CHUNK_BYTES = 8 << 20


@dataclass
class VersionCheck:
    """What :func:`verify_store` found for one published version (``key``, e.g.
    ``features/<dataset>/<model>/<version>``): the files and bytes it checked and its problems
    (empty when every file matches the manifest)."""

    key: str
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    #: False for a stray manifest (not in a version folder): ``--remove-damaged`` leaves it, and
    #: the folder holding it, alone.
    removable: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


def file_sha256(store: Store, key: str) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex digest) of the file at ``key``, read in ``CHUNK_BYTES`` chunks."""
    digest, size = hashlib.sha256(), 0
    with store.open_read(key) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def check_version(store: Store, version_key: str, manifest: dict[str, Any], quick: bool = False) -> VersionCheck:
    """Every file the manifest lists: present, of its size and (unless ``quick``) of its SHA-256."""
    check = VersionCheck(version_key)
    listing = manifest.get("files")
    if not isinstance(listing, dict):
        check.problems.append(f"{MANIFEST} lists no files (not written by prh's publish?)")
        return check
    found = {entry["name"]: entry for entry in store.entries(version_key) if entry["type"] != "directory"}
    for name, expected in sorted(listing.items()):
        size, sha = (expected.get("bytes"), expected.get("sha256")) if isinstance(expected, dict) else (None, None)
        entry = found.get(name)
        if entry is None:
            check.problems.append(f"{name}: missing")
            continue
        check.files += 1
        if entry.get("size") != size:
            check.problems.append(f"{name}: {entry.get('size')} bytes, the manifest says {size}")
            continue
        check.bytes += int(size or 0)
        if not quick:
            actual = file_sha256(store, f"{version_key}/{name}")[1]
            if actual != sha:
                check.problems.append(f"{name}: content changed (SHA-256 {actual[:12]}…, the manifest says {str(sha)[:12]}…)")
    return check


def verify_store(store: Store, boxes: tuple[str, ...] = BOXES, quick: bool = False,
                 on_check: Callable[[VersionCheck], None] | None = None) -> list[VersionCheck]:
    """Check every published version under ``boxes`` (see :func:`check_version`); a manifest that
    is not one (:class:`storage.store.DamagedManifest`) is a damaged version too. ``on_check`` sees
    each result as it is made (progress). Returns the results in key order."""
    results = []
    for check in _checks(store, boxes, quick):
        if on_check is not None:
            on_check(check)
        results.append(check)
    return results


def _checks(store: Store, boxes: tuple[str, ...], quick: bool) -> Iterator[VersionCheck]:
    for box in boxes:
        damaged: list[DamagedManifest] = []
        for version_key, manifest in store.manifests(box, on_damaged=damaged.append):
            if is_version_key(version_key):
                yield check_version(store, version_key, manifest, quick)
            else:
                yield VersionCheck(version_key, problems=[STRAY], removable=False)
        for error in damaged:
            if is_version_key(error.version_key):
                yield VersionCheck(error.version_key, problems=[str(error)])
            else:
                yield VersionCheck(error.version_key, problems=[f"{STRAY}: {error}"], removable=False)


def remove_version(store: Store, version_key: str) -> None:
    """Delete a published version: its manifest first (it is unpublished from then on, and a run
    publishes it again), then the rest of its folder. ValueError for a key that is not a version
    folder's (``features/manifest.json`` would otherwise take every version of the box with it)."""
    if not is_version_key(version_key):
        raise ValueError(f"{version_key!r} is not a version folder of the store (see storage.verify.VERSION_DEPTH): not removed")
    store.delete(f"{version_key}/{MANIFEST}")
    store.remove_tree(version_key)
