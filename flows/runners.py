"""Task runners for the pipeline flow, chosen by name (``PRH_TASK_RUNNER``).

- ``sequential`` (default): one task at a time, in the flow run's process. Safe on one GPU and
  on a small machine; the concurrency limit on the ``prh-gpu`` tag still guards the GPU against
  other flow runs.
- ``threads`` or ``threads:N``: N threads (default 4) in the flow run's process.
- ``dask``: a temporary local Dask cluster (``PRH_DASK_WORKERS`` workers, default 2, one thread
  each), or any cluster class: ``PRH_DASK_CLUSTER_CLASS=dask_jobqueue.SLURMCluster`` with
  ``PRH_DASK_CLUSTER_KWARGS='{"cores": 8, ...}'`` and ``PRH_DASK_ADAPT_KWARGS='{"maximum": 10}'``.
- ``dask:tcp://host:8786``: an existing Dask scheduler.

Extraction fans out one task per model and alignment one task per model pair; which of them run
at the same time is the runner's business.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from storage.env_numbers import env_number

ENV = "PRH_TASK_RUNNER"


def make_task_runner(spec: str | None = None) -> TaskRunner[Any]:
    """The task runner named by ``spec`` (default: ``$PRH_TASK_RUNNER`` or ``sequential``)."""
    spec = (spec if spec is not None else os.environ.get(ENV, "")).strip() or "sequential"
    kind, _, arg = spec.partition(":")
    if kind == "sequential" and not arg:
        return ThreadPoolTaskRunner(max_workers=1)
    if kind == "threads":
        try:
            workers = int(arg) if arg else 4
        except ValueError:
            raise ValueError(f"{ENV}={spec!r}: the number of threads must be a whole number (threads:4)") from None
        if workers < 1:
            raise ValueError(f"{ENV}={spec!r}: the number of threads must be at least 1")
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        return _dask_runner(arg)
    raise ValueError(f"{ENV}={spec!r}: expected one of 'sequential', 'threads[:N]', 'dask', 'dask:<scheduler address>'")


def flow_task_runner() -> TaskRunner[Any]:
    """The runner for a ``@flow`` decorator: :func:`make_task_runner`, or the sequential runner when
    ``$PRH_TASK_RUNNER`` is not valid. The decorator runs when a worker imports the flow's module:
    an error there crashed the run with no reason in its Prefect state ("Process exited with
    status code: 1"); the flow's first step, :func:`check_task_runner`, fails it with the reason."""
    try:
        return make_task_runner()
    except ValueError:
        return ThreadPoolTaskRunner(max_workers=1)


def check_task_runner() -> None:
    """Raise ``ValueError`` naming ``$PRH_TASK_RUNNER`` and what is wrong with it, if anything
    (also ``PRH_DASK_WORKERS``, and a scheduler address that no Dask scheduler answers at)."""
    make_task_runner()
    kind, _, address = os.environ.get(ENV, "").strip().partition(":")
    if kind == "dask" and address:
        _probe_scheduler(address)


def check_run_environment() -> None:
    """What a run reads from the environment, checked before it loads anything: the task runner
    (:func:`check_task_runner`), ``PRH_MODEL_LOAD_TIMEOUT``, ``PRH_FEATURE_CACHE_MB``,
    ``PRH_ALIGN_MEMORY_MB``, ``PRH_DECODE_WORKERS`` and ``PRH_HUB_TIMEOUT``. Raises ``ValueError``
    naming the variable (a typo had failed every model at extraction, after the dataset was loaded;
    a bad memory figure, at the first pair; a bad decode worker count, each vision model of 512 or
    more images once its weights had loaded; a bad hub timeout, each hub model's check)."""
    from storage.pairing import cache_budget
    from tasks.extract.image_pool import default_workers
    from tasks.extract.preflight import hub_timeout
    from tasks.memory_available import memory_override
    from tasks.retries import model_load_timeout

    check_task_runner()
    model_load_timeout()
    cache_budget()
    memory_override()
    default_workers(accelerator=False)  # reads PRH_DECODE_WORKERS as extraction will
    hub_timeout()


#: seconds to wait for a Dask scheduler to accept a connection when a run starts
SCHEDULER_PROBE_S = 5.0


def _probe_scheduler(address: str) -> None:
    """``ValueError`` naming ``$PRH_TASK_RUNNER`` when nothing accepts a TCP connection at a
    ``tcp://`` (or schemeless ``host:port``) scheduler address; other protocols are not probed.
    Without it the dataset was loaded and published first, then 30 s of Dask's connect timeout
    ended in six tracebacks."""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ValueError(f"{ENV}=dask:{address}: expected a scheduler address tcp://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=SCHEDULER_PROBE_S).close()
    except OSError as error:
        raise ValueError(f"{ENV}=dask:{address}: no Dask scheduler answers at {host}:{port} "
                         f"({error.strerror or type(error).__name__}); start it, or unset {ENV}") from None


def _dask_runner(address: str) -> TaskRunner[Any]:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:  # pragma: no cover - prefect-dask is pinned in requirements.lock
        raise ValueError(f"{ENV}=dask needs prefect-dask: pip install prefect-dask") from error
    if address:
        return DaskTaskRunner(address=address)
    cluster_class = os.environ.get("PRH_DASK_CLUSTER_CLASS", "").strip() or "distributed.LocalCluster"
    _check_cluster_class(cluster_class)
    cluster_kwargs = _json_env("PRH_DASK_CLUSTER_KWARGS")
    if cluster_class == "distributed.LocalCluster":
        adapt = _json_env("PRH_DASK_ADAPT_KWARGS")
        workers = cluster_kwargs.get("n_workers")
        if "n_workers" in cluster_kwargs and not adapt and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"PRH_DASK_CLUSTER_KWARGS: n_workers must be a whole number of at least 1 without "
                             f"PRH_DASK_ADAPT_KWARGS, got {workers!r} (0 workers run no task: the flow would hang)")
        if "n_workers" not in cluster_kwargs:  # 0 workers without adapt: tasks submitted, none run, the flow hung
            at_least = 0 if adapt else 1
            cluster_kwargs["n_workers"] = int(env_number(
                "PRH_DASK_WORKERS", 2, minimum=at_least, integer=True,
                what=f"a whole number of workers, at least {at_least}" + ("" if adapt else " (0 only with PRH_DASK_ADAPT_KWARGS)")))
        cluster_kwargs.setdefault("threads_per_worker", 1)
        cluster_kwargs.setdefault("host", "127.0.0.1")
        cluster_kwargs.setdefault("dashboard_address", None)
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=cluster_kwargs, adapt_kwargs=_json_env("PRH_DASK_ADAPT_KWARGS") or None)


def _json_env(name: str) -> dict[str, Any]:
    """The JSON object in ``$name`` (``{}`` when unset or blank); ``ValueError`` naming it otherwise."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name}={raw!r} is not valid JSON ({error}); it must be a JSON object, e.g. "
                         "'{\"cores\": 8, \"memory\": \"64GB\"}' (keys in double quotes)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {raw!r}")
    return value


def _check_cluster_class(path: str) -> None:
    """``ValueError`` naming ``PRH_DASK_CLUSTER_CLASS`` unless ``path`` (``module.Class``) imports
    to a class: Dask would fail on it only when the flow starts, with a bare import error."""
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except ImportError as error:
        raise ValueError(f"PRH_DASK_CLUSTER_CLASS={path!r}: cannot import {module!r} ({error}); give a cluster class as "
                         "module.Class, e.g. dask_jobqueue.SLURMCluster (installed in this environment)") from None
    except AttributeError:
        found = None
    if not isinstance(found, type):
        raise ValueError(f"PRH_DASK_CLUSTER_CLASS={path!r}: no class {name!r} in {module or 'it'}; give a cluster class as "
                         "module.Class, e.g. dask_jobqueue.SLURMCluster")


def runs_in_parallel(runner: TaskRunner[Any] | None) -> bool:
    """False for the sequential runner (one thread), True for anything that may run tasks at once.
    By Prefect's own comparison of thread-pool runners (their number of threads), not by its private
    ``_max_workers``."""
    return runner != ThreadPoolTaskRunner(max_workers=1)


def preload_libraries() -> None:
    """Import transformers' lazily loaded classes once, before tasks run in threads.

    transformers resolves ``from transformers import AutoModel`` through a lazy module that is not
    safe to resolve from two threads at once (one of them gets an ImportError); resolving the
    names here first makes it safe. Dask worker processes run one task at a time by default.
    """
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a pinned dependency
        return
    for name in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer", "AutoImageProcessor",
                 "PretrainedConfig", "ViTImageProcessorPil", "ByT5Tokenizer"):
        getattr(transformers, name, None)
