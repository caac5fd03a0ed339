"""Non-ASCII store and catalog paths in a locale whose encoding is not UTF-8.

Python decodes file names (and the command line) with the locale's encoding; DuckDB takes every
path as UTF-8 text. In a Latin-1 locale the folder ``störe`` (UTF-8 bytes ``c3 b6``) reads as
``stÃ¶re``: Python wrote there, DuckDB looked for another folder, so ``prh run`` extracted every
model and failed every pair, ``prh sql`` found no files, and ``prh catalog export`` left its file
under a garbled name. ``prh`` now runs in Python's UTF-8 mode there; a library caller (a Prefect
worker in such a locale) gets a ``ValueError`` naming the path instead of the wrong folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage.store import Store
from tests.storage.catalog_store import build_catalog_store

ROOT = Path(__file__).resolve().parents[2]
LATIN1 = "en_US.ISO-8859-1"


def test_a_store_folder_duckdb_would_read_as_another_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    garbled = tmp_path / "st\u00c3\u00b6re"  # 'störe' as a Latin-1 locale decodes its UTF-8 name
    with pytest.raises(ValueError, match=r"store folder '.*st\u00c3\u00b6re': this process reads file names in its "
                                         r"locale's encoding \(iso8859-1\), DuckDB reads them as UTF-8.*PYTHONUTF8=1"):
        Store(str(garbled))
    assert not garbled.exists()
    assert Store(str(tmp_path / "store")).is_local  # an ASCII path opens the same file for both


def test_check_duckdb_spelling_passes_what_both_read_alike():
    from storage.store_urls import check_duckdb_spelling

    check_duckdb_spelling("/data/st\u00f6re", "x", encoding="utf-8")  # a UTF-8 locale: one spelling
    check_duckdb_spelling("/data/store", "x", encoding="iso8859-1")
    for path in ("/data/st\u00c3\u00b6re", "/data/st\u00f6re"):  # UTF-8 bytes read as Latin-1; a Latin-1 name (not UTF-8)
        with pytest.raises(ValueError, match="^x '/data/st"):
            check_duckdb_spelling(path, "x", encoding="iso8859-1")


def test_a_catalog_file_duckdb_would_write_under_another_name_is_refused(tmp_path, monkeypatch):
    from storage.export import export_catalog

    store = build_catalog_store(str(tmp_path / "store"))
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    with pytest.raises(ValueError, match=r"^catalog file '.*cat-\u00c3\u00bc.duckdb': this process reads file names"):
        export_catalog(store, out / "cat-\u00c3\u00bc.duckdb")
    assert list(out.iterdir()) == []


@pytest.fixture(scope="module")
def latin1_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a process in a Latin-1 locale, compiled into a temporary folder."""
    if shutil.which("localedef") is None:
        pytest.skip("no localedef to build a Latin-1 locale")
    folder = tmp_path_factory.mktemp("locales")
    built = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(folder / LATIN1)], capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONUTF8", "PYTHONIOENCODING"))}
    env.update(LOCPATH=str(folder), LC_ALL=LATIN1, LANG=LATIN1)
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"], env=env,
                           capture_output=True, text=True)
    if probe.stdout.strip() != "iso8859-1":
        pytest.skip(f"no Latin-1 locale here (localedef: {built.returncode}, encoding {probe.stdout.strip()!r})")
    return env


def _prh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, timeout=300)


def test_prh_reads_a_non_ascii_store_in_a_latin1_locale(tmp_path, latin1_env):
    store = tmp_path / "st\u00f6re"
    build_catalog_store(str(store))
    # the reference: every row of every layer file, read by pyarrow without DuckDB or the catalog
    rows = sum(pq.read_metadata(f).num_rows for f in (store / "features").rglob("layer-*.parquet"))
    assert rows == (4 + 5 + 3 + 4) * 8
    done = _prh(latin1_env, "sql", "--store", str(store), "select count(*) n from features", "--format", "csv")
    assert done.returncode == 0, done.stderr.decode("latin-1")
    assert done.stdout.decode("latin-1").split() == ["n", str(rows)]
    # the store's path, printed in the terminal's encoding (one byte for the 'ö')
    done = _prh(latin1_env, "verify", "--store", str(store))
    assert done.returncode == 0 and str(store).encode("latin-1") in done.stdout, done.stderr.decode("latin-1")
    # asked to keep the locale's encoding, prh names the folder and what to do, before reading anything
    done = _prh({**latin1_env, "PYTHONUTF8": "0"}, "sql", "--store", str(store), "select 1")
    assert done.returncode == 2
    assert b"this process reads file names in its locale's encoding (iso8859-1)" in done.stderr and b"PYTHONUTF8=1" in done.stderr


def test_prh_exports_the_catalog_under_the_name_given_in_a_latin1_locale(tmp_path, latin1_env):
    store = build_catalog_store(str(tmp_path / "store"))
    out = tmp_path / "out"
    out.mkdir()
    done = _prh(latin1_env, "catalog", "export", str(out / "cat-\u00fc.duckdb"), "--store", store.url)
    assert done.returncode == 0, done.stderr.decode("latin-1")
    assert [p.name for p in out.iterdir()] == ["cat-\u00fc.duckdb"]  # no file under another name beside it


def test_prh_refuses_a_folder_named_in_latin1_in_a_latin1_locale(tmp_path, latin1_env):
    """A folder typed in a Latin-1 terminal is named in Latin-1 bytes, which DuckDB cannot open."""
    folder = os.fsencode(str(tmp_path)) + b"/st\xf6re"
    os.mkdir(folder)
    done = _prh(latin1_env, "sql", "--store", folder, "select 1")  # type: ignore[arg-type]
    assert done.returncode == 2 and b"not UTF-8" in done.stderr, done.stderr.decode("latin-1")


def test_text_typed_in_a_latin1_terminal_reads_as_typed(tmp_path, latin1_env):
    """prh runs in UTF-8 mode there, but a query's 'é' comes as the Latin-1 byte e9: it is text
    in the terminal's encoding (a path's bytes stay bytes), and the answer goes back in it."""
    store = tmp_path / "store"
    build_catalog_store(str(store))
    done = _prh(latin1_env, "sql", "--store", str(store), b"select 'caf\xe9' x", "--format", "csv")  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr.decode("latin-1")
    assert done.stdout == b"x\ncaf\xe9\n"
