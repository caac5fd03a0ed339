"""A bad $PRH_TASK_RUNNER set in a deployment's job variables: the flow modules still import (the
``@flow`` decorator builds the runner when a worker imports them, and an error there crashed the run
with "Process exited with status code: 1" and no reason in its Prefect state), and the flow's first
step fails the run naming the variable and what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import flows.pipeline, flows.stages
for flow in (flows.pipeline.prh_pipeline, flows.stages.prh_extract):
    try:
        flow.fn(config=None, store="unused-store-never-opened")
    except ValueError as error:
        print("refused:", error)
"""

# A child that imports the libraries the flow modules use (none reads a PRH_ variable), then runs
# each case that it reads from stdin (a JSON line: environment, folder, output files) in a fork of
# itself: the fork sets the case's environment, then imports prh's flow modules afresh (none is
# imported before the fork) and runs SCRIPT, as `python -c SCRIPT` with that environment does.
# One ~3.5 s import of torch and Prefect for all the cases, not one per case (ten child processes of
# this file spent ~45 s of CPU importing the same libraries).
FORKS = """
import json, os, sys, traceback
import dask, distributed, duckdb, fsspec, numpy, prefect, prefect.flows, prefect.task_runners, prefect_dask
import pyarrow, pyarrow.parquet, pydantic, torch, yaml
assert not [m for m in sys.modules if m.split(".")[0] in ("flows", "tasks", "storage")], "prh imported before the fork"
script = sys.argv[1]
for line in sys.stdin:
    case = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.update(case["env"])
            os.chdir(case["cwd"])
            for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            exec(compile(script, "<case>", "exec"), {"__name__": "__main__"})
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
sys.stderr.flush()
os._exit(0)  # no interpreter shutdown: ~2 s of CPU tearing down torch and Prefect, and nothing to close
"""


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    """A function running SCRIPT with an environment added in a fork of one child process (see
    FORKS): its exit code, stdout and stderr, as ``subprocess.run`` gives them."""
    base = tmp_path_factory.mktemp("forks")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(base / "home")}
    child = subprocess.Popen([sys.executable, "-c", FORKS, SCRIPT], env=env, cwd=base, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    count = 0

    def run(case_env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
        nonlocal count
        count += 1
        out, err = base / f"{count}.out", base / f"{count}.err"
        child.stdin.write(json.dumps({"env": case_env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}) + "\n")
        child.stdin.flush()
        answer = child.stdout.readline()
        assert answer, f"the fork server ended (rc {child.poll()})"
        return subprocess.CompletedProcess(SCRIPT, json.loads(answer), out.read_text(), err.read_text())

    try:
        yield run
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0


def test_a_bad_task_runner_variable_fails_the_flow_not_its_import(tmp_path, forks):
    done = forks({"PRH_TASK_RUNNER": "thread", "PREFECT_HOME": str(tmp_path)}, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    refused = [line for line in done.stdout.splitlines() if line.startswith("refused:")]
    assert len(refused) == 2 and all("PRH_TASK_RUNNER='thread': expected one of" in line for line in refused), done.stdout
    assert not (tmp_path / "unused-store-never-opened").exists()


def _refused_each(cases: dict[str, dict[str, str]], tmp_path, forks) -> dict[str, list[str]]:
    """The refusals of both flows' first step with each case's environment added (message -> its
    refusals), each case in its own fork (which imports the flow modules with it). The fork's
    PREFECT_HOME is set but not read: Prefect read its settings when the fork server imported it;
    SCRIPT calls each flow's function and reaches no API."""
    found = {}
    for i, (message, env) in enumerate(cases.items()):
        done = forks({"PREFECT_HOME": str(tmp_path / f"home-{i}"), **env}, tmp_path)
        assert done.returncode == 0, (message, done.stderr[-2000:])
        found[message] = [line for line in done.stdout.splitlines() if line.startswith("refused:")]
    return found


def test_environment_typos_fail_the_flow_at_its_start_naming_the_variable(tmp_path, forks):
    """PRH_DASK_WORKERS=0 hung the run (tasks submitted, none run); PRH_MODEL_LOAD_TIMEOUT=abc was
    accepted and failed every model at extraction ("could not convert string to float"), after
    the dataset was loaded; a scheduler address nothing listens at was found after the dataset
    was published, in six tracebacks of Dask's 30 s connect timeout."""
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    cases = {
        "PRH_DASK_WORKERS='0': it must be a whole number of workers, at least 1": {"PRH_TASK_RUNNER": "dask", "PRH_DASK_WORKERS": "0"},
        "PRH_DASK_WORKERS='two' is not a whole number": {"PRH_TASK_RUNNER": "dask", "PRH_DASK_WORKERS": "two"},
        "PRH_MODEL_LOAD_TIMEOUT='abc' is not a number of seconds": {"PRH_MODEL_LOAD_TIMEOUT": "abc"},
        "PRH_FEATURE_CACHE_MB='-1': it must be a number of MiB, 0 or more": {"PRH_FEATURE_CACHE_MB": "-1"},
        "PRH_ALIGN_MEMORY_MB='abc' is not a number of MiB above 0": {"PRH_ALIGN_MEMORY_MB": "abc"},  # was found at the first pair
        f"PRH_TASK_RUNNER=dask:tcp://127.0.0.1:{port}: no Dask scheduler answers at 127.0.0.1:{port}":
            {"PRH_TASK_RUNNER": f"dask:tcp://127.0.0.1:{port}"},
    }
    for message, refused in _refused_each(cases, tmp_path, forks).items():
        assert len(refused) == 2 and all(message in line for line in refused), (message, refused)
    assert not (tmp_path / "unused-store-never-opened").exists()


def test_dask_workers_are_read_only_where_used_and_0_goes_with_adapt(monkeypatch):
    """PRH_DASK_WORKERS=0 with PRH_DASK_ADAPT_KWARGS is an adaptive cluster (not a hang), and the
    variable does not matter when PRH_DASK_CLUSTER_KWARGS sets n_workers."""
    from flows.runners import make_task_runner

    monkeypatch.setenv("PRH_DASK_WORKERS", "0")
    monkeypatch.setenv("PRH_DASK_ADAPT_KWARGS", '{"minimum": 0, "maximum": 2}')
    assert make_task_runner("dask").cluster_kwargs["n_workers"] == 0
    monkeypatch.delenv("PRH_DASK_ADAPT_KWARGS")
    monkeypatch.setenv("PRH_DASK_WORKERS", "x")
    monkeypatch.setenv("PRH_DASK_CLUSTER_KWARGS", '{"n_workers": 3}')
    assert make_task_runner("dask").cluster_kwargs["n_workers"] == 3


@pytest.mark.parametrize("env, message", [
    ({"PRH_DASK_CLUSTER_KWARGS": "{cores: 8}"}, r"^PRH_DASK_CLUSTER_KWARGS='\{cores: 8\}' is not valid JSON \(Expecting property name"),
    ({"PRH_DASK_ADAPT_KWARGS": "maximum=4"}, r"^PRH_DASK_ADAPT_KWARGS='maximum=4' is not valid JSON"),
    ({"PRH_DASK_CLUSTER_KWARGS": '{"n_workers": 0}'}, r"^PRH_DASK_CLUSTER_KWARGS: n_workers must be a whole number of at least 1"),
    ({"PRH_DASK_CLUSTER_CLASS": "dask_jobqueu.SLURMCluster"}, r"^PRH_DASK_CLUSTER_CLASS='dask_jobqueu.SLURMCluster': cannot import"),
    ({"PRH_DASK_CLUSTER_CLASS": "distributed.LocalClustr"}, r"^PRH_DASK_CLUSTER_CLASS='distributed.LocalClustr': no class"),
])
def test_dask_cluster_settings_are_refused_naming_the_variable(monkeypatch, env, message):
    """The UI/ops hunt: bad JSON gave a bare JSONDecodeError, a misspelt class a bare
    ModuleNotFoundError at the flow's start, and n_workers 0 in the kwargs the hang that
    PRH_DASK_WORKERS=0 is refused for."""
    from flows.runners import check_task_runner

    monkeypatch.setenv("PRH_TASK_RUNNER", "dask")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        check_task_runner()


def test_a_model_load_timeout_of_0_negative_or_inf_is_no_limit(monkeypatch):
    from tasks.retries import model_load_timeout

    for raw, want in (("0", None), ("-1", None), ("inf", None), ("90", 90.0), ("", 3600)):
        monkeypatch.setenv("PRH_MODEL_LOAD_TIMEOUT", raw)
        assert model_load_timeout() == want, raw


def test_variables_read_late_in_extraction_fail_the_flow_at_its_start(tmp_path, forks):
    """The environment hunt: PRH_DECODE_WORKERS=junk passed the start, and each vision model of 512
    or more images failed at extraction once its weights had loaded (the run ended FAILED, exit 1,
    the dataset published and the language models extracted); below 512 images it was ignored.
    PRH_HUB_TIMEOUT=junk failed the check of each hub model instead of the run."""
    cases = {"PRH_DECODE_WORKERS must be an integer >= 0, got 'junk'": {"PRH_DECODE_WORKERS": "junk"},
             "PRH_DECODE_WORKERS must be an integer >= 0, got '-1'": {"PRH_DECODE_WORKERS": "-1"},
             "PRH_HUB_TIMEOUT='ten' is not a number of seconds above 0": {"PRH_HUB_TIMEOUT": "ten"}}
    for message, refused in _refused_each(cases, tmp_path, forks).items():
        assert len(refused) == 2 and all(message in line for line in refused), (message, refused)


def test_runs_in_parallel_tells_the_one_thread_runner_from_the_others():
    """Decided through Prefect's public comparison of thread-pool runners, not its private
    ``_max_workers``: one thread (``sequential``, ``threads:1``) runs one task at a time."""
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import make_task_runner, runs_in_parallel

    assert not runs_in_parallel(make_task_runner("sequential")) and not runs_in_parallel(make_task_runner("threads:1"))
    assert not runs_in_parallel(make_task_runner("sequential").duplicate())  # what a flow run's context holds
    assert runs_in_parallel(make_task_runner("threads:2")) and runs_in_parallel(ThreadPoolTaskRunner(max_workers=3))
    assert runs_in_parallel(DaskTaskRunner(address="tcp://127.0.0.1:1")) and runs_in_parallel(None)
