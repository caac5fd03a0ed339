"""Versions name the code a process imported, not what an upgrade in place left on disk since.

Each case runs a child Python over a scratch copy of ``storage/`` and ``tasks/__init__.py`` with a
toy versioned package ``tasks/toy``: the child imports the code, the file on disk is then edited
(as ``git pull`` under a running worker does), and the child works out a version or publishes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage import versioning
from storage.figure_cache import StoreFigureCache
from storage.store import Store
from storage.versioning import CodeChangedOnDisk, refuse_loaded_library, refuse_stale_code

ROOT = Path(__file__).resolve().parents[2]

ENGINE = '''"""A toy engine."""
FACTOR = 2  # the factor


def scale(x):
    return x * FACTOR
'''
#: ENGINE less its docstring, comment and blank lines, written out by hand (what a version hashes)
ENGINE_BEHAVIOUR = "FACTOR = 2\ndef scale(x):\n    return x * FACTOR\n"
#: the version of ``tasks/toy/engine.py`` with ENGINE's behaviour: sha256 of (path NUL behaviour NUL)
ENGINE_VERSION = hashlib.sha256(b"tasks/toy/engine.py\0" + ENGINE_BEHAVIOUR.encode() + b"\0").hexdigest()[:16]


def _checkout(tmp_path: Path) -> Path:
    """A scratch checkout: the real ``storage`` package and ``tasks/__init__.py`` (with what it
    imports), and the toy package ``tasks/toy``."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "storage", root / "storage", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tasks" / "toy").mkdir(parents=True)
    for name in ("__init__.py", "pillow_policy.py"):
        shutil.copy(ROOT / "tasks" / name, root / "tasks" / name)
    (root / "tasks" / "toy" / "__init__.py").write_text("", encoding="utf-8")
    (root / "tasks" / "toy" / "engine.py").write_text(ENGINE, encoding="utf-8")
    return root


def _child(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child Python whose ``tasks`` and ``storage`` are the scratch checkout's."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    prelude = f"import sys; sys.path.insert(0, {str(root)!r}); ENGINE = {str(root / 'tasks' / 'toy' / 'engine.py')!r}\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def _refused(result: subprocess.CompletedProcess[str], named: str) -> str:
    """The one line of the child's CodeChangedOnDisk, checked to name ``named`` and say to restart."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("refused: ")]
    assert len(lines) == 1, result.stdout + result.stderr
    assert named in lines[0] and "restart this process" in lines[0], lines[0]
    return lines[0]


def test_a_behaviour_edit_after_import_is_refused_not_given_the_new_version(tmp_path):
    """The worker imported FACTOR = 2; ``git pull`` makes it 3; the worker (still running 2) had
    worked out the new code's version and stored its results under it."""
    root = _checkout(tmp_path)
    result = _child(root, """
        import tasks.toy.engine as engine
        from pathlib import Path
        Path(ENGINE).write_text(Path(ENGINE).read_text().replace("FACTOR = 2", "FACTOR = 3"))
        from storage.versioning import code_version, CodeChangedOnDisk
        try:
            print("version:", code_version("tasks/toy"), "runs factor", engine.scale(1))
        except CodeChangedOnDisk as error:
            print("refused:", error)
    """)
    assert result.returncode == 0, result.stderr
    _refused(result, "tasks/toy/engine.py changed on disk")


def test_a_version_worked_out_before_the_upgrade_refuses_to_publish(tmp_path):
    """Version first (the old code's), then the upgrade, then the publish: refused, nothing written."""
    root = _checkout(tmp_path)
    store = tmp_path / "store"
    result = _child(root, f"""
        import tasks.toy.engine
        from pathlib import Path
        from storage.store import Store
        from storage.versioning import code_version, CodeChangedOnDisk
        version = code_version("tasks/toy")
        Path(ENGINE).write_text(Path(ENGINE).read_text().replace("x * FACTOR", "x * FACTOR + 1"))
        try:
            Store({str(store)!r}).publish("alignment/" + version, {{"scores.json": b"{{}}"}}, {{"kind": "toy"}})
            print("published")
        except CodeChangedOnDisk as error:
            print("refused:", error)
    """)
    assert result.returncode == 0, result.stderr
    _refused(result, "tasks/toy/engine.py changed on disk")
    assert not [p for p in store.rglob("*") if p.is_file()]


def test_a_version_that_keys_no_result_does_not_hold_up_publishing(tmp_path):
    """A run record names the whole tree's version (``watch=False``: it keys no result): an edit
    elsewhere under ``tasks/`` after it had refused every publish of the run, results of code the
    edit did not touch included. The version a result is keyed by is still watched."""
    root = _checkout(tmp_path)
    (root / "tasks" / "notes.py").write_text("LABEL = 'a'\n", encoding="utf-8")
    store = tmp_path / "store"
    result = _child(root, f"""
        import tasks.toy.engine
        from pathlib import Path
        from storage.store import Store
        from storage.versioning import code_version, CodeChangedOnDisk
        whole = code_version("tasks", watch=False)
        version = code_version("tasks/toy")
        notes = Path(ENGINE).parent.parent / "notes.py"
        notes.write_text("LABEL = 'b'\\n")
        Store({str(store)!r}).publish("alignment/" + version, {{"scores.json": b"{{}}"}}, {{"kind": "toy"}})
        print("published", whole == code_version("tasks", watch=False))
        Path(ENGINE).write_text(Path(ENGINE).read_text().replace("x * FACTOR", "x * FACTOR + 1"))
        try:
            Store({str(store)!r}).publish("alignment/other", {{"scores.json": b"{{}}"}}, {{"kind": "toy"}})
        except CodeChangedOnDisk as error:
            print("refused:", error)
    """)
    assert result.returncode == 0, result.stderr
    assert "published True" in result.stdout, result.stdout + result.stderr
    _refused(result, "tasks/toy/engine.py changed on disk")


def test_edits_that_change_no_behaviour_keep_the_imported_version(tmp_path):
    """A reworded comment or docstring, or a file rewritten with the same bytes (``touch``, a
    reinstall), is the same code: no refusal, and the version is the hand-worked one."""
    root = _checkout(tmp_path)
    result = _child(root, """
        import os, tasks.toy.engine
        from pathlib import Path
        text = Path(ENGINE).read_text()
        Path(ENGINE).write_text(text)
        os.utime(ENGINE, ns=(1, 1))
        from storage.versioning import code_version
        from storage.store import Store
        print("version:", code_version("tasks/toy/engine.py"))
        Path(ENGINE).write_text(text.replace("the factor", "how much").replace("A toy engine.", "Reworded."))
        code_version.cache_clear()
        print("version:", code_version("tasks/toy/engine.py"))
        Store("store").publish("alignment/x", {"a.json": b"{}"}, {"kind": "toy"})
        print("published")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"version: {ENGINE_VERSION}"] * 2 + ["published"]


def test_a_file_added_to_a_versioned_package_after_import_is_refused(tmp_path):
    root = _checkout(tmp_path)
    result = _child(root, """
        import tasks.toy.engine
        from pathlib import Path
        Path(ENGINE).with_name("faster.py").write_text("def scale(x):\\n    return 2 * x\\n")
        from storage.versioning import code_version, CodeChangedOnDisk
        try:
            print("version:", code_version("tasks/toy"))
        except CodeChangedOnDisk as error:
            print("refused:", error)
    """)
    assert result.returncode == 0, result.stderr
    _refused(result, "tasks/toy/faster.py was added")


def _fake_library(site: Path, version: str) -> None:
    """An installed distribution ``prhfakelib`` at ``version`` (its metadata only; the module
    imported before stays as it was)."""
    for old in site.glob("prhfakelib-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"prhfakelib-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: prhfakelib\nVersion: {version}\n", encoding="utf-8")


def test_a_library_upgraded_under_the_process_refuses_to_publish(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "prhfakelib").mkdir(parents=True)
    (site / "prhfakelib" / "__init__.py").write_text('__version__ = "1.0"\n', encoding="utf-8")
    _fake_library(site, "1.0")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(versioning.VERSIONED_LIBRARIES, "prhfakelib", "prhfakelib")
    monkeypatch.delitem(sys.modules, "prhfakelib", raising=False)
    import prhfakelib  # noqa: F401 - loaded at 1.0

    refuse_stale_code()  # installed as imported
    refuse_loaded_library("prhfakelib", "1.0.0")  # the same release spelled otherwise
    with pytest.raises(CodeChangedOnDisk, match=r"prhfakelib 1\.0 is what this process imported, but the version "
                                                r"being published names 0\.9 .*restart this process"):
        refuse_loaded_library("prhfakelib", "0.9")  # the fingerprint read the metadata before an upgrade

    _fake_library(site, "2.0")  # pip install -U prhfakelib under the running process
    store = tmp_path / "store"
    with pytest.raises(CodeChangedOnDisk, match=r"prhfakelib 1\.0 is what this process imported, but 2\.0 is installed "
                                                r"now .*restart this process"):
        Store(str(store)).publish("features/x", {"a.json": b"{}"}, {"kind": "toy"})
    figures = StoreFigureCache(Store(str(store)), namespace="drawn-by-1.0")
    figures.put("digest", {"svg": b"<svg/>"})  # the report is drawn, its figures not cached under the namespace
    assert not [p for p in store.rglob("*") if p.is_file()]
    assert not figures.writable


def test_an_editors_lock_file_and_an_excluded_file_are_not_code_but_a_file_others_watch_still_is(tmp_path):
    """Review findings: Emacs's lock ``.#engine.py`` (a dangling symbolic link, made as soon as a
    buffer is edited, nothing saved) had counted as a file added to the code, and its removal as
    one removed; a file added that one version's ``exclude`` leaves out was then missed by a
    version that watches it (the folder's new listing had been kept)."""
    root = _checkout(tmp_path)
    result = _child(root, """
        import os, tasks.toy.engine
        from pathlib import Path
        from storage.versioning import code_version, CodeChangedOnDisk
        from storage.store import Store
        toy = Path(ENGINE).parent
        version = code_version("tasks/toy")
        os.symlink("user@host.1234:1700000000", toy / ".#engine.py")
        print("lock:", code_version("tasks/toy") == version)
        os.remove(toy / ".#engine.py")
        print("unlocked:", code_version("tasks/toy") == version)
        (toy / "extra.py").write_text("X = 1\\n")
        import storage.versioning as versioning
        versioning._CHECKED_AT.clear()
        print("left out:", code_version("tasks/toy", exclude=("tasks/toy/extra.py",)) == code_version("tasks/toy", exclude=("tasks/toy/extra.py",)))
        versioning._CHECKED_AT.clear()
        try:
            code_version("tasks/toy")
            print("missed")
        except CodeChangedOnDisk as error:
            print("refused:", error)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == ["lock: True", "unlocked: True", "left out: True"], result.stdout
    _refused(result, "tasks/toy/extra.py was added on disk")


def test_a_library_whose_own_version_lags_its_metadata_does_not_refuse(tmp_path, monkeypatch):
    """Review finding: a library whose ``__version__`` is not its metadata's (hard-coded, a source
    checkout) had refused every publish in every process, restarts included. What is compared
    now is the installed version when the process first saw the library against the one now."""
    site = tmp_path / "site"
    (site / "prhlaglib").mkdir(parents=True)
    (site / "prhlaglib" / "__init__.py").write_text('__version__ = "0.1.0"\n', encoding="utf-8")
    info = site / "prhlaglib-0.1.0.post1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: prhlaglib\nVersion: 0.1.0.post1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(versioning.VERSIONED_LIBRARIES, "prhlaglib", "prhlaglib")
    monkeypatch.delitem(sys.modules, "prhlaglib", raising=False)
    import prhlaglib  # noqa: F401

    refuse_stale_code()
    refuse_loaded_library("prhlaglib", "0.1.0.post1")  # what the metadata (and so a version id) says
    store = tmp_path / "store"
    Store(str(store)).publish("features/x", {"a.json": b"{}"}, {"kind": "toy"})
    assert (store / "features" / "x" / "a.json").exists()
