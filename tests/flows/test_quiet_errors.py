"""``prh run`` logs the errors it states in one line without Prefect's engine traceback."""

import logging

import pytest

from flows.quiet_errors import ENGINE_LOGGERS, DropStatedTracebacks, quiet_known_errors


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


def test_stated_errors_lose_only_their_traceback(flow_logger):
    logger, records = flow_logger
    with quiet_known_errors((ValueError,)):
        _log_exception(logger, ValueError("dataset 'x.csv' has 0 valid rows"))
        _log_exception(logger, KeyError("a bug"))
    stated, other = records
    assert stated.exc_info is None and "dataset 'x.csv' has 0 valid rows" in stated.getMessage()
    assert other.exc_info is not None and isinstance(other.exc_info[1], KeyError)
    assert "Traceback" in logging.Formatter().format(other)


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
        _log_exception(logger, ValueError("kept"))
    assert records[0].exc_info is not None
