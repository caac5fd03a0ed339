"""The Makefile's torch install line and its test line (dry runs, `make -n -B`: nothing is installed or run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _dry_run(*args: str) -> list[str]:
    """The commands `make install` would run, whatever is installed already."""
    out = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "install", *args], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if "pip install" in line]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_torch_index_goes_to_the_torch_line_only():
    plain, forced = _dry_run(), _dry_run(f"TORCH_INDEX={CPU_INDEX}")
    torch_line = [i for i, line in enumerate(plain) if "torch==" in line]
    assert len(torch_line) == 1 and len(plain) == len(forced)
    i = torch_line[0]
    assert re.search(r" -q torch==[0-9.]+$", plain[i])  # unset: pip's own index and configuration, as before
    assert forced[i] == f"{plain[i]} --index-url {CPU_INDEX}"
    assert [line for j, line in enumerate(forced) if j != i] == [line for j, line in enumerate(plain) if j != i]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_runs_two_workers_and_passes_pytest_args_on():
    """`make test` runs the suite in two pytest-xdist workers, a file's tests on one; TEST_WORKERS=0
    gives one process, and PYTEST_ARGS still reach pytest (last, so they can narrow or override)."""
    def pytest_line(*args: str) -> str:
        out = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "test", *args], capture_output=True, text=True,
                             check=True).stdout
        return next(line for line in out.splitlines() if "-m pytest" in line)

    assert re.search(r" -m pytest -n 2 --dist loadfile --durations=30 --durations-min=5 *$", pytest_line())
    assert re.search(r" -m pytest -n 0 .* tests/test_makefile\.py -x$",
                     pytest_line("TEST_WORKERS=0", "PYTEST_ARGS=tests/test_makefile.py -x"))
