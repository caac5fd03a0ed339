"""Rendered report figures kept in the store, so that a rerun draws only what changed.

Layout: ``reports/figures/<drawing-code version>/<digest>.<format>``, where the digest is
``tasks.report.figures.figure_digest`` of the rows a figure shows. The namespace is the version of
what draws (the code of ``tasks/report`` and the matplotlib version: :func:`drawing_version`), so a
changed drawing is never served from an older namespace; ``prh gc`` removes the namespaces of other code versions, and in the current one the
figures written more than ``--older-than-days`` ago (a hit does not renew a file, so a figure
still shown is drawn again once after that: a cache, never a report, loses it).

Two deployments of different code may share one store: the namespace of another code version is
kept while a run of that code is alive (:func:`held_namespaces`), since it draws its report into
it at its end. A run's record names the version it draws with (:data:`REPORT_CODE`); while an
alive run's record names none (written by a prh older than the field), which namespace it uses is
unknown and every namespace stays. An extraction stage (``prh-extract``) draws no report: its
record holds no namespace.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from storage.runs import live_records, run_records
from storage.store import Store, modified_at
from storage.versioning import CodeChangedOnDisk, code_version, content_id, installed_version, refuse_stale_code

FIGURES = "reports/figures"
#: The field of a run record (``flows.run_record.new_record``) that names the figure-cache
#: namespace its process draws into: :func:`drawing_version` of its code.
REPORT_CODE = "report_code_version"
# Leading bytes of a complete file of each format (a file is written atomically, but a store may
# still hold something else under the name).
_SIGNATURES = {"png": (b"\x89PNG\r\n\x1a\n",), "svg": (b"<?xml", b"<svg")}

log = logging.getLogger(__name__)


def drawing_version() -> str:
    """Version of what draws the report's figures: the code of ``tasks/report`` and the installed
    matplotlib, which lays out, styles and rasterises them (an upgrade can redraw the same rows
    differently: a report must not show figures drawn by the matplotlib of an older deployment
    sharing the store). Read from the installed distribution's metadata: matplotlib is not
    imported (a cached report imports it only to draw a figure)."""
    return content_id({"code": code_version("tasks/report"), "matplotlib": installed_version("matplotlib")})


class StoreFigureCache:
    """A ``tasks.report.figures.FigureCache`` in ``store``. Reads that fail are misses; the first
    write that fails (a read-only store) turns writing off for this cache, never the report."""

    def __init__(self, store: Store, namespace: str | None = None) -> None:
        self.store = store
        self.namespace = namespace or drawing_version()
        self.writable = True
        self.hits = self.misses = 0

    def _key(self, digest: str, fmt: str) -> str:
        return Store.key(*FIGURES.split("/"), self.namespace, f"{digest}.{fmt}")

    def get(self, digest: str, formats: tuple[str, ...]) -> dict[str, bytes] | None:
        files = {}
        for fmt in formats:
            try:
                data = self.store.read_bytes(self._key(digest, fmt))
            except (OSError, ValueError):
                data = b""
            if not data.startswith(_SIGNATURES.get(fmt, (b"",))):
                self.misses += 1
                return None
            files[fmt] = data
        self.hits += 1
        return files

    def put(self, digest: str, files: dict[str, bytes]) -> None:
        if not self.writable:
            return
        try:
            refuse_stale_code()  # drawn by code or a matplotlib upgraded under this process: not for the namespace
            for fmt, data in files.items():
                self.store.write_bytes(self._key(digest, fmt), data)
        except (OSError, ValueError, CodeChangedOnDisk) as error:
            self.writable = False
            log.info("figure cache in %s not written (%s: %s); figures are drawn every time",
                     self.store.display_url, type(error).__name__, error)


def other_namespaces(store: Store, current: str | None = None) -> list[str]:
    """Keys of the figure-cache namespaces other than the current drawing code's
    (``reports/figures/<ns>``), sorted."""
    current = current or drawing_version()
    base = store.path(FIGURES)
    if not store.fs.exists(base):
        return []
    store.fs.invalidate_cache(base)
    # Store.entries leaves out the folder's own zero-byte "directory marker" (``reports/figures/``,
    # written by rclone, the S3 console or a sync of empty folders), which s3fs lists as a child:
    # taken for a namespace named ``figures``, it had the whole cache removed, current figures too.
    found = [entry["key"] for entry in store.entries(FIGURES)]
    return sorted(key for key in found if key.rsplit("/", 1)[-1] != current)


def held_namespaces(store: Store, keys: list[str]) -> dict[str, str]:
    """Of the namespace keys ``keys``, those an alive pipeline run may draw into (``storage.runs.
    live_records``: ``RUNNING`` and not known gone, or beating again), each with why: its record
    names that namespace (:data:`REPORT_CODE`), or one alive run's record names none (a prh older
    than the field wrote it), and then every one of ``keys`` is held. A run that ended, or is
    known gone, holds none: its namespace goes as any other; nor does an extraction stage
    (``runs/extractions/``), which draws no report."""
    if not keys:
        return {}
    used: dict[str, str] = {}
    for record in live_records(store, run_records(store, damaged=[])):  # damaged ones: `prh verify`'s, not gc's
        run_id, version = record.get("run_id"), record.get(REPORT_CODE)
        if not isinstance(version, str) or not version:
            why = (f"run {run_id} is still running and its record does not say which report code it draws with (an older "
                   "prh): every namespace stays until it ends")
            return dict.fromkeys(keys, why)
        used.setdefault(version, f"run {run_id} is still running with that report code")
    return {key: used[key.rsplit("/", 1)[-1]] for key in keys if key.rsplit("/", 1)[-1] in used}


def stale_namespaces(store: Store, current: str | None = None, held: dict[str, str] | None = None) -> list[str]:
    """Figure-cache namespaces other than the current drawing code's (``reports/figures/<ns>``)
    that no alive run may draw into (:func:`held_namespaces`). ``held``, when given, receives the
    others (key -> why it stays)."""
    others = other_namespaces(store, current)
    kept = held_namespaces(store, others)
    if held is not None:
        held.update(kept)
    return [key for key in others if key not in kept]


def remove_stale_namespaces(store: Store, current: str | None = None, dry_run: bool = False,
                            sizes: dict[str, int] | None = None, held: dict[str, str] | None = None) -> list[str]:
    """Remove (or with ``dry_run`` only list) the stale namespaces; returns their keys.
    ``sizes``, when given, receives ``key -> bytes`` of each namespace's files, measured before
    removing it; ``held`` the namespaces of other code kept for an alive run (key -> why). A run
    that starts after the look at the runs may find its namespace gone: its report then draws
    every figure again (a cache; the report is whole)."""
    return store.remove_trees(stale_namespaces(store, current, held), dry_run, sizes)


def old_figures(store: Store, older_than_s: float, current: str | None = None,
                now: float | None = None) -> dict[str, int]:
    """Files of the current namespace written more than ``older_than_s`` seconds before ``now``:
    ``key -> bytes``, sorted by key. Digests of superseded rows (a model added, a rerun with
    other scores) are never asked for again and would otherwise stay forever."""
    now = time.time() if now is None else now
    base = f"{FIGURES}/{current or drawing_version()}"
    if not store.fs.exists(store.path(base)):
        return {}
    store.fs.invalidate_cache(store.path(base))
    entries: list[dict[str, Any]] = store.fs.ls(store.path(base), detail=True)
    old = {store.key_of(e["name"]): int(e.get("size") or 0) for e in entries
           if e.get("type") == "file" and not e["name"].endswith("/")  # the folder's own marker (above)
           and now - modified_at(e) > older_than_s}
    return dict(sorted(old.items()))


def remove_old_figures(store: Store, older_than_s: float, dry_run: bool = False, current: str | None = None
                       ) -> dict[str, int]:
    """Remove (or with ``dry_run`` only list) :func:`old_figures`; returns them (key -> bytes).
    A report drawing meanwhile finds a miss and draws the figure again."""
    old = old_figures(store, older_than_s, current)
    if not dry_run:
        for key in old:
            store.delete(key)
    return old
