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


@pytest.mark.parametrize("folder, name", [("q?m", "prh.duckdb"), ("plain", "cat?v1.duckdb"), ("a?b=c&d", "x?y.duckdb")])
def test_a_question_mark_in_the_path_is_written_where_named(store_url, tmp_path, capsys, monkeypatch, folder, name):
    """DuckDB reads '?' in a database path as options: its write-ahead log went to `q.wal?m/...`
    and the export ended in a TransactionException traceback. The file is now built elsewhere and
    renamed into place: it opens by its name, nothing else is left in its folder or the temp folder."""
    from storage.export import open_catalog

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    target = tmp_path / folder / name
    assert main(["catalog", "export", str(target), "--store", store_url]) == 0
    assert f"wrote {target}:" in capsys.readouterr().out
    assert sorted(p.name for p in target.parent.iterdir()) == [name] and list(scratch.iterdir()) == []
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.sql("select count(*) from runs").fetchall() == [(2,)]
    assert open_catalog(target).sql("select count(*) from alignment_best").fetchall() == [(8,)]
    assert not (tmp_path / "q.wal?m").exists()
    assert main(["catalog", "export", str(target), "--store", store_url]) == 0  # replaced, as any file is
    assert sorted(p.name for p in target.parent.iterdir()) == [name]


def test_a_backslash_in_the_path_is_refused(store_url, tmp_path, capsys):
    """DuckDB reads '\\' as '/' on every system: the export failed writing `back/slash/...`, and no
    DuckDB could open such a file by its name. Refused in one line, nothing written."""
    from storage.export import open_catalog

    folder = tmp_path / "back\\slash"
    folder.mkdir()
    target = folder / "prh.duckdb"
    assert main(["catalog", "export", str(target), "--store", store_url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"prh catalog: error: catalog file {str(target)!r} has a backslash in its path") and "\n" not in err
    assert list(folder.iterdir()) == [] and not (tmp_path / "back").exists()
    target.write_bytes(b"")
    with pytest.raises(ValueError, match="has a backslash in its path"):
        open_catalog(target)


def test_an_export_onto_a_full_disk_is_one_line_and_keeps_the_earlier_file(store_url, tmp_path, capsys):
    """The disk of the catalog file fills up while DuckDB writes it: a raw `duckdb.FatalException:
    Failed to create checkpoint ... No space left on device` traceback. Now one line naming the
    file and the reason, exit 2; the earlier export is unchanged and no temporary file is left."""
    from tests.storage.small_disk import tmpfs

    with tmpfs(tmp_path / "disk", 2048) as disk:
        target = disk / "prh.duckdb"
        assert main(["catalog", "export", str(target), "--store", store_url]) == 0
        capsys.readouterr()
        earlier = target.read_bytes()
        (disk / "filler").write_bytes(b"\0" * (2048 * 1024 - 2 * len(earlier) + 64 * 1024))  # room for less than one more
        assert main(["catalog", "export", str(target), "--store", store_url]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"prh catalog: error: catalog file '{target}': cannot write it: ") and "Traceback" not in err
        assert err.endswith("No space left on device (nothing was written: an earlier file of that name is unchanged)")
        assert target.read_bytes() == earlier and sorted(p.name for p in disk.iterdir()) == ["filler", "prh.duckdb"]


FILE_SIZE_LIMIT = """
import resource, sys
from flows.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.exit(main(["catalog", "export", sys.argv[1], "--store", sys.argv[2]]))
"""


def test_an_export_over_the_file_size_limit_is_one_line(store_url, tmp_path):
    """`ulimit -f` below the catalog file's size: a raw `duckdb.TransactionException: Failed to
    commit: Could not write file ... File too large` traceback; now one line, exit 2, nothing left."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    target = tmp_path / "out" / "prh.duckdb"
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(target), store_url], capture_output=True, text=True,
                          timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith(f"prh catalog: error: catalog file '{target}': cannot write it: ")
    assert "File too large" in done.stderr and list((tmp_path / "out").iterdir()) == []


def test_a_file_named_as_text_or_from_home_is_written_and_opened(store_url, tmp_path, monkeypatch) -> None:
    """``export_catalog`` and ``open_catalog`` take ``str`` or ``Path`` (the CLI passes text) and
    read ``~`` as the home folder, as a shell user writes it."""
    from storage.export import open_catalog

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    summary = export_catalog(store_url, "~/cat/prh.duckdb")
    assert summary.path == tmp_path / "home" / "cat" / "prh.duckdb" and summary.path.is_file()
    for given in ("~/cat/prh.duckdb", str(summary.path)):
        con = open_catalog(given)
        try:
            assert con.execute("SELECT count(*) FROM models").fetchone()[0] == summary.tables["models"]
        finally:
            con.close()


def test_a_path_that_is_no_regular_file_is_not_replaced(store_url, tmp_path) -> None:
    """Only an absent file, an empty one or a DuckDB database is replaced: a named pipe (another
    program's, or where a shell redirect would read) is refused and left as it is."""
    import os
    import stat

    pipe = tmp_path / "results.fifo"
    os.mkfifo(pipe)
    with pytest.raises(ValueError, match="exists and is not a DuckDB database"):
        export_catalog(store_url, pipe)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


def test_a_store_with_one_of_its_folders_is_still_a_store_to_open(store_url, tmp_path) -> None:
    """``open_catalog`` opens a file whose store holds at least one of ``datasets/``,
    ``features/`` and ``alignment/`` (a store pruned by hand still is one)."""
    import shutil

    from storage.export import open_catalog

    path = tmp_path / "prh.duckdb"
    export_catalog(store_url, path)
    for box in ("features", "alignment"):
        shutil.rmtree(f"{store_url}/{box}")
    con = open_catalog(path)
    try:
        assert con.execute("SELECT count(*) FROM datasets").fetchone()[0] == 1
    finally:
        con.close()
