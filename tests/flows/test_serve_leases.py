"""A concurrency slot held across a restart of ``make serve``'s Prefect server is not lost.

Prefect's default lease storage is the server's memory: restarted while an extraction held the
``prh-gpu`` slot, the server forgot the lease, the slot stayed taken for ever and every later
extraction (the rest of that run, the next nightly) waited for it (seen in a hunt: a run stuck
``PENDING`` on its second model after a restart). ``flows.serve.prefect_env`` keeps the leases
on disk under ``PREFECT_HOME``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from flows import serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(home: Path, log: Path) -> tuple[str, object]:
    """A server of ``prefect_env`` on a free loopback port: (API URL, process)."""
    for attempt in range(3):  # a port free when chosen can be taken before the server binds it
        env = serve.prefect_env(_free_port(), home)
        with open(log, "ab") as out:
            proc = serve.start_server(int(env["PREFECT_SERVER_API_PORT"]), env, out)
        try:
            serve.wait_healthy(env["PREFECT_API_URL"], proc, timeout=120)
            return env["PREFECT_API_URL"], proc
        except RuntimeError:
            serve.stop(proc)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _active_slots(api: str) -> int:
    response = serve.api_request("GET", f"{api}/v2/concurrency_limits/tag:{serve.GPU_TAG}")
    return int(response.json()["active_slots"])


def test_a_slot_held_across_a_server_restart_is_released(tmp_path):
    home, log = tmp_path / "home", tmp_path / "server.log"
    api, proc = _start(home, log)
    try:
        serve.ensure_concurrency_limit(api, serve.GPU_TAG, 1)
        lease = serve.api_request("POST", f"{api}/v2/concurrency_limits/increment-with-lease",
                                  json={"slots": 1, "names": [f"tag:{serve.GPU_TAG}"], "lease_duration": 300}).json()
        assert _active_slots(api) == 1  # an extraction task holds the GPU slot ...
        serve.stop(proc)  # ... when the server is restarted
        api, proc = _start(home, log)
        renewed = httpx.post(f"{api}/v2/concurrency_limits/leases/{lease['lease_id']}/renew",
                             json={"lease_duration": 300}, timeout=30)
        assert renewed.status_code == 204, (renewed.status_code, renewed.text)  # 410 Gone: the lease was forgotten
        serve.api_request("POST", f"{api}/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease["lease_id"]})
        assert _active_slots(api) == 0  # the task's release frees the slot; it had stayed taken for ever
    finally:
        serve.stop(proc)
    assert proc.poll() is not None
