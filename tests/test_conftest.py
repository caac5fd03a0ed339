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
