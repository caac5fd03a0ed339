"""Store URLs: what a user may write as a store's address, and how it is shown and matched.

A store is addressed by an fsspec URL (a folder, ``file://PATH``, ``s3://BUCKET/PREFIX``). This
module refuses URLs that cannot mean what their writer meant (:func:`check_store_url`,
:func:`check_utf8_url`), reads a ``file://`` URL's folder as RFC 8089 does
(:func:`local_store_path`, :func:`decoded_local_path`, :func:`store_file_url`), removes
credentials before a URL is shown (:func:`redact_url`) and escapes the glob characters of keys
that pattern matchers read (:func:`escape_glob`). Pure string work, no I/O but the folder
checks of :func:`decoded_local_path`.
"""

from __future__ import annotations

import codecs
import os
import re
import sys
import tempfile
from typing import Any
from urllib.parse import unquote


def redact_url(url: str) -> str:
    """The URL without any user:password part, for logs, manifests and artifacts: in every link of
    a chained URL (``simplecache::s3://KEY:SECRET@bucket/x``: fsspec hands each link its own URL),
    also where the rest is no URL ``urlsplit`` parses (a port that is no number, an unclosed ``[``).
    The rest stays as written (the host's case too). Never raises: it builds error messages."""
    # the userinfo ends at the last '@' of the authority (which ends at the first '/', '?' or '#'),
    # so that a password holding '::' or '@' goes whole; an object store's secret may hold '/' (and
    # '://': taken out first, else the authority ended inside it and the key was left showing)
    return _USERINFO.sub("://", _SLASHED_SECRET.sub(r"\1", url))


_USERINFO = re.compile(r"://[^/?#]*@")


def escape_glob(text: str) -> str:
    """``text`` with the glob characters ``*``, ``?`` and ``[`` bracketed (``[*]``), so that a
    pattern matcher (fsspec's glob, DuckDB's readers) takes it literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


_ESCAPED_GLOB_CHAR = re.compile(r"\[([*?\[])\]")


def unescape_glob(text: str) -> str:
    """The inverse of :func:`escape_glob`."""
    return _ESCAPED_GLOB_CHAR.sub(r"\1", text)


def escaped_literal(pattern: str) -> str | None:
    """The one path ``pattern`` can match when its only glob characters are escaped ones
    (:func:`escape_glob`'s ``[*]``, ``[?]``, ``[[]``); None when it holds a real wildcard or
    character class (``*.parquet``, ``[ab]``)."""
    if re.search(r"[*?\[]", _ESCAPED_GLOB_CHAR.sub("", pattern)):
        return None
    return unescape_glob(pattern)


def check_store_url(url: Any) -> None:
    """Refuse a store URL that cannot mean what its writer meant (ValueError naming it): empty; a
    known protocol with one slash or none (``s3:/bucket``, ``s3:bucket``: as a path it would be a
    folder ``s3:`` in the working directory); a URL with nothing after ``://`` (``s3://`` names no
    bucket; ``file:///`` is the filesystem's root, and so are the paths ``/`` and ``/tmp/..``);
    ``file://`` followed by anything but ``/``
    (``file://tmp/x``: fsspec reads the relative folder ``tmp/x``, a URL reader the host ``tmp``)."""
    if not isinstance(url, str):  # None, bytes, a number: "is empty" had been said of them all
        raise ValueError(f"store URL {url!r} is a {type(url).__name__}, not text: give a folder (text or a "
                         "pathlib.Path), file://PATH or s3://BUCKET/PREFIX")
    if not url.strip():
        raise ValueError(f"store URL {url!r} is empty: give a folder, file://PATH or s3://BUCKET/PREFIX")
    if url != url.strip():
        raise ValueError(f"store URL {url!r} starts or ends with spaces")
    scheme, sep, rest = url.partition(":")
    after = url.split("://", 1)[1] if "://" in url else None  # what follows '://', if any
    local = scheme.lower() in ("file", "local")
    if sep and after is None and scheme.lower() in _known_protocols():
        if local:  # file:/data/prh: the absolute path keeps its '/'
            fix = (f"{scheme}://{'/' + rest.lstrip('/')}" if rest.startswith("/")
                   else f"{rest} (a folder in the working directory) or {scheme}:///ABSOLUTE/PATH" if rest
                   else f"{scheme}:///ABSOLUTE/PATH or a folder's path")
        else:
            fix = f"{scheme}://{rest.lstrip('/')}"
        raise ValueError(f"store URL {url!r} looks like a {scheme} URL without '//': write {fix} "
                         f"(or ./{url} for a local folder of that name)")
    for link in url.split("::"):  # each link of a chained URL (simplecache::s3://...) is its filesystem's own URL
        protocol, has_authority, link_rest = link.partition("://")
        bucket = link_rest.split("/", 1)[0]
        # a secret holding '/' ends the bucket's part early: a bucket's name holds no ':' (redact_url)
        if has_authority and protocol.lower() in _BUCKET_PROTOCOLS and ("@" in bucket or ":" in bucket and "@" in link_rest):
            # s3fs takes 'KEY:SECRET@bucket' for a bucket name, and botocore's error then prints it whole
            raise ValueError(f"store URL {redact_url(url)!r} (shown without its user:password@ part) names credentials in the "
                             f"URL, which {protocol} does not read there (it would take them for the bucket's name and show them "
                             f"in errors): give them through the environment (for S3: AWS_ACCESS_KEY_ID / "
                             f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and write {protocol}://BUCKET/PREFIX")
    if local and after is not None and after[:1] not in ("", "/"):
        # fsspec reads file://tmp/x as the relative folder tmp/x, a URL reader as host 'tmp'
        path = after
        host, _, rest = path.partition("/")
        if host.lower() == "localhost" and rest:  # file://localhost/tmp/x: the URL form of /tmp/x
            raise ValueError(f"store URL {url!r} names a host, which fsspec would read as a folder 'localhost': write "
                             f"{scheme}:///{rest} (or /{rest})")
        raise ValueError(f"store URL {url!r} is ambiguous: write {scheme}:///{path} for the absolute path /{path}, "
                         f"or {path} for a folder in the working directory")
    if after is not None and not after.strip("/"):
        if local:
            raise ValueError(f"store URL {url!r} names the filesystem's root: add the folder, e.g. {scheme}:///data/prh")
        raise ValueError(f"store URL {url!r} names no bucket or host: add them, e.g. {scheme}://bucket/prh")
    path = after if local else url if "://" not in url else None
    if path is not None and not os.path.normpath(os.path.expanduser(path)).strip("/"):
        # '/', '//' or '/tmp/..' became the URL 'file:', which fsspec reads as the working directory
        raise ValueError(f"store URL {url!r} names the filesystem's root: add the folder, e.g. /data/prh")


def local_store_path(url: str) -> str | None:
    """The folder a ``file://`` (or fsspec's ``local://``) store URL names: its path with the
    percent-escapes decoded, as RFC 8089 reads a file URL and as ``Path.as_uri()`` and file
    managers write one (``file:///data/my%20store`` is the folder ``/data/my store``; fsspec
    itself would take ``%20`` literally). None for a plain path, which is used as written (a folder
    may be named ``50%``), and for other URLs (``s3://`` keys are used as written, as s3fs does).
    A ``%XX`` that is not UTF-8 decodes to a lone surrogate, which :func:`check_utf8_url` refuses."""
    scheme, sep, after = url.partition("://")
    if not sep or scheme.lower() not in ("file", "local"):
        return None
    return unquote(after, errors="surrogateescape")


def store_file_url(scheme: str, path: str) -> str:
    """The URL of the local folder ``path`` that :func:`local_store_path` reads back as ``path``:
    ``scheme://`` and the path with only ``%`` escaped (``%25``), so that it stays readable
    (``file:///data/my store``) and a store's URL opens the same folder wherever it is passed on."""
    return f"{scheme}://{path.replace('%', '%25')}"


def decoded_local_path(url: str, path: str) -> str:
    """``path``, decoded from the file URL ``url``, once it is known to name a folder that can be a
    store: not the filesystem's root (``file:///tmp/%2E%2E``), no NUL (``%00``), and not a new
    folder beside an existing one of the URL's literal name (an older prh read ``%20`` literally:
    its store stays where it is, named, rather than a new store starting empty)."""
    if "\x00" in path:
        raise ValueError(f"store URL {url!r} decodes to a path holding a NUL character (%00), which names no folder")
    if not os.path.normpath(path).strip("/"):
        raise ValueError(f"store URL {url!r} names the filesystem's root ({path!r} decoded): add the folder, e.g. file:///data/prh")
    literal = url.partition("://")[2]
    if literal != path and os.path.isdir(literal) and not os.path.exists(path):
        raise ValueError(f"store URL {url!r} names the folder {path!r} (a file URL's %-escapes are decoded), which does not "
                         f"exist, but the folder {literal!r} does (written by a prh that read the escapes literally): "
                         f"give that folder's path, {literal}, to use it, or rename it to {path!r}")
    return path


def check_utf8_url(url: str) -> None:
    """Refuse (ValueError naming it) a store URL holding bytes that are not UTF-8: a folder named
    in another encoding (``st\\xf6re`` in Latin-1), or any non-ASCII path in a process whose locale
    is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``). Python keeps such bytes as lone surrogates
    (``st\\udcf6re``), which the filesystem takes but DuckDB and Arrow do not: the catalog of such
    a store failed with a bare ``RuntimeError: std::bad_cast`` traceback."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"store URL {url!r} holds bytes that are not UTF-8 text (a folder named in another encoding, or a "
                         "process whose locale is not UTF-8), which DuckDB and Arrow cannot open: rename the folder to "
                         "UTF-8, or run with a UTF-8 locale (LC_ALL=C.UTF-8 or PYTHONUTF8=1)") from None


def check_duckdb_spelling(path: str, what: str, encoding: str | None = None) -> None:
    """Refuse (ValueError naming ``what`` and ``path``) a local path that DuckDB would open as
    another file. DuckDB takes every path as UTF-8 text, while Python decodes file names (and the
    command line) with the locale's encoding (``encoding``: default the process's). In a Latin-1
    locale (``LC_ALL=en_US.ISO-8859-1``) the folder ``störe``, named by the UTF-8 bytes ``c3 b6``,
    reads as ``stÃ¶re``: Python's writes reached the folder, DuckDB looked for ``stÃ¶re`` in UTF-8,
    so ``prh run`` extracted every model, then failed every pair ("No files found that match the
    pattern"), ``prh sql`` read no files and ``prh catalog export`` left its file under another
    name. An ASCII path, or any path in a UTF-8 locale, passes (lone surrogates are
    :func:`check_utf8_url`'s)."""
    encoding = encoding or sys.getfilesystemencoding()
    if codecs.lookup(encoding).name == "utf-8" or path.isascii():
        return
    if duckdb_spelling(path, encoding) != path:
        raise ValueError(f"{what} {path!r}: this process reads file names in its locale's encoding ({encoding}), DuckDB "
                         "reads them as UTF-8, so the two would open different files: run with a UTF-8 locale "
                         "(LC_ALL=C.UTF-8) or PYTHONUTF8=1, or use a path of ASCII characters")


def duckdb_spelling(path: str, encoding: str | None = None) -> str | None:
    """The spelling of ``path`` (as this process names it, decoding file names with ``encoding``:
    default the process's) under which DuckDB, which takes every path as UTF-8 text, opens the same
    file: the path's bytes read as UTF-8. ``path`` itself in a UTF-8 locale; ``/tmp/prh-\u00fc`` for
    the ``/tmp/prh-\u00c3\u00bc`` a Latin-1 locale reads from the bytes ``c3 bc``; None where the
    bytes are not UTF-8 (a folder named in Latin-1), which DuckDB cannot name at all, or where
    the locale cannot write a character of ``path``."""
    try:
        return path.encode(encoding or sys.getfilesystemencoding(), "surrogateescape").decode("utf-8")
    except UnicodeError:
        return None


def duckdb_temporary_folder(use: str) -> tuple[str, str]:
    """The temporary folder (``tempfile.gettempdir()``: ``$TMPDIR``, else ``/tmp``...) as Python
    names it and as DuckDB must (:func:`duckdb_spelling`; the same in a UTF-8 locale). ``use``
    says what the folder is for (``a query spills to one``), in the ``ValueError`` raised, saying
    to set ``TMPDIR``, where no temporary folder can be written or where its name is bytes that are
    not UTF-8 (DuckDB cannot open it: a TMPDIR named so had failed every catalog with
    ``std::bad_cast``)."""
    try:
        folder = tempfile.gettempdir()
    except OSError as error:  # none of TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp, the working folder takes a file
        raise ValueError(f"no temporary folder can be written ({error.strerror or error}); {use}: set TMPDIR to a folder "
                         "this user can write, with room") from None
    spelling = duckdb_spelling(folder)
    if spelling is None:
        raise ValueError(f"temporary folder {folder!r} (TMPDIR): its name is bytes that are not UTF-8 text, which DuckDB "
                         f"cannot open; {use}: set TMPDIR to a folder whose name is UTF-8 (or ASCII)")
    return folder, spelling


def check_temporary_folder(use: str) -> str:
    """The temporary folder where files that Python writes are read by DuckDB (``use`` says
    which, for the message), checked to be named alike by both (:func:`duckdb_temporary_folder`).
    Where they differ, a ``ValueError`` names the folder and what to do: a non-ASCII ``TMPDIR``
    in a Latin-1 locale (Python reads ``/tmp/prh-\u00fc`` as ``/tmp/prh-\u00c3\u00bc``, writes
    there, and DuckDB looks for ``/tmp/prh-\u00c3\u00bc`` in UTF-8: "No files found")."""
    folder, spelling = duckdb_temporary_folder(use)
    if spelling != folder:
        raise ValueError(f"temporary folder {folder!r} (TMPDIR): this process reads file names in its locale's encoding "
                         f"({sys.getfilesystemencoding()}), DuckDB reads them as UTF-8 (as {spelling!r}), so the two would "
                         f"open different files; {use}: run with a UTF-8 locale (LC_ALL=C.UTF-8) or PYTHONUTF8=1, or set "
                         "TMPDIR to a folder with an ASCII path")
    return folder


#: Object stores whose URL's first part is a bucket: an ``@`` there is credentials, never a name.
_BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
#: Credentials of an object store whose secret holds a '/' (about half of AWS's secret keys): the
#: authority then ends inside the secret. A bucket's name holds no ':', so a ':' before the first
#: '/' and an '@' after it, in the same link, are a key, a secret and their end (``redact_url``).
_SLASHED_SECRET = re.compile(rf"(?i)\b((?:{'|'.join(sorted(_BUCKET_PROTOCOLS))})://)[^/?#:@]*:(?:(?!::)[^@])*@")


def _known_protocols() -> set[str]:
    from fsspec.registry import known_implementations, registry

    return {p.lower() for p in (*known_implementations, *registry)}


#: The schemes a store URL is most often written with, offered first for a misspelt one.
_USUAL_SCHEMES = ("file", "s3", "gs", "az", "memory")


def protocol_hint(url: str, error: Exception) -> str:
    """For fsspec's ``Protocol not known: s4`` on store URL ``url``: the scheme probably meant
    (`` (did you mean s3://...?)``) and the usual ones; ``''`` for any other error."""
    if not str(error).startswith("Protocol not known"):
        return ""
    import difflib

    scheme, _, rest = url.partition("://")
    usual = [s for s in _USUAL_SCHEMES if s in _known_protocols()]
    meant = (difflib.get_close_matches(scheme.lower(), usual, n=1, cutoff=0.5)
             or difflib.get_close_matches(scheme.lower(), sorted(_known_protocols()), n=1, cutoff=0.75))
    guess = f"did you mean {redact_url(f'{meant[0]}://{rest}')}? " if meant else ""
    return f" ({guess}a store is file:///ABSOLUTE/PATH or a folder's path, or s3://BUCKET/PREFIX)"

