"""The tasks' retry policy: transient storage and network errors are retried, bad inputs are not;
the model-loading timeout fires inside a task runner's worker thread."""

from __future__ import annotations

import threading
import time

import pytest
from prefect.states import Failed
from prefect.utilities.timeout import timeout

from tasks.retries import ModelLoadTimeout, backoff, is_transient, retry_transient


class ClientError(Exception):  # the shape of botocore's ClientError
    def __init__(self, code: str):
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": 400}}


class EndpointConnectionError(Exception):
    pass


@pytest.mark.parametrize("error, transient", [
    (ConnectionResetError(), True), (TimeoutError(), True), (OSError("I/O error"), True),
    (ModelLoadTimeout(), True), (EndpointConnectionError(), True), (ClientError("SlowDown"), True),
    (FileNotFoundError("x"), False), (PermissionError(), False), (ValueError("bad config"), False),
    (ClientError("NoSuchBucket"), False), (KeyError("x"), False),
])
def test_transient(error, transient):
    assert is_transient(error) is transient
    assert retry_transient(None, None, Failed(data=error)) is transient


def test_transient_cause_chain():
    try:
        try:
            raise ConnectionError("reset")
        except ConnectionError as cause:
            raise RuntimeError("upload failed") from cause
    except RuntimeError as error:
        assert is_transient(error)


def test_an_error_raised_from_none_is_final():
    """"Offline and not cached" arises while handling a connection error; its raiser cut the chain
    (``from None``): retrying cannot help, so it is not retried. An implicit context still counts."""
    try:
        try:
            raise ConnectionError("connection refused")
        except ConnectionError:
            raise ValueError("dataset 'org/x': the hub cannot be reached and it is not in the local cache") from None
    except ValueError as error:
        assert error.__context__ is not None and not is_transient(error)
    try:
        try:
            raise ConnectionError("reset")
        except ConnectionError:
            raise RuntimeError("upload failed")  # noqa: B904 - the implicit context is the point
    except RuntimeError as error:
        assert is_transient(error)


def test_backoff():
    assert backoff(2, 3, factor=3) == [2, 6, 18]
    assert backoff(5, 3) == [5, 10, 20]


def test_model_load_timeout_in_a_worker_thread():
    outcome = []

    def slow_load():
        try:
            with timeout(seconds=0.3, timeout_exc_type=ModelLoadTimeout):
                for _ in range(100):
                    time.sleep(0.05)
            outcome.append("finished")
        except ModelLoadTimeout:
            outcome.append("timed out")

    started = time.monotonic()
    worker = threading.Thread(target=slow_load)
    worker.start()
    worker.join(10)
    assert outcome == ["timed out"] and time.monotonic() - started < 3
