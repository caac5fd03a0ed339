"""A real small or read-only file system for tests: a tmpfs mounted at a temporary folder.

Needs the right to mount (root here and in CI); tests skip, saying why, where it is missing.
"""

from __future__ import annotations

import errno
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_kib`` KiB at ``path`` for the block; skip the test if not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = _mount(["-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)])
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_read_only(path: Path) -> None:
    """Make the tmpfs at ``path`` read-only (even root cannot write to it then)."""
    done = _mount(["-o", "remount,ro", str(path)])
    assert done.returncode == 0, done.stderr


def fill(disk: Path) -> Path:
    """Write a filler file into ``disk`` until it has no room left (ENOSPC); returns its path."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler
