"""Shared test fixtures: a real S3 endpoint on loopback (moto's server mode) and one Prefect
test harness (a real temporary API server) per session."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from flows.cli import configure_environment
from storage.loopback_s3 import loopback_s3

ROOT = Path(__file__).resolve().parent.parent
# Tests keep their own Prefect home and never reach a model hub; the rest is the CLI's set-up.
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect-test"))
# Under pytest-xdist (`make test` runs two workers) each worker has its own harness and its own home
# below that one (gw0, gw1; the workers inherit the controller's PREFECT_HOME): the servers and runs
# of both rewrite files there at once otherwise (memo_store.toml).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and Path(os.environ["PREFECT_HOME"]).name != _WORKER:
    os.environ["PREFECT_HOME"] = str(Path(os.environ["PREFECT_HOME"]) / _WORKER)
    # made here with its parent: Prefect makes only the last folder (on a fresh clone it warned
    # "Failed to create the Prefect home directory" for gw0 and gw1)
    Path(os.environ["PREFECT_HOME"]).mkdir(mode=0o700, parents=True, exist_ok=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
configure_environment()
# The suite shares its cores with the servers and subprocesses it starts: idle threads sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # lower case: libgomp reads it in every locale (flows/omp_policy.py)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (`make test`): the files longest first (tests/xdist_order.py), so the
    suite's few long end-to-end files no longer run last on one worker while the other waits."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from tests.xdist_order import LongestFileFirst

    return LongestFileFirst(config, log)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a real HTTP endpoint), with AWS env vars pointing at it."""
    with loopback_s3("prh-test-key-id", "prh-test-secret-do-not-log") as env:
        yield env["AWS_ENDPOINT_URL"]


@pytest.fixture(scope="session")
def new_s3_store_url(s3_endpoint):
    """A function that makes a fresh bucket on the loopback S3 server and returns
    ``s3://bucket/store``: for stores shared by a module's tests (``s3_store_url`` is one a test)."""
    import s3fs

    def make() -> str:
        bucket = f"prh-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(bucket)
        return f"s3://{bucket}/store"

    return make


@pytest.fixture
def s3_store_url(new_s3_store_url) -> str:
    """A fresh bucket on the loopback S3 server; returns ``s3://bucket/prefix``."""
    return new_s3_store_url()


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path) -> str:
    """The same test against a local folder and against the loopback S3 endpoint."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_store_url")


@pytest.fixture(scope="session")
def prefect_harness():
    """One real temporary Prefect API server for the whole test session.

    Prefect's flow-run heartbeat is off in this process (``heartbeat_frequency`` None): its thread
    sleeps in whole seconds and every flow run joins it at its end, ~1 s per flow run (10 empty
    flows: 11 s with it, 1 s without), over a hundred in-process runs in the suite. prh relies on
    its own signs of life (storage/runs.py), not on Prefect's heartbeats; the runs the suite starts
    as subprocesses (`prh run`, deployments' workers) keep Prefect's default."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    timeout = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
    with prefect_test_harness(server_startup_timeout=timeout), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session")
def tiny_pipeline_store(tmp_path_factory, prefect_harness) -> str:
    """The URL of a store holding one uninterrupted pipeline run on tiny random models
    (``tests.flows.test_crash_recovery.CONFIG``: N=40, a ViT and a BERT, mutual k-NN and CKA, 9
    permutations, 10 resamples), made once per session for the tests that only read it: never
    write to it. Under pytest-xdist the workers share it (``make test`` hands out whole files, and
    its readers are in two files): the first to need it runs the pipeline under a lock in the
    session's temporary folder, the others wait for it and read it."""
    import fcntl

    from flows.pipeline import prh_pipeline
    from tasks.params import PipelineConfig
    from tests.flows.test_crash_recovery import CONFIG

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/, this session's own
    folder = shared / "tiny-pipeline-run"
    folder.mkdir(exist_ok=True)
    store, done = folder / "store", folder / "completed"
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(store, ignore_errors=True)  # what a worker that failed here left
            result = prh_pipeline(config=PipelineConfig.model_validate(CONFIG), store=str(store), report=False)
            assert result["status"] == "COMPLETED", result
            done.write_text(str(store))
    return str(store)
