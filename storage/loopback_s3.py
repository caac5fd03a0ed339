"""A real S3 endpoint on loopback for tests, benchmarks and local trials: moto's server mode.

``moto_server`` speaks the S3 HTTP protocol, so s3fs, boto3 and DuckDB (through s3fs) talk to it
exactly as to a remote bucket. Nothing leaves the machine: it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


#: the line werkzeug (moto's server) logs once it listens
_LISTENING = re.compile(r"Running on https?://127\.0\.0\.1:(\d+)")


def start_moto_server(timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """Start ``moto_server`` (from this interpreter's environment) on a loopback port it binds
    itself (port 0: no other process can take the port between choosing and binding it).

    Returns the process and its endpoint URL once it accepts connections; raises RuntimeError if
    it does not within ``timeout_s``. Its log (stderr: the port, then a line per request) is read
    to its end by a daemon thread, so that a full pipe never blocks it. Stop it with
    :func:`stop_server`.
    """
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    ports: queue.Queue[int] = queue.Queue()

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            found = _LISTENING.search(line)
            if found and ports.empty():
                ports.put(int(found.group(1)))

    threading.Thread(target=read_log, name="moto-server-log", daemon=True).start()
    deadline = time.monotonic() + timeout_s  # a wall clock stepped meanwhile (NTP) neither ends nor stretches the wait
    port = None
    while True:
        if port is None:
            try:
                port = ports.get(timeout=0.2)
            except queue.Empty:
                pass
        if port is not None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return proc, f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.2)
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("moto_server did not start")


def stop_server(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    """Terminate a server started here, killing it if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def loopback_s3(access_key: str = "prh-local", secret_key: str = "prh-local-secret") -> Iterator[dict[str, str]]:
    """A moto S3 server with the standard AWS variables pointing at it, for the ``with`` block.

    Yields the variables it set (``AWS_ENDPOINT_URL`` holds the endpoint); on exit the server is
    stopped and the previous values of the variables are restored.
    """
    proc, endpoint = start_moto_server()
    env = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        stop_server(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
