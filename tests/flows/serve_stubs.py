"""The start of a child script that runs `flows.serve.main` for real with the server and its API
calls stood in for (a process that sleeps; no work pool, deployments, schedules or port checks):
tests add their own `serve.prefect_cli` (the worker's command) and the `serve.main(...)` call."""

SERVE_STUBS = """
import subprocess, sys
from flows import serve
def server(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
serve.start_server = server
serve.wait_healthy = serve.ensure_work_pool = serve.ensure_concurrency_limit = serve.deploy_all = lambda *a, **k: None
serve.schedule_states, serve.restore_schedule_states, serve.port_in_use = (lambda *a, **k: {}), (lambda *a, **k: []), (lambda *a: False)
"""
