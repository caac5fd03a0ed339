"""Child process for the crash tests: runs the pipeline and, at a chosen point, announces itself
(writes a marker file) and waits to be killed with SIGKILL by the test.

    python -m tests.flows.crash_child STORE CONFIG_JSON POINT MARKER

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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))
