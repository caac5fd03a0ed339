"""The Makefile's torch install line (dry run, `make -n -B`: nothing is installed)."""

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
