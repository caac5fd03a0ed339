"""A store, or one of its folders, that this user may not read: a store written with ``umask 077``
by one user and read by another. fsspec's walk skipped such a folder without a word, so ``prh
verify`` said "all match" over the versions it could see and ``prh sql`` gave no rows; a store
whose own folder was unreadable was called "not a prh store". Each now names the folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.storage.catalog_store import build_catalog_store

ROOT = Path(__file__).resolve().parents[2]


def _as_another_user() -> list[str]:
    """A prefix that runs a command without the right to read what its mode forbids: as root,
    without the capabilities that let root read any folder (setpriv); else nothing."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: folder modes do not apply")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _prh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_as_another_user(), sys.executable, "-m", "flows.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def store(tmp_path):
    build_catalog_store(str(tmp_path / "store"))
    yield tmp_path / "store"
    for folder in (tmp_path / "store", tmp_path / "store" / "features", tmp_path / "store" / "lost+found"):
        if folder.exists():
            folder.chmod(0o755)  # for the cleanup


def test_a_store_folder_this_user_cannot_list_is_named_not_skipped(store):
    (store / "features").chmod(0)
    for args in (["verify"], ["sql", "select count(*) from features"], ["gc", "--dry-run"]):
        done = _prh(*args, "--store", str(store))
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert f"cannot list the folder {str(store / 'features')!r}: Permission denied (mode d---------" in done.stderr, done.stderr
        assert "chmod -R a+rX" in done.stderr


def test_a_store_whose_own_folder_this_user_cannot_list_is_not_called_no_store(store):
    store.chmod(0)
    done = _prh("sql", "select 1", "--store", str(store))
    assert done.returncode == 2
    assert "cannot be read by this user: Permission denied (its folder: mode d---------" in done.stderr, done.stderr
    assert "not a prh store" not in done.stderr


def test_a_folder_that_is_not_prhs_may_stay_unreadable(store):
    (store / "lost+found").mkdir()  # a store at the top of a disk
    (store / "lost+found").chmod(0)
    done = _prh("verify", "--store", str(store))
    assert done.returncode == 0 and "all match their manifests" in done.stdout, done.stderr
    done = _prh("sql", "select count(*) n from features", "--store", str(store), "--format", "csv")
    assert done.returncode == 0 and done.stdout.split() == ["n", str((4 + 5 + 3 + 4) * 8)], done.stderr
