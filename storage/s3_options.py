"""S3 client options of the store: retries and timeouts that ride out a flaky endpoint.

Two retry loops stand between the store and S3 (s3fs over aiobotocore/botocore):

- **botocore** retries each HTTP request by itself: connection refused or reset, connect and read
  timeouts, HTTP 500/502/503/504 and throttling codes (``SlowDown``...). ``total_max_attempts``
  counts the first try. In ``standard`` mode it waits ``uniform(0, 1) · 2^(attempt−1)`` s (at most
  20 s) before each retry, so 6 attempts wait up to 1+2+4+8+16 = 31 s in all (15.5 s on average);
  ``adaptive`` adds client-side rate limiting after throttling. Botocore's own default is 3
  attempts, too few to outlast an endpoint that restarts.
- **s3fs** wraps every call in its own loop (``S3FileSystem.retries``, 5 by default, waits
  ``0.1 · 1.7^i`` s): after botocore gives up it tries again on ``SlowDown`` and on errors while
  a response body streams in (truncated bodies, read timeouts). Body errors happen after botocore
  has returned, so only this loop retries them. It does not retry a refused connection or a 500.
  ``PRH_S3_FS_RETRIES`` sets it (applied to the store's filesystem object).

Precedence, lowest first: the defaults below; ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` (botocore's
own variables, honoured because an explicit ``Config`` would otherwise hide them);
``PRH_S3_MAX_ATTEMPTS``, ``PRH_S3_RETRY_MODE``, ``PRH_S3_CONNECT_TIMEOUT``, ``PRH_S3_READ_TIMEOUT``
(seconds); then whatever the user's ``storage_options["config_kwargs"]`` sets, which always wins.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from storage.env_numbers import env_number
from storage.error_chain import error_chain

DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_RETRY_MODE = "standard"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
RETRY_MODES = ("standard", "adaptive", "legacy")


def s3_config_kwargs(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """botocore ``Config`` keyword arguments from the defaults and the environment.

    Returns ``{"retries": {"total_max_attempts": int, "mode": str}, "connect_timeout": float,
    "read_timeout": float}``; raises ValueError naming the variable if one is malformed.
    """
    env = os.environ if env is None else env
    mode = _first(env, "PRH_S3_RETRY_MODE", "AWS_RETRY_MODE")
    return {
        "retries": {
            "total_max_attempts": _attempts(("PRH_S3_MAX_ATTEMPTS", "AWS_MAX_ATTEMPTS"), DEFAULT_MAX_ATTEMPTS, env),
            "mode": _mode(mode, DEFAULT_RETRY_MODE),
        },
        "connect_timeout": _seconds("PRH_S3_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S, env),
        "read_timeout": _seconds("PRH_S3_READ_TIMEOUT", DEFAULT_READ_TIMEOUT_S, env),
    }


def with_s3_defaults(storage_options: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``storage_options`` for s3fs with retries and timeouts filled in where the user set none.

    The user's ``config_kwargs`` keys win; inside ``retries`` a user's ``max_attempts`` or
    ``total_max_attempts`` replaces ours (botocore reads ``max_attempts`` as retries after the
    first try), and a user's ``mode`` replaces ours. ``use_listings_cache`` defaults to False
    (every listing afresh). The input is not modified.
    """
    options = dict(storage_options or {})
    user = options.get("config_kwargs") or {}
    if not isinstance(user, Mapping):
        raise ValueError(f"storage option config_kwargs must be a mapping, got {type(user).__name__}")
    defaults = s3_config_kwargs(env)
    merged = {**defaults, **user}
    user_retries = user.get("retries")
    if user_retries is not None:
        if not isinstance(user_retries, Mapping):
            raise ValueError(f"storage option config_kwargs.retries must be a mapping, got {type(user_retries).__name__}")
        retries = dict(defaults["retries"])
        if "max_attempts" in user_retries or "total_max_attempts" in user_retries:
            retries.pop("total_max_attempts")
        retries.update(user_retries)
        merged["retries"] = retries
    options["config_kwargs"] = merged
    # Listings read afresh: a store is written by other processes and hosts (workers, stages,
    # concurrent runs), and s3fs answers a later listing, or a glob through a folder it listed
    # once, from its cache, which then lacks their new folders. The user may turn it back on.
    options.setdefault("use_listings_cache", False)
    return options


#: s3fs options (``storage_options`` keys) that the oldest s3fs pyproject admits (2024.12) lacks,
#: with the first s3fs that takes each.
NEWER_S3FS_OPTIONS = {"local_expiry_check": "2026.3"}


def option_s3fs_lacks(storage_options: Mapping[str, Any], s3fs_class: type | None = None) -> str | None:
    """Why the installed s3fs (``s3fs_class``: ``s3fs.S3FileSystem`` unless given) cannot take
    ``storage_options``, or None: an option of :data:`NEWER_S3FS_OPTIONS` that its ``__init__``
    does not name. An older s3fs hands such an option on to aiobotocore's session, whose
    ``TypeError`` (unexpected keyword argument) comes at the first request and says nothing of
    the version that has it."""
    wanted = [name for name in NEWER_S3FS_OPTIONS if name in storage_options]
    if not wanted:
        return None
    if s3fs_class is None:
        import s3fs

        s3fs_class = s3fs.S3FileSystem
    taken = inspect.signature(s3fs_class.__init__).parameters
    for name in wanted:
        if name not in taken:
            installed = getattr(sys.modules.get("s3fs"), "__version__", "unknown")
            return (f"storage option {name} needs s3fs {NEWER_S3FS_OPTIONS[name]} or newer; the installed "
                    f"s3fs ({installed}) does not take it (pip install 's3fs>={NEWER_S3FS_OPTIONS[name]}')")
    return None


def s3fs_retries(env: Mapping[str, str] | None = None) -> int | None:
    """s3fs's own retry count from ``PRH_S3_FS_RETRIES``, or None to keep s3fs's default (5)."""
    found = _attempts("PRH_S3_FS_RETRIES", 0, os.environ if env is None else env)
    return found or None


# ------------------------------------------------------------------ parsing
def _first(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = (env.get(name) or "").strip()
        if value:  # blank counts as unset, as for the numbers (storage.env_numbers)
            return name, value
    return None


def _attempts(names: str | tuple[str, ...], default: int, env: Mapping[str, str]) -> int:
    return int(env_number(names, default, what="a whole number of attempts, at least 1", minimum=1,
                          integer=True, env=env))


def _seconds(name: str, default: float, env: Mapping[str, str]) -> float:
    return env_number(name, default, what="a positive number of seconds", above_minimum=True, env=env)


def _mode(found: tuple[str, str] | None, default: str) -> str:
    if found is None:
        return default
    name, raw = found
    if raw.lower() not in RETRY_MODES:
        raise ValueError(f"{name}={raw!r} is not a retry mode; use one of {', '.join(RETRY_MODES)}")
    return raw.lower()


# ------------------------------------------------------------------- errors
_USERINFO = re.compile(r"(?<=//)[^/@\s\"']+@")
_SIGNED_QUERY = re.compile(r"(?i)(X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s\"']+")


def redact_text(text: str) -> str:
    """``text`` with URL user:password parts and signed-URL credentials removed."""
    return _SIGNED_QUERY.sub(r"\1REDACTED", _USERINFO.sub("", text))


def from_s3_client(error: BaseException) -> bool:
    """True when ``error`` itself was raised by the S3 client stack (botocore, aiobotocore, aiohttp)."""
    return type(error).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp")


def not_s3_reply(error: BaseException) -> str | None:
    """What in ``error`` shows that the endpoint is not an S3 server, or None.

    An S3 server answers every request but a ``HEAD`` with an XML error document naming an S3 error
    code (``NoSuchBucket``, ``AccessDenied``...). When botocore finds no such document it takes the
    HTTP status for the code: a client error (4xx) or ``501 Not Implemented`` answered that way to a
    request with a body (``ListObjectsV2``, ``PutObject``, not ``HeadObject``, whose replies never
    have one) comes from a web server that is not S3 (a plain ``python -m http.server``, a web
    page's host). A bare 5xx other than 501 may be a gateway between the client and a real S3
    server, so it is not taken for one. Returns ``ListObjectsV2 answered HTTP 404 (Not Found)
    without an S3 error document``."""
    reply = _first_reply(error)
    if reply is None:
        return None
    operation, status, details = reply
    if str(operation).startswith("Head") or not isinstance(status, int) or details.get("Code") != str(status):
        return None
    if 400 <= status < 500 or status == 501:
        reason = details.get("Message") or ""
        return redact_text(f"{operation} answered HTTP {status}{f' ({reason})' if reason else ''} without an S3 error "
                           "document")
    return None


def _first_reply(error: BaseException) -> tuple[str, Any, dict[str, Any]] | None:
    """(operation, HTTP status, error details) of the first botocore client error (one with a
    ``response`` and an ``operation_name``) in ``error``'s chain; None when there is none."""
    for found in error_chain(error):
        response = getattr(found, "response", None)
        operation = getattr(found, "operation_name", None)
        if isinstance(response, dict) and operation:
            status = (response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
            return str(operation), status, response.get("Error", {}) or {}
    return None


@dataclass(frozen=True)
class NotImplementedReply:
    """An S3 server's ``501 Not Implemented`` answered with an S3 error document: the request
    asked for something the server lacks (``If-None-Match: *`` on a PUT, a checksum header). Its
    ``operation`` (``PutObject``), error ``code`` (``NotImplemented``), ``message`` (credentials
    removed) and the request ``header`` the document names (``<Header>``, as AWS's), if any."""

    operation: str
    code: str
    message: str
    header: str | None


def not_implemented_reply(error: BaseException) -> NotImplementedReply | None:
    """The :class:`NotImplementedReply` in ``error``'s chain, or None: HTTP 501 with an S3 error
    code of its own (a bare 501, its code the status, is a web server that is no S3 server:
    :func:`not_s3_reply`). No retry changes that answer."""
    reply = _first_reply(error)
    if reply is None:
        return None
    operation, status, details = reply
    code = details.get("Code")
    if status != 501 or not code or str(code) == "501":
        return None
    header = details.get("Header")
    return NotImplementedReply(operation, str(code), redact_text(str(details.get("Message") or "")),
                               str(header) if header else None)


#: The IAM permission each S3 request the store makes needs (AWS's names: an operation's name is not
#: always its permission's). Named in the message of a request refused with ``AccessDenied``.
PERMISSIONS = {
    "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket",
    "PutObject": "s3:PutObject", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "CopyObject": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject", "DeleteObjects": "s3:DeleteObject",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads", "ListParts": "s3:ListMultipartUploadParts",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
}


def denied_permission(error: BaseException) -> str | None:
    """The IAM permission (``s3:PutObject``) of the request that ``error`` (or an error in its
    chain) reports refused with ``AccessDenied`` (HTTP 403; a HEAD's reply has no body, so its
    code is ``403``); ``the permission for <operation>`` for a request not in
    :data:`PERMISSIONS`; None when the error is no refusal."""
    reply = _first_reply(error)
    if reply is None:
        return None
    operation, status, details = reply
    if str(details.get("Code")) not in ("AccessDenied", "403") or status not in (403, None):
        return None
    return PERMISSIONS.get(operation, f"the permission for {operation}")


def describe_s3_error(error: BaseException) -> str:
    """One line saying what failed on S3, for error messages: the operation, the S3 error code,
    the HTTP status and the attempts made, or the endpoint that could not be reached.

    Looks through ``error``'s cause chain for botocore's error (s3fs re-raises ``ClientError`` as
    an ``OSError`` whose cause it is). Credentials in URLs are removed. Examples::

        PutObject failed: InternalError (HTTP 500) after 6 attempts: We encountered an internal error...
        could not reach the S3 endpoint (EndpointConnectionError): http://127.0.0.1:9000/bucket/key
    """
    for found in error_chain(error):
        response = getattr(found, "response", None)
        operation = getattr(found, "operation_name", None)
        if isinstance(response, dict) and operation:
            details = response.get("Error", {}) or {}
            meta = response.get("ResponseMetadata", {}) or {}
            code = details.get("Code") or "error"
            status = meta.get("HTTPStatusCode")
            attempts = int(meta.get("RetryAttempts") or 0) + 1
            message = details.get("Message") or ""
            text = f"{operation} failed: {code}" + (f" (HTTP {status})" if status else "")
            text += f" after {attempts} attempt{'s' if attempts > 1 else ''}" + (f": {message}" if message else "")
            return redact_text(text)
        kwargs = getattr(found, "kwargs", None)
        if isinstance(kwargs, dict) and kwargs.get("endpoint_url") and type(found).__module__.startswith("botocore"):
            return redact_text(f"could not reach the S3 endpoint ({type(found).__name__}): {kwargs['endpoint_url']}")
    return redact_text(f"{type(error).__name__}: {error}")


def describe_s3_failure(error: BaseException) -> str:
    """:func:`describe_s3_error`, and for a request refused with ``AccessDenied`` the IAM permission
    it needs (:func:`denied_permission`; docs/storage.md, "Permissions on S3")::

        PutObject failed: AccessDenied (HTTP 403) after 1 attempt: Access Denied (needs s3:PutObject, which these
        credentials lack or a policy denies)
    """
    text = describe_s3_error(error)
    permission = denied_permission(error)
    return text if permission is None else f"{text} (needs {permission}, which these credentials lack or a policy denies)"
