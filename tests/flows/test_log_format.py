"""Prh's console log lines as the on-call reads them: the time of each line with its date, in
UTC (`flows.log_format`, `flows.prefect_env.logging_environment`), and no escape codes where
`NO_COLOR` or `FORCE_COLOR=0` ask for none. Prefect's own logging configuration is built from the
variables prh sets, as Prefect builds it when it is imported, without touching this process's
logging."""

from __future__ import annotations

import io
import logging
import logging.config
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from flows.prefect_env import logging_environment

#: 23:59:59.5 UTC on New Year's Eve: 08:59:59 the next day in Tokyo, where these tests set the clock.
NEW_YEAR_EVE = datetime(2025, 12, 31, 23, 59, 59, 500000, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def tokyo_clock(monkeypatch):
    """The process's local time zone is Asia/Tokyo (UTC+9, no summer time) for the test."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def bare_environment(monkeypatch, tmp_path):
    """No logging, colour or home variable of the caller's: a fresh ``PREFECT_HOME`` (no logging.yml)."""
    for name in list(os.environ):
        if name.startswith("PREFECT_LOGGING_") or name in ("NO_COLOR", "FORCE_COLOR"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    return monkeypatch


def _record(name: str, **extra: str) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, "3/15 pairs done", None, None)
    record.created, record.msecs = NEW_YEAR_EVE, 500.0
    record.__dict__.update(extra)
    return record


def _prefect_console_formatter() -> logging.Formatter:
    """The formatter of Prefect's console handler as Prefect's logging set-up makes it from the
    environment (its logging.yml with the ``PREFECT_LOGGING_*`` overrides)."""
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH, load_logging_config

    config = load_logging_config(DEFAULT_LOGGING_SETTINGS_PATH)
    return logging.config.DictConfigurator(config).configure_formatter(config["formatters"]["standard"])


def test_console_lines_carry_the_utc_date_time(bare_environment, tokyo_clock):
    """Prefect's console format began with the local time of day (`08:59:59.500 | INFO ...` in
    Tokyo, for a line written at 23:59:59.5 UTC on 31 December): the day, and the zone, were
    not said. With prh's variables the line begins with the UTC date-time, to the millisecond,
    for plain loggers, flow-run and task-run lines alike."""
    for name, value in logging_environment().items():
        bare_environment.setenv(name, value)
    formatter = _prefect_console_formatter()
    stamp = "2025-12-31T23:59:59.500Z"
    assert formatter.format(_record("prh.run")) == f"{stamp} | INFO    | prh.run - 3/15 pairs done"
    assert (formatter.format(_record("prefect.flow_runs", flow_run_name="calm-fox"))
            == f"{stamp} | INFO    | Flow run 'calm-fox' - 3/15 pairs done")
    assert (formatter.format(_record("prefect.task_runs", task_run_name="align-0"))
            == f"{stamp} | INFO    | Task run 'align-0' - 3/15 pairs done")


def test_a_logging_configuration_of_ones_own_is_left_alone(bare_environment, tmp_path):
    """A logging file of one's own (the variable, or logging.yml in PREFECT_HOME) or a console
    format of one's own (a ``PREFECT_LOGGING_FORMATTERS_STANDARD_*`` variable) is Prefect's whole
    say on the format: prh adds nothing to it."""
    assert "PREFECT_LOGGING_FORMATTERS_STANDARD_FORMAT" in logging_environment()
    bare_environment.setenv("PREFECT_LOGGING_FORMATTERS_STANDARD_DATEFMT", "%c")
    assert logging_environment() == {}
    bare_environment.delenv("PREFECT_LOGGING_FORMATTERS_STANDARD_DATEFMT")
    bare_environment.setenv("PREFECT_LOGGING_SETTINGS_PATH", str(tmp_path / "mine.yml"))
    assert logging_environment() == {}
    bare_environment.delenv("PREFECT_LOGGING_SETTINGS_PATH")
    home = Path(os.environ["PREFECT_HOME"])
    home.mkdir(parents=True)
    (home / "logging.yml").write_text("version: 1\n")
    assert logging_environment() == {}


@pytest.mark.parametrize(("variables", "plain"), [
    ({"NO_COLOR": "1"}, True), ({"FORCE_COLOR": "0"}, True), ({"FORCE_COLOR": "off"}, True),
    ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True), ({"FORCE_COLOR": "1"}, False), ({"NO_COLOR": ""}, False), ({}, False)])
def test_prefects_console_honours_no_color_and_force_color_0(bare_environment, variables, plain):
    """Prefect's console handler coloured its lines under `NO_COLOR` (rich drops colours but keeps
    bold) and `FORCE_COLOR=0` (which rich reads as "force colour", even into a file): prh now
    sets `PREFECT_LOGGING_COLORS=false` there, as its own output does (`flows.cli_console`), and
    the handler then writes no escape code. `FORCE_COLOR=1` keeps Prefect's colours."""
    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.settings import PREFECT_LOGGING_COLORS, Settings, temporary_settings

    for name, value in variables.items():
        bare_environment.setenv(name, value)
    bare_environment.setenv("FORCE_COLOR", variables.get("FORCE_COLOR", "1"))  # rich: a terminal, whatever the stream
    added = logging_environment()
    assert ("PREFECT_LOGGING_COLORS" in added) is plain
    for name, value in added.items():
        bare_environment.setenv(name, value)
    colours = Settings().logging.colors  # the setting as a Prefect process started with this environment reads it
    assert colours is (not plain)
    stream = io.StringIO()
    with temporary_settings(updates={PREFECT_LOGGING_COLORS: colours}):
        handler = PrefectConsoleHandler(stream=stream, styles={"log.warning_level": "yellow3"})
    handler.emit(logging.LogRecord("prh.run", logging.WARNING, __file__, 1, "WARNING: state Failed()", None, None))
    assert ("\x1b[" not in stream.getvalue()) is plain, repr(stream.getvalue())


def test_an_explicit_prefect_colour_setting_is_kept(bare_environment):
    bare_environment.setenv("NO_COLOR", "1")
    bare_environment.setenv("PREFECT_LOGGING_COLORS", "true")
    assert "PREFECT_LOGGING_COLORS" not in logging_environment()


def test_a_worker_started_by_hand_gets_them_from_the_shell(bare_environment):
    """`eval "$(python -m flows.prefect_env)"` sets the same variables in a POSIX shell."""
    import subprocess
    import sys

    bare_environment.setenv("NO_COLOR", "1")
    script = 'eval "$(\"$0\" -m flows.prefect_env)" && env'
    done = subprocess.run(["sh", "-c", script, sys.executable], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    shown = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("PREFECT_LOGGING_"))
    assert shown == logging_environment() and shown["PREFECT_LOGGING_COLORS"] == "false"
    assert shown["PREFECT_LOGGING_FORMATTERS_STANDARD_FORMAT"] == "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


def test_prh_run_and_make_serve_set_them(bare_environment, tmp_path):
    """`prh run` (before Prefect is imported) and `make serve` (the server's, workers' and their
    flow runs' environment) both set them."""
    from flows import cli, serve

    environ = {"PREFECT_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    bare_environment.setattr(os, "environ", dict(environ))
    cli.configure_environment()
    configured = dict(os.environ)
    bare_environment.undo()
    assert configured["PREFECT_LOGGING_FORMATTERS_STANDARD_"] == "flows.log_format.UtcFormatter"
    assert configured["PREFECT_LOGGING_COLORS"] == "false"
    env = serve.prefect_env(4200, tmp_path / "home", base={"NO_COLOR": "1", "PREFECT_LOGGING_COLORS": "true"})
    # make serve drops inherited PREFECT_* variables: NO_COLOR decides
    assert env["PREFECT_LOGGING_FORMATTERS_STANDARD_"] == "flows.log_format.UtcFormatter"
    assert env["PREFECT_LOGGING_COLORS"] == "false"
