"""A bad $PRH_TASK_RUNNER set in a deployment's job variables: the flow modules still import (the
``@flow`` decorator builds the runner when a worker imports them, and an error there crashed the run
with "Process exited with status code: 1" and no reason in its Prefect state), and the flow's first
step fails the run naming the variable and what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import flows.pipeline, flows.stages
for flow in (flows.pipeline.prh_pipeline, flows.stages.prh_extract):
    try:
        flow.fn(config=None, store="unused-store-never-opened")
    except ValueError as error:
        print("refused:", error)
"""


def test_a_bad_task_runner_variable_fails_the_flow_not_its_import(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRH_TASK_RUNNER": "thread", "PREFECT_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    refused = [line for line in done.stdout.splitlines() if line.startswith("refused:")]
    assert len(refused) == 2 and all("PRH_TASK_RUNNER='thread': expected one of" in line for line in refused), done.stdout
    assert not (tmp_path / "unused-store-never-opened").exists()
