"""A user's own metric in the pipeline: registered by a module named in $PRH_METRIC_MODULES."""

from __future__ import annotations

import importlib
import os
import py_compile
import subprocess
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.align_task import alignment_version
import tasks.metrics.origin as origin_state
from tasks.metric_plugins import METRIC_MODULES_ENV, load_metric_modules, metric_module_names, metric_source
from tasks.metrics import METRICS, layer_matrix, register_metric
from tasks.params import AlignmentParams, ConfigError, PipelineConfig

PLUGIN = '''
import torch
from tasks.metrics import register_metric


def {name}(x, y, topk=3):
    """The mean inner product of paired rows, times topk (to see the parameter arrive)."""
    return float((x * y).sum(dim=1).mean()) * topk


register_metric("{name}", {name}, bounds=(-100.0, 100.0), symmetric=True, defaults={{"topk": 3}}, overwrite=True)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin module on sys.path registering a metric of a fresh name; yields (module, metric, file)."""
    metric = f"user_metric_{uuid.uuid4().hex[:8]}"
    module = f"prh_test_plugin_{uuid.uuid4().hex[:8]}"
    source = tmp_path / f"{module}.py"
    source.write_text(PLUGIN.format(name=metric))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module, metric, source
    METRICS._specs.pop(metric, None)
    sys.modules.pop(module, None)
    origin_state._READ.pop(module, None)


def test_a_config_names_a_metric_its_module_registers(plugin, monkeypatch):
    module, metric, _ = plugin
    with pytest.raises(ValueError, match=f"unknown metric '{metric}'"):
        AlignmentParams(metrics=[metric])
    monkeypatch.setenv(METRIC_MODULES_ENV, f" {module}, ")
    assert metric_module_names() == (module,)
    params = AlignmentParams(metrics=[metric, "mutual_knn"], topk=7)
    assert params.metric_params(metric) == {"topk": 7}  # the pipeline parameters its defaults name
    assert params.sample_requirements()[f"alignment.topk=7 ({metric}, mutual_knn) needs topk + 2 ="] == 9


def test_its_alignment_version_follows_its_source(plugin, monkeypatch):
    module, metric, source = plugin
    monkeypatch.setenv(METRIC_MODULES_ENV, module)
    params, builtin = AlignmentParams(metrics=[metric]), AlignmentParams(metrics=["mutual_knn"])
    manifest = {"catalog": {"feature_version": "f1"}}
    first, builtin_first = alignment_version(manifest, manifest, params), alignment_version(manifest, manifest, builtin)
    assert metric_source(metric).startswith("sha256:") and metric_source("mutual_knn") is None
    assert alignment_version(manifest, manifest, params) == first
    source.write_text(source.read_text().replace("* topk", "* topk * 2"))
    # this process still computes with the code it imported: its numbers keep that code's version
    assert alignment_version(manifest, manifest, params) == first
    sys.modules.pop(module)  # a new process imports the edited file
    origin_state._READ.pop(module)
    load_metric_modules()
    second = alignment_version(manifest, manifest, params)
    assert second != first
    assert alignment_version(manifest, manifest, builtin) == builtin_first  # pairs without the user metric keep theirs
    # the registration counts too: other defaults (or bounds) are another computation
    spec = METRICS[metric]
    register_metric(metric, spec.engine.fn, bounds=(-1.0, 1.0), symmetric=True, defaults={"topk": 3}, overwrite=True)
    assert alignment_version(manifest, manifest, params) != second


def test_a_builtin_name_registered_again_is_a_user_metric(monkeypatch):
    """A registration under a built-in's name (the built-in engine with other settings, or another
    function) is not the built-in: it gets a source digest and its defaults' parameters."""
    from tasks.metrics import BUILTIN_SPECS

    original = METRICS["cka"]
    try:
        register_metric("cka", original.engine, bounds=(-1.0, 1.0), symmetric=True,
                        defaults={**original.defaults, "unbiased": True}, overwrite=True)
        assert metric_source("cka") is not None
        # a user metric takes every pipeline parameter its defaults name (fea241f), over its own defaults
        assert AlignmentParams(metrics=["cka"]).metric_params("cka") == {"kernel_metric": "ip", "rbf_sigma": 1.0,
                                                                         "unbiased": True}
    finally:
        METRICS._specs["cka"] = BUILTIN_SPECS["cka"]
    assert metric_source("cka") is None


def test_a_module_failing_halfway_reports_the_same_failure_again(tmp_path, monkeypatch):
    name = f"prh_test_half_{uuid.uuid4().hex[:8]}"
    metric = f"half_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        f"from tasks.metrics import register_metric\nregister_metric({metric!r}, lambda x, y: 0.0)\nimport no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(METRIC_MODULES_ENV, name)
    for _ in range(2):
        with pytest.raises(ValueError, match=rf"ModuleNotFoundError.*at .*{name}\.py:3"):
            load_metric_modules()
        assert metric not in METRICS


def test_the_ui_form_offers_user_metrics(plugin, monkeypatch):
    module, metric, _ = plugin
    monkeypatch.setenv(METRIC_MODULES_ENV, module)
    schema = PipelineConfig.model_json_schema()
    enum = schema["$defs"]["AlignmentParams"]["properties"]["metrics"]["items"]["enum"]
    assert metric in enum and "mutual_knn" in enum


def test_a_module_that_cannot_be_imported_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(METRIC_MODULES_ENV, "no_such_prh_module_xyz")
    with pytest.raises(ValueError, match=rf"\${METRIC_MODULES_ENV}: cannot import 'no_such_prh_module_xyz' \(ModuleNotFoundError"):
        load_metric_modules()
    config = tmp_path / "zoo.yaml"
    config.write_text("alignment: {metrics: [mutual_knn]}\n")
    with pytest.raises(ConfigError, match="no_such_prh_module_xyz"):
        from tasks.params import load_config

        load_config(config)


def test_a_module_beside_the_config_but_not_on_sys_path_is_explained(monkeypatch, tmp_path):
    """``prh`` is a console script: the directory it runs in is not on its sys.path, so a package
    ``mylab/`` there is not found; the error says where Python looks and what to set."""
    package = f"prh_test_lab_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "metrics.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != str(tmp_path)])
    monkeypatch.setenv(METRIC_MODULES_ENV, f"{package}.metrics")
    with pytest.raises(ValueError) as error:
        load_metric_modules()
    message = str(error.value)
    assert f"No module named '{package}'" in message
    assert f"{tmp_path / package} is in the current directory" in message and f"PYTHONPATH={tmp_path}" in message
    # found (on the path), but a module it imports is missing: that is the module's own failure, no path hint
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as error:
        load_metric_modules()
    assert "No module named 'no_such_dependency_xyz'" in str(error.value) and "PYTHONPATH" not in str(error.value)
    assert f"{package}/metrics.py:1" in str(error.value)
    sys.modules.pop(package, None)


def test_a_process_without_the_metric_modules_says_so(plugin, monkeypatch):
    """A Dask worker gets the run's config unpickled, never checked: where its environment lacks
    $PRH_METRIC_MODULES the user metric is not registered there, and the pair's version says why
    (it had been `unknown metric 'x'; valid metrics: ...` alone)."""
    from tasks.metrics import UnknownMetricError

    module, metric, _ = plugin
    monkeypatch.setenv(METRIC_MODULES_ENV, module)
    params = AlignmentParams(metrics=[metric, "mutual_knn"])  # checked where the run began
    monkeypatch.delenv(METRIC_MODULES_ENV)  # the worker's environment
    METRICS._specs.pop(metric)  # the worker never imported the module
    with pytest.raises(UnknownMetricError) as error:
        alignment_version({"catalog": {"feature_version": "f1"}}, {"catalog": {"feature_version": "f1"}}, params)
    message = str(error.value)
    assert f"unknown metric '{metric}' in this process" in message
    assert f"${METRIC_MODULES_ENV} is unset here" in message and "Dask worker" in message


def test_the_pages_quote_what_a_metric_author_meets(monkeypatch):
    """docs/metrics.md and docs/orchestration.md quote the refusal of a reload without
    ``overwrite=True`` and the error of a process without $PRH_METRIC_MODULES: the quotes are the
    messages the code gives, and the pages say where the module must be importable."""
    from tasks.metric_plugins import unregistered_here

    root = Path(__file__).resolve().parents[2]
    metrics_page = " ".join((root / "docs" / "metrics.md").read_text(encoding="utf-8").split())
    orchestration = " ".join((root / "docs" / "orchestration.md").read_text(encoding="utf-8").split())
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    name = f"doc_metric_{uuid.uuid4().hex[:8]}"
    register_metric(name, lambda x, y: 0.0)
    try:
        with pytest.raises(ValueError) as refused:
            register_metric(name, lambda x, y: 0.0)  # what a reload without overwrite=True does
    finally:
        METRICS._specs.pop(name, None)
    assert str(refused.value).replace(name, "dcor") in metrics_page
    monkeypatch.delenv(METRIC_MODULES_ENV, raising=False)
    message = str(unregistered_here("dcor"))
    quoted = "unknown metric 'dcor' in this process (host ...): $PRH_METRIC_MODULES is unset here"
    assert message.startswith(quoted.split(" (host")[0] + " (host ") and quoted.split("): ")[1] in message
    for page in (metrics_page, orchestration):
        assert quoted in page and "PYTHONPATH" in page
    assert "PYTHONPATH" in readme.split("### Your own metric", 1)[1].split("###", 1)[0]


@pytest.mark.usefixtures("prefect_harness")
def test_the_pipeline_scores_a_user_metric(plugin, monkeypatch, tmp_path):
    from flows.pipeline import prh_pipeline
    from storage import layout
    from storage.catalog import connect, query
    from tests.flows.test_pipeline import TINY_BERT, TINY_VIT, _stored_layers
    from storage.store import Store

    module, metric, _ = plugin
    monkeypatch.setenv(METRIC_MODULES_ENV, module)
    config = PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": 24, "seed": 0, "image_size": 32}, "models": [TINY_VIT, TINY_BERT],
        "alignment": {"metrics": [metric], "topk": 4, "permutations": 0, "outlier_quantile": 1.0}})
    store = str(tmp_path / "store")
    summary = prh_pipeline(config=config, store=store, report=False)
    assert summary["status"] == "COMPLETED"
    target = Store(store)
    key = lambda model: layout.features_key(summary["dataset_version"], model, summary["feature_versions"][model])  # noqa: E731
    ids_a, xs = _stored_layers(target, target.manifest(key("tiny-vit")))
    ids_b, ys = _stored_layers(target, target.manifest(key("tiny-bert")))
    assert ids_a == ids_b
    with connect(store) as con:
        rows = query(con, f"select layer_a, layer_b, score from alignment where metric = '{metric}'").to_pylist()
    assert len(rows) == len(xs) * len(ys)
    for row in rows:  # q = 1: no clamp; rows L2-normalised; the metric is 4 x mean paired inner product
        x = xs[row["layer_a"]].astype(np.float64)
        y = ys[row["layer_b"]].astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        assert row["score"] == pytest.approx(4 * float((x * y).sum(axis=1).mean()), abs=1e-5)



MANIFEST = {"catalog": {"feature_version": "f1"}}


def test_a_reloaded_module_gives_the_version_of_its_new_code(plugin, monkeypatch):
    """``importlib.reload`` (IPython's autoreload) runs the edited file in this process: its
    numbers get the new file's version (the first import's digest was kept)."""
    module, metric, source = plugin
    monkeypatch.setenv(METRIC_MODULES_ENV, module)
    load_metric_modules()
    params = AlignmentParams(metrics=[metric])
    first = alignment_version(MANIFEST, MANIFEST, params)
    importlib.reload(sys.modules[module])  # the same file again: the same version
    load_metric_modules()
    assert alignment_version(MANIFEST, MANIFEST, params) == first
    source.write_text(source.read_text().replace("* topk", "* topk * 1000"))
    importlib.reload(sys.modules[module])
    assert METRICS[metric].engine.fn(torch.ones(2, 1), torch.ones(2, 1)) == 3000.0  # it computes the new code
    assert alignment_version(MANIFEST, MANIFEST, params) != first  # without load_metric_modules too
    load_metric_modules()
    assert alignment_version(MANIFEST, MANIFEST, params) != first


NOTEBOOK = """
import numpy as np
from tasks.metrics import register_metric
from tasks.metric_plugins import metric_source
FACTOR = 1
def helper(x, y):
    return float((x * y).sum(1).mean())
def nb_metric(x, y):
    return helper(x, y) * FACTOR
register_metric("nb_metric", nb_metric, overwrite=True)
print(metric_source("nb_metric"))
def nb_metric(x, y):          # the cell edited and run again
    return helper(x, y) * FACTOR * 100
register_metric("nb_metric", nb_metric, overwrite=True)
print(metric_source("nb_metric"))
FACTOR = 2                    # a module-level value it reads
print(metric_source("nb_metric"))
def helper(x, y):             # a function of the notebook it calls
    return float((x - y).sum(1).mean())
print(metric_source("nb_metric"))
register_metric("nb_metric", lambda x, y: 0.0, overwrite=True)
print(metric_source("nb_metric"))
register_metric("nb_metric", lambda x, y: 1.0, overwrite=True)
print(metric_source("nb_metric"))
"""


def test_a_metric_of_a_notebook_has_the_digest_of_its_code():
    """In ``__main__`` without a source file (a REPL, a notebook, ``python -``) the digest covers
    the function's code: each edit gives another digest, the same code the same digest in any
    process (hash seeds differ)."""
    runs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        env.pop(METRIC_MODULES_ENV, None)
        done = subprocess.run([sys.executable, "-"], input=NOTEBOOK, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout.split())
    assert runs[0] == runs[1]
    digests = runs[0]
    assert len(digests) == 6 and all(d.startswith("sha256:") for d in digests)
    assert len(set(digests)) == 6, digests


def test_a_metric_defined_without_a_source_file_follows_its_code(monkeypatch):
    """The same, in this process: a module object without a file (what ``__main__`` of a notebook is)."""
    name = f"prh_test_nofile_{uuid.uuid4().hex[:8]}"
    metric = f"nofile_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    code = ("from tasks.metrics import register_metric\n"
            "def m(x, y, topk=3):\n    return float((x * y).sum(1).mean()) * {factor}\n"
            f"register_metric({metric!r}, m, overwrite=True)\n")
    digests = []
    try:
        for factor in (1, 1000, 1):
            exec(code.format(factor=factor), module.__dict__)
            digests.append(metric_source(metric))
    finally:
        METRICS._specs.pop(metric, None)
        origin_state._READ.pop(name, None)
    assert digests[0] != digests[1] and digests[0] == digests[2]


def test_a_sourceless_module_follows_its_compiled_code(tmp_path, monkeypatch):
    """A plugin installed as ``.pyc`` only: another build of it gives another version."""
    name = f"prh_test_pyc_{uuid.uuid4().hex[:8]}"
    metric = f"pyc_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(METRIC_MODULES_ENV, name)
    versions = []
    try:
        for factor in (1, 1000):
            source = tmp_path / f"{name}.py"
            source.write_text(PLUGIN.format(name=metric).replace("* topk", f"* topk * {factor}"))
            py_compile.compile(str(source), cfile=str(tmp_path / f"{name}.pyc"))
            source.unlink()
            importlib.invalidate_caches()
            sys.modules.pop(name, None)  # a new process
            origin_state._READ.pop(name, None)
            load_metric_modules()
            assert METRICS[metric].engine.fn(torch.ones(2, 1), torch.ones(2, 1)) == 3.0 * factor
            versions.append(alignment_version(MANIFEST, MANIFEST, AlignmentParams(metrics=[metric])))
    finally:
        METRICS._specs.pop(metric, None)
        sys.modules.pop(name, None)
        origin_state._READ.pop(name, None)
    assert versions[0] != versions[1]


def test_builtin_versions_do_not_move():
    """Built-ins have no source digest, whatever ran before (reloads, register_builtins again)."""
    from tasks.metrics import BUILTIN_SPECS, register_builtins

    params = AlignmentParams(metrics=["mutual_knn", "cka"])
    before = alignment_version(MANIFEST, MANIFEST, params)
    register_builtins()
    assert all(metric_source(name) is None for name in BUILTIN_SPECS)
    assert alignment_version(MANIFEST, MANIFEST, params) == before


def test_a_module_failing_after_overwriting_a_builtin_puts_the_builtin_back(tmp_path, monkeypatch):
    from tasks.metrics import BUILTIN_SPECS

    name = f"prh_test_halfbuiltin_{uuid.uuid4().hex[:8]}"
    added = f"half_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from tasks.metrics import register_metric\n"
        "register_metric('cka', lambda x, y: 42.0, overwrite=True)\n"
        f"register_metric({added!r}, lambda x, y: 0.0)\n"
        "raise RuntimeError('half-way failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(METRIC_MODULES_ENV, name)
    order = list(METRICS)
    try:
        with pytest.raises(ValueError, match=rf"RuntimeError: half-way failure\) at .*{name}\.py:4"):
            load_metric_modules()
    finally:
        restored = METRICS["cka"] is BUILTIN_SPECS["cka"]
        METRICS._specs["cka"] = BUILTIN_SPECS["cka"]
        METRICS._specs.pop(added, None)
    assert restored and list(METRICS) == order and metric_source("cka") is None


@pytest.mark.parametrize("body, line, error", [
    ("from tasks.metrics import register_metric\nregister_metric('mutual_knn', lambda x, y: 2.0)\n", 2,
     "'mutual_knn' is already registered \\(one of prh's own metrics: give yours another name, or pass overwrite=True"),
    ("from tasks.metrics import register_metric\n\nregister_metric('syntax', lambda x, y: 0.0\n", 3, "SyntaxError"),
    ("import numpy as np\n\nSCALE = np.float64('not a number')\n", 3, "ValueError"),
])
def test_an_import_failure_is_located_in_the_module_itself(tmp_path, monkeypatch, body, line, error):
    """The file and line are the plugin's own (not prh's registry nor importlib's frames)."""
    name = f"prh_test_where_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(METRIC_MODULES_ENV, name)
    with pytest.raises(ValueError, match=error) as caught:
        load_metric_modules()
    message = str(caught.value)
    assert f") at {tmp_path / name}.py:{line}; it names" in message and message.count(" at /") == 1, message
    monkeypatch.setenv(METRIC_MODULES_ENV, "no_such_prh_module_xyz")
    with pytest.raises(ValueError) as caught:
        load_metric_modules()
    assert " at " not in str(caught.value) and "frozen" not in str(caught.value)


def test_a_module_edited_after_its_import_keeps_the_version_of_the_code_that_runs(plugin):
    """The plugin hunt: a notebook imported the module, its file was then edited without a reload,
    and the version was read from the edited file (taken on the first version asked for): a fresh
    process with that file got the same version and reused numbers of the old code. The files are
    read when the metric is registered, which is when the code that runs was read."""
    module, metric, source = plugin
    original = source.read_text()
    importlib.import_module(module)  # not through load_metric_modules: no digest asked for yet
    source.write_text(original.replace("* topk", "* topk * 2"))
    edited_but_not_run = metric_source(metric)
    importlib.reload(sys.modules[module])  # now the edited code runs
    assert metric_source(metric) != edited_but_not_run
    source.write_text(original)
    importlib.reload(sys.modules[module])
    assert metric_source(metric) == edited_but_not_run


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A package of the user's on sys.path (``write(files)``: its modules' text, ``__init__`` empty;
    ``fresh()``: its modules forgotten, as in a new process); yields (package, write, fresh)."""
    package = f"prh_test_lab_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(files: dict[str, str]) -> None:
        for name, text in files.items():
            (tmp_path / package / f"{name}.py").write_text(text)

    def fresh() -> None:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
            origin_state._READ.pop(name, None)
        importlib.invalidate_caches()

    yield package, write, fresh
    fresh()


def _lab_metric(package: str, metric: str) -> str:
    """A metrics module of ``package`` registering ``metric``, which calls ``kernels.scaled``."""
    return ("from tasks.metrics import register_metric\n"
            f"from {package}.kernels import scaled\n"
            "def m(x, y):\n    return scaled(float((x * y).sum(1).mean()))\n"
            f"register_metric({metric!r}, m, overwrite=True)\n")


def test_a_helper_module_of_the_metrics_package_is_part_of_its_version(lab):
    """The plugin hunt: ``mylab/metrics.py`` calling ``mylab/kernels.py``; doubling a constant of
    kernels.py doubled the metric and left its version unchanged (stale numbers reused)."""
    package, write, fresh = lab
    metric = f"lab_metric_{uuid.uuid4().hex[:8]}"
    versions = []
    try:
        for scale in ("1.0", "2.0"):
            write({"metrics": _lab_metric(package, metric), "kernels": f"SCALE = {scale}\ndef scaled(v):\n    return v * SCALE\n"})
            fresh()  # a new process
            importlib.import_module(f"{package}.metrics")
            versions.append(metric_source(metric))
    finally:
        METRICS._specs.pop(metric, None)
    assert versions[0] != versions[1]
    # an installed package's modules are versioned by its distribution, not read
    import tasks.metrics.origin as origin

    assert origin.source_snapshot(np.linalg.norm) == {"numpy": f"installed: numpy=={np.__version__}"}


CALLABLE = '''
from tasks.metrics import register_metric


class Scaled:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x, y):
        return float((x * y).sum(1).mean()) * self.factor

    def halved(self, x, y):
        return self(x, y) / 2
'''


def test_a_callable_objects_settings_are_part_of_its_version(tmp_path, monkeypatch):
    """The plugin hunt: ``Scaled(1.0)`` and ``Scaled(3.0)`` (a callable instance, or its bound
    method) got one version: only the class's name was hashed."""
    name = f"prh_test_callable_{uuid.uuid4().hex[:8]}"
    metric = f"callable_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(CALLABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        versions = {}
        for label, fn in (("one", module.Scaled(1.0)), ("three", module.Scaled(3.0)), ("one again", module.Scaled(1.0)),
                          ("halved one", module.Scaled(1.0).halved), ("halved three", module.Scaled(3.0).halved),
                          ("weights", module.Scaled(np.ones(3))), ("other weights", module.Scaled(np.arange(3.0))),
                          ("tensor", module.Scaled(torch.ones(3))), ("other tensor", module.Scaled(torch.zeros(3)))):
            register_metric(metric, fn, overwrite=True)
            versions[label] = metric_source(metric)
    finally:
        METRICS._specs.pop(metric, None)
        sys.modules.pop(name, None)
        origin_state._READ.pop(name, None)
    assert versions["one"] == versions["one again"]
    assert len(set(versions.values())) == len(versions) - 1, versions


def test_an_import_failure_in_a_helper_module_is_located_there(lab, monkeypatch):
    """The plugin hunt: ``lab.metrics`` importing ``lab.kernels``, which divides by zero at its line
    4, was reported at the import line of lab/metrics.py."""
    package, write, _ = lab
    write({"kernels": "import math\n\n\nSCALE = 1 / 0\n", "metrics": f"from {package} import kernels\n"})
    monkeypatch.setenv(METRIC_MODULES_ENV, f"{package}.metrics")
    with pytest.raises(ValueError, match="ZeroDivisionError") as caught:
        load_metric_modules()
    assert f"{package}/kernels.py:4; it names" in str(caught.value), str(caught.value)


LAZY = '''
import torch
from tasks.metrics import register_metric
from tasks.metrics.engine import FunctionEngine


class Projected:
    def __init__(self, width):
        self.width = width
        self._proj = None

    def __call__(self, x, y):
        if self._proj is None:  # built on the first call
            self._proj = torch.ones(x.shape[1], self.width, dtype=x.dtype)
        return float(((x @ self._proj) * (y @ self._proj)).sum(1).mean())


class CachingEngine(FunctionEngine):
    def __init__(self):
        super().__init__(lambda x, y: float((x * y).sum(1).mean()))
        self.seen = {}

    def encode(self, rep, params):
        self.seen[len(self.seen)] = rep.n
        return super().encode(rep, params)
'''


def test_a_metrics_version_does_not_change_with_its_use(tmp_path, monkeypatch):
    """The review: a callable object building a projection on its first call, or an engine filling a
    cache, got another version after its first use (their state was hashed when a version was
    asked for): pairs after the first of a run were filed under other versions. The state is the
    one registered."""
    name = f"prh_test_lazy_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(LAZY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    x = [np.random.default_rng(0).normal(size=(12, 3))]
    try:
        for metric, registration in (("test_lazy_fn", dict(fn=module.Projected(2))), ("test_lazy_engine", dict(engine=module.CachingEngine()))):
            register_metric(metric, **registration, overwrite=True)
            before = metric_source(metric)
            layer_matrix(metric, x, x)
            assert metric_source(metric) == before, metric
        register_metric("test_lazy_fn", module.Projected(3), overwrite=True)  # other settings: another version
        assert metric_source("test_lazy_fn") != before
    finally:
        for metric in ("test_lazy_fn", "test_lazy_engine"):
            METRICS._specs.pop(metric, None)
        sys.modules.pop(name, None)
        origin_state._READ.pop(name, None)


def test_a_version_does_not_depend_on_which_other_modules_of_the_package_were_imported(lab):
    """The review: the snapshot covered the package's modules that happened to be imported (an
    unrelated ``lab.viz`` imported first gave the same code another version)."""
    package, write, fresh = lab
    metric = f"lab_metric_{uuid.uuid4().hex[:8]}"
    write({"viz": "COLOURS = 3\n", "kernels": "def scaled(v):\n    return v * 2\n", "metrics": _lab_metric(package, metric)})
    versions = []
    try:
        for first in (None, f"{package}.viz"):
            fresh()
            if first:
                importlib.import_module(first)
            importlib.import_module(f"{package}.metrics")
            versions.append((metric_source(metric), sorted(METRICS[metric].sources)))
    finally:
        METRICS._specs.pop(metric, None)
    assert versions[0] == versions[1]
    assert versions[0][1] == [f"{package}.kernels", f"{package}.metrics"]


TUNED = '''
import math

from tasks.metrics import register_metric


def _bounds(params):
    """[-scale, scale] on inner products; an RBF kernel's score has no bound."""
    return (-params["scale"], params["scale"]) if params["kernel_metric"] == "ip" else (-math.inf, math.inf)


def {name}(x, y, kernel_metric="ip", scale=2.0, offset=0.0, weights=(), table=None):
    """scale x the mean inner product of paired rows (kernel_metric is only read by the bounds)."""
    return float((x * y).sum(dim=1).mean()) * scale + offset


register_metric("{name}", {name}, bounds=_bounds, symmetric=True, overwrite=True,
                defaults={{"kernel_metric": "ip", "scale": 3.0, "offset": 0.5, "weights": (1, 2), "table": object()}})
'''


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """A plugin whose metric has its own (non-pipeline) defaults and bounds that depend on a
    pipeline parameter; yields (module, metric)."""
    metric = f"tuned_metric_{uuid.uuid4().hex[:8]}"
    module = f"prh_test_tuned_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(TUNED.format(name=metric))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module, metric
    METRICS._specs.pop(metric, None)
    sys.modules.pop(module, None)
    origin_state._READ.pop(module, None)


def test_a_user_metric_is_asked_for_its_own_defaults(tuned, monkeypatch):
    """The review: a user metric's request named only the pipeline parameters of its defaults, so the
    catalog's ``params`` showed ``{}`` for a metric run with its own defaults (scale 3, not its
    function's 2). Its plain defaults are named now, the pipeline's values over them; a default that
    is no JSON value (an object) is passed as registered and not named."""
    module, metric = tuned
    monkeypatch.setenv(METRIC_MODULES_ENV, module)
    params = AlignmentParams(metrics=[metric, "cknna"], kernel_metric="rbf")
    assert params.metric_params(metric) == {"kernel_metric": "rbf", "scale": 3.0, "offset": 0.5, "weights": (1, 2)}
    assert params.metric_params("cknna") == {"topk": 10}  # the built-ins' as before


@pytest.mark.usefixtures("prefect_harness")
def test_the_catalog_names_the_parameters_a_user_metric_ran_with(tuned, monkeypatch, tmp_path):
    """End to end: a run's rows name the user metric's own defaults (replaying a row with its
    ``params`` gives its score, as docs/queries.md shows), and the run's table calls its calibrated
    score unscaled where its bounds at the run's parameters have no upper side (they had been read at
    its defaults: kernel_metric 'ip', bounded)."""
    import json

    from flows.cli import summary_notes
    from flows.pipeline import prh_pipeline
    from storage import layout
    from storage.catalog import connect, query
    from storage.store import Store
    from tasks.metrics import score
    from tests.flows.test_pipeline import TINY_BERT, TINY_VIT, _stored_layers

    module, metric = tuned
    monkeypatch.setenv(METRIC_MODULES_ENV, module)
    config = PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": 24, "seed": 0, "image_size": 32}, "models": [TINY_VIT, TINY_BERT],
        "alignment": {"metrics": [metric], "kernel_metric": "rbf", "permutations": 0, "outlier_quantile": 1.0}})
    store = str(tmp_path / "store")
    summary = prh_pipeline(config=config, store=store, report=False)
    assert summary["status"] == "COMPLETED"
    with connect(store) as con:
        rows = query(con, f"select params, layer_a, layer_b, score from alignment where metric = '{metric}' "
                          "order by layer_a, layer_b").to_pylist()
        best = query(con, f"select params from alignment_best where metric = '{metric}'").to_pylist()
    shown = {"kernel_metric": "rbf", "offset": 0.5, "scale": 3.0, "weights": [1, 2]}
    assert {json.dumps(r["params"]) for r in best + rows} == {json.dumps(json.dumps(shown, sort_keys=True))}
    target = Store(store)
    key = lambda model: layout.features_key(summary["dataset_version"], model, summary["feature_versions"][model])  # noqa: E731
    _, xs = _stored_layers(target, target.manifest(key("tiny-vit")))
    _, ys = _stored_layers(target, target.manifest(key("tiny-bert")))
    row = rows[-1]
    x, y = (torch.from_numpy(v[layer].astype(np.float64)) for v, layer in ((xs, row["layer_a"]), (ys, row["layer_b"])))
    x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    assert score(metric, x, y, **json.loads(row["params"])) == pytest.approx(row["score"], abs=1e-5)
    assert row["score"] == pytest.approx(3.0 * float((x * y).sum(dim=1).mean()) + 0.5, abs=1e-5)
    notes = summary_notes(summary["best"])
    assert any(note.startswith(f"{metric}: no bound on the better side") for note in notes), notes
