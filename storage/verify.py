"""Check published versions against their manifests (``prh verify``).

Every published version's manifest lists its files with their size in bytes and SHA-256
(:meth:`storage.store.Store.publish`). Runs trust a published version and never write it again,
so a file damaged afterwards (a disk fault, a partial copy or sync, someone's edit) would be read
as it is by every later run and query. This module finds such versions: every listed file must be
present, of its size and, unless ``quick``, of its SHA-256 (read in chunks, never whole). A
manifest whose fields are not of their types (:func:`manifest_problems`: a hand edit, another
program's file) is a damaged version too; the catalog and ``prh gc --keep-runs`` use the same
test to leave such a version out (or keep it) rather than fail on it.

:func:`remove_version` deletes a damaged version the way ``prh gc`` removes one
(:meth:`storage.store.Store.unpublish`): under the version's publishing claim, manifest first (so
that it is unpublished at once and the next run computes it again: versions are
content-addressed by their inputs, so the recomputed one takes the same key, and results that
were computed from it stay valid). A run publishing the version again at that moment holds the
claim: the version is then left to it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from storage.layout import ALIGNMENT, BEST_FILE, DATASETS, FEATURES, REJECTED_FILE, SAMPLES_FILE, SCORES_FILE, layer_file
from storage.runs import DamagedRecord, extraction_records, run_records
from storage.store import MANIFEST, Store
from storage.store_errors import DamagedManifest
from storage.versioning import ID_LENGTH

#: The boxes whose versions have manifests, in the order runs produce them.
BOXES = (DATASETS, FEATURES, ALIGNMENT)
#: Components of a version's key in each box: ``datasets/<v>``, ``features/<dataset>/<model>/<v>``,
#: ``alignment/<dataset>/<a>__<b>/<v>``. A manifest anywhere else is stray, never a version.
VERSION_DEPTH = {DATASETS: 2, FEATURES: 4, ALIGNMENT: 4}
STRAY = "a manifest outside any version folder (stray or copied there); not a version, never removed"
#: What to do with a stray manifest (never: remove its folder, a whole box or dataset).
STRAY_ADVICE = "remove that manifest.json by hand, never its folder"


def is_version_key(key: str) -> bool:
    """Whether ``key`` has the layout of a version folder of its box (see ``VERSION_DEPTH``)."""
    parts = key.split("/")
    return VERSION_DEPTH.get(parts[0]) == len(parts) and all(parts)


_VERSION_ID = re.compile(rf"[0-9a-f]{{{ID_LENGTH}}}")


def named_like_a_version(key: str) -> bool:
    """Whether ``key`` is a version folder (:func:`is_version_key`) named by a version id (16 hex
    digits: every version prh publishes). A manifest that does not read, or names another folder,
    is a damaged version only there: elsewhere (``datasets/coco/manifest.json``, another tool's
    file in a folder the store shares) it is not prh's, stray, and its folder is never removed
    (``prh verify --remove-damaged`` had deleted ``datasets/coco/`` with its images)."""
    return is_version_key(key) and _VERSION_ID.fullmatch(key.rsplit("/", 1)[-1]) is not None


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
    #: False for a stray manifest (not in a version folder) and a damaged run record (``key`` is
    #: then the record's file): ``--remove-damaged`` leaves it, and the folder holding it, alone.
    removable: bool = True
    #: For one that is not removable: what ``--remove-damaged`` says it left, and why.
    left: str = ""
    #: Files in the version's folder that its listing does not name and prh never writes there
    #: (a sync tool's conflict copy, a note): named by ``prh verify``, not damage.
    unlisted: list[str] = field(default_factory=list)
    #: True for a version the latest run with results names that the store does not hold
    #: (:func:`missing_latest_versions`): nothing to remove, a rerun computes it again.
    missing: bool = False

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


class NotAsListed(ValueError):
    """A file of a published version is not the one its manifest lists (size or SHA-256)."""


def listed_bytes(store: Store, version_key: str, name: str, manifest: dict[str, Any]) -> bytes:
    """The bytes of file ``name`` of the published version at ``version_key``, checked against the
    listing of its ``manifest`` (size and SHA-256): what a run copies from a stored version into a
    new one must be what was published, or a damaged file would be published again under a fresh,
    valid checksum. Raises ``FileNotFoundError`` (missing) or :class:`NotAsListed`."""
    data = store.read_bytes(f"{version_key}/{name}", large=True)
    listing = manifest.get("files")
    entry = listing.get(name) if isinstance(listing, dict) else None
    entry = entry if isinstance(entry, dict) else {}
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise NotAsListed(f"{version_key}/{name} is not the file its manifest lists")
    return data


#: What :func:`manifest_problems` says of a manifest whose ``files`` is not a listing.
NO_LISTING = f"{MANIFEST} lists no files (not written by prh's publish?)"


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """What makes a manifest (a JSON object naming its version, as
    :meth:`storage.store.Store.manifests` yields it) unusable, empty when nothing does: ``files``
    must be an object (name → entry); ``catalog``, ``lineage`` and ``lineage.features``, where
    present, objects too (null included: prh's publish writes none of them null), and
    ``lineage.dataset_version`` text. Readers that would fail on such a field (the catalog,
    ``prh gc --keep-runs``) treat the version as damaged. So is a feature manifest whose listing
    lacks a layer file that runs open by name (:func:`_files_read_by_name`): the catalog reads the
    files listed, pairing ``layer-<i>`` for each i below the catalog record's ``n_layers``, so a
    layer dropped from the listing by hand had been left out of the ``features`` view, aligned by
    every run all the same (its size unchecked), and passed by ``prh verify``."""
    if not isinstance(manifest.get("files"), dict):
        return [NO_LISTING]
    problems = [f"{MANIFEST}: its {name!r} is {_json_type(manifest[name])}, not an object (edited, or written by another program?)"
                for name in ("catalog", "lineage") if name in manifest and not isinstance(manifest[name], dict)]
    lineage = manifest.get("lineage")
    if isinstance(lineage, dict):
        if "features" in lineage and not isinstance(lineage["features"], dict):
            problems.append(f"{MANIFEST}: its lineage's 'features' is {_json_type(lineage['features'])}, not an object "
                            "(model → feature version)")
        if "dataset_version" in lineage and not isinstance(lineage["dataset_version"], str):
            problems.append(f"{MANIFEST}: its lineage's 'dataset_version' is {_json_type(lineage['dataset_version'])}, not text")
    if not problems:
        problems.extend(_files_read_by_name(manifest))
    return problems


def _files_read_by_name(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with a well-typed feature manifest's listing against the layer files runs open
    by name: pairing reads ``layer-000`` up to its catalog record's ``n_layers`` (which must then be
    a whole number of at least 1), whatever the listing says, while the catalog reads the files
    listed. Other manifests, and one without ``n_layers``, are not looked at (a pair's or a
    dataset's file left out of its listing is found by ``prh verify`` in the version's folder:
    :func:`check_version`)."""
    catalog = manifest.get("catalog") or {}
    if manifest.get("kind") != "features" or "n_layers" not in catalog:
        return []
    count = catalog["n_layers"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return [f"{MANIFEST}: its catalog record's 'n_layers' is {json.dumps(count)}, not a number of layers "
                "(edited, or written by another program?)"]
    expected = [layer_file(i) for i in range(count)]
    return [f"{name}: not in the manifest's listing, though its catalog record says {count} layers (runs open "
            f"{expected[0].removesuffix('.parquet')} to {expected[-1].removesuffix('.parquet')} by name): "
            "the manifest was edited?" for name in expected if name not in manifest["files"]]


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages (``null``, ``a list``, ``text``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def check_version(store: Store, version_key: str, manifest: dict[str, Any], quick: bool = False) -> VersionCheck:
    """Every file the manifest lists: present, of its size and (unless ``quick``) of its SHA-256.
    A manifest with :func:`manifest_problems` is damaged, no file checked."""
    check = VersionCheck(version_key)
    check.problems.extend(manifest_problems(manifest))
    if check.problems:
        return check
    listing = manifest["files"]
    found = {entry["name"]: entry for entry in store.entries(version_key) if entry["type"] != "directory"}
    for name, expected in sorted(listing.items()):
        size, sha = (expected.get("bytes"), expected.get("sha256")) if isinstance(expected, dict) else (None, None)
        entry = found.get(name)
        if entry is None:
            check.problems.append(f"{name}: missing")
            continue
        check.files += 1
        if entry.get("size") != size:
            said = f"{size!r}: {_json_type(size)}, not a number of bytes" if not isinstance(size, (int, float)) or \
                isinstance(size, bool) else size  # "7609" had read "7609 bytes, the manifest says 7609"
            check.problems.append(f"{name}: {entry.get('size')} bytes, the manifest says {said}")
            continue
        check.bytes += int(size or 0)
        if not quick:
            actual = file_sha256(store, f"{version_key}/{name}")[1]
            if actual != sha:
                check.problems.append(f"{name}: content changed (SHA-256 {actual[:12]}…, the manifest says {str(sha)[:12]}…)")
    # a file of the folder that the listing does not name: under a name prh writes in a version
    # (a layer, scores, best pairs, samples), a listing edited by hand (with the layer count, say,
    # so that every reader now takes the model for one layer shorter): damage; under another name
    # (a sync tool's conflict copy, a note), a file added beside intact files: named, not damage
    # (`--remove-damaged` would remove the whole version for it). Never a writer's temporary file
    # or claim (hidden names: `prh gc` removes those left behind), nor the shards under `_partial/`
    # (a folder).
    for name in sorted(set(found) - set(listing) - {MANIFEST}):
        if name.startswith("."):
            continue
        if _PRH_FILE.fullmatch(name):
            check.problems.append(f"{name}: in the version's folder but not in its manifest's listing "
                                  "(the manifest was edited, or the file added since it was published)")
        else:
            check.unlisted.append(name)
    return check


#: Names of the files prh writes in a published version (``storage.layout``): an unlisted one
#: means an edited listing.
_PRH_FILE = re.compile("|".join([r"layer-\d{3,}\.parquet", *(re.escape(name) for name in (
    SAMPLES_FILE, REJECTED_FILE, SCORES_FILE, BEST_FILE))]))


class DamagedVersion(ValueError):
    """A published version that a run was about to compute from is not what its manifest lists."""


def checked_for_reuse(store: Store, version_key: str, manifest: dict[str, Any], what: str) -> dict[str, Any]:
    """``manifest``, once every file it lists is present at its listed size (as `check_version`
    with ``quick``, from one listing of the version's folder read afresh: a run's process may hold
    an older one; no file read). A run computes from stored versions without reading them against
    their SHA-256; this finds a file cut short, replaced or rewritten by hand (a features file with
    rows dropped) before its numbers reach new results. An edit that keeps a file's size is
    `prh verify`'s to find.

    Raises :class:`DamagedVersion` naming ``what`` (``"the stored features of model 'vit'"``), the
    version, the store, each problem and the remedy."""
    problems = manifest_problems(manifest)
    if not problems:
        sizes = store.sizes(version_key)
        for name, entry in sorted(manifest["files"].items()):
            listed = entry.get("bytes") if isinstance(entry, dict) else None
            size = sizes.get(f"{version_key}/{name}")
            if size is None:
                problems.append(f"{name}: missing")
            elif size != listed:
                problems.append(f"{name}: {size} bytes, the manifest says {listed}")
    if not problems:
        return manifest
    raise DamagedVersion(f"{what}: version {version_key} in store {store.display_url} is damaged: "
                         f"{'; '.join(problems)}; nothing is computed from it (run `prh verify "
                         "--remove-damaged` to remove it: the next run computes it again)")


def verify_store(store: Store, boxes: tuple[str, ...] = BOXES, quick: bool = False,
                 on_check: Callable[[VersionCheck], None] | None = None, records: bool = True) -> list[VersionCheck]:
    """Check every published version under ``boxes`` (see :func:`check_version`); a manifest that
    is not one (:class:`storage.store_errors.DamagedManifest`) is a damaged version too. With
    ``records``, each run record that cannot be read (:class:`storage.runs.DamagedRecord`) is a
    failed check too (not removable), and each version under ``boxes`` that the latest run with
    results names and the store lacks is a ``missing`` one (:func:`missing_latest_versions`).
    ``on_check`` sees each result as it is made (progress). Returns the results in key order,
    the run records and missing versions last."""
    results = []
    for check in _checks(store, boxes, quick, records):
        if on_check is not None:
            on_check(check)
        results.append(check)
    return results


def _checks(store: Store, boxes: tuple[str, ...], quick: bool, records: bool) -> Iterator[VersionCheck]:
    seen: set[str] = set()  # version folders with a manifest, sound or not
    for box in boxes:
        damaged: list[DamagedManifest] = []
        for version_key, manifest in store.manifests(box, on_damaged=damaged.append):
            seen.add(version_key)
            if is_version_key(version_key):
                check = _settled(store, check_version(store, version_key, manifest, quick), manifest, quick)
                if check is not None:
                    yield check
            else:
                yield _stray(version_key, STRAY)
        for error in damaged:
            seen.add(error.version_key)
            if named_like_a_version(error.version_key):
                yield VersionCheck(error.version_key, problems=[str(error)])
            else:
                yield _stray(error.version_key, f"{STRAY}: {error.problem}; {STRAY_ADVICE}")
    if records:
        found: list[DamagedRecord] = []
        readable = run_records(store, damaged=found)
        extraction_records(store, found)
        for record in found:
            yield VersionCheck(record.key, problems=[f"a run record, not a version: {record}"], removable=False,
                               left=f"left {record.key} in place: a run record (repair or remove that file by hand)")
        yield from missing_latest_versions(readable, seen, boxes)


def missing_latest_versions(records: list[dict[str, Any]], present: set[str],
                            boxes: tuple[str, ...] = BOXES) -> Iterator[VersionCheck]:
    """A check (``missing``, not removable) for each version under ``boxes`` that the latest run
    with results names (``storage.run_retention.newest_runs``: the run ``prh report`` and the
    catalog's ``*_latest`` views show, whose versions ``prh gc --keep-runs`` always keeps) and
    that is not among the version folders ``present`` in the store: a partial restore or copy, a
    version removed by hand or as damaged. ``prh verify`` had exited 0 on such a store ("all
    match their manifests"), as it checked only the versions there. A record that does not name
    its versions readably is passed over (``prh gc --keep-runs`` refuses it)."""
    from storage.run_retention import newest_runs, run_versions

    latest = newest_runs(records, 1)
    if not latest:
        return
    try:
        named = run_versions(latest[0])
    except ValueError:
        return
    run_id = latest[0].get("run_id")
    for key in sorted(k for k in named - present if k.split("/", 1)[0] in boxes):
        yield VersionCheck(key, problems=[f"missing: named by run {run_id}, the latest run with results (a partial restore "
                                          "or copy, or removed by hand or as damaged); the catalog's *_latest views and "
                                          "prh report lack it"], removable=False, missing=True,
                           left=f"{key} is missing: `prh run` with run {run_id}'s config computes it again")


def _stray(folder: str, problem: str) -> VersionCheck:
    return VersionCheck(folder, problems=[problem], removable=False,
                        left=f"left {folder}/{MANIFEST} in place: not a version folder (remove that file by hand)")


def _settled(store: Store, check: VersionCheck, manifest: dict[str, Any], quick: bool) -> VersionCheck | None:
    """``check`` of a version whose files did not match its ``manifest``, read when the listing
    started, after one more look at the manifest: None when it is gone (``prh gc --keep-runs`` or
    another ``verify --remove-damaged`` unpublished the version meanwhile, manifest first: not
    damaged, just no longer published), the check made again when a run published it anew."""
    if check.ok:
        return check
    try:
        now = store.manifest(check.key)
    except DamagedManifest as error:
        return VersionCheck(check.key, problems=[str(error)])
    if now is None:
        return None
    return check if now == manifest else check_version(store, check.key, now, quick)


def remove_version(store: Store, version_key: str) -> bool:
    """Delete a published version with :meth:`storage.store.Store.unpublish`, as ``prh gc`` does:
    under its publishing claim (a stale one taken over), its manifest first (it is unpublished
    from then on, and a run publishes it again), then the rest of its folder, shards under
    ``_partial/`` too. The manifest is never parsed, so a damaged one is removed the same way.
    Returns True if this call removed it, False when a writer holds the claim (a run is
    publishing the version again right now: left to it). A crash or failure midway leaves the
    claim, so ``prh gc`` (``Store.sweep_abandoned``) removes the files left without a manifest
    (shards under ``_partial/`` once they count as abandoned). ValueError for a key that is not a
    version folder's (``features/manifest.json`` would otherwise take every version of the box
    with it)."""
    if not is_version_key(version_key):
        raise ValueError(f"{version_key!r} is not a version folder of the store (see storage.verify.VERSION_DEPTH): not removed")
    return store.unpublish(version_key)
