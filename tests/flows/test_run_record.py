"""The record a flow run keeps in the store: what a stopped run's record says."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from prefect.exceptions import Pause, TerminationSignal

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
                                           (KeyboardInterrupt(), "CANCELLED"), (Pause(), "CANCELLED")])
def test_a_run_whose_process_is_made_to_exit_records_crashed(tmp_path, error, status):
    """A worker killed under its flow run: the run's process is made to exit (``SystemExit: 1``)
    and Prefect shows the run CRASHED, while the store's record said FAILED, as if the pipeline
    had failed on its own. It says CRASHED now, as a run found dead does; errors of the run stay
    FAILED, a stop CANCELLED (Ctrl-C; a pause from the UI or API: Prefect's ``Pause``, which had read
    FAILED, ``prefect.exceptions.Pause``)."""
    store = Store(str(tmp_path / "store"))
    with pytest.raises(type(error)):
        with recorded(store, "runs/r1.json", {"run_id": "r1", "status": "RUNNING"}):
            raise error
    record = store.read_json("runs/r1.json")
    assert record["status"] == status and record["error"] == one_line(error) and record["finished_at"]
    assert "prefect.exceptions" not in record["error"]  # a run paused from the UI had read prefect.exceptions.Pause


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

    from storage.figure_cache import drawing_version
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
    # the namespace of the figure cache its report draws into: prh gc keeps it while the run is alive
    assert record["report_code_version"] == drawing_version()


def test_a_run_whose_store_records_cannot_be_read_fails_before_writing_its_record(tmp_path) -> None:
    """The records a run reads at its start to place itself after the runs before them
    (``ordered_at``) could not be read (here a record that is a symbolic link to itself; on S3 an
    endpoint failing after its retries): the run went on, placed at its own end without a word.
    It fails now, before it writes anything, as the same read one step earlier (``open_for_run``,
    marking dead runs) fails a run; the error names the file."""
    from storage.runs import alive_key

    store = Store(str(tmp_path / "store"))
    store.write_json("runs/earlier.json", {"run_id": "earlier", "status": "COMPLETED",
                                           "finished_at": "2099-01-01T00:00:00+00:00"})
    (tmp_path / "store" / "runs" / "loop.json").symlink_to("loop.json")
    with pytest.raises(OSError, match="loop.json"):
        with recorded(store, "runs/r4.json", {"run_id": "r4", "status": "RUNNING"}):
            pass
    assert not store.exists("runs/r4.json") and not store.exists(alive_key("r4"))


def test_a_stop_with_nothing_in_flight_does_not_wait(tmp_path, caplog) -> None:
    """A stopped run waits for its tasks in flight only when there are some: with none, its record
    is written at once and no wait is announced."""
    store = Store(str(tmp_path / "store"))
    with caplog.at_level("WARNING", logger="prh.run"), pytest.raises(KeyboardInterrupt):
        with recorded(store, "runs/r2.json", {"run_id": "r2", "status": "RUNNING"}):
            raise KeyboardInterrupt
    assert "waiting up to" not in caplog.text
    assert store.read_json("runs/r2.json")["status"] == "CANCELLED"


def test_a_stopped_run_waits_for_its_tasks_once(tmp_path, caplog, monkeypatch) -> None:
    """The flow waits for its tasks in flight before listing what they published
    (``stop_tasks_in_flight``), and the record waits again only if the flow did not: a task that
    outlives the wait is waited for once (twice would pass Prefect's 30 s before a cancelled run's
    process is killed, its record unwritten)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from contextvars import copy_context

    import flows.run_record
    from flows.run_record import stop_tasks_in_flight
    from tasks.stop_request import in_flight

    monkeypatch.setattr(flows.run_record, "STOP_GRACE_S", 1.0)
    store, inside, release = Store(str(tmp_path / "store")), threading.Event(), threading.Event()

    def task() -> None:
        with in_flight("a task past its last safe point"):
            inside.set()
            release.wait(30)

    with ThreadPoolExecutor(max_workers=1) as pool, caplog.at_level("WARNING", logger="prh.run"):
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            with recorded(store, "runs/r3.json", {"run_id": "r3", "status": "RUNNING"}):
                pool.submit(copy_context().run, task)
                assert inside.wait(30)  # in flight (a fixed sleep had not always let the task start on a loaded machine)
                try:
                    raise KeyboardInterrupt
                except KeyboardInterrupt:
                    stop_tasks_in_flight()  # as the flow does before it lists what its tasks published
                    raise
        waited = time.monotonic() - started
        release.set()
    # one wait: each wait for a task still in flight says so (a second one would say it again).
    # No upper bound on the time: a loaded machine stretches the one wait past any guess
    assert caplog.text.count("waiting up to 1 s for the tasks in flight") == 1 and waited >= 1.0
    assert store.read_json("runs/r3.json")["status"] == "CANCELLED"


def _run_attempt(flow_run_id: Any, parameters: dict[str, Any]) -> Any:
    """One attempt of an existing flow run of ``prh_pipeline`` in this process, as a worker runs
    it (the Prefect engine, the run's own id); its final state."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from flows.pipeline import prh_pipeline

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    return run_flow(prh_pipeline, flow_run=flow_run, parameters=parameters, return_type="state")


def _deployment_run(name: str, parameters: dict[str, Any]) -> Any:
    """A flow run of ``prh_pipeline`` created from a deployment ``name`` registered on the API
    (Prefect retries, pauses and resumes only a deployment's runs); nothing runs it yet."""
    from prefect.client.orchestration import get_client

    from flows.pipeline import prh_pipeline

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(prh_pipeline.name)
        deployment_id = client.create_deployment(flow_id, name, entrypoint="flows.pipeline:prh_pipeline")
        return client.create_flow_run_from_deployment(deployment_id, parameters=parameters)


def _tiny_parameters(store_url: str) -> dict[str, Any]:
    from tests.flows.test_pipeline import TINY_BERT, TINY_VIT

    config = {"dataset": {"kind": "openmoji", "n": 24, "seed": 0, "image_size": 32}, "models": [TINY_VIT, TINY_BERT],
              "alignment": {"metrics": ["mutual_knn", "cka"], "topk": 4, "permutations": 4}}
    return {"config": config, "store": store_url, "report": False}


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_retried_from_the_ui_keeps_what_its_first_attempt_computed(tmp_path):
    """The UI's Retry (``Scheduled`` set on a finished flow run) runs the flow again under the same
    run id, so into the same record: its second attempt found everything the first had published
    and rewrote the record to say that the run had extracted and aligned nothing (all reused), and
    no record said which run had. The record now keeps the first attempt's work, and lists it in
    ``attempts``."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from storage.catalog import connect, query

    store_url = str(tmp_path / "store")
    parameters = _tiny_parameters(store_url)
    flow_run = _deployment_run(f"retry-{tmp_path.name}", parameters)
    assert _run_attempt(flow_run.id, parameters).is_completed()
    first = Store(store_url).read_json(f"runs/{flow_run.id}.json")
    assert first["extracted"] == ["tiny-bert", "tiny-vit"] and first["aligned"] == 1 and "attempts" not in first

    with get_client(sync_client=True) as client:  # what the UI's Retry button sends
        assert client.set_flow_run_state(flow_run.id, Scheduled(name="AwaitingRetry")).status.value == "ACCEPT"
    assert _run_attempt(flow_run.id, parameters).is_completed()
    record = Store(store_url).read_json(f"runs/{flow_run.id}.json")
    assert record["status"] == "COMPLETED" and record["started_at"] > first["finished_at"]
    assert record["alignment_versions"] == first["alignment_versions"]  # reused by the second attempt
    runs = query(connect(store_url), "select run_id, status, extracted, reused, aligned, metrics_computed, metrics_copied "
                                     "from runs").to_pylist()
    assert runs == [{"run_id": str(flow_run.id), "status": "COMPLETED", "extracted": first["extracted"], "reused": [],
                     "aligned": first["aligned"], "metrics_computed": first["metrics_computed"],
                     "metrics_copied": first["metrics_copied"]}]
    assert record["attempts"] == [{field: first.get(field) for field in ("started_at", "finished_at", "status", "error")}]


def test_a_retry_that_fails_before_any_model_keeps_what_its_first_attempt_did(tmp_path):
    """A Retry whose new attempt failed before reaching any model (its dataset gone, the store
    unreachable a moment) dropped from the record what the first attempt had extracted: the
    features stay stored, but no record said which run had extracted them. The record now keeps the
    first attempt's feature versions, extracted and reused models and counts, and its grid of
    alignment versions: still the run's results (a completed run retried and failing at once had
    dropped out of the ``*_latest`` views)."""
    store = Store(str(tmp_path / "store"))
    key = "runs/r3.json"
    first = {"dataset_version": "d1", "feature_versions": {"vit": "fv1", "bert": "fv2"}, "extracted": ["vit"],
             "reused": ["bert"], "alignment_versions": ["alignment/d1/vit__bert/a1"], "aligned": 1, "metrics_computed": 2,
             "metrics_copied": 0}
    with recorded(store, key, {"run_id": "r3", "status": "RUNNING", "started_at": "2026-01-01T00:00:00+00:00"}) as record:
        record.update(first, status="COMPLETED")
    with pytest.raises(ValueError), recorded(store, key, {"run_id": "r3", "status": "RUNNING"}):
        raise ValueError("dataset_version d1 is not stored")
    record = store.read_json(key)
    assert record["status"] == "FAILED" and [a["status"] for a in record["attempts"]] == ["COMPLETED"]
    assert {field: record.get(field) for field in first} == first
    assert "partial_alignment_versions" not in record

    # a third attempt on another dataset version (its source changed) used none of those feature versions
    with pytest.raises(ValueError), recorded(store, key, {"run_id": "r3", "status": "RUNNING"}) as record:
        record.update(dataset_version="d2")
        raise ValueError("model vit refused")
    record = store.read_json(key)
    assert [a["status"] for a in record["attempts"]] == ["COMPLETED", "FAILED"]
    assert "extracted" not in record and "feature_versions" not in record and "alignment_versions" not in record


def test_a_retry_of_a_killed_attempt_lists_it_crashed(tmp_path):
    """An attempt killed without writing its end (kill -9, its worker killed) left its record
    ``RUNNING``; the retry's ``attempts`` listed it ``RUNNING``. A flow run runs again only once
    its attempt ended: it is listed ``CRASHED``, saying so."""
    from flows.run_record import UNFINISHED_ATTEMPT

    store = Store(str(tmp_path / "store"))
    store.write_json("runs/r4.json", {"run_id": "r4", "status": "RUNNING", "started_at": "2026-01-01T00:00:00+00:00"})
    with recorded(store, "runs/r4.json", {"run_id": "r4", "status": "RUNNING"}) as record:
        record["status"] = "COMPLETED"
    assert store.read_json("runs/r4.json")["attempts"] == [
        {"started_at": "2026-01-01T00:00:00+00:00", "finished_at": None, "status": "CRASHED", "error": UNFINISHED_ATTEMPT}]


def _flow_run_logs(flow_run_id: Any) -> list[str]:
    """The lines flow run ``flow_run_id`` logged to the Prefect API (what its page in the UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # the run's lines go to the API in batches
    with get_client(sync_client=True) as client:
        logs, offset = [], 0
        while batch := client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                        limit=200, offset=offset):
            logs += [log.message for log in batch]
            offset += len(batch)
    return logs


@pytest.mark.usefixtures("prefect_harness")
def test_a_retry_of_a_killed_run_continues_it_and_marks_only_other_dead_runs(tmp_path):
    """The Retry of a flow run whose attempt was killed (its record left ``RUNNING``, its process
    gone) logged ``marked 1 earlier run(s) CRASHED ...: <its own id>``: it took its own earlier
    attempt for another run that crashed. It now logs that it continues the run, lists the killed
    attempt in ``attempts``, and still marks another dead run ``CRASHED``."""
    import subprocess
    import sys

    from storage.owner import current_owner

    store_url = str(tmp_path / "store")
    parameters = {**_tiny_parameters(store_url), "dataset_version": "0" * 16}  # fails at once, before any model
    flow_run = _deployment_run(f"killed-{tmp_path.name}", parameters)
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    killed = {"status": "RUNNING", "started_at": "2026-01-01T00:00:00+00:00", "heartbeat_s": 60.0,
              "process": {**current_owner(), "pid": dead_pid, "started": "0"}}
    store = Store(store_url)
    store.write_json(f"runs/{flow_run.id}.json", {**killed, "run_id": str(flow_run.id)})
    store.write_json("runs/other-dead-run.json", {**killed, "run_id": "other-dead-run"})

    assert _run_attempt(flow_run.id, parameters).is_failed()
    record = store.read_json(f"runs/{flow_run.id}.json")
    assert [(a["started_at"], a["status"]) for a in record["attempts"]] == [(killed["started_at"], "CRASHED")]
    assert record["status"] == "FAILED" and "is not" in record["error"]
    assert store.read_json("runs/other-dead-run.json")["status"] == "CRASHED"
    logs = _flow_run_logs(flow_run.id)
    marked = [line for line in logs if "earlier run(s) CRASHED" in line]
    assert marked == ["marked 1 earlier run(s) CRASHED (their process died): other-dead-run"], logs
    assert any(line.startswith(f"run {flow_run.id} runs again (attempt 2;") for line in logs), logs


def test_a_retry_of_a_stopped_run_counts_the_pairs_its_first_attempt_aligned(tmp_path):
    """A run cancelled mid-alignment and retried: the retry finds the pairs the first attempt
    published stored (reused) and counts only its own; the record adds the first attempt's, which
    its ``partial_alignment_versions`` list (it has no ``alignment_versions``: no results)."""
    store = Store(str(tmp_path / "store"))
    versions = ["alignment/d1/a__b/v1", "alignment/d1/a__c/v2"]
    with pytest.raises(KeyboardInterrupt), recorded(store, "runs/r5.json", {"run_id": "r5", "status": "RUNNING"}) as record:
        record.update(partial_alignment_versions=versions[:1], aligned=1, metrics_computed=2, metrics_copied=0)
        raise KeyboardInterrupt
    with recorded(store, "runs/r5.json", {"run_id": "r5", "status": "RUNNING"}) as record:
        record.update(status="COMPLETED", alignment_versions=versions, aligned=1, metrics_computed=2, metrics_copied=0)
    record = store.read_json("runs/r5.json")
    assert (record["aligned"], record["metrics_computed"], record["metrics_copied"]) == (2, 4, 0)
    assert [a["status"] for a in record["attempts"]] == ["CANCELLED"]


def test_a_run_dated_ahead_by_a_clock_is_the_latest_only_until_a_run_started_after_it_ends(tmp_path):
    """A run recorded while its host's clock ran ahead (set forward, then corrected) stayed the
    latest run (the ``*_latest`` views, ``prh report``'s default, ``prh gc --keep-runs``'s newest)
    until real time passed its dates: every run after it sorted before it. A run now places itself
    just after the runs recorded before it started (``ordered_at``); its own times stay what its clock said."""
    from storage.catalog import LATEST_RUN_SQL, connect, query
    from storage.run_retention import newest_runs
    from storage.runs import run_records
    from storage.store import utc_now

    store = Store(str(tmp_path / "store"))
    results = {"status": "COMPLETED", "alignment_versions": ["alignment/d1/a__b/v1"]}
    with recorded(store, "runs/before.json", {"run_id": "before", "status": "RUNNING", "started_at": utc_now()}) as record:
        record.update(results)
    before = store.read_json("runs/before.json")
    assert before["ordered_at"] == before["finished_at"]  # clocks right: a run is placed at its end
    store.write_json("runs/ahead.json", {"run_id": "ahead", "started_at": "2099-01-01T00:00:00+00:00",
                                         "finished_at": "2099-01-01T01:00:00+00:00", **results})  # a prh before ordered_at
    for run_id in ("after", "next"):
        with recorded(store, f"runs/{run_id}.json", {"run_id": run_id, "status": "RUNNING", "started_at": utc_now()}) as record:
            record.update(results)
    after, following = store.read_json("runs/after.json"), store.read_json("runs/next.json")
    assert after["finished_at"] < "2099" and after["ordered_at"] == "2099-01-01T01:00:00.000001+00:00"
    assert following["ordered_at"] == "2099-01-01T01:00:00.000002+00:00"
    assert query(connect(store), f"select run_id from ({LATEST_RUN_SQL})").to_pylist() == [{"run_id": "next"}]
    assert [r["run_id"] for r in newest_runs(run_records(store), 4)] == ["next", "after", "ahead", "before"]


def test_the_counts_of_every_attempt_add_up_whichever_pairs_each_listed(tmp_path):
    """A completed run retried from the UI, cancelled after one pair (found stored), then retried
    to the end: its first attempt's pairs had been counted only while the next attempt listed
    every version it had, so the run ended with ``aligned`` 0. Two attempts stopped after
    different pairs lost the first one's the same way. An attempt counts only what it did not
    find stored, so the attempts' counts add up on one dataset version, and the pairs the stopped
    attempts aligned add up in ``partial_alignment_versions``."""
    store = Store(str(tmp_path / "store"))
    grid = ["alignment/d1/a__b/v1", "alignment/d1/a__c/v2", "alignment/d1/b__c/v3"]

    def attempt(key: str, stopped: bool = False, **outcome: Any) -> dict[str, Any]:
        with contextlib.suppress(KeyboardInterrupt), recorded(store, key, {"run_id": key[5:-5], "status": "RUNNING"}) as record:
            record.update(dataset_version="d1", metrics_copied=0, **outcome)
            if stopped:
                raise KeyboardInterrupt
        return store.read_json(key)

    attempt("runs/r6.json", status="COMPLETED", alignment_versions=grid, aligned=3, metrics_computed=6)
    second = attempt("runs/r6.json", stopped=True, partial_alignment_versions=grid[:1], aligned=0, metrics_computed=0)
    assert (second["status"], second["aligned"], second["metrics_computed"]) == ("CANCELLED", 3, 6)
    third = attempt("runs/r6.json", status="COMPLETED", alignment_versions=grid, aligned=0, metrics_computed=0)
    assert (third["aligned"], third["metrics_computed"], len(third["attempts"])) == (3, 6, 2)

    attempt("runs/r7.json", stopped=True, partial_alignment_versions=grid[1:], aligned=2, metrics_computed=4)
    second = attempt("runs/r7.json", stopped=True, partial_alignment_versions=grid[:1], aligned=1, metrics_computed=2)
    assert second["aligned"] == 3 and second["partial_alignment_versions"] == grid[1:] + grid[:1]
    assert "alignment_versions" not in second  # no results: its grid is not whole
    third = attempt("runs/r7.json", status="COMPLETED", alignment_versions=grid, aligned=0, metrics_computed=0)
    assert (third["aligned"], third["metrics_computed"]) == (3, 6) and "partial_alignment_versions" not in third


def test_a_retry_killed_before_its_end_leaves_the_earlier_work_for_the_next(tmp_path):
    """A completed run retried, the retry killed (its node lost, OOM) before writing its end,
    then retried again: the killed attempt's record, written when it started, held none of the
    first attempt's work, so the last retry (carrying over from it) recorded nothing extracted
    and no grid. The record a retry writes when it starts already keeps it."""
    store = Store(str(tmp_path / "store"))
    key = "runs/r8.json"
    first = {"dataset_version": "d1", "feature_versions": {"vit": "fv1", "bert": "fv2"}, "extracted": ["bert", "vit"],
             "reused": [], "alignment_versions": ["alignment/d1/vit__bert/a1"], "aligned": 1, "metrics_computed": 2,
             "metrics_copied": 0}
    with recorded(store, key, {"run_id": "r8", "status": "RUNNING", "started_at": "2026-01-01T00:00:00+00:00"}) as record:
        record.update(first, status="COMPLETED")
    with recorded(store, key, {"run_id": "r8", "status": "RUNNING", "started_at": "2026-01-02T00:00:00+00:00"}):
        killed = store.read_json(key)  # what the attempt leaves when it is killed now
    assert killed["status"] == "RUNNING" and {field: killed.get(field) for field in first} == first
    store.write_json(key, killed)
    with pytest.raises(ValueError), recorded(store, key, {"run_id": "r8", "status": "RUNNING"}):
        raise ValueError("the hub is unreachable")
    record = store.read_json(key)
    assert [a["status"] for a in record["attempts"]] == ["COMPLETED", "CRASHED"]
    assert {field: record.get(field) for field in first} == first


def test_a_completed_run_whose_retry_was_killed_still_has_its_results(tmp_path):
    """A completed run retried from the UI, the retry killed before its end (its record, written
    when it started, keeps the first attempt's whole grid) and then marked ``CRASHED`` by the next
    run: it was no longer a run with results, so the ``*_latest`` views, ``prh report`` and ``prh
    gc --keep-runs`` skipped it (gc removed its versions), though every version of its grid is
    stored. A ``CRASHED`` record that lists its grid (``alignment_versions``) counts, as a
    ``CANCELLED`` one does; one that lists none still does not."""
    import subprocess
    import sys

    from storage import layout
    from storage.catalog import LATEST_RUN_SQL, connect, query
    from storage.owner import current_owner
    from storage.run_retention import newest_runs
    from storage.runs import mark_crashed_runs, run_records
    from tasks.report_source import select_run

    store = Store(str(tmp_path / "store"))
    key, grid = layout.run_key("r9"), ["alignment/d1/vit__bert/a1"]
    with recorded(store, key, {"run_id": "r9", "status": "RUNNING", "started_at": "2026-01-01T00:00:00+00:00"}) as record:
        record.update(dataset_version="d1", feature_versions={"vit": "fv1", "bert": "fv2"}, alignment_versions=grid,
                      status="COMPLETED")
    with recorded(store, key, {"run_id": "r9", "status": "RUNNING", "started_at": "2026-01-02T00:00:00+00:00"}):
        killed = store.read_json(key)  # what the retry leaves when it is killed now
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    store.write_json(key, {**killed, "process": {**current_owner(), "pid": dead_pid, "started": "0"}})
    store.write_json(layout.run_key("stopped"), {"run_id": "stopped", "status": "CRASHED", "started_at": "2026-01-03T00:00:00+00:00",
                                                 "alignment_versions": [], "partial_alignment_versions": grid})
    assert mark_crashed_runs(store) == ["r9"]  # the next run marks it
    assert store.read_json(key)["status"] == "CRASHED" and store.read_json(key)["alignment_versions"] == grid
    con = connect(store)
    assert [r["run_id"] for r in query(con, LATEST_RUN_SQL).to_pylist()] == ["r9"]
    assert select_run(con)["run_id"] == "r9"  # prh report's default run
    assert [r["run_id"] for r in newest_runs(run_records(store), 5)] == ["r9"]  # prh gc --keep-runs keeps its versions


def test_a_local_run_id_is_readable_sorted_by_start_and_its_own():
    """A run without a Prefect flow run of its own had the id ``local``, the same for every such
    run. Its id is now ``local-<UTC start>-<random>``: a safe store key, sorted by start to the
    second, and two ids made in one second differ."""
    from datetime import datetime, timedelta, timezone

    from flows.run_record import local_run_id
    from storage.keys import safe_component

    first, second = (local_run_id(datetime(2026, 12, 6, 15, 1, 33, tzinfo=timezone.utc)) for _ in range(2))
    later = local_run_id(datetime(2026, 12, 6, 15, 1, 34, tzinfo=timezone.utc))
    assert first.startswith("local-20261206T150133Z-") and len(first) == len("local-20261206T150133Z-") + 8
    assert first != second and sorted([later, first]) == [first, later] and max(first, second) < later
    assert safe_component(first, "run id") == first
    in_paris = datetime(2026, 12, 6, 16, 1, 33, tzinfo=timezone(timedelta(hours=1)))
    assert local_run_id(in_paris).startswith("local-20261206T150133Z-")  # in UTC, whatever the clock's zone


def _local_attempts(store_url: str, tmp_path) -> None:
    """Two pipeline runs and two extraction stages, each the flow's function called in a Prefect
    task outside any flow (Prefect gives it no flow run id), all at once; each fails early (its
    dataset version absent; its dataset's table naming an image that is not there) after writing its record."""
    import threading

    from prefect import task

    from flows.pipeline import prh_pipeline
    from flows.stages import prh_extract
    from tests.flows.test_stages import _path_config

    config = _path_config(str(_imageless_table(tmp_path)))

    @task
    def pipeline_body() -> None:
        prh_pipeline.fn(config=config, store=store_url, report=False, dataset_version="0" * 16)

    @task
    def extract_body() -> None:
        prh_extract.fn(config=config, store=store_url)

    def run(body: Any) -> None:
        with contextlib.suppress(Exception):
            body()

    threads = [threading.Thread(target=run, args=(body,)) for body in (pipeline_body, pipeline_body, extract_body, extract_body)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs:UserWarning")  # no flow run: none
def test_runs_outside_a_flow_run_at_once_keep_a_record_each(store_url, tmp_path):
    """Runs that Prefect gave no flow run id all took the run id ``local``: two at once on one
    store wrote one record (``runs/local.json``), each over the other's, and one after the other
    the second continued the first's as its own earlier attempt (``attempts``). Each now has its own
    id (``local-<time>-<random>``) and its own record, and no sign of life is left."""
    from storage.runs import ALIVE, extraction_records, run_records

    _local_attempts(store_url, tmp_path)
    store = Store(store_url)
    for records in (run_records(store), extraction_records(store)):
        assert len(records) == 2 and len({r["run_id"] for r in records}) == 2, records
        assert all(r["run_id"].startswith("local-") and r["status"] == "FAILED" and "attempts" not in r for r in records)
    assert not store.exists(f"runs/{ALIVE}") or not store.entries(f"runs/{ALIVE}")


@pytest.mark.usefixtures("prefect_harness")
def test_two_direct_calls_of_the_flow_in_one_flow_keep_their_own_records_and_reports(store_url):
    """The flow's function called twice from a flow of one's own (``prh_pipeline.fn``) ran both
    times under that flow's run id: the second took the first's record for its own earlier attempt
    (``attempts``), replaced its report page, and its record listed only its own grid, so no record
    named the first's alignment version (``prh gc --keep-runs`` could remove it). Each call is now
    its own run: its own record, grid and report page; the first extracted both models, the second
    reused them."""
    from prefect import flow

    from flows.pipeline import prh_pipeline
    from flows.report import report_key
    from storage.runs import run_records
    from tasks.params import PipelineConfig

    parameters = _tiny_parameters(store_url)
    other = {**parameters["config"], "alignment": {**parameters["config"]["alignment"], "permutations": 9}}

    @flow
    def my_study() -> list[dict[str, Any]]:
        return [prh_pipeline.fn(config=PipelineConfig.model_validate(config), store=store_url)
                for config in (parameters["config"], other)]

    first, second = my_study()
    assert first["run_id"] != second["run_id"] and all(s["run_id"].startswith("local-") for s in (first, second))
    store = Store(store_url)
    records = {r["run_id"]: r for r in run_records(store)}
    assert sorted(records) == sorted([first["run_id"], second["run_id"]])
    mine, theirs = records[first["run_id"]], records[second["run_id"]]
    assert "attempts" not in mine and "attempts" not in theirs
    assert mine["extracted"] == ["tiny-bert", "tiny-vit"] and theirs["reused"] == ["tiny-bert", "tiny-vit"]
    assert len(mine["alignment_versions"]) == len(theirs["alignment_versions"]) == 1
    assert mine["alignment_versions"] != theirs["alignment_versions"]
    assert all(store.exists(key) for key in (*mine["alignment_versions"], *theirs["alignment_versions"]))
    assert store.exists(report_key(first["run_id"])) and store.exists(report_key(second["run_id"]))


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_start_removes_the_signs_of_life_of_ended_runs_only(store_url):
    """A run killed between writing its end and removing its sign of life left
    ``runs/alive/<id>.json`` until `prh gc` removed it. A run's start removes it now; a live run's,
    a CRASHED run's that beats again, and a sign without a record stay."""
    import time
    from datetime import datetime, timezone

    from flows.pipeline import prh_pipeline
    from storage import layout
    from storage.owner import current_owner
    from storage.runs import alive_key
    from tasks.params import PipelineConfig

    store = Store(store_url)
    now = time.time()
    ended_at = datetime.fromtimestamp(now - 3600, timezone.utc).isoformat()
    just_now = datetime.fromtimestamp(now - 60, timezone.utc).isoformat()
    records = {"done": {"status": "COMPLETED", "finished_at": ended_at},
               "stage": {"status": "FAILED", "finished_at": ended_at},
               "live": {"status": "RUNNING", "process": current_owner()},
               "crashed": {"status": "CRASHED", "marked_crashed_at": just_now}}
    for run_id, fields in records.items():
        key_of = layout.extraction_key if run_id == "stage" else layout.run_key
        store.write_json(key_of(run_id), {"run_id": run_id, "started_at": ended_at, "heartbeat_s": 60.0, **fields})
    for run_id in [*records, "no-record"]:
        beat = now - 3600 - 1 if run_id in ("done", "stage") else now
        store.write_json(alive_key(run_id), {"run_id": run_id, "heartbeat_at": beat})

    config = PipelineConfig.model_validate(_tiny_parameters(store_url)["config"])
    state = prh_pipeline(config=config, store=store_url, report=False, dataset_version="0" * 16, return_state=True)
    assert state.is_failed()  # its dataset version is not stored: it fails once started
    assert not store.exists(alive_key("done")) and not store.exists(alive_key("stage"))
    assert all(store.exists(alive_key(run_id)) for run_id in ("live", "crashed", "no-record"))
    assert store.read_json(layout.run_key("live"))["status"] == "RUNNING"


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs:UserWarning")  # no flow run: none
def test_a_local_run_names_the_flow_run_it_ran_in(tmp_path):
    """A run without a flow run of its own gets a ``local-...`` run id; its record's ``flow_run_id``
    (a column of the ``runs`` view) had become that id too, no Prefect flow run's: it names the flow
    run it ran in (whose page holds its logs and artifacts), or none (a task outside any flow); a
    flow run's own run keeps its id in both."""
    from prefect import flow, task
    from prefect.runtime import flow_run

    from flows.pipeline import prh_pipeline
    from storage.runs import run_records
    from tasks.params import PipelineConfig

    store_url = str(tmp_path / "store")
    config = PipelineConfig.model_validate(_tiny_parameters(store_url)["config"])
    early = dict(config=config, store=store_url, report=False, dataset_version="0" * 16)  # fails once recorded

    @flow
    def my_study() -> str:
        with contextlib.suppress(Exception):
            prh_pipeline.fn(**early)
        return str(flow_run.get_id())

    @task
    def in_a_task() -> None:
        with contextlib.suppress(Exception):
            prh_pipeline.fn(**early)

    study = my_study()
    state = prh_pipeline(**early, return_state=True)
    in_a_task()
    records = {r["run_id"]: r["flow_run_id"] for r in run_records(Store(store_url))}
    own = str(state.state_details.flow_run_id)
    assert records.pop(own) == own
    assert sorted(map(str, records.values())) == sorted([study, "None"]), records
    assert all(r.startswith("local-") for r in records), records


@pytest.mark.parametrize("error, status", [(ValueError("dataset path '/data/pairs.csv' does not exist"), "FAILED"),
                                           (KeyboardInterrupt(), "CANCELLED"), (SystemExit(1), "CRASHED")])
def test_a_run_that_ends_before_its_stages_lists_no_failures_as_a_completed_run_does(tmp_path, error, status):
    """A run that failed (or was stopped) before any model, on its dataset, had no ``failures`` in
    its record: NULL in the ``runs`` view, where a completed run without failures shows ``[]``. No
    model or pair failed in it, so it shows ``[]`` too; its ``error`` says what ended it."""
    from storage.catalog import connect, query

    store = Store(str(tmp_path / "store"))
    with pytest.raises(type(error)):
        with recorded(store, "runs/early.json", {"run_id": "early", "status": "RUNNING"}):
            raise error
    with recorded(store, "runs/done.json", {"run_id": "done", "status": "RUNNING"}) as record:
        record.update(status="COMPLETED", failures=[])  # what the pipeline writes when nothing failed
    assert store.read_json("runs/early.json")["failures"] == []
    rows = query(connect(store), "select run_id, status, failures, error from runs order by run_id").to_pylist()
    assert rows == [{"run_id": "done", "status": "COMPLETED", "failures": "[]", "error": None},
                    {"run_id": "early", "status": status, "failures": "[]", "error": one_line(error)}]


def test_a_run_that_fails_after_listing_failures_keeps_them(tmp_path):
    """What the block listed before it raised is kept, not replaced by ``[]``."""
    store = Store(str(tmp_path / "store"))
    listed = [{"stage": "extract", "item": "vit", "error": "OSError: no such model"}]
    with pytest.raises(RuntimeError):
        with recorded(store, "runs/r1.json", {"run_id": "r1", "status": "RUNNING"}) as record:
            record.update(status="FAILED", failures=listed)
            raise RuntimeError("1 of 2 models failed")
    assert store.read_json("runs/r1.json")["failures"] == listed


@pytest.mark.usefixtures("prefect_harness")
def test_the_pipeline_records_the_failures_of_a_run_that_ended_early(tmp_path, monkeypatch):
    """Through the flow: a run whose dataset does not exist fails before any model, its
    ``failures`` ``[]`` and its error naming the file; a run stopped while it waited for its
    models keeps the model that had failed by then (its record had listed none)."""
    import flows.pipeline
    from flows.pipeline import prh_pipeline
    from storage.catalog import connect, query
    from tasks.params import PipelineConfig

    parameters = _tiny_parameters(str(tmp_path / "store"))
    # a table that passes the run's first check (flows.pipeline.check_dataset_source: a path not
    # there is refused before the store is touched, so nothing is recorded) but has no readable row
    config = {**parameters["config"], "dataset": {"kind": "path", "path": str(_imageless_table(tmp_path))}}
    with pytest.raises(Exception, match="nowhere.png"):
        prh_pipeline(config=PipelineConfig.model_validate(config), store=parameters["store"], report=False)
    (early,) = query(connect(parameters["store"]), "select status, failures, error from runs").to_pylist()
    assert early["status"] == "FAILED" and early["failures"] == "[]" and "nowhere.png" in early["error"]

    refused = _refuse_a_model_then_stop(monkeypatch, flows.pipeline)
    store = str(tmp_path / "store2")
    with pytest.raises(KeyboardInterrupt):
        prh_pipeline(config=PipelineConfig.model_validate(parameters["config"]), store=store, report=False)
    (run,) = query(connect(store), "select status, failures from runs").to_pylist()
    assert run["status"] == "CANCELLED" and json.loads(run["failures"]) == [refused]


def _imageless_table(folder) -> Path:
    """A CSV table whose only row names an image file that is not there: it passes a run's first
    check (the table and its columns exist) and fails its dataset task, after the run is recorded."""
    table = folder / "pairs.csv"
    table.write_text("image,text\nnowhere.png,a cat\n", encoding="utf-8")
    return table


def _refuse_a_model_then_stop(monkeypatch, flow_module) -> dict[str, str]:
    """Make ``flow_module``'s run refuse one model at its check, then be stopped (Ctrl-C) while it
    waits for the others; the refusal's failure record."""
    refused = {"stage": "check", "item": "tiny-bert", "error": "ValueError: not a vision model"}
    monkeypatch.setattr(flow_module, "submit_extractions", lambda *args, **kwargs: ({}, [dict(refused)]))

    def stopped(extracting, failures, features=None, progress=None):
        raise KeyboardInterrupt  # Ctrl-C while the run waits for its models

    monkeypatch.setattr(flow_module, "collect_features", stopped)
    return refused


@pytest.mark.usefixtures("prefect_harness")
def test_an_extraction_stage_that_ended_early_records_its_failures_too(tmp_path, monkeypatch):
    """The extraction stage's record (``runs/extractions/``) as the pipeline's: ``[]`` when it
    failed on its dataset, the model refused before a stop when it was stopped."""
    import flows.stages
    from flows.stages import prh_extract
    from storage import layout
    from storage.runs import extraction_records
    from tasks.params import PipelineConfig

    parameters = _tiny_parameters(str(tmp_path / "store"))
    config = {**parameters["config"], "dataset": {"kind": "path", "path": str(_imageless_table(tmp_path))}}
    state = prh_extract(config=PipelineConfig.model_validate(config), store=parameters["store"], return_state=True)
    assert state.is_failed()
    early = Store(parameters["store"]).read_json(layout.extraction_key(str(state.state_details.flow_run_id)))
    assert early["status"] == "FAILED" and early["failures"] == [] and "nowhere.png" in early["error"]

    refused = _refuse_a_model_then_stop(monkeypatch, flows.stages)
    store = str(tmp_path / "store2")
    with pytest.raises(KeyboardInterrupt):
        prh_extract(config=PipelineConfig.model_validate(parameters["config"]), store=store)
    (record,) = extraction_records(Store(store))
    assert record["status"] == "CANCELLED" and record["failures"] == [refused]
