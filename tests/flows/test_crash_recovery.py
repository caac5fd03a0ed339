"""Kill -9 the pipeline during extraction, alignment and publishing, and run two pipelines at once
on one store: the rerun completes, readers never see partial, duplicate or orphaned rows, and the
results equal those of an uninterrupted run. Real processes, real Prefect API, real store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.pipeline import prh_pipeline
from storage.catalog import connect, query
from storage.store import CLAIM, TEMP_INFIX, Store
from tasks.params import PipelineConfig
from tests.flows.test_pipeline import TINY_BERT, TINY_VIT

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "dataset": {"kind": "openmoji", "n": 40, "seed": 0, "image_size": 32},
    "models": [TINY_VIT, TINY_BERT],
    "alignment": {"metrics": ["mutual_knn", "cka"], "topk": 5, "permutations": 9, "bootstrap": 10},
}
SCORES = "select metric, model_a, model_b, layer_a, layer_b, score from alignment order by all"
BEST = ("select metric, model_a, model_b, layer_a, layer_b, score, p_value, calibrated_score, ci_low, ci_high "
        "from alignment_best order by all")

pytestmark = pytest.mark.usefixtures("prefect_harness")


class _Forked:
    """A pipeline child run by the fork server (``crash_child --forks``), read like a ``Popen``:
    ``pid``, ``poll()``, ``wait()``, and its stderr as text."""

    def __init__(self, server: "_ForkServer", pid: int, stderr: Path) -> None:
        self.server, self.pid, self.stderr_path = server, pid, stderr

    def poll(self) -> int | None:
        return self.server.codes.get(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        with self.server.changed:
            if not self.server.changed.wait_for(lambda: self.pid in self.server.codes or self.server.gone, timeout):
                raise subprocess.TimeoutExpired(f"crash child {self.pid}", timeout)
        assert self.pid in self.server.codes, "the fork server ended before its child"
        return self.server.codes[self.pid]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


class _ForkServer:
    """``python -m tests.flows.crash_child --forks`` (its docstring): one import of the pipeline
    for all the crash children, each run in a fork of it, a real process that a test kills."""

    def __init__(self, env: dict[str, str]) -> None:
        import threading

        self.proc = subprocess.Popen([sys.executable, "-m", "tests.flows.crash_child", "--forks"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.codes: dict[int, int] = {}
        self.started: list[int] = []
        self.gone = False
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)
            with self.changed:
                if "started" in message:
                    self.started.append(message["started"])
                else:
                    self.codes[message["ended"]] = message["code"]
                self.changed.notify_all()
        with self.changed:
            self.gone = True
            self.changed.notify_all()

    def run(self, store: str, point: str, marker: Path, stderr: Path) -> _Forked:
        case = {"store": store, "config": json.dumps(CONFIG), "point": point, "marker": str(marker), "stderr": str(stderr)}
        with self.changed:
            before = len(self.started)
            self.proc.stdin.write(json.dumps(case) + "\n")
            self.proc.stdin.flush()
            assert self.changed.wait_for(lambda: len(self.started) > before or self.gone, 300), "no fork in 300 s"
            assert not self.gone, f"the fork server ended (rc {self.proc.wait()})"
            return _Forked(self, self.started[before], stderr)

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=120) == 0
        self.reader.join(timeout=10)


@pytest.fixture(scope="module")
def forks(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PRH_TASK_RUNNER": "sequential"}
    server = _ForkServer(env)
    try:
        yield server
    finally:
        server.close()


def _child(forks: _ForkServer, store: str, point: str, marker: Path) -> _Forked:
    return forks.run(store, point, marker, marker.with_name(marker.name + ".stderr"))


def _wait_for(child: _Forked, marker: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended (rc {child.poll()}) before its kill point:\n{child.stderr()[-3000:]}")
        assert time.time() < deadline, "the child never reached its kill point"
        time.sleep(0.1)


def _results(store: str) -> tuple[list[dict], list[dict]]:
    con = connect(Store(store))
    return query(con, SCORES).to_pylist(), query(con, BEST).to_pylist()


def _stray_files(store: str) -> list[str]:
    """Files under features/ and alignment/ that no manifest lists (plus claims and temporaries).

    Resumable shards (``_partial/``) of a version that was never published are not strays: a run
    with the same code would resume from them. (They appear here only when the code changed
    between the killed run and the rerun, as it may while tests run beside development.)"""
    target = Store(store)
    published = {key for prefix in ("features", "alignment") for key, _ in target.manifests(prefix)}
    listed = {f"{key}/{name}" for prefix in ("features", "alignment") for key, m in target.manifests(prefix)
              for name in [*m["files"], "manifest.json"]}
    root = Path(target.root)
    found = {str(p.relative_to(root)) for prefix in ("features", "alignment") for p in (root / prefix).rglob("*") if p.is_file()}
    strays = sorted(f for f in found - listed if "/_partial/" not in f or f.split("/_partial/")[0] in published)
    strays += sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name == CLAIM or TEMP_INFIX in p.name)
    return strays


@pytest.fixture(scope="module")
def reference(tiny_pipeline_store) -> tuple[list[dict], list[dict]]:
    """The results of an uninterrupted run (the session's run of ``CONFIG``, which
    tests/test_independent_audit.py recomputes from its features)."""
    scores, best = _results(tiny_pipeline_store)
    assert len(scores) == 2 * 3 * 3 and len(best) == 2
    return scores, best


@pytest.mark.parametrize("point", ["extraction", "alignment", "publish-features", "publish-alignment"])
def test_killed_run_reruns_to_the_same_results(point, tmp_path, reference, forks):
    store = str(tmp_path / "store")
    child = _child(forks, store, point, tmp_path / "reached")
    try:
        _wait_for(child, tmp_path / "reached")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

    # What readers see right after the kill: only complete versions, no pair half-scored.
    con = connect(Store(store))
    assert query(con, "select count(*) n from alignment").to_pylist() == [{"n": 0}]
    models = query(con, "select model, n_layers from models order by model").to_pylist()
    assert models in ([], [{"model": "tiny-bert", "n_layers": 3}], [{"model": "tiny-bert", "n_layers": 3}, {"model": "tiny-vit", "n_layers": 3}])
    assert query(con, "select count(*) n from features").to_pylist() == [{"n": 40 * 3 * len(models)}]
    # the killed run is shown CRASHED at once (its process is gone), before any run marks it
    assert [r["status"] for r in query(con, "select status from runs").to_pylist()] == ["CRASHED"]
    # and names what it was working on: its dataset version (killed after loading it: its record
    # had kept only what its start wrote), and once its extractions had ended, each model's features
    crashed = query(con, "select dataset_version, feature_versions, extracted from runs").to_pylist()[0]
    assert crashed["dataset_version"] == query(con, "select dataset_version from datasets").column(0)[0].as_py()
    if point in ("alignment", "publish-alignment"):
        stored = {m["model"]: m["feature_version"] for m in query(con, "select model, feature_version from models").to_pylist()}
        assert json.loads(crashed["feature_versions"]) == stored and crashed["extracted"] == ["tiny-bert", "tiny-vit"]
    assert [p.name for p in (Path(store) / "runs" / "alive").iterdir()] != []  # its sign of life, left behind

    rerun = prh_pipeline(config=PipelineConfig.model_validate(CONFIG), store=store, report=False)
    assert rerun["status"] == "COMPLETED"
    assert _results(store) == reference
    assert _stray_files(store) == []
    statuses = query(connect(Store(store)), "select status from runs order by status").to_pylist()
    assert statuses == [{"status": "COMPLETED"}, {"status": "CRASHED"}]
    assert list((Path(store) / "runs" / "alive").iterdir()) == []  # both signs of life removed


def test_two_runs_at_once_on_one_store(tmp_path, reference, forks):
    store = str(tmp_path / "store")
    children = [_child(forks, store, "none", tmp_path / f"never-{i}") for i in range(2)]
    for child in children:
        assert child.wait(timeout=300) == 0, child.stderr()[-3000:]
    assert _results(store) == reference
    assert _stray_files(store) == []
    target = Store(store)
    assert len(list(target.manifests("features"))) == 2 and len(list(target.manifests("alignment"))) == 1
    statuses = query(connect(target), "select status, count(*) n from runs group by status").to_pylist()
    assert statuses == [{"status": "COMPLETED", "n": 2}]
