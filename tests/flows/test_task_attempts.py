"""What a run leaves to the on-call engineer when its tasks are retried: every attempt's error, in
order, for a model or pair that failed after its retries, and the failed attempts of one that
succeeded on a retry (its record had said nothing of them). A real run: Prefect's temporary API,
Prefect's own retries of the extraction and alignment tasks, a real store and the catalog."""

from __future__ import annotations

import errno
import json
import logging

import pytest

import tasks.align_task as align_task
import tasks.extract_task as extract_task
from flows.pipeline import ZooFailures, prh_pipeline
from storage.catalog import connect, query
from storage.store import Store
from tests.flows.test_pipeline import TINY_BERT, TINY_GPT, TINY_VIT, _config
from tests.flows.test_quiet_errors import Collect

#: What each attempt of tiny-gpt's extraction raises: three transient errors (each retried), the
#: last one ending its task run after its 2 retries.
GPT_ERRORS = [ConnectionResetError("connection reset by peer"), TimeoutError("read timed out after 60 s"),
              OSError(errno.EIO, "Input/output error")]


@pytest.mark.usefixtures("prefect_harness")
def test_the_record_keeps_what_every_attempt_of_a_retried_task_said(tmp_path, monkeypatch):
    """tiny-vit's extraction fails once (a reset connection) and then succeeds; so does the pair
    tiny-vit x tiny-bert (a timeout); tiny-gpt's extraction fails at each of its 3 attempts, each
    time with another error. The record had kept tiny-gpt's last error only, and nothing of the
    attempts retried before a success."""
    calls = {"tiny-vit": 0, "tiny-gpt": 0, "pair": 0}
    real_extract, real_align = extract_task.extract_to_store, align_task.align_to_store

    def flaky_extract(store_url, dataset_manifest, spec, *args, **kwargs):
        if spec.name in calls:
            calls[spec.name] += 1
            if spec.name == "tiny-vit" and calls["tiny-vit"] == 1:
                raise ConnectionResetError("connection reset by peer while reading the weights")
            if spec.name == "tiny-gpt":
                raise GPT_ERRORS[calls["tiny-gpt"] - 1]
        return real_extract(store_url, dataset_manifest, spec, *args, **kwargs)

    def flaky_align(*args, **kwargs):
        calls["pair"] += 1
        if calls["pair"] == 1:
            raise TimeoutError("the store did not answer in 30 s")
        return real_align(*args, **kwargs)

    monkeypatch.setattr(extract_task, "extract_to_store", flaky_extract)
    monkeypatch.setattr(align_task, "align_to_store", flaky_align)
    for retried_task in (extract_task.extract_features, align_task.align_pair):  # no waits between attempts
        monkeypatch.setattr(retried_task, "retry_delay_seconds", 0)
    store = str(tmp_path / "store")
    flow_log = Collect()
    logging.getLogger("prefect.flow_runs").addHandler(flow_log)
    try:
        with pytest.raises(ZooFailures) as raised:
            prh_pipeline(config=_config([TINY_VIT, TINY_BERT, TINY_GPT], permutations=0), store=store, report=False)
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(flow_log)
    assert calls == {"tiny-vit": 2, "tiny-gpt": 3, "pair": 2}  # Prefect retried them as configured

    run = query(connect(Store(store)), "select status, failures, retried, error_attempts from runs").to_pylist()
    assert [r["status"] for r in run] == ["FAILED"]
    failures = json.loads(run[0]["failures"])
    assert [(f["stage"], f["item"]) for f in failures] == [("extract", "tiny-gpt"), ("align", "tiny-vit x tiny-gpt")]
    gpt = failures[0]
    assert gpt["error"] == "OSError: [Errno 5] Input/output error"  # the last attempt's, as before
    assert [(a["attempt"], a["error"]) for a in gpt["attempts"]] == [
        (1, "ConnectionResetError: connection reset by peer"), (2, "TimeoutError: read timed out after 60 s"),
        (3, "OSError: [Errno 5] Input/output error")]
    assert all(isinstance(a["at"], str) and a["at"].startswith("20") for a in gpt["attempts"])
    assert "attempts" not in failures[1]  # skipped: never ran

    retried = json.loads(run[0]["retried"])
    assert [(r["stage"], r["item"], [(a["attempt"], a["error"]) for a in r["attempts"]]) for r in retried] == [
        ("extract", "tiny-vit", [(1, "ConnectionResetError: connection reset by peer while reading the weights")]),
        ("align", "tiny-vit x tiny-bert", [(1, "TimeoutError: the store did not answer in 30 s")])]
    assert run[0]["error_attempts"] is None  # the run's own error is the zoo's, from no retried task

    # the run's error and its log lines say it too
    message = str(raised.value)
    assert ("extract tiny-gpt: OSError: [Errno 5] Input/output error (after 3 attempts; attempt 1: ConnectionResetError: "
            "connection reset by peer; attempt 2: TimeoutError: read timed out after 60 s)") in message
    lines = [r.getMessage() for r in flow_log.records]
    assert ("extract tiny-vit succeeded after 1 failed attempt(s): attempt 1: ConnectionResetError: connection reset by "
            "peer while reading the weights") in lines
    assert [line for line in lines if line.startswith("extract tiny-gpt failed: ")] == [
        "extract tiny-gpt failed: OSError: [Errno 5] Input/output error (after 3 attempts; attempt 1: ConnectionResetError: "
        "connection reset by peer; attempt 2: TimeoutError: read timed out after 60 s)"]


def test_a_failure_of_a_task_that_ran_once_reads_as_before():
    """A failure record without ``attempts`` (a task that failed at once, every record written
    before prh kept them) or with a damaged one reads as its error alone."""
    from flows.pipeline import failure_text

    assert failure_text({"stage": "extract", "item": "m", "error": "ValueError: bad\nconfig"}) == "ValueError: bad config"
    assert failure_text({"stage": "extract", "item": "m", "error": "E", "attempts": "junk"}) == "E"
    assert failure_text({"stage": "extract", "item": "m", "error": "E", "attempts": [{"attempt": 1, "error": "E"}]}) == "E"
    assert failure_text({"stage": "align", "item": "a x b", "error": "B: 2",
                         "attempts": [{"attempt": 1, "error": "A: 1"}, {"attempt": 2, "error": "B: 2"}]}) == \
        "B: 2 (after 2 attempts; attempt 1: A: 1)"


@pytest.mark.usefixtures("prefect_harness")
def test_a_dataset_load_that_fails_at_every_attempt_records_each(tmp_path, monkeypatch):
    """The dataset task is the run's own step: its error ends the run (``error``), and what each
    of its attempts said is the record's ``error_attempts``."""
    import tasks.dataset_task as dataset_task

    errors = iter([ConnectionResetError("reset while listing the table"), TimeoutError("read timed out"),
                   ConnectionResetError("reset again"), TimeoutError("timed out again")])

    def failing(*args, **kwargs):
        raise next(errors)

    monkeypatch.setattr(dataset_task, "_publish_dataset", failing)  # the dataset task's work
    monkeypatch.setattr(dataset_task.load_dataset, "retry_delay_seconds", 0)
    store = str(tmp_path / "store")
    with pytest.raises(TimeoutError):
        prh_pipeline(config=_config([TINY_VIT, TINY_BERT], permutations=0), store=store, report=False)
    run = query(connect(Store(store)), "select status, error, error_attempts from runs").to_pylist()[0]
    assert (run["status"], run["error"]) == ("FAILED", "TimeoutError: timed out again")
    assert [(a["attempt"], a["error"]) for a in json.loads(run["error_attempts"])] == [
        (1, "ConnectionResetError: reset while listing the table"), (2, "TimeoutError: read timed out"),
        (3, "ConnectionResetError: reset again"), (4, "TimeoutError: timed out again")]
