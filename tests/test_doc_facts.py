"""Facts the documentation states about the code and the tests, checked against them so that a
change to one shows up as a stale page: the code each version hashes (docs/storage.md), the
case counts of docs/reliability.md, the `prh` commands and options the pages name, the files and
Python names they point to, the `PRH_*` variables the code reads, the catalog views they list and
the SQL examples of the README."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COUNTED = ("tests/tasks/data/test_bad_input_matrix.py", "tests/tasks/test_params.py")
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_SPAN = re.compile(r"`([^`]+)`")
_PRH = re.compile(r"(?:(?<![\w/.-])|(?<=\.venv/bin/))prh\s+(.*)", re.DOTALL)


def _constant(module: str, name: str) -> tuple[str, ...]:
    """The value of the tuple of strings ``name`` assigned in ``module`` (read, not imported)."""
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{name} is not assigned in {module}")


def test_storage_page_names_every_module_a_code_version_hashes() -> None:
    text = (ROOT / "docs" / "storage.md").read_text(encoding="utf-8")
    paragraph = text.split("A code version (`storage.versioning.code_version`)", 1)[1].split("\n\n", 1)[0]
    alignment = _constant("tasks/align_task.py", "ALIGNMENT_CODE")
    for group in (alignment, _constant("tasks/extract_task.py", "FEATURE_CODE"),
                  _constant("tasks/extract_task.py", "FEATURE_CODE_EXCLUDED")):
        assert [path for path in group if f"`{path}`" not in paragraph] == []
    row = next(line for line in text.splitlines() if line.startswith("| alignment |"))
    assert [path for path in alignment if path not in row and Path(path).stem not in row] == []


def test_reliability_page_counts_the_cases_pytest_collects() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *COUNTED],
                               cwd=ROOT, capture_output=True, text=True)
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    for test_file in COUNTED:
        stated = re.search(re.escape(f"`{test_file}`") + r", (\d+) cases", page)
        assert stated, f"docs/reliability.md gives no case count for {test_file}"
        assert int(stated.group(1)) == sum(line.startswith(test_file + "::") for line in ids), test_file


def _code(text: str) -> list[str]:
    """The code of a page: each line of its fenced blocks (less shell and YAML comments) and each
    inline code span of its prose."""
    lines = [re.sub(r"(^|\s)#.*", "", line) for _, block in _FENCE.findall(text) for line in block.splitlines()]
    return lines + _SPAN.findall(_FENCE.sub("", text))


def _prh_commands(text: str) -> list[list[str]]:
    """The words of every `prh ...` command in a page's code, its quoted arguments (SQL) emptied,
    up to the end of the command (a pipe, `&&`, `;`, a comment, the end of the code span)."""
    commands = []
    for code in _code(text):
        for match in _PRH.finditer(code):
            words = re.split(r"\||&&|;|#|`", re.sub(r'"[^"]*"', '""', match.group(1)))[0].split()
            if words:
                commands.append(words)
    return commands


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def test_every_prh_command_and_option_the_pages_name_exists() -> None:
    """`prh run --check`, `prh catalog export FILE [--store URL]`...: each command and each option a
    page shows in its code is one that `prh` takes (an option renamed or dropped leaves a page
    telling users to type what `prh` refuses)."""
    from flows.cli import command_parser

    top = command_parser()
    commands = _subcommands(top)
    top_options = {flag for action in top._actions for flag in action.option_strings}
    wrong, seen = [], 0
    for page in PAGES:
        for words in _prh_commands(page.read_text(encoding="utf-8")):
            seen += 1
            if words[0].startswith("--"):  # an option of prh itself: prh --version
                wrong += [] if words[0] in top_options else [f"{page.name}: prh {' '.join(words)}: no option {words[0]}"]
                continue
            parser, rest = commands.get(words[0]), words[1:]
            if parser is not None and _subcommands(parser):
                parser, rest = _subcommands(parser).get(rest[0] if rest else ""), rest[1:]
            if parser is None:
                wrong.append(f"{page.name}: prh {' '.join(words)}: no such command")
                continue
            options = {flag for action in parser._actions for flag in action.option_strings}
            wrong += [f"{page.name}: prh {' '.join(words)}: no option {flag}"
                      for flag in (word.strip("[]") for word in rest) if flag.startswith("--") and flag.split("=")[0] not in options]
    assert seen > 50 and wrong == []


def test_the_dataset_option_names_every_file_the_readers_take() -> None:
    """`prh run --help` says, for `--dataset`, every table type and every ImageFolder metadata
    table the readers take (`tasks/data/sources.py`), as README's "Your own data" does: it had
    left out TSV and `metadata.parquet`."""
    from flows.cli import command_parser
    from tasks.data.sources import _TABLE_SUFFIXES, METADATA_FILES

    run = _subcommands(command_parser())["run"]
    text = next(action.help for action in run._actions if action.dest == "dataset")
    words = {".parquet": "Parquet", ".pq": "Parquet", ".csv": "CSV", ".tsv": "TSV", ".jsonl": "JSON Lines",
             ".ndjson": "JSON Lines", ".json": ".json"}  # a suffix not here is a new reader: name it in the help
    assert sorted(suffix for suffix in _TABLE_SUFFIXES if words[suffix] not in text) == []
    assert [name for name in METADATA_FILES if "." + name.split(".", 1)[1] not in text] == []


def _section(page: str, heading: str) -> str:
    """The text of ``page`` from ``heading`` to the next heading of its level."""
    text = (ROOT / page).read_text(encoding="utf-8").split(heading, 1)[1]
    level = heading.split(" ", 1)[0]
    return re.split(rf"^{level} ", text, maxsplit=1, flags=re.MULTILINE)[0]


ALL_PAGES = (*PAGES, ROOT / "BENCHMARKS.md")
#: A path of the project as a page names it (`tasks/extract/spec.py`, `tests/flows/`), and a Python
#: name (`storage.catalog.connect`, `tasks.metrics.Engine.tie_rtol`); not `docs/storage.md`.
_PROJECT_PATH = re.compile(r"(?<![\w/.-])((?:tasks|storage|flows|bench|tests|configs)/[\w./-]*\w)")
_PYTHON_NAME = re.compile(r"(?<![\w/.-])((?:tasks|storage|flows)(?:\.\w+)+)")
#: paths that are not the project's: a folder the tests write, the user's own zoo of the examples
_NOT_IN_THE_REPOSITORY = {"tests/artifacts", "configs/my-zoo.yaml"}


def _code_variables() -> set[str]:
    """The `PRH_*` environment variables the code reads (every `"PRH_..."` literal of flows/,
    tasks/ and storage/)."""
    return {name for package in ("flows", "tasks", "storage") for path in (ROOT / package).rglob("*.py")
            for name in re.findall(r"[\"'](PRH_[A-Z0-9_]+)[\"']", path.read_text(encoding="utf-8"))}


def test_every_prh_variable_the_code_reads_is_documented() -> None:
    """Each `PRH_*` variable that flows/, tasks/ or storage/ read is named on some page (README,
    docs/*.md): a setting added in the code and in no page is one users cannot find."""
    pages = " ".join(page.read_text(encoding="utf-8") for page in PAGES)
    variables = _code_variables()
    assert len(variables) >= 20 and sorted(v for v in variables if not re.search(rf"\b{v}\b", pages)) == []


def test_the_run_start_check_names_every_variable_it_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/orchestration.md says which variables a run checks as its first step: each one that
    `check_run_environment` refuses when set to nonsense is named there (`PRH_ALIGN_MEMORY_MB`
    had been said to be checked at the first pair; `PRH_DECODE_WORKERS`, `PRH_HUB_TIMEOUT` were
    missing)."""
    from flows.runners import check_run_environment

    text = _section("docs/orchestration.md", "## Fan-out and task runners").split("`prh run` checks them", 1)[0]
    for variable in _code_variables():  # one at a time from a clean slate: not the shell's own settings
        monkeypatch.delenv(variable, raising=False)
    refused = []
    for variable in sorted(_code_variables()):
        with monkeypatch.context() as env:
            env.setenv(variable, "nonsense")
            try:
                check_run_environment()
            except ValueError as error:
                assert variable in str(error)
                refused.append(variable)
    assert len(refused) >= 6 and [v for v in refused if f"`{v}`" not in text] == []


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` (``storage.catalog.connect``) names a module of the project, or a name
    defined at the top of one (a class's attribute too), read from the source, not imported."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = next((f for f in (base / "__init__.py", base.with_suffix(".py")) if f.is_file()), None)
        if source is None:
            continue
        text = source.read_text(encoding="utf-8")
        body: list[ast.stmt] = ast.parse(text).body
        for at, name in enumerate(parts[cut:], start=cut):
            node = _defined(body, name)
            if node is None:
                return f'"{name}"' in text  # a lazily exported name (a module __getattr__'s table)
            if isinstance(node, ast.ImportFrom) and at + 1 < len(parts):  # `from .engine import Engine`: look there
                package = parts[:cut] if source.name == "__init__.py" else parts[:cut - 1]
                origin = package[:len(package) - node.level + 1] if node.level else []
                imported = next(a.name for a in node.names if (a.asname or a.name) == name)
                target = ".".join(filter(None, [*origin, node.module or "", imported, *parts[at + 1:]]))
                return target != dotted and _resolves(target)
            if not isinstance(node, ast.ClassDef):
                return True
            body = node.body
        return True
    return False


def _defined(body: list[ast.stmt], name: str) -> ast.stmt | None:
    """The statement of ``body`` that defines, assigns or imports ``name`` (inside ``if`` and
    ``try`` blocks too), or None."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return node
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name.split(".")[0]) == name for a in node.names):
            return node
        if isinstance(node, (ast.If, ast.Try)):
            found = _defined(node.body, name) or _defined(node.orelse, name)
            if found is not None:
                return found
    return None


def test_every_file_and_python_name_the_pages_point_to_exists() -> None:
    """A path (`tasks/report/build.py`, `tests/flows/test_cli.py`) or a Python name
    (`storage.verify.checked_for_reuse`, `tasks.metrics.Engine.tie_rtol`) in a page's code is one
    the project has: a module renamed or a function removed leaves readers looking for it."""
    wrong, seen = [], 0
    for page in ALL_PAGES:
        for code in _code(page.read_text(encoding="utf-8")):
            for path in _PROJECT_PATH.findall(code):
                seen += 1
                if path.rstrip("/") not in _NOT_IN_THE_REPOSITORY and not (ROOT / path.split("::")[0]).exists():
                    wrong.append(f"{page.name}: {path}")
            for name in _PYTHON_NAME.findall(code):
                seen += 1
                if not _resolves(name):
                    wrong.append(f"{page.name}: {name}")
    assert seen > 200 and wrong == []


@pytest.fixture(scope="module")
def catalog_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.storage.catalog_store import build_catalog_store

    url = str(tmp_path_factory.mktemp("doc-facts") / "store")
    build_catalog_store(url)
    return url


def _columns(con: object, views: set[str]) -> dict[str, set[str]]:
    from storage.catalog import query

    rows = query(con, "select table_name, column_name from information_schema.columns").to_pylist()
    return {view: {r["column_name"] for r in rows if r["table_name"] == view} for view in views}


def test_the_pages_list_every_catalog_view_and_name_its_columns(catalog_store: str, tmp_path: Path) -> None:
    """Where the README, docs/queries.md, docs/storage.md and `prh sql --help` list the catalog's
    views, each lists all of them (and the catalog lists nothing else); the exported file's
    views and tables are those docs/storage.md names; and a column named as `view.column`
    anywhere in the pages is one of that view's columns."""
    from flows.cli import command_parser
    from storage.catalog import connect, query
    from storage.export import export_catalog, open_catalog

    con = connect(catalog_store)
    names = {r["table_name"] for r in query(con, "select table_name from information_schema.tables").to_pylist()}
    views = names
    assert len(views) == 14, sorted(views)
    sql_help = next(a.help for a in _subcommands(command_parser())["sql"]._actions if a.dest == "query")
    lists = {
        "README.md, Querying with SQL": _section("README.md", "## Querying with SQL").split("```", 1)[0],
        "docs/queries.md, its start": (ROOT / "docs" / "queries.md").read_text(encoding="utf-8").split("```", 1)[0],
        "docs/storage.md, Reading from DuckDB": _section("docs/storage.md", "## Reading from DuckDB").split("\n\n", 1)[0],
        "prh sql --help": " ".join(f"`{word}`" for word in re.findall(r"\w+", sql_help)),
    }
    assert {where: sorted(v for v in views if f"`{v}`" not in text) for where, text in lists.items()} == dict.fromkeys(lists, [])

    export_catalog(catalog_store, tmp_path / "prh.duckdb")
    exported = open_catalog(tmp_path / "prh.duckdb")
    in_file = {r["table_name"] for r in query(exported, "select table_name from information_schema.tables").to_pylist()}
    export_section = _section("docs/storage.md", "## The catalog as a DuckDB file").split("```", 1)[0]
    assert sorted(n for n in in_file if f"`{n}`" not in export_section) == []
    assert in_file - {"prh_catalog"} == views

    columns = _columns(con, views)
    named = {(view, column) for page in PAGES
             for view, column in re.findall(r"`([a-z_]+)\.([a-z_]+)`", page.read_text(encoding="utf-8"))
             if view in views and view != "alignment" and column not in ("parquet", "json")}  # `alignment.unit`: config
    assert len(named) >= 10 and sorted((v, c) for v, c in named if c not in columns[v]) == []


def test_the_readme_queries_run(catalog_store: str) -> None:
    """The README's SQL block and every `prh sql "..."` query of the pages run on a store with
    every box (column and view names as the catalog has them)."""
    from storage.catalog import connect, query_each

    con = connect(catalog_store)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [block for language, block in _FENCE.findall(readme) if language == "sql"]
    inline = {sql for page in PAGES for code in _code(page.read_text(encoding="utf-8"))
              for sql in re.findall(r'prh sql "([^"]+)"', code) if sql != "..."}
    assert len(blocks) == 1 and len(inline) >= 4
    for sql in [*blocks, *sorted(inline)]:
        assert all(table.num_columns for table in query_each(con, sql)), sql


def _demo_table(readme: str) -> list[dict[str, str]]:
    """The rows of the README's closing table of `make run` (its `│`-separated lines), by column."""
    block = next(block for _, block in _FENCE.findall(readme) if "Best layer pair per metric" in block)
    header = next(line for line in block.splitlines() if line.startswith("┃"))
    names = [cell.strip() for cell in header.strip("┃").split("┃")]
    return [dict(zip(names, (cell.strip() for cell in line.strip("│").split("│"))))
            for line in block.splitlines() if line.startswith("│")]


def _query_output(number: int) -> list[dict[str, str]]:
    """The rows of the markdown table that docs/queries.md shows under its query ``number``."""
    section = _section("docs/queries.md", f"### {number}. ")
    lines = [line for line in section.split("Output on the demo store:", 1)[1].splitlines() if line.startswith("|")]
    names = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_the_readme_describes_the_demo_config_it_runs() -> None:
    """"What the demo measures" states the demo's sample size, k, permutations and bootstrap
    resamples, and the smallest p-value they allow: each as `configs/demo.yaml` sets it (a change
    there leaves the README describing another run)."""
    import yaml

    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    n, alignment = demo["dataset"]["n"], demo["alignment"]
    text = " ".join(_section("README.md", "## What the demo measures").split())  # lines joined
    stated = {
        "samples": f"**Data**: {n:,} OpenMoji emoji", "k": f"mutual k-NN (k = {alignment['topk']})",
        "permutations": f"{alignment['permutations']}-permutation null", "bootstrap": f"{alignment['bootstrap']}-resample bootstrap",
        "N": f"N={n})", "smallest p": f"`p = 1/{alignment['permutations'] + 1}` is the smallest p-value {alignment['permutations']} permutations",
    }
    assert {what: phrase for what, phrase in stated.items() if phrase not in text} == {}


def test_the_readme_table_and_the_query_outputs_show_one_demo_store() -> None:
    """The README's closing table and the outputs of docs/queries.md both come from the demo
    store of one `make run`: its dataset version and every mutual k-NN number they both show
    (score, chance level, null mean, calibrated score, p-value) agree, so refreshing one page
    and not the other shows up here."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = {(r["vision"], r["language"]): r for r in _demo_table(readme) if r["metric"] == "mutual_knn"}
    dataset = re.search(r"Best layer pair per metric \(dataset (\w+), N=", readme).group(1)
    assert len(table) == 8 and {r["dataset_version"] for r in _query_output(9)} == {dataset}
    chance = {(r["model_a"], r["model_b"]): r for r in _query_output(8) if r["metric"] == "mutual_knn"}
    calibrated = {(r["model_a"], r["model_b"]): r for r in _query_output(7) if r["metric"] == "mutual_knn"}
    assert set(chance) == set(table) and calibrated.keys() <= table.keys() and calibrated
    wrong = [(pair, column) for pair, row in chance.items()
             for column, theirs in (("score", "score"), ("chance", "chance")) if float(row[theirs]) != float(table[pair][column])]
    wrong += [(pair, column) for pair, row in calibrated.items()
              for column, theirs in (("score", "raw"), ("null", "null_mean"), ("calib.", "calibrated"))
              if float(row[theirs]) != float(table[pair][column])]
    wrong += [(pair, "p") for pair, row in calibrated.items() if abs(float(row["p"]) - float(table[pair]["p"])) > 5e-4]
    assert wrong == []


def test_the_chance_level_paragraph_names_every_metric_that_has_one() -> None:
    """docs/metrics.md's `chance_level` paragraph names each built-in metric for which
    `chance_level` gives a number, and says `unbiased=True` where only that estimator has one:
    `cka` and `cka_rbf_median` with `unbiased=True` give 0, which the page had filed under
    "`None` for the others"."""
    from tasks.metrics import METRICS, chance_level

    paragraph = _section("docs/metrics.md", "### Calibration, chance levels, confidence")
    text = " ".join(paragraph.split("`chance_level(metric, n, topk=...)`", 1)[1].split("\n\n", 1)[0].split())
    missing, with_level = [], 0
    for name in METRICS:
        for unbiased in ((False, True) if "unbiased" in METRICS[name].defaults else (None,)):
            if chance_level(name, n=100, **({} if unbiased is None else {"unbiased": unbiased})) is None:
                continue
            with_level += 1
            named = f"`{name}`" in text
            if unbiased and not METRICS[name].defaults["unbiased"]:  # the default estimator has none:
                # the page must say with which one ("`a` and `b` with `unbiased=True`" names both)
                named = named and f"`{name}` with `unbiased=True`" in text.replace("` and `", "` with `unbiased=True` and `")
            if not named:
                missing.append((name, unbiased))
    assert with_level >= 6 and missing == []


def test_the_readme_names_every_kind_of_table_function_prh_sql_allows() -> None:
    """README's "Querying with SQL" says which table functions a query may call: it names each
    kind the guard's allow list holds (file readers, generators, DuckDB's information functions),
    and every function it gives as an example passes the guard (it had named the readers and the
    information functions only, so `range` and `unnest`, which run, read as refused)."""
    import duckdb

    from storage.sql_guard import READ_TABLE_FUNCTIONS, checked_statements

    text = " ".join(_section("README.md", "## Querying with SQL").split())
    sentence = text.split("a table function outside", 1)[1].split(". ", 1)[0]
    kinds = {"file readers": "read_parquet", "generators": "range", "information functions": "duckdb_tables"}
    assert set(kinds.values()) <= READ_TABLE_FUNCTIONS
    assert [kind for kind in kinds if kind not in sentence] == []
    examples = re.findall(r"`(\w+)`", sentence)
    calls = {"read_parquet": "read_parquet('x.parquet')", "unnest": "unnest([1, 2])", "range": "range(3)"}
    con = duckdb.connect()
    assert examples and [name for name in examples if name not in READ_TABLE_FUNCTIONS] == []
    for name in examples:  # accepted by the check (not run: the file need not exist)
        assert checked_statements(con, f"select * from {calls.get(name, name + '()')}")
