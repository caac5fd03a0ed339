"""The deployment path, for real: `prefect server start` on loopback, the work pools, `prefect
deploy --all` from prefect.yaml, a process worker, and a run triggered by the API call the UI's
Run button makes. Every process runs with its own PREFECT_HOME and PREFECT_API_URL (the session
harness of the other tests points elsewhere) and is stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows import serve
from storage.catalog import connect, query
from tests.flows.serve_stubs import SERVE_STUBS
from tests.flows.test_pipeline import TINY_BERT, TINY_VIT

RUN_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Any:
    """(API URL, log folder, environment, the workers' processes): a Prefect server, pools, deployments
    and workers."""
    home = tmp_path_factory.mktemp("prefect-home")
    logs = tmp_path_factory.mktemp("logs")
    started = []
    try:
        for attempt in range(3):  # a port free when chosen can be taken before the server binds it
            port = _free_port()
            env = serve.prefect_env(port, home)
            env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # poll for scheduled runs every second, not every 10
            api = env["PREFECT_API_URL"]
            with open(logs / "server.log", "ab") as log:
                started.append(serve.start_server(port, env, log))
            try:
                serve.wait_healthy(api, started[0], timeout=120)
            except RuntimeError:  # it exited (the port taken): another port
                serve.stop(started.pop())
                if attempt == 2:
                    raise
                continue
            break
        for pool in (serve.CPU_POOL, serve.GPU_POOL):
            serve.ensure_work_pool(api, pool)
        serve.ensure_concurrency_limit(api, serve.GPU_TAG, 1)
        serve.deploy_all(env, timeout=180)
        # the workers are started as from a shell's background job (`make serve &`, a CI step): SIGINT
        # ignored here; serve sets it back to its default in them (test_workers_stop_on_sigterm)
        ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for pool in (serve.CPU_POOL, serve.GPU_POOL):  # the "GPU" worker runs on this CPU box
                with open(logs / "worker.log", "ab") as log:
                    started.append(serve.start_worker(pool, env, log))
        finally:
            signal.signal(signal.SIGINT, ignored)
        yield api, logs, env, started[1:]
    finally:
        # The workers first (test_workers_stop_on_sigterm has stopped them where it ran), then the
        # server (it ends on TERM in under a second).
        for proc in reversed(started):
            serve.stop(proc)
        for proc in started:
            assert proc.poll() is not None, f"process {proc.pid} still running"


def _config(models: list[dict]) -> dict:
    return {
        "dataset": {"kind": "openmoji", "n": 32, "seed": 0, "image_size": 32},
        "models": models,
        "alignment": {"metrics": ["mutual_knn", "cka"], "topk": 4, "permutations": 4},
    }


def _call(method: str, url: str, **kwargs: Any) -> Any:
    """One API call, retried like Prefect's own client on 503/429 (SQLite busy on a small box)."""
    return serve.api_request(method, url, **kwargs).json()


def _run(api: str, deployment: str, parameters: dict, logs: Path, expect: str = "COMPLETED") -> dict:
    """Trigger a run like the UI's Run button does, wait for a final state (``expect``), return the flow run."""
    found = _call("GET", f"{api}/deployments/name/{deployment}")
    run_id = _call("POST", f"{api}/deployments/{found['id']}/create_flow_run", json={"parameters": parameters})["id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        run = _call("GET", f"{api}/flow_runs/{run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert run["state"]["type"] == expect, (run["state"], (logs / "worker.log").read_text()[-4000:])
            return run
        time.sleep(1)
    pytest.fail(f"flow run {run_id} not finished after {RUN_TIMEOUT}s; worker log:\n{(logs / 'worker.log').read_text()[-4000:]}")


def _task_runs(api: str, flow_run_id: str) -> list[dict]:
    body = {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}}
    return _call("POST", f"{api}/task_runs/filter", json=body)


def test_deployments_from_prefect_yaml(server):
    api, _, _, _ = server
    deployments = _call("POST", f"{api}/deployments/filter", json={})
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) == {"nightly", "cpu", "gpu", "nightly-staged"}
    assert by_name["gpu"]["work_pool_name"] == serve.GPU_POOL and by_name["cpu"]["work_pool_name"] == serve.CPU_POOL
    nightly = by_name["nightly"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"] and nightly["schedules"][0]["active"]
    limits = [by_name[n]["global_concurrency_limit"] for n in ("nightly", "nightly-staged")]
    assert [(limit or {}).get("limit") for limit in limits] == [1, 1]  # no overlapping nights, staged or not
    # The UI's form: typed, described, with the demo zoo as default.
    schema = nightly["parameter_openapi_schema"]
    assert schema["properties"]["config"]["description"] and schema["properties"]["store"]["description"]
    assert "published in the store" in schema["properties"]["dataset_version"]["description"]  # prh-staged's second stage
    assert "dataset_version" not in nightly["parameters"]  # standalone: the dataset is loaded from its source
    alignment = schema["definitions"]["AlignmentParams"]["properties"]
    assert {"metrics", "topk", "permutations"} <= set(alignment) and alignment["topk"]["description"]
    undescribed = [f"{name}.{field}" for name, definition in schema["definitions"].items()
                   for field, prop in definition.get("properties", {}).items() if not prop.get("description")]
    assert not undescribed, undescribed  # every field of the form says what it holds (models' fields too)
    assert len(nightly["parameters"]["config"]["models"]) == 6
    # no row limit pre-filled: a run switched to a table or hub dataset in the form reads all of it
    dataset = schema["definitions"]["DatasetParams"]["properties"]
    assert "n" not in nightly["parameters"]["config"]["dataset"] and dataset["n"].get("default") is None
    assert alignment["unit"]["default"] == "sample" and alignment["unit"]["enum"] == ["sample", "image"]
    assert {"mutual_knn", "cka", "cknna", "svcca"} <= set(alignment["metrics"]["items"]["enum"])  # a choice list in the form
    bad = _call("GET", f"{api}/deployments/name/prh-pipeline/cpu")
    config = {**nightly["parameters"]["config"], "alignment": {"metrics": ["mutual_knnn"]}}
    refused = httpx.post(f"{api}/deployments/{bad['id']}/create_flow_run", json={"parameters": {"config": config}}, timeout=30)
    assert refused.status_code == 409 and "mutual_knnn" in refused.text, (refused.status_code, refused.text[:500])  # no run created
    limits = _call("POST", f"{api}/concurrency_limits/filter", json={})
    assert [(c["tag"], c["concurrency_limit"]) for c in limits] == [(serve.GPU_TAG, 1)]


def test_run_from_the_ui_then_incremental(server, tmp_path):
    api, logs, _, _ = server
    store = str(tmp_path / "store")
    run = _run(api, "prh-pipeline/cpu", {"config": _config([TINY_VIT, TINY_BERT]), "store": store}, logs)

    con = connect(store)
    best = query(con, "select model_a, model_b, metric, score from alignment_best").to_pylist()
    assert {(r["model_a"], r["model_b"], r["metric"]) for r in best} == {("tiny-vit", "tiny-bert", m) for m in ("mutual_knn", "cka")}
    assert all(0 <= r["score"] <= 1 for r in best)
    runs = query(con, "select run_id, status, extracted, aligned from runs").to_pylist()
    assert runs == [{"run_id": run["id"], "status": "COMPLETED", "extracted": ["tiny-bert", "tiny-vit"], "aligned": 1}]
    tasks = sorted(t["name"].split("-", 1)[0] for t in _task_runs(api, run["id"]))
    assert tasks == ["align", "extract", "extract", "load"], tasks
    extract = [t for t in _task_runs(api, run["id"]) if t["name"].startswith("extract-")]
    assert all("prh-gpu" in t["tags"] for t in extract)

    # Rerun unchanged, staged: prh-staged runs prh-extract/gpu on the GPU pool's worker, then
    # prh-pipeline/cpu on the CPU pool's; nothing is computed (adding a model: test_pipeline.py).
    started = time.monotonic()
    staged = _run(api, "prh-staged/nightly-staged", {"config": _config([TINY_VIT, TINY_BERT]), "store": store}, logs)
    children = _call("POST", f"{api}/flow_runs/filter", json={"flow_runs": {"parent_task_run_id": {"is_null_": False}}})
    children = [r for r in children if r["id"] != staged["id"]]
    pools = sorted(r["work_pool_name"] for r in children)
    assert pools == [serve.CPU_POOL, serve.GPU_POOL] and all(r["state"]["type"] == "COMPLETED" for r in children)
    extract_run = next(r for r in children if r["work_pool_name"] == serve.GPU_POOL)
    extract_tasks = _task_runs(api, extract_run["id"])
    names = sorted(t["name"] for t in extract_tasks)
    assert names[0].startswith("load-dataset") and names[1:] == ["reuse-tiny-bert", "reuse-tiny-vit"] and len(names) == 3
    assert not any("prh-gpu" in t["tags"] for t in extract_tasks)  # stored: no GPU slot held or waited for
    align_run = next(r for r in children if r["work_pool_name"] == serve.CPU_POOL)
    record = query(connect(store), f"select extracted, reused, aligned, status, dataset_version from runs "
                                   f"where run_id = '{align_run['id']}'").to_pylist()
    assert [{k: v for k, v in r.items() if k != "dataset_version"} for r in record] == [
        {"extracted": [], "reused": ["tiny-bert", "tiny-vit"], "aligned": 0, "status": "COMPLETED"}]
    # the alignment stage got the extraction stage's dataset version and read it from the store, not the source
    assert align_run["parameters"]["dataset_version"] == record[0]["dataset_version"]
    assert sorted(t["name"].rsplit("-", 1)[0] for t in _task_runs(api, align_run["id"]))[-1] == "stored-dataset"
    assert not [t for t in _task_runs(api, align_run["id"]) if t["name"].startswith("load-dataset")]
    # nothing computed: three flow runs' start-up (~4 s each idle, ~16 s on a loaded 2-core runner)
    assert time.monotonic() - started < 240

    # A model that cannot be extracted does not stop the staged night (its extraction stage fails,
    # the alignment stage aligns what is stored and fails naming it): the two stages in-process,
    # test_stages.py::test_a_model_the_extraction_stage_did_not_publish_fails_the_alignment_stage_naming_it;
    # prh-staged going on to the alignment stage after a failed extraction stage:
    # test_stages.py::test_prh_staged_passes_the_extracted_dataset_version_to_the_alignment_stage.
    # Here a staged run that fails through the deployments:
    wrong = _run(api, "prh-staged/nightly-staged", {"config": _config([TINY_VIT, TINY_BERT]), "store": store,
                                                    "extract_deployment": "prh-extract/nope"}, logs, expect="FAILED")
    assert "extract stage: no deployment 'prh-extract/nope'" in wrong["state"]["message"], wrong["state"]
    # a typo in the second stage's name fails the staged run before its extraction stage runs
    runs_before = len(_call("POST", f"{api}/flow_runs/filter", json={}))
    wrong = _run(api, "prh-staged/nightly-staged", {"config": _config([TINY_VIT, TINY_BERT]), "store": store,
                                                    "align_deployment": "prh-pipeline/nope"}, logs, expect="FAILED")
    assert "align stage: no deployment 'prh-pipeline/nope'" in wrong["state"]["message"], wrong["state"]
    assert len(_call("POST", f"{api}/flow_runs/filter", json={})) == runs_before + 1  # the staged run alone


def test_the_deployments_demo_config_is_configs_demo_yaml():
    """The deployments' default zoo (`definitions.demo_config`) runs what `prh run` runs, so the
    nightly and the CLI publish the same alignment versions into the same store."""
    from pathlib import Path

    import yaml

    from tasks.params import PipelineConfig, load_config

    root = Path(__file__).resolve().parents[2]
    deployed = PipelineConfig.model_validate(yaml.safe_load((root / "prefect.yaml").read_text())["definitions"]["demo_config"])
    demo = load_config(str(root / "configs" / "demo.yaml"))
    assert deployed.dataset.sample_n() == demo.dataset.sample_n()  # n left empty in the UI form: the demo's 1,024
    assert deployed.model_dump(exclude={"dataset": {"n"}}) == demo.model_dump(exclude={"dataset": {"n"}})


SERVE_CHILD = """
import subprocess, sys
from flows import serve
def sleeper(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
serve.start_server = serve.start_worker = sleeper
serve.wait_healthy = serve.ensure_work_pool = serve.ensure_concurrency_limit = serve.deploy_all = lambda *a, **k: None
serve.schedule_states, serve.restore_schedule_states, serve.port_in_use = (lambda *a, **k: {}), (lambda *a, **k: []), (lambda *a: False)
raise SystemExit(serve.main(["--home", sys.argv[1], "--gpu-worker"]))
"""


def test_serve_stops_its_server_and_workers_on_sigterm(tmp_path):
    """`kill PID` (systemd, docker stop) of `python -m flows.serve` stops what it started, as Ctrl-C
    does (the server and workers were left running, reparented to init)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", SERVE_CHILD, str(tmp_path / "home")], cwd=root, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "Ctrl-C stops everything" in line:
            break
    children = psutil.Process(proc.pid).children()
    assert len(children) == 3  # the server and two workers (sleepers here)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive


SERVE_GPUS_CHILD = """
import json, subprocess, sys
from flows import serve
def sleeper(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
def worker(pool, env, log=None, limit=None):
    print("WORKER", json.dumps([pool, env.get("CUDA_VISIBLE_DEVICES"), limit]), flush=True)
    return sleeper()
def limit(api, tag, n):
    print("LIMIT", json.dumps([tag, n]), flush=True)
serve.start_server, serve.start_worker, serve.ensure_concurrency_limit = sleeper, worker, limit
serve.wait_healthy = serve.ensure_work_pool = serve.deploy_all = lambda *a, **k: None
serve.schedule_states, serve.restore_schedule_states, serve.port_in_use = (lambda *a, **k: {}), (lambda *a, **k: []), (lambda *a: False)
raise SystemExit(serve.main(["--home", sys.argv[1], *sys.argv[2:]]))
"""


@pytest.mark.parametrize("visible, args, workers, limit", [
    ("3,5", ["--gpu-worker"], [["prh-gpu", "3", 1], ["prh-gpu", "5", 1]], 2),
    ("3,5", ["--gpu-worker", "--gpus", "4"], [["prh-gpu", "3", 1], ["prh-gpu", "5", 1]], 4),
    ("1,-1,2", ["--gpu-worker"], [["prh-gpu", "1", 1]], 1),
    ("", ["--gpu-worker"], [["prh-gpu", "", 1]], 1),  # CUDA hidden: one worker, as the environment has it
    ("3,5", [], [], 1),
])
def test_serve_starts_one_gpu_worker_per_gpu_of_the_machine(tmp_path, visible, args, workers, limit):
    """`make serve ARGS="--gpu-worker --gpus 2"` (the docs' example) started one prh-gpu worker
    with --limit 1 and no CUDA_VISIBLE_DEVICES: one flow run at a time, the second GPU idle. Now one
    worker per GPU, each pinned to its GPU, and the tag limit defaults to that count."""
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
    proc = subprocess.Popen([sys.executable, "-c", SERVE_GPUS_CHILD, str(tmp_path / "home"), *args], cwd=root,
                            stdout=subprocess.PIPE, text=True, env=env)
    started, limits, summary = [], [], ""
    for line in proc.stdout:
        if line.startswith("WORKER "):
            started.append(json.loads(line[7:]))
        elif line.startswith("LIMIT "):
            limits.append(json.loads(line[6:]))
        elif "Ctrl-C stops everything" in line:
            summary = line
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert started == [["prh-cpu", visible, None], *workers]  # the CPU worker keeps the environment
    assert limits == [["prh-gpu", limit]]
    assert f"prh-gpu limit {limit}" in summary
    if len(workers) == 2:
        assert "prh-gpu x2 (GPUs 3, 5)" in summary


SERVE_LOGS_CHILD = SERVE_STUBS + """
# the real start_worker, with a stand-in for the `prefect` command: it prints what a flow run's
# process that dies before reaching the API prints (only its exit code reaches the UI)
serve.prefect_cli = lambda: [sys.executable, "-c", "import os, sys, time; print('worker output', sys.argv[1:], "
                             "os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True); time.sleep(600)"]
raise SystemExit(serve.main(["--home", sys.argv[1], "--gpu-worker"]))
"""


def test_serve_keeps_each_workers_output_in_a_log_file(tmp_path):
    """`make serve` sent its workers' output to /dev/null, where the docs say a run's log is in
    "the worker's output": a flow run whose process died before it reached the API (a bad
    PYTHONHOME in the run's job variables) showed only `Process exited with status code: 1` in the
    UI, its reason nowhere. Now each worker appends to its own file in PREFECT_HOME, named in the
    summary."""
    import signal
    import time

    root = Path(__file__).resolve().parents[2]
    home = tmp_path / "home"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE_LOGS_CHILD, str(home)], cwd=root, stdout=subprocess.PIPE,
                            text=True, env=env)
    summary = ""
    for line in proc.stdout:
        if "Ctrl-C stops everything" in line:
            break
        summary += line
    logs = {"prh-cpu": home / "worker-prh-cpu.log", "3": home / "worker-prh-gpu-gpu3.log",
            "5": home / "worker-prh-gpu-gpu5.log"}
    deadline = time.monotonic() + 30
    while not all(p.exists() and "worker output" in p.read_text() for p in logs.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert "--pool', 'prh-cpu'" in logs["prh-cpu"].read_text()
    for gpu in ("3", "5"):
        text = logs[gpu].read_text()
        assert "--pool', 'prh-gpu'" in text and text.rstrip().endswith(f"] {gpu}")
    assert f"{home / 'worker-*.log'} (the workers' output)" in summary


def test_a_gpu_worker_named_by_a_mig_id_with_slashes_logs_into_the_home(tmp_path, monkeypatch):
    """CUDA_VISIBLE_DEVICES may name a MIG instance as ``MIG-GPU-<uuid>/<gi>/<ci>`` (the legacy
    form, kept by `local_gpu_ids` as given): its worker's log path went into subdirectories that do
    not exist (``worker-prh-gpu-gpuMIG-GPU-.../7/0.log``), and `make serve --gpu-worker` stopped with
    a raw FileNotFoundError after the server had started (the output had gone to /dev/null before).
    The file name keeps the id's safe characters; the log lies in the home."""
    mig = "MIG-GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f/7/0"
    monkeypatch.setattr(serve, "prefect_cli", lambda: [sys.executable, "-c", "import os; print('worker of', "
                                                      "os.environ['CUDA_VISIBLE_DEVICES'], flush=True)"])
    path = serve.worker_log_path(tmp_path, serve.GPU_POOL, mig)
    assert path.parent == tmp_path and path.name == "worker-prh-gpu-gpuMIG-GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f_7_0.log"
    (proc,) = serve.start_gpu_workers(dict(os.environ), [mig], tmp_path)
    assert proc.wait(timeout=60) == 0
    assert path.read_text() == f"worker of {mig}\n"


def test_a_schedule_switched_in_the_ui_survives_a_redeploy(server):
    """The docs say to switch nightly-staged on and nightly off in the UI once GPU workers exist;
    every `make serve` start ran `prefect deploy --all`, which put prefect.yaml's `active:` back."""
    api, _, env, _ = server
    def switch(name: str, active: bool) -> None:
        deployment = {d["name"]: d for d in _call("POST", f"{api}/deployments/filter", json={})}[name]
        for schedule in deployment["schedules"]:
            serve.api_request("PATCH", f"{api}/deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": active})

    def states() -> dict[str, list[bool]]:
        return {d["name"]: [s["active"] for s in d["schedules"]] for d in _call("POST", f"{api}/deployments/filter", json={})}

    assert (states()["nightly"], states()["nightly-staged"]) == ([True], [False])
    try:
        switch("nightly", False)
        switch("nightly-staged", True)
        before = serve.schedule_states(api)
        serve.deploy_all(env, timeout=180)
        assert (states()["nightly"], states()["nightly-staged"]) == ([True], [False])  # what prefect deploy does
        assert serve.restore_schedule_states(api, before) == ["nightly", "nightly-staged"]
        assert (states()["nightly"], states()["nightly-staged"]) == ([False], [True])
    finally:
        switch("nightly", True)
        switch("nightly-staged", False)


def test_serve_refuses_a_port_already_in_use_and_a_gpu_limit_below_one(tmp_path, capsys):
    """A second `make serve` on a taken port answered the other server's /health, redeployed its
    deployments onto this checkout and reset its GPU limit; `--gpus 0` made every extraction
    fail with a 422 from the concurrency limit."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["--port", str(port), "--home", str(tmp_path / "home"), "--no-worker"]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit):
            serve.main(["--gpus", bad, "--home", str(tmp_path / "home")])
        assert "must be 1 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main(["--history-days", "-3", "--home", str(tmp_path / "home")])
    assert "must be 0 (keep every flow run) or more days, got -3" in capsys.readouterr().err


def test_serve_refuses_a_prefect_home_another_serve_holds(tmp_path, capsys):
    """Two `make serve` of one checkout on two ports (`make serve PORT=4300`) ran two Prefect
    servers on one SQLite database (PREFECT_HOME/.prefect): the second is refused now, naming the
    first; the home is free again once the first ends."""
    import os
    import socket

    home = tmp_path / "home"
    home.mkdir()
    first, holder = serve.hold_home(home, 4200)
    assert first is not None and holder == ""
    with socket.socket() as probe:  # a free port: the refusal is the home's, not the port's
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert serve.main(["--port", str(port), "--home", str(home), "--no-worker"]) == 2
    err = capsys.readouterr().err
    assert f"PREFECT_HOME {home} is used by another `make serve` (pid {os.getpid()}, port 4200)" in err
    assert sorted(p.name for p in home.iterdir()) == ["serve.lock"]  # no server was started: no database, no log
    first.close()
    again, _ = serve.hold_home(home, port)
    assert again is not None and (home / "serve.lock").read_text() == f"pid {os.getpid()}, port {port}"
    again.close()


def test_serve_refuses_a_bad_port_and_metric_modules_it_cannot_import(tmp_path, capsys, monkeypatch):
    """The UI/ops hunt: PRH_SERVE_PORT=42OO (even with --help) and --port 99999 ended in
    tracebacks; a PRH_METRIC_MODULES module that failed to import left its metrics off the UI
    form without a word (a run naming them was then refused by the server, not by the import)."""
    with pytest.raises(SystemExit):
        serve.main(["--port", "99999", "--home", str(tmp_path / "home")])
    assert "must be a port number, 1 to 65535, got 99999" in capsys.readouterr().err
    monkeypatch.setenv("PRH_SERVE_PORT", "42OO")
    assert serve.main(["--home", str(tmp_path / "home")]) == 2
    assert "PRH_SERVE_PORT='42OO': must be a port number, 1 to 65535, got '42OO'" in capsys.readouterr().err
    # make serve passes it on (the review: the Makefile's PORT default hid it)
    dry = subprocess.run(["make", "-n", "serve"], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                         env={**os.environ, "PRH_SERVE_PORT": "4300"})
    assert "--port 4300" in dry.stdout, dry.stdout + dry.stderr
    monkeypatch.delenv("PRH_SERVE_PORT")
    monkeypatch.setenv("PRH_METRIC_MODULES", "mylab_metrics_typo_xyz")
    assert serve.main(["--home", str(tmp_path / "home"), "--no-worker"]) == 2
    err = capsys.readouterr().err
    assert "cannot import 'mylab_metrics_typo_xyz'" in err and "the UI form would list no metric of it" in err
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())


def test_the_server_keeps_flow_runs_history_days(tmp_path):
    """The nightly runs' flow runs, logs and artifacts would fill the server's database for ever:
    Prefect's own settings, read from the environment make serve gives the server, vacuum them
    after --history-days (0: Prefect's default, events only)."""
    read = ("from prefect.settings import get_current_settings as g; v = g().server.services.db_vacuum; "
            "print(sorted(v.enabled), v.retention_period.total_seconds())")

    def settings(days: int) -> str:
        env = serve.prefect_env(_free_port(), tmp_path / "home", history_days=days)
        return subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, check=True).stdout.strip()

    assert settings(30) == f"['events', 'flow_runs'] {30 * 86400.0}"
    assert settings(serve.HISTORY_DAYS) == f"['events', 'flow_runs'] {serve.HISTORY_DAYS * 86400.0}"
    assert settings(0).startswith("['events'] ")


def test_local_gpu_ids_follow_cuda_visible_devices_else_torch():
    import torch

    assert serve.local_gpu_ids({}) == [str(i) for i in range(torch.cuda.device_count())]
    assert serve.local_gpu_ids({"CUDA_VISIBLE_DEVICES": " 0, GPU-8f2a ,2"}) == ["0", "GPU-8f2a", "2"]
    assert serve.local_gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_the_docs_yaml_to_params_command_gives_parameters_the_server_takes(tmp_path):
    """docs/orchestration.md turns a YAML config into `prefect deployment run --params` JSON. It read
    the file with PyYAML, which leaves `rbf_sigma: 5e-1` (YAML 1.2's number, no dot) and a quoted
    `'0.9'` strings: the server refused the run (`'5e-1' is not of type 'number'`) for a config
    that `prh run --config` runs. The command reads the config as prh does (its numbers, its
    checks with lines) and the server's own validation (Prefect's, on the schema `prefect deploy`
    uploads) takes the result."""
    import json
    import re

    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.pipeline import prh_pipeline

    root = Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "orchestration.md").read_text(encoding="utf-8")
    found = re.search(r"prefect deployment run prh-pipeline/cpu --params \"\$\(\.venv/bin/python -c '(.*?)' "
                      r"configs/my-zoo\.yaml /data/prh\)\"", docs, re.S)
    assert found, "the command is no longer in docs/orchestration.md"
    zoo = tmp_path / "my-zoo.yaml"
    zoo.write_text("dataset: {kind: openmoji, n: 32, image_size: 32}\n"
                   "models:\n"
                   "  - {name: vit, loader: random_hf, id: ViTConfig, modality: vision}\n"
                   "  - {name: bert, loader: random_hf, id: BertConfig, modality: language}\n"
                   "alignment: {metrics: [cka], kernel_metric: rbf, rbf_sigma: 5e-1, outlier_quantile: '0.9'}\n")
    done = subprocess.run([sys.executable, "-c", found.group(1), str(zoo), str(tmp_path / "store")], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    parameters = json.loads(done.stdout)
    validate(parameters, parameter_schema(prh_pipeline.fn).model_dump_for_openapi(), raise_on_error=True)
    alignment = parameters["config"]["alignment"]
    assert (alignment["rbf_sigma"], alignment["outlier_quantile"], alignment["metrics"]) == (0.5, 0.9, ["cka"])
    assert [m["name"] for m in parameters["config"]["models"]] == ["vit", "bert"] and parameters["store"] == str(tmp_path / "store")


LOAD_AS_THE_WORKER_DOES = """
import json, sys
from prefect.flows import load_flow_from_entrypoint
loaded = {}
for entrypoint in json.loads(sys.argv[1]):
    flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
    module = sys.modules[flow.fn.__module__]
    loaded[entrypoint] = [flow.fn.__module__, getattr(module, flow.fn.__name__) is flow]
print(json.dumps({"loaded": loaded, "flows_on_path": [p for p in sys.path if p.rstrip("/").endswith("/flows")]}))
"""


def test_the_worker_loads_each_flow_as_the_module_prh_run_imports(server):
    """prefect.yaml's entrypoints were file paths (`flows/pipeline.py:prh_pipeline`): a worker's flow
    run executed that file as a module of its own (`pipeline`, or `__prefect_loader_<hash>__`) with
    `flows/` put first on `sys.path` (every file there importable as a top-level module: `report`,
    `progress`, `cli`...), so its classes were others than those of `flows.pipeline` (a run record's
    error read `pipeline.ZooFailures`). Module entrypoints load `flows.pipeline` itself. Loaded here
    the way the flow run's process loads them (`load_flow_from_entrypoint`, in the deployments' pull
    step's working directory)."""
    import json

    api, _, env, _ = server
    deployments = _call("POST", f"{api}/deployments/filter", json={})
    entrypoints = sorted({d["entrypoint"] for d in deployments})
    assert entrypoints == ["flows.pipeline:prh_pipeline", "flows.stages:prh_extract", "flows.stages:prh_staged"]
    directories = {step["prefect.deployments.steps.set_working_directory"]["directory"]
                   for d in deployments for step in d["pull_steps"]}
    root = Path(__file__).resolve().parents[2]
    assert directories == {str(root)}  # `prefect deploy` records the checkout it ran in
    done = subprocess.run([sys.executable, "-c", LOAD_AS_THE_WORKER_DOES, json.dumps(entrypoints)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["loaded"] == {"flows.pipeline:prh_pipeline": ["flows.pipeline", True],
                               "flows.stages:prh_extract": ["flows.stages", True],
                               "flows.stages:prh_staged": ["flows.stages", True]}, found
    assert found["flows_on_path"] == [], found


def test_workers_stop_on_sigterm(server):
    """Last of the file: it stops the module's workers. `make serve`'s workers, started with SIGINT
    ignored (a background job: the `server` fixture starts them so), outlived SIGTERM and then
    SIGINT, and ended by the SIGKILL Prefect's handler sends itself on the next signal: Prefect's
    worker answers SIGTERM with a SIGINT to itself, which did nothing. Each now ends on SIGTERM alone,
    after the flow runs of this file, in a few seconds, with exit status 0."""
    _, logs, _, workers = server
    deadline = time.monotonic() + 120  # run alone, the workers may still be starting (no handlers yet)
    while (logs / "worker.log").read_text().count("started!") < len(workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    for proc in workers:
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    codes = []
    for proc in workers:
        try:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    assert codes == [0] * len(workers), codes  # None: alive 30 s after SIGTERM
