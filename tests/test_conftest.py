"""The suite's own set-up (tests/conftest.py) under `make test`'s two pytest-xdist workers."""

from __future__ import annotations

import os
from pathlib import Path


def test_an_xdist_worker_has_a_prefect_home_of_its_own():
    """Each worker runs its own Prefect harness and `prh run` children: its PREFECT_HOME is its own
    folder (``.prefect-test/gw0``...), not the controller's, which both workers inherit. In one
    process (plain `pytest`) the home is left as set."""
    worker, home = os.environ.get("PYTEST_XDIST_WORKER"), Path(os.environ["PREFECT_HOME"])
    assert worker is None or (home.name == worker and home.parent.name != worker), (worker, home)


def test_flows_under_the_harness_end_without_waiting_for_prefects_heartbeat(prefect_harness):
    """Prefect's flow-run heartbeat thread sleeps in whole seconds and each flow run joins it at its
    end: ~1 s per in-process flow run, a third of test_pipeline.py's time. The harness turns it
    off; what a flow run reads is what its engine decides on."""
    from prefect import flow
    from prefect.settings import get_current_settings

    @flow
    def heartbeat_of_this_run() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    assert heartbeat_of_this_run() is None
