"""The two stages of prh-staged in-process (Prefect's temporary API): the alignment stage needs
only the store, not the dataset's source. The deployments themselves: test_deployment.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pyarrow.parquet as pq
import pytest

from flows.pipeline import prh_pipeline
from flows.stages import prh_extract, prh_staged, published_dataset_version
from storage import layout
from storage.catalog import connect, query
from storage.runs import alive_key
from storage.store import Store
from tasks.dataset_task import DatasetNotStored
from tests.flows.test_pipeline import N, TINY_BERT, TINY_VIT, _config


def _assert_extraction_figures(root: Path, record: dict, lines: list[str]) -> None:
    """An extraction stage's record (of two models on an empty store) says where its time, memory
    and bytes went, as a pipeline run's: its stages' seconds, each model's extraction as its
    manifest timed it, its peak memory, the bytes of every file of the versions it published (on
    disk, manifests aside) and the bytes of the samples table it read (the dataset task's check
    and each model's extraction: at most the file each); its log ends with them. The record had
    none of them."""
    stages, order = record["stage_seconds"], ["setup", "dataset", "extract", "publish"]  # the stage's order (the record sorts keys)
    assert sorted(stages) == sorted(order) and min(stages.values()) >= 0
    timed = {json.loads(p.read_text())["catalog"]["model"]: json.loads(p.read_text())["catalog"]["seconds"]
             for p in (root / "features").rglob("manifest.json")}
    assert record["task_seconds"]["extract"] == timed and set(timed) == {"tiny-vit", "tiny-bert"}
    assert all(seconds > 0 for seconds in timed.values())
    assert 50 < record["peak_rss_mb"] and record["peak_gpu_mb"] is None
    published = [p for prefix in ("datasets", "features") for p in (root / prefix).rglob("*")
                 if p.is_file() and (p.parent / "manifest.json").exists() and p.name != "manifest.json"]
    assert record["bytes_published"] == sum(p.stat().st_size for p in published) > 0
    (samples,) = (root / "datasets").rglob("samples.parquet")
    assert 0 < record["bytes_read"] <= 3 * samples.stat().st_size
    ended = [line for line in lines if line.startswith(f"run {record['run_id']}: stages: ")]
    assert ended == [f"run {record['run_id']}: stages: " + ", ".join(f"{k} {stages[k]:.1f} s" for k in order)
                     + f"; peak memory {record['peak_rss_mb']:.0f} MiB; published {record['bytes_published'] / 1e6:.1f} MB"
                     + f"; read {record['bytes_read'] / 1e6:.1f} MB"]


def _path_config(path: str):
    config = _config([TINY_VIT, TINY_BERT])
    return config.model_copy(update={"dataset": config.dataset.model_validate({"kind": "path", "path": path})})


@pytest.mark.usefixtures("prefect_harness")
def test_the_alignment_stage_reads_the_extracted_dataset_from_the_store_not_its_source(tmp_path, caplog):
    """prh-extract on the "GPU box" publishes a table dataset and the features and records the
    dataset version, and where its time, memory and bytes went, as a pipeline run's record does;
    the table then is gone (the "CPU box" has no such path); the alignment stage
    with that dataset_version, as prh-staged runs it, completes with the numbers of a one-process
    run. Without dataset_version it loads the source, as before (and fails: the path is gone)."""
    from tasks.data import openmoji

    data = tmp_path / "gpu-box"
    data.mkdir()
    table = openmoji.build_openmoji_pairs(n=N, seed=0, image_size=32).select(["sample_id", "text", "image"])
    pq.write_table(table, data / "pairs.parquet")
    config = _path_config(str(data / "pairs.parquet"))
    store = str(tmp_path / "shared-store")

    with caplog.at_level(logging.INFO):
        state = prh_extract(config=config, store=store, return_state=True)
    summary = state.result()
    version = published_dataset_version(state.state_details.flow_run_id)  # what prh-staged passes on
    assert version == summary["dataset_version"] and summary["extracted"] == ["tiny-bert", "tiny-vit"]
    run_id = str(state.state_details.flow_run_id)  # its record: what prh gc waits for and keeps
    record = Store(store).read_json(layout.extraction_key(run_id))
    assert (record["flow"], record["status"], record["dataset_version"], record["feature_versions"], record["failures"]) == \
           ("prh-extract", "COMPLETED", version, summary["feature_versions"], [])
    assert record["started_at"] <= record["finished_at"] and not Store(store).exists(alive_key(run_id))
    assert not Store(store).exists(layout.run_key(run_id))  # not a pipeline run: the runs view lists none
    _assert_extraction_figures(Path(store), record, [r.getMessage() for r in caplog.records])

    data.rename(tmp_path / "elsewhere")  # the CPU box has no such file
    staged = prh_pipeline(config=config, store=store, report=False, extract_missing=False, dataset_version=version)
    assert staged["status"] == "COMPLETED" and staged["dataset_version"] == version
    assert (staged["extracted"], staged["reused"], staged["aligned"]) == ([], ["tiny-bert", "tiny-vit"], 1)
    with pytest.raises(ValueError, match="does not exist"):  # standalone: the source is read, as before
        prh_pipeline(config=config, store=store, report=False, extract_missing=False)

    (tmp_path / "elsewhere").rename(data)
    whole = prh_pipeline(config=config, store=str(tmp_path / "one-process"), report=False)
    assert whole["dataset_version"] == version and whole["feature_versions"] == staged["feature_versions"]
    assert len(staged["best"]) == 3 and staged["best"] == whole["best"]  # every score, layer pair, chance level, p
    scores = "select metric, layer_a, layer_b, score from alignment order by all"
    assert query(connect(store), scores).to_pylist() == query(connect(str(tmp_path / "one-process")), scores).to_pylist()


@pytest.mark.usefixtures("prefect_harness")
def test_a_model_the_extraction_stage_did_not_publish_fails_the_alignment_stage_naming_it(tmp_path):
    """A model that cannot be extracted does not stop the staged night: the extraction stage
    publishes the others and the dataset and fails naming it; the alignment stage, with that
    dataset version, aligns what is stored, records the model as not extracted (never extracting
    on the CPU box) and fails. The stages as prh-staged runs them, in-process (through the
    deployments and workers, a staged run that fails: test_deployment.py)."""
    from flows.pipeline import ZooFailures

    store = str(tmp_path / "store")
    bad = {"name": "bad-vit", "loader": "hf", "id": "nonexistent-org/nonexistent-model", "modality": "vision"}
    config = _config([TINY_VIT, bad, TINY_BERT], permutations=0)
    state = prh_extract(config=config, store=store, return_state=True)
    assert state.is_failed()
    version = published_dataset_version(state.state_details.flow_run_id)
    record = Store(store).read_json(layout.extraction_key(str(state.state_details.flow_run_id)))
    assert (record["status"], record["dataset_version"], sorted(record["feature_versions"])) == ("FAILED", version, ["tiny-bert", "tiny-vit"])
    with pytest.raises(ZooFailures):
        prh_pipeline(config=config, store=store, report=False, extract_missing=False, dataset_version=version)
    record, = query(connect(store), "select extracted, reused, status, failures from runs").to_pylist()
    assert (record["extracted"], record["reused"], record["status"]) == ([], ["tiny-bert", "tiny-vit"], "FAILED")
    failures = {(f["stage"], f["item"]): f["error"] for f in json.loads(record["failures"])}
    assert set(failures) == {("extract", "bad-vit"), ("align", "bad-vit x tiny-bert")}
    assert "the extraction stage did not publish them" in failures["extract", "bad-vit"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_dataset_version_the_store_does_not_hold_fails_the_run_naming_it(tmp_path):
    store = str(tmp_path / "store")
    with pytest.raises(DatasetNotStored, match="dataset version 0123456789abcdef is not in the store "):
        prh_pipeline(config=_path_config(str(tmp_path / "absent.parquet")), store=store, report=False,
                     extract_missing=False, dataset_version="0123456789abcdef")
    run, = query(connect(store), "select status, error from runs").to_pylist()
    assert run["status"] == "FAILED" and "0123456789abcdef is not in the store" in run["error"] and str(tmp_path) in run["error"]


@pytest.mark.usefixtures("prefect_harness")
def test_an_extraction_stage_that_fails_records_why(tmp_path):
    store = str(tmp_path / "store")
    table = tmp_path / "pairs.csv"  # passes the stage's first check (a path not there fails before any record)
    table.write_text("image,text\nabsent.png,a cat\n", encoding="utf-8")
    state = prh_extract(config=_path_config(str(table)), store=store, return_state=True)
    assert state.is_failed()
    record = Store(store).read_json(layout.extraction_key(str(state.state_details.flow_run_id)))
    assert record["status"] == "FAILED" and "absent.png" in record["error"] and record["finished_at"]
    assert "dataset_version" not in record


STOPPED_EXTRACTION_CHILD = """
import signal, sys
import flows.stages
from prefect.exceptions import TerminationSignal
from tasks.params import PipelineConfig
collect = flows.stages.collect_features
def stopped(extracting, failures, features=None, progress=None):
    collect(dict(list(extracting.items())[:1]), failures, features, progress)  # the first model's features, for real
    raise TerminationSignal(signal.SIGTERM)  # then a cancel from the UI (the worker's SIGTERM)
flows.stages.collect_features = stopped
flows.stages.prh_extract(config=PipelineConfig.model_validate_json(sys.argv[2]), store=sys.argv[1])
"""


@pytest.mark.usefixtures("prefect_harness")
def test_an_extraction_stage_stopped_after_a_model_records_its_features(tmp_path):
    """An extraction stage cancelled from the UI (or with its staged run) after some models were
    published recorded none of them: its record said CANCELLED with no dataset or feature version,
    so the stage's retry, and the next run, counted the features it had extracted as reused. In a
    child process: Prefect ends the process with the signal after the flow."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    root = Path(__file__).resolve().parents[2]
    store = str(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    config = _config([TINY_VIT, TINY_BERT], permutations=0).model_dump_json()
    done = subprocess.run([sys.executable, "-c", STOPPED_EXTRACTION_CHILD, store, config], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    from storage.runs import extraction_records

    records = extraction_records(Store(store))
    assert [r["status"] for r in records] == ["CANCELLED"], (records, done.stderr[-2000:])
    stored = query(connect(store), "select model, feature_version, dataset_version from models").to_pylist()
    assert [r["model"] for r in stored] == ["tiny-vit"]  # the second model never ran
    assert (records[0]["extracted"], records[0]["reused"]) == (["tiny-vit"], [])
    assert records[0]["feature_versions"] == {"tiny-vit": stored[0]["feature_version"]}
    assert records[0]["dataset_version"] == stored[0]["dataset_version"]


@pytest.mark.usefixtures("prefect_harness")
def test_features_published_while_a_stopped_stage_waits_are_in_its_record(tmp_path, monkeypatch):
    """An extraction stage stopped while a model was past its last safe point (publishing its
    features): the stage waits for it and the features are published, but its record, written
    from the models collected when the stop came, named none of them (the next stage and ``prh
    gc`` go by it). It now names every model whose features the store holds. The other model's
    task, queued behind it, gives up as it starts: its task run shows ``Cancelled`` in Prefect
    (it showed red ``Failed``, ``RunStopped: the run is being stopped ...``, under the cancelled
    run), the published one ``Completed``."""
    import flows.stages
    from storage.runs import extraction_records
    from tests.flows.test_pipeline import hold_publishing_until_stopped

    publishing = hold_publishing_until_stopped(monkeypatch, "features/")

    def stopped(extracting, failures, features=None, progress=None):
        assert publishing.wait(120)
        raise KeyboardInterrupt  # the stop reaches the flow while a model publishes

    monkeypatch.setattr(flows.stages, "collect_features", stopped)
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        prh_extract(config=_config([TINY_VIT, TINY_BERT], permutations=0), store=store)
    stored = {r["model"]: r["feature_version"] for r in query(connect(store), "select * from models").to_pylist()}
    (record,) = extraction_records(Store(store))
    assert record["status"] == "CANCELLED" and stored and record["feature_versions"] == stored
    assert (record["extracted"], record["reused"]) == (sorted(stored), [])
    states = _settled_extract_states(record["run_id"])
    assert {name: state.type.value for name, state in states.items()} == {
        "extract-tiny-vit": "COMPLETED", "extract-tiny-bert": "CANCELLED"}, states
    assert states["extract-tiny-bert"].message == ("extracting tiny-bert: cancelled, the run is being stopped: extracting "
                                                   "tiny-bert left undone")


def _settled_extract_states(flow_run_id: str, within: float = 60.0) -> dict:
    """The states of flow run ``flow_run_id``'s ``extract-*`` task runs once none is ``RUNNING``
    (or after ``within`` seconds): a task run's final state reaches the API from its own thread,
    which may report it after the flow has returned (seen on 2 loaded cores: ``extract-tiny-bert``
    still ``Running`` when read at once)."""
    import time

    deadline = time.monotonic() + within
    while True:
        states = {name: run.state for name, run in _task_runs(flow_run_id).items() if name.startswith("extract-")}
        if time.monotonic() > deadline or all(state.type.value != "RUNNING" for state in states.values()):
            return states
        time.sleep(0.5)


def _task_runs(flow_run_id: str) -> dict:
    """The task runs of flow run ``flow_run_id`` as the Prefect API has them, by name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run for run in runs}


@pytest.mark.usefixtures("prefect_harness")
def test_prh_staged_passes_the_extracted_dataset_version_to_the_alignment_stage(monkeypatch):
    """The stage runs faked (run_deployment): what prh-staged asks of each deployment."""
    import flows.stages

    calls, published, messages = [], {}, {}

    def fake_run_deployment(name, parameters, **kwargs):
        calls.append((name, parameters))
        run_id = uuid4()
        published[run_id] = outcome[name][1]
        return SimpleNamespace(id=run_id, state=SimpleNamespace(
            name=outcome[name][0], is_completed=lambda: outcome[name][0] == "Completed", type=SimpleNamespace(value=outcome[name][0].upper()),
            message=messages.get(name)))

    monkeypatch.setattr(flows.stages, "run_deployment", fake_run_deployment)
    monkeypatch.setattr(flows.stages, "published_dataset_version", lambda run_id: published[run_id])
    monkeypatch.setattr(flows.stages, "check_deployment_exists", lambda stage, name: None)  # none in the harness
    config = _config([TINY_VIT, TINY_BERT])

    outcome = {"prh-extract/gpu": ("Completed", "00112233aabbccdd"), "prh-pipeline/cpu": ("Completed", None)}
    result = prh_staged(config=config, store="s3://bucket/prh")
    assert [name for name, _ in calls] == ["prh-extract/gpu", "prh-pipeline/cpu"] and result["dataset_version"] == "00112233aabbccdd"
    assert "dataset_version" not in calls[0][1]
    assert {k: v for k, v in calls[1][1].items() if k != "config"} == {
        "store": "s3://bucket/prh", "extract_missing": False, "dataset_version": "00112233aabbccdd"}
    json.dumps(calls[1][1])  # parameters a deployment run accepts

    calls.clear()  # some models failed, the dataset was published: the alignment stage still runs, with it
    outcome["prh-extract/gpu"] = ("Failed", "00112233aabbccdd")
    with pytest.raises(RuntimeError, match=r"^extract stage \(prh-extract/gpu\) ended Failed"):
        prh_staged(config=config, store="s3://bucket/prh")
    assert calls[1][1]["dataset_version"] == "00112233aabbccdd"

    calls.clear()  # failed before publishing the dataset: nothing to align; the child's reason is in the message
    outcome["prh-extract/gpu"] = ("Failed", None)
    messages["prh-extract/gpu"] = "Flow run encountered an exception: ValueError: dataset path\n'/data/nope.parquet' does not exist"
    with pytest.raises(RuntimeError, match="align stage not run: the extraction stage published no dataset version") as raised:
        prh_staged(config=config, store="s3://bucket/prh")
    assert str(raised.value).startswith("extract stage (prh-extract/gpu) ended Failed (Flow run encountered an exception: "
                                        "ValueError: dataset path '/data/nope.parquet' does not exist): flow run ")
    messages.clear()
    assert [name for name, _ in calls] == ["prh-extract/gpu"]

    calls.clear()  # an extraction flow that records no version (completed): the alignment stage loads the dataset, as before
    outcome["prh-extract/gpu"] = ("Completed", None)
    prh_staged(config=config, store="s3://bucket/prh")
    assert [name for name, _ in calls] == ["prh-extract/gpu", "prh-pipeline/cpu"] and "dataset_version" not in calls[1][1]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("names, message", [
    ({"align_deployment": "prh-pipeline"}, r"^align_deployment must be flow-name/deployment-name \(e.g. prh-pipeline/cpu"),
    ({"align_deployment": "prh-pipeline/"}, r"^align_deployment must be flow-name/deployment-name"),
    ({"extract_deployment": ""}, r"^extract_deployment must be flow-name/deployment-name \(e.g. prh-extract/gpu"),
    ({"align_deployment": "prh-pipeline/nope"}, r"^extract stage: no deployment 'prh-extract/gpu'"),  # none in the harness
    # a deployment id passes the format check (run_deployment takes one) and is looked up by id
    ({"extract_deployment": "0b6f7c84-5a1e-4f4e-9d0e-2a8c1f6d3b21"}, r"^extract stage: no deployment '0b6f7c84-5a1e"),
])
def test_prh_staged_checks_both_stage_names_before_the_first_stage_runs(monkeypatch, names: dict, message: str):
    """A typo in align_deployment let the whole extraction stage run (GPU hours) before the staged
    run failed, and a malformed name gave Prefect's 'Invalid deployment name format: prh-pipeline'
    without naming the parameter."""
    import flows.stages

    calls = []
    monkeypatch.setattr(flows.stages, "run_deployment", lambda name, **kwargs: calls.append(name))
    with pytest.raises(ValueError, match=message):
        prh_staged(config=_config([TINY_VIT]), store="s3://bucket/prh", **names)
    assert calls == []


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("ended", ["Crashed", "Cancelled"])
def test_prh_staged_runs_both_stages_as_its_sub_flows_and_aligns_nothing_after_a_crashed_extraction(monkeypatch, ended):
    """Both stages are sub-flows of the prh-staged run (docs/orchestration.md); an extraction stage
    that crashed or was cancelled leaves no model's fate known: the alignment stage is not run,
    even with a dataset version published."""
    import flows.stages

    calls, extraction = [], ["Completed"]

    def fake_run_deployment(name, parameters, **kwargs):
        calls.append((name, kwargs))
        state = extraction[0] if name == "prh-extract/gpu" else "Completed"
        return SimpleNamespace(id=uuid4(), state=SimpleNamespace(
            name=state, is_completed=lambda: state == "Completed", type=SimpleNamespace(value=state.upper()), message=None))

    monkeypatch.setattr(flows.stages, "run_deployment", fake_run_deployment)
    monkeypatch.setattr(flows.stages, "published_dataset_version", lambda run_id: "00112233aabbccdd")
    monkeypatch.setattr(flows.stages, "check_deployment_exists", lambda stage, name: None)
    prh_staged(config=_config([TINY_VIT]), store="s3://bucket/prh")
    assert [name for name, _ in calls] == ["prh-extract/gpu", "prh-pipeline/cpu"]
    assert all(kwargs.get("as_subflow") is True for _, kwargs in calls)

    calls.clear()
    extraction[0] = ended
    with pytest.raises(RuntimeError, match=rf"^extract stage \(prh-extract/gpu\) ended {ended}: flow run "):
        prh_staged(config=_config([TINY_VIT]), store="s3://bucket/prh")
    assert [name for name, _ in calls] == ["prh-extract/gpu"]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("flow", [prh_pipeline, prh_extract, prh_staged], ids=lambda f: f.name)
@pytest.mark.parametrize("kind", ["memory", "github"])
def test_a_store_that_cannot_keep_a_runs_results_fails_the_run_before_any_work(monkeypatch, flow, kind):
    """The UI hunt: `store: memory://prh` in a deployment's form ran the whole pipeline into the memory
    of the worker's flow-run process and ended COMPLETED, with nothing kept anywhere (the store
    went with the process); `github://a/b` failed with fsspec's bare TypeError (`GithubFileSystem.
    __init__() missing 2 required positional arguments`), naming neither the store nor the parameter.
    Both fail as the run's first step now, naming the store; prh-staged starts no stage."""
    import fsspec

    import flows.stages

    monkeypatch.setattr(flows.stages, "run_deployment", lambda name, **kwargs: pytest.fail(f"stage {name} started"))
    monkeypatch.setattr(flows.stages, "check_deployment_exists", lambda stage, name: None)  # none in the harness
    folder = f"prh-refused-{uuid4().hex[:8]}"
    store, message = {
        "memory": (f"memory://{folder}", rf"^store URL 'memory://{folder}' is held in the memory of the process that runs "
                                         r"the flow .* give a folder, file://PATH or s3://BUCKET/PREFIX$"),
        "github": ("github://a/b", r"^store github://a/b: cannot open it as a store: GithubFileSystem.*missing .*'org' and "
                                   r"'repo'.* \(a store is a folder, file://PATH or s3://BUCKET/PREFIX\)$"),
    }[kind]
    with pytest.raises(ValueError, match=message):
        flow(config=_config([TINY_VIT, TINY_BERT]), store=store)
    assert not fsspec.filesystem("memory").exists(f"/{folder}")  # nothing written there either
