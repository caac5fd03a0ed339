"""`prh catalog export FILE` with a FILE that cannot be that file: one line naming it, exit 2."""

from __future__ import annotations

import duckdb
import pytest

from flows.cli import main
from storage.export import export_catalog
from tests.storage.catalog_store import build_catalog_store


@pytest.fixture
def store_url(tmp_path) -> str:
    url = str(tmp_path / "store")
    build_catalog_store(url)
    return url


def test_bad_catalog_files_are_one_line_errors(store_url, tmp_path, capsys, monkeypatch):
    """A folder (IsADirectoryError traceback), a path under a file (FileExistsError), an empty
    name (the working directory, a folder): refused before anything is written."""
    plain, folder = tmp_path / "afile", tmp_path / "adir"
    plain.write_text("keep me\n")
    folder.mkdir()
    monkeypatch.chdir(folder)
    for target, message in (
            (folder, f"catalog file '{folder}' is a folder: give a file name, e.g. '{folder / 'prh.duckdb'}'"),
            (plain / "x.duckdb", f"catalog file '{plain / 'x.duckdb'}' is under '{plain}', which is not a folder"),
            (plain / "a" / "b.duckdb", f"catalog file '{plain / 'a' / 'b.duckdb'}' is under '{plain}', which is not a folder"),
            ("", "catalog file '' is empty: give the .duckdb file to write, e.g. prh.duckdb"),
            ("  ", "catalog file '  ' is empty: give the .duckdb file to write, e.g. prh.duckdb")):
        assert main(["catalog", "export", str(target), "--store", store_url]) == 2, target
        err = capsys.readouterr().err.strip()
        assert err == f"prh catalog: error: {message}", err
        with pytest.raises(ValueError):  # the Python function refuses them alike
            export_catalog(store_url, target)
    assert plain.read_text() == "keep me\n" and list(folder.iterdir()) == []


def test_a_file_in_a_new_folder_is_written(store_url, tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "prh.duckdb"
    assert main(["catalog", "export", str(target), "--store", store_url]) == 0
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.sql("select count(*) from runs").fetchall() == [(2,)]
