"""pyproject.toml's declared dependency ranges and requirements.lock's exact pins agree: every
direct dependency, and every tool of the ``test`` extra (what the suite needs beside them), is
pinned in the lock and its range admits the pinned version, the versions seen failing are outside
the ranges, and every upper bound carries a comment saying why (the tested ranges: README.md,
"Installing into an existing environment")."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _declared() -> list[Requirement]:
    """pyproject.toml's ``[project] dependencies``."""
    return [Requirement(line) for line in _project()["dependencies"]]


def _extras() -> dict[str, list[Requirement]]:
    """pyproject.toml's ``[project.optional-dependencies]``: extra -> its requirements."""
    return {extra: [Requirement(line) for line in lines]
            for extra, lines in _project().get("optional-dependencies", {}).items()}


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


#: What the suite runs with beside prh's dependencies (requirements.lock pins them for `make test`):
#: distribution -> the extras of it the suite needs (moto's server: the loopback S3 endpoint).
TEST_TOOLS = {"moto": {"server"}, "pytest": set(), "pytest-xdist": set(), "ruff": set()}


def test_the_test_extra_holds_the_tools_the_suite_runs_with():
    """``pip install 'prh[test]'`` gives an environment of one's own what the suite needs."""
    test = {canonicalize_name(req.name): req.extras for req in _extras().get("test", [])}
    missing = {name: needed for name, needed in TEST_TOOLS.items() if name not in test or not needed <= test[name]}
    assert not missing, f"pyproject.toml's `test` extra lacks (distribution: its extras): {missing}"


def test_every_extra_admits_the_locked_versions():
    locked = _locked()
    outside = {f"{extra}: {req}": locked.get(canonicalize_name(req.name)) for extra, reqs in _extras().items()
               for req in reqs if canonicalize_name(req.name) not in locked
               or not req.specifier.contains(locked[canonicalize_name(req.name)], prereleases=True)}
    assert not outside, f"extra's range -> locked version (None: not in requirements.lock): {outside}"


def test_the_test_extra_admits_only_the_locked_ruff():
    """tests/test_lint.py fails on any ruff but requirements.lock's (another version has other rules
    and findings): the extra may not offer pip another one."""
    (ruff,) = [req for req in _extras().get("test", []) if canonicalize_name(req.name) == "ruff"] or [None]
    assert ruff is not None, "the `test` extra has no ruff"
    pinned = _locked()["ruff"]
    assert str(ruff.specifier) == f"=={pinned}", f"the `test` extra asks for {ruff}; requirements.lock pins ruff=={pinned}"


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
    "safetensors": ["0.7.0"],  # transformers 5.20 and later do not import their models beside it
    "pyyaml": ["5.4.1"],  # no build on Python 3.11 (Cython 3)
    # 11.0: no styles under FORCE_COLOR=1; 12.6, 13.9.4: the tests' terminal (TTY_COMPATIBLE) is no terminal to them
    "rich": ["11.0.0", "12.6.0", "13.9.4"],
    # no import beside Prefect 3.9 (TaskRunInput); 0.2 requires Prefect 2
    "prefect-dask": ["0.2.10", "0.3.0", "0.3.2", "0.3.3", "0.3.4", "0.3.5"],
    # the test extra: an S3 server that ignores If-None-Match and overwrites (exclusive create not exclusive)
    "moto": ["5.0.0", "5.0.14"],
}


def test_versions_seen_failing_are_outside_the_declared_ranges():
    declared = {canonicalize_name(req.name): req.specifier
                for req in [*_declared(), *(req for reqs in _extras().values() for req in reqs)]}
    unknown = sorted(set(BROKEN) - set(declared))
    assert not unknown, f"BROKEN names what pyproject.toml does not declare: {unknown}"
    admitted = {(name, v) for name, versions in BROKEN.items() for v in versions if declared[name].contains(v)}
    assert not admitted, f"declared ranges admit versions known to fail: {sorted(admitted)}"


def _explained(lines: list[str], i: int) -> bool:
    """Line ``i`` ends with a comment, or the line above it is one."""
    comment = lines[i].partition("#")[2]
    return bool(comment.strip()) or (i > 0 and lines[i - 1].startswith("#"))


#: Specifier operators that hold back an upgrade.
UPPER = ("<", "==", "~=", "!=")


def test_every_upper_bound_says_why():
    """A ``<`` bound (or an exact pin) holds back an upgrade: its line in pyproject.toml, or the
    comment right above it, names the behaviour that broke; in the dependencies and in every extra."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = re.search(r"^\[project\]\n(.*?)(?=^\[tool\.)", text, re.S | re.M).group(1)
    blocks = dict(re.findall(r"^([\w-]+) = \[\n(.*?)^\]", project, re.S | re.M))
    assert "dependencies" in blocks and set(_extras()) <= set(blocks), f"lists read in pyproject.toml: {sorted(blocks)}"
    unexplained = []
    for body in blocks.values():
        lines = [line.strip() for line in body.splitlines()]
        unexplained += [line for i, line in enumerate(lines)
                        if any(op in line.partition("#")[0] for op in UPPER) and not _explained(lines, i)]
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
