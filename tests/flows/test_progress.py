"""What a run tells the on-call while it runs and in its record (``flows.progress``): a stage's
done/total with a rough time left, at most one line per interval; the process's peak memory and a
GPU's; the bytes a run published. The clock is injected (a counter advanced at each reading), so
nothing sleeps; expected lines and figures are worked out by hand."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from flows.progress import ResourceMeter, StageProgress, bytes_published
from tasks.extract_task import time_left
from tests.tasks.test_alignment_progress import SteppingClock  # a clock that moves a step at each reading


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.stage"]


def test_a_long_stage_logs_done_of_total_and_the_time_left_at_most_every_interval(caplog):
    """Each reading moves the clock 20 s; lines at most every 30 s: after items 2 and 4 (40 s after
    the last line each), and always after the last. After 2 of 5 items in 40 s: 3 left at 20 s each."""
    log = logging.getLogger("test.stage")
    with caplog.at_level(logging.INFO, logger="test.stage"):
        progress = StageProgress("align", 5, "pairs", log, every_s=30.0, clock=SteppingClock(20.0))
        for outcome in ("new", "reused", "new", "failed", "new"):
            progress.done(outcome)
    assert _messages(caplog) == [
        "align: 2/5 pairs done (1 new, 1 reused, 0 failed), 40 s so far, about 1 min 0 s left",
        "align: 4/5 pairs done (2 new, 1 reused, 1 failed), 1 min 20 s so far, about 20 s left",
        "align: 5/5 pairs done (3 new, 1 reused, 1 failed) in 1 min 40 s",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "test.stage")


def test_a_fast_stage_logs_its_end_alone_and_hours_read_as_hours(caplog):
    log = logging.getLogger("test.stage")
    with caplog.at_level(logging.INFO, logger="test.stage"):
        fast = StageProgress("extract", 3, "models", log, every_s=30.0, clock=SteppingClock(0.5))
        for _ in range(3):
            fast.done("reused")
        slow = StageProgress("extract", 2, "models", log, every_s=30.0, clock=SteppingClock(3725.0))
        slow.done("new")
        slow.done("new")
    assert _messages(caplog) == [
        "extract: 3/3 models done (0 new, 3 reused, 0 failed) in 2 s",  # 1.5 s, rounded
        "extract: 1/2 models done (1 new, 0 reused, 0 failed), 1 h 2 min so far, about 1 h 2 min left",
        "extract: 2/2 models done (2 new, 0 reused, 0 failed) in 2 h 4 min",
    ]


def test_the_time_left_of_an_extraction_goes_by_the_pace_of_the_items_computed():
    """20 items left at 10 items per 30 s: 60 s; nothing once none is left, or before any was computed."""
    assert time_left(30.0, 10, 20) == ", about 60 s left"
    assert time_left(30.0, 10, 0) == "" and time_left(0.0, 0, 5) == ""


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")
def test_the_peak_memory_of_a_run_counts_what_it_held_at_its_height():
    """128 MiB written and dropped inside the measured span: the peak is at least what the process
    held when it began plus those 128 MiB (less a margin for pages the process gave back meanwhile)."""
    meter = ResourceMeter()
    meter.start()
    before = _rss_kib() / 1024
    block = np.ones(128 * 2**20 // 8)  # every page written
    del block
    used = meter.read()
    assert used["peak_rss_mb"] >= before + 120 and used["peak_gpu_mb"] is None


def test_the_peak_gpu_memory_sums_the_devices_torch_used(monkeypatch):
    """A torch whose CUDA is initialised (a stand-in: 2 devices that peaked at 3 MiB and 5.5 MiB):
    each device's peak is reset when the run starts, and the figure is their sum in MiB."""
    reset: list[int] = []
    cuda = types.SimpleNamespace(is_initialized=lambda: True, device_count=lambda: 2,
                                 reset_peak_memory_stats=reset.append,
                                 max_memory_allocated=lambda device: [3 * 2**20, 11 * 2**19][device])
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    meter = ResourceMeter()
    meter.start()
    assert reset == [0, 1] and meter.read()["peak_gpu_mb"] == 8.5


def test_bytes_published_counts_the_files_of_new_versions_only():
    manifests = [
        {"reused": False, "files": {"a.parquet": {"bytes": 100}, "b.parquet": {"bytes": 23}}},
        {"reused": True, "files": {"c.parquet": {"bytes": 10_000}}},  # found stored: another run's bytes
        {"files": {"d.parquet": {"bytes": 7}, "odd": {"bytes": "7"}, "bad": None}},  # a field of the wrong type: skipped
        {"reused": False},
    ]
    assert bytes_published(manifests) == 130


def test_a_runs_bytes_read_are_its_features_read_once_and_the_tables_it_read(tiny_pipeline_store):
    """The runs row of one run of two models on an empty store (N=40, one pair): each model's layer
    files read once (the pair's features; the feature cache reads a model of several pairs once
    too), the pair's best rows read back once for the run's summary, and the dataset's samples
    table read by the dataset task's check and by each model's extraction (the columns they need,
    all of them here: at most the file's size each); manifests, records and claims not counted.
    Sizes are the files' on disk: the row's figure had been missing, and counting each read of the
    table's footer region again had made it larger than the files."""
    from storage.catalog import connect, query

    root = Path(tiny_pipeline_store)
    row = query(connect(tiny_pipeline_store), "select bytes_read from runs").to_pylist()
    assert len(row) == 1
    layers = list((root / "features").rglob("layer-*.parquet"))
    assert len(layers) == 6  # both models, three layers each
    (best,) = (root / "alignment").rglob("best.parquet")
    (samples,) = (root / "datasets").rglob("samples.parquet")
    features_and_best = sum(p.stat().st_size for p in layers) + best.stat().st_size
    tables = 3 * samples.stat().st_size  # the dataset's check, then each of the two extractions
    assert features_and_best + tables - 3 * 4 <= row[0]["bytes_read"] <= features_and_best + tables  # less its magic numbers
    columns = query(connect(tiny_pipeline_store), "select * from runs limit 0").column_names
    assert columns[-2:] == ["bytes_published", "bytes_read"]  # the new column last: queries by position keep working
