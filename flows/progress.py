"""How far a run's stage has got over its models or model pairs, and its resources, for the log
and the run record.

- :class:`StageProgress`: one INFO line at most every ``PROGRESS_EVERY_S`` seconds while the flow
  collects a stage's tasks (the extractions, then the pairs), and one when the last is in: done
  of total, how many were new, reused or failed, the time so far and, while some are left, a
  rough time left (the mean time per item so far, times the items left). A stage of many pairs
  had logged nothing between one pair's lines and the next's: how far a 600-pair night had got
  was a count of ``Finished in state`` lines by hand.
- :class:`ResourceMeter`: the flow process's peak resident memory, where torch has used a CUDA
  device in it the peak GPU memory torch allocated, and the bytes it read from stores' data
  files (``storage.bytes_read``), over the run.
- :func:`bytes_published`: the bytes of the files of the versions a run published.

Prefect is imported by :func:`stage_logger` alone: the tests drive the rest with a clock of their own.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.bytes_read import bytes_read

#: Seconds between two progress lines of one stage (:class:`StageProgress`); its last line comes
#: whenever the stage ends.
PROGRESS_EVERY_S = 30.0


def _seconds(value: float) -> str:
    """``42 s``, ``12 min 5 s``, ``3 h 2 min``: a duration as a person reads it in a log line."""
    whole = max(0, round(value))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


class StageProgress:
    """Progress of one stage of the run over ``total`` items (``unit``: ``models``, ``pairs``),
    told one item at a time with :meth:`done` (``outcome``: ``new``, ``reused`` or ``failed``).

    A line (INFO, on ``logger``) is logged when at least ``every_s`` seconds passed since the
    stage began or since the last line, and always when the last item is in:
    ``align: 3/15 pairs done (2 new, 1 reused, 0 failed), 45 s so far, about 3 min 45 s left``;
    the last reads ``align: 15/15 pairs done (...) in 4 min 2 s``. The keys and their order stay
    as they are (a log pipeline may parse them: ``PROGRESS_LINE`` in the tests)."""

    def __init__(self, stage: str, total: int, unit: str, logger: Any, every_s: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stage, self.total, self.unit, self.logger, self.every_s, self.clock = stage, total, unit, logger, every_s, clock
        self.started = self.last = clock()
        self.counts = {"new": 0, "reused": 0, "failed": 0}

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def elapsed(self) -> float:
        return self.clock() - self.started

    def done(self, outcome: str) -> None:
        """One more item is in: ``new`` (computed by this run), ``reused`` (found stored) or
        ``failed`` (or skipped for a failed model)."""
        self.counts[outcome] += 1
        now = self.clock()
        if self.finished < self.total and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.started
        counts = f"({self.counts['new']} new, {self.counts['reused']} reused, {self.counts['failed']} failed)"
        if self.finished >= self.total:
            self.logger.info("%s: %d/%d %s done %s in %s", self.stage, self.finished, self.total, self.unit, counts,
                             _seconds(elapsed))
            return
        left = elapsed / self.finished * (self.total - self.finished)
        self.logger.info("%s: %d/%d %s done %s, %s so far, about %s left", self.stage, self.finished, self.total,
                         self.unit, counts, _seconds(elapsed), _seconds(left))


def _peak_rss_kib() -> int | None:
    """The process's peak resident set in KiB since it started or since :func:`_reset_peak_rss`
    (``VmHWM`` of ``/proc/self/status``), else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _reset_peak_rss() -> bool:
    """Start the process's peak resident set afresh (Linux: ``5`` written to
    ``/proc/self/clear_refs``): a process that runs several flows (a test session, a notebook)
    measures each run's own peak. False where it cannot (the peak is then the process's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _torch_cuda() -> Any:
    """``torch.cuda`` when torch is imported and has used a CUDA device in this process, else None
    (a run that never touched a GPU neither imports torch nor initialises CUDA for this)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except Exception:  # noqa: BLE001 - an odd torch build: no GPU figure
        return None


class ResourceMeter:
    """The resources of a run in this process, from :meth:`start` to :meth:`read`:
    ``peak_rss_mb`` (the peak resident memory of the process, in MiB: the flow's process, where
    the sequential and thread runners run every task; not a Dask worker's), ``peak_gpu_mb`` (the
    peak memory torch allocated on its CUDA devices in this process, summed over them; None when
    the process used none), ``peak_rss_since_start`` (False where the peak could not be
    restarted: then it is the process's since it began) and ``bytes_read`` (the bytes of stores'
    features and tables read in this process, ``storage.bytes_read``: every task's under the
    sequential and thread runners, not a Dask worker's; another run in the same process at the
    same time counts in too)."""

    def __init__(self) -> None:
        self.reset = False
        self.read_before = 0

    def start(self) -> None:
        self.read_before = bytes_read()
        self.reset = _reset_peak_rss()
        cuda = _torch_cuda()
        if cuda is not None:
            for device in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(device)

    def read(self) -> dict[str, Any]:
        kib = _peak_rss_kib()
        gpu = None
        cuda = _torch_cuda()
        if cuda is not None:
            gpu = round(sum(cuda.max_memory_allocated(device) for device in range(cuda.device_count())) / 2**20, 1)
        return {"peak_rss_mb": None if kib is None else round(kib / 1024, 1), "peak_gpu_mb": gpu,
                "peak_rss_since_start": self.reset, "bytes_read": bytes_read() - self.read_before}


def bytes_published(manifests: list[dict[str, Any]]) -> int:
    """The bytes of the files (each manifest's ``files``: ``{name: {"bytes": n}}``) of the
    versions among ``manifests`` that this run published (those it found stored say
    ``reused``); the manifests themselves are not counted."""
    total = 0
    for manifest in manifests:
        if manifest.get("reused"):
            continue
        files = manifest.get("files")
        for entry in (files.values() if isinstance(files, dict) else []):
            size = entry.get("bytes") if isinstance(entry, dict) else None
            if isinstance(size, int) and not isinstance(size, bool):
                total += size
    return total


def stage_logger() -> Any:
    """The flow run's logger inside a flow run (its lines in the Prefect UI), else ``prh.run``."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prh.run")
