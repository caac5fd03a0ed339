"""The ``prh`` command: ``prh run`` runs the pipeline, ``prh sql`` queries the catalog."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from flows.cli_console import BROKEN_PIPE_EXIT, print_or_exit, stand_in_for_closed_stdout
from flows.cli_console import discard_stdout as _discard_stdout
from flows.cli_console import output_failure as _output_failure
from flows.cli_locale import typed_text, utf8_mode_command
from flows.cli_signals import (STOP_SIGNALS, interrupts_noted, queries_stopped_by_ctrl_c, stop_on_sigterm,
                               stop_status)
from flows.local_paths import default_store_path, default_store_shown
from flows.omp_policy import choose_omp_wait_policy
from tasks.shown_text import for_terminal, for_terminal_lines

if TYPE_CHECKING:
    from storage.store import Store
    from tasks.params import PipelineConfig
    from tasks.params import DatasetParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: the embedded demo: package data of flows/ (in the wheel too; configs/demo.yaml of a checkout links to it)
DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"


def configure_environment() -> None:
    """Prefect with a project-local home (where ``$PREFECT_HOME`` is unset or empty:
    :func:`flows.prefect_env.prefect_home`), log lines dated in UTC and coloured only where the
    environment allows, telemetry off, a patient temporary server."""
    from flows.local_paths import default_prefect_home
    from flows.prefect_env import logging_environment, prefect_home  # light: no Prefect import

    os.environ["PREFECT_HOME"] = prefect_home(default_prefect_home())
    # before Prefect is imported (it sets its logging up then): console lines dated in UTC, and no
    # colour where NO_COLOR / FORCE_COLOR=0 ask for none (flows.prefect_env.logging_environment)
    os.environ.update(logging_environment())
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: the store without --store and $PRH_STORE: store/ of this checkout; for an installed prh (a wheel),
#: store/ of the user's data folder (flows/local_paths.py)
CHECKOUT_STORE = default_store_path()
#: how help and errors name it
CHECKOUT_STORE_SHOWN = default_store_shown()


def default_store() -> str:
    """The store used without ``--store``: ``$PRH_STORE``, else ``store/`` of this checkout
    (wherever the command runs from). A ``$PRH_STORE`` that is no store URL (empty, ``s3:/x``)
    is a ``ValueError`` naming the variable."""
    from storage.store_urls import check_store_url

    store = os.environ.get("PRH_STORE")
    if store is None:
        return CHECKOUT_STORE
    try:
        check_store_url(store)
    except ValueError as error:
        raise ValueError(f"$PRH_STORE: {error} (unset it for {CHECKOUT_STORE_SHOWN})") from None
    return store


def sql_command(store: str, shown: str) -> str:
    """``prh sql`` as the closing lines of ``prh run`` suggest it for reading ``store`` (``shown``:
    its URL as printed, credentials redacted): prh named as this process was started
    (:func:`prh_as_started`), and ``--store`` unless ``store`` is the default one
    (``default_store``), so that the query reads the store the run wrote."""
    try:
        default = store == default_store()
    except ValueError:  # a bad $PRH_STORE: the run used --store
        default = False
    name = prh_as_started()
    return f"{name} sql" if default else f"{name} sql --store {shlex.quote(shown)}"


def prh_as_started() -> str:
    """This prh as a shell command, from ``sys.argv[0]``: ``prh`` where the program started is the
    ``prh`` on PATH, or is no prh script (``prh`` found by name, another program calling
    :func:`main`); else as it was started: its path (``.venv/bin/prh`` after ``make run``, whose
    venv is not activated), a link's name where that link is on PATH (``prh-dev``), or the
    interpreter and module for ``python -m flows.cli`` (``sys.argv[0]``: this file)."""
    program = sys.argv[0] if sys.argv else ""
    if not os.path.dirname(program):
        return "prh"
    if _same_file(program, __file__):
        found = shutil.which("python")
        python = "python" if found and os.path.abspath(found) == os.path.abspath(sys.executable) else shlex.quote(sys.executable)
        return f"{python} -m flows.cli"  # the venv's own python: not the file it links to
    if os.path.basename(os.path.realpath(program)) != "prh":
        return "prh"
    name = os.path.basename(program)
    return name if _same_file(shutil.which(name), program) else shlex.quote(program)


def _same_file(a: str | None, b: str) -> bool:
    """Whether the paths ``a`` and ``b`` name one file (links followed); False where one is None or missing."""
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _default_store_shown() -> str:
    """The default store as an error message names it: ``$PRH_STORE`` as set (even when it is no
    store URL: the error is about the store given), else ``store/`` of this checkout."""
    store = os.environ.get("PRH_STORE")
    return CHECKOUT_STORE if store is None else f"$PRH_STORE={store!r}"


def store_argument(args: argparse.Namespace) -> str:
    """The store a command uses: ``--store`` as given, else :func:`default_store`. An empty
    ``--store ""`` (``--store "$UNSET"``) stays empty, so that ``Store`` refuses it as it refuses
    an empty ``$PRH_STORE``, instead of falling back to the default store."""
    store = getattr(args, "store", None)
    return default_store() if store is None else store


# Errors every command reports as one line (``prh CMD: error: ...``, exit 2): bad input.
ONE_LINE_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError)

STORE_HELP = f"store URL: a folder, file://..., s3://bucket/prefix (default: $PRH_STORE, else {CHECKOUT_STORE_SHOWN})"


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and (again := utf8_mode_command()) is not None:
        os.environ["PYTHONUTF8"] = "1"  # its children (Prefect's server) read names as it writes them
        if sys.stdout is not None and not os.environ.get("PYTHONIOENCODING"):
            os.environ["PYTHONIOENCODING"] = sys.stdout.encoding  # output still in the terminal's encoding
        os.execv(again[0], again)
    configure_environment()
    stand_in_for_closed_stdout()  # started with stdout closed (`prh ... >&-`): its output goes nowhere, as asked
    if "torch" not in sys.modules:  # read once, when torch loads
        choose_omp_wait_policy()
    args = command_parser().parse_args(argv)
    escape_what_stdout_cannot_hold(args)
    with escaped_warnings(), interrupts_noted(args.command != "run"):
        try:
            return _dispatch(args)
        except KeyboardInterrupt:  # Ctrl-C while _dispatch handled an error (DuckDB's for the query it interrupted)
            return _stopped(args)


class _EscapedStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Python's last-resort handler (warnings and errors, the message alone, to the current
    ``sys.stderr``) with every line made safe for a terminal (:func:`for_terminal_lines`)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self, logging.WARNING)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    def format(self, record: logging.LogRecord) -> str:
        return for_terminal_lines(super().format(record))


@contextlib.contextmanager
def escaped_warnings() -> Iterator[None]:
    """While a command runs, the warnings that reach no configured handler (those of ``prh sql``,
    ``report``, ``gc``, ``verify``, ``catalog export``: the catalog's, the store's) are written with
    control characters escaped: they name what a store holds (a file a manifest lists, a folder,
    a run record), and a store written by someone else could name a file with terminal escapes
    (an OSC that sets the window title or the clipboard, a screen clear), which Python's
    last-resort handler wrote raw to stderr. ``prh run``'s logs go through Prefect's handlers."""
    before = logging.lastResort
    if before is None:  # a program that runs main() silenced that fallback: it stays silent
        yield
        return
    logging.lastResort = _EscapedStderr()
    try:
        yield
    finally:
        logging.lastResort = before


class _TerminalSafeFormatter(logging.Formatter):
    """A log handler's formatter whose output (message, and traceback) has every line made safe for
    a terminal (:func:`for_terminal_lines`); the record itself is left as it is for the other handlers."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner if inner is not None else logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return for_terminal_lines(self.inner.format(record))


@contextlib.contextmanager
def escaped_console_logs() -> Iterator[None]:
    """While ``prh run``'s flow runs, the log lines its console handlers write (Prefect's console
    handler on the root logger, and any stream handler set up beside it; not the handler that sends
    them to Prefect's API) have their control characters escaped. Error messages carry text from
    outside (a path, a file name, a library's or a server's message, a user metric's), and an ESC in
    one (a screen clear, an OSC that sets the title or the clipboard) reached the terminal raw in the
    flow's and tasks' log lines and in their tracebacks; the closing lines were escaped already."""
    found = {id(handler): handler for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
             if isinstance(logger, logging.Logger) for handler in logger.handlers
             if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
             and not isinstance(handler.formatter, _TerminalSafeFormatter)}
    handlers = list(found.values())  # a handler set on several loggers is wrapped once
    before = {id(handler): handler.formatter for handler in handlers}
    for handler in handlers:
        handler.setFormatter(_TerminalSafeFormatter(handler.formatter))
    try:
        yield
    finally:
        for handler in handlers:
            handler.setFormatter(before[id(handler)])


def escape_what_stdout_cannot_hold(args: argparse.Namespace) -> None:
    """Let what ``prh`` prints for people (the closing table of ``prh run``, the lines of ``gc`` and
    ``verify``, the ``sql`` table, store paths and URLs) through an output whose encoding cannot hold
    one of its characters (``PYTHONIOENCODING=ascii``, a Latin-1 locale): that character is written as
    its backslash escape (``st\\xf6re``), as Python writes stderr. Those lines are printed once the
    work is done, and the encoding error they raised ended a completed ``prh run`` (or ``verify``,
    ``gc``, ``report``, ``catalog export``) with exit 2. ``prh sql --format csv`` stays strict: CSV
    has no escape, so a value it cannot write stops it with an error saying so
    (:func:`_unwritable_output`); JSON escapes such a character itself (``flows.sql_output``)."""
    if args.command == "sql" and args.format == "csv":
        return
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # a TextIOWrapper (not a replaced stream)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def _unwritable_output(error: UnicodeEncodeError) -> str:
    """The one line ``prh sql --format csv`` ends with when the output cannot hold a character of
    the result: which character, the output's encoding, and what to do."""
    # the first character only (the codec names the whole run of them it cannot write: a Hebrew
    # word); the stream's encoding, not the codec's ('charmap' for ISO-8859-9, a Turkish locale)
    character = error.object[error.start] if isinstance(error.object, str) and error.start < len(error.object) else "?"
    encoding = getattr(sys.stdout, "encoding", None) or error.encoding
    return (f"the output's encoding ({encoding}) cannot hold the character {character!r} of the result, and "
            "CSV has no escape for it: set PYTHONIOENCODING=utf-8 (or a UTF-8 locale), or use --format json, "
            "which writes it as a \\u escape")


def version_text() -> str:
    """``prh --version``: the installed distribution's version, then the code versions that a
    dataset, feature and alignment version made now would carry (``storage.versioning.code_version``
    of each stage's code), which a bug report or a store's manifests can be matched against:
    ``prh 0.1.0 (datasets code 5d16..., features code b42a..., alignment code 5fa5...)``."""
    from importlib.metadata import PackageNotFoundError, version

    from storage.versioning import code_version
    from tasks.align_task import ALIGNMENT_CODE
    from tasks.extract_task import FEATURE_CODE, FEATURE_CODE_EXCLUDED

    try:
        installed = version("prh")
    except PackageNotFoundError:  # run from a checkout that was never installed (python -m flows.cli)
        installed = "(not installed)"
    return (f"prh {installed} (datasets code {code_version('tasks/data')}, features code "
            f"{code_version(*FEATURE_CODE, exclude=FEATURE_CODE_EXCLUDED)}, alignment code {code_version(*ALIGNMENT_CODE)})")


class _VersionAction(argparse.Action):
    """``--version``: :func:`version_text`, computed only when asked (it reads the stages' source)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, default: Any = argparse.SUPPRESS,
                 help: str | None = None) -> None:  # noqa: A002 - argparse's own keyword
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print_or_exit(parser, version_text() + "\n")  # `prh --version | true` is 141, `> /dev/full` one line
        parser.exit()


#: The end of ``prh --help``: what its exit statuses mean (the same for every command) and the
#: environment that changes what it does without a flag.
EPILOG = """\
exit status (every command):
  0    done
  1    prh run: some models or pairs failed (the rest is published); prh verify: something was damaged
  2    bad input, or an error (a store that cannot be read or written...), named in one line;
       prh run --check: the dataset or a model is refused
  130  stopped by Ctrl-C, 143 by SIGTERM (prh run records the run CANCELLED)
  141  the reader of the output went away (prh sql ... | head)

environment:
  PRH_STORE             the store when --store is not given
  NO_COLOR, FORCE_COLOR=0
                        tables and lines without colours or bold (FORCE_COLOR=1: with them, even into a pipe)
  other PRH_* settings  the README (README.md of the checkout, or the package's description)

prh COMMAND --help lists the options of a command; they go after it (prh sql --store URL QUERY)."""


def command_parser() -> argparse.ArgumentParser:
    """``prh``'s argument parser: its commands and their flags."""
    from flows.cli_parser import CommandParser

    parser = CommandParser(prog="prh", description="Representational alignment between neural networks.", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction,
                        help="print prh's version and the code versions its results are stamped with, and exit")
    commands = parser.add_subparsers(dest="command", required=False)

    def command(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's own keyword
        """A command whose own --help starts with what it does, as prh --help lists it."""
        return commands.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")

    run = command("run", "run the full pipeline (dataset, features, alignment)")
    run.add_argument("--config", default=str(DEMO_CONFIG), help="pipeline YAML (default: the embedded demo)")
    run.add_argument("--store", default=None, help=STORE_HELP)
    run.add_argument("--dataset", default=None, help="a paired Parquet/CSV/TSV/JSON Lines table, a COCO captions or Karpathy split .json (or a JSON array of rows), a "
                     "folder of images + .txt captions or with a metadata.jsonl/.csv/.parquet table, WebDataset .tar shards (a file or a folder of them), or a Hugging Face dataset hf://datasets/ORG/NAME[@REVISION] (train split)")
    run.add_argument("--image-column", default=None, help="with --dataset: the table's image column (default: image)")
    run.add_argument("--text-column", default=None, help="with --dataset: the table's caption column (default: text)")
    run.add_argument("--captions", choices=["first", "all"], default=None,
                     help="with --dataset, several captions per image (a list column, a .txt of several lines): the first "
                     "(default, the paper's) or one row per caption")
    run.add_argument("--n", type=int, default=None, help="with --dataset: only its first N rows (default: all); without: "
                     "dataset.n of the config (the demo's sample of N pairs)")
    run.add_argument("--image-root", default=None, help="with a --dataset table: the folder its image paths are read from "
                     "(default: the table's folder)")
    run.add_argument("--split", default=None, help="with --dataset: the split read, of a hub dataset (default: train) or of a "
                     "Karpathy split file such as dataset_coco.json (train, restval, val or test; default: all images)")
    run.add_argument("--permutations", type=int, default=None, help="override alignment.permutations")
    run.add_argument("--check", action="store_true",
                     help="check the config, the dataset's path and every model of the zoo (ids, paths, revisions, modality, configs, "
                          "tokenizers; no weights loaded), print each model's verdict and exit: 0 when all pass, 2 when one "
                          "is refused; nothing runs and the store is not touched")
    run.add_argument("--unit", choices=["sample", "image"], default=None,
                     help="override alignment.unit: align one row per image-caption sample (the paper's) or per image "
                          "(its captions' vectors averaged; with --captions all)")

    sql = command("sql", "query the catalog with DuckDB SQL (read-only)")
    sql.add_argument("query", help="a SELECT query over datasets, samples, rejected_samples (the rows each dataset's load refused), models, features, alignment, alignment_best (the current "
                                          "results), runs, alignment_latest, alignment_best_latest, alignment_fdr, alignment_all, "
                                          "alignment_best_all (every version), models_current (each model's feature version that runs now use)")
    sql.add_argument("--store", default=None, help=STORE_HELP)
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table",
                     help="table: for reading (the first rows, numbers shortened; the default); csv or json: every row, "
                     "every value whole")

    from flows.report import add_report_arguments

    add_report_arguments(command("report", "write a run's HTML report and figures"), STORE_HELP)

    catalog = command("catalog", "the DuckDB catalog as a file").add_subparsers(dest="action", required=False)
    export_help = "write FILE.duckdb with the catalog's views (opens in the DuckDB CLI)"
    export = catalog.add_parser("export", help=export_help, description=export_help[:1].upper() + export_help[1:] + ".")
    export.add_argument("file", help="the DuckDB database file to write (an earlier export, or any DuckDB database, is replaced; another file is not)")
    export.add_argument("--store", default=None, help=STORE_HELP)

    gc = command("gc", "remove what no run will use: unpublished files of dead writers, abandoned extraction shards, report figures of other report code (not while a run of that code is alive) or not written for --older-than-days; with --keep-runs, old published versions")
    gc.add_argument("--store", default=None, help=STORE_HELP)
    gc.add_argument("--older-than-days", type=float, default=7.0,
                    help="shards of an unpublished version count as abandoned when the newest is this old, and cached report "
                    "figures are removed when written this long ago (default 7)")
    gc.add_argument("--keep-reports", type=int, default=None, metavar="N",
                    help="also remove the stored run reports (reports/<run_id>/) but the N newest; default: keep all "
                    "(a report is a view of published results: `prh report --run ID` builds it again)")
    gc.add_argument("--keep-runs", type=int, default=None, metavar="N",
                    help="also remove the published versions (datasets, features, alignments) that none of the N newest "
                    "runs with results uses, nor their inputs; default: keep all (see docs/storage.md, \"Retention\")")
    gc.add_argument("--keep-current", action="store_true",
                    help="with --keep-runs, also keep the versions behind the current results (the alignment_best view: a "
                    "pair or metric only an older run scored, e.g. of a model since dropped from the zoo), with their inputs")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")

    verify = command("verify", "check every published file against its manifest (size, SHA-256); "
                                 "exit 1 when something was damaged after it was published, or a version the latest run names is missing")
    verify.add_argument("--store", default=None, help=STORE_HELP)
    verify.add_argument("--quick", action="store_true", help="check presence and sizes only (no file is read)")
    verify.add_argument("--remove-damaged", action="store_true",
                        help="delete each damaged version, so that the next run computes it again")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args`` name; errors become one line on stderr and exit 2 (see :func:`main`)."""
    try:
        code = _command(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # output that cannot be written (a full disk) fails here, not in Python's exit
        return code
    except KeyboardInterrupt:  # Ctrl-C (`prh run` says what it leaves itself)
        return _stopped(args)
    except BrokenPipeError:  # the reader went away (`prh sql ... | head`): stop quietly
        _discard_stdout()
        return BROKEN_PIPE_EXIT
    except ONE_LINE_ERRORS as error:
        if STOP_SIGNALS:  # DuckDB's error for a query Ctrl-C interrupted while its rows were streamed
            return _stopped(args)
        print(f"prh {args.command}: error: {for_terminal_lines(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - only store, output and Prefect failures are turned into one line
        if STOP_SIGNALS:  # DuckDB's RuntimeError('Query interrupted') for the KeyboardInterrupt it caught
            return _stopped(args)
        message = _store_failure(error, store_argument(args)) or _output_failure(error)
        if message is None and args.command == "run":  # its temporary Prefect server's disk filled up
            from flows.prefect_env import prefect_out_of_room

            message = prefect_out_of_room(error)
        if message is None:
            raise
        print(f"prh {args.command}: error: {for_terminal_lines(message)}", file=sys.stderr)
        return 2


def _stopped(args: argparse.Namespace) -> int:
    """One line on stderr for a command a signal stopped (Ctrl-C), and its exit status (:func:`stop_status`):
    not a traceback, and not the 1 or 2 of a command that failed (a script tells a stop from a failure)."""
    what = " (its output is incomplete)" if args.command == "sql" else ""
    print(f"prh {args.command}: stopped by {signal.Signals(stop_status() - 128).name} before it finished{what}", file=sys.stderr)
    return stop_status()


def _command(args: argparse.Namespace) -> int:
    """Run the command ``args`` name and return its exit status."""
    if args.command == "run":
        return _run(args)
    if args.command == "report":
        from flows.report import run_report

        return run_report(args, existing_store(store_argument(args)).url)
    if args.command == "catalog":
        return _catalog_export(args)
    if args.command == "gc":
        return _gc(args)
    if args.command == "verify":
        return _verify(args)
    return _sql(args)


def _store_failure(error: BaseException, store: str) -> str | None:
    """One line for an object store that failed (down, unreachable, refusing), or None for any
    other error (those keep their traceback)."""
    from storage.error_chain import error_chain
    from storage.s3_options import describe_s3_failure, from_s3_client
    from storage.store_errors import StoreIOError
    from storage.store_urls import redact_url

    if isinstance(error, StoreIOError):
        return str(error)
    if any(from_s3_client(found) for found in error_chain(error)):  # the error or one of its causes
        return f"store {redact_url(store)}: {describe_s3_failure(error)}"
    return None


HF_DATASET_URL = "hf://datasets/"


def dataset_argument(value: str, **options: Any) -> DatasetParams:
    """``--dataset``: ``hf://datasets/ORG/NAME[@REVISION]`` (the Hugging Face convention) is a hub
    dataset (its train split unless ``split`` is given); a revision with slashes is URL-encoded as in that convention
    (``@refs%2Fconvert%2Fparquet``: the hub's Parquet conversion); anything else a local table or folder. ``options``: dataset fields
    (``image_column``, ``text_column``, ``captions``, ``n``, ``image_root``, ``split``) where given (None: the
    default; all rows). Errors name the flags (``--image-root``), as a user typed them."""
    from pydantic import ValidationError

    from tasks.params import DatasetParams, field_problems

    given = {name: value for name, value in options.items() if value is not None}
    try:
        if value.startswith(HF_DATASET_URL):
            repo, _, revision = value[len(HF_DATASET_URL):].strip("/").partition("@")
            if not repo or "/" in revision:
                raise ValueError(f"--dataset {value!r}: expected {HF_DATASET_URL}ORG/NAME[@REVISION] (a revision with "
                                 "slashes URL-encoded: @refs%2Fconvert%2Fparquet)")
            hub_id_problem = _hub_id_problem(repo)
            if hub_id_problem:  # '../../x' was read as the local folder ../../x (kind huggingface reads folders too)
                raise ValueError(f"--dataset {value!r}: {repo!r} is not a Hugging Face dataset id: expected "
                                 f"{HF_DATASET_URL}ORG/NAME[@REVISION] ({hub_id_problem})")
            from urllib.parse import unquote

            return DatasetParams(kind="huggingface", path=repo, revision=unquote(revision) or None, **given)
        if not value.strip():
            raise ValueError("--dataset is empty: give a table, a folder or hf://datasets/ORG/NAME")
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):  # a URL, not a file here: refused by DatasetParams
            return DatasetParams(kind="path", path=value, **given)
        return DatasetParams(kind="path", path=str(Path(value).expanduser().resolve()), **given)
    except ValidationError as error:
        problems = []
        for problem in field_problems(error):
            field, rest = problem.split(":", 1)
            problems.append(("--" + field.replace("_", "-") if field in options else field) + ":" + rest)
        raise ValueError(f"--dataset {value!r}: " + "; ".join(problems)) from None


def _hub_id_problem(repo: str) -> str:
    """Why ``repo`` is not a hub repository id (``huggingface_hub``'s own rules), or ``''``."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        return str(error).splitlines()[0].rstrip(".")
    return ""


def _run(args: argparse.Namespace) -> int:
    config = config_with_flags(args)
    store = store_argument(args)
    from flows.run_store import run_store

    if args.check:
        run_store(store)  # its URL checked (an empty --store "" or $PRH_STORE, memory://, is refused), nothing read or written
        return _check_zoo(config)

    from flows.prefect_env import home_warning_held

    with home_warning_held():  # Prefect's 2-line warning of a home it cannot create (first import): prh's own line says it
        from flows.quiet_errors import tracebacks_kept
        from flows.runners import check_run_environment

        check_run_environment()  # PRH_TASK_RUNNER, PRH_DASK_WORKERS, PRH_MODEL_LOAD_TIMEOUT: before any server starts
        tracebacks_kept()  # a PRH_TRACEBACKS neither yes nor no fails here, before any server starts
        _check_prefect()  # PREFECT_API_URL answers, or PREFECT_HOME takes the temporary server's database
    target = run_store(store)  # memory:// too: the results would be gone with this process
    target.check_writable()  # a store that cannot take writes fails here, before any server starts
    _check_demo_pairs(config, target)  # an OpenMoji n beyond the emoji the font draws: before any server starts

    from flows.pipeline import ZooFailures, prh_pipeline
    from flows.quiet_errors import quiet_known_errors
    from flows.server_watchdog import guard_temporary_server
    from storage.runs import probe_made

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        guard_temporary_server()  # a `kill -9` of this process no longer leaves Prefect's temporary server running
        with quiet_known_errors((*ONE_LINE_ERRORS, ZooFailures)), probe_made(target), escaped_console_logs():
            # errors prh raised are stated below in one line; the flow skips the store probe made above
            summary = prh_pipeline(config=config, store=store)
    except ZooFailures as error:  # the rest is published: its closing table, then what failed, exit 1
        sql = sql_command(store, target.display_url)
        if error.summary is not None and error.summary.get("best"):
            print_summary(error.summary, sql=sql, rejected=rejected_line(target, error.summary.get("dataset_version"), sql))
        where = {"features": f"\nTheir features are in the store: {sql} \"select * from models\"", "nothing": ""}.get(
            error.published or "", f"\nThe results of the other models are in the store: {sql} \"select * from alignment_best_latest\"")
        print(f"prh run: {for_terminal_lines(error)}{where}{metric_failure_hint(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prh run: stopped; what was published stays in the store (the run is recorded CANCELLED)", file=sys.stderr)
        return stop_status()  # 130 for Ctrl-C, 143 for SIGTERM: what a shell reports for a process either ends
    finally:
        signal.signal(signal.SIGTERM, previous)
    sql = sql_command(store, target.display_url)
    print_summary(summary, sql=sql, rejected=rejected_line(target, summary.get("dataset_version"), sql))
    return 0


#: What ``prh run`` adds when a metric's function failed a model pair (``metric_failure_hint``).
METRIC_FAILURE_HINT = ("\nA metric that fails a model pair fails all of it: none of the pair's metrics, built-ins included, is "
                       "stored for it by this run. Where your metric is undefined, return NaN (that layer pair is left out of "
                       "the best score and the calibration; a ValueError is taken as undefined only on bootstrap subsamples), "
                       "or leave the metric out of alignment.metrics (docs/metrics.md, 'Your own metrics in the pipeline')")


def metric_failure_hint(message: str) -> str:
    """``METRIC_FAILURE_HINT`` when ``message`` (a ``ZooFailures``'s) holds a ``MetricFunctionError``
    (a user metric's function raised, or returned no number, on a pair), else ``''``: the failure
    itself names the metric, the layer pair and the line, not that the pair's other metrics
    were computed and then lost with it, nor how a function says "undefined here"."""
    return METRIC_FAILURE_HINT if "MetricFunctionError" in message else ""


def _check_demo_pairs(config: PipelineConfig, store: Store) -> None:
    """ValueError with `prh run --check`'s refusal (``flows.pipeline.dataset_check``) when the demo's
    OpenMoji ``n`` is more than the emoji the font draws at its ``image_size``: plain `prh run` had
    found it only in its dataset task, after Prefect's server started and the run was recorded.
    Counting draws every emoji (about 2.5 s at 224 px on 2 busy cores), so it is skipped where ``n``
    is at most the demo's default ``OPENMOJI_N`` (drawable at every ``image_size`` the config takes,
    16 to 2048 px: ``tests/tasks/data/test_openmoji.py``; the demo's first run had counted them) and
    where the store already holds the pairs of this recipe (every rerun: one small read), which the
    run reuses without drawing."""
    from flows.pipeline import check_demo_sample, demo_sample_counted

    if not demo_sample_counted(config.dataset):
        return  # check_demo_sample would not count either: no store read for it
    from tasks.dataset_task import stored_demo

    if stored_demo(config.dataset, store) is None:
        check_demo_sample(config.dataset)


def _check_prefect() -> None:
    """:func:`flows.prefect_env.check_prefect_environment` with the free space a run wants
    (``PRH_MIN_FREE_MB``, default 256 MiB, as for a local store)."""
    from flows.prefect_env import check_prefect_environment
    from storage.env_numbers import env_number
    from storage.store import DEFAULT_MIN_FREE_MB

    check_prefect_environment(env_number("PRH_MIN_FREE_MB", DEFAULT_MIN_FREE_MB, what="a number of MiB, 0 or more"))


def _check_zoo(config: PipelineConfig) -> int:
    """``prh run --check``: the dataset's verdict (``flows.pipeline.dataset_check``; 2 when it is
    refused: the run would stop there), each model's (``flows.pipeline.model_checks``) on a line,
    then a summary; 2 when a model is refused (what ``prh run`` would record as a failure while
    extracting the others), else 0. A model that could not be checked ahead is named, not refused."""
    from flows.pipeline import dataset_check, model_checks

    outcome, message = dataset_check(config.dataset)
    print(f"{outcome:<9} dataset{': ' + for_terminal(message) if message else ''}")
    if outcome == "refused":
        print("prh run --check: the dataset is refused; `prh run` would stop there, before extracting anything",
              file=sys.stderr)
        return 2
    refused = 0
    for name, outcome, message in model_checks(config.models):
        if outcome == "ok":
            print(f"ok        {for_terminal(name)}")
        elif outcome == "refused":
            refused += 1
            print(f"refused   {for_terminal(name)}: {for_terminal(message)}")
        else:
            print(f"unchecked {for_terminal(name)}: {for_terminal(message)} (its extraction will tell)")
    n = len(config.models)
    if refused:
        print(f"prh run --check: {refused} of {n} model(s) refused; `prh run` would record each as a failure, extract "
              "the others and end FAILED (unless the store already holds its features: those are reused unchecked)",
              file=sys.stderr)
        return 2
    print(f"config and {n} model(s) checked: nothing refused")
    return 0


def config_with_flags(args: argparse.Namespace) -> PipelineConfig:
    """``--config`` with the flags of ``prh run`` applied (``--dataset`` and its options,
    ``--permutations``, ``--unit``), validated as a whole like a config file, so that a flag
    cannot set what the file may not (``--permutations -1``): ``ConfigError`` naming the file, the
    flags and the field."""
    from tasks.params import load_config, validate_config

    config = load_config(args.config)
    image_root = args.image_root
    if image_root is not None:  # an empty --image-root is refused (DatasetParams), not taken as "not given"
        image_root = str(Path(image_root).expanduser().resolve()) if image_root.strip() else ""
    options = {"image_column": typed_text(args.image_column), "text_column": typed_text(args.text_column), "captions": args.captions, "n": args.n,
               "image_root": image_root, "split": args.split}
    data, flags = config.model_dump(), []
    if args.dataset is not None:
        data["dataset"] = dataset_argument(args.dataset, **options).model_dump()
        typed = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in options if getattr(args, name) is not None]
        flags.append(" ".join([f"--dataset {args.dataset}", *typed]))  # as typed: an error names the flag (--n 5)
    elif any(v is not None for k, v in options.items() if k != "n"):
        raise ValueError("--image-column, --text-column, --captions, --image-root and --split apply to --dataset")
    elif args.n is not None:  # the config's own dataset (the embedded demo: its sample of n pairs)
        data["dataset"]["n"] = args.n
        flags.append(f"--n {args.n}")
    for field in ("permutations", "unit"):
        if getattr(args, field) is not None:
            data["alignment"][field] = getattr(args, field)
            flags.append(f"--{field} {getattr(args, field)}")
    return validate_config(data, f"config {args.config} with {' '.join(flags)}") if flags else config


def rejected_line(store: Store, dataset_version: str | None, sql: str = "prh sql") -> str | None:
    """The closing line of ``prh run`` about its dataset's rejected rows (the version
    ``dataset_version`` in ``store``): how many, per reason (read from ``rejected.parquet`` beside
    its samples), and the query that lists them (``sql``: :func:`sql_command`; the catalog view
    ``rejected_samples``); None when it rejected none, or when the store cannot
    say (a line only: the run is done). Read from the stored version, so a rerun that reuses the
    dataset says it too: the rows were rejected when it was published (a warning said so then,
    near the top of that run's log, and the table's N is what is left)."""
    from collections import Counter

    from flows.pipeline import rejected_rows_query
    from storage import layout

    if not dataset_version:
        return None
    key = layout.dataset_key(dataset_version)
    try:
        catalog = (store.manifest(key) or {}).get("catalog") or {}
    except Exception:  # noqa: BLE001 - a closing line only
        return None
    n_rejected = catalog.get("n_rejected")
    if not isinstance(n_rejected, int) or n_rejected <= 0:
        return None
    try:
        reasons = Counter(store.read_table(f"{key}/{layout.REJECTED_FILE}", columns=["reason"]).column("reason").to_pylist())
        per_reason = " (" + ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items())) + ")"
    except Exception:  # noqa: BLE001 - the count alone
        per_reason = ""
    rows = "row" if n_rejected == 1 else "rows"
    return (f"dataset {catalog.get('name')}: {n_rejected} {rows} rejected when it was loaded{per_reason}, not among its "
            f"{catalog.get('n_samples')} samples; list them: {sql} \"{rejected_rows_query(dataset_version)}\"")


def print_summary(summary: dict[str, Any], sql: str = "prh sql", rejected: str | None = None) -> None:
    """The closing table: best layer pair per metric for every model pair, with chance levels.

    ``chance`` is the analytical chance level where one exists (mutual k-NN: k/(N-1));
    ``95% CI`` a bootstrap interval of the best score (when requested; ``*``: degenerate, see
    ``metrics.bootstrap_ci``);
    ``null`` is the mean of the permutation null of the max over layer pairs (what unrelated
    data scores after the same max), ``calib.`` the calibrated score, ``p`` its p-value and
    ``q`` the Benjamini–Hochberg q-value among the run's pairs of that metric (``tasks.grid_fdr``).
    The first two columns are headed ``vision`` / ``language`` when every pair is one of each
    (``pairs: cross_modal``), else ``model A`` / ``model B``. The closing hint starts with ``sql``
    (``sql_command``: prh as started, ``--store`` unless the default store). ``rejected``: the
    line about the dataset's rejected rows (:func:`rejected_line`), printed after the counts.
    """
    from rich.console import Console
    from rich.table import Table

    from flows.cli_console import output_console
    from tasks.report.tables import DEGENERATE_WHY, best_first, higher_is_better, rows_aligned

    console = output_console(width=160, markup=False)  # a store path 'runs [v1]' or a name is text, not the table library's markup
    features = f"features extracted: {', '.join(summary['extracted']) or 'none'}; reused: {', '.join(summary['reused']) or 'none'}"
    if not summary["best"]:  # a one-model zoo: alignment_best_latest is still an earlier run's
        console.print(features)
        if rejected:
            console.print(for_terminal(rejected), soft_wrap=True)
        console.print(f"features stored in {summary['store']} (run {summary['run_id']}); no model pairs were aligned", soft_wrap=True)
        console.print(f'query them: {sql} "select * from models_current"', soft_wrap=True)  # pasted: never cut
        return
    table = Table(title=f"Best layer pair per metric (dataset {summary['dataset_version']}, N={rows_aligned(summary['best'])})")
    cross_modal = all((r.get("modality_a"), r.get("modality_b")) == ("vision", "language") for r in summary["best"])
    sides = ("vision", "language") if cross_modal else ("model A", "model B")  # pairs: all mixes modalities
    for column in (*sides, "metric", "score", "95% CI", "layer A", "layer B", "chance", "null", "calib.", "p", "q"):
        table.add_column(column, justify="left" if column in (*sides, "metric", "layer A", "layer B") else "right", no_wrap=True)
    keys = {metric: best_first(higher_is_better(metric)) for metric in {r["metric"] for r in summary["best"]}}
    rows = sorted(summary["best"], key=lambda r: (r["metric"], r["model_b"], *keys[r["metric"]](r)))  # most aligned first
    for index, row in enumerate(rows):
        chance, null = row.get("chance_level"), row.get("null_mean")
        table.add_row(
            row["model_a"], row["model_b"], row["metric"], "-" if row["score"] is None else f"{row['score']:.4f}",
            "-" if row.get("ci_low") is None else interval_text(row["ci_low"], row["ci_high"]) + ("*" if row.get("ci_degenerate") else ""),
            row.get("layer_name_a") or "-", row.get("layer_name_b") or "-",
            "-" if chance is None else f"{chance:.4f}",
            "-" if null is None else f"{null:.4f}",
            "-" if row.get("calibrated_score") is None else f"{row['calibrated_score']:.3f}",
            "-" if row.get("p_value") is None else f"{row['p_value']:.3g}",
            "-" if row.get("q_value") is None else f"{row['q_value']:.3g}",
            end_section=index + 1 < len(rows) and rows[index + 1]["metric"] != row["metric"],
        )
    # as wide as its cells need: past the console's width the table library shrank every column,
    # and hub-length model and layer names left the scores as '…'
    needed = Console(width=100_000, markup=False).measure(table).maximum
    output_console(width=max(console.width, needed), markup=False).print(table)
    if any(row.get("ci_degenerate") for row in rows):
        console.print(f"* degenerate interval: {DEGENERATE_WHY}; it brackets the score but does not measure its spread "
                      "(ci_degenerate, docs/metrics.md)")
    for line in summary_notes(rows, (summary.get("config") or {}).get("alignment")):
        console.print(line)
    console.print(features)
    pairs = pairs_line(summary)
    if pairs:
        console.print(pairs)
    if rejected:  # the table's N is what they left: said at the end, not only in a warning near the log's top
        console.print(for_terminal(rejected), soft_wrap=True)  # holds the store's path: never cut
    # the store's URL and the command are copied from these lines: never cut by a line break
    console.print(f"results stored in {summary['store']} (run {summary['run_id']})", soft_wrap=True)
    console.print(f'query them: {sql} "select * from alignment_best_latest"  (the latest run\'s results; '
                  'alignment_best: the current result of every pair scored so far)', soft_wrap=True)


#: What the closing table's columns after the layers mean (``print_summary``).
SUMMARY_LEGEND = ("chance: analytical chance level (mutual k-NN: k/(N-1); - where none is known); null: mean score of the "
                  "permutation null; calib.: the score above the null's 95% threshold, scaled to [0, 1]; p: permutation p-value; "
                  "q: Benjamini-Hochberg q-value over the run's pairs of the metric (docs/metrics.md)")


def interval_text(low: float, high: float) -> str:
    """The closing table's ``95% CI`` cell: ``0.158-0.187``, or ``-0.670 to -0.607`` where a bound
    is negative (a hyphen between two signed numbers read as "-0.670--0.607")."""
    return f"{low:.3f}{' to ' if min(low, high) < 0 else '-'}{high:.3f}"


def metric_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Lines naming the metrics of the table's best ``rows`` whose numbers read otherwise than the
    legend says (a user's own, ``tasks.metric_facts``): those where lower is better (the smallest
    score is the best pair, listed first, and the calibrated score counts down from the null's
    threshold), and those with no bound on the better side at the parameters of a row (its
    ``params``: bounds may depend on them, and calibration used those), whose calibrated score is
    in the metric's own units."""
    from tasks.metric_facts import metric_facts

    facts = [(row["metric"], metric_facts(row["metric"], row.get("params"))) for row in rows]  # a row's JSON or mapping
    lower = sorted({m for m, f in facts if f is not None and not f.higher_is_better})
    unscaled = sorted({m for m, f in facts if f is not None and not f.scaled})
    notes = []
    if lower:
        notes.append(f"{', '.join(lower)}: lower is better (higher_is_better=False): the smallest score is the best layer pair, "
                     "listed first, and calib. counts how far it lies below tau, the null's 5% quantile")
    if unscaled:
        notes.append(f"{', '.join(unscaled)}: no bound on the better side: calib. is how far the score lies past tau, the null's threshold, "
                     "in the metric's own units, not scaled to [0, 1]")
    return notes


def summary_notes(rows: list[dict[str, Any]], alignment: dict[str, Any] | None = None) -> list[str]:
    """The lines under the closing table: what its columns mean, and why a column is empty in
    every row (a run without ``alignment.permutations`` or ``alignment.bootstrap``, both 0 unless
    set, showed only dashes there, with nothing saying why). ``alignment``: the run's config
    section, when known: a column empty although it sets them (rows without a score) gets no hint."""
    notes = [SUMMARY_LEGEND, *metric_notes(rows)]
    alignment = alignment or {}
    if not alignment.get("permutations") and not any(row.get("p_value") is not None for row in rows):
        notes.append("null, calib., p and q are empty: this run drew no permutation null (alignment.permutations: 0 unless "
                     "set; configs/demo.yaml sets 50; prh run --permutations N)")
    if not alignment.get("bootstrap") and not any(row.get("ci_low") is not None for row in rows):
        notes.append("95% CI is empty: this run drew no bootstrap resamples (alignment.bootstrap: 0 unless set; "
                     "configs/demo.yaml sets 200)")
    return notes


def pairs_line(summary: dict[str, Any]) -> str | None:
    """``model pairs: A aligned in this run, S already stored`` (with the metric results it computed
    and copied), from the run record; None for a summary without those counts."""
    versions, aligned = summary.get("alignment_versions"), summary.get("aligned")
    if versions is None or aligned is None:
        return None
    line = f"model pairs: {aligned} aligned in this run, {len(versions) - aligned} already stored"
    computed, copied = summary.get("metrics_computed"), summary.get("metrics_copied")
    if computed is not None and copied is not None:
        line += f" (metric results: {computed} computed, {copied} copied from stored versions of the pair)"
    return line


def existing_store(url: str) -> Store:
    """The store at ``url`` for a command that only reads it (``sql``, ``report``, ``catalog
    export``, ``gc``, ``verify``); raises ValueError when nothing is there, or when what is there
    is no prh store (``storage.store.check_is_store``), so that a mistyped ``--store`` is not
    answered with an empty catalog (or a new empty folder)."""
    from storage.store import Store, check_is_store

    store = Store(url)
    check_is_store(store, f"check --store; the default is {_default_store_shown()}")
    return store


def _sql(args: argparse.Namespace) -> int:
    from storage.catalog import connect

    con = connect(existing_store(store_argument(args)), lossless_arrow=True)
    with queries_stopped_by_ctrl_c(con):
        return _sql_on(con, args)


def _sql_on(con: Any, args: argparse.Namespace) -> int:
    """``prh sql`` on the catalog connection ``con``."""
    from flows.sql_output import MAX_TABLE_ROWS, print_table, write_csv_stream, write_json_stream
    from storage.catalog import query_batches, query_each_head
    from storage.sql_guard import check_query

    query = check_query(con, typed_text(args.query))  # checked once: what runs below is this
    statements = len(query.statements)
    if args.format != "table" and statements > 1:
        raise ValueError(f"--format {args.format} writes one result, but the query has {statements} statements: "
                         "run them one at a time (or without --format, which prints each)")
    if args.format != "table":
        schema, batches = query_batches(con, query)  # written as computed: memory about one batch
        try:
            (write_json_stream if args.format == "json" else write_csv_stream)(schema, batches, sys.stdout)
        except UnicodeEncodeError as error:  # CSV only: the rest of prh's output escapes what it cannot hold
            raise ValueError(_unwritable_output(error)) from None
        return 0
    # each shown before the next runs; only the rows shown are kept (the rest counted)
    for number, (table, total) in enumerate(query_each_head(con, query, MAX_TABLE_ROWS), 1):
        if statements > 1:
            print(f"{'' if number == 1 else chr(10)}-- statement {number} of {statements}")
        print_table(table, total_rows=total)
        sys.stdout.flush()
    return 0


def _gc(args: argparse.Namespace) -> int:
    """Removes versions without a manifest whose writer died (``Store.sweep_abandoned``), shard
    folders no extraction will resume (``storage.shards``), report figures cached by other
    versions of the drawing code (but those of the code an alive run draws with) or written more
    than ``--older-than-days`` ago (``storage.figure_cache``), temporary files under ``reports/`` and ``runs/`` that a killed
    writer left (``storage.temporaries.dead_temporaries``), the signs of life of runs killed just
    after writing their end (``storage.runs.signs_of_ended_runs``), with ``--keep-reports`` the older
    run reports (``storage.report_retention``), with ``--keep-runs`` the published versions that
    none of the newest runs with results uses (``storage.run_retention``; published data is
    never touched otherwise), the write probes killed writers left at the store's top
    (``storage.temporaries.dead_probes``) and, on S3, old incomplete uploads. Every item is printed with its
    size, the last line sums them by kind: the bytes removed (with ``--dry-run``, that would
    be), each measured before its removal."""
    import math

    from storage import layout
    from storage.figure_cache import remove_old_figures, remove_stale_namespaces
    from storage.report_retention import REPORTS, remove_stale_reports
    from storage.runs import CLOCK_SKEW_SECONDS, live_runs_since, mark_crashed_runs, open_for_gc, signs_of_ended_runs
    from storage.shards import remove_stale_partials
    from storage.store_errors import DamagedManifest
    from storage.temporaries import dead_probes, dead_temporaries

    if not (math.isfinite(args.older_than_days) and args.older_than_days >= 0):
        raise ValueError(f"--older-than-days must be a number >= 0, got {args.older_than_days}")
    if args.keep_reports is not None and args.keep_reports < 0:
        raise ValueError(f"--keep-reports must be 0 or more, got {args.keep_reports}")
    if args.keep_runs is not None and args.keep_runs < 1:
        raise ValueError(f"--keep-runs must be 1 or more (0 would remove every published version), got {args.keep_runs}")
    if args.keep_current and args.keep_runs is None:
        raise ValueError("--keep-current goes with --keep-runs N (without it no published version is removed)")
    store = existing_store(store_argument(args))
    gc_started = time.time()  # what a run starting during gc uploads is never aborted
    swept_bytes: dict[str, int] = {}
    # as a run starts: dead runs, dead writers (a dry run only lists them)
    crashed, swept = (mark_crashed_runs(store, dry_run=True), store.sweep_abandoned(dry_run=True, sizes=swept_bytes)) \
        if args.dry_run else open_for_gc(store, swept_sizes=swept_bytes)  # a full disk is when gc is needed
    attempts = {key: size for key, size in store.remove_dead_claim_attempts(dry_run=args.dry_run).items()
                if key.rsplit("/", 1)[0] not in swept}  # a dry run counts a swept version's with its files
    probes = dead_probes(store, dry_run=args.dry_run)  # a killed writer's write probe at the store's top
    now = time.time()
    live_since = live_runs_since(store)  # shards a live run may be writing are kept, whatever their age (less the skew)
    damaged: list[DamagedManifest] = []  # versions whose shards stay: their manifest is damaged (prh verify's business)
    partials = remove_stale_partials(store, args.older_than_days * 86400.0, dry_run=args.dry_run, live_since=live_since,
                                     damaged=damaged)
    figure_bytes: dict[str, int] = {}
    held_figures: dict[str, str] = {}  # another report code's, which an alive run draws with
    figures = remove_stale_namespaces(store, dry_run=args.dry_run, sizes=figure_bytes, held=held_figures)
    report_bytes: dict[str, int] = {}
    reports = [] if args.keep_reports is None else \
        remove_stale_reports(store, args.keep_reports, dry_run=args.dry_run, sizes=report_bytes)
    # a killed writer's temporary page or figure (a dry run counts one in a folder listed above with it)
    temporaries = {key: size for key, size in dead_temporaries(store, REPORTS, dry_run=args.dry_run).items()
                   if not any(key.startswith(f"{tree}/") for tree in (*figures, *reports))}
    # a killed writer's temporary run record or sign of life
    run_temporaries = dead_temporaries(store, layout.RUNS, dry_run=args.dry_run)
    ended_signs = signs_of_ended_runs(store, dry_run=args.dry_run)  # a run killed just after writing its end
    old_figures = {key: size for key, size in
                   remove_old_figures(store, args.older_than_days * 86400.0, dry_run=args.dry_run).items()
                   if key not in temporaries}
    uploads = store.abandoned_uploads(args.older_than_days * 86400.0, dry_run=args.dry_run,  # not a live run's
                                      keep_since=min(gc_started - CLOCK_SKEW_SECONDS,
                                                     gc_started if live_since is None else live_since))
    verb = "would remove" if args.dry_run else "removed"
    version_bytes: dict[str, int] = {}
    retained = [] if args.keep_runs is None else _keep_runs(store, args.keep_runs, args.keep_current, args.dry_run, verb,
                                                            version_bytes)
    versions = [key for key in retained if not key.startswith(RENDERED)]
    pointers = [key for key in retained if key.startswith(RENDERED)]
    for upload in uploads:
        _say(f"{'would abort' if args.dry_run else 'aborted'} the incomplete upload of {upload['key']} "
              f"({_megabytes(upload['bytes'])} of parts, started {(now - upload['started']) / 86400.0:.1f} days ago; "
              "a writer killed mid-upload)")
    for entry in partials:
        why = ("its version is published" if entry["reason"] == "published"
               else f"unpublished, newest shard {(now - entry['newest']) / 86400.0:.1f} days old")
        others = entry.get("other_files", 0)
        files = _count(entry["shards"], "shard") + (f" and {_count(others, 'other file')}" if others else "")
        _say(f"{verb} {entry['version']}/_partial: {files}, {_megabytes(entry['bytes'])} ({why})")
    for error in damaged:
        _say(f"left {error.version_key}/_partial in place: {error} "
              "(`prh verify --remove-damaged` removes the version with its shards)")
    for key in figures:
        _say(f"{verb} {key}: report figures drawn by another version of the report code, {_megabytes(figure_bytes[key])}")
    for key, why in held_figures.items():
        _say(f"kept {key}: report figures of another version of the report code ({why})")
    if old_figures:
        _say(f"{verb} {len(old_figures)} cached report figure(s) written more than {args.older_than_days:g} days ago, "
              f"{_megabytes(sum(old_figures.values()))} (a report that shows one draws it again)")
    for key in reports:
        _say(f"{verb} {key}: a run report older than the {args.keep_reports} kept, {_megabytes(report_bytes[key])} "
              "(`prh report --run ID` builds it again)")
    for run_id in crashed:
        _say(f"{'would mark' if args.dry_run else 'marked'} run {run_id} CRASHED (its process is gone, or it gave no sign of life for 15 minutes)")
    for version in swept:
        _say(f"{verb} the unpublished files of {version} (its writer died), {_megabytes(swept_bytes.get(version, 0))}")
    for key, size in attempts.items():
        what = ("a manifest's temporary file (its writer was killed publishing)" if key.rsplit("/", 1)[-1].startswith(".manifest")
                else "a claim attempt's temporary file (its writer was killed taking the claim)")
        _say(f"{verb} {key}: {what}, {size:,} bytes")
    for key, size in temporaries.items():
        _say(f"{verb} {key}: a temporary file of a report or cached figure (its writer was killed writing it), {size:,} bytes")
    for key, size in run_temporaries.items():
        _say(f"{verb} {key}: a temporary file of a run record or sign of life (its writer was killed writing it), {size:,} bytes")
    for key, (status, size) in ended_signs.items():
        _say(f"{verb} {key}: the sign of life of a run that ended {status} (it was killed before removing it), {size:,} bytes")
    for key, size in probes.items():
        what = "a write probe" if key.startswith(".probe-") else "a write probe's temporary file"
        _say(f"{verb} {key}: {what} (its writer was killed checking the store), {size:,} bytes")
    parts = [(len(partials), "shard folder(s)", sum(entry["bytes"] for entry in partials)),
             (len(figures), "figure cache namespace(s) of older report code", sum(figure_bytes.values())),
             (len(old_figures), "cached report figure(s) older than --older-than-days", sum(old_figures.values())),
             (len(reports), "run report(s)", sum(report_bytes.values())),
             (len(swept), "unpublished version(s) of dead writers", sum(swept_bytes.get(v, 0) for v in swept)),
             (len(attempts), "claim attempt or manifest temporary file(s) of dead writers", sum(attempts.values())),
             (len(temporaries), "report temporary file(s) of dead writers", sum(temporaries.values())),
             (len(run_temporaries), "run temporary file(s) of dead writers", sum(run_temporaries.values())),
             (len(ended_signs), "sign(s) of life of ended runs", sum(size for _, size in ended_signs.values())),
             (len(probes), "write probe(s) of dead writers", sum(probes.values())),
             (len(uploads), "incomplete upload(s)", sum(upload["bytes"] for upload in uploads)),
             (len(versions), "published version(s) no kept run uses", sum(version_bytes[k] for k in versions)),
             (len(pointers), "rendered-dataset pointer(s) to removed datasets", sum(version_bytes[k] for k in pointers))]
    freed = sum(size for _, _, size in parts)
    listed = "; ".join(f"{count} {what} {size:,} bytes" for count, what, size in parts if count)
    _say(f"{store.display_url}: {_megabytes(freed)} ({freed:,} bytes) {'would be ' if args.dry_run else ''}freed"
          + (f": {listed}" if listed else ", nothing to remove"))
    return 0


#: Where the demo's rendered-dataset pointers live (``storage.layout.rendered_dataset_key``).
RENDERED = "datasets/rendered/"


def _keep_runs(store: Store, keep: int, keep_current: bool, dry_run: bool, verb: str, sizes: dict[str, int]) -> list[str]:
    """``--keep-runs`` (and ``--keep-current``): remove (``dry_run``: list) the published versions
    and rendered-dataset pointers that ``storage.run_retention`` does not keep, printing each with
    its size as it goes, then how many of them held current results; returns their keys
    (``sizes``: key -> bytes)."""
    from storage.run_retention import apply_retention, plan_retention
    from storage.runs import CLOCK_SKEW_SECONDS

    plan = plan_retention(store, keep, keep_current=keep_current)
    if not plan.blocked:
        since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(plan.since or 0.0))
        current = " and the current results (alignment_best)" if keep_current else ""
        _say(f"--keep-runs {keep}: keeping {len(plan.keep)} published version(s): those of run(s) {', '.join(plan.kept_runs)}"
              f"{current}, their inputs and every version published since {since} ({CLOCK_SKEW_SECONDS / 60:g} minutes before "
              "the oldest kept run started: a margin for clock skew between hosts)")

    def show(key: str) -> None:
        if key in plan.pointers:
            _say(f"{verb} {key}: the demo's pointer to {plan.pointers[key]}, removed above, {_megabytes(sizes[key])}")
        else:
            _say(f"{verb} {key}: a published version that none of the {keep} newest run(s) with results uses, "
                  f"{_megabytes(sizes[key])}")

    removed = apply_retention(store, plan, dry_run=dry_run, sizes=sizes, on_removed=show)
    if plan.blocked:
        _say(f"--keep-runs {keep}: {'no more ' if removed else 'no '}published versions removed: {plan.blocked}")
    held = sorted(set(removed) & (plan.current or set()))
    if held:
        _say(f"--keep-runs {keep}: {len(held)} of the {'listed' if dry_run else 'removed'} alignment version(s) held current "
              "results (rows of alignment_best: pairs or metrics that only older runs scored); --keep-current keeps them")
    return removed


def _megabytes(size: int) -> str:
    """``size`` bytes in MB with one decimal (``0.0 MB`` up to 49,999 bytes)."""
    return f"{size / 1e6:.1f} MB"


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when every published version matches its manifest, 1 when one does not (each is
    named with its problems; with ``--remove-damaged`` also deleted, under its publishing claim
    as ``prh gc`` does: one that a run is publishing again right now is left to it; on an object
    store, after :meth:`Store.check_writable`, which refuses an endpoint that ignores conditional
    writes)."""
    from storage.verify import remove_version, verify_store

    store = existing_store(store_argument(args))
    damaged, missing = [], []

    def report(check: Any) -> None:
        if check.missing:
            missing.append(check)
            _say(f"MISSING {check.key}: " + "; ".join(check.problems))
        elif not check.ok:
            damaged.append(check)
            _say(f"DAMAGED {check.key}: " + "; ".join(check.problems))
        if check.unlisted:
            _say(f"note {check.key}: file(s) its manifest does not list and prh does not write, left alone (its "
                 f"listed files are what runs and the catalog read): {', '.join(check.unlisted)}")

    checks = verify_store(store, quick=args.quick, on_check=report)
    if args.remove_damaged and any(c.removable for c in damaged) and not store.is_local:
        store.check_writable()  # removals take publishing claims: an endpoint that ignores conditional writes is refused
    for check in damaged if args.remove_damaged else []:
        if check.removable:
            if remove_version(store, check.key):
                _say(f"removed {check.key}: the next run computes it again")
            else:
                _say(f"left {check.key} in place: a run is publishing it again right now (it holds its claim); "
                      "run prh verify again after it")
        else:
            _say(check.left)
    files, size = sum(c.files for c in checks), sum(c.bytes for c in checks)
    versions = sum(c.removable for c in checks)  # a stray manifest is not a version
    how = "sizes" if args.quick else "sizes and SHA-256"
    found = ([f"{len(damaged)} damaged" + ("" if args.remove_damaged or not any(c.removable for c in damaged)
                                           else " (remove the damaged versions with --remove-damaged)")] if damaged else [])
    if missing:
        found.append(f"{len(missing)} named by the latest run missing (`prh run` with its config computes them again)")
    _say(f"{store.display_url}: {_count(versions, 'published version')}, {_count(files, 'file')}, {size / 1e6:.1f} MB "
          f"checked ({how}): " + ("; ".join(found) if found else "all match their manifests"))
    return 1 if damaged or missing else 0


def _say(line: str) -> None:
    """Print one line of ``prh gc`` / ``prh verify``: it names store keys and quotes manifests, which
    a store's writer chose, so no control character in them reaches the terminal raw."""
    print(for_terminal(line))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _catalog_export(args: argparse.Namespace) -> int:
    from storage.export import export_catalog

    summary = export_catalog(existing_store(store_argument(args)), args.file)
    print(f"wrote {summary.path}: views {', '.join(summary.views)} over {summary.files} Parquet files of {summary.store}; "
          + ", ".join(f"{name} ({_count(rows, 'row')})" for name, rows in summary.tables.items()))
    if summary.remote:
        print("the views read s3:// URLs: open it with storage.export.open_catalog(FILE) (registers s3fs); see docs/storage.md")
    else:
        print(f"open it with: duckdb -readonly {shlex.quote(str(summary.path))}   or   duckdb.connect({str(summary.path)!r}, read_only=True)"
              "   (times are TIMESTAMPTZ: SET TimeZone = 'UTC' to see them in UTC)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
