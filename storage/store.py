"""The store: an fsspec URL turned into a layout of immutable, atomically published versions.

Layout under the store root (see docs/storage.md)::

    datasets/<dataset_version>/samples.parquet, manifest.json
    features/<dataset_version>/<model>/<feature_version>/layer-<i>.parquet, manifest.json
    alignment/<dataset_version>/<model_a>__<model_b>/<alignment_version>/scores.parquet,
        best.parquet, manifest.json
    runs/<run_id>.json

A version is visible to readers only once its ``manifest.json`` exists; the manifest is written
last and lists every data file with its size and SHA-256 (and a Parquet file's schema
fingerprint, ``storage.parquet_schema``). Each file is written atomically
(temporary name + rename on local disks; a single PUT on object stores), so a reader never sees
a half-written file. Two writers publishing the same version at once are serialised by an
exclusive claim file (``<version>/.publishing``, created with ``link`` locally and a conditional
PUT on S3): one writes, the other waits for its manifest, so the store ends with one complete copy.

What a store URL may be, and how it is shown, is ``storage.store_urls``'s; the errors a store
raises are ``storage.store_errors``'s.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import fsspec
import fsspec.asyn
from fsspec.utils import glob_translate
import pyarrow as pa
import pyarrow.parquet as pq

from storage.bytes_read import CountedFile, count, count_fetches, count_local_file, counted_path
from storage.durable import make_folders, sync_folder
from storage.env_numbers import env_flag, env_number
from storage.keys import safe_component
from storage.owner import current_owner, owner_is_dead
from storage.parquet_schema import schema_fingerprint
from storage.s3_options import (NotImplementedReply, denied_permission, describe_s3_failure, from_s3_client,
                                not_implemented_reply, not_s3_reply, redact_text)
from storage.store_errors import (REMOVE_DAMAGED_ADVICE, access_detail, ConditionalWritesIgnored, DamagedManifest, EndpointLacksFeature,
                                  NotAnS3Endpoint, StoreIOError, StoreNotReadable, StoreNotWritable)
from storage.store_urls import (check_duckdb_spelling, check_store_url, check_utf8_url, decoded_local_path, escape_glob, local_store_path,
                                protocol_hint, redact_url, store_file_url)
from storage.versioning import refuse_stale_code

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CLAIM = ".publishing"
#: A writer's sign of life while it publishes: ``<version>/.publishing-alive-<owner id>``, its own
#: file (``heartbeat_at``), so that renewing never writes the claim itself.
HEARTBEAT_PREFIX = ".publishing-alive-"
#: Local disks write a file as ``.<name>.tmp-<uuid>`` beside it, then rename (or link) it.
TEMP_INFIX = ".tmp-"
#: The name of ``Store.check_writable``'s write probe (``storage.temporaries.dead_probes``).
PROBE_NAME = re.compile(r"\.probe-[0-9a-f]{32}")
#: A version folder (``storage.verify.named_like_a_version``: its box's depth, a 16-hex-digit id);
#: another tool's folder beside the versions (``datasets/coco/``) is never one.
_VERSION_FOLDER = re.compile(r"datasets/[0-9a-f]{16}|(?:features|alignment)/[^/]+/[^/]+/[0-9a-f]{16}")
#: A writer renews its sign of life this often while it publishes, so that a claim whose writer
#: died on another host (whose process cannot be checked) goes stale quickly.
CLAIM_HEARTBEAT_SECONDS = 20.0
#: A claim whose last heartbeat is older than this is taken over: 15 missed heartbeats, and room
#: for minutes of clock skew between hosts.
STALE_CLAIM_SECONDS = 300.0
DEFAULT_STORE = "store"
#: Set to 1/true/yes/on to write to an object store that ignores conditional writes (see
#: :class:`ConditionalWritesIgnored`): the user promises that one writer at a time uses the store.
SINGLE_WRITER_ENV = "PRH_SINGLE_WRITER"


def modified_at(info: dict[str, Any]) -> float:
    """Modification time (epoch seconds) from an fsspec listing entry (local ``mtime``, S3
    ``LastModified``); 0 when the listing has neither (counted as old)."""
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _claim_temporary(key: str) -> bool:
    """Whether ``key`` names the temporary file of a claim attempt or of a claim's sign of life
    (``..publishing.tmp-*``, ``..publishing-alive-<owner>.tmp-*``: local disks), which its writer
    renames or unlinks within milliseconds (a killed writer's: ``remove_dead_claim_attempts``)."""
    name = key.rsplit("/", 1)[-1]
    return name.startswith("." + CLAIM) and TEMP_INFIX in name


def _claim_attempt_in_flight(entry: dict[str, Any], stale_after_s: float = STALE_CLAIM_SECONDS) -> bool:
    """Whether a listing entry is the temporary file of a claim attempt (:func:`_claim_temporary`,
    another process's, to be left alone) written within ``stale_after_s``; an older one is a
    killed writer's leftover."""
    return _claim_temporary(entry["name"].rstrip("/")) and _written_within(entry, stale_after_s)


def _written_within(entry: dict[str, Any], seconds: float) -> bool:
    """Whether a listing entry was last written less than ``seconds`` ago (a file in flight)."""
    return time.time() - modified_at(entry) <= seconds


def _arrived_within(entry: dict[str, Any], seconds: float) -> bool:
    """Whether a listing entry was written, or arrived where it is, less than ``seconds`` ago: the
    later of its modification time and, on a local disk, its inode's change time (fsspec's
    ``created``: ``st_ctime``), which a copy that keeps modification times (``rsync -a``,
    ``cp -a``, a restore) cannot set back."""
    changed = entry.get("created")
    arrived = max(modified_at(entry), float(changed) if isinstance(changed, (int, float)) else 0.0)
    return time.time() - arrived <= seconds


def parse_json(raw: bytes | str) -> Any:
    """``json.loads`` of text a store's writer (or a hand edit) chose: JSON nested too deeply for
    the parser (``[[[[...]]]]``) raises ValueError like any other text that is not JSON, not
    RecursionError, so that every reader that names a damaged manifest or record names it too."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def utc_now() -> str:
    """Current UTC time as ISO 8601 to the microsecond (``2026-01-01T00:00:00.123456+00:00``).

    Microseconds, not seconds: two versions published (or two runs started) in one second must
    still order by time, or the catalog's "current" rows fall to the version id's order."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


#: Errors of a local disk that no retry fixes: no space, quota, read-only file system, no
#: permission, a file over the process's file-size limit (``ulimit -f``) or the file system's largest.
_NOT_WRITABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
#: Free space a local store must have before a run starts (``PRH_MIN_FREE_MB`` overrides).
DEFAULT_MIN_FREE_MB = 256
def _file_in_the_way(path: Path) -> Path | None:
    """``path`` or the nearest of its parents that exists, when that is a file (not a folder):
    what stops a local store's folders from being made; None otherwise."""
    try:
        for candidate in (path, *path.parents):
            if candidate.exists():
                return candidate if not candidate.is_dir() else None
    except OSError:  # a parent that cannot be looked into: the write's own error says it
        return None
    return None


#: The first s3fs whose ``pipe_file(mode="create")`` is a conditional PUT (``If-None-Match: *``);
#: older ones drop the mode and overwrite.
S3FS_CONDITIONAL_PUT = (2024, 12)
#: The first botocore whose S3 model has ``IfNoneMatch`` on PutObject (1.35.0 and 1.35.1 have
#: not): s3fs keeps only the arguments the model names, so beside an older one it drops the
#: condition without a word and every exclusive create overwrites. aiobotocore 2.15.0 is the
#: first that requires such a botocore (2.14.0 admits 1.35.0, 2.13 and older only older ones).
BOTOCORE_CONDITIONAL_PUT = (1, 35, 2)
AIOBOTOCORE_CONDITIONAL_PUT = "2.15.0"


def _module_version(name: str) -> tuple[str, tuple[int, ...]] | None:
    """The ``__version__`` of the imported module ``name`` and its leading numbers (up to three);
    None when the module is not imported or its version cannot be read."""
    version = str(getattr(sys.modules.get(name), "__version__", ""))
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return (version, tuple(int(part) for part in found.groups() if part is not None)) if found else None


def _client_without_conditional_put(fs: Any) -> tuple[str, str] | None:
    """Why the S3 client behind ``fs`` sends no ``If-None-Match: *`` with an exclusive create, and
    the requirement to install (``("s3fs 2024.10.0 sends no ...", "s3fs>=2024.12.0")``): an s3fs
    older than :data:`S3FS_CONDITIONAL_PUT`, or a botocore older than
    :data:`BOTOCORE_CONDITIONAL_PUT`. None for another filesystem, a client that sends it, or
    versions that cannot be read."""
    if "s3" not in _protocols(fs):
        return None
    s3fs_version = _module_version(type(fs).__module__.split(".")[0])
    if s3fs_version is not None and s3fs_version[1][:2] < S3FS_CONDITIONAL_PUT:
        return (f"s3fs {s3fs_version[0]} sends no If-None-Match: * with an exclusive create (s3fs 2024.12.0 and later "
                "do)", "s3fs>=2024.12.0")
    botocore_version = _module_version("botocore")
    if botocore_version is not None and botocore_version[1] < BOTOCORE_CONDITIONAL_PUT:
        beside = _module_version("aiobotocore")
        return (f"botocore {botocore_version[0]}{f' (beside aiobotocore {beside[0]})' if beside else ''} knows no "
                "If-None-Match for PutObject, so s3fs drops it from every exclusive create (botocore 1.35.2 and later "
                f"know it; aiobotocore {AIOBOTOCORE_CONDITIONAL_PUT} and later require such a botocore)",
                f"aiobotocore>={AIOBOTOCORE_CONDITIONAL_PUT}")
    return None


def single_writer_accepted(env: dict[str, str] | None = None) -> bool:
    """Whether ``PRH_SINGLE_WRITER`` is set to 1/true/yes/on (unset, empty, 0/false/no/off:
    False); any other value is a ``ValueError`` naming the variable (``storage.env_numbers.env_flag``)."""
    return env_flag(SINGLE_WRITER_ENV, env=env)


#: Stores (display URLs) whose ignored conditional writes this process already warned about.
_WARNED_SINGLE_WRITER: set[str] = set()
#: Stores (display URLs) whose missing conditional writes (``501``) this process already warned about.
_WARNED_NO_CONDITIONAL: set[str] = set()


def _cause(failure: BaseException, error: BaseException) -> BaseException | None:
    """What ``failure`` (:meth:`Store._failure` of ``error``) is raised from: ``error``, or nothing
    for :class:`NotAnS3Endpoint`, a setting to fix: ``tasks.retries`` follows an error's chain to
    its first cut, and the client's ``OSError`` below it had made the task retry (its message
    already says what the endpoint answered); nor for :class:`EndpointLacksFeature`, whose answer
    no retry changes."""
    return None if isinstance(failure, (NotAnS3Endpoint, EndpointLacksFeature)) else error


def refused_url(shown: str, error: TypeError, used: str = "written") -> ValueError:
    """The error of a store (``shown``: its URL without credentials) that opened but whose
    filesystem raised ``TypeError`` when first ``used`` (``written``, ``read``): a URL fsspec
    cannot use, as ``s3://bucket/x::file`` (s3fs hands the chain's ``target_options`` to its client
    session), where fsspec's or the client's own message named neither the store nor the URL."""
    chained = " (a chained URL, 'A::B', passes its second part's options to the first filesystem, which " \
              "may not take them)" if "::" in shown else ""
    return ValueError(f"store {shown} cannot be {used} through: its filesystem refused the URL's options: "
                      f"{' '.join(str(error).split())}{chained}; a store is a folder, file://PATH or s3://BUCKET/PREFIX")


#: How the request headers an S3 server may lack are named in :class:`EndpointLacksFeature`
#: messages (by the header's start, lower case), and what the user can do about each.
_CHECKSUM_HEADERS = ("x-amz-checksum-", "x-amz-sdk-checksum-")
CHECKSUM_SETTING = "AWS_REQUEST_CHECKSUM_CALCULATION=when_required"


#: Owner ids of claims this process could not remove (the endpoint was down): its own leftovers.
_ABANDONED_CLAIMS: set[str] = set()


@dataclass(frozen=True)
class Published:
    """Outcome of :meth:`Store.publish`: where the version lives and whether this call wrote it."""

    key: str
    manifest: dict[str, Any]
    written: bool


#: The folders a store's versions, runs and reports lie in, at its top (a folder with none of them
#: is no prh store: ``prh``'s read-only commands refuse it).
STORE_FOLDERS = ("runs", "datasets", "features", "alignment", "reports")


class Store:
    """A store rooted at an fsspec URL (a local folder, ``file://...``, ``s3://bucket/prefix``).

    ``storage_options`` go to the filesystem (for S3: ``key``, ``secret``, ``endpoint_url``...);
    by default credentials and endpoint come from the standard AWS environment variables.
    """

    def __init__(self, url: str | os.PathLike[str] = DEFAULT_STORE, storage_options: dict[str, Any] | None = None):
        #: An S3 store's endpoint and where it was set (None: the AWS default endpoint), for messages.
        self._endpoint: tuple[str, str] | None = None
        if isinstance(url, os.PathLike) and isinstance(path := os.fspath(url), str):
            url = path  # a pathlib.Path (a notebook's folder) is the folder it names
        check_store_url(url)
        local = None  # a local store's folder, for fsspec (which does not decode file URLs)
        if "://" not in url:  # a local path, used as written: no percent-decoding
            resolved = Path(url).expanduser().resolve()
            if resolved == Path(resolved.anchor):  # '..' from /tmp, '.' from /: would become 'file:', the working folder
                raise ValueError(f"store URL {url!r} names the filesystem's root ({resolved}): add the folder, e.g. /data/prh")
            local, url = resolved.as_posix(), store_file_url("file", resolved.as_posix())
        elif (decoded := local_store_path(url)) is not None:  # file:///data/my%20store: the folder '/data/my store'
            local = decoded_local_path(url, decoded).rstrip("/")
            url = store_file_url(url.partition("://")[0], local)
        check_utf8_url(url)
        self.url = url.rstrip("/")
        options = dict(storage_options or {})
        is_s3 = self.url.startswith("s3://")
        if is_s3:
            # Retries and timeouts that ride out a flaky endpoint (see storage.s3_options).
            from storage.s3_options import option_s3fs_lacks, s3fs_retries, with_s3_defaults

            if (lacking := option_s3fs_lacks(options)) is not None:
                raise ValueError(f"store {redact_url(self.url)}: {lacking}")
            options = with_s3_defaults(options)
            if "endpoint_url" in options:
                self._endpoint = (str(options["endpoint_url"]), "the storage option endpoint_url")
            else:
                variable = next((v for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if os.environ.get(v)), None)
                if variable:
                    options["endpoint_url"] = os.environ[variable]
                    self._endpoint = (os.environ[variable], variable)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url if local is None else f"file://{local}", **options)
        except (ValueError, ImportError) as error:  # unknown protocol, its package not installed
            raise ValueError(f"store {redact_url(self.url)}: cannot open it: {error}{protocol_hint(self.url, error)}") from None
        except OSError as error:  # a filesystem that connects as it opens (ftp, sftp...)
            raise StoreIOError(f"store {redact_url(self.url)}: cannot reach it: {_describe(error)}") from error
        self.root = self.root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)
        #: An S3 store (s3fs): bulk removals read each key's answer (:meth:`_delete_objects`).
        self._is_s3 = not self.is_local and "s3" in _protocols(self.fs)
        if self.is_local:  # DuckDB must read the folder Python writes
            check_duckdb_spelling(self.root, "store folder")
        #: Options of a whole-file read in one GET request (:func:`_one_get_options`).
        self._one_get = _one_get_options(self.fs)
        if is_s3 and (fs_retries := s3fs_retries()) is not None:
            self.fs.retries = fs_retries  # s3fs's own loop around each call (a cached, shared instance)
        if not self.is_local:  # an object store's files fetched whole (the alignment's layer files) are bytes read
            count_fetches(self.fs)

    # ----------------------------------------------------------------- paths
    @property
    def display_url(self) -> str:
        """The store URL safe to show (no credentials)."""
        return redact_url(self.url)

    def path(self, key: str) -> str:
        """Filesystem path of a key (``a/b/c``) under the root."""
        return f"{self.root}/{key}" if key else self.root

    def glob(self, prefix: str, pattern: str, detail: bool = False, refresh: bool = False) -> Any:
        """``fs.glob`` of ``pattern`` (``**/manifest.json``) under the key ``prefix``. The store's
        own path is escaped: a folder named ``results [v1]`` or ``exp*`` is matched literally.
        ``refresh``: list every folder afresh (s3fs otherwise answers a pattern with a wildcard
        folder, ``*/v/manifest.json``, from listings it cached earlier, which can lack folders)."""
        fresh = {"refresh": True} if refresh else {}  # passed down to every ls
        return self.fs.glob(f"{escape_glob(self.path(prefix))}/{pattern}", detail=detail, **fresh, **self._walk_errors())

    def _walk_errors(self) -> dict[str, Any]:
        """``on_error`` for fsspec's walk (``glob``, ``find``) of a local store: a folder this user
        may not list is :class:`StoreNotReadable` naming it, its mode and owner; fsspec skipped it
        without a word, so that ``prh verify`` found "all match" and ``prh sql`` no rows where a
        second user could not read the first one's versions. A folder removed meanwhile (``prh gc``)
        is still skipped, and so is one that is not prh's (``lost+found`` of a store at the top of
        a disk)."""
        if not self.is_local:
            return {}

        def raise_unreadable(error: OSError) -> None:
            where = error.filename if isinstance(error.filename, str) else self.root
            inside = where.rstrip("/")[len(self.root) + 1:].split("/", 1)[0] if where.startswith(self.root + "/") else ""
            if isinstance(error, PermissionError) and inside in STORE_FOLDERS:
                owner = f" ({detail})" if (detail := access_detail(where)) else ""
                raise StoreNotReadable(f"store {self.display_url}: cannot list the folder {where!r}: {error.strerror}{owner}: "
                                       "ask its owner to let others read the store (chmod -R a+rX), or run as that user") from None

        return {"on_error": raise_unreadable}

    def key_of(self, path: str) -> str:
        """The key of a path this store's filesystem listed (``glob``/``ls``; with or without a
        protocol prefix): the inverse of :meth:`path`."""
        path = path.split("://", 1)[-1].rstrip("/")
        if path != self.root and not path.startswith(self.root + "/"):
            raise ValueError(f"{path!r} is not under the store root {self.root!r}")
        return path[len(self.root) + 1:]

    def uri(self, key: str) -> str:
        """A URL DuckDB can read: a plain local path, or ``s3://bucket/key``. The file of a local
        store handed out so (the layer files the alignment reads in place) counts its size as
        read (``storage.bytes_read``: DuckDB reads it past fsspec); an object store's file is
        counted as it is fetched."""
        if self.is_local:
            if key and counted_path(key):
                count_local_file(self.path(key))
            return self.path(key)
        return self._remote_uri(key)

    def _remote_uri(self, key: str) -> str:
        protocol = _protocols(self.fs)[0]
        return f"{protocol}://{self.path(key)}"

    def read_uri(self, key: str) -> str:
        """The URL for DuckDB's readers (``read_parquet``) of the one file at ``key``: :meth:`uri`
        with glob characters escaped, since DuckDB takes every path as a pattern (a store folder
        ``results [v1]`` would match ``results v`` or nothing). Nothing is counted as read: a
        catalog view names every file, a query reads what it needs."""
        return escape_glob(self.path(key) if self.is_local else self._remote_uri(key))

    @staticmethod
    def key(*components: str) -> str:
        """Join validated components into a key; raises ValueError on unsafe components."""
        return "/".join(safe_component(c, "storage key component") for c in components)

    # ----------------------------------------------------------------- reads
    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[None]:
        """Errors of an object store that is down or refusing, raised inside, re-raised naming
        the store, the key read and the S3 cause (same classification, see :meth:`_failure`)."""
        try:
            yield
        except Exception as error:
            failure = self._failure(f"read {key or 'the root'}", error)
            if failure is error:
                raise
            raise failure from _cause(failure, error)

    def exists(self, key: str) -> bool:
        with self._reading(key):
            if key == "" and self._is_s3:
                return self._s3_root_exists()
            return self.fs.exists(self.path(key))

    def _s3_root_exists(self) -> bool:
        """Whether an S3 store's root holds anything: one listing of its prefix (one key asked for).
        s3fs's ``exists`` first sends a HEAD of the prefix as a key (``PREFIX``), which credentials
        granted ``s3:GetObject`` on ``PREFIX/*`` only (the least a store needs: docs/storage.md,
        "Permissions on S3") may not send: AWS answers 403 and every command stopped with "cannot
        read the root". An object named like the root (no store: a file) is still found, and a
        refused HEAD of it is no store either."""
        bucket, _, prefix = self.root.partition("/")
        if not prefix:  # a store at the bucket's top: the bucket's own existence
            return bool(self.fs.exists(self.root))
        reply = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/", MaxKeys=1)
        if reply.get("KeyCount") or reply.get("Contents"):
            return True
        try:
            return bool(self.fs.exists(self.root))
        except PermissionError:
            return False

    def read_bytes(self, key: str, large: bool = False) -> bytes:
        """The content of the file at ``key``, read in one request; ``large`` (a data file, maybe
        hundreds of MB): as the filesystem reads a large file, on S3 its size asked first and its
        ranges read concurrently."""
        with self._reading(key):
            data = self.fs.cat_file(self.path(key), **({} if large else self._one_get))
        if counted_path(key):
            count(len(data))
        return data

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[Any]:
        """The file at ``key`` opened for streaming reads (binary); errors name the store and key."""
        with self._reading(key), self.fs.open(self.path(key), "rb") as handle:
            yield CountedFile(handle) if counted_path(key) else handle

    def entries(self, key: str) -> list[dict[str, Any]]:
        """What the folder ``key`` holds, one level: ``{"name", "key", "type" ('file' or
        'directory'), "size"}`` each, from one listing read afresh (on S3 one LIST request per
        1,000 names, a missing folder one too); empty when the folder, or the bucket, does not
        exist."""
        path = self.path(key)
        try:  # no existence check first (on S3 a HEAD and a LIST request): a missing folder lists nothing
            with self._reading(key):
                self.fs.invalidate_cache(path)  # another process may have written there since a listing was cached
                found = self._folder_listing(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for entry in found:
            entry_key = self.key_of(entry["name"])
            if entry_key == key:
                continue
            out.append({"name": entry_key.rsplit("/", 1)[-1], "key": entry_key, "type": entry.get("type"), "size": entry.get("size")})
        return out

    def _folder_listing(self, path: str) -> list[dict[str, Any]]:
        """The filesystem's entries directly in the folder ``path`` (``fs.ls`` with details). On S3
        only the folder's own listing: s3fs's ``ls`` of a folder that lists nothing lists its
        parent too, every page of it, for a file of that name (``runs/alive`` or
        ``runs/extractions`` missing, as at most run starts: every run record again, 4 LIST
        requests in place of 1 beside 2,500 records)."""
        lsdir = getattr(self.fs, "_lsdir", None)  # s3fs (2024.12 on) has no public listing without that fallback
        if "s3" in _protocols(self.fs) and lsdir is not None:
            return list(fsspec.asyn.sync(self.fs.loop, lsdir, self.fs._strip_protocol(path).rstrip("/"), refresh=True))
        return self.fs.ls(path, detail=True)

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every file under the folder ``prefix``, at any depth, as key → size in bytes, from one
        recursive listing read afresh (on S3 one LIST request per 1,000 objects, no request per
        file); empty when the folder does not exist."""
        return {key: int(info["size"]) for key, info in self.listing(prefix).items()}

    def listing(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every file under the folder ``prefix``, at any depth, as key → the filesystem's listing
        entry (``name``, ``size``; on S3 also ``ETag`` and ``LastModified``, what a HEAD request
        would say), from one recursive listing read afresh (:meth:`sizes`); empty when the folder
        does not exist."""
        path = self.path(prefix)
        try:  # no existence check first (on S3 a HEAD and a LIST request): a missing folder lists nothing
            with self._reading(prefix):
                self._forget_listings(path)
                found = self.fs.find(path, detail=True, **self._walk_errors())
        except FileNotFoundError:  # s3fs: the bucket itself is missing
            return {}
        return {self.key_of(name): dict(info) for name, info in found.items()
                if info.get("type", "file") != "directory" and info.get("size") is not None}

    def _forget_listings(self, path: str) -> None:
        """Drop the filesystem's cached listings of ``path``, its parents and every folder under
        it. (s3fs's recursive listing fills the cache of a folder from the objects under it but
        stops at a folder whose listing is cached: a parent dropped alone came back without that
        child, so the folder looked gone to ``exists``.)"""
        self.fs.invalidate_cache(path)
        cache = getattr(self.fs, "dircache", None)
        if cache is not None:
            for cached in [name for name in cache if str(name).startswith(path + "/")]:
                cache.pop(cached, None)

    def tree_bytes(self, key: str) -> int:
        """Total size in bytes of the files under the folder ``key`` (all depths; 0 when it does
        not exist): what removing it frees."""
        return sum(self.sizes(key).values())

    def remove_tree(self, key: str) -> None:
        """Remove the folder ``key`` and all it holds (nothing if it does not exist)."""
        path = self.path(key)
        with self._reading(key):
            if self.fs.exists(path):
                self.remove_path_tree(path)
            self.fs.invalidate_cache(path)

    def remove_path_tree(self, path: str) -> None:
        """Remove everything under the filesystem path ``path`` (``fs.rm(path, recursive=True)``);
        on S3 every key's own answer is checked (:meth:`_delete_objects`)."""
        if not self._is_s3:
            self.fs.rm(path, recursive=True)
            return
        listed = self.fs.find(path, withdirs=False, detail=True)  # the objects (S3 has no folders to remove)
        self._delete_objects([entry for entry, info in listed.items()
                              if info.get("type") != "directory" and self.fs.split_path(entry)[1]])

    def remove_trees(self, keys: list[str], dry_run: bool = False, sizes: dict[str, int] | None = None) -> list[str]:
        """Remove (with ``dry_run`` only measure) the folders ``keys``; returns ``keys``.
        ``sizes``, when given, receives ``key -> bytes`` of each folder, measured before removing it."""
        for key in keys:
            if sizes is not None:
                sizes[key] = self.tree_bytes(key)
            if not dry_run:
                self.remove_tree(key)
        return keys

    def unpublish(self, version_key: str, stale_after_s: float = STALE_CLAIM_SECONDS) -> bool:
        """Remove the published version ``version_key`` and everything in its folder (shards
        under ``_partial/`` too); True if this call removed it, False when another writer holds
        its claim (it is publishing the version again right now: left alone).

        Under the version's claim (the exclusive protocol of :meth:`publish`, a stale claim taken
        over), the manifest goes first, so that readers see the version whole until it is
        unpublished; a run that wants it meanwhile waits for the claim and then publishes it
        again, into an empty folder. Local disks: the folder, and parents that this left empty,
        are removed too. The manifest is never read, so a damaged one goes the same way.

        A failure after the manifest is gone (the endpoint down, a file that cannot be removed)
        leaves the claim, marked abandoned by this process, as a killed process leaves it: the
        files without a manifest are then :meth:`sweep_abandoned`'s (this process's at once,
        others' once this process is gone or the claim is stale), and a run that publishes the
        version meanwhile takes the claim over as from a dead writer."""
        claim_key = f"{version_key}/{CLAIM}"
        token = _claim_token()
        if not self.create_exclusive(claim_key, token):
            self._drop_if_stale(claim_key, stale_after_s)
            if not self.create_exclusive(claim_key, token):
                return False
        owner = json.loads(token)["owner"]
        unpublished = False
        try:
            with _Heartbeat(self, claim_key, token, min(CLAIM_HEARTBEAT_SECONDS, stale_after_s / 4)) as beat:
                self.delete(f"{version_key}/{MANIFEST}")
                unpublished = True
                ours = {claim_key, _heartbeat_key(claim_key, owner)}
                rest = [self.path(key) for key in self.sizes(version_key)
                        if key not in ours and not _claim_temporary(key)]  # another's claim attempt, our beat's
                batch = 1 if self.is_local else 1000  # one request per 1,000 objects on S3
                for start in range(0, len(rest), batch):
                    beat.check()  # stalled past the limit and taken over: what is there now is the new writer's
                    with self._reading(version_key):
                        self._remove_paths(rest[start:start + batch])
        except _ClaimLost:
            return False  # a run publishing the version again took the claim over: its files stay
        except BaseException:
            if unpublished:
                _ABANDONED_CLAIMS.add(owner)
            else:
                self._release(claim_key, token)
            raise
        else:
            self._release(claim_key, token)
        finally:
            self._forget_listings(self.path(version_key))
        if self.is_local:
            _remove_empty_folders(self.path(version_key), self.root)
        return True

    def _remove_paths(self, paths: list[str]) -> None:
        """Remove files by path (on S3 one request per 1,000); one already gone is no error."""
        if self._is_s3:
            self._delete_objects(paths)
            return
        try:
            self.fs.rm(paths)
        except FileNotFoundError:  # local disks: one file at a time, so that the others still go
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm([path])

    def _delete_objects(self, paths: list[str]) -> None:
        """S3: remove the objects ``paths`` (filesystem paths, in the store's bucket), 1,000 per
        ``DeleteObjects`` request, and read each key's answer. S3 answers that request 200 and lists
        the keys it did not remove (``AccessDenied``: the credentials may not ``s3:DeleteObject``
        them) in its reply, which s3fs's ``rm`` drops: a writer without that permission had its
        shards, cleared folders and ``prh gc``'s removals reported done and kept. A key already gone
        is no error. Raises :class:`StoreNotWritable` (refused) or :class:`StoreIOError` (another
        error of a key) naming the store and the first key."""
        for start in range(0, len(paths), 1000):
            chunk = paths[start:start + 1000]
            bucket = self.fs.split_path(chunk[0])[0]
            keys = [self.fs.split_path(path)[1] for path in chunk]
            for path in chunk:
                self.fs.invalidate_cache(path)
            with self._final_endpoint_answers(denied=("remove", self.key_of(chunk[0]))):
                reply = self.fs.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys],
                                                                                 "Quiet": True})
            order = {k: i for i, k in enumerate(keys)}  # the first kept in the order asked, whatever order S3 lists them in
            kept = sorted((e for e in reply.get("Errors") or [] if e.get("Code") != "NoSuchKey"),
                          key=lambda e: order.get(e.get("Key"), len(order)))
            if not kept:
                continue
            first = kept[0]
            key = self.key_of(f"{bucket}/{first.get('Key')}")
            more = f" (and {len(kept) - 1} other key(s))" if len(kept) > 1 else ""
            code = first.get("Code") or "an error"
            if code == "AccessDenied":
                raise StoreNotWritable(f"cannot remove {key}{more} in store {self.display_url}: DeleteObjects answered "
                                       "AccessDenied for it (needs s3:DeleteObject, which these credentials lack or a policy "
                                       "denies)")
            message = redact_text(str(first.get("Message") or ""))
            raise StoreIOError(f"cannot remove {key}{more} in store {self.display_url}: DeleteObjects answered {code} for it"
                               + (f": {message}" if message else ""))

    def read_many(self, paths: list[str], what: str = "") -> list[bytes | None]:
        """The content of each of ``paths`` (as this filesystem listed them), fetched concurrently
        on object stores (one request per file, in parallel batches: a catalog of thousands of
        manifests and run records took one round trip each, in sequence); None for a file that
        no longer exists. Other errors raise as :meth:`read_bytes` does (naming ``what``)."""
        if not paths:
            return []
        with self._reading(what):
            results = self.fs.cat_ranges(list(paths), None, None, on_error="return", **self._one_get)
        out: list[bytes | None] = []
        for path, result in zip(paths, results):
            if isinstance(result, FileNotFoundError):
                out.append(None)
            elif isinstance(result, BaseException):
                with self._reading(self.key_of(path)):
                    raise result
            else:
                out.append(result)
                if counted_path(path):
                    count(len(result))
        return out

    def read_json(self, key: str) -> Any:
        return parse_json(self.read_bytes(key))

    def read_table(self, key: str, columns: list[str] | None = None) -> pa.Table:
        """The Parquet table at ``key`` (``columns``: only those); the bytes read are counted."""
        with self._reading(key), self.fs.open(self.path(key), "rb") as handle:
            return pq.read_table(CountedFile(handle), columns=columns)

    def manifest(self, version_key: str) -> dict[str, Any] | None:
        """The manifest of a published version, or None if it is not (completely) published.

        Raises :class:`DamagedManifest` naming the file when it is not a manifest (cut short,
        edited, or copied here from another version)."""
        key = f"{version_key}/{MANIFEST}"
        try:  # one request (an existence check first was two or three on S3)
            raw = self.read_bytes(key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._checked_manifest(version_key, raw)

    def manifests(self, prefix: str, on_damaged: Callable[[DamagedManifest], None] | None = None,
                  folders: str = "**") -> Iterator[tuple[str, dict[str, Any]]]:
        """Every published version under ``prefix`` as (version key, manifest), sorted by key.

        ``folders``: a glob of the version folders under ``prefix`` (default every depth;
        ``"*/<version>"`` is one folder per model), its literal parts escaped by the caller
        (:func:`escape_glob`). A damaged manifest (see :meth:`manifest`) raises, or with
        ``on_damaged`` is handed to it and skipped (the catalog warns and shows the rest)."""
        try:  # no existence check first (on S3 a HEAD and a LIST request): nothing under it lists nothing
            with self._reading(prefix):
                found = self._manifest_paths(prefix, folders)
        except FileNotFoundError:  # s3fs: the bucket itself is missing
            return
        paths = sorted(found)
        for path, raw in zip(paths, self.read_many(paths, prefix)):
            version_key = self.key_of(path).rsplit("/", 1)[0]
            if raw is None:
                continue  # removed since it was listed
            try:
                manifest = self._checked_manifest(version_key, raw)
            except DamagedManifest as damaged:
                if on_damaged is None:
                    raise
                on_damaged(damaged)
                continue
            yield version_key, manifest

    def _manifest_paths(self, prefix: str, folders: str) -> list[str]:
        """The paths of the manifests in the version folders ``folders`` (a glob) under ``prefix``.

        An object store's are matched in one recursive listing of ``prefix`` (on S3 one LIST
        request per 1,000 objects): a glob of fixed depth (``*/<version>``) lists each folder on
        its way apart, afresh, a request per model folder and per version folder, at every model
        a run extracts. A local disk is globbed (a walk of its folders costs no request)."""
        if self.is_local or folders == "**":
            return self.glob(prefix, f"{folders}/{MANIFEST}", refresh=folders != "**")
        pattern = re.compile(glob_translate(f"{escape_glob(self.path(prefix))}/{folders}/{MANIFEST}"))
        return [path for path in map(self.path, self.listing(prefix)) if pattern.match(path)]  # afresh

    def _checked_manifest(self, version_key: str, raw: bytes) -> dict[str, Any]:
        """The manifest in ``raw``, which must be a JSON object naming ``version_key`` as its ``key``."""
        where = f"manifest {version_key}/{MANIFEST} in store {self.display_url}"
        try:
            manifest = parse_json(raw)
        except ValueError as error:
            raise DamagedManifest(f"{where} is damaged (not JSON: {error})", version_key, REMOVE_DAMAGED_ADVICE) from None
        if not isinstance(manifest, dict) or manifest.get("key") != version_key:
            found = manifest.get("key") if isinstance(manifest, dict) else None
            raise DamagedManifest(f"{where} is not this version's: it names {found!r} (a copied or edited folder?)",
                                  version_key, REMOVE_DAMAGED_ADVICE)
        return manifest

    # ---------------------------------------------------------------- writes
    def check_writable(self, min_free_mb: float | None = None) -> None:
        """Fail fast, before any work, if the store cannot take writes.

        Writes and removes a probe object of its own at the store's top (``.probe-<random>``: no
        shared folder that one prober could remove while another writes into it, as runs and
        ``prh gc`` starting together did); on a local disk also checks that at
        least ``min_free_mb`` MiB are free (default ``PRH_MIN_FREE_MB`` or 256). On an object
        store the probe is created with :meth:`create_exclusive`, then created so again (one more
        request, answered 412): a second success is an endpoint that ignores conditional writes,
        :class:`ConditionalWritesIgnored` (with ``PRH_SINGLE_WRITER=1``: a warning, once per
        store and process). Raises :class:`StoreNotWritable` naming the store and the problem, or
        :class:`StoreIOError` when an object store cannot be reached (after the client's retries).
        A request refused with ``AccessDenied`` is named with the permission it needs
        (``s3:PutObject``, ``s3:DeleteObject``: docs/storage.md, "Permissions on S3"); a probe that
        was written but could not be removed is named as left in the store.
        """
        key = f".probe-{uuid.uuid4().hex}"
        ignored = written = removing = False
        try:
            if self.is_local:  # link() is atomic: nothing to probe
                self.write_bytes(key, b"probe")
            else:  # a fresh key created twice "only if absent": a second success, the condition was ignored
                self.create_exclusive(key, b"probe")
                written = True
                ignored = self.create_exclusive(key, b"probe again")
            written = removing = True
            self.delete(key)
        except Exception as error:
            failure = self._failure("write a probe object", error)
            if isinstance(failure, (StoreIOError, NotAnS3Endpoint, EndpointLacksFeature)):  # down, unreachable, not S3, lacking
                raise failure from _cause(failure, error)
            if isinstance(error, TypeError):  # s3://b/x::file: s3fs handed the chain's target_options to its session
                raise refused_url(self.display_url, error) from error
            if not isinstance(error, OSError):
                raise
            if not self.is_local and denied_permission(error) is not None:  # the credentials may not write or remove here
                step = (f"removing the probe {key} it had written" if removing else
                        f"writing the probe {key} again (its first copy was written)" if written else f"writing the probe {key}")
                left = (f"; the probe stays in the store (credentials that may s3:DeleteObject remove it: any prh gc once it is "
                        f"{STALE_CLAIM_SECONDS / 60:g} minutes old)") if written else ""
                raise StoreNotWritable(f"store {self.display_url} is not writable: {step}: {describe_s3_failure(error)}{left}") \
                    from error
            cause = error.__cause__ if isinstance(error, StoreNotWritable) and isinstance(error.__cause__, OSError) else error
            if self.is_local and (file := _file_in_the_way(Path(self.root))) is not None:  # said "File exists (errno 17)"
                raise StoreNotWritable(f"store {self.display_url} is not writable: {str(file)!r} is a file, not a folder "
                                       "(a store is a folder: give a new or existing folder)") from error
            raise StoreNotWritable(f"store {self.display_url} is not writable: {_describe(cause)}") from error
        if ignored:
            self._conditional_writes_ignored()
        if self.is_local:
            if min_free_mb is None:
                min_free_mb = env_number("PRH_MIN_FREE_MB", DEFAULT_MIN_FREE_MB, what="a number of MiB, 0 or more")
            free_mb = shutil.disk_usage(self.root).free / 2**20
            if free_mb < min_free_mb:
                raise StoreNotWritable(
                    f"store {self.display_url} has {free_mb:.0f} MiB free, less than the {min_free_mb:.0f} MiB a run "
                    "needs (free some space, or set PRH_MIN_FREE_MB to accept less)"
                )

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one file atomically: readers see the old state or the whole new file.

        A local disk that refuses the write (full, read-only, no permission) raises
        :class:`StoreNotWritable` naming the store and the key; nothing is left behind.
        """
        path = self.path(key)
        parent = path.rsplit("/", 1)[0]
        if self.is_local:
            for attempt in range(3):  # another process may remove the folder meanwhile (a shard folder it cleared)
                try:  # before the temporary file is opened in it, or before it is renamed
                    with self._durable_temp(parent, data, key) as tmp:
                        os.replace(tmp, path)
                        sync_folder(parent)  # the new name on disk: a power loss had been free to lose it
                        return
                except FileNotFoundError:
                    if attempt == 2:
                        raise
        else:
            with self._final_endpoint_answers(denied=("write", key)):
                self.fs.pipe_file(path, data)

    @contextlib.contextmanager
    def _final_endpoint_answers(self, conditional: bool = False, denied: tuple[str, str] | None = None) -> Iterator[None]:
        """An object store's error raised inside whose reply shows that the endpoint is no S3 server
        (:func:`storage.s3_options.not_s3_reply`) re-raised as :class:`NotAnS3Endpoint`, or that
        it lacks what the request asked for (``501 NotImplemented`` in an S3 error document,
        :func:`storage.s3_options.not_implemented_reply`) as :class:`EndpointLacksFeature`
        (``conditional``: the request was a conditional create); both final (see :func:`_cause`);
        any other error unchanged. For writes: s3fs turns a ``501 Not Implemented`` into a bare
        ``OSError [Errno 38]``, which task retries took for transient (an endpoint that had let
        the write probe through, or a write without one). ``denied`` (``("write", key)``): a request
        refused with ``AccessDenied`` is re-raised as :class:`StoreNotWritable` naming the store,
        the key, the request and the permission it needs (s3fs raised a bare ``PermissionError:
        Access Denied``, which ``prh run`` showed as that alone)."""
        try:
            yield
        except Exception as error:
            if self.is_local:
                raise
            if denied is not None and denied_permission(error) is not None:
                raise StoreNotWritable(f"cannot {denied[0]} {denied[1]} in store {self.display_url}: "
                                       f"{describe_s3_failure(error)}") from error
            reply = not_s3_reply(error)
            if reply is not None:
                raise self._not_s3(reply) from None
            lacking = not_implemented_reply(error)
            if lacking is None:
                raise
            raise self._lacks(lacking, conditional) from None

    @contextlib.contextmanager
    def _durable_temp(self, parent: str, data: bytes, key: str) -> Iterator[str]:
        """Local disks: ``data`` written and fsynced to a fresh temporary file in ``parent``, whose
        path the block gets to publish it (a rename or a link). The file is removed when the block
        ends, however it ends: an exception anywhere from the file's creation on (Ctrl-C, prh
        run's SIGTERM, between the fsync and the block) had left it for ``prh gc`` to take, 5
        minutes later, as a killed writer's.

        A disk that refuses the write (full, read-only, no permission) raises
        :class:`StoreNotWritable` naming the store and ``key``; nothing is left behind.
        """
        tmp = f"{parent}/.{key.rsplit('/', 1)[-1]}{TEMP_INFIX}{uuid.uuid4().hex}"  # .layer-000.parquet.tmp-<uuid>
        try:
            try:
                make_folders(parent)  # a new folder's entry durable in its parent
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as error:
                if error.errno in _NOT_WRITABLE_ERRNOS:
                    raise StoreNotWritable(f"cannot write {key} to store {self.display_url}: {_describe(error)}"
                                           f"{_too_large(error, len(data))}") from error
                raise
            yield tmp
        finally:  # published (renamed away, or linked to its name), failed or interrupted
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist yet; True if this call created it.

        Local disks: a temporary file hard-linked to the name (``link`` fails if the name
        exists); S3: a conditional PUT (``If-None-Match: *``). Atomic in both cases. An S3
        server that does not implement the condition (``501``) raises :class:`EndpointLacksFeature`,
        unless ``PRH_SINGLE_WRITER`` says one writer at a time uses the store: then a plain PUT
        after checking that the key is absent (:meth:`_create_if_absent`, not atomic), with a
        warning once per store and process.
        """
        path = self.path(key)
        if not self.is_local:
            try:
                with self._final_endpoint_answers(conditional=True, denied=("create", key)):
                    self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            except EndpointLacksFeature as error:
                if not (error.conditional and single_writer_accepted()):
                    raise
                self._warn_single_writer(str(error))
                return self._create_if_absent(key, data)
            self.fs.invalidate_cache(path)
            return True
        parent = path.rsplit("/", 1)[0]
        for attempt in range(3):
            try:
                with self._durable_temp(parent, data, key) as tmp:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:  # the name's (not a folder's in the way: that raises)
                        return False
                    sync_folder(parent)  # the claim or manifest on disk before anyone acts on it
                    return True
            except FileNotFoundError:  # gc took a stalled attempt's file (or its folder) for a dead one's: write it again
                if attempt == 2:
                    raise
        return False

    def _create_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``key`` with a plain PUT unless it exists; True if written. Not atomic: for a
        store that one writer at a time uses (``PRH_SINGLE_WRITER``), on an endpoint without
        conditional writes."""
        path = self.path(key)
        self.fs.invalidate_cache(path)
        if self.exists(key):
            return False
        self.write_bytes(key, data)
        self.fs.invalidate_cache(path)
        return True

    def delete(self, key: str) -> None:
        """Remove one file if it exists."""
        path = self.path(key)
        try:
            with self._final_endpoint_answers(denied=("remove", key)):
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
        The manifest gains ``files`` (name → ``bytes``, ``sha256`` and, for a Parquet file,
        ``schema``: its :func:`storage.parquet_schema.schema_fingerprint`), ``published_at`` and
        ``key``. None of it enters a version id (ids come from the inputs, before publishing).

        Concurrent publishers of one version: each first tries to create the claim
        ``<version_key>/.publishing`` exclusively. The one that gets it writes every file and
        the manifest, then drops the claim; the others wait for the manifest and return it
        (``written=False``). So the store ends with one complete copy, one writer's files and
        its manifest, never a mix. The writer leaves a sign of life beside its claim every
        ``CLAIM_HEARTBEAT_SECONDS`` (at most ``stale_after_s / 4``) while it writes, and checks
        before each file that the claim is still its own (if not, it writes nothing more and
        waits for the new writer's manifest). A claim whose writer is known to be dead
        (a process of this host that exited, see ``storage.owner``) or whose last heartbeat is
        older than ``stale_after_s`` (a writer on another host that died) is removed and the
        claim retried; the dead writer's files, never listed in a manifest, are overwritten by
        the next writer.

        A process whose code was upgraded in place under it (a file that a version it worked out
        hashed now behaves otherwise on disk, a library whose version enters versions installed
        anew) publishes nothing: ``storage.versioning.CodeChangedOnDisk``, one line naming the file
        and saying to restart the process (``storage.versioning.refuse_stale_code``).
        """
        refuse_stale_code()
        try:
            return self._publish(version_key, files, manifest, row_group_size, stale_after_s)
        except Exception as error:
            wrapped = self._failure(f"publish {version_key}", error)
            if wrapped is error:
                raise
            raise wrapped from _cause(wrapped, error)

    def _publish(
        self, version_key: str, files: dict[str, pa.Table | bytes], manifest: dict[str, Any],
        row_group_size: int | None, stale_after_s: float,
    ) -> Published:
        claim_key = f"{version_key}/{CLAIM}"
        delay = 0.02
        while True:
            existing = self._fresh_manifest(version_key)
            if existing is not None:
                return Published(version_key, existing, written=False)
            token = _claim_token()
            if self.create_exclusive(claim_key, token) or self._claim_is(claim_key, token):
                try:
                    with _Heartbeat(self, claim_key, token, min(CLAIM_HEARTBEAT_SECONDS, stale_after_s / 4)) as beat:
                        existing = self._fresh_manifest(version_key)  # finished between our check and our claim
                        if existing is not None:
                            return Published(version_key, existing, written=False)
                        owner = json.loads(token)["owner"]
                        self._remove_unpublished_files(version_key, owner, beat.check)  # a dead writer's (temporary files too)
                        try:
                            written = self._write_version(version_key, files, manifest, row_group_size, beat.check)
                        except _ClaimLost:
                            raise
                        except BaseException:  # disk full, endpoint gone, interrupted: leave no data files
                            with contextlib.suppress(Exception):  # down: the claim stays too, for sweep_abandoned
                                self._remove_unpublished_files(version_key, owner, beat.check)  # taken over: not ours
                            raise
                        return Published(version_key, written, written=True)
                except _ClaimLost:
                    pass  # judged dead and taken over while stalled: wait for the new writer's manifest
                finally:
                    self._release(claim_key, token)
            self._drop_if_stale(claim_key, stale_after_s)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _claim_is(self, claim_key: str, token: bytes) -> bool:
        """Object stores: True if the claim holds ``token``'s owner id. A conditional PUT whose
        response was lost (a reset, a 5xx after the write) is retried by the client and the retry
        answers 412; the unique owner id tells that the claim is ours after all."""
        if self.is_local:
            return False
        return self._claim_owner(claim_key) == json.loads(token)["owner"]

    def _claim_owner(self, claim_key: str) -> str | None:
        """The owner id in the claim file, or None when there is none (or it is unreadable)."""
        try:
            self.fs.invalidate_cache(self.path(claim_key))
            owner = parse_json(self.read_bytes(claim_key)).get("owner")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return owner if isinstance(owner, str) else None

    def _release(self, claim_key: str, token: bytes) -> None:
        """Drop our claim and our sign of life. If that fails (the endpoint is down), the claim
        stays behind: it is remembered as abandoned by this process, so that this process's next
        publish of the version takes it over at once (other processes: dead owner or
        ``stale_after_s``). Never raises, so that the publish's own error, or its success, is what
        the caller sees."""
        owner = json.loads(token)["owner"]
        try:
            if self._claim_owner(claim_key) in (owner, None):  # not a claim another writer took over
                self.delete(claim_key)
        except Exception:  # noqa: BLE001 - see the docstring
            _ABANDONED_CLAIMS.add(owner)
        try:
            self.delete(_heartbeat_key(claim_key, owner))  # our own id (a uuid): always a key
        except Exception:  # noqa: BLE001 - a leftover sign of life is never read once its claim is gone
            pass

    def _failure(self, action: str, error: BaseException) -> BaseException:
        """``error`` re-raised with a message naming the store (redacted), the action and the S3
        cause; same classification (permanent or transient) as the original. Local stores and
        errors that are not I/O errors are returned unchanged."""
        client_error = from_s3_client(error)
        if self.is_local or isinstance(error, (StoreIOError, StoreNotWritable)) or not (isinstance(error, OSError) or client_error):
            return error
        reply = not_s3_reply(error)
        if reply is not None:
            return self._not_s3(reply)
        lacking = not_implemented_reply(error)
        if lacking is not None:
            return self._lacks(lacking)
        message = f"cannot {action} in store {self.display_url}: {describe_s3_failure(error)}"
        if isinstance(error, PermissionError):
            return StoreNotWritable(message)
        if isinstance(error, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)):
            return type(error)(message)
        wrapped = StoreIOError(message)
        wrapped.errno = getattr(error, "errno", None)
        return wrapped

    def _not_s3(self, reply: str) -> NotAnS3Endpoint:
        """The error for an endpoint whose ``reply`` (:func:`storage.s3_options.not_s3_reply`) shows
        it is not an S3 server, naming it and where it was set."""
        if self._endpoint is None:
            endpoint, where = "the AWS default endpoint", "set AWS_ENDPOINT_URL to your S3 server's URL"
        else:
            endpoint, where = redact_url(self._endpoint[0]), f"check {self._endpoint[1]}"
        return NotAnS3Endpoint(f"store {self.display_url}: the S3 endpoint {endpoint} is not an S3 server ({reply}): "
                               f"{where}")

    def _endpoint_named(self) -> str:
        """The S3 endpoint as messages name it: its URL (credentials removed) and where it was set."""
        if self._endpoint is None:
            return "the AWS default endpoint"
        return f"the S3 endpoint {redact_url(self._endpoint[0])} (from {self._endpoint[1]})"

    def _lacks(self, reply: NotImplementedReply, conditional: bool = False) -> EndpointLacksFeature:
        """The error for an endpoint that answered ``reply`` (``501``, an S3 error document) to a
        request (``conditional``: a conditional create): what it lacks, judged by the header the
        document names, else by the request, and what the user can do."""
        header = (reply.header or "").lower()
        answered = f"HTTP 501 {reply.code} ({reply.message or 'no message'}{f'; header {reply.header}' if reply.header else ''})"
        if header.startswith(_CHECKSUM_HEADERS):
            conditional = False
            problem = (f"does not implement the request checksums botocore adds to uploads: {reply.operation} answered "
                       f"{answered}")
            advice = (f"set {CHECKSUM_SETTING} (botocore then sends a checksum only where S3 requires one), or use a "
                      "server that accepts them")
        elif conditional and header in ("", "if-none-match"):
            problem = (f"does not implement conditional writes: {reply.operation} with If-None-Match: * answered {answered}; "
                       "a version's publishing claim is created so, to keep two writers from both taking it")
            advice = ("use a server that honours If-None-Match: * on PUT (AWS S3 and current MinIO releases do), or, if "
                      f"only one prh run, gc or verify --remove-damaged writes this store at a time, set {SINGLE_WRITER_ENV}=1 "
                      "to create claims with a plain PUT after checking the key is absent")
        else:
            conditional = False
            what = f"the request header {reply.header}" if reply.header else "what the request asked for"
            problem = f"does not implement {what}: {reply.operation} answered {answered}"
            advice = "use a server that implements it"
        return EndpointLacksFeature(f"store {self.display_url}: {self._endpoint_named()} {problem}. Retrying cannot help: "
                                    f"{advice}", conditional=conditional)

    def _warn_single_writer(self, problem: str) -> None:
        """Warn once per store and process that ``PRH_SINGLE_WRITER=1`` writes this store without
        conditional writes (``problem``: the error that says why)."""
        if self.display_url in _WARNED_NO_CONDITIONAL:
            return
        _WARNED_NO_CONDITIONAL.add(self.display_url)
        log.warning("%s; writing anyway (%s=1): each exclusive create is a plain PUT after checking the key is absent: run "
                    "one prh run, gc or verify --remove-damaged at a time on it", problem.split(". Retrying cannot help")[0],
                    SINGLE_WRITER_ENV)

    def _conditional_writes_ignored(self) -> None:
        """Refuse (:class:`ConditionalWritesIgnored`) a store whose exclusive creates overwrite, or
        warn once when ``PRH_SINGLE_WRITER`` accepts the risk."""
        how = "a PUT with If-None-Match: * overwrote an existing object instead of answering 412 Precondition Failed"
        old_client = _client_without_conditional_put(self.fs)
        if old_client is not None:  # the client, not the server: it never sent the condition
            what, install = old_client
            raise ConditionalWritesIgnored(
                f"store {self.display_url}: {what}, so every one overwrote and two runs writing this store at once could "
                f"both take a version's publishing claim: install {install} (pyproject.toml's range)")
        if self._endpoint is not None or self.url.startswith("s3://"):
            endpoint = self._endpoint_named()
        else:  # another fsspec filesystem whose create "only if absent" overwrote
            endpoint, how = f"its {_protocols(self.fs)[0]} filesystem", "creating an existing file only if absent overwrote it"
        problem = (f"store {self.display_url}: {endpoint} ignores conditional writes ({how}), so two runs writing this "
                   "store at once could both take a version's publishing claim and mix or replace its files")
        if single_writer_accepted():
            if self.display_url not in _WARNED_SINGLE_WRITER:
                _WARNED_SINGLE_WRITER.add(self.display_url)
                log.warning("%s; writing anyway (%s=1): run one prh run, gc or verify --remove-damaged at a "
                            "time on it", problem, SINGLE_WRITER_ENV)
            return
        raise ConditionalWritesIgnored(
            f"{problem}. Use a server that honours If-None-Match: * on PUT (AWS S3 and current MinIO releases do), "
            f"or, if only one prh run, gc or verify --remove-damaged writes this store at a time, set "
            f"{SINGLE_WRITER_ENV}=1 to write anyway")

    def check_endpoint(self) -> None:
        """Raise :class:`NotAnS3Endpoint` when this S3 store's endpoint answers a listing of its
        bucket (one key) as no S3 server does; nothing for a local store, nor when the bucket is
        merely missing or the listing fails for another reason (the caller's own check says so).
        For a store found empty: s3fs takes any 404 for "no such file", so a web server's "Not
        Found" read as an empty store ("does not exist")."""
        if self.is_local:
            return
        try:
            self.fs.call_s3("list_objects_v2", Bucket=self.root.split("/", 1)[0], MaxKeys=1)
        except Exception as error:  # noqa: BLE001 - only a reply that is not S3's is this check's to report
            reply = not_s3_reply(error)
            if reply is not None:
                raise self._not_s3(reply) from None  # final (see _cause): the reply is in the message

    def _fresh_manifest(self, version_key: str) -> dict[str, Any] | None:
        self.fs.invalidate_cache(self.path(version_key))
        return self.manifest(version_key)

    def has_manifest_file(self, version_key: str) -> bool:
        """True when ``version_key`` has a manifest file, readable or damaged, looked up afresh
        (not from a cached listing): a sweep never removes such a version's files (a damaged one
        is `prh verify --remove-damaged`'s to judge); a run computing the version stops, another
        run having published it meanwhile (``tasks.stop_request.unless_published_meanwhile``)."""
        self.fs.invalidate_cache(self.path(version_key))
        return self.exists(f"{version_key}/{MANIFEST}")

    def published_meanwhile(self, version_key: str) -> dict[str, Any]:
        """The manifest of the version at ``version_key``, which another run published while this
        one was computing it. RuntimeError when it is gone again (``prh verify
        --remove-damaged`` removed it right after): the next run computes it."""
        manifest = self._fresh_manifest(version_key)
        if manifest is None:
            raise RuntimeError(f"{version_key} was published by another run and removed again meanwhile; "
                               "run again to compute it")
        return manifest

    def _stale_claim(self, claim_key: str, stale_after_s: float) -> tuple[bytes, str | None] | None:
        """``(the claim's bytes, its heartbeat key)`` when the claim's writer is dead or its last
        sign of life (the claim or its latest heartbeat) is more than ``stale_after_s`` s old;
        None for a live claim or none."""
        try:
            raw = self.read_bytes(claim_key)
        except FileNotFoundError:
            return None
        now = time.time()
        try:
            token = parse_json(raw)
            alive_at = max(float(token["claimed_at"]), float(token.get("heartbeat_at") or 0.0))
            if not math.isfinite(alive_at) or alive_at > now + stale_after_s:
                raise ValueError("a time that is no time, or one far ahead")
        except (ValueError, KeyError, TypeError, AttributeError):
            # not a claim that publish writes (it writes one whole, once): cut short by a partial copy
            # or sync, edited, another program's. Judged by when it and any sign of life beside it
            # were last written: ignored, it stood for ever (a publish of its version waited for
            # ever, gc never swept its folder)
            return (raw, None) if now - self._last_written(claim_key) > stale_after_s else None
        owner = token.get("owner")
        alive_key = _heartbeat_key(claim_key, owner)
        if alive_key is not None:
            beat = self._heartbeat_at(alive_key)
            if beat > now + stale_after_s:  # far ahead (edited, a clock years off): when it was last written decides
                beat = self._last_written(claim_key)
            alive_at = max(alive_at, beat)
        abandoned = owner in _ABANDONED_CLAIMS
        if abandoned or owner_is_dead(token.get("process")) or now - alive_at > stale_after_s:
            return raw, alive_key
        return None

    def _drop_if_stale(self, claim_key: str, stale_after_s: float) -> bool:
        """Remove a stale claim (`_stale_claim`); True if this call removed it."""
        stale = self._stale_claim(claim_key, stale_after_s)
        if stale is None:
            return False
        raw, alive_key = stale
        try:
            if self.read_bytes(claim_key) == raw:  # still the same claim
                self.delete(claim_key)
                if alive_key is not None:
                    self.delete(alive_key)
                return True
        except FileNotFoundError:
            pass
        return False

    def _last_written(self, claim_key: str) -> float:
        """When the claim ``claim_key`` or any sign of life beside it (``.publishing-alive-*``) was
        last written (epoch seconds; 0 when none is listed)."""
        folder = claim_key.rsplit("/", 1)[0]
        self.fs.invalidate_cache(self.path(folder))
        try:
            entries = self.fs.ls(self.path(folder), detail=True)
        except FileNotFoundError:
            return 0.0
        return max((modified_at(entry) for entry in entries
                    if entry["name"].rstrip("/").rsplit("/", 1)[-1] == CLAIM
                    or entry["name"].rstrip("/").rsplit("/", 1)[-1].startswith(HEARTBEAT_PREFIX)), default=0.0)

    def _heartbeat_at(self, alive_key: str) -> float:
        """Time of the last sign of life in ``alive_key`` (0 when there is none)."""
        try:
            self.fs.invalidate_cache(self.path(alive_key))
            return float(parse_json(self.read_bytes(alive_key))["heartbeat_at"])
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            return 0.0

    def sweep_abandoned(self, prefixes: tuple[str, ...] = ("datasets", "features", "alignment"),
                        stale_after_s: float = STALE_CLAIM_SECONDS, dry_run: bool = False,
                        sizes: dict[str, int] | None = None) -> list[str]:
        """Remove the files of versions whose writer died before publishing them; returns their keys.

        A writer killed mid-publish leaves its claim and some data files but no manifest, so
        readers never see them; if the rerun computes the same version it simply overwrites
        them, but after a code or config change nothing would. For every claim whose writer is
        dead (or silent for more than ``stale_after_s``) this takes the claim over through the same
        exclusive protocol as :meth:`publish` (so no live writer can be working on it), removes
        the version's files (never those of a version with a manifest, even a damaged one, and never the resumable shards
        under ``_partial/``), then drops the claim and, on a local disk, the folder if that left
        it empty. ``dry_run``: only list the versions that would be swept. ``sizes``, when
        given, receives ``version key -> bytes`` of the files removed (or, with ``dry_run``, to be
        removed) from each swept version: its data and temporary files, the dead writer's claim
        and signs of life. A version folder whose files outlived their claim (a sweeper or
        publisher killed after dropping the dead claim, before creating its own) is swept the same
        way once they are older than ``stale_after_s`` (:meth:`_sweep_candidates`).
        """
        swept = []
        for prefix in prefixes:
            base = self.path(prefix)
            if not self.fs.exists(base):
                continue
            for version_key, claimed in self._sweep_candidates(prefix, stale_after_s):
                claim_key = f"{version_key}/{CLAIM}"
                if dry_run:
                    if (not claimed or self._stale_claim(claim_key, stale_after_s) is not None) \
                            and not self.has_manifest_file(version_key):
                        swept.append(version_key)
                        if sizes is not None:
                            sizes[version_key] = self._sweepable_bytes(version_key)
                    continue
                before = self._sweepable_bytes(version_key) if sizes is not None else 0  # the claim included
                if claimed and not self._drop_if_stale(claim_key, stale_after_s):
                    continue
                token = _claim_token()
                if not self.create_exclusive(claim_key, token):
                    continue  # a live writer claimed it in the meantime
                try:
                    with _Heartbeat(self, claim_key, token, min(CLAIM_HEARTBEAT_SECONDS, stale_after_s / 4)) as beat:
                        if not self.has_manifest_file(version_key) and \
                                self._remove_unpublished_files(version_key, json.loads(token)["owner"], beat.check):
                            swept.append(version_key)
                            if sizes is not None:
                                sizes[version_key] = before
                except _ClaimLost:
                    continue  # stalled past the limit and taken over: the new writer's files stay
                finally:
                    self._release(claim_key, token)
                if self.is_local and version_key in swept:
                    with contextlib.suppress(OSError):
                        os.rmdir(self.path(version_key))  # empty unless resumable shards (_partial/) remain
        return swept

    def _sweep_candidates(self, prefix: str, stale_after_s: float) -> list[tuple[str, bool]]:
        """``(version key, claimed)`` of each folder under ``prefix`` that :meth:`sweep_abandoned`
        looks at, sorted, from one listing: every folder holding a claim (``claimed``), and every
        folder named like a version (``_VERSION_FOLDER``) holding files but neither claim nor
        manifest, all written (and, on a local disk, arrived: `_arrived_within`) more than
        ``stale_after_s`` ago. Files are written into a version folder only under its claim, so
        such files are a dead writer's whose claim went without a successor: a sweeper or
        publisher killed between dropping the dead claim and creating its own (one in flight does
        so within milliseconds). A version being copied in with its files' old modification times
        kept (``rsync -a`` writes the manifest last) is not one while its files are fresh here."""
        self.fs.invalidate_cache(self.path(prefix))
        with self._reading(prefix):
            found = self.glob(prefix, "**", detail=True)
        folders: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for path, entry in found.items():
            if entry.get("type") == "file":
                folder, _, name = self.key_of(path).rpartition("/")
                folders.setdefault(folder, []).append((name, entry))
        out = []
        for folder, entries in sorted(folders.items()):
            names = {name for name, _ in entries}
            if CLAIM in names:
                out.append((folder, True))
            elif MANIFEST not in names and _VERSION_FOLDER.fullmatch(folder) \
                    and not any(_arrived_within(entry, stale_after_s) for _, entry in entries):
                out.append((folder, False))
        return out

    def _sweepable_bytes(self, version_key: str) -> int:
        """Bytes of the files a sweep of ``version_key`` removes: every file directly in its folder
        (the dead writer's claim and signs of life included) but another process's claim attempt
        in flight; the resumable shards under ``_partial/`` stay."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            self.fs.invalidate_cache(self.path(version_key))
            for entry in self.fs.ls(self.path(version_key), detail=True):
                if entry.get("type") == "file" and not _claim_attempt_in_flight(entry):
                    total += int(entry.get("size") or 0)
        return total

    def remove_dead_claim_attempts(self, prefixes: tuple[str, ...] = ("datasets", "features", "alignment"),
                                   stale_after_s: float = STALE_CLAIM_SECONDS, dry_run: bool = False) -> dict[str, int]:
        """Remove the temporary files of claim attempts (``..publishing.tmp-<uuid>``, local disks:
        :meth:`create_exclusive` links one to the claim, then unlinks it), of manifests (``.manifest.json.tmp-<uuid>``,
        created the same way) and of claim heartbeats
        (``..publishing-alive-<owner>.tmp-<uuid>``, renamed over the sign of life) written more than
        ``stale_after_s`` ago, published versions' folders included: a writer killed between
        writing and unlinking or renaming one left it for good (one in flight lives milliseconds).
        Returns ``key -> bytes`` of each (with ``dry_run``: that would be removed)."""
        found: dict[str, int] = {}
        if not self.is_local:
            return found  # a conditional PUT: no temporary file
        for prefix in prefixes:
            if not self.fs.exists(self.path(prefix)):
                continue
            leftovers = {**self.glob(prefix, f"**/.{CLAIM}*.tmp-*", detail=True),
                         **self.glob(prefix, f"**/.{MANIFEST}{TEMP_INFIX}*", detail=True)}
            for path, entry in sorted(leftovers.items()):
                if entry.get("type") != "file" or _written_within(entry, stale_after_s):
                    continue  # in flight
                key = self.key_of(path)
                found[key] = int(entry.get("size") or 0)
                if not dry_run:
                    self.delete(key)
        return found

    def _remove_unpublished_files(self, version_key: str, owner: str | None = None,
                                  still_ours: Callable[[], None] = lambda: None) -> bool:
        """Delete the files directly in an unpublished version's folder (data files, temporary
        files of a killed writer, dead writers' signs of life), keeping the claim, ``owner``'s
        sign of life and the resumable shards under ``_partial/``. Only called while holding the
        version's claim; ``still_ours`` (raises ``_ClaimLost``) runs before each removal. A
        folder that holds a manifest is a published version (a writer that stalled here was
        taken over, and the new writer published): nothing in it is removed. Returns whether the
        folder was unpublished (False: a manifest stood in it)."""
        keep = {CLAIM, HEARTBEAT_PREFIX + owner if owner else CLAIM}
        with contextlib.suppress(FileNotFoundError):
            self.fs.invalidate_cache(self.path(version_key))
            entries = self.fs.ls(self.path(version_key), detail=True)
            names = [(entry, entry["name"].rstrip("/").rsplit("/", 1)[-1]) for entry in entries]
            if any(name == MANIFEST for _, name in names):
                return False
            for entry, name in names:
                if entry.get("type") != "file" or name in keep or _claim_attempt_in_flight(entry):
                    continue  # another process's claim attempt, in flight
                still_ours()
                self.delete(f"{version_key}/{name}")
        return True

    def abandoned_uploads(self, older_than_s: float, dry_run: bool = False,
                          keep_since: float | None = None) -> list[dict[str, Any]]:
        """Object stores: abort the multipart uploads under the store's root started more than
        ``older_than_s`` seconds ago, but for those started at or after ``keep_since`` (epoch
        seconds: while a run is alive, what it may be uploading right now) (nothing with
        ``dry_run``); returns ``{"key", "started"
        (epoch seconds), "bytes" (the parts uploaded so far)}`` of each. s3fs uploads a file of 100 MiB or more (a large model's shard)
        in parts; a process killed mid-upload leaves the parts stored, invisible to listings and
        billed, until the upload is aborted. Local stores have none."""
        if self.is_local:
            return []
        bucket, _, prefix = self.root.partition("/")
        prefix = f"{prefix}/" if prefix else ""
        found, markers = [], {}
        with self._reading("its incomplete uploads"):
            while True:
                page = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
                for upload in page.get("Uploads", []) or []:
                    started = upload["Initiated"].timestamp()
                    if time.time() - started > older_than_s and (keep_since is None or started < keep_since):
                        found.append({"key": self.key_of(f"{bucket}/{upload['Key']}"), "started": started,
                                      "upload_id": upload["UploadId"], "s3_key": upload["Key"]})
                if not page.get("IsTruncated"):
                    break
                markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
        for upload in found:
            with self._reading(upload["key"]):
                upload["bytes"] = self._upload_bytes(bucket, upload["s3_key"], upload["upload_id"])
                if not dry_run:
                    self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["s3_key"], UploadId=upload["upload_id"])
        return [{"key": u["key"], "started": u["started"], "bytes": u["bytes"]} for u in found]

    def _upload_bytes(self, bucket: str, s3_key: str, upload_id: str) -> int:
        """Bytes of the parts an incomplete multipart upload holds (what aborting it frees)."""
        total, marker = 0, {}
        while True:
            page = self.fs.call_s3("list_parts", Bucket=bucket, Key=s3_key, UploadId=upload_id, **marker)
            total += sum(int(part.get("Size") or 0) for part in page.get("Parts", []) or [])
            if not page.get("IsTruncated"):
                return total
            marker = {"PartNumberMarker": page["NextPartNumberMarker"]}

    def _write_version(
        self, version_key: str, files: dict[str, pa.Table | bytes], manifest: dict[str, Any], row_group_size: int | None,
        still_ours: Callable[[], None] = lambda: None,
    ) -> dict[str, Any]:
        """Every file, then the manifest; ``still_ours`` (raises ``_ClaimLost``) runs before each write."""
        listing = {}
        for name, content in files.items():
            data = table_to_parquet_bytes(content, row_group_size) if isinstance(content, pa.Table) else content
            still_ours()
            self.write_bytes(f"{version_key}/{safe_component(name, 'file name')}", data)
            listing[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if name.endswith(".parquet") and (fingerprint := schema_fingerprint(data)) is not None:
                listing[name]["schema"] = fingerprint  # lets the catalog skip the footers of like files
            del data
        full = {**manifest, "key": version_key, "files": listing, "published_at": utc_now()}
        data = json.dumps(full, indent=2, sort_keys=True, default=str).encode("utf-8")
        still_ours()
        # created only if absent: a writer that stalled past its claim's takeover cannot replace
        # the manifest of the writer that took over (its own would list files it no longer has)
        manifest_key = f"{version_key}/{MANIFEST}"
        if not self.create_exclusive(manifest_key, data) and self._manifest_bytes(version_key) != data:
            # (equal bytes: our own conditional PUT, retried after a lost response.) Another's: if
            # the claim is no longer ours, that writer's stands; if it still is, a writer that
            # stalled before its manifest landed it while we wrote: it lists files we replaced
            still_ours()
            self.write_bytes(manifest_key, data)
        try:
            still_ours()  # stalled between the last check and the manifest, and taken over meanwhile:
        except _ClaimLost:  # the holder after us removed or replaced our files (or is doing so)
            if self._manifest_bytes(version_key) == data:
                self.delete(manifest_key)  # unpublish ours; the version is published again, whole
            raise
        return full

    def _manifest_bytes(self, version_key: str) -> bytes | None:
        """The stored manifest file of a version, read afresh; None when there is none."""
        path = self.path(f"{version_key}/{MANIFEST}")
        self.fs.invalidate_cache(path)
        try:
            return self.read_bytes(f"{version_key}/{MANIFEST}")
        except FileNotFoundError:
            return None


def check_is_store(store: "Store", advice: str) -> None:
    """Raise ValueError when nothing is at ``store`` ("does not exist"), or what is there is no
    prh store (a file; a folder with none of :data:`STORE_FOLDERS`, or one this user cannot
    list), so that a mistyped store is not read as an empty one: ``prh``'s read-only commands
    (``--store``) and :func:`storage.catalog.connect` (a notebook's folder). ``advice`` closes the
    message in parentheses (what to check). A store holds ``runs/`` from the moment a run records
    its start. Nothing is created."""
    try:
        found = store.exists("")
    except TypeError as error:  # s3://b/x::file: s3fs handed the chain's target_options to its client session
        raise refused_url(store.display_url, error, "read") from error
    if not found:
        store.check_endpoint()  # an endpoint that is no S3 server answers "Not Found" to everything
        raise ValueError(f"store {store.display_url} does not exist: nothing was ever written there ({advice})")
    if not any(store.exists(folder) for folder in STORE_FOLDERS):
        _check_readable_folder(store)
        what = "it is a file" if store.is_local and Path(store.root).is_file() else \
            f"it holds none of {', '.join(f + '/' for f in STORE_FOLDERS)}"
        raise ValueError(f"store {store.display_url} is not a prh store: {what} ({advice})")


def _check_readable_folder(store: "Store") -> None:
    """ValueError naming a local store whose folder this user cannot list: its folders are there
    but out of sight (a store written with ``umask 077`` by another user, read by a second one),
    which had been called "not a prh store: it holds none of runs/, ..."."""
    if not store.is_local or not os.path.isdir(store.root):
        return
    try:
        os.listdir(store.root)
    except PermissionError as error:
        raise ValueError(f"store {store.display_url} cannot be read by this user: {error.strerror} (its folder: "
                         f"{access_detail(store.root)}): ask its owner to let others read it (chmod -R a+rX), or run as "
                         "that user") from None


class _ClaimLost(Exception):
    """This writer's claim was taken over (it looked dead): it must not write another file."""


def _heartbeat_key(claim_key: str, owner: Any) -> str | None:
    """Where the owner of ``claim_key`` leaves its sign of life: beside the claim. ``owner`` is read
    from a claim file, so one that is not a plain id (``/``, ``..``, not text) has no such file."""
    name = HEARTBEAT_PREFIX + owner if isinstance(owner, str) else ""
    try:
        safe_component(name.lstrip("."), "claim owner")
    except ValueError:
        return None
    return f"{claim_key.rsplit('/', 1)[0]}/{name}"


class _Heartbeat:
    """While its ``with`` block runs, writes the owner's sign of life (``<version>/
    .publishing-alive-<owner>``, a fresh ``heartbeat_at``) every ``interval`` s, as long as the
    claim is still this writer's. It writes only its own file, never the claim, so a writer that
    stalled and was taken over cannot undo the takeover; a failed write (endpoint trouble) is
    tried again at the next beat. ``check`` raises ``_ClaimLost`` once the claim is another's."""

    def __init__(self, store: "Store", claim_key: str, token: bytes, interval: float) -> None:
        self._store, self._key, self._owner, self._interval = store, claim_key, json.loads(token)["owner"], interval
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"claim-heartbeat {claim_key}", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60.0)

    def check(self) -> None:
        """Raise ``_ClaimLost`` if the claim is no longer this writer's (read afresh)."""
        if self._lost.is_set() or self._store._claim_owner(self._key) != self._owner:
            self._lost.set()
            raise _ClaimLost(self._key)

    def _beat(self) -> None:
        alive = _heartbeat_key(self._key, self._owner)  # our own id (a uuid): always a key
        while not self._stop.wait(self._interval):
            try:
                if self._store._claim_owner(self._key) != self._owner:
                    self._lost.set()
                    return  # taken over (this writer looked dead)
                self._store.write_bytes(alive, json.dumps({"owner": self._owner, "heartbeat_at": time.time()}).encode())
            except Exception:  # noqa: BLE001 - the next beat tries again; the publish reports real failures
                continue


def _remove_empty_folders(path: str, root: str) -> None:
    """Local disks: remove the folder ``path`` if nothing but empty folders is left in it, then
    each parent below ``root`` that this leaves empty (a folder that holds a file, or that
    another process fills meanwhile, stays)."""
    try:
        for folder, _, files in os.walk(path, topdown=False):
            if not files:
                os.rmdir(folder)
        path = path.rsplit("/", 1)[0]
        while path.startswith(root + "/"):
            os.rmdir(path)  # OSError once a folder is not empty
            path = path.rsplit("/", 1)[0]
    except OSError:
        return


def _claim_token() -> bytes:
    """The content of a claim file: a unique owner id, the time, and this process (``storage.owner``)."""
    return json.dumps({"owner": uuid.uuid4().hex, "claimed_at": time.time(), "process": current_owner()}).encode()


def _too_large(error: OSError, size: int) -> str:
    """For a file refused as too large (``EFBIG``; it had been a bare ``[Errno 27] File too large``,
    retried as if transient): its size and this process's file-size limit, in parentheses; else ``''``."""
    if error.errno != errno.EFBIG:
        return ""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    where = ("larger than the file system takes" if limit == resource.RLIM_INFINITY
             else f"over this process's file-size limit of {limit:,} bytes (`ulimit -f`)")
    return f" (a file of {size:,} bytes, {where})"


def _describe(error: OSError) -> str:
    """An OSError as its reason only (no paths, which may be long or carry credentials)."""
    reason = error.strerror or type(error).__name__
    return f"{reason} (errno {error.errno})" if error.errno else str(error) or reason


def table_to_parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """Serialise a table as Parquet (zstd) in memory.

    Float columns and lists of floats (feature vectors, scores) are written without a dictionary
    and with ``BYTE_STREAM_SPLIT``: their values are nearly all distinct, so a dictionary stored
    every float twice (a dictionary page plus indices: 1.04-1.48x the raw float32 size of a
    layer file at N=1024); split bytes compress to about 0.85x. Other columns (names, ids,
    versions) keep dictionaries. Values are unchanged, only the encoding."""
    floats = [_leaf_path(field) for field in table.schema if _leaf_path(field) is not None]
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size,
                   use_dictionary=[f.name for f in table.schema if _leaf_path(f) is None],
                   column_encoding={path: "BYTE_STREAM_SPLIT" for path in floats} or None)
    return sink.getvalue().to_pybytes()


def _leaf_path(field: pa.Field) -> str | None:
    """The Parquet column path of a float column (``score``) or of the floats of a list column
    (``vector.list.element``); None for any other column."""
    kind = field.type
    if pa.types.is_floating(kind):
        return field.name
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) \
            and pa.types.is_floating(kind.value_type):
        return f"{field.name}.list.element"
    return None


def _one_get_options(fs: fsspec.AbstractFileSystem) -> dict[str, Any]:
    """The ``cat_file`` options that read a whole file in one GET request: s3fs (2026.3 and later)
    otherwise asks every file's size first (a HEAD request) to split a large one into concurrent
    range reads, which the store's own small files (manifests, run records, claims) never need.
    None for other filesystems, nor for an s3fs without that option (it sends one GET anyway:
    an option it does not take would fail every read)."""
    if "s3" not in _protocols(fs):
        return {}
    try:
        takes = "max_concurrency" in inspect.signature(fs._cat_file).parameters
    except (AttributeError, TypeError, ValueError):
        return {}
    return {"max_concurrency": 1} if takes else {}


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
