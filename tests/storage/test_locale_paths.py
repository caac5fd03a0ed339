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


# The temporary folder (TMPDIR) is a path DuckDB reads too: the catalog's spill folder, and the
# folder each pair of a run on S3 fetches its layer files into (storage.pairing).
NON_ASCII_TMP = "prh-\u00fc-\u65e5\u672c"


def test_the_catalog_spills_to_the_temporary_folder_in_a_latin1_locale(tmp_path, latin1_env):
    """A non-ASCII TMPDIR in a Latin-1 locale: Python reads '/tmp/prh-Ã¼-...' from its UTF-8 bytes,
    and DuckDB's spill folder was set in that spelling, a folder that does not exist (a query that
    spilled failed: 'Failed to create directory'). DuckDB's setting must name the TMPDIR's bytes."""
    store = tmp_path / "store"
    build_catalog_store(str(store))
    folder = tmp_path / NON_ASCII_TMP
    folder.mkdir()
    script = ("import sys; from storage.catalog import connect; con = connect(sys.argv[1]); "
              "sys.stdout.buffer.write(con.execute(\"select current_setting('temp_directory')\").fetchone()[0].encode('utf-8'))")
    done = subprocess.run([sys.executable, "-c", script, str(store)], cwd=ROOT, env={**latin1_env, "TMPDIR": str(folder)},
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode("latin-1")
    spill = done.stdout  # DuckDB opens its setting's UTF-8 bytes: they must be the folder's own
    assert spill.startswith(str(folder).encode("utf-8") + b"/prh-duckdb-"), spill


def test_a_temporary_folder_named_in_latin1_is_refused_by_the_catalog_by_name(tmp_path, monkeypatch, capsys):
    """A TMPDIR named in Latin-1 bytes (Python keeps the 0xF6 as U+DCF6): every `prh sql` ended in
    `RuntimeError: std::bad_cast` and a traceback, as DuckDB's spill folder cannot be named."""
    import tempfile

    from flows.cli import main

    store = build_catalog_store(str(tmp_path / "store"))
    monkeypatch.setattr(tempfile, "tempdir", os.fsdecode(os.fsencode(str(tmp_path)) + b"/st\xf6re"))
    assert main(["sql", "select 1", "--store", store.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prh sql: error: temporary folder ") and "st\\udcf6re" in err, err
    assert "bytes that are not UTF-8" in err and "set TMPDIR" in err


def test_the_temporary_folder_check_names_duckdbs_spelling_in_a_latin1_locale(tmp_path, latin1_env):
    script = ("from storage.store_urls import check_temporary_folder\n"
              "try:\n    check_temporary_folder('its use')\nexcept ValueError as error:\n    print(ascii(str(error)))\n")
    folder = tmp_path / NON_ASCII_TMP
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**latin1_env, "TMPDIR": str(folder)},
                          capture_output=True, timeout=120)
    garbled = os.fsencode(str(folder)).decode("latin-1")  # the folder as a Latin-1 process names it
    assert done.stdout.decode("ascii").strip() == ascii(
        f"temporary folder {garbled!r} (TMPDIR): this process reads file names in its locale's encoding (iso8859-1), DuckDB "
        f"reads them as UTF-8 (as {str(folder)!r}), so the two would open different files; its use: run with a UTF-8 locale "
        "(LC_ALL=C.UTF-8) or PYTHONUTF8=1, or set TMPDIR to a folder with an ASCII path")
    # an ASCII folder there, and the non-ASCII one in this (UTF-8) process, pass
    ascii_done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**latin1_env, "TMPDIR": str(tmp_path)},
                                capture_output=True, timeout=120)
    assert ascii_done.returncode == 0 and ascii_done.stdout == b""


def test_a_run_on_s3_with_a_temporary_folder_duckdb_cannot_read_is_refused_first(tmp_path, monkeypatch):
    """Each pair of a run on an object store fetches its layer files into the temporary folder and
    DuckDB reads them there: with a TMPDIR DuckDB names otherwise (non-ASCII in a Latin-1 locale,
    or not UTF-8) a run extracted every model, then failed every pair ('No files found that match
    the pattern'). The run is refused before it opens the dataset or the store's records."""
    import tempfile

    from flows.pipeline import prh_pipeline

    monkeypatch.setattr(tempfile, "tempdir", os.fsdecode(os.fsencode(str(tmp_path)) + b"/st\xf6re"))
    with pytest.raises(ValueError, match=r"^temporary folder '.*st\\udcf6re' \(TMPDIR\): its name is bytes that are not "
                                         r"UTF-8 text, which DuckDB cannot open; an object store's layer files are fetched "
                                         r"there for DuckDB to read: set TMPDIR"):
        prh_pipeline.fn(config=None, store="s3://prh-never-reached/store")
