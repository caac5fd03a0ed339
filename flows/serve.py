"""``python -m flows.serve`` (``make serve``): a local Prefect server with its UI, the work pools,
the GPU concurrency limit, every deployment of ``prefect.yaml`` and a process worker, so that a
user opens the UI and clicks Run.

Everything binds to 127.0.0.1. Ctrl-C stops the worker and the server (by PID: TERM, then INT,
then KILL). The helpers here are also what the deployment test uses.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CPU_POOL = "prh-cpu"
GPU_POOL = "prh-gpu"
GPU_TAG = "prh-gpu"  # tasks.extract_task.GPU_TAG (not imported: keeps this module light)
#: Days the server keeps a finished flow run, with its task runs, logs and artifacts
#: (``--history-days``; Prefect's ``db_vacuum`` service deletes older ones every hour). The store
#: keeps every result and run record; without this the server's database grows every night.
HISTORY_DAYS = 90
#: Prefect's lease storage that outlives a server restart (``PREFECT_HOME/concurrency_leases``).
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
#: A log file of the home (``server.log``, ``worker-*.log``) is rotated once it holds this many
#: bytes (:func:`rotate_log`), at start-up and then at most a second later while ``make serve`` runs.
LOG_MAX_BYTES = 10 * 2**20
#: Rotated copies kept of each log (``worker-prh-cpu.log.1`` the newest, ... ``.3`` the oldest).
LOG_KEEP = 3
#: Free bytes a rotation leaves on the home's disk beyond its copy (``flows.prefect_env.LOW_ROOM_MB``:
#: less, and the server's own writes to its database there start to fail): a rotation with less
#: room does not start (:func:`rotate_log`).
LOG_ROOM_LEFT_BYTES = 16 * 2**20


def prefect_env(port: int, home: Path, base: Mapping[str, str] | None = None,
                history_days: int = HISTORY_DAYS) -> dict[str, str]:
    """Environment for Prefect processes talking to the server on 127.0.0.1:``port``; the server
    deletes flow runs finished more than ``history_days`` days ago (0: keeps them all)."""
    env = dict(os.environ if base is None else base)
    for key in [k for k in env if k.startswith("PREFECT_")]:
        env.pop(key)  # nothing inherited may point the processes at another API
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_UI_URL=f"http://127.0.0.1:{port}",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        DO_NOT_TRACK="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        # Concurrency leases (the prh-gpu slot an extraction holds, a deployment's slot) on disk
        # under PREFECT_HOME: Prefect's default keeps them in the server's memory, so a server
        # restarted while an extraction held a slot lost its lease and the slot stayed taken for
        # ever (every later extraction on the server waited for it; a nightly run hung).
        PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=LEASE_STORAGE,
    )
    if history_days > 0:  # events are vacuumed by default; flow runs only when asked
        env.update(PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED="events,flow_runs",
                   PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD=str(history_days * 86400))
    # log lines dated in UTC (server.log, worker-*.log and the flow runs' lines), no colour under NO_COLOR
    from flows.prefect_env import logging_environment  # light: no Prefect import

    env.update(logging_environment(env))
    return env


def prefect_cli() -> list[str]:
    """The ``prefect`` command of this interpreter's environment."""
    exe = Path(sys.executable).parent / "prefect"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


def start_server(port: int, env: Mapping[str, str], log: Any = None) -> subprocess.Popen[bytes]:
    """``prefect server start`` on 127.0.0.1:``port`` (API and UI), in its own process group."""
    return subprocess.Popen(
        [*prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=dict(env), cwd=PROJECT_ROOT, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=default_stop_signals,
    )


#: The signals a Prefect server or worker that serve starts stops on, set back to their default
#: action in the child (:func:`default_stop_signals`).
DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def default_stop_signals() -> None:
    """In a child process of serve, between fork and exec: SIGINT and SIGTERM back to their default
    action. A process started from a shell's background job (``make serve &``, a CI step, a
    non-interactive ``bash -c '... &'``) has SIGINT ignored, and its children inherited that:
    Prefect's worker answers SIGTERM by sending itself SIGINT, to stop as Ctrl-C does (the handler
    of ``prefect.utilities.processutils.setup_signal_handlers_worker``), and with SIGINT ignored
    that signal did nothing, so the worker outlived SIGTERM and then SIGINT, and ended only by the
    SIGKILL that Prefect's handler sends on the next signal (``stop_all`` waited its grace twice).
    With SIGINT at its default, Python's Ctrl-C handling is installed and the worker stops on
    SIGTERM in about a second."""
    for number in DEFAULT_SIGNALS:
        signal.signal(number, signal.SIG_DFL)


def wait_healthy(api_url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120) -> None:
    """Wait until ``GET {api_url}/health`` answers, or raise (also if ``proc`` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server at {api_url} did not answer within {timeout:.0f}s")


def ensure_work_pool(api_url: str, name: str, pool_type: str = "process") -> None:
    """Create the work pool (nothing if it exists)."""
    try:
        api_request("POST", f"{api_url}/work_pools/", json={"name": name, "type": pool_type})
    except httpx.HTTPStatusError as error:
        if error.response.status_code != 409:  # 409: it exists
            raise


def ensure_concurrency_limit(api_url: str, tag: str, limit: int) -> None:
    """A tag-based concurrency limit (``prefect concurrency-limit create TAG LIMIT``)."""
    api_request("POST", f"{api_url}/concurrency_limits/", json={"tag": tag, "concurrency_limit": limit})


def deploy_all(env: Mapping[str, str], timeout: float = 300) -> None:
    """``prefect --no-prompt deploy --all`` with this project's ``prefect.yaml``."""
    done = subprocess.run([*prefect_cli(), "--no-prompt", "deploy", "--all"], env=dict(env), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy --all failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def api_request(method: str, url: str, attempts: int = 10, **kwargs: Any) -> httpx.Response:
    """One call to the Prefect API, retried like Prefect's own client while the server answers
    429/503 (its SQLite database busy on a small machine); raises for any other error status."""
    for attempt in range(attempts):
        response = httpx.request(method, url, timeout=30, **kwargs)
        if response.status_code not in (429, 503):
            break
        time.sleep(0.5 * (attempt + 1))
    response.raise_for_status()
    return response


def schedule_states(api_url: str) -> dict[str, list[bool]]:
    """``{deployment id: [active flag of each schedule, in order]}`` of the deployments the server holds."""
    response = api_request("POST", f"{api_url}/deployments/filter", json={})
    return {d["id"]: [bool(s.get("active")) for s in d.get("schedules") or []] for d in response.json()}


def restore_schedule_states(api_url: str, before: dict[str, list[bool]]) -> list[str]:
    """Set the schedules of deployments that existed ``before`` a deploy back to the active flags
    they had (switched in the UI): ``prefect deploy`` re-applies prefect.yaml's ``active:``.
    Returns the ``flow/deployment`` names changed back."""
    restored = []
    for deployment in api_request("POST", f"{api_url}/deployments/filter", json={}).json():
        flags = before.get(deployment["id"])
        schedules = deployment.get("schedules") or []
        if flags is None or len(flags) != len(schedules):
            continue
        for flag, schedule in zip(flags, schedules):
            if bool(schedule.get("active")) != flag:
                api_request("PATCH", f"{api_url}/deployments/{deployment['id']}/schedules/{schedule['id']}",
                            json={"active": flag})
                restored.append(deployment["name"])
    return sorted(set(restored))


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port`` (another Prefect server?)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (it is the number of extractions that may run at once "
                                         f"on a worker machine; a CPU-only machine has 1), got {value}")
    return value


def _home(text: str) -> str:
    """``--home`` (default ``$PREFECT_HOME``) as an absolute path with ``~`` expanded, as Prefect
    reads ``PREFECT_HOME``: the folder serve writes its lock and logs to is then the one whose
    database the server (started in this checkout) opens. ``~/x`` had made a folder named ``~``
    in the working directory, and a relative path was taken from two working directories."""
    if not text.strip():  # Path('') is the working directory
        raise argparse.ArgumentTypeError("must name a folder, got an empty path (leave --home out for $PREFECT_HOME, "
                                         "else .prefect of this checkout)")
    return str(Path(text).expanduser().absolute())


def _port(text: str) -> int:
    """A TCP port, 1 to 65535 (``--port``, ``$PRH_SERVE_PORT``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, 1 to 65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, 1 to 65535, got {value}")
    return value


def check_metric_modules() -> str | None:
    """Why ``$PRH_METRIC_MODULES`` cannot be imported here, or None (unset, or every module
    imports). The deployments' UI form lists the metrics registered when they are deployed: a
    module failing there had left its metrics off the form without a word."""
    if not os.environ.get("PRH_METRIC_MODULES", "").strip():
        return None
    from tasks.metric_plugins import load_metric_modules  # imports torch: only when user metrics are asked for

    try:
        load_metric_modules()
    except ValueError as error:
        return str(error)
    return None


def _days(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (keep every flow run) or more days, got {value}")
    return value


def start_worker(pool: str, env: Mapping[str, str], log: Any = None, limit: int | None = None) -> subprocess.Popen[bytes]:
    """A process worker polling ``pool`` (``limit``: at most that many flow runs at once), which
    stops on SIGTERM (:func:`default_stop_signals`)."""
    command = [*prefect_cli(), "worker", "start", "--pool", pool, "--type", "process"]
    if limit:
        command += ["--limit", str(limit)]
    return subprocess.Popen(command, env=dict(env), cwd=PROJECT_ROOT, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=default_stop_signals)


def local_gpu_ids(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs of this machine that ``--gpu-worker`` starts one ``prh-gpu`` worker each for: the
    entries of ``CUDA_VISIBLE_DEVICES`` where it is set (up to the first negative one, which
    hides the rest, as CUDA reads it; empty: none), else ``0 .. torch.cuda.device_count() - 1``
    (``[]`` without CUDA)."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids: list[str] = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return ids
    import torch  # only here: the server and the CPU worker do not need it

    return [str(i) for i in range(torch.cuda.device_count())]


def start_gpu_workers(env: Mapping[str, str], gpu_ids: Sequence[str],
                      log_dir: Path | None = None) -> list[subprocess.Popen[bytes]]:
    """One ``prh-gpu`` worker per GPU in ``gpu_ids``, each seeing only its GPU
    (``CUDA_VISIBLE_DEVICES``) and running one flow run at a time (``--limit 1``); no ids (a
    CPU-only machine): one worker, unpinned. Each writes its output to its own file in
    ``log_dir`` (:func:`worker_log_path`; None: discarded)."""
    if not gpu_ids:
        return [start_logged_worker(GPU_POOL, env, log_dir, limit=1)]
    return [start_logged_worker(GPU_POOL, {**env, "CUDA_VISIBLE_DEVICES": gpu}, log_dir, limit=1, gpu=gpu)
            for gpu in gpu_ids]


def worker_log_path(log_dir: Path, pool: str, gpu: str | None = None) -> Path:
    """The file of a worker's output: ``<log_dir>/worker-<pool>.log``, ``worker-<pool>-gpu<id>.log``
    for a worker pinned to GPU ``gpu``. It holds what the UI does not show: the worker's own lines
    and the output of its flow runs' processes (a process that dies before it reaches the API, or a
    library's warnings on stderr; the UI shows only the exit code of the first). A character of
    ``gpu`` other than a letter, digit, ``.``, ``_`` or ``-`` is written ``_`` (a legacy MIG id,
    ``MIG-GPU-<uuid>/<gi>/<ci>``, would name subdirectories that do not exist)."""
    if gpu is None:
        return log_dir / f"worker-{pool}.log"
    return log_dir / f"worker-{pool}-gpu{re.sub(r'[^A-Za-z0-9._-]', '_', gpu)}.log"


def start_logged_worker(pool: str, env: Mapping[str, str], log_dir: Path | None, limit: int | None = None,
                        gpu: str | None = None) -> subprocess.Popen[bytes]:
    """:func:`start_worker` with its output appended to :func:`worker_log_path` in ``log_dir``
    (None: discarded)."""
    if log_dir is None:
        return start_worker(pool, env, None, limit=limit)
    with open(worker_log_path(log_dir, pool, gpu), "ab") as log:  # the worker holds its own copy of the file
        return start_worker(pool, env, log, limit=limit)


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Rotate ``path`` once it holds ``max_bytes`` or more: it is copied (to ``path.rotating``),
    ``path.<keep-1>`` becomes ``path.<keep>`` (the oldest copy is dropped), ..., ``path.1``
    becomes ``path.2``, the copy becomes ``path.1``, then ``path`` is emptied in place
    ("copytruncate"). The server and the workers keep the file open and write on: they opened it
    for appending, so their next line lands at its new start. A line written between the end of
    the copy and the truncation (a few renames: microseconds) is lost. A disk without room for
    the copy and :data:`LOG_ROOM_LEFT_BYTES` more is an ``OSError`` (``ENOSPC``) before anything
    is written (a copy that filled the disk, then went, left the server's database no room on
    every retry), unless the filesystem reports no size at all (0 bytes in all: some FUSE mounts),
    which is not checked; a copy that fails all the same changes nothing (``OSError``). Returns whether
    it rotated (False: smaller, or missing). ``keep`` >= 1."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size < max_bytes:
        return False
    usage = shutil.disk_usage(path.parent)
    free = usage.free
    if usage.total > 0 and free < size + LOG_ROOM_LEFT_BYTES:  # total 0: the filesystem tells no sizes
        raise OSError(errno.ENOSPC, f"no room for its copy ({size:,} bytes, with {LOG_ROOM_LEFT_BYTES // 2**20} MiB left "
                                    f"to the server; {free:,} bytes free)", str(path))
    copies = [path.with_name(f"{path.name}.{i}") for i in range(1, keep + 1)]
    rotating = path.with_name(f"{path.name}.rotating")
    try:
        with open(path, "r+b") as source:
            with open(rotating, "wb") as copy:
                shutil.copyfileobj(source, copy, 1 << 20)
            for older, newer in reversed(list(zip(copies, copies[1:]))):
                if older.exists():
                    os.replace(older, newer)
            os.replace(rotating, copies[0])
            source.truncate(0)
    finally:
        rotating.unlink(missing_ok=True)
    return True


#: Seconds before a log whose rotation failed is tried again (each try copies the whole file).
LOG_RETRY_S = 60.0


def rotate_logs(home: Path, failed: dict[Path, float] | None = None) -> None:
    """:func:`rotate_log` of ``server.log`` and every ``worker-*.log`` in ``home``. A rotation that
    fails (a full disk) never stops the server: it is said on stderr the first time, and tried
    again :data:`LOG_RETRY_S` later (``failed``: each such file's time of failure, kept by the caller)."""
    failed = {} if failed is None else failed
    now = time.monotonic()
    for path in [home / "server.log", *sorted(home.glob("worker-*.log"))]:
        if now - failed.get(path, -LOG_RETRY_S) < LOG_RETRY_S:
            continue
        try:
            rotate_log(path, LOG_MAX_BYTES, LOG_KEEP)
        except OSError as error:
            if path not in failed:
                print(f"could not rotate {path}: {error.strerror or error}; it grows on until a rotation succeeds "
                      f"(tried every {LOG_RETRY_S:g} s)", file=sys.stderr, flush=True)
            failed[path] = now


def _not_written(error: OSError, what_then: str) -> str:
    """One line for a file of the home that cannot be opened or written (``error`` names it)."""
    return (f"cannot write {error.filename}: {error.strerror or error}; give PREFECT_HOME (--home DIR) a folder this "
            f"user can write on a disk with room; {what_then}")


def stop(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """Stop ``proc`` and its process group by PID: TERM, then INT, then KILL (:func:`stop_all`)."""
    stop_all([proc], grace)


def stop_all(procs: Sequence[subprocess.Popen[Any]], grace: float = 10) -> None:
    """Stop ``procs`` and their process groups together: TERM to all, up to ``grace`` seconds for
    all of them, then INT to those left, then KILL. A Prefect worker started with SIGINT ignored
    (a worker of your own started in a shell's background job; serve's own have it at its default:
    :func:`default_stop_signals`) outlives TERM and ends by the SIGKILL its own handler sends itself
    on the INT; one at a time, such workers had cost 2 x ``grace`` seconds each."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        alive = [proc for proc in procs if proc.poll() is None]
        for proc in list(alive):
            try:
                os.killpg(proc.pid, sig)  # the group: servers and workers start children of their own
            except ProcessLookupError:
                alive.remove(proc)
        deadline = time.monotonic() + grace
        for proc in alive:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue
        if all(proc.poll() is not None for proc in alive):
            break


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=_port, default=None,
                        help="the server's port on 127.0.0.1 (default: $PRH_SERVE_PORT, else 4200)")
    from flows.prefect_env import folder_write_problem, prefect_home  # light: no Prefect import

    parser.add_argument("--home", type=_home, default=prefect_home(str(PROJECT_ROOT / ".prefect")),
                        help="PREFECT_HOME (default: $PREFECT_HOME where it is set and not empty, else .prefect of this "
                             "checkout; ~ is expanded)")
    parser.add_argument("--gpus", type=_positive_int, default=None,
                        help="concurrency limit of the prh-gpu tag: extractions at once across the server (the GPUs of all "
                             "GPU workers together; default: this machine's GPU workers, at least 1)")
    parser.add_argument("--gpu-worker", action="store_true",
                        help="also start prh-gpu workers on this machine: one per GPU (CUDA_VISIBLE_DEVICES set to it, "
                             "--limit 1; the GPUs are CUDA_VISIBLE_DEVICES's where it is set), one unpinned without CUDA")
    parser.add_argument("--no-worker", action="store_true", help="server and deployments only")
    parser.add_argument("--history-days", type=_days, default=HISTORY_DAYS,
                        help=f"the server deletes flow runs (with their logs and artifacts) finished more than this many "
                             f"days ago; the store keeps every result (default {HISTORY_DAYS}; 0: keep them all)")
    args = parser.parse_args(argv)
    if not (PROJECT_ROOT / "prefect.yaml").is_file():  # an installed prh (a wheel): its packages, no prefect.yaml
        print(f"no prefect.yaml in {PROJECT_ROOT}: python -m flows.serve deploys the prefect.yaml of a prh checkout "
              "(a clone of the repository, where `make serve` runs it); this prh is an installed copy. Nothing was "
              "started", file=sys.stderr)
        return 2
    if args.port is None:
        raw = os.environ.get("PRH_SERVE_PORT", "").strip() or "4200"
        try:
            args.port = _port(raw)
        except argparse.ArgumentTypeError as error:
            print(f"PRH_SERVE_PORT={raw!r}: {error}", file=sys.stderr)
            return 2

    gpu_ids = local_gpu_ids() if args.gpu_worker and not args.no_worker else []
    gpu_limit = args.gpus if args.gpus is not None else max(1, len(gpu_ids))
    env = prefect_env(args.port, Path(args.home), history_days=args.history_days)
    api_url = env["PREFECT_API_URL"]
    children: list[subprocess.Popen[bytes]] = []
    rotation_failed: dict[Path, float] = {}  # logs whose rotation failed: when (rotate_logs)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` (systemd, docker stop) stops the children too, as Ctrl-C
    problem = folder_write_problem(Path(args.home))  # created here where it does not exist
    if problem is not None:  # a path under a file, a read-only disk, no permission, a full disk
        print(f"PREFECT_HOME {args.home}: cannot write there ({problem}); the Prefect server keeps its database, "
              "logs and lock there: give a folder this user can write on a disk with room (--home DIR, or "
              "PREFECT_HOME); nothing was started", file=sys.stderr)
        return 2
    plugins = check_metric_modules()
    if plugins is not None:
        print(f"{plugins}\n(the UI form would list no metric of it; fix it, or unset PRH_METRIC_MODULES)", file=sys.stderr)
        return 2
    if port_in_use(args.port):  # its /health would pass for ours, and we would redeploy onto it
        print(f"port {args.port} on 127.0.0.1 is in use (another Prefect server?): stop it, or pick another port "
              f"(make serve PORT=4300)", file=sys.stderr)
        return 2
    try:
        home_lock, holder = hold_home(Path(args.home), args.port)
    except OSError as error:  # serve.lock cannot be opened (a folder of that name, the disk changed since)
        print(_not_written(error, "nothing was started"), file=sys.stderr)
        return 2
    if home_lock is None:  # a second server on the same SQLite database: both would write it
        print(f"PREFECT_HOME {args.home} is used by another `make serve` ({holder or 'its process'}): stop it, or give "
              "this one its own home (python -m flows.serve --home DIR)", file=sys.stderr)
        return 2
    try:
        rotate_logs(Path(args.home), rotation_failed)  # what earlier runs wrote, before the server and workers append to it
        print(f"starting the Prefect server on 127.0.0.1:{args.port} (PREFECT_HOME={args.home}) ...", flush=True)
        server_log = open(Path(args.home) / "server.log", "ab")
        children.append(start_server(args.port, env, server_log))
        wait_healthy(api_url, children[0], timeout=180)
        for pool in (CPU_POOL, GPU_POOL):
            ensure_work_pool(api_url, pool)
        ensure_concurrency_limit(api_url, GPU_TAG, gpu_limit)
        print("deploying prefect.yaml ...", flush=True)
        before = schedule_states(api_url)
        deploy_all(env)
        for name in restore_schedule_states(api_url, before):
            print(f"kept the schedule switch of {name} as it was set in the UI (prefect.yaml says otherwise)", flush=True)
        if not args.no_worker:
            children.append(start_logged_worker(CPU_POOL, env, Path(args.home)))
            if args.gpu_worker:
                children.extend(start_gpu_workers(env, gpu_ids, Path(args.home)))
        workers = "none" if args.no_worker else CPU_POOL
        if args.gpu_worker and not args.no_worker:
            workers += f" and {GPU_POOL}" + (f" x{len(gpu_ids)} (GPUs {', '.join(gpu_ids)})" if gpu_ids else " (no GPU found)")
        print(
            f"\nPrefect UI: {env['PREFECT_UI_URL']}  (Deployments → prh-pipeline/cpu → Run)\n"
            f"API: {api_url}; logs: {Path(args.home) / 'server.log'}"
            + ("" if args.no_worker else f", {Path(args.home) / 'worker-*.log'} (the workers' output)") + "\n"
            f"workers: {workers}; {GPU_TAG} limit {gpu_limit}; Ctrl-C stops everything.",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(1)
            rotate_logs(Path(args.home), rotation_failed)
        print("a child process exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except OSError as error:
        if error.filename is None or Path(str(error.filename)).parent != Path(args.home):
            raise  # not a file of the home (a log, the lock)
        print(_not_written(error, "stopped what had been started"), file=sys.stderr)  # the finally below stops them
        return 2
    finally:
        stop_all(children[1:])  # the workers together, then the server they report to
        if children:
            stop(children[0])


def hold_home(home: Path, port: int) -> tuple[Any, str]:
    """Lock ``home`` (``serve.lock`` in it, ``flock``) for this process's life: one server per
    PREFECT_HOME, whose SQLite database two servers (on two ports) would write at once. Returns
    the open lock file (keep it open; its close, or the process's end, releases it) and ``''``, or
    ``None`` and what the holder wrote (``pid N, port P``). Where ``flock`` does not exist, the
    lock is not taken (an object that is not a file, and ``''``)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return object(), ""
    handle = open(home / "serve.lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()[:200]
        handle.close()
        return None, holder
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, port {port}")
    handle.flush()
    return handle, ""


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: unwind through ``main``'s ``finally``, which stops the children."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
