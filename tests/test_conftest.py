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


def test_files_are_handed_out_longest_first_by_their_estimated_time():
    """tests/xdist_order.py: a file's time is its table entry, else its number of tests times
    SECONDS_PER_TEST; longest first, files of one estimate in their collected order."""
    from tests.xdist_order import SECONDS_PER_TEST, estimated_seconds, longest_first

    assert estimated_seconds("tests/x.py", 7, {}) == 7 * SECONDS_PER_TEST
    assert estimated_seconds("tests/x.py", 7, {"tests/x.py": 3.5}) == 3.5
    units = {"many.py": [1] * 50, "same_a.py": [1] * 2, "one_long.py": [1], "same_b.py": [1] * 2, "listed.py": [1] * 3}
    table = {"one_long.py": 50 * SECONDS_PER_TEST + 1, "listed.py": 0.0}
    assert longest_first(units, table) == ["one_long.py", "many.py", "same_a.py", "same_b.py", "listed.py"]


def test_the_suites_scheduler_is_used_for_loadfile_only():
    """tests/conftest.py gives xdist LongestFileFirst for `--dist loadfile` (`make test`'s), and
    leaves every other mode to xdist."""
    from types import SimpleNamespace

    from tests.conftest import pytest_xdist_make_scheduler
    from tests.xdist_order import LongestFileFirst

    def config(dist: str) -> SimpleNamespace:
        return SimpleNamespace(getoption=lambda name, default=None: {"dist": dist}.get(name, default),
                               getvalue=lambda name: {"tx": ["2*popen"]}[name])

    assert isinstance(pytest_xdist_make_scheduler(config("loadfile"), None), LongestFileFirst)
    assert [pytest_xdist_make_scheduler(config(dist), None) for dist in ("load", "loadscope", "worksteal", "no")] == [None] * 4


def test_a_worker_runs_the_long_file_of_one_test_before_files_of_more_tests(tmp_path):
    """A real xdist run (one worker, so the order it is handed the files is the order they run in):
    xdist alone runs the files most tests first, here the estimated longest first."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "conftest.py").write_text(
        "from tests.xdist_order import LongestFileFirst\n\n"
        "def pytest_xdist_make_scheduler(config, log):\n"
        "    return LongestFileFirst(config, log, table={'test_one_long.py': 60.0})\n")
    for name, n in (("test_many_short.py", 4), ("test_one_long.py", 1), ("test_few.py", 2)):
        (tmp_path / name).write_text("".join(
            f"def test_{i}():\n    with open({str(tmp_path / 'ran.txt')!r}, 'a') as out:\n        out.write({name!r} + '\\n')\n\n"
            for i in range(n)))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "1", "--dist", "loadfile",
                           "--rootdir", str(tmp_path), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = (tmp_path / "ran.txt").read_text().splitlines()
    assert ran == ["test_one_long.py"] + ["test_many_short.py"] * 4 + ["test_few.py"] * 2, ran


def test_every_file_the_order_table_times_exists():
    """A file renamed or removed leaves a stale line in FILE_SECONDS (its new name would be
    estimated per test and could run last again): the table names test files that exist."""
    from tests.xdist_order import FILE_SECONDS

    root = Path(__file__).resolve().parents[1]
    missing = [path for path in FILE_SECONDS if not (root / path).is_file() or not Path(path).name.startswith("test_")]
    assert not missing, missing
