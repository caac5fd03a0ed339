"""prh as a user installs it, not as the checkout's editable install runs it: the sdist and the
wheel are built from the files a clone holds (offline: setuptools of this environment), the
wheel is unpacked apart from the checkout and run from another folder.

A wheel user had hit: `prh run` without --config failing at once (`config .../site-packages/
configs/demo.yaml: file not found`: the embedded demo was no file of the wheel), the default store
and Prefect's home (its database and logs) written into site-packages, and an sdist without the
configs, docs, bench, prefect.yaml or most tests (only the top-level test files that setuptools
takes by default, without their conftest)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "storage")


def _git_files(*options: str) -> list[str]:
    """``git ls-files`` of the checkout (paths that exist now), or a skip where this is no git
    checkout (the tests run from an unpacked sdist)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", *options], check=True, capture_output=True).stdout
    return sorted(path for path in listed.decode().split("\0") if path and os.path.lexists(ROOT / path))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The sdist built from a copy of the checkout's files (tracked, and new ones not ignored: no
    build/, .venv or store of this checkout can leak in), then the wheel built from that sdist, as
    ``pip install prh-*.tar.gz`` builds it."""
    files = _git_files("--cached", "--others", "--exclude-standard")
    base = tmp_path_factory.mktemp("packaging")
    source, dist = base / "source", base / "dist"
    for path in files:
        if path == ".venv" or path.startswith(".venv/"):
            continue
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / path, follow_symlinks=False)  # configs/demo.yaml stays a link
    dist.mkdir()
    done = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
                           str(dist)], cwd=source, capture_output=True, text=True)
    assert done.returncode == 0, f"the sdist was not built:\n{done.stderr}"
    (sdist,) = dist.glob("prh-*.tar.gz")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                           "--disable-pip-version-check", "-w", str(dist), str(sdist)], cwd=base, capture_output=True, text=True)
    assert done.returncode == 0, f"the wheel was not built from the sdist:\n{done.stdout}{done.stderr}"
    (wheel,) = dist.glob("prh-*.whl")
    return {"base": base, "sdist": sdist, "wheel": wheel}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_the_wheel_holds_every_file_of_the_packages_and_the_embedded_demo(built):
    """Every file of flows/, tasks/ and storage/ (the .py files that code versions hash: a module
    left out would give an installed prh other versions, or an ImportError; and the data they read,
    the demo config) is in the wheel, and the demo is the one configs/demo.yaml shows users."""
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    package_files = {path for path in _git_files("--cached", "--others", "--exclude-standard")
                     if path.split("/")[0] in PACKAGES and "__pycache__" not in path}
    assert "flows/demo.yaml" in package_files
    assert sorted(package_files - names) == []
    with zipfile.ZipFile(built["wheel"]) as wheel:
        assert wheel.read("flows/demo.yaml") == (ROOT / "configs" / "demo.yaml").read_bytes()
        metadata = wheel.read(f"prh-{_project()['version']}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"prh-{_project()['version']}.dist-info/entry_points.txt").decode()
    assert "Name: prh\n" in metadata and f"Version: {_project()['version']}\n" in metadata
    assert "prh = flows.cli:main" in entry_points


def test_the_wheel_asks_for_the_declared_dependencies_and_offers_the_test_extra(built):
    """An install of one's own gets pyproject.toml's ranges, and ``pip install 'prh[test]'`` the
    suite's tools (moto's server, pytest, pytest-xdist, the locked ruff) with theirs."""
    from email.parser import Parser

    with zipfile.ZipFile(built["wheel"]) as wheel:
        metadata = Parser().parsestr(wheel.read(f"prh-{_project()['version']}.dist-info/METADATA").decode())
    required = sorted(str(Requirement(line)) for line in metadata.get_all("Requires-Dist", []))
    extras = _project().get("optional-dependencies", {})
    expected = sorted([str(Requirement(line)) for line in _project()["dependencies"]]
                      + [str(Requirement(f'{line}; extra == "{extra}"')) for extra, lines in extras.items() for line in lines])
    assert "test" in extras and "test" in metadata.get_all("Provides-Extra", [])
    assert required == expected


def test_the_sdist_holds_every_tracked_file(built):
    """The sdist is the checkout: a user who builds or tests from it has the tests with their
    conftest and helpers, configs, docs, bench, prefect.yaml and what `make` installs from."""
    with tarfile.open(built["sdist"]) as sdist:
        top = f"prh-{_project()['version']}/"
        names = {member.name.removeprefix(top) for member in sdist.getmembers() if not member.isdir()}
    missing = [path for path in _git_files("--cached") if path not in names]
    assert missing == []
    for needed in ("configs/demo.yaml", "tests/conftest.py", "prefect.yaml", "requirements.lock", "docs/config.md"):
        assert needed in names


def test_an_installed_wheel_runs_apart_from_the_checkout(built, tmp_path):
    """The wheel unpacked into a folder of its own (as pip installs it into site-packages), run
    from another folder: its own modules are imported, the embedded demo loads, and the default
    store and Prefect home lie in the user's data folder, not in site-packages."""
    site = tmp_path / "site"
    with zipfile.ZipFile(built["wheel"]) as wheel:
        wheel.extractall(site)
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PRH_STORE", "PREFECT_HOME", "XDG_DATA_HOME", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), HOME=str(home))
    script = """if True:
        import importlib.metadata, json, os, sys
        import flows.cli as cli, storage, tasks
        from tasks.params import load_config
        config = load_config(cli.DEMO_CONFIG)
        cli.configure_environment()
        print(json.dumps({"files": [cli.__file__, tasks.__file__, storage.__file__],
                          "models": [model.name for model in config.models], "metrics": list(config.alignment.metrics),
                          "store": cli.default_store(), "prefect_home": os.environ["PREFECT_HOME"],
                          "version": importlib.metadata.version("prh")}))
    """
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(Path(path).resolve().is_relative_to(site.resolve()) for path in seen["files"]), seen["files"]
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))  # the reference: the YAML itself
    assert seen["models"] == [model["name"] for model in demo["models"]]
    assert seen["metrics"] == demo["alignment"]["metrics"]
    data = home / ".local" / "share" / "prh"
    assert Path(seen["store"]) == data / "store"
    assert Path(seen["prefect_home"]) == data / ".prefect"
    assert seen["version"] == _project()["version"]
    assert sorted(path.name for path in site.iterdir()) == sorted([*PACKAGES, f"prh-{_project()['version']}.dist-info"])

    helped = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--help"], cwd=cwd, env={**env, "COLUMNS": "10000"},
                            capture_output=True, text=True, timeout=120)  # wide: a path is not wrapped at its hyphens
    assert helped.returncode == 0, helped.stderr
    assert f"(default: $PRH_STORE, else {data / 'store'})" in helped.stdout, helped.stdout


def test_the_checkout_keeps_its_store_and_prefect_home(tmp_path):
    """A checkout (a pyproject.toml of the project prh beside the packages) keeps store/ and
    .prefect in itself; another project's pyproject.toml, or none (site-packages), is no checkout."""
    from flows import local_paths

    (tmp_path / "pyproject.toml").write_text('[project]\nname = "prh"\nversion = "9"\n', encoding="utf-8")
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    assert local_paths.checkout_root(tmp_path) == tmp_path
    assert local_paths.default_store_path(tmp_path, env) == str(tmp_path / "store")
    assert local_paths.default_prefect_home(tmp_path, env) == str(tmp_path / ".prefect")
    assert local_paths.default_store_shown(tmp_path, env) == "store/ of this checkout"
    assert local_paths.checkout_root(ROOT) == ROOT

    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "my-lab"\n', encoding="utf-8")
    for root in (other, tmp_path / "site-packages", tmp_path / "bad"):
        if root.name == "bad":
            root.mkdir()
            (root / "pyproject.toml").write_text("[project\n", encoding="utf-8")
        assert local_paths.checkout_root(root) is None
        assert local_paths.default_store_path(root, env) == str(tmp_path / "data" / "prh" / "store")
        assert local_paths.default_store_shown(root, env) == str(tmp_path / "data" / "prh" / "store")
        assert local_paths.default_prefect_home(root, env) == str(tmp_path / "data" / "prh" / ".prefect")


@pytest.mark.parametrize("value", ["", "relative/data"])
def test_an_empty_or_relative_xdg_data_home_is_ignored(value, monkeypatch, tmp_path):
    from flows import local_paths

    monkeypatch.setenv("HOME", str(tmp_path))
    assert local_paths.user_data_root({"XDG_DATA_HOME": value}) == tmp_path / ".local" / "share" / "prh"


def _imported_top_level(package: str) -> set[str]:
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_imported_distribution_is_declared_or_installed_without_dependencies():
    """What the packages import comes from a declared dependency or one of its own (pulled in by
    it), or from requirements-nodeps.txt (the demo's weights and EfficientNet code, installed
    --no-deps: their declared dependencies would pull sentence-transformers and another torch)."""
    import importlib.metadata

    declared = [Requirement(line) for line in _project()["dependencies"]]
    pulled: set[str] = set()
    todo = [canonicalize_name(req.name) for req in declared]
    while todo:
        name = todo.pop()
        if name in pulled:
            continue
        pulled.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    nodeps = {canonicalize_name(line.split("==")[0]) for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    distributions = importlib.metadata.packages_distributions()
    modules = set().union(*(_imported_top_level(package) for package in PACKAGES)) - set(sys.stdlib_module_names) - set(PACKAGES)
    undeclared = {module: distributions.get(module) for module in modules
                  if not {canonicalize_name(d) for d in distributions.get(module, [])} & (pulled | nodeps)}
    assert undeclared == {}
