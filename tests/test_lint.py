"""ruff over the code base, with the rules of pyproject.toml's ``[tool.ruff.lint]`` (pyflakes,
syntax errors, pylint's errors, bugbear): an undefined name in an error path that no test reaches
fails here, not in a user's run. ruff is pinned in requirements.lock (``make test`` installs it)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINTED = ("flows", "tasks", "storage", "bench", "tests")



def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``ruff`` of this interpreter's environment, run in the project root (its pyproject.toml);
    no cache folder is written into the checkout. A missing ruff fails (``make test`` installs it):
    a skipped lint would pass unseen."""
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed in this environment (pinned in requirements.lock): run `make install`")
    return subprocess.run([sys.executable, "-m", "ruff", *args, "--no-cache"], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_the_code_base_passes_the_lint():
    done = _ruff("check", "--output-format", "concise", *LINTED)
    assert done.returncode == 0, f"ruff found problems (fix them, or see pyproject.toml's [tool.ruff.lint]):\n" \
                                 f"{done.stdout}{done.stderr}"


def test_the_lint_finds_an_undefined_name_in_an_error_path():
    """The configuration does select pyflakes: a name used only where an error is raised is found."""
    source = ("def check(x: int) -> int:\n"
              "    if x < 0:\n"
              "        raise ValueError(f'x must be >= 0, got {x} ({reason})')\n"
              "    return x\n")
    done = _ruff("check", "--output-format", "concise", "--stdin-filename", "tasks/lint_probe.py", "-", stdin=source)
    assert done.returncode == 1 and "F821 Undefined name `reason`" in done.stdout, done.stdout + done.stderr


def test_the_installed_ruff_is_the_pinned_one():
    """Another ruff version may have other rules and findings: the one installed is requirements.lock's."""
    pinned = re.search(r"^ruff==(\S+)$", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    assert pinned, "requirements.lock pins no ruff"
    version = _ruff("--version").stdout.split()
    assert version[-1:] == [pinned.group(1)], f"ruff {' '.join(version[1:])} is installed, requirements.lock pins " \
                                              f"{pinned.group(1)}: run `make install`"
