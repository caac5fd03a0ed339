"""A store backed up and moved as docs/storage.md ("Backing up, moving and restoring a store") says:
copied to a new local folder (new modification times), to S3 with s3fs, from there to another
prefix (new ETags and times) and back to a local folder. Each copy verifies, answers every catalog
query as the original does, keeps every version under ``prh gc --keep-runs 1``, and a rerun of the
same config on it computes nothing; a partial restore is repaired by a rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.cli import main
from flows.pipeline import prh_pipeline
from storage.catalog import connect, query
from storage.store import Store
from storage.verify import verify_store
from tasks.params import PipelineConfig
from tests.flows.test_crash_recovery import CONFIG

pytestmark = pytest.mark.usefixtures("prefect_harness")

QUERIES = {
    "best": "select metric, model_a, model_b, layer_a, layer_b, score, p_value, calibrated_score, ci_low, ci_high "
            "from alignment_best order by all",
    "scores": "select metric, model_a, model_b, layer_a, layer_b, score from alignment order by all",
    "runs": "select run_id, status, alignment_versions, feature_versions, dataset_version from runs order by run_id",
    "models": "select model, feature_version, n_layers, n_samples from models order by all",
    "features": "select model, layer, count(*) as n, sum(list_sum(vector)) as total from features group by all order by all",
    "samples": "select dataset_version, sample_id, text, md5(image) as image from samples order by all",
}


def _answers(url: str) -> dict[str, list[dict]]:
    con = connect(url)
    return {name: query(con, sql).to_pylist() for name, sql in QUERIES.items()}


def _checked_copy(url: str, expected: dict[str, list[dict]], capsys) -> None:
    """``url`` verifies, answers as the original and keeps everything under gc --keep-runs 1."""
    checks = verify_store(Store(url))
    assert checks and all(c.ok for c in checks), [(c.key, c.problems) for c in checks if not c.ok]
    assert _answers(url) == expected
    capsys.readouterr()
    assert main(["gc", "--store", url, "--keep-runs", "1", "--dry-run"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def _rerun(url: str) -> dict:
    result = prh_pipeline(config=PipelineConfig.model_validate(CONFIG), store=url, report=False)
    assert result["status"] == "COMPLETED", result
    return result


def test_a_store_copied_locally_to_s3_to_another_prefix_and_back_is_the_same_store(
        tiny_pipeline_store, new_s3_store_url, tmp_path, capsys):
    import s3fs

    expected = _answers(tiny_pipeline_store)
    assert expected["best"] and expected["features"]
    local = str(tmp_path / "copy")
    shutil.copytree(tiny_pipeline_store, local, copy_function=shutil.copyfile)  # `cp -r`: new modification times
    fs = s3fs.S3FileSystem()  # the AWS_* variables of the loopback endpoint
    first, second = new_s3_store_url(), new_s3_store_url()
    fs.put(tiny_pipeline_store + "/", first.removeprefix("s3://"), recursive=True)
    fs.copy(first.removeprefix("s3://") + "/", second.removeprefix("s3://"), recursive=True)
    back = str(tmp_path / "restored")
    fs.get(second.removeprefix("s3://") + "/", back, recursive=True)
    for url in (local, first, second, back):
        _checked_copy(url, expected, capsys)
    for url in (local, second):  # nothing computed again: versions are found by content, not by times
        result = _rerun(url)
        assert (result["extracted"], result["aligned"]) == ([], 0), result
        assert sorted(result["reused"]) == ["tiny-bert", "tiny-vit"]
        answers = _answers(url)
        assert answers["best"] == expected["best"] and answers["features"] == expected["features"]
        assert len(answers["runs"]) == len(expected["runs"]) + 1


def test_a_partial_restore_is_named_and_a_rerun_computes_only_what_is_missing(tiny_pipeline_store, tmp_path, capsys):
    expected = _answers(tiny_pipeline_store)
    url = str(tmp_path / "partial")
    shutil.copytree(tiny_pipeline_store, url, copy_function=shutil.copyfile)
    (run,) = [json.loads(p.read_text()) for p in (Path(url) / "runs").glob("*.json")]
    (alignment,) = run["alignment_versions"]
    vit = f"features/{run['dataset_version']}/tiny-vit/{run['feature_versions']['tiny-vit']}"
    shutil.rmtree(Path(url) / alignment)  # a run record without its results
    shutil.rmtree(Path(url) / vit)  # and a model's features gone
    capsys.readouterr()
    assert main(["report", "--store", url, "--out", str(tmp_path / "report")]) == 2
    said = capsys.readouterr().err
    assert alignment in said and vit in said and "prh run" in said
    # prh verify had exited 0 here ("all match their manifests"): it checked only the versions there
    assert main(["verify", "--store", url, "--quick"]) == 1
    said = capsys.readouterr().out
    for key in (alignment, vit):
        assert f"MISSING {key}: missing: named by run {run['run_id']}, the latest run with results" in said, said
    assert said.rstrip().endswith("2 named by the latest run missing (`prh run` with its config computes them again)"), said
    assert "DAMAGED" not in said
    result = _rerun(url)
    assert (result["extracted"], result["reused"], result["aligned"]) == (["tiny-vit"], ["tiny-bert"], 1), result
    answers = _answers(url)
    assert answers["best"] == expected["best"] and answers["features"] == expected["features"]
    assert all(c.ok for c in verify_store(Store(url)))
