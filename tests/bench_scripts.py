"""Load a script of ``bench/`` as a module (the folder is not a package), for the tests that run
the benchmarks at CI size."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str, module_name: str | None = None) -> ModuleType:
    """``bench/<name>.py`` imported (executed) as the module ``module_name`` (default ``name``)."""
    spec = importlib.util.spec_from_file_location(module_name or name, BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
