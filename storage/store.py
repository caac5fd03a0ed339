"""The store: an fsspec URL turned into a layout of immutable, atomically published versions.

Layout under the store root (see docs/storage.md)::

    datasets/<dataset_version>/samples.parquet, manifest.json
    features/<dataset_version>/<model>/<feature_version>/layer-<i>.parquet, manifest.json
    alignment/<dataset_version>/<model_a>__<model_b>/<alignment_version>/scores.parquet,
        best.parquet, manifest.json
    runs/<run_id>.json

A version is visible to readers only once its ``manifest.json`` exists; the manifest is written
last and lists every data file with its size and SHA-256. Each file is written atomically
(temporary name + rename on local disks; a single PUT on object stores), so a reader never sees
a half-written file. Two writers publishing the same version at once are serialised by an
exclusive claim file (``<version>/.publishing``, created with ``link`` locally and a conditional
PUT on S3): one writes, the other waits for its manifest, so the store ends with one complete copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.keys import safe_component

MANIFEST = "manifest.json"
CLAIM = ".publishing"
STALE_CLAIM_SECONDS = 1800.0
DEFAULT_STORE = "store"


def redact_url(url: str) -> str:
    """The URL without any user:password part, for logs, manifests and artifacts."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def utc_now() -> str:
    """Current UTC time as ISO 8601 with seconds precision."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Published:
    """Outcome of :meth:`Store.publish`: where the version lives and whether this call wrote it."""

    key: str
    manifest: dict[str, Any]
    written: bool


class Store:
    """A store rooted at an fsspec URL (a local folder, ``file://...``, ``s3://bucket/prefix``).

    ``storage_options`` go to the filesystem (for S3: ``key``, ``secret``, ``endpoint_url``...);
    by default credentials and endpoint come from the standard AWS environment variables.
    """

    def __init__(self, url: str = DEFAULT_STORE, storage_options: dict[str, Any] | None = None):
        if "://" not in url:
            url = Path(url).expanduser().resolve().as_uri()
        self.url = url.rstrip("/")
        options = dict(storage_options or {})
        if self.url.startswith("s3://") and "endpoint_url" not in options:
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                options["endpoint_url"] = endpoint
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        self.root = self.root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)

    # ----------------------------------------------------------------- paths
    @property
    def display_url(self) -> str:
        """The store URL safe to show (no credentials)."""
        return redact_url(self.url)

    def path(self, key: str) -> str:
        """Filesystem path of a key (``a/b/c``) under the root."""
        return f"{self.root}/{key}" if key else self.root

    def uri(self, key: str) -> str:
        """A URL DuckDB can read: a plain local path, or ``s3://bucket/key``."""
        if self.is_local:
            return self.path(key)
        protocol = _protocols(self.fs)[0]
        return f"{protocol}://{self.path(key)}"

    @staticmethod
    def key(*components: str) -> str:
        """Join validated components into a key; raises ValueError on unsafe components."""
        return "/".join(safe_component(c, "storage key component") for c in components)

    # ----------------------------------------------------------------- reads
    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def read_table(self, key: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path(key), "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def manifest(self, version_key: str) -> dict[str, Any] | None:
        """The manifest of a published version, or None if it is not (completely) published."""
        key = f"{version_key}/{MANIFEST}"
        if not self.exists(key):
            return None
        return self.read_json(key)

    def manifests(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every published version under ``prefix`` as (version key, manifest), sorted by key."""
        base = self.path(prefix)
        if not self.fs.exists(base):
            return
        found = self.fs.glob(f"{base}/**/{MANIFEST}")
        for path in sorted(found):
            path = path.split("://", 1)[-1]
            version_key = path[len(self.root) + 1 : -len(MANIFEST) - 1]
            yield version_key, json.loads(self.fs.cat_file(path))

    # ---------------------------------------------------------------- writes
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one file atomically: readers see the old state or the whole new file."""
        path = self.path(key)
        parent = path.rsplit("/", 1)[0]
        if self.is_local:
            tmp = self._durable_temp(parent, data)
            try:
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            self.fs.pipe_file(path, data)

    def _durable_temp(self, parent: str, data: bytes) -> str:
        """Local disks: ``data`` written and fsynced to a fresh temporary file in ``parent``."""
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:  # disk full, interrupted: leave nothing behind
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return tmp

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist yet; True if this call created it.

        Local disks: a temporary file hard-linked to the name (``link`` fails if the name
        exists); S3: a conditional PUT (``If-None-Match: *``). Atomic in both cases.
        """
        path = self.path(key)
        if not self.is_local:
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            self.fs.invalidate_cache(path)
            return True
        parent = path.rsplit("/", 1)[0]
        tmp = self._durable_temp(parent, data)
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def delete(self, key: str) -> None:
        """Remove one file if it exists."""
        path = self.path(key)
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)

    def publish(
        self,
        version_key: str,
        files: dict[str, pa.Table | bytes],
        manifest: dict[str, Any],
        row_group_size: int | None = None,
        stale_after_s: float = STALE_CLAIM_SECONDS,
    ) -> Published:
        """Publish an immutable version: every data file, then the manifest.

        If the version is already published, nothing is written and its manifest is returned.
        The manifest gains ``files`` (name → size, sha256), ``published_at`` and ``key``.

        Concurrent publishers of one version: each first tries to create the claim
        ``<version_key>/.publishing`` exclusively. The one that gets it writes every file and
        the manifest, then drops the claim; the others wait for the manifest and return it
        (``written=False``). So the store ends with one complete copy, one writer's files and
        its manifest, never a mix. A claim older than ``stale_after_s`` (its writer died) is
        removed and the claim retried.
        """
        claim_key = f"{version_key}/{CLAIM}"
        delay = 0.02
        while True:
            existing = self._fresh_manifest(version_key)
            if existing is not None:
                return Published(version_key, existing, written=False)
            token = json.dumps({"owner": uuid.uuid4().hex, "claimed_at": time.time()}).encode()
            if self.create_exclusive(claim_key, token):
                try:
                    existing = self._fresh_manifest(version_key)  # finished between our check and our claim
                    if existing is not None:
                        return Published(version_key, existing, written=False)
                    return Published(version_key, self._write_version(version_key, files, manifest, row_group_size), written=True)
                finally:
                    self.delete(claim_key)
            self._drop_if_stale(claim_key, stale_after_s)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _fresh_manifest(self, version_key: str) -> dict[str, Any] | None:
        self.fs.invalidate_cache(self.path(version_key))
        return self.manifest(version_key)

    def _drop_if_stale(self, claim_key: str, stale_after_s: float) -> None:
        """Remove a claim whose writer has held it for more than ``stale_after_s`` seconds."""
        try:
            raw = self.read_bytes(claim_key)
            claimed_at = float(json.loads(raw)["claimed_at"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return
        if time.time() - claimed_at > stale_after_s:
            try:
                if self.read_bytes(claim_key) == raw:  # still the same claim
                    self.delete(claim_key)
            except FileNotFoundError:
                pass

    def _write_version(
        self, version_key: str, files: dict[str, pa.Table | bytes], manifest: dict[str, Any], row_group_size: int | None
    ) -> dict[str, Any]:
        listing = {}
        for name, content in files.items():
            data = table_to_parquet_bytes(content, row_group_size) if isinstance(content, pa.Table) else content
            self.write_bytes(f"{version_key}/{safe_component(name, 'file name')}", data)
            listing[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            del data
        full = {**manifest, "key": version_key, "files": listing, "published_at": utc_now()}
        self.write_json(f"{version_key}/{MANIFEST}", full)
        return full


def table_to_parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """Serialise a table as Parquet (zstd) in memory."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
