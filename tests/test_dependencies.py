"""pyproject.toml's declared dependency ranges and requirements.lock's exact pins agree: every
direct dependency is pinned in the lock and its range admits the pinned version, the versions seen
failing are outside the ranges, and every upper bound carries a comment saying why (the tested
ranges: README.md, "Installing into an existing environment")."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> list[Requirement]:
    """pyproject.toml's ``[project] dependencies``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(line) for line in project["dependencies"]]


def _locked() -> dict[str, str]:
    """requirements.lock's pins: canonical name -> version."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_declared_range_admits_the_locked_version():
    locked = _locked()
    outside = {str(req): locked.get(canonicalize_name(req.name)) for req in _declared()
               if canonicalize_name(req.name) not in locked
               or not req.specifier.contains(locked[canonicalize_name(req.name)], prereleases=True)}
    assert not outside, f"declared range -> locked version (None: not in requirements.lock): {outside}"


#: Versions seen failing with prh (README.md, "Installing into an existing environment"): the
#: declared ranges must keep pip from choosing them.
BROKEN = {
    "transformers": ["4.57.6", "5.5.0"],  # no ViTImageProcessorPil; torchvision needed
    "duckdb": ["1.4.5", "1.5.0", "1.5.6"],  # the SQL guard's parser assumptions; no to_arrow_reader (1.4)
    # a fixed-size list column holding a null (a NULL vector) is not written to Parquet ("Lists
    # with non-zero length null components are not supported"); 25.0.0 writes it
    "pyarrow": ["20.0.0", "21.0.0", "23.0.0", "24.0.0"],
    "numpy": ["1.26.4"],  # pyarrow 26, the locked version, does not import beside it
    # 3.0: no import with pydantic 2.14; 3.1-3.7.4: the API server answers 500 beside FastAPI 0.150
    "prefect": ["3.0.11", "3.1.15", "3.4.25", "3.6.29", "3.7.4"],
    "s3fs": ["2024.6.1", "2024.10.0"],  # pipe_file(mode="create") overwrites: exclusive create is not exclusive
    "fsspec": ["2024.6.1", "2024.10.0"],  # what those s3fs pin
    # their botocore (1.31.17, 1.34.162, 1.35.1) has no IfNoneMatch on PutObject: s3fs drops it and overwrites
    "aiobotocore": ["2.5.4", "2.13.3", "2.14.0"],
}


def test_versions_seen_failing_are_outside_the_declared_ranges():
    declared = {canonicalize_name(req.name): req.specifier for req in _declared()}
    admitted = {(name, v) for name, versions in BROKEN.items() for v in versions if declared[name].contains(v)}
    assert not admitted, f"declared ranges admit versions known to fail: {sorted(admitted)}"


def _explained(lines: list[str], i: int) -> bool:
    """Line ``i`` ends with a comment, or the line above it is one."""
    comment = lines[i].partition("#")[2]
    return bool(comment.strip()) or (i > 0 and lines[i - 1].startswith("#"))


def test_every_upper_bound_says_why():
    """A ``<`` bound holds back an upgrade: its line in pyproject.toml, or the comment right above
    it, names the behaviour that broke."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    body = re.search(r"^dependencies = \[\n(.*?)^\]", text, re.S | re.M).group(1)
    lines = [line.strip() for line in body.splitlines()]
    unexplained = [line for i, line in enumerate(lines) if "<" in line.partition("#")[0] and not _explained(lines, i)]
    assert not unexplained, f"upper bounds without a comment saying why: {unexplained}"


def test_the_makefile_installs_the_locked_torch():
    """``make`` installs torch on a line of its own before the lock (its build follows
    TORCH_INDEX): that line's version is the one requirements.lock pins, else the lock's install
    right after it replaces the torch just installed (a download of several GB, another build)
    or fails on the clash."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    installed = re.findall(r"pip install [^\n]*?\btorch==([0-9][^\s$]*)", makefile)
    assert installed, "no `pip install ... torch==VERSION` line in the Makefile"
    assert set(installed) == {_locked()["torch"]}, \
        f"the Makefile installs torch {sorted(set(installed))}, requirements.lock pins {_locked()['torch']}"
