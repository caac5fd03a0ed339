"""The twelve analyst queries of docs/queries.md run against a small store built here; the same
results come back from an exported catalog file.

Refresh the outputs shown in the doc from a real store::

    .venv/bin/python tests/storage/test_queries.py /path/to/store
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from storage.catalog import connect, query  # noqa: E402
from storage.export import export_catalog, open_catalog  # noqa: E402
from tests.storage.catalog_store import build_catalog_store  # noqa: E402

DOC = ROOT / "docs" / "queries.md"
#: The intro's example over the latest run's results.
INTRO_SQL = re.search(r"below to read only that run:\n\n```sql\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
_BLOCK = re.compile(r"^### (\d+)\. (.+?)\n.*?```sql\n(.*?)```\n", re.DOTALL | re.MULTILINE)
_OUTPUT = re.compile(r"(```sql\n.*?```\n\n?Output on the demo store:\n\n)(.*?)(?=\n### |\Z)", re.DOTALL)


def doc_queries() -> list[tuple[str, str]]:
    """(title, SQL) of every numbered query in docs/queries.md."""
    return [(f"{n}. {title}", sql) for n, title, sql in _BLOCK.findall(DOC.read_text())]


@pytest.fixture(scope="module")
def catalog_store(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("catalog") / "store")
    build_catalog_store(url)
    return url


def test_the_doc_has_twelve_queries():
    titles = [t for t, _ in doc_queries()]
    assert len(titles) == 12, titles


def test_every_query_runs_and_returns_rows(catalog_store):
    con = connect(catalog_store)
    for title, sql in doc_queries():
        table = query(con, sql)
        assert table.num_rows > 0, title


def test_answers_make_sense(catalog_store):
    con = connect(catalog_store)
    queries = dict(doc_queries())
    best = {r["language_model"]: r["best_vision_model"] for r in query(con, queries["1. Best vision model for each language model"]).to_pylist()}
    assert best == {"lm-large": "vit-large", "lm-small": "vit-large"}
    growth = query(con, queries["2. How alignment grows with parameter count"]).to_pylist()
    assert all(r["corr_log_params"] > 0.99 for r in growth)
    captions = query(con, queries["10. Samples with captions"]).to_pylist()
    assert {r["caption"] for r in captions} == {"grinning cat", "cat with tears of joy", "cat face"}
    assert [r["captions_of_image"] for r in captions if r["caption"] == "cat face"] == [2]


def test_versions_say_when_they_were_published(catalog_store):
    from datetime import datetime, timedelta, timezone

    con = connect(catalog_store)
    for view in ("datasets", "models"):
        stamps = [r["published_at"] for r in query(con, f"select published_at from {view}").to_pylist()]
        assert stamps and all(timedelta(0) <= datetime.now(timezone.utc) - t < timedelta(hours=1) for t in stamps), (view, stamps)


def test_exported_file_gives_the_same_answers(catalog_store, tmp_path):
    path = tmp_path / "catalog.duckdb"
    summary = export_catalog(catalog_store, path)
    assert summary.files == 1 + (4 + 5 + 3 + 4) + 2 * 4  # samples, layer files, scores + best
    con = connect(catalog_store)
    exported = open_catalog(path)
    for title, sql in doc_queries():
        assert query(exported, sql).equals(query(con, sql)), title


def markdown_table(table: pa.Table, max_rows: int = 12, width: int = 48) -> str:
    """A result as a Markdown table (long cells and lists shortened)."""

    def cell(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            text = f"{value:.6g}"
        elif isinstance(value, list):
            text = "[" + ", ".join(cell(v) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
        else:
            text = str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    rows = table.to_pylist()
    lines = ["| " + " | ".join(table.column_names) + " |", "|" + "---|" * table.num_columns]
    lines += ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows[:max_rows]]
    if len(rows) > max_rows:
        lines.append(f"\n({len(rows)} rows, {max_rows} shown)")
    return "\n".join(lines) + "\n"


def refresh(store_url: str) -> None:
    """Rewrite the output under every query of docs/queries.md from ``store_url``."""
    con = connect(store_url)
    text = DOC.read_text()
    queries = iter(doc_queries())

    def replace(match: re.Match) -> str:
        _, sql = next(queries)
        return match.group(1) + markdown_table(query(con, sql)) + "\n"

    DOC.write_text(_OUTPUT.sub(replace, text))


if __name__ == "__main__":
    refresh(sys.argv[1])


def test_the_latest_view_of_the_doc_keeps_that_runs_versions(tmp_path):
    """The intro's view (one run's results among every stored version) on a store that also holds
    an alignment version no run used."""
    from storage import layout
    from storage.store import Store
    from tests.storage.catalog_store import DATASET, _alignment_rows

    url = str(tmp_path / "store")
    build_catalog_store(url)
    scores, best = _alignment_rows("vit-small", "lm-small", "al-other", 8)
    Store(url).publish(layout.alignment_key(DATASET, "vit-small", "lm-small", "al-other"),
                       {layout.SCORES_FILE: scores, layout.BEST_FILE: best}, {"kind": "alignment"})
    con = connect(url)
    assert query(con, "select count(distinct alignment_version) n from alignment_best_all").to_pylist() == [{"n": 5}]
    kept = {r["alignment_version"] for r in query(con, "select * from alignment_best_latest").to_pylist()}
    assert kept == {f"al-{a}-{b}" for a in ("vit-small", "vit-large") for b in ("lm-small", "lm-large")}
    # the current rows: a run lists another version of vit-small x lm-small, so al-other is history only
    current = {r["alignment_version"] for r in query(con, "select * from alignment_best").to_pylist()}
    assert current == kept


def test_a_local_store_path_with_spaces_and_accents_is_used_as_written(tmp_path):
    path = tmp_path / "my stores" / "prh ü"
    store = build_catalog_store(str(path))
    assert store.root == str(path) and (path / "datasets").is_dir()
    assert not any("%" in p.name for p in tmp_path.rglob("*"))  # no percent-encoded twin folder
    con = connect(str(path))
    assert query(con, "select count(*) n from samples").to_pylist() == [{"n": 8}]
    assert query(con, "select count(*) n from alignment_best").num_rows == 1


def test_metadata_views_keep_their_types_when_a_column_is_all_null(tmp_path):
    """No causal LM (bits_per_byte null everywhere), a dataset without n_images (older manifest)
    and a store holding only a crashed run: numbers stay numbers, lists stay lists."""
    from storage import layout
    from storage.store import Store

    store = Store(str(tmp_path / "store"))
    store.write_json(layout.run_key("r1"), {"run_id": "r1", "status": "CRASHED", "started_at": "2026-01-01T00:00:00+00:00"})
    con = connect(store)
    types = {r["column_name"]: r["column_type"] for r in query(con, "select column_name, column_type from (describe runs)").to_pylist()}
    assert (types["aligned"], types["alignment_versions"], types["failures"]) == ("BIGINT", "VARCHAR[]", "VARCHAR")
    assert (types["metrics_computed"], types["metrics_copied"]) == ("BIGINT", "BIGINT")
    assert query(con, "select coalesce(aligned, 0) - 1 d, list_contains(alignment_versions, 'x') c from runs").to_pylist() == [{"d": -1, "c": None}]
    empty = {r["column_name"]: r["column_type"] for r in query(con, "select column_name, column_type from (describe models)").to_pylist()}
    assert (empty["bits_per_byte"], empty["param_count"], empty["layer_widths"]) == ("DOUBLE", "BIGINT", "BIGINT[]")
    assert query(con, "select round(bits_per_byte, 2) b from models where bits_per_byte > 1.5").num_rows == 0
    for view in ("alignment", "alignment_best"):  # no versions yet: the lineage columns are there all the same
        names = {r["column_name"] for r in query(con, f"select column_name from (describe {view})").to_pylist()}
        assert {"feature_version_a", "feature_version_b", "score", "unit"} <= names, (view, names)
    runs = query(con, dict(doc_queries())["5. Runs and their lineage"]).to_pylist()
    assert [(r["run"], r["status"], r["model"]) for r in runs] == [("r1", "CRASHED", None)]  # a run without features is listed
    for title, sql in doc_queries():  # every query of the doc runs on such a store
        query(con, sql)


def test_the_lineage_query_shows_a_local_runs_id_whole(tmp_path):
    """Runs without a Prefect flow run of their own are ``local-<UTC start>-<8 hex>``: their first 8
    characters, which the doc's query showed for every run, are ``local-20`` for all of them."""
    from flows.run_record import local_run_id
    from storage import layout
    from storage.store import Store

    store = Store(str(tmp_path / "store"))
    ids = [local_run_id(), local_run_id(), "d03a9229-5e1c-4c1e-9a53-0c4f1f2a7b10"]
    for day, run_id in enumerate(ids, 1):
        store.write_json(layout.run_key(run_id), {"run_id": run_id, "status": "COMPLETED",
                                                  "started_at": f"2026-01-0{day}T00:00:00+00:00"})
    runs = query(connect(store), dict(doc_queries())["5. Runs and their lineage"]).to_pylist()
    assert [r["run"] for r in runs] == [ids[0], ids[1], "d03a9229"] and ids[0] != ids[1]


def test_a_model_with_two_feature_versions_is_not_counted_twice(tmp_path):
    """vit-small extracted again with another pooling (a second feature version) and aligned
    again: the alignment views name each row's feature versions, so the doc's queries join
    `models` on them and give one row per alignment row, not one per feature version."""
    from storage import layout
    from tests.storage.catalog_store import DATASET, _alignment_rows

    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    (key, manifest), = [(k, m) for k, m in store.manifests(layout.FEATURES) if m["catalog"]["model"] == "vit-small"]
    files = {name: store.read_table(f"{key}/{name}") for name in manifest["files"] if name.endswith(".parquet")}
    files = {name: t.set_column(t.schema.get_field_index("feature_version"), "feature_version",
                                pa.array(["fv-vit-small-cls"] * t.num_rows, t.schema.field("feature_version").type))
             for name, t in files.items()}  # the new version's rows name it, as an extraction writes them
    store.publish(layout.features_key(DATASET, "vit-small", "fv-vit-small-cls"), files,
                  {"kind": "features", "catalog": {**manifest["catalog"], "feature_version": "fv-vit-small-cls", "pooling": "cls"}})
    scores, best = _alignment_rows("vit-small", "lm-small", "al-cls", 8)
    store.publish(layout.alignment_key(DATASET, "vit-small", "lm-small", "al-cls"), {layout.SCORES_FILE: scores, layout.BEST_FILE: best},
                  {"kind": "alignment", "lineage": {"features": {"vit-small": "fv-vit-small-cls", "lm-small": "fv-lm-small"}}})
    con = connect(url)
    queries = dict(doc_queries())
    lineage = query(con, "select alignment_version, feature_version_a, feature_version_b from alignment_best_all "
                         "where model_a = 'vit-small' and model_b = 'lm-small' and metric = 'cka' order by 1").to_pylist()
    assert lineage == [{"alignment_version": "al-cls", "feature_version_a": "fv-vit-small-cls", "feature_version_b": "fv-lm-small"},
                       {"alignment_version": "al-vit-small-lm-small", "feature_version_a": "fv-vit-small", "feature_version_b": "fv-lm-small"}]
    n_best = {m: query(con, f"select count(*) n from alignment_best_all where metric = '{m}'").to_pylist()[0]["n"] for m in ("mutual_knn", "cka")}
    assert n_best == {"mutual_knn": 5, "cka": 5}
    # the current rows: one per pair and metric (al-cls, which no run lists, is history only), and the
    # doc's queries, joined to models on both feature versions, give one row per current row
    current = query(con, "select model_a, model_b, alignment_version, feature_version_a from alignment_best where metric = 'cka' "
                         "order by all").to_pylist()
    assert len(current) == 4 and {"alignment_version": "al-vit-small-lm-small", "feature_version_a": "fv-vit-small",
                                  "model_a": "vit-small", "model_b": "lm-small"} in current
    assert query(con, queries["2. How alignment grows with parameter count"]).num_rows == 4
    assert query(con, queries["3. Which layers align best"]).num_rows == 4
    features = query(con, queries["4. Features of one sample across models"]).to_pylist()  # joined to models: vit-small twice
    assert sorted(r["model"] for r in features) == ["lm-large", "lm-small", "vit-large", "vit-small"]
    datasets = query(con, queries["9. Datasets and rejected rows"]).to_pylist()
    assert [(d["models"], d["model_names"]) for d in datasets] == [(4, "lm-large, lm-small, vit-large, vit-small")]


def test_a_renamed_model_keeps_its_lineage_and_the_latest_view_tells_the_names_apart(tmp_path):
    """lm-small renamed lm-renamed (same features, so the same alignment version id under another
    pair folder): the lineage was keyed by version alone, so one of the two pairs got a NULL
    feature version (and fell out of every join on models), and the doc's one-run filter kept
    the old name's rows as part of the latest run."""
    import json

    from storage import layout
    from storage.store import Store
    from tests.storage.catalog_store import DATASET, _alignment_rows

    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    version = "al-vit-small-lm-small"
    scores, best = _alignment_rows("vit-small", "lm-small", version, 8)
    scores, best = (t.set_column(t.column_names.index("model_b"), "model_b", pa.array(["lm-renamed"] * t.num_rows))
                    for t in (scores, best))
    key = layout.alignment_key(DATASET, "vit-small", "lm-renamed", version)
    store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best},
                  {"kind": "alignment", "lineage": {"features": {"vit-small": "fv-vit-small", "lm-renamed": "fv-lm-small"}}})
    record = {"run_id": "run-9", "status": "COMPLETED", "started_at": "2026-02-01T00:00:00+00:00", "alignment_versions": [key]}
    Store(url).write_bytes(layout.run_key("run-9"), json.dumps(record).encode())
    con = connect(url)
    rows = query(con, f"select model_b, feature_version_a, feature_version_b from alignment_best where alignment_version = '{version}' "
                      "and metric = 'cka' order by model_b").to_pylist()
    assert rows == [{"model_b": "lm-renamed", "feature_version_a": "fv-vit-small", "feature_version_b": "fv-lm-small"},
                    {"model_b": "lm-small", "feature_version_a": "fv-vit-small", "feature_version_b": "fv-lm-small"}]
    assert query(con, "select count(*) n from alignment_best where feature_version_b is null").to_pylist() == [{"n": 0}]
    assert query(con, "select count(*) n from alignment").to_pylist() == \
        query(con, "select count(*) n from read_parquet(" + repr([store.read_uri(f"{k}/{layout.SCORES_FILE}") for k, _ in
                                                                store.manifests(layout.ALIGNMENT)]) + ")").to_pylist()
    assert {r["model_b"] for r in query(con, "select * from alignment_best_latest").to_pylist()} == {"lm-renamed"}
    assert query(con, INTRO_SQL).num_rows == query(con, "select * from alignment_best_latest").num_rows > 0


def test_the_docs_latest_run_query_picks_the_run_prh_report_shows(tmp_path):
    """A nightly run with one broken model ends FAILED but publishes every other pair: the docs'
    one-run query took the last COMPLETED run (stale results shown as current); it now picks the
    run `prh report` picks (select_run), and skips a FAILED run that published nothing."""
    import json

    from storage import layout
    from storage.store import Store
    from tasks.report_source import select_run
    from tests.storage.catalog_store import DATASET

    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    keys = sorted(k for k, _ in store.manifests(layout.ALIGNMENT))
    runs = [("old", "COMPLETED", "2026-01-01", keys[:1]), ("partly", "FAILED", "2026-01-02", keys[1:3]),
            ("nothing", "FAILED", "2026-01-03", [])]
    for run_id, status, day, versions in runs:
        record = {"run_id": run_id, "status": status, "started_at": f"{day}T00:00:00+00:00",
                  "finished_at": f"{day}T01:00:00+00:00", "alignment_versions": versions}
        Store(url).write_bytes(layout.run_key(run_id), json.dumps(record).encode())
    con = connect(url)
    assert select_run(con)["run_id"] == "partly"
    shown = {(r["model_a"], r["model_b"], r["alignment_version"]) for r in query(con, "select * from alignment_best_latest").to_pylist()}
    assert {"/".join(("alignment", DATASET, f"{a}__{b}", v)) for a, b, v in shown} == set(keys[1:3])
    fdr = dict(doc_queries())["11. Which pairs hold up under multiple testing"]
    for sql in (INTRO_SQL, fdr):  # the doc's examples of the latest run show those pairs
        assert {(r["model_a"], r["model_b"]) for r in query(con, sql).to_pylist()} == {(a, b) for a, b, _ in shown}


def _clauses(sql: str) -> str:
    """The WHERE ... ORDER BY ... of a query picking the latest run, comments and spacing dropped."""
    text = " ".join(re.sub(r"--[^\n]*", "", sql).split())
    return re.search(r"WHERE .*? LIMIT 1", text).group(0)


def test_the_docs_pick_the_latest_run_by_the_catalogs_one_definition():
    """Query 11 (q-values of the latest run) picks its run with LATEST_RUN_SQL's conditions and order."""
    from storage.catalog import LATEST_RUN_SQL

    fdr = dict(doc_queries())["11. Which pairs hold up under multiple testing"]
    assert _clauses(fdr) == _clauses(LATEST_RUN_SQL)


def test_features_of_one_sample_stay_one_row_per_model_when_its_id_recurs_in_another_dataset(tmp_path):
    """Query 4 on a store with a second dataset version holding the same sample ids (OpenMoji
    n=40 is a subset of n=60) and features of every model on it: joined on the dataset version and
    the id, one row per model (matching the id alone, as the query did, gave two)."""
    import numpy as np

    from storage import layout
    from storage.features import layer_tables
    from tests.storage.catalog_store import MODELS

    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    ids, dataset = ["s00", "s01"], "ds-a-subset"  # sorts before the test store's dataset: query 4 picks it
    samples = pa.table({"dataset_version": [dataset] * 2, "sample_id": ids, "image_id": ids, "text": ["a", "b"], "image": [b"x", b"y"]})
    store.publish(layout.dataset_key(dataset), {layout.SAMPLES_FILE: samples}, {"kind": "dataset", "catalog": {"dataset_version": dataset}})
    for model, (modality, _, n_layers, width) in MODELS.items():
        version = f"fv-{model}-{dataset}"
        layers = [np.full((2, width), float(i), np.float32) for i in range(n_layers)]
        store.publish(layout.features_key(dataset, model, version), layer_tables(model, version, ids, layers),
                      {"kind": "features", "catalog": {"model": model, "feature_version": version, "dataset_version": dataset,
                                                       "modality": modality, "n_layers": n_layers}})
    con = connect(url)
    rows = query(con, dict(doc_queries())["4. Features of one sample across models"]).to_pylist()
    assert sorted(r["model"] for r in rows) == sorted(MODELS)
    # the last layer of the subset's features: every value is the layer index (n_layers - 1)
    assert {r["model"]: r["first_values"][0] for r in rows} == {m: float(n - 1) for m, (_, _, n, _) in MODELS.items()}


#: A child process: builds the catalog tests' store, connects, then lowers its open-file limit to a
#: few above the files it holds open and reads every feature file.
FEW_FILES = """
import os, resource, sys
from storage.catalog import QueryError, connect, query
from tests.storage.catalog_store import build_catalog_store
con = connect(build_catalog_store(sys.argv[1]))
query(con, "select count(*) from alignment_best")
limit = len(os.listdir("/proc/self/fd")) + 2
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    query(con, "select model, count(*) from features group by model")
except QueryError as error:
    print(limit, error, sep="\\n")
"""


def test_a_query_with_too_few_file_descriptors_names_the_limit_not_damage(tmp_path):
    """A query reading more files than the process may keep open (`ulimit -n`) failed with
    "Too many open files (reading a stored file failed: if one was damaged after it was
    published, `prh verify` names it)": `prh verify` finds nothing. The hint now names the limit."""
    import os
    import subprocess

    done = subprocess.run([sys.executable, "-c", FEW_FILES, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    limit, message = done.stdout.strip().splitlines()
    assert message.startswith("the query failed: IO Error: Cannot open file ") and "prh verify" not in message
    assert message.endswith(f": Too many open files (this process may keep only {limit} files open at once (`ulimit -n`), "
                            "fewer than the query reads: raise the limit, e.g. `ulimit -n 4096`, and run it again; the "
                            "store is not damaged by this)")


def test_query_each_head_keeps_the_first_rows_and_counts_the_rest(tmp_path):
    """`prh sql`'s table shows the first 10,000 rows; the result was read whole first. The head is
    exactly `query`'s first rows (across batch boundaries), the count exact, errors as `query_each`'s."""
    from storage.catalog import QueryError, query_each, query_each_head

    con = connect(build_catalog_store(str(tmp_path / "store")))
    sql = "select range as n, range * 2 as twice from range(1000); select * from samples where false; select 7 as seven"
    heads = list(query_each_head(con, sql, rows=300, batch_rows=128))
    whole = list(query_each(con, sql))
    assert [total for _, total in heads] == [1000, 0, 1]
    assert [head.num_rows for head, _ in heads] == [300, 0, 1]
    for (head, _), table in zip(heads, whole):
        assert head.schema == table.schema and head.equals(table.slice(0, 300).combine_chunks())
    (head, total), = query_each_head(con, "select * from samples order by sample_id", rows=3, batch_rows=2)
    assert total == 8 and head.equals(query(con, "select * from samples order by sample_id limit 3"))
    with pytest.raises(QueryError, match=r"^statement 2 of 2: the query failed: .*no_such_column"):
        list(query_each_head(con, "select 1; select no_such_column from samples", rows=10))


#: A child process: the peak memory of the first rows of a 20-million-row result
HEAD_MEMORY = """
import re, sys
from storage.catalog import connect, query_each_head
from tests.storage.catalog_store import build_catalog_store
def peak_kb():  # this process's own peak (ru_maxrss keeps the parent's across exec: pytest's)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
con = connect(build_catalog_store(sys.argv[1]))
before = peak_kb()
((head, total),) = query_each_head(con, "select range as n, range * 3 as m from range(20000000)", rows=10000)
print(head.num_rows, total, (peak_kb() - before) // 1024)
"""


def test_the_first_rows_of_a_huge_result_need_no_memory_for_the_rest(tmp_path):
    """20 million rows of two BIGINTs are 320 MB as a table: reading the head keeps one batch."""
    import os
    import subprocess

    done = subprocess.run([sys.executable, "-c", HEAD_MEMORY, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    shown, total, grown_mb = (int(v) for v in done.stdout.split())
    assert (shown, total) == (10000, 20_000_000)
    assert grown_mb < 100, f"the process grew by {grown_mb} MB"


def test_query_each_head_reports_an_error_raised_after_its_first_batch_as_query_each_does(tmp_path):
    """DuckDB computes a result batch by batch: an error in a later batch reached `prh sql`'s table
    as pyarrow's ``OSError`` (a traceback, and no `prh verify` hint for a stored file that fails to
    read), not as the ``QueryError`` that `query_each` (csv, json) raises."""
    from storage.catalog import QueryError, query_each, query_each_head

    con = connect(build_catalog_store(str(tmp_path / "store")))
    failing = "select case when range >= 5000 then error('bad parquet page') else range end as n from range(100000)"
    for sql in (failing, f"select 1; {failing}"):
        with pytest.raises(QueryError) as whole:
            list(query_each(con, sql))
        with pytest.raises(QueryError) as head:
            list(query_each_head(con, sql, rows=10, batch_rows=128))
        assert str(head.value) == str(whole.value)
        assert "Invalid Input Error: bad parquet page" in str(head.value) and "`prh verify` names it" in str(head.value)


#: A query that DuckDB fails in its last row, which one thread computes after streaming the first
#: 200,000 or so rows (a parallel run may fail before its first rows or later).
FAILS_LATE = "select case when range = 299999 then error('boom') else range::varchar end v from range(300000)"


def _one_thread():
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET threads = 1")
    return con


def test_an_error_while_a_later_batch_is_computed_is_a_query_error():
    """DuckDB's error after the first batches reached Arrow's reader as a bare `OSError` (the table
    format of `prh sql` ended in a traceback); it is `query`'s QueryError, as at the start."""
    from storage.catalog import QueryError, query_batches, query_each_head

    with pytest.raises(QueryError, match=r"^the query failed: Invalid Input Error: boom"):
        list(query_each_head(_one_thread(), FAILS_LATE, rows=10, batch_rows=1000))
    schema, batches = query_batches(_one_thread(), FAILS_LATE, batch_rows=1000)
    assert schema.names == ["v"]
    read = []
    with pytest.raises(QueryError, match=r"^the query failed: Invalid Input Error: boom"):
        for batch in batches:
            read.append(batch.num_rows)
    assert read and set(read) == {1000}


def test_batches_of_a_query_that_fails_at_once_raise_before_any_is_read():
    """A query DuckDB fails at once (a cast of its first row), or one of several statements,
    raises from `query_batches` itself, before anything is written."""
    from storage.catalog import QueryError, query_batches

    with pytest.raises(QueryError, match=r"^the query failed: Conversion Error: Could not convert string 'x'"):
        query_batches(_one_thread(), "select 'x'::int v from range(10)")
    with pytest.raises(ValueError, match="the query has 2 statements"):
        query_batches(_one_thread(), "select 1; select 2")
    schema, batches = query_batches(_one_thread(), "select range n from range(2500)", batch_rows=1000)
    assert [b.num_rows for b in batches] == [1000, 1000, 500] and schema.names == ["n"]


#: The doc's example that scores stored features again (the paragraph "Scoring the stored features yourself").
RECOMPUTE_PY = re.search(r"\*\*Scoring the stored features yourself\.\*\*.*?```python\n(.*?)```", DOC.read_text(), re.DOTALL)


def _outliers(seed: int, width: int, scale: float):
    """One layer of the shared latent at ``scale``, 5% of its values made outliers the clamp cuts."""
    import numpy as np

    from tests.tasks.test_align_warnings import _view

    x = _view(seed, width) * scale
    x.flat[np.random.default_rng(seed + 100).choice(x.size, size=x.size // 20, replace=False)] *= 8
    return x.astype(np.float32)


@pytest.mark.parametrize("metric, lm_lacks", [("mutual_knn", 0), ("cka", 0), ("cka", 5)])
def test_the_docs_recipe_scores_stored_features_as_the_store_does(tmp_path, monkeypatch, metric, lm_lacks):
    """An analyst who read the features back and ran `prepare` on each layer got other numbers
    than the catalog's (a stored 0.2844 came back 0.2875, a random pair's best layer pair moved):
    the pipeline clamps a model's layers of one width at one threshold (a vision model's from its
    blocks). The doc's recipe, run on a store the alignment stage wrote, gives the stored score."""
    import logging

    from storage import layout
    from storage.store import Store
    from tasks.align_task import align_to_store
    from tasks.params import AlignmentParams
    from tests.tasks.test_align_warnings import _publish

    assert RECOMPUTE_PY, "docs/queries.md has no example that scores stored features"
    store = Store(str(tmp_path / "store"))
    # layers of one width at different scales: one threshold per model differs from one per layer
    vision = _publish(store, "vit", [_outliers(1, 10, 20.0), _outliers(2, 10, 1.0), _outliers(5, 10, 3.0)])
    language = _publish(store, "lm", [_outliers(3, 8, 1.0), _outliers(4, 8, 4.0), _outliers(6, 8, 0.5)], modality="language")
    if lm_lacks:  # the pair's rows are the samples both hold (the recipe had stacked 48 rows against 43)
        from storage.features import layer_tables

        keep = slice(lm_lacks, None)
        ids = [f"s{i:03d}" for i in range(48)][keep]
        layers = [_outliers(3, 8, 1.0)[keep], _outliers(4, 8, 4.0)[keep], _outliers(6, 8, 0.5)[keep]]
        catalog = {**language["catalog"], "feature_version": "fv-lm-part", "n_samples": len(ids)}
        language = store.publish(layout.features_key("d1", "lm", "fv-lm-part"), layer_tables("lm", "fv-lm-part", ids, layers),
                                 {"kind": "features", "catalog": catalog}).manifest
    params = AlignmentParams(metrics=["mutual_knn", "cka"], topk=4)
    manifest = align_to_store(store.url, vision, language, params, logging.getLogger("test"))
    store.write_json(layout.run_key("r1"), {"run_id": "r1", "status": "COMPLETED", "started_at": "2026-01-01T00:00:00+00:00",
                                            "finished_at": "2026-01-01T00:01:00+00:00", "config": {"alignment": params.model_dump()},
                                            "dataset_version": "d1", "alignment_versions": [manifest["key"]]})
    monkeypatch.chdir(tmp_path)  # the example opens "store"
    namespace: dict = {"print": lambda *args: None}
    exec(RECOMPUTE_PY.group(1).replace("metric = 'mutual_knn'", f"metric = '{metric}'"), namespace)
    row = namespace["row"]
    assert row["metric"] == metric and (row["model_a"], row["model_b"]) == ("vit", "lm")
    assert namespace["again"] == pytest.approx(row["score"], abs=1e-6 if metric == "cka" else 0)


def test_the_vision_language_queries_keep_to_vision_language_pairs_under_pairs_all(tmp_path):
    """A zoo run with `alignment.pairs: all` also scores language × language and vision × vision
    pairs. Query 2 (correlation with the vision model's size, per language model) took every
    pair of alignment_best: a language model showed as a "vision_model" (its parameter count in
    the correlation) and a vision model as a "language_model"; query 6 (one list per vision
    layer, by language layer) picked the first pair by name, a language × language one. The
    correlation is checked against a float64 reference over the vision models' best rows."""
    import json

    import numpy as np

    from storage import layout
    from storage.store import Store
    from tests.storage.catalog_store import DATASET, MODELS, _alignment_rows

    url = str(tmp_path / "store")
    store = build_catalog_store(url)
    keys = sorted(k for k, _ in store.manifests(layout.ALIGNMENT))
    for a, b in (("lm-large", "lm-small"), ("vit-large", "vit-small")):  # pairs: all names them in case-insensitive order
        version = f"al-{a}-{b}"
        scores, best = _alignment_rows(a, b, version, 8)
        key = layout.alignment_key(DATASET, a, b, version)
        store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best},
                      {"kind": "alignment", "lineage": {"dataset_version": DATASET, "features": {a: f"fv-{a}", b: f"fv-{b}"}}})
        keys.append(key)
    record = {"run_id": "run-all", "status": "COMPLETED", "started_at": "2026-02-01T00:00:00+00:00",
              "finished_at": "2026-02-01T00:05:00+00:00", "alignment_versions": keys}
    Store(url).write_bytes(layout.run_key("run-all"), json.dumps(record).encode())
    con = connect(url)
    assert query(con, "select count(*) n from alignment_best where metric = 'mutual_knn'").to_pylist() == [{"n": 6}]
    queries = dict(doc_queries())

    growth = query(con, queries["2. How alignment grows with parameter count"]).to_pylist()
    vision = [m for m in MODELS if MODELS[m][0] == "vision"]
    language = [m for m in MODELS if MODELS[m][0] == "language"]
    assert sorted((r["language_model"], r["vision_model"]) for r in growth) == sorted((b, a) for b in language for a in vision)
    for lm in language:  # reference: the stored best mutual_knn score of each vision model with lm
        scores = []
        for a in vision:
            best = store.read_table(f"{layout.alignment_key(DATASET, a, lm, f'al-{a}-{lm}')}/{layout.BEST_FILE}").to_pylist()
            scores.append(next(r["score"] for r in best if r["metric"] == "mutual_knn"))
        expected = np.corrcoef(np.log10([float(MODELS[a][1]) for a in vision]), np.array(scores, dtype=np.float64))[0, 1]
        got = {r["corr_log_params"] for r in growth if r["language_model"] == lm}
        assert len(got) == 1 and abs(got.pop() - round(expected, 3)) < 1e-9, lm

    matrix = query(con, queries["6. The layer × layer matrix of one pair"]).to_pylist()
    n_layers = {m: spec[2] for m, spec in MODELS.items()}
    # the first vision × language pair by name: vit-large × lm-large, 5 vision layers of 4 language layers each
    assert [r["layer_a"] for r in matrix] == list(range(n_layers["vit-large"]))
    assert all(len(r["cka_by_language_layer"]) == n_layers["lm-large"] for r in matrix)


def test_where_a_model_lands_ranks_pairs_and_models_as_worked_out_by_hand(tmp_path):
    """Query 12 on a latest run whose best scores are set by hand: a tie, a NaN and a NULL score,
    each metric ranked alone; a model's best pair is its best-ranked one (a tie goes to the
    partner first by name); QUALIFY on one model keeps its ranks among all models."""
    import json
    import math

    from storage import layout
    from storage.store import Store
    from tests.storage.catalog_store import DATASET, _alignment_rows

    url = str(tmp_path / "store")
    build_catalog_store(url)  # an older run over the same four pairs, other scores
    store = Store(url)
    hand = {("vit-small", "lm-small"): {"mutual_knn": 0.5, "cka": 0.2},
            ("vit-small", "lm-large"): {"mutual_knn": 0.3, "cka": None},
            ("vit-large", "lm-small"): {"mutual_knn": 0.5, "cka": 0.4},
            ("vit-large", "lm-large"): {"mutual_knn": math.nan, "cka": 0.6}}
    keys = []
    for (a, b), scores_by_metric in hand.items():
        version = f"hand-{a}-{b}"
        scores, best = _alignment_rows(a, b, version, 8)
        column = [scores_by_metric[m] for m in best.column("metric").to_pylist()]
        best = best.set_column(best.column_names.index("score"), "score", pa.array(column, pa.float64()))
        key = layout.alignment_key(DATASET, a, b, version)
        store.publish(key, {layout.SCORES_FILE: scores, layout.BEST_FILE: best},
                      {"kind": "alignment", "lineage": {"features": {a: f"fv-{a}", b: f"fv-{b}"}}})
        keys.append(key)
    record = {"run_id": "run-9", "status": "COMPLETED", "started_at": "2026-02-01T00:00:00+00:00",
              "finished_at": "2026-02-01T00:05:00+00:00", "alignment_versions": keys}
    store.write_bytes(layout.run_key("run-9"), json.dumps(record).encode())

    sql = dict(doc_queries())["12. Where a model lands among the others"]
    con = connect(url)
    columns = ("metric", "model", "modality", "best_partner", "best_score", "pair_rank", "n_pairs", "model_rank", "n_models")
    got = [tuple(r[c] for c in columns) for r in query(con, sql).to_pylist()]
    assert got == [
        # cka: 0.6 (vit-large x lm-large) 1st, 0.4 2nd, 0.2 3rd, NULL 4th of 4
        ("cka", "vit-large", "vision", "lm-large", 0.6, 1, 4, 1, 2),
        ("cka", "vit-small", "vision", "lm-small", 0.2, 3, 4, 2, 2),
        ("cka", "lm-large", "language", "vit-large", 0.6, 1, 4, 1, 2),
        ("cka", "lm-small", "language", "vit-large", 0.4, 2, 4, 2, 2),
        # mutual_knn: two pairs tie at 0.5 (both 1st), 0.3 3rd, NaN last
        ("mutual_knn", "vit-large", "vision", "lm-small", 0.5, 1, 4, 1, 2),
        ("mutual_knn", "vit-small", "vision", "lm-small", 0.5, 1, 4, 1, 2),
        ("mutual_knn", "lm-small", "language", "vit-large", 0.5, 1, 4, 1, 2),  # tied partners: the first by name
        ("mutual_knn", "lm-large", "language", "vit-small", 0.3, 3, 4, 2, 2),
    ]
    one = sql.replace("ORDER BY metric, modality DESC", "QUALIFY model = 'vit-small'\nORDER BY metric, modality DESC")
    assert one != sql
    assert [tuple(r[c] for c in columns) for r in query(con, one).to_pylist()] == [g for g in got if g[1] == "vit-small"]
