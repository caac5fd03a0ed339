"""A store with a damaged file: the catalog names it, leaves it out and shows the rest; a
manifest cut short or copied into another version's folder never counts twice or silently."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from flows.cli import main
from storage.catalog import connect, query
from storage.store import Store
from storage.store_errors import DamagedManifest
from tests.storage.catalog_store import build_catalog_store


@pytest.fixture
def store(tmp_path) -> Store:
    return build_catalog_store(str(tmp_path / "store"))


def _count(con, sql: str) -> int:
    return query(con, sql).column(0)[0].as_py()


def _alignment_folders(store: Store) -> list[Path]:
    return sorted(p.parent for p in Path(store.root, "alignment").rglob("manifest.json"))


def test_a_cut_short_parquet_file_is_named_and_left_out(store, caplog, capsys):
    healthy = connect(store)
    rows, best = _count(healthy, "select count(*) from alignment"), _count(healthy, "select count(*) from alignment_best")
    damaged = _alignment_folders(store)[0] / "scores.parquet"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        con = connect(store)
    assert f"{damaged}: " in caplog.text and "left out of the alignment_all view" in caplog.text
    assert 0 < _count(con, "select count(*) from alignment") < rows
    assert _count(con, "select count(*) from alignment_best") == best  # the other views are whole
    assert _count(con, "select count(*) from runs") == 2
    assert main(["sql", "select count(*) n from runs", "--store", store.url, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "2"]
    from storage.export import export_catalog, open_catalog

    full = sum(1 for _ in Path(store.root).rglob("*.parquet"))
    summary = export_catalog(store.url, Path(store.root).parent / "prh.duckdb")  # beside the store, not in it
    assert summary.files == full - 1  # the damaged file is neither read nor counted
    assert _count(open_catalog(summary.path), "select count(*) from alignment_best") == best


def _footer_damage(path: Path, kind: type) -> None:
    """Change one byte of the Parquet footer of ``path`` (size kept) so that reading its metadata
    raises ``kind``: the first footer byte that does."""
    import duckdb

    data = path.read_bytes()
    footer = int.from_bytes(data[-8:-4], "little")  # the metadata's length, before the magic bytes
    for offset in range(len(data) - 8 - footer, len(data) - 8):
        changed = bytearray(data)
        changed[offset] ^= 0xFF
        path.write_bytes(bytes(changed))
        try:
            duckdb.connect().execute(f"select count(*) from parquet_metadata('{path}')").fetchall()
        except duckdb.Error as error:
            if type(error) is kind:
                return
    raise AssertionError(f"no one-byte change of {path}'s footer raises {kind.__name__}")


def test_the_warning_for_a_left_out_file_points_to_prh_verify_not_a_removal_by_hand(store, caplog):
    """A damaged file's warning had said "remove its version folder and run again": a removal by
    hand takes no publishing claim (a run publishing that version again could lose files) and
    leaves the version's shards; `prh verify --remove-damaged` (README, docs/storage.md) removes
    the version under its claim. The warning now says that, as a damaged manifest's does."""
    damaged = _alignment_folders(store)[0] / "scores.parquet"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        connect(store)
    warning, = [r.getMessage() for r in caplog.records if str(damaged) in r.getMessage()]
    assert "left out of the alignment_all view" in warning
    assert "prh verify --remove-damaged" in warning and "remove its version folder" not in warning


@pytest.mark.parametrize("kind", ["Error", "IOException"])
def test_a_parquet_footer_with_a_changed_byte_is_named_and_left_out(store, caplog, capsys, kind):
    """A footer whose metadata no longer parses (one byte changed, size kept) raises a plain
    ``duckdb.Error`` (thrift) or an ``IOException`` (an offset past the end), not the
    ``InvalidInputException`` of a file cut short: every query of the store failed with a traceback."""
    import duckdb

    rows = _count(connect(store), "select count(*) from alignment")
    damaged = _alignment_folders(store)[0] / "scores.parquet"
    _footer_damage(damaged, getattr(duckdb, kind))
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        con = connect(store)
    assert f"{damaged}: " in caplog.text and "left out of the alignment_all view" in caplog.text
    assert 0 < _count(con, "select count(*) from alignment") < rows
    assert main(["sql", "select count(*) n from runs", "--store", store.url, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "2"]


@pytest.mark.parametrize("failure", [TimeoutError("read timed out"), ConnectionError("connection reset")])
def test_a_read_that_fails_on_a_registered_filesystem_marks_nothing(failure):
    """s3fs raising after its retries (a timeout) reaches DuckDB's caller as a plain duckdb.Error,
    as a footer that does not parse does: the file may be sound, so it is not named damaged (nor
    left out of a view, with advice to remove its version); the caller raises the error."""
    import io

    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fsspec.implementations.memory import MemoryFileSystem

    from storage.catalog import _unreadable

    class Flaky(MemoryFileSystem):
        protocol = "flaky"

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol("/" + path[len("flaky://"):] if path.startswith("flaky://") else path)

        def _open(self, path, mode="rb", **kwargs):
            opened = super()._open(path, mode, **kwargs)

            class Failing:  # the file, except that reading it fails
                def __getattr__(self, name):
                    return getattr(opened, name)

                def read(self, *args, **kw):
                    raise failure

                def close(self):
                    pass

            return Failing() if "r" in mode else opened

    fs = Flaky()
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": [1, 2, 3]}), buffer)
    fs.pipe("/b/x.parquet", buffer.getvalue())
    con = duckdb.connect()
    con.register_filesystem(fs)
    with pytest.raises(duckdb.Error) as raised:  # the read does fail, as a plain duckdb.Error
        con.execute("select count(*) from parquet_metadata('flaky://b/x.parquet')").fetchall()
    assert type(raised.value) is duckdb.Error
    store = type("Listed", (), {"exists": lambda self, key: True, "key_of": lambda self, uri: uri})()
    try:
        assert _unreadable(con, ["flaky://b/x.parquet"], store) == {}
    finally:
        con.unregister_filesystem("flaky")
        con.close()


def test_a_damaged_or_copied_manifest_is_named_and_never_counted(store, caplog):
    healthy = connect(store)
    versions = _count(healthy, "select count(distinct alignment_version) from alignment_best")
    first, second = _alignment_folders(store)[:2]
    shutil.copytree(first, first.with_name(first.name + ".bak"))  # a copy beside the original
    manifest = second / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:150])  # cut short
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        con = connect(store)
    # the copy is not counted twice, the cut one is left out
    assert _count(con, "select count(distinct alignment_version) from alignment_best") == versions - 1
    assert _count(con, "select count(*) from alignment_best") == _count(con, "select count(distinct (alignment_version, metric)) from alignment_best")
    assert "is not this version's" in caplog.text and f"{first.name}.bak/manifest.json" in caplog.text
    assert "is damaged (not JSON" in caplog.text
    key = store.key_of(str(second))
    # the advice is prh verify's removal, under the version's claim (it had been "remove the folder
    # ... and run again": by hand, while a run may be publishing that version again)
    with pytest.raises(DamagedManifest, match=rf"manifest {key}/manifest.json in store .* is damaged .*"
                                              r"prh verify --remove-damaged removes") as raised:
        store.manifest(key)
    assert "remove the folder" not in str(raised.value)
    copied = first.with_name("0123456789abcdef")  # a copy under a name of a version: another version's manifest
    shutil.copytree(first, copied)
    with pytest.raises(DamagedManifest, match=r"is not this version's.*prh verify --remove-damaged removes") as raised:
        store.manifest(store.key_of(str(copied)))
    assert "remove the folder" not in str(raised.value)
    stray = Path(store.root, "features", "stray", "manifest.json")
    stray.parent.mkdir(parents=True)
    stray.write_text(json.dumps({}))
    assert _count(connect(store), "select count(*) from models where model is null") == 0


def test_a_missing_file_is_named_and_left_out_on_s3_too(store_url, caplog):
    """A file its manifest lists, deleted: left out with a warning locally; on S3 every view
    failed (``No files found``) and `prh sql` ended in a traceback."""
    store = build_catalog_store(store_url)
    rows = _count(connect(store), "select count(*) from features")
    [gone] = [key for key, manifest in store.manifests("features")][:1]
    store.fs.rm_file(store.path(f"{gone}/layer-001.parquet"))
    store.fs.invalidate_cache()
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        con = connect(store)
    assert "layer-001.parquet: the file is missing; left out of the features view" in caplog.text
    assert 0 < _count(con, "select count(*) from features") < rows
    assert _count(con, "select count(*) from runs") == 2 and _count(con, "select count(*) from alignment_best") == 8


def test_a_file_rewritten_as_valid_parquet_is_left_out_locally_as_on_s3(store, caplog, capsys):
    """A best-rows file rewritten by hand as valid Parquet (every score 0.999; the manifest
    untouched): on S3 the catalog left it out (its size is not the manifest's), on a local store
    `prh sql` and `prh report` showed 0.999 as the pair's score, with no warning."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    healthy = connect(store)
    best = _count(healthy, "select count(*) from alignment_best")
    path = _alignment_folders(store)[0] / "best.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.column_names.index("score"), "score", pa.array([0.999] * table.num_rows)), path)
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        con = connect(store)
    assert f"{path}: " in caplog.text and "the manifest says" in caplog.text
    assert "left out of the alignment_best_all view" in caplog.text
    assert _count(con, "select count(*) from alignment_best_all where score = 0.999") == 0
    assert 0 < _count(con, "select count(*) from alignment_best") < best
    assert _count(con, "select count(*) from alignment_all") == _count(healthy, "select count(*) from alignment_all")
    assert main(["sql", "select count(*) n from alignment_best_all where score = 0.999", "--store", store.url,
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "0"]


def test_a_damaged_page_behind_a_sound_footer_points_to_prh_verify(store):
    """A scores file whose footer reads but whose data page does not: the view binds, the query
    fails when it reads the page (DuckDB names no file); the error points to `prh verify`, which
    names the file."""
    from storage.catalog import QueryError
    from storage.verify import verify_store

    path = _alignment_folders(store)[1] / "scores.parquet"
    original = path.read_bytes()
    import duckdb

    def footer_reads_but_data_does_not() -> bool:
        try:
            duckdb.sql(f"select * from parquet_metadata('{path}')").fetchall()
        except duckdb.Error:
            return False
        try:
            duckdb.sql(f"select * from read_parquet('{path}')").fetchall()
        except duckdb.Error:
            return True
        return False

    for offset in range(4, 400, 8):  # bytes of a data page
        data = bytearray(original)
        data[offset:offset + 8] = bytes(b ^ 0xFF for b in data[offset:offset + 8])
        path.write_bytes(bytes(data))
        if footer_reads_but_data_does_not():
            break
    else:
        pytest.skip("no offset damages a page but not the footer")
    with pytest.raises(QueryError, match="prh verify"):
        query(connect(store), "select count(*) from alignment")
    damaged = [c for c in verify_store(store) if not c.ok]
    assert [c.key for c in damaged] == [str(path.parent.relative_to(store.root))] and "content changed" in damaged[0].problems[0]


_ODD_FIELDS = {  # box: the first version's manifest edited by hand, valid JSON naming its version
    "features files null": ("features", lambda m: m.update(files=None), "lists no files"),
    "features catalog null": ("features", lambda m: m.update(catalog=None), "its 'catalog' is null"),
    "dataset catalog a list": ("datasets", lambda m: m.update(catalog=[1]), "its 'catalog' is a list"),
    "alignment lineage text": ("alignment", lambda m: m.update(lineage="x"), "its 'lineage' is text"),
    "alignment lineage.features a list": ("alignment", lambda m: m["lineage"].update(features=["a", "b"]),
                                          "its lineage's 'features' is a list"),
}


@pytest.mark.parametrize("case", sorted(_ODD_FIELDS))
def test_a_manifest_field_of_the_wrong_type_leaves_only_its_version_out(store, caplog, case):
    """`files: null`, a `catalog` that is a list, a `lineage` that is text: connect() failed whole
    (TypeError, AttributeError). The version is left out with a warning naming it; the rest shows."""
    box, edit, problem = _ODD_FIELDS[case]
    healthy = connect(store)
    counts = {view: _count(healthy, f"select count(*) from {view}") for view in ("datasets", "models", "features", "alignment_best", "runs")}
    key, manifest = next(iter(store.manifests(box)))
    edit(manifest)
    store.write_json(f"{key}/manifest.json", manifest)
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        con = connect(store)
    assert f"manifest {key}/manifest.json in store {store.display_url} is damaged" in caplog.text and problem in caplog.text
    assert "left out of the catalog" in caplog.text
    got = {view: _count(con, f"select count(*) from {view}") for view in counts}
    version = key.rsplit("/", 1)[-1]
    if box == "datasets":
        expected = {**counts, "datasets": counts["datasets"] - 1}
        assert _count(con, "select count(*) from samples") == 0
    elif box == "features":
        rows = _count(healthy, f"select count(*) from features where feature_version = '{version}'")
        expected = {**counts, "models": counts["models"] - 1, "features": counts["features"] - rows}
        assert rows > 0
    else:
        per_version = _count(healthy, f"select count(*) from alignment_best where alignment_version = '{version}'")
        expected = {**counts, "alignment_best": counts["alignment_best"] - per_version}
    assert got == expected


def test_a_list_field_of_the_wrong_type_is_null_in_its_view(store):
    """`layer_widths: ["wide", 32]` in a manifest, `alignment_versions: [1, 2]` or `extracted: [1]`
    in a run record: the whole catalog failed (`TypeError: object of type 'NoneType' has no len()`:
    Arrow builds no array of null list scalars), and `prh sql`, `report` and `catalog export` with
    it. Text in a list field was split into characters. Each such value is now NULL, the rest kept."""
    key, manifest = next(iter(store.manifests("features")))
    widths = manifest["catalog"]["layer_widths"]
    manifest["catalog"]["layer_widths"] = ["wide"] + widths[1:]
    store.write_json(f"{key}/manifest.json", manifest)
    [record_key] = [k for k in store.fs.find(store.path("runs")) if k.endswith(".json")][:1]
    record = json.loads(store.fs.cat(record_key))
    record.update(alignment_versions=[1, 2], extracted="abc", reused=[None, "m"])
    store.fs.pipe(record_key, json.dumps(record).encode())
    con = connect(store)
    version = key.rsplit("/", 1)[-1]
    row = query(con, f"select layer_widths, layer_names from models where feature_version = '{version}'").to_pylist()
    assert row == [{"layer_widths": None, "layer_names": manifest["catalog"]["layer_names"]}]
    others = query(con, f"select count(*) from models where feature_version <> '{version}' and layer_widths is not null")
    assert others.column(0)[0].as_py() > 0
    runs = query(con, f"select alignment_versions, extracted, reused from runs where run_id = '{record['run_id']}'").to_pylist()
    assert runs == [{"alignment_versions": None, "extracted": None, "reused": [None, "m"]}]


def test_json_nested_too_deeply_is_damaged_not_a_recursion_error(store, caplog, capsys):
    """A manifest or run record of 100,000 nested brackets (valid JSON that Python's parser cannot
    descend: RecursionError, which no reader caught) failed every command with a traceback. Each
    is named as damaged like text that is not JSON; the rest shows, and nothing is removed."""
    deep = "[" * 100_000 + "]" * 100_000
    key = store.key_of(str(_alignment_folders(store)[0]))
    Path(store.root, key, "manifest.json").write_text(deep)
    record = sorted(Path(store.root, "runs").glob("*.json"))[0]
    record.write_text(deep)
    with pytest.raises(DamagedManifest, match="not JSON: nested too deeply"):
        store.manifest(key)
    with caplog.at_level(logging.WARNING):
        con = connect(store)
    assert f"{key}/manifest.json" in caplog.text and record.name in caplog.text
    assert _count(con, "select count(*) from runs") == 1
    before = sorted(p for p in Path(store.root).rglob("*") if p.is_file())
    assert main(["verify", "--store", store.url]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {key}: " in out and "nested too deeply" in out and record.name in out
    assert main(["gc", "--keep-runs", "1", "--store", store.url]) == 0
    assert "no published versions removed" in capsys.readouterr().out
    assert sorted(p for p in Path(store.root).rglob("*") if p.is_file()) == before


def test_a_folder_named_like_a_run_record_is_named_not_a_crash(store, caplog, capsys):
    """`runs/x.json/` or `runs/extractions/x.json/` as a folder (another tool's, a sync's) failed
    every command with IsADirectoryError. It is named as a run record that cannot be read."""
    for folder in ("runs/odd.json", "runs/extractions/odd.json"):
        Path(store.root, folder).mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        con = connect(store)
    assert "runs/odd.json" in caplog.text and "a folder, not a file" in caplog.text
    assert _count(con, "select count(*) from runs") == 2
    assert main(["verify", "--store", store.url]) == 1
    out = capsys.readouterr().out
    assert "runs/odd.json" in out and "runs/extractions/odd.json" in out
    assert main(["gc", "--keep-runs", "1", "--store", store.url]) == 0
    assert Path(store.root, "runs/odd.json").is_dir() and Path(store.root, "runs/extractions/odd.json").is_dir()
