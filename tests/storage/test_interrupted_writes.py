"""A local store's writer interrupted by an exception (Ctrl-C's ``KeyboardInterrupt``, prh run's
SIGTERM turned into one) at any point before its file is published leaves no temporary file:
a claim's, a manifest's or any file's ``.<name>.tmp-<uuid>`` had stayed until ``prh gc`` took it
for a killed writer's, 5 minutes later, when the interrupt came between the temporary file's
fsync and the code that removes it on failure."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import pytest

import storage.store
from storage.store import TEMP_INFIX, Store

STORE_CODE = storage.store.__file__


class Interrupted(KeyboardInterrupt):
    """The interrupt the tracer raises (a ``KeyboardInterrupt``, as Ctrl-C's)."""


def _interrupt_at(line: int, published: Path, write: Callable[[], Any]) -> bool:
    """Run ``write`` with an ``Interrupted`` raised at its ``line``-th line event in
    storage/store.py, counting only events before ``published`` exists; True if it was raised."""
    seen = 0
    raised = False

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen, raised
        if event == "line" and not raised and not published.exists():
            seen += 1
            if seen == line:
                raised = True
                raise Interrupted
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == STORE_CODE else None

    sys.settrace(tracer)
    try:
        write()
    except Interrupted:
        pass
    finally:
        sys.settrace(None)
    return raised


@pytest.mark.parametrize("how", ["create_exclusive", "write_bytes"])
def test_an_interrupt_before_the_file_is_published_leaves_no_temporary_file(tmp_path, how):
    """``create_exclusive`` (claims, manifests) and ``write_bytes`` (signs of life, records, data
    files), interrupted at each line they run in turn until the file is published."""
    store = Store(str(tmp_path / "store"))
    folder = tmp_path / "store" / "features" / "v"
    interrupts = 0
    for line in range(1, 500):
        key = f"features/v/.manifest-{line}.json"
        if not _interrupt_at(line, Path(store.path(key)), lambda: getattr(store, how)(key, b"{}")):
            break
        interrupts += 1
        left = [name for name in os.listdir(folder) if TEMP_INFIX in name] if folder.exists() else []
        assert left == [], f"interrupted at line event {line}: {left}"
    assert interrupts > 5  # the write was interrupted all along its way, then ran through
    assert Path(store.path(key)).read_bytes() == b"{}"
