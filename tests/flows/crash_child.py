"""Child process for the crash tests: runs the pipeline and, at a chosen point, announces itself
(writes a marker file) and waits to be killed with SIGKILL by the test.

    python -m tests.flows.crash_child STORE CONFIG_JSON POINT MARKER
    python -m tests.flows.crash_child --forks

``--forks``: import the pipeline and the libraries it loads models with once, then run each case
read from stdin (a JSON line: store, config, point, marker, stderr file) in a fork of this process,
as the first form does in a process of its own: the same code from the same point on, without
~10 s of CPU importing torch, Prefect and transformers again for each of the crash tests' six
children. Answers on stdout (JSON lines): ``{"started": PID}`` for each case, in order, and
``{"ended": PID, "code": EXIT}`` once the fork has ended (its code as ``Popen.returncode`` gives
it: -9 for SIGKILL); this process ends once stdin is closed and its forks have ended.

POINT: ``none`` (run to the end), ``extraction`` (after the first feature shard is stored),
``alignment`` (while a model pair is being scored), ``publish-features`` (every layer file of a
feature version written, its manifest not), ``publish-alignment`` (scores written, best and
manifest not). The pipeline code is untouched; only these seams are wrapped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _announce_then_hang(marker: Path) -> None:
    marker.write_text("reached")
    time.sleep(600)


def _wrap(owner: Any, name: str, before: Callable[..., bool] | None = None, after: Callable[..., bool] | None = None,
          marker: Path | None = None) -> None:
    real = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before is not None and before(*args, **kwargs):
            _announce_then_hang(marker)
        out = real(*args, **kwargs)
        if after is not None and after(*args, **kwargs):
            _announce_then_hang(marker)
        return out

    setattr(owner, name, wrapped)


def main(store: str, config_json: str, point: str, marker: Path) -> None:
    import tasks.align_task as align_task
    import tasks.extract_task as extract_task
    from flows.pipeline import prh_pipeline
    from storage.store import Store
    from tasks.params import PipelineConfig

    always = lambda *a, **k: True  # noqa: E731
    if point == "extraction":
        _wrap(extract_task, "write_shard", after=always, marker=marker)
    elif point == "alignment":
        _wrap(align_task, "align_layers", before=always, marker=marker)
    elif point == "publish-features":
        _wrap(Store, "create_exclusive", before=lambda self, key, data: key.startswith("features/") and key.endswith("/manifest.json"), marker=marker)
    elif point == "publish-alignment":
        _wrap(Store, "write_bytes", before=lambda self, key, data: key.startswith("alignment/") and key.endswith("/best.parquet"), marker=marker)
    elif point != "none":
        raise SystemExit(f"unknown point {point!r}")
    prh_pipeline(config=PipelineConfig.model_validate(json.loads(config_json)), store=store, report=False)


def serve_forks() -> dict[str, str]:
    """The ``--forks`` loop (module docstring). Returns only in a fork: its case, stdin, stdout and
    stderr already pointed where the case says (stdin and stdout at /dev/null)."""
    import json
    import os
    import select
    import threading

    import flows.pipeline  # noqa: F401  (what main imports, and what the pipeline loads models with)
    import storage.store  # noqa: F401
    import tasks.align_task  # noqa: F401
    import tasks.extract_task  # noqa: F401
    import tasks.params  # noqa: F401
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoTokenizer", "ViTConfig", "ViTModel", "BertConfig", "BertModel",
                 "BertTokenizerFast"):
        getattr(transformers, name, None)
    # a fork copies only the thread that forks: one started by an import would be missing (and any
    # lock it held, held for ever) in every fork
    assert threading.active_count() == 1, threading.enumerate()

    def say(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    pending, running, reading = b"", set(), True
    while reading or running:
        if reading and select.select([0], [], [], 0.05)[0]:
            chunk = os.read(0, 65536)
            reading = bool(chunk)
            pending += chunk
        elif not reading:
            time.sleep(0.05)
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            case = json.loads(line)
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.dup2(os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
                return case
            running.add(pid)
            say({"started": pid})
        for pid in list(running):
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                running.discard(pid)
                say({"ended": pid, "code": os.waitstatus_to_exitcode(status)})
    # nothing of this process is left to flush or close: no interpreter shutdown (its teardown of
    # torch, Prefect and transformers took ~2 s of CPU, 10 s of the file's time on a loaded box)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--forks"]:
        case = serve_forks()
        main(case["store"], case["config"], case["point"], Path(case["marker"]))
    else:
        main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))
