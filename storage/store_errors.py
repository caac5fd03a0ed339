"""The errors a store raises, each saying whether a retry can help (``tasks.retries`` reads them)."""

from __future__ import annotations

import errno
import os
import stat

from storage.error_chain import error_chain


#: Errors of a local disk with no room left (full, over quota): files can still be removed.
_NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def out_of_room(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is a disk with no room left (``ENOSPC``,
    ``EDQUOT``): a store that takes no new file, but whose files can still be removed."""
    return any(isinstance(found, OSError) and found.errno in _NO_ROOM_ERRNOS for found in error_chain(error))


class StoreNotWritable(PermissionError):
    """The store refuses writes (read-only, no permission, disk full, quota): retries cannot help."""


class StoreNotReadable(PermissionError):
    """A folder of a local store that this user may not list (written by another user with
    ``umask 077``): a listing that skipped it, as fsspec's walk does, showed its versions as gone."""


#: What to do about a damaged version: `prh verify --remove-damaged` removes it under its publishing
#: claim (a folder removed by hand takes none: a run publishing the version again meanwhile loses
#: its files), so that the next run computes it again.
REMOVE_DAMAGED_ADVICE = ("prh verify --remove-damaged removes it under its publishing claim, and the next run "
                         "computes it again")


class DamagedManifest(ValueError):
    """A version's manifest that cannot be trusted: not JSON, or not the manifest of the version
    whose folder holds it. The message names the file and what to do; ``version_key`` is the
    version's folder."""

    def __init__(self, message: str, version_key: str = "", advice: str = "") -> None:
        super().__init__(f"{message}; {advice}" if advice else message)
        self.version_key = version_key
        #: What is wrong, without the advice (a caller that knows better gives its own: a
        #: manifest outside any version folder must not be answered by removing its folder).
        self.problem = message


class NotAnS3Endpoint(ValueError):
    """The endpoint of an S3 store answers, but not as an S3 server does (``AWS_ENDPOINT_URL`` naming
    a web server): a setting to fix, which retries cannot. The message names the endpoint and
    where it was set."""


class ConditionalWritesIgnored(StoreNotWritable):
    """The store's endpoint ignores conditional writes: a PUT with ``If-None-Match: *`` of a key
    that exists overwrites it instead of answering 412 (MinIO releases older than mid-2024, and
    other "S3-compatible" servers). A version's publishing claim and its manifest rely on that
    condition, so two writers at once could both hold a claim and mix or replace a version's
    files. Raised by :meth:`Store.check_writable` unless ``PRH_SINGLE_WRITER`` says that one
    writer at a time uses the store; final (retries cannot help)."""


class EndpointLacksFeature(StoreNotWritable):
    """The store's S3 endpoint answers ``501 Not Implemented`` (in an S3 error document) to a
    request the store makes: it lacks what the request asks for, such as conditional writes
    (``If-None-Match: *``, which a version's publishing claim relies on: ``conditional``) or the
    checksum header botocore adds to uploads. Final: a retry gets the same answer (as a
    ``StoreIOError`` it had been retried by every task). The message names the store, the
    endpoint, the request and what to do."""

    def __init__(self, message: str, conditional: bool = False) -> None:
        super().__init__(message)
        #: The request was a conditional create (``Store.create_exclusive``), which
        #: ``PRH_SINGLE_WRITER=1`` replaces by a plain PUT after checking that the key is absent.
        self.conditional = conditional


class StoreIOError(OSError):
    """An object-store operation failed after the client's retries; the message names the store
    (credentials removed), the operation and the S3 error. Transient for ``tasks.retries``."""


def access_detail(path: str) -> str:
    """``mode d---------, owner uid 1000; this user: uid 1001`` of a local folder that this user
    may not list (what to ask its owner to change); ``''`` where the folder cannot be looked at."""
    try:
        info = os.stat(path)
    except OSError:
        return ""
    return f"mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid}; this user: uid {os.geteuid()}"
