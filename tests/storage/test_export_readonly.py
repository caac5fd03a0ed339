"""`prh catalog export` and the analysts' read-only guarantees."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from storage.catalog import ReadOnlyQueryError, connect, query
from storage.export import export_catalog, open_catalog
from storage.store import Store
from tests.storage.catalog_store import build_catalog_store

CHECKS = [
    "select count(*) n, count(distinct model) models, sum(len(vector)) floats from features",
    "select model_a, model_b, metric, score, calibrated_score from alignment_best order by all",
    "select metric, count(*) n, round(sum(score), 9) s from alignment group by metric order by metric",
    "select sample_id, text, octet_length(image) b from samples order by sample_id",
    "select model, param_count, layer_names from models order by model",
    "select name, n_samples, n_rejected, source from datasets",
    "select run_id, status, extracted, feature_versions from runs order by run_id",
]

REFUSED = [
    "PRAGMA threads = 1", "SET threads = 1", "RESET threads", "SET VARIABLE x = 1", "INSTALL httpfs", "LOAD httpfs",
    "CALL checkpoint()", "CHECKPOINT", "EXPORT DATABASE 'exported'", "COPY features FROM 'x.parquet'",
    "COPY (SELECT 1) TO 'x.csv'", "COPY FROM DATABASE memory TO other", "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
    "EXPLAIN (ANALYZE) COPY (SELECT 1) TO 'x.csv'", "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "ATTACH 'x.db' AS x", "DETACH memory", "USE memory", "CREATE TABLE t AS SELECT 1", "CREATE MACRO m(a) AS a",
    "CREATE SECRET (TYPE s3)", "INSERT INTO features SELECT * FROM features", "UPDATE models SET model = 'x'",
    "DELETE FROM runs", "DROP VIEW features", "ALTER VIEW features RENAME TO f", "VACUUM", "BEGIN TRANSACTION",
    "PREPARE p AS SELECT 1", "select 1; drop view samples",
    "UPDATE EXTENSIONS", "UPDATE EXTENSIONS (httpfs)",  # a statement type the Python API cannot name: was a ValueError
    # SELECTs that would reach outside the store or change settings: stopped by the locked connection
    "SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM enable_logging(storage = 'file', storage_config = {'path': 'logs'})",
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def built(store_url) -> str:
    build_catalog_store(store_url)
    return store_url


@pytest.fixture(scope="module")
def unchanged_local(tmp_path_factory) -> tuple[str, dict[str, bytes]]:
    """(URL, every file's bytes by path) of a local catalog store built once for the module's
    tests whose statements must all be refused: each checks the store still holds exactly these
    bytes after its statement, so a write that got through fails the test that made it (and the
    ones after it: none can pass on a changed store)."""
    url = str(tmp_path_factory.mktemp("unchanged") / "store")
    return url, _contents(build_catalog_store(url))


@pytest.fixture(scope="module", params=["local", "s3"])
def unchanged_store(request, new_s3_store_url) -> tuple[str, dict[str, bytes]]:
    """``unchanged_local``, and the same store on the loopback S3 endpoint (built once each)."""
    if request.param == "local":
        return request.getfixturevalue("unchanged_local")
    url = new_s3_store_url()
    return url, _contents(build_catalog_store(url))


def _contents(store) -> dict[str, bytes]:
    """Every file of the store (a listing afresh, no cache), path -> bytes."""
    return {f: store.fs.cat_file(f) for f in sorted(store.fs.find(store.root, refresh=True))}


def test_export_reopens_with_the_same_answers(built, tmp_path):
    path = tmp_path / "out" / "prh.duckdb"
    summary = export_catalog(built, path)
    assert summary.files == 25 and summary.tables == {"datasets": 1, "models": 4, "runs": 2}
    assert os.listdir(path.parent) == ["prh.duckdb"]  # no temporary or WAL file left
    live = connect(built)
    exported = open_catalog(path)
    for sql in CHECKS:
        assert query(exported, sql).equals(query(live, sql)), sql
    if summary.remote:
        return
    # a fresh process with plain DuckDB, as the DuckDB CLI would open it (read-only)
    script = "import duckdb, json, sys; c = duckdb.connect(sys.argv[1], read_only=True); " \
             "print(json.dumps([c.sql(q).fetchall() for q in json.loads(sys.argv[2])], default=str))"
    out = subprocess.run([sys.executable, "-c", script, str(path), json.dumps(CHECKS)], capture_output=True, text=True, check=True)
    expected = [live.sql(q).fetchall() for q in CHECKS]
    assert out.stdout.strip() == json.dumps(expected, default=str)


def test_open_catalog_twice_in_one_process(tmp_path, monkeypatch):
    """DuckDB shares one database per file within a process: a lock made on it used to carry
    over (a second open_catalog failed, a plain connect came back locked). And DuckDB allows its
    spill folder (``.tmp`` in the working directory) besides the listed ones: no longer."""
    url = tmp_path / "store"
    build_catalog_store(str(url))
    path = tmp_path / "prh.duckdb"
    export_catalog(str(url), path)
    elsewhere = tmp_path / "cwd"
    (elsewhere / ".tmp").mkdir(parents=True)
    (elsewhere / ".tmp" / "secret.txt").write_text("outside the store")
    monkeypatch.chdir(elsewhere)
    first, second = open_catalog(path), open_catalog(path)
    assert query(first, CHECKS[4]).equals(query(second, CHECKS[4]))
    for con in (first, second, connect(str(url))):
        with pytest.raises(ReadOnlyQueryError):
            query(con, "select content from read_text('.tmp/secret.txt')")
        allowed = con.execute("select current_setting('allowed_directories')").fetchone()[0]
        assert not any(d.startswith(str(elsewhere)) for d in allowed), allowed
    plain = duckdb.connect(str(path), read_only=True)  # not locked by the catalogs opened before
    assert plain.execute("select content from read_text('.tmp/secret.txt')").fetchone() == ("outside the store",)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_catalog(tmp_path / "nosuch.duckdb")
    (tmp_path / "text.duckdb").write_text("not a database")
    with pytest.raises(ValueError, match="is not a DuckDB database"):
        open_catalog(tmp_path / "text.duckdb")


def test_export_replaces_an_older_export_and_no_other_file(tmp_path):
    """An earlier export (a DuckDB database) and an empty file are replaced; any other file is
    not: `prh catalog export pairs.jsonl` (a typo) had replaced the user's data file."""
    url = str(tmp_path / "store")
    build_catalog_store(url)
    path = tmp_path / "prh.duckdb"
    other = duckdb.connect(str(path))
    other.execute("create table t as select 1 as a")
    other.close()
    export_catalog(url, path)
    assert duckdb.connect(str(path), read_only=True).sql("select count(*) from models").fetchall() == [(4,)]
    export_catalog(url, path)  # the export itself, again
    assert duckdb.connect(str(path), read_only=True).sql("select count(*) from models").fetchall() == [(4,)]
    empty = tmp_path / "empty.duckdb"
    empty.touch()
    export_catalog(url, empty)
    assert duckdb.connect(str(empty), read_only=True).sql("select count(*) from models").fetchall() == [(4,)]
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"image": "a.png", "text": "a cat"}\n')
    with pytest.raises(ValueError, match=f"catalog file '{data}' exists and is not a DuckDB database"):
        export_catalog(url, data)
    assert data.read_text() == '{"image": "a.png", "text": "a cat"}\n'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_exported_file_cannot_change_the_store(tmp_path):
    url = tmp_path / "store"
    build_catalog_store(str(url))
    before = _snapshot(url)
    path = tmp_path / "prh.duckdb"
    export_catalog(str(url), path)
    con = duckdb.connect(str(path), read_only=True)
    views = dict(con.sql("select view_name, sql from duckdb_views() where not internal").fetchall())
    assert sorted(views) == ["alignment", "alignment_all", "alignment_best", "alignment_best_all", "alignment_best_latest",
                             "alignment_fdr", "alignment_latest", "features", "models_current", "rejected_samples", "samples"]
    derived = ("alignment", "alignment_best", "alignment_fdr", "alignment_latest", "alignment_best_latest", "models_current")
    empty = ("rejected_samples",)  # the store's dataset has no rejected file: a typed empty view, reading nothing
    assert all(("read_parquet(" in sql or name in derived + empty) and "COPY" not in sql.upper() for name, sql in views.items())
    assert con.execute("select count(*), min(q_value) from alignment_fdr").fetchall() == [(16, pytest.approx(1 / 21))]
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("CREATE TABLE t AS SELECT 1")
    con.close()
    # Even opened read-write, the file holds copies (tables) and read-only views: changing it
    # changes nothing in the store.
    rw = duckdb.connect(str(path))
    rw.execute("DELETE FROM models; DROP VIEW features; CREATE TABLE t AS SELECT * FROM samples")
    rw.close()
    export_catalog(str(url), path)
    locked = open_catalog(path)
    store_file = next(p for p in before if p.endswith(".parquet"))
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        locked.execute(f"COPY (SELECT 1) TO '{tmp_path / 'elsewhere.csv'}'")
    with pytest.raises(duckdb.Error, match="locked"):
        locked.execute("SET enable_external_access = true")
    assert _snapshot(url) == before, store_file


@pytest.mark.parametrize("sql", REFUSED)
def test_query_refuses_anything_that_could_write(unchanged_local, tmp_path, monkeypatch, sql):
    url, before = unchanged_local
    monkeypatch.chdir(tmp_path)  # relative paths of the statement: here
    con = connect(url)
    with pytest.raises(ReadOnlyQueryError, match="read-only"):
        query(con, sql)
    assert _contents(Store(url)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert query(con, "select count(*) n from features").column("n")[0].as_py() == 8 * 16


#: Writes into the store that DuckDB 2.0 types SELECT (a write in a WITH clause) or hides in a
#: function that runs SQL text; the lock allows them, since the store's folder is the allowed
#: one. ``{best}`` is a published alignment file, ``{root}`` the store.
HIDDEN_WRITES = [
    "WITH x AS (COPY (SELECT 1 a) TO '{best}' (FORMAT parquet)) SELECT 1",
    "WITH x AS (COPY (SELECT 1 a, 2 b) TO '{root}/features' (FORMAT parquet, PARTITION_BY (a), OVERWRITE)) SELECT 1",
    "EXPLAIN ANALYZE WITH x AS (COPY (SELECT 1 a) TO '{best}' (FORMAT parquet)) SELECT 1",
    "EXPLAIN (ANALYZE) WITH x AS (COPY (SELECT 1 a) TO '{best}' (FORMAT parquet)) SELECT 1",
    "with x as materialized (copy (select 1 a) to '{root}/evil.csv') select * from models",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('WITH x AS (COPY (SELECT 1 a) TO ''{best}'' (FORMAT parquet)) SELECT 1'))",
    "SELECT * FROM query('SELECT 1')",
    # found by a second review: a table function that calls another one named in a string
    "SELECT * FROM destroy_external_resource('json_execute_serialized_sql', "
    "json_serialize_sql('WITH x AS (COPY (SELECT 42 a) TO ''{best}'' (FORMAT parquet)) SELECT 1'))",
    "SELECT * FROM system.main.destroy_external_resource('json_execute_serialized_sql', "
    "json_serialize_sql('WITH x AS (COPY (SELECT 42 a) TO ''{root}/evil.csv'') SELECT 1'))",
    "SELECT * FROM register_external_resource_type('t', kind := 'k', create_function := 'json_execute_serialized_sql')",
    "SELECT * FROM models, checkpoint()",
    # found by a third review: a comment held a parenthesis that fooled the option-list reader,
    # so a clean tail in a string was checked while DuckDB ran the COPY
    "EXPLAIN (ANALYZE /*(*/) WITH x AS (COPY (SELECT 42 AS a) TO '{best}' (FORMAT parquet)) SELECT ') SELECT 1 --'",
    "EXPLAIN (ANALYZE, FORMAT ')') WITH x AS (COPY (SELECT 42 AS a) TO '{root}/evil.csv') SELECT 1",
    "EXPLAIN ANALYZE /* ( */ WITH x AS (COPY (SELECT 42 AS a) TO '{root}/evil.csv') SELECT ')'",
    "WITH x AS (DELETE FROM runs RETURNING *) SELECT count(*) FROM x",
    "WITH x AS (UPDATE models SET model = 'forged' RETURNING *) SELECT 1",
    "WITH x AS (INSERT INTO datasets SELECT * FROM datasets RETURNING *) SELECT 1",
    "SELECT 1 UNION ALL (WITH x AS (COPY (SELECT 1 a) TO '{root}/evil.csv') SELECT 2)",
]


@pytest.mark.parametrize("sql", HIDDEN_WRITES)
def test_query_refuses_writes_hidden_in_a_select(unchanged_store, sql):
    """Found by a security review: ``WITH x AS (COPY ... TO '<store>/...') SELECT 1`` overwrote a
    published best file (and ``prh verify`` could be fooled by a forged manifest the same way)."""
    store_url, before = unchanged_store
    store = Store(store_url)
    best = next(f for f in before if f.endswith("best.parquet"))
    con = connect(store_url)
    statement = sql.format(best=store.uri(best.removeprefix(store.root + "/")), root=store_url)
    with pytest.raises(ReadOnlyQueryError, match="the catalog is read-only: .* not allowed"):
        query(con, statement)
    assert _contents(store) == before
    assert query(con, "select count(*) n from runs").column("n")[0].as_py() == 2
    assert query(con, "select count(*) n from models where model = 'forged'").column("n")[0].as_py() == 0


def test_reader_options_that_create_tables_are_refused(tmp_path):
    """``read_csv(..., rejects_table := 'alignment_best')`` created a temporary table that hid the
    view from every later query on the connection (0 rows)."""
    url = str(tmp_path / "store")
    build_catalog_store(url)
    (tmp_path / "store" / "t.csv").write_text("a\n1\nx\n")
    con = connect(url)
    for sql in (f"SELECT * FROM read_csv('{url}/t.csv', store_rejects = true, rejects_table := 'alignment_best')",
                f"SELECT * FROM read_csv('{url}/t.csv', columns = {{'a': 'INT'}}, rejects_scan := 'samples', store_rejects = true)"):
        with pytest.raises(ReadOnlyQueryError, match="it creates a table"):
            query(con, sql)
    assert query(con, "select count(*) n from alignment_best").column("n")[0].as_py() == 8
    assert query(con, f"SELECT a FROM read_csv('{url}/t.csv', ignore_errors = true, header = true) WHERE a = '1'").num_rows == 1


def test_multibyte_text_in_an_explain_writes_nothing(tmp_path):
    """A third review overwrote a published file with an EXPLAIN whose comment held two-byte
    characters (the tokenizer's offsets are bytes): through prh sql the attack now runs as the
    one harmless EXPLAIN it is."""
    from tests.storage.test_sql_guard import utf8_explain

    url = tmp_path / "store"
    build_catalog_store(str(url))
    before = _snapshot(url)
    attack = utf8_explain(f"COPY (SELECT 1 AS a) TO $${url}/pwned.csv$$")
    result = query(connect(str(url)), attack)
    assert result.num_rows == 1 and "pwned" in str(result.to_pylist())  # the plan of the SELECT of the string
    assert _snapshot(url) == before


def test_unicode_spaces_in_an_explain_write_nothing(tmp_path):
    """A fourth review overwrote a published file through DuckDB's unicode-space pre-pass (see
    tests/storage/test_sql_guard.py): refused now, the store unchanged."""
    from tests.storage.test_sql_guard import unicode_space_explain

    url = tmp_path / "store"
    build_catalog_store(str(url))
    before = _snapshot(url)
    with pytest.raises(ReadOnlyQueryError, match="read-only"):
        query(connect(str(url)), unicode_space_explain(f"COPY (SELECT 42 AS pwned) TO $b${url}/pwned.csv$b$"))
    assert _snapshot(url) == before


def test_duckdbs_advice_to_set_or_install_says_that_prh_sql_cannot(unchanged_local):
    """DuckDB answers some queries with a statement to run (``Use SET lambda_syntax=...``,
    ``INSTALL spatial; LOAD spatial;``) that `prh sql` refuses: the error says so, and what to do."""
    from storage.catalog import QueryError

    con = connect(unchanged_local[0])
    with pytest.raises(QueryError, match=r"(?s)SET lambda_syntax.*\(prh sql cannot run the SET, INSTALL or LOAD .*`lambda x: x \* 2`\)$"):
        query(con, "SELECT list_transform([1, 2], x -> x * 2)")
    with pytest.raises(QueryError, match=r"(?s)LOAD spatial; \(prh sql cannot run .*prh catalog export FILE"):
        query(con, "SELECT st_point(1, 2)")
    with pytest.raises(QueryError) as error:
        query(con, "SELECT no_such_column FROM models")
    assert "prh sql cannot" not in str(error.value)


def test_query_accepts_reads(tmp_path):
    url = str(tmp_path / "store")
    build_catalog_store(url)
    con = connect(url)
    for sql in ["EXPLAIN SELECT * FROM models", "EXPLAIN ANALYZE SELECT count(*) FROM features", "EXPLAIN (FORMAT json) SELECT 1",
                "DESCRIBE features", "SUMMARIZE models", "SHOW TABLES", "FROM datasets", "WITH x AS (SELECT 1 a) SELECT * FROM x",
                "PIVOT (SELECT layer_a, layer_b, score FROM alignment) ON layer_b IN (0, 1) USING max(score) GROUP BY layer_a",
                f"SELECT count(*) FROM read_parquet('{url}/features/**/*.parquet')",
                "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
                "SELECT 'copy' AS \"delete\", 'WITH x AS (COPY' AS update_note, * FROM query_table('models')",
                "WITH x AS MATERIALIZED (SELECT metric FROM alignment_best) SELECT DISTINCT metric FROM x",
                "EXPLAIN ANALYZE WITH x AS (SELECT 1 a) SELECT * FROM x",
                f"SELECT count(*) FROM glob('{url}/**/*.parquet'), range(2)",
                f"SELECT * FROM parquet_metadata('{url}/alignment/**/best.parquet')",
                "SELECT * FROM duckdb_views() WHERE NOT internal", "SELECT * FROM unnest([1, 2]) t(x), generate_series(1, 2)",
                "SELECT * FROM pragma_table_info('alignment_best')", "SELECT list_aggregate([1, 2], 'max') m",
                "EXPLAIN ANALYSE SELECT 1", "EXPLAIN (FORMAT json) SELECT ')' AS p", "/* c */ EXPLAIN -- c\n (ANALYZE) SELECT 1",
                "SELECT * FROM pragma_user_agent()", "EXPLAIN (SELECT 1)", "EXPLAIN /* naïve */ SELECT count(*) FROM samples",
                "EXPLAIN ANALYZE (FROM alignment_best)", "EXPLAIN (FORMAT 'json', ANALYZE) SELECT 1",
                "EXPLAIN (SUMMARIZE models)", "SELECT text FROM samples WHERE text <> 'a\u00a0b'"]:
        assert query(con, sql).num_rows > 0, sql


def test_prh_sql_and_catalog_export_commands(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    url = str(tmp_path / "store")
    build_catalog_store(url)
    monkeypatch.chdir(tmp_path)
    for sql in ("PRAGMA threads = 1", "INSTALL httpfs", "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
                f"WITH x AS (COPY (SELECT 1) TO '{url}/x.csv') SELECT 1"):
        assert main(["sql", sql, "--store", url]) == 2
        err = capsys.readouterr().err
        assert "prh sql: error: the catalog is read-only" in err, err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "store" / "x.csv").exists()
    assert main(["catalog", "export", "prh.duckdb", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "over 25 Parquet files" in out and "duckdb -readonly" in out
    assert re.search(r"datasets \(1 row\), models \(\d+ rows\), runs \(\d+ rows?\)", out), out  # not "(1 rows)"
    assert duckdb.connect(str(tmp_path / "prh.duckdb"), read_only=True).sql("select count(*) from alignment_best").fetchall() == [(8,)]
    assert main(["catalog", "export", "odd dir/cat [1].duckdb", "--store", url]) == 0  # the command can be pasted
    assert f"duckdb -readonly '{tmp_path}/odd dir/cat [1].duckdb'" in capsys.readouterr().out


def test_prh_sql_csv_keeps_values_whole_and_a_closed_pipe_is_quiet(tmp_path, capsys):
    """--format csv used the terminal table's cells: floats cut to 6 digits, lists past 8 items
    elided. It holds what --format json holds; `prh sql ... | head` ends without a traceback."""
    import csv as csv_module
    import io

    from flows.cli import main

    url = str(tmp_path / "store")
    build_catalog_store(url)
    sql = "select model, layer_names, 1/3 third, [1.0/7, 2, 3, 4, 5, 6, 7, 8, 9] nine, NULL::DOUBLE nothing from models order by model"
    assert main(["sql", sql, "--store", url, "--format", "json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main(["sql", sql, "--store", url, "--format", "csv"]) == 0
    rows = list(csv_module.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(whole) == 4
    for got, want in zip(rows, whole):
        assert json.loads(got["layer_names"]) == want["layer_names"] and json.loads(got["nine"]) == want["nine"]
        assert float(got["third"]) == want["third"] == 1 / 3 and got["nothing"] == ""
    # 20,000 rows: 280 kB of table, four times a pipe's buffer (64 KiB), so the writes go on
    # after head has gone (200,000 took 17 s to render)
    script = ("import sys; sys.argv = ['prh', 'sql', 'select range r from range(20000)', '--store', sys.argv[1]]; "
              "from flows.cli import main; sys.exit(main())")
    piped = subprocess.run(f"{sys.executable} -c \"{script}\" {url} | head -n 2", shell=True, capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[2])
    assert piped.stdout.count("\n") == 2 and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr


def test_s3_catalog_reads_nothing_outside_its_prefix(s3_store_url):
    """On S3 the allowed directory is the store's prefix: another prefix of the same bucket is
    refused, and a ``..`` segment is a literal part of a key (S3 has no parent folders), so it
    reaches nothing outside the store either."""
    from storage.store import Store

    store = Store(s3_store_url)
    store.fs.pipe(f"{store.root}/inside.txt", b"inside")
    outside = store.root.rsplit("/", 1)[0] + "/other/secret.txt"
    store.fs.pipe(outside, b"SECRET")
    con = connect(store)  # a Store: read as it is (the prefix holds no store folders)
    assert query(con, f"select content from read_text('{store.uri('inside.txt')}')").to_pylist() == [{"content": "inside"}]
    with pytest.raises(ReadOnlyQueryError):
        query(con, f"select content from read_text('s3://{outside}')")
    for sneaky in (store.uri("../other/secret.txt"), store.uri("%2e%2e/other/secret.txt")):
        assert query(con, f"select content from read_text('{sneaky}')").num_rows == 0


def test_the_s3_catalog_filesystem_itself_refuses_writes(s3_store_url, tmp_path):
    """A second layer on S3: the filesystem the locked connection reads the store through refuses
    writes, so a COPY that got past query()'s checks (here run directly on the connection) fails
    and the store is unchanged. An unlocked connection (read_only=False) still writes."""
    from storage.store import Store

    build_catalog_store(s3_store_url)
    store = Store(s3_store_url)
    files = sorted(store.fs.find(store.root))
    best = next(f for f in files if f.endswith("best.parquet"))
    before = store.fs.cat_file(best)
    con = connect(s3_store_url)
    for sql in (f"COPY (SELECT 1 a) TO 's3://{best}' (FORMAT parquet)", f"COPY (SELECT 1 a) TO '{s3_store_url}/new.csv'"):
        with pytest.raises(duckdb.Error, match="the catalog only reads the store"):
            con.execute(sql)
    with pytest.raises(duckdb.Error):  # DuckDB lists the folder first (and fails on s3fs's plain listing)
        con.execute(f"COPY (SELECT 1 a, 2 b) TO '{s3_store_url}/features' (FORMAT parquet, PARTITION_BY (a), OVERWRITE)")
    assert sorted(store.fs.find(store.root, refresh=True)) == files and store.fs.cat_file(best) == before
    assert query(con, "select count(*) n from alignment_best").column("n")[0].as_py() == 8
    export_catalog(s3_store_url, tmp_path / "c.duckdb")
    exported = open_catalog(tmp_path / "c.duckdb")
    with pytest.raises(duckdb.Error, match="the catalog only reads the store"):
        exported.execute(f"COPY (SELECT 1 a) TO '{s3_store_url}/new.csv'")
    writable = connect(s3_store_url, read_only=False)
    writable.execute(f"COPY (SELECT 1 a) TO '{s3_store_url}/new.csv'")
    assert store.fs.exists(f"{store.root}/new.csv")


def test_a_box_moved_to_another_disk_and_linked_back_is_read(tmp_path):
    """A store whose ``features/`` was moved to a bigger disk and linked back: DuckDB follows the
    link before checking ``allowed_directories``, so every query of the ``features`` view failed
    ("file system operations are disabled by configuration"), from `prh sql` and from an
    exported file. The files the views read are allowed by name; their neighbours are not."""
    url = tmp_path / "store"
    build_catalog_store(str(url))
    disk = tmp_path / "big-disk"
    disk.mkdir()
    os.rename(url / "features", disk / "features")
    (url / "features").symlink_to(disk / "features")
    (disk / "features" / "secret.txt").write_text("not the store's")
    path = tmp_path / "prh.duckdb"
    export_catalog(str(url), path)
    for con in (connect(str(url)), open_catalog(path)):
        assert query(con, "select count(distinct model) n from features").to_pylist() == [{"n": 4}]
        with pytest.raises(duckdb.Error, match="disabled by configuration"):
            con.execute(f"select * from read_text('{disk / 'features' / 'secret.txt'}')").fetchall()
        layer = next((disk / "features").rglob("layer-000.parquet"))
        with pytest.raises(duckdb.Error, match="disabled by configuration"):  # a glob beside the allowed files
            con.execute(f"select count(*) from read_parquet('{layer.parent}/*.parquet')").fetchall()


def test_an_exported_file_allows_no_linked_file_outside_its_store(tmp_path) -> None:
    """The files an exported catalog records as reached through a link are allowed only when its
    views name them under the store's folder: a file edited to list another path (the file is
    the user's to change) gets no read of it through the lock."""
    url = tmp_path / "store"
    build_catalog_store(str(url))
    secret = tmp_path / "secret.txt"
    secret.write_text("not the store's")
    path = tmp_path / "prh.duckdb"
    export_catalog(str(url), path)
    edit = duckdb.connect(str(path))
    edit.execute("UPDATE prh_catalog SET linked_files = [?]", [str(secret)])
    edit.close()
    con = open_catalog(path)
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        con.execute(f"select * from read_text('{secret}')").fetchall()
    assert query(con, "select count(distinct model) n from features").to_pylist() == [{"n": 4}]


def test_a_file_this_user_cannot_read_is_not_replaced(tmp_path):
    """Mutation pass: a file the exporting user cannot read counted as replaceable ("the write's
    own error says why"), but the export replaces by a rename in the folder, which needs no right
    to the file: in a shared folder another user's file was replaced. The path check refuses it
    now, before anything is written. Root reads every plain file, so as root a write-only kernel
    file stands in for it."""
    from storage.export import _checked_file

    if os.geteuid() == 0:
        unreadable = Path("/sys/bus/pci/rescan")  # write-only even for root
        if not unreadable.is_file():
            pytest.skip("no write-only file to stand for one this user cannot read")
    else:
        unreadable = tmp_path / "theirs.duckdb"
        unreadable.write_text("another user's notes\n")
        unreadable.chmod(0o200)
    with pytest.raises(ValueError) as refused:
        _checked_file(unreadable)
    assert str(refused.value) == (f"catalog file {str(unreadable)!r} exists and cannot be read (Permission denied) to tell "
                                  "whether it is an earlier export: it is not replaced; remove it yourself or give another "
                                  "name, e.g. prh.duckdb")
