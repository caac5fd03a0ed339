"""The record a flow run keeps in the store: what a stopped run's record says."""

from __future__ import annotations

import signal

import pytest
from prefect.exceptions import TerminationSignal

from flows.run_record import new_record, one_line, recorded
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


def test_a_run_whose_record_cannot_be_written_at_its_end_says_so(tmp_path):
    """The disk fills up after a run published everything (its report took the last room): the
    final record cannot be written. The run had ended with a bare ``cannot write runs/<id>.json``,
    as if nothing had been stored; it now names the run, its outcome, the record and the cause, and
    says that what it published stays."""
    from flows.run_record import RunRecordNotWritten
    from tests.storage.small_disk import fill, tmpfs

    with tmpfs(tmp_path / "disk", 256) as disk:
        store = Store(str(disk / "store"))
        with pytest.raises(RunRecordNotWritten) as raised:
            with recorded(store, "runs/r1.json", {"run_id": "r1", "status": "RUNNING"}) as record:
                store.write_bytes("alignment/x/best.parquet", b"published")
                fill(disk)
                record["status"] = "COMPLETED"
        message = str(raised.value)
        assert message.startswith("run r1 ended COMPLETED, but its record runs/r1.json could not be written: "
                                  f"cannot write runs/r1.json to store {store.display_url}: No space left on device")
        assert "what the run published stays in the store" in message
        assert store.read_json("runs/r1.json")["status"] == "RUNNING"  # the first record, whole
        assert store.read_bytes("alignment/x/best.parquet") == b"published"


def test_a_failed_run_keeps_its_own_error_when_its_record_cannot_be_written(tmp_path, caplog):
    """A disk that filled up mid-run fails some of its models (the run's error lists which), and
    then its final record: the run's own error is what it ends with (it had been replaced by the
    record's ``cannot write runs/<id>.json``), the missing record logged."""
    from tests.storage.small_disk import fill, tmpfs

    with tmpfs(tmp_path / "disk", 256) as disk:
        store = Store(str(disk / "store"))
        with pytest.raises(RuntimeError, match="^2 of 3 models failed$"):
            with recorded(store, "runs/r1.json", {"run_id": "r1", "status": "RUNNING"}) as record:
                fill(disk)
                record["status"] = "FAILED"
                raise RuntimeError("2 of 3 models failed")
        logged = [r.getMessage() for r in caplog.records if r.name == "prh.run"]
        assert any(m.startswith("run r1 ended FAILED, but its record runs/r1.json could not be written: ")
                   and "No space left on device" in m for m in logged)
        assert store.read_json("runs/r1.json")["status"] == "RUNNING"


def test_a_new_record_says_running_with_what_tells_a_live_run(tmp_path) -> None:
    """``new_record``: ``RUNNING``, the run and flow named, this process as its owner, a UTC start
    time, the store as shown, the config as JSON, the code version and the heartbeat interval."""
    import os
    from pathlib import Path

    from storage.runs import RUN_HEARTBEAT_SECONDS, epoch_seconds
    from tasks.params import load_config

    store = Store(str(tmp_path / "store"))
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    record = new_record(store, config, "r7", "prh-extract")
    assert (record["run_id"], record["flow_run_id"], record["flow"], record["status"]) == ("r7", "r7", "prh-extract", "RUNNING")
    assert record["process"]["pid"] == os.getpid() and record["store"] == store.display_url
    assert record["config"] == config.model_dump(mode="json") and record["heartbeat_s"] == RUN_HEARTBEAT_SECONDS
    assert record["started_at"].endswith("+00:00") and epoch_seconds(record["started_at"]) is not None
    assert isinstance(record["code_version"], str) and record["code_version"]


def test_a_stop_with_nothing_in_flight_does_not_wait(tmp_path, caplog) -> None:
    """A stopped run waits for its tasks in flight only when there are some: with none, its record
    is written at once and no wait is announced."""
    store = Store(str(tmp_path / "store"))
    with caplog.at_level("WARNING", logger="prh.run"), pytest.raises(KeyboardInterrupt):
        with recorded(store, "runs/r2.json", {"run_id": "r2", "status": "RUNNING"}):
            raise KeyboardInterrupt
    assert "waiting up to" not in caplog.text
    assert store.read_json("runs/r2.json")["status"] == "CANCELLED"
