"""The record a flow run keeps in the store: what a stopped run's record says."""

from __future__ import annotations

import signal

import pytest
from prefect.exceptions import TerminationSignal

from flows.run_record import one_line, recorded
from storage.store import Store


def test_a_cancel_from_the_ui_is_named_by_its_signal():
    # Prefect's engine raises TerminationSignal(signal=n): no message of its own
    assert one_line(TerminationSignal(signal=signal.SIGTERM)) == "TerminationSignal: SIGTERM"
    assert one_line(TerminationSignal(signal=999)) == "TerminationSignal: signal 999"
    assert one_line(TerminationSignal(signal.SIGINT)) == "TerminationSignal: SIGINT"  # not "...: 2"
    assert one_line(ValueError("bad n")) == "ValueError: bad n"


def test_a_stopped_run_records_cancelled_with_the_signal(tmp_path):
    """A run cancelled from the UI (the worker's SIGTERM reaches the flow as TerminationSignal)
    is recorded CANCELLED; its error had read 'prefect.exceptions.TerminationSignal'."""
    store = Store(str(tmp_path / "store"))
    with pytest.raises(TerminationSignal):
        with recorded(store, "runs/r1.json", {"run_id": "r1", "status": "RUNNING"}):
            raise TerminationSignal(signal=signal.SIGTERM)
    record = store.read_json("runs/r1.json")
    assert record["status"] == "CANCELLED" and record["error"] == "TerminationSignal: SIGTERM"
    assert record["finished_at"]


@pytest.mark.parametrize("error, status", [(SystemExit(1), "CRASHED"), (RuntimeError("boom"), "FAILED"),
                                           (KeyboardInterrupt(), "CANCELLED")])
def test_a_run_whose_process_is_made_to_exit_records_crashed(tmp_path, error, status):
    """A worker killed under its flow run: the run's process is made to exit (``SystemExit: 1``)
    and Prefect shows the run CRASHED, while the store's record said FAILED, as if the pipeline
    had failed on its own. It says CRASHED now, as a run found dead does; errors of the run stay
    FAILED, a stop CANCELLED."""
    store = Store(str(tmp_path / "store"))
    with pytest.raises(type(error)):
        with recorded(store, "runs/r1.json", {"run_id": "r1", "status": "RUNNING"}):
            raise error
    record = store.read_json("runs/r1.json")
    assert record["status"] == status and record["error"] == one_line(error) and record["finished_at"]
