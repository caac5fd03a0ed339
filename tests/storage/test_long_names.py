"""Output files and folders named near or past the 255 bytes a file name may have (NAME_MAX)."""

from __future__ import annotations

import pytest

from flows.report import check_report_folder
from storage.export import export_catalog, open_catalog
from tests.storage.catalog_store import build_catalog_store


@pytest.fixture
def store(tmp_path):
    return build_catalog_store(str(tmp_path / "store"))


def test_a_catalog_file_named_with_nearly_255_bytes_is_written(store, tmp_path):
    """Its temporary name (``.<name>.tmp-<32 hex>``, DuckDB's ``.wal`` beside it) had been longer
    than the disk takes: ENAMETOOLONG, then a traceback from the cleanup."""
    out = tmp_path / "out"
    out.mkdir()
    name = "c" * 240 + ".duckdb"  # 247 bytes: a name the disk takes
    export_catalog(store, out / name)
    assert [p.name for p in out.iterdir()] == [name]
    con = open_catalog(out / name)
    try:
        assert con.execute("select count(*) from features").fetchone() == ((4 + 5 + 3 + 4) * 8,)
    finally:
        con.close()


def test_names_longer_than_the_disk_takes_are_one_clear_error(store, tmp_path):
    (tmp_path / "out").mkdir()
    too_long = tmp_path / "out" / ("c" * 300 + ".duckdb")
    with pytest.raises(ValueError, match=r"^catalog file '.*c\.duckdb': File name too long$"):
        export_catalog(store, too_long)
    with pytest.raises(ValueError, match=r"^report folder '.*c': File name too long \(--out\)$"):
        check_report_folder(tmp_path / "out" / ("c" * 300))
    assert list((tmp_path / "out").iterdir()) == []
