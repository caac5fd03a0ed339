"""What the catalog knows of an object store's Parquet files before DuckDB opens any of them.

Binding ``read_parquet([...], union_by_name = true)`` reads every file's footer, one after the
other: over S3 that is a few requests per file (12.9 s and 677 requests for the demo store behind
20 ms of latency). Instead, on object stores the catalog

- checks every file against one recursive listing of its box (:meth:`Store.listing`: a few LIST
  requests): a file its manifest lists that is missing, or of another size than the manifest
  says (cut short, overwritten), is left out with a warning, as a footer that does not read is;
- reads the files of one schema fingerprint (``storage.parquet_schema``, recorded in the
  manifest at publish) with ``union_by_name = false``, which binds from the first file only;
  the groups are combined ``UNION ALL BY NAME``. Files without a fingerprint (published before
  fingerprints existed) form one group read with ``union_by_name = true``, as before.

Local stores are checked against a listing too (a file rewritten by hand as valid Parquet, rows
dropped or every score 0.999, had been shown on a local store while S3 left it out), and their
views read the files by schema fingerprint as well, but their footers are cheap to read: every
file is bound once when the catalog opens (``bind_every_footer``; ``storage.catalog._footers_bound``),
which finds a file whose footer does not parse. Only that once: DuckDB binds a view again at
each query that names it, and at each view over it (``alignment_best``, ``alignment_fdr``, ...),
and a view of one ``union_by_name`` read of every file had read all of its footers each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ListedFile:
    """A Parquet file as its manifest lists it: its store ``key``, its size in ``bytes`` and its
    ``schema`` fingerprint (either None when the manifest does not say)."""

    key: str
    bytes: int | None = None
    schema: str | None = None

    @classmethod
    def from_manifest(cls, key: str, entry: Any) -> "ListedFile":
        """From a manifest's ``files[name]`` entry (``{"bytes", "sha256", "schema"}``); a value of
        the wrong type (a hand-edited manifest) counts as absent."""
        entry = entry if isinstance(entry, dict) else {}
        size, schema = entry.get("bytes"), entry.get("schema")
        return cls(key, size if isinstance(size, int) and not isinstance(size, bool) else None,
                   schema if isinstance(schema, str) and schema else None)


@dataclass(frozen=True)
class FileGroup:
    """Files that one ``read_parquet`` reads: ``union_by_name`` False for files of one schema."""

    files: list[str]
    union_by_name: bool


@dataclass
class StoredFiles:
    """A store's Parquet files: ``listed`` (DuckDB URI → :class:`ListedFile`, from the
    manifests) and ``entries`` (store key → the listing's entry of that file, from one listing of
    each box: ``Store.listing``, its ``size``, and on S3 its ``ETag`` and ``LastModified``)."""

    listed: dict[str, ListedFile]
    entries: dict[str, dict[str, Any]]
    #: Whether every file's footer is bound once before a view over them is created (local
    #: stores, where footers are cheap to read: a damaged one is found when the catalog opens).
    bind_every_footer: bool = False

    def intact(self) -> dict[str, dict[str, Any]]:
        """Store key → listing entry of each file a manifest lists that the listing holds at the
        manifest's size (what the views read; :meth:`misfits` are left out). A published file is
        never written again, so what its entry says stays true for a connection's life (a file
        rewritten anyway fails its reads on ETag, ``storage.read_only_fs``)."""
        misfits = self.misfits(list(self.listed))
        return {listed.key: self.entries[listed.key] for uri, listed in self.listed.items()
                if uri not in misfits and listed.key in self.entries}

    def misfits(self, files: list[str]) -> dict[str, str]:
        """The files among ``files`` (URIs) that are missing from the listing or whose size is not
        the manifest's, with the reason. A file the manifests do not describe is not judged here."""
        found = {}
        for file in files:
            listed = self.listed.get(file)
            if listed is None:
                continue
            entry = self.entries.get(listed.key)
            size = None if entry is None else int(entry["size"])
            if size is None:
                found[file] = "the file is missing"
            elif listed.bytes is not None and size != listed.bytes:
                found[file] = f"{size} bytes, the manifest says {listed.bytes} (cut short or overwritten)"
        return found

    def groups(self, files: list[str]) -> list[FileGroup]:
        """``files`` split by schema fingerprint, each group in the order of ``files`` and the
        groups in the order of their first file; the files without one make one group read with
        ``union_by_name``."""
        by_schema: dict[str | None, list[str]] = {}
        for file in files:
            listed = self.listed.get(file)
            by_schema.setdefault(listed.schema if listed else None, []).append(file)
        return [FileGroup(group, union_by_name=schema is None) for schema, group in by_schema.items()]
