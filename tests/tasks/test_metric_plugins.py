"""A user's own metric in the pipeline: registered by a module named in $PRH_METRIC_MODULES."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from tasks.align_task import alignment_version
import tasks.metric_plugins as plugin_state
from tasks.metric_plugins import METRIC_MODULES_ENV, load_metric_modules, metric_module_names, metric_source
from tasks.metrics import METRICS, register_metric
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
    plugin_state._IMPORTED.pop(module, None)


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
    plugin_state._IMPORTED.pop(module)
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
        assert AlignmentParams(metrics=["cka"]).metric_params("cka") == {"kernel_metric": "ip"}
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

