"""The same config on two fresh stores stores the same bytes: every Parquet file (samples, features,
layer-pair scores, best pairs) byte for byte, and manifests that differ only in their times; listing
the zoo's models and the metrics in another order changes nothing stored (an alignment manifest
lists its metrics in name order: it had kept the order of the run that published it); a rerun computes nothing,
and an alignment version deleted from the store is computed again to the same bytes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.pipeline import prh_pipeline
from tasks.params import PipelineConfig
from tests.flows.test_pipeline import TINY_BERT, TINY_GPT, TINY_VIT

#: Manifest fields that say when and how long, not what (``seconds`` also in ``catalog``).
TIMES = ("published_at", "seconds")


def _config(models: list[dict], metrics: list[str]) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "dataset": {"kind": "openmoji", "n": 24, "seed": 0, "image_size": 32},
        "models": models,
        "alignment": {"metrics": metrics, "topk": 4, "permutations": 9, "bootstrap": 10, "seed": 7},
    })


def _stored(root: Path) -> dict[str, bytes]:
    """The store's versioned files (datasets, features, alignment) by path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for top in ("datasets", "features", "alignment")
            for p in sorted((root / top).rglob("*")) if p.is_file()}


def _without_times(manifest: dict) -> dict:
    out = {k: v for k, v in manifest.items() if k not in TIMES}
    if isinstance(out.get("catalog"), dict):
        out["catalog"] = {k: v for k, v in out["catalog"].items() if k not in TIMES}
    return out


def _assert_same(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert a.keys() == b.keys()
    assert sum(name.endswith("scores.parquet") for name in a) == 2
    assert sum(name.startswith("features/") and name.endswith(".parquet") for name in a) == 3 + 3 + 4  # layers of the three models
    for name in a:
        if name.endswith("manifest.json"):
            assert _without_times(json.loads(a[name])) == _without_times(json.loads(b[name])), name
        else:
            assert a[name] == b[name], name


@pytest.mark.usefixtures("prefect_harness")
def test_runs_store_the_same_bytes_whatever_the_store_the_zoo_order_or_a_deleted_version(tmp_path):
    models, metrics = [TINY_VIT, TINY_BERT, TINY_GPT], ["mutual_knn", "cka", "cknna"]
    first = prh_pipeline(config=_config(models, metrics), store=str(tmp_path / "first"))
    reordered = prh_pipeline(config=_config(models[::-1], metrics[::-1]), store=str(tmp_path / "reordered"))
    assert first["status"] == reordered["status"] == "COMPLETED"
    assert (first["aligned"], first["metrics_computed"]) == (reordered["aligned"], reordered["metrics_computed"]) == (2, 6)
    stored = _stored(tmp_path / "first")
    _assert_same(stored, _stored(tmp_path / "reordered"))

    # a rerun computes nothing; one alignment version deleted is computed again, alone, to the same bytes
    rerun = prh_pipeline(config=_config(models, metrics), store=str(tmp_path / "first"))
    assert (rerun["extracted"], rerun["aligned"], rerun["metrics_computed"]) == ([], 0, 0)
    deleted = next(Path(name).parent for name in stored if name.endswith("scores.parquet"))
    shutil.rmtree(tmp_path / "first" / deleted)
    again = prh_pipeline(config=_config(models, metrics), store=str(tmp_path / "first"))
    assert (again["extracted"], again["aligned"], again["metrics_computed"], again["metrics_copied"]) == ([], 1, 3, 0)
    _assert_same(stored, _stored(tmp_path / "first"))
