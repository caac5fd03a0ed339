"""Each built-in metric's version names the alignment code its numbers can run (tasks.metric_code)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from storage.versioning import PROJECT_ROOT, code_version
from tasks.align_task import ALIGNMENT_CODE, metric_code_version
from tasks.metric_code import _imported_modules, unreachable_files
from tasks.metric_plugins import is_builtin
from tasks.metrics import METRICS, bootstrap_ci, calibrate, layer_matrix

BUILTINS = sorted(name for name in METRICS if is_builtin(name))


def _left_out(name: str) -> set[str]:
    engines = {type(METRICS[builtin].engine).__module__ for builtin in BUILTINS}
    return set(unreachable_files(METRICS[name].engine, ALIGNMENT_CODE, engines))


def _files_run(name: str) -> set[str]:
    """The project files of ``tasks/metrics`` whose code runs while ``name`` scores, calibrates
    and bootstraps two small representations (a profile hook on every Python call)."""
    g = np.random.default_rng(0)
    z = g.standard_normal((40, 3))
    xs = [(z @ g.standard_normal((3, 12)) + 0.3 * g.standard_normal((40, 12))).astype(np.float32) for _ in range(2)]
    ys = [(z @ g.standard_normal((3, 11)) + 0.3 * g.standard_normal((40, 11))).astype(np.float32) for _ in range(3)]
    package = PROJECT_ROOT / "tasks" / "metrics"
    seen: set[str] = set()

    def hook(frame, event, arg) -> None:
        path = Path(frame.f_code.co_filename)
        if path.parent == package:
            seen.add(f"tasks/metrics/{path.name}")

    # SciPy's modules that RSA and the calibration import on first use (rsa.py, calibration.py):
    # imported under the hook, the first test to need them spent ~20 s (~90 s on a loaded
    # machine) in profiled import code. They are no file of tasks/metrics, so importing them first
    # changes nothing the hook records; the project's files still run, and are seen, below.
    import scipy.spatial.distance  # noqa: F401
    import scipy.stats  # noqa: F401

    sys.setprofile(hook)
    try:
        with warnings.catch_warnings():  # 3 resamples of 20 rows may be degenerate: the warning's code still runs
            warnings.simplefilter("ignore", RuntimeWarning)
            layer_matrix(name, xs, ys)
            calibrate(name, xs, ys, permutations=3, seed=1)
            bootstrap_ci(name, xs, ys, n_boot=3, seed=1)
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize("name", BUILTINS)
def test_a_metric_runs_no_module_its_version_leaves_out(name: str) -> None:
    """Independent of the import analysis: every module of the package that runs while the
    metric computes (its matrix, null and bootstrap) is hashed into its version. A module left
    out that did run would let a change to it copy stale results."""
    run = _files_run(name)
    engine_file = f"tasks/metrics/{type(METRICS[name].engine).__module__.rsplit('.', 1)[-1]}.py"
    assert engine_file in run  # the hook sees the engine's code
    assert not run & _left_out(name), sorted(run & _left_out(name))


def test_an_engine_change_is_a_new_version_of_its_own_metrics_only() -> None:
    """CKNNA's module is in no other metric's version, the k-NN metrics' module in theirs only,
    their bitmask tables (knn_hits) in theirs and CKNNA's; the code every metric runs through is
    in all."""
    for name in BUILTINS:
        left_out = _left_out(name)
        assert ("tasks/metrics/cknna.py" in left_out) == (name != "cknna"), name
        assert ("tasks/metrics/knn_metrics.py" in left_out) == (METRICS[name].engine.__class__.__name__ != "KnnEngine"), name
        assert not left_out & {"tasks/metrics/api.py", "tasks/metrics/representation.py", "tasks/metrics/calibration.py",
                               "tasks/metrics/bootstrap.py", "tasks/metrics/builtin.py", "tasks/metrics/__init__.py"}, name
    assert "tasks/metrics/knn_hits.py" not in _left_out("cknna") | _left_out("mutual_knn")
    assert "tasks/metrics/knn_hits.py" in _left_out("cka")
    assert metric_code_version("cknna") != metric_code_version("mutual_knn") != metric_code_version("cka")



def test_the_pipelines_memory_estimate_ties_no_metric_to_the_kernel_engines() -> None:
    """The pipeline's memory estimate asks the engine (``Engine.quadratic_memory``) instead of
    importing CkaEngine and RsaEngine for an ``isinstance``: that import had put the CKA and RSA
    modules (and the HSIC and triangle modules they import) in every metric's version, so an edit
    to any of them computed the k-NN metrics and SVCCA again. They stay in their own metrics'."""
    kernel = {"tasks/metrics/kernel_metrics.py", "tasks/metrics/hsic.py", "tasks/metrics/triangle.py"}
    for name in ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "jaccard_knn", "svcca", "procrustes",
                 "linear_regression"):
        assert kernel | {"tasks/metrics/rsa.py"} <= set(_left_out(name)), name
    for name in ("cka", "unbiased_cka", "cka_rbf_median", "cknna"):
        assert not kernel & set(_left_out(name)), name
        assert "tasks/metrics/rsa.py" in _left_out(name), name
    assert "tasks/metrics/rsa.py" not in _left_out("rsa_spearman")

def test_a_user_metric_is_versioned_by_the_whole_alignment_code(lower_metric: str) -> None:
    """A user metric may call into any module of the package: its version keeps them all."""
    assert metric_code_version(lower_metric) == code_version(*ALIGNMENT_CODE)


def test_every_form_of_import_is_followed(tmp_path: Path) -> None:
    """Absolute imports of the package's modules, anywhere in a file (a function's local import
    too), count; names that are not modules of the package do not."""
    source = tmp_path / "outside.py"
    source.write_text("import tasks.metrics.rsa\n"
                      "from tasks.metrics.cknna import CknnaEngine\n"
                      "from tasks.metrics import knn_hits, get_metric\n"
                      "def f():\n"
                      "    from tasks.metrics.subspace_metrics import register\n")
    modules = {path.stem for path in (PROJECT_ROOT / "tasks" / "metrics").glob("*.py")}
    assert _imported_modules(source, modules) == {"rsa", "cknna", "knn_hits", "subspace_metrics"}


def test_a_module_read_off_the_package_is_followed(tmp_path: Path) -> None:
    """``metrics.cknna`` after ``from tasks import metrics`` (or ``tasks.metrics.knn_hits`` after
    ``import tasks.metrics``) runs a module that builtin.py's import loaded, with no import
    naming it: it counts as one, else an edit to it would copy stale results of that code."""
    source = tmp_path / "outside.py"
    source.write_text("import tasks.metrics\n"
                      "from tasks import metrics as m\n"
                      "def f(rep):\n"
                      "    return m.cknna.CHUNK_ELEMENTS, tasks.metrics.knn_hits.MAX_GROUP, rep.layers\n")
    modules = {path.stem for path in (PROJECT_ROOT / "tasks" / "metrics").glob("*.py")}
    assert _imported_modules(source, modules) == {"cknna", "knn_hits"}


def test_relative_imports_are_read_where_the_file_lies() -> None:
    """``from .metrics.cknna import`` in ``tasks/alignment.py`` and ``from ..metrics import
    knn_hits`` inside the package import modules of the package; ``from ..grid_fdr import`` does not."""
    from tasks.metric_code import _modules_named

    modules = {path.stem for path in (PROJECT_ROOT / "tasks" / "metrics").glob("*.py")}
    assert _modules_named("from .metrics.cknna import CknnaEngine\nfrom . import metrics\n"
                          "x = metrics.subspace_metrics\n", "tasks.alignment", modules) == {"cknna", "subspace_metrics"}
    assert _modules_named("from ..metrics import knn_hits\nfrom ..grid_fdr import bh_fdr\nfrom .gram import batched_device\n",
                          "tasks.metrics.rsa", modules) == {"knn_hits", "gram"}
    assert _modules_named("from . import knn_metrics\n", "tasks.metrics.__init__", modules) == {"knn_metrics"}


def test_each_built_in_is_registered_by_code_in_its_version() -> None:
    """builtin.py calls registering functions of engine modules (``subspace_metrics.register``)
    that its imports do not follow: the call that registers each built-in (its engine, bounds,
    defaults, chance level) must come from a file its version names, so that a registration
    of one metric moved or copied into another's module cannot leave it out."""
    from tasks.metrics import builtin, registry

    callers: dict[str, str] = {}

    def hook(frame, event, arg) -> None:
        if event == "call" and frame.f_code is registry.register_metric.__code__:
            path = Path(frame.f_back.f_code.co_filename)
            callers[frame.f_locals["name"]] = path.relative_to(PROJECT_ROOT).as_posix()

    sys.setprofile(hook)
    try:
        builtin._register_all()
    finally:
        sys.setprofile(None)
        builtin.register_builtins()  # the shipped MetricSpec objects back
    assert set(BUILTINS) <= set(callers)
    for name in BUILTINS:
        assert callers[name] not in _left_out(name), (name, callers[name])


def test_reading_imports_survives_the_ast_race_of_threads_parsing_at_once(monkeypatch) -> None:
    """CPython 3.11's ``ast.parse`` fails with ``SystemError: AST constructor recursion depth
    mismatch`` when another thread parses at the same moment: a Dask run's pairs read their metric
    code versions in threads and failed so (4 of 6 runs of test_dask's pipeline under load). The
    imports are read with ``storage.versioning.parse_source``, which orders and repeats parses."""
    import ast

    from tasks.metric_code import _modules_named

    real, calls = ast.parse, []
    source = "from tasks.metrics import cknna\n"

    def racing(text, *args, **kwargs):
        if text == source:
            calls.append(1)
            if len(calls) <= 2:  # as when another thread parsed meanwhile
                raise SystemError("AST constructor recursion depth mismatch (before=42, after=75)")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", racing)
    modules = {path.stem for path in (PROJECT_ROOT / "tasks" / "metrics").glob("*.py")}
    assert _modules_named(source, "tasks.alignment", modules) == {"cknna"} and len(calls) == 3
