"""``prh``'s answers to a mistyped command line (``flows.cli_parser``): the fix named, argparse's
usage line and exit status 2 kept. Each case had been argparse's bare message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import BROKEN_PIPE_EXIT, command_parser, main

COMMANDS = "run, sql, report, catalog, gc or verify"


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    """``prh ARGV`` refused by the parser: (its usage line's start, its error line); exit 2, no output."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("usage: prh")
    return lines[0].split(" [", 1)[0], lines[-1]


def test_no_command_or_an_option_before_it_names_what_to_type(capsys):
    """``prh --bogus`` said "the following arguments are required: command", not naming the option
    it did not know; ``prh --dry-run`` did not say that gc takes it, after the command."""
    assert _refused(capsys) == ("usage: prh", f"prh: error: give a command: {COMMANDS} (prh --help says what each does)")
    usage, line = _refused(capsys, "--bogus")
    assert "required" not in line
    assert line == (f"prh: error: unrecognized option --bogus; before its command prh takes only --help or --version: "
                    f"give a command: {COMMANDS} (prh COMMAND --help lists its options)")
    assert _refused(capsys, "--verson")[1].startswith("prh: error: unrecognized option --verson (did you mean --version?);")
    assert _refused(capsys, "--dry-run")[1] == \
        "prh: error: --dry-run is an option of prh gc: write it after the command (prh gc --dry-run ...)"
    assert _refused(capsys, "--out=rep")[1] == \
        "prh: error: --out is an option of prh report: write it after the command (prh report --out=rep ...)"


@pytest.mark.parametrize("typed, meant", [("rn", "run"), ("RUN", "run"), ("sq", "sql"), ("raport", "report"),
                                          ("verfy", "verify"), ("q", None), ("select 1", None)])
def test_a_misspelled_command_is_answered_with_the_one_meant(capsys, typed, meant):
    usage, line = _refused(capsys, typed)
    guess = f" (did you mean {meant}?)" if meant else ""
    assert line == (f"prh: error: prh has no command {typed!r}{guess}; its commands: run, sql, report, catalog, gc and verify "
                    "(prh --help says what each does)")


def test_an_option_of_a_command_given_before_it_is_said_to_go_after_it(capsys, tmp_path):
    """``prh --store URL sql QUERY`` had called the URL an invalid choice of command."""
    store = str(tmp_path / "store")
    assert _refused(capsys, "--store", store, "sql", "select 1")[1] == (
        f"prh: error: --store {store}: --store is an option of the commands run, sql, report, catalog export, gc and verify, "
        f"not of prh: write it after the command (prh sql --store {store} ...)")
    assert _refused(capsys, "--out", "rep", "report")[1] == \
        "prh: error: --out rep: --out is an option of prh report, not of prh: write it after the command (prh report --out rep ...)"
    # an option given before a command that parsed: said by that command, with its usage line
    assert _refused(capsys, "--dry-run", "gc") == \
        ("usage: prh gc", "prh gc: error: unrecognized arguments: --dry-run (--dry-run goes after the command: prh gc --dry-run ...)")
    # prh's own option after a command
    assert _refused(capsys, "sql", "select 1", "--version")[1] == \
        "prh sql: error: unrecognized arguments: --version (--version is an option of prh itself: prh --version)"
    # an option no command takes, before a word that is no command
    assert _refused(capsys, "--bogus", "x")[1].startswith("prh: error: unrecognized option --bogus; before its command")


def test_a_misspelled_option_is_answered_by_its_command_with_the_one_meant(capsys):
    """``prh run --confg x`` printed prh's usage (not run's) and "unrecognized arguments" alone."""
    usage, line = _refused(capsys, "run", "--confg", "zoo.yaml")
    assert (usage, line) == ("usage: prh run", "prh run: error: unrecognized arguments: --confg zoo.yaml "
                                               "(--confg: did you mean --config?)")
    assert _refused(capsys, "sql", "select 1", "--fromat=csv")[1] == \
        "prh sql: error: unrecognized arguments: --fromat=csv (--fromat: did you mean --format?)"
    assert _refused(capsys, "gc", "--dryrun")[1] == "prh gc: error: unrecognized arguments: --dryrun (--dryrun: did you mean --dry-run?)"
    # an option of another command
    assert _refused(capsys, "sql", "select 1", "--out", "rep")[1] == \
        "prh sql: error: unrecognized arguments: --out rep (--out is an option of prh report, not of prh sql)"
    # nothing alike: argparse's words alone
    assert _refused(capsys, "run", "--x", "1")[1] == "prh run: error: unrecognized arguments: --x 1"


def test_an_unquoted_query_is_said_to_be_one_argument(capsys):
    assert _refused(capsys, "sql", "select", "1")[1] == \
        'prh sql: error: unrecognized arguments: 1 (the query is one argument: put it in quotes (prh sql "select ..."))'
    # the value of a mistyped option is no piece of the query
    assert "quotes" not in _refused(capsys, "sql", "select 1", "--fromat", "csv")[1]


def test_the_catalog_command_names_its_own_commands(capsys):
    assert _refused(capsys, "catalog") == ("usage: prh catalog", "prh catalog: error: give a command: export (prh catalog --help "
                                                                 "says what each does)")
    assert _refused(capsys, "catalog", "exprt", "x.duckdb")[1] == \
        "prh catalog: error: prh catalog has no command 'exprt' (did you mean export?); its commands: export " \
        "(prh catalog --help says what each does)"
    assert _refused(capsys, "catalog", "--store", "s", "export", "x.duckdb")[1] == \
        "prh catalog: error: --store s: --store is an option of prh catalog export, not of prh catalog: write it after the " \
        "command (prh catalog export --store s ...)"


def test_command_lines_that_are_right_parse_as_before():
    parse = command_parser().parse_args
    args = parse(["sql", "select 1", "--store", "s", "--format", "csv"])
    assert (args.command, args.query, args.store, args.format) == ("sql", "select 1", "s", "csv")
    args = parse(["catalog", "export", "f.duckdb", "--store", "s"])
    assert (args.command, args.action, args.file, args.store) == ("catalog", "export", "f.duckdb", "s")
    args = parse(["gc", "--keep-runs", "2", "--dry-run"])
    assert (args.command, args.keep_runs, args.dry_run) == ("gc", 2, True)
    assert parse(["run", "--conf", "z.yaml"]).config == "z.yaml"  # a unique start of an option, as argparse takes it


def test_help_says_what_each_exit_status_means_and_each_command_what_it_does(capsys):
    """The exit statuses were documented in a README paragraph on crashes only; each command's own
    --help started with its usage, not what it does; --format had no help."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    statuses = text.split("exit status", 1)[1].split("environment:", 1)[0]
    for status in (0, 1, 2, 128 + signal.SIGINT, 128 + signal.SIGTERM, BROKEN_PIPE_EXIT):
        assert f"\n  {status} " in statuses or f", {status} by" in statuses, status
    assert "PRH_STORE" in text and "NO_COLOR" in text and "FORCE_COLOR=0" in text
    with pytest.raises(SystemExit):
        main(["sql", "--help"])
    text = capsys.readouterr().out
    assert "\nQuery the catalog with DuckDB SQL (read-only).\n" in text
    assert " ".join(text.split("--format {table,csv,json}", 2)[2].split()).startswith("table: for reading")


def _help_with_stdout(argv: list[str], stdout: str, unbuffered: bool) -> subprocess.CompletedProcess[str]:
    """``prh ARGV`` with its stdout a pipe whose reader has gone (``stdout="closed pipe"``),
    ``/dev/full`` or closed (``stdout=">&-"``); buffered as in a user's shell, or ``PYTHONUNBUFFERED`` (each write at once)."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "flows.cli", *argv]
    if stdout in ("/dev/full", ">&-"):
        redirect = ">/dev/full" if stdout == "/dev/full" else ">&-"
        return subprocess.run(["bash", "-c", f'exec "$@" {redirect}', "prh", *command], env=env, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before prh writes: no race with a reader that exits
    try:
        return subprocess.run(command, env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["catalog", "export", "-h"]], ids=" ".join)
def test_help_into_a_closed_pipe_or_a_full_disk_ends_as_version_does(argv, unbuffered):
    """`prh --help | head -c0`: argparse swallows the error of its write, so --help (of prh or of a
    command) had exited 0 having printed nothing (unbuffered), or 120 with Python's "Exception
    ignored ... BrokenPipeError" from the flush at exit; `> /dev/full` the same with an OSError.
    Now as ``prh --version``: 141 and nothing on stderr for a reader gone, exit 2 and one line for
    a full disk."""
    closed = _help_with_stdout(argv, "closed pipe", unbuffered)
    assert (closed.returncode, closed.stderr) == (BROKEN_PIPE_EXIT, "")
    if Path("/dev/full").exists():
        full = _help_with_stdout(argv, "/dev/full", unbuffered)
        assert (full.returncode, full.stderr) == (2, "prh: error: cannot write the output: No space left on device; "
                                                     "what was written before it stopped is incomplete\n")


@pytest.mark.parametrize("argv", [["--help"], ["sql", "--help"], ["--version"]], ids=" ".join)
def test_help_and_version_with_stdout_closed_fail_in_one_line(argv):
    """`prh --help >&-`: the text had gone to the /dev/null standing in for the closed stdout and
    prh exited 0 (coreutils' `echo hi >&-` fails with "write error"). --help and --version, whose
    only work is their output, now exit 2 with one line; a command with work to do still runs
    (test_cli's closed-stdout `prh sql`)."""
    done = _help_with_stdout(argv, ">&-", unbuffered=False)
    assert (done.returncode, done.stderr) == (2, "prh: error: cannot write the output: stdout is closed\n")
