"""``prh run`` logs the errors it states in one line without Prefect's engine traceback."""

import logging
from pathlib import Path

import pytest

import numpy as np

from flows.quiet_errors import ENGINE_LOGGERS, DropStatedTracebacks, quiet_known_errors, stated_by_prh
from tasks.data.tables import load_paired_dataset
from tasks.params import ConfigError

#: the flow logger these tests write to outside a flow run warns that it has no run to send to
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.flow_runs' attempted to send logs to the API:UserWarning")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def flow_logger():
    logger = logging.getLogger(ENGINE_LOGGERS[0])
    handler, propagate = Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # Prefect's own handlers want a flow run's fields in every record
    yield logger, handler.records
    logger.propagate = propagate
    logger.removeHandler(handler)


def _log_exception(logger, error):
    try:
        raise error
    except Exception:
        logger.exception("Encountered exception during execution: %r", error)


def _raised_by(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001
        return error
    raise AssertionError("no error")


def test_stated_errors_lose_only_their_traceback(flow_logger, tmp_path):
    """prh's own input errors lose the engine traceback; a ValueError raised inside a library (a
    possible bug) and any other exception keep it."""
    logger, records = flow_logger
    bad_table = _raised_by(lambda: load_paired_dataset(tmp_path / "x.csv"))  # prh's own ValueError
    library = _raised_by(lambda: np.zeros(3) + np.zeros(4))  # numpy's ValueError
    with quiet_known_errors((ValueError,)):
        for error in (bad_table, ConfigError("config z.yaml: bad"), library, KeyError("a bug")):
            logger.error("Encountered exception during execution: %r", error, exc_info=error)
    stated, own_class, from_numpy, other = records
    assert stated.exc_info is None and "x.csv" in stated.getMessage() and own_class.exc_info is None
    assert from_numpy.exc_info is not None and other.exc_info is not None
    assert "Traceback" in logging.Formatter().format(from_numpy)


def test_stated_by_prh_looks_at_where_a_plain_error_was_raised():
    assert stated_by_prh(_raised_by(lambda: load_paired_dataset("/nonexistent/x.csv")))
    assert not stated_by_prh(_raised_by(lambda: int("abc")))  # raised here, in a test, not in prh's packages
    assert stated_by_prh(ConfigError("no traceback needed"))  # a class of prh's own
    assert not stated_by_prh(ValueError("never raised"))


def test_a_builtin_failing_in_prhs_own_code_keeps_its_traceback():
    """``int('12px')`` or an unpacking failing inside prh's packages is maybe a bug: only a
    ``raise`` statement there counts as prh stating the error."""
    fake = str(Path(__file__).resolve().parents[2] / "tasks" / "not_a_module.py")
    scope: dict = {}
    exec(compile("def implicit(v):\n    return int(v)\n\ndef unpack(v):\n    a, b = v\n    return a\n\n"
                 "def explicit(v):\n    raise ValueError(f'bad value {v!r}')\n", fake, "exec"), scope)
    assert not stated_by_prh(_raised_by(lambda: scope["implicit"]("12px")))
    assert not stated_by_prh(_raised_by(lambda: scope["unpack"]((1, 2, 3))))
    assert stated_by_prh(_raised_by(lambda: scope["explicit"]("12px")))


def test_the_filter_is_removed_after_the_block(flow_logger):
    logger, records = flow_logger
    with quiet_known_errors((ValueError,)):
        pass
    _log_exception(logger, ValueError("outside"))
    assert records[0].exc_info is not None
    assert not any(isinstance(f, DropStatedTracebacks) for name in ENGINE_LOGGERS for f in logging.getLogger(name).filters)


def test_prh_tracebacks_keeps_every_traceback(flow_logger, monkeypatch):
    logger, records = flow_logger
    monkeypatch.setenv("PRH_TRACEBACKS", "1")
    with quiet_known_errors((ValueError,)):
        _log_exception(logger, ConfigError("kept"))
    assert records[0].exc_info is not None


def test_prh_tracebacks_takes_on_and_refuses_a_value_neither_yes_nor_no(flow_logger, monkeypatch):
    """``PRH_TRACEBACKS=on`` (as the hub's offline variables take it) had silently meant no, and so
    had ``2``: ``on`` keeps the tracebacks, ``off`` drops them, and a value neither yes nor no is an
    error naming it (`prh run` checks it before any server starts)."""
    from flows.quiet_errors import tracebacks_kept

    logger, records = flow_logger
    monkeypatch.setenv("PRH_TRACEBACKS", "on")
    with quiet_known_errors((ValueError,)):
        _log_exception(logger, ConfigError("kept"))
    monkeypatch.setenv("PRH_TRACEBACKS", "off")
    with quiet_known_errors((ValueError,)):
        _log_exception(logger, ConfigError("dropped"))
    assert [r.exc_info is not None for r in records] == [True, False]
    monkeypatch.setenv("PRH_TRACEBACKS", "2")
    with pytest.raises(ValueError, match="^PRH_TRACEBACKS='2' is not 1/true/yes/on or 0/false/no/off$"):
        tracebacks_kept()


@pytest.mark.usefixtures("prefect_harness")
def test_a_task_failing_unexpectedly_logs_its_traceback():
    """A model or pair that fails with an error prh did not raise (a bug, a library's error) logs
    its traceback in the flow run's log; prh's own input errors stay one line."""
    from prefect import flow

    from flows.pipeline import log_unexpected

    library = _raised_by(lambda: np.zeros(3) + np.zeros(4))
    collect = Collect()

    @flow
    def failing() -> None:
        logging.getLogger(ENGINE_LOGGERS[0]).addHandler(collect)  # after Prefect's logging set-up
        try:
            log_unexpected(library, "align a x b")
            log_unexpected(ConfigError("bad input"), "align a x c")
        finally:
            logging.getLogger(ENGINE_LOGGERS[0]).removeHandler(collect)

    failing()
    records = collect.records
    logged = [r for r in records if "unexpected error" in r.getMessage()]
    assert len(logged) == 1 and "align a x b" in logged[0].getMessage() and logged[0].exc_info[1] is library
