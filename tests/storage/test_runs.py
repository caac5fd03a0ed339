"""Run records: dead runs are marked CRASHED when a store is opened for a run (storage.runs)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from storage import layout
from storage.catalog import connect, query
from storage.owner import current_owner
from storage.runs import (
    CLOCK_SKEW_SECONDS,
    CRASHED,
    LEGACY_RUN_SECONDS,
    RUN_HEARTBEAT_SECONDS,
    RUNNING,
    STALE_RUN_SECONDS,
    RunHeartbeat,
    alive_key,
    extraction_records,
    live_records,
    live_runs_since,
    mark_crashed_runs,
    run_records,
    runs_as_known,
)
from storage.store import Store


def test_dead_runs_are_marked_crashed_and_a_dry_run_only_lists_them(tmp_path):
    store = Store(str(tmp_path / "store"))
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    store.write_json(layout.run_key("dead"), {"run_id": "dead", "status": RUNNING,
                                              "process": {**current_owner(), "pid": dead_pid, "started": "0"}})
    store.write_json(layout.run_key("alive"), {"run_id": "alive", "status": RUNNING, "process": current_owner()})
    assert mark_crashed_runs(store, dry_run=True) == ["dead"]
    assert {r["run_id"]: r["status"] for r in run_records(store)} == {"dead": RUNNING, "alive": RUNNING}
    assert mark_crashed_runs(store) == ["dead"]
    records = {r["run_id"]: r for r in run_records(store)}
    assert records["dead"]["status"] == CRASHED and "killed or crashed" in records["dead"]["error"]
    assert records["alive"]["status"] == RUNNING and mark_crashed_runs(store) == []


def test_an_owner_in_another_pid_namespace_is_never_judged_dead():
    """Two containers sharing a host name (--network host) number their processes separately: a
    pid of the other one, looked up here, is absent or another process, and its live runs were
    marked CRASHED and its claims swept."""
    from storage.owner import owner_is_dead

    me = current_owner()
    assert me["pid_namespace"] and me["pid_namespace"].startswith("pid:[")
    gone = {**me, "pid": 2 ** 22 + 12345, "started": "0"}  # no such pid here
    assert owner_is_dead(gone)
    assert not owner_is_dead({**gone, "pid_namespace": "pid:[1]"})  # another container's process
    assert owner_is_dead({k: v for k, v in gone.items() if k != "pid_namespace"})  # records of older versions: as before
    assert not owner_is_dead(me)


def test_a_live_run_on_this_host_is_never_gone_however_long_it_is_silent(tmp_path):
    """Two hunts: a run whose disk filled up cannot renew its sign of life, and a clock set
    forward makes the last one look old; `prh gc` (or the next run) then marked the live run
    CRASHED after 15 minutes. A run whose process can be looked up is judged by the process."""
    from storage.owner import owner_is_alive
    from storage.runs import gone_reason

    store = Store(str(tmp_path / "store"))
    me = current_owner()
    silent = {"run_id": "r", "status": RUNNING, "started_at": "2026-03-01T00:00:00+00:00", "process": me,
              "heartbeat_s": RUN_HEARTBEAT_SECONDS}  # no sign of life for months
    assert owner_is_alive(me)
    assert gone_reason(store, silent) is None
    store.write_json(layout.run_key("r"), silent)
    assert mark_crashed_runs(store) == []
    for other in ({**me, "host": "another-host"}, {**me, "pid_namespace": "pid:[1]"},
                  {k: v for k, v in me.items() if k != "started"}):
        assert not owner_is_alive(other)  # cannot be told alive: judged by its signs of life
        assert "no sign of life from the run" in gone_reason(store, {**silent, "process": other})
    assert not owner_is_alive({**me, "started": "0"})  # a recycled pid: that run is dead


def _running(run_id: str, minutes_ago: float, heartbeat: bool = True, host: str = "another-host") -> dict:
    """A RUNNING record of a run started ``minutes_ago`` on ``host`` (whose process cannot be checked)."""
    started = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
    record = {"run_id": run_id, "status": RUNNING, "started_at": started.replace(microsecond=0).isoformat(),
              "process": {**current_owner(), "host": host}}
    return {**record, "heartbeat_s": RUN_HEARTBEAT_SECONDS} if heartbeat else record


def test_runs_silent_for_too_long_are_crashed_wherever_they_ran(tmp_path):
    """A run on another host, or in a container that restarted (another pid namespace), cannot be
    checked by its process: it is gone once its sign of life is older than STALE_RUN_SECONDS."""
    store = Store(str(tmp_path / "store"))
    stale_minutes = STALE_RUN_SECONDS / 60
    store.write_json(layout.run_key("silent"), _running("silent", stale_minutes + 5))  # never beat
    store.write_json(layout.run_key("beating"), _running("beating", stale_minutes * 4))
    store.write_json(alive_key("beating"), {"run_id": "beating", "heartbeat_at": time.time() - 30})
    store.write_json(layout.run_key("stopped"), _running("stopped", stale_minutes * 4))
    store.write_json(alive_key("stopped"), {"run_id": "stopped", "heartbeat_at": time.time() - STALE_RUN_SECONDS - 60})
    store.write_json(layout.run_key("young"), _running("young", 1))
    store.write_json(layout.run_key("legacy"), _running("legacy", stale_minutes * 4, heartbeat=False))
    store.write_json(layout.run_key("legacy-old"), _running("legacy-old", LEGACY_RUN_SECONDS / 60 + 60, heartbeat=False))
    restarted = _running("restarted", stale_minutes + 5, host=current_owner()["host"])
    restarted["process"]["pid_namespace"] = "pid:[1]"
    store.write_json(layout.run_key("restarted"), restarted)

    # the catalog shows them CRASHED at once, writing nothing
    shown = {r["run_id"]: r for r in runs_as_known(store)}
    assert {k: r["status"] for k, r in shown.items()} == {
        "beating": RUNNING, "legacy": RUNNING, "legacy-old": CRASHED, "restarted": CRASHED, "silent": CRASHED, "stopped": CRASHED,
        "young": RUNNING}
    assert "no sign of life from the run for" in shown["stopped"]["error"]
    assert "started 3 days ago by a prh that left no signs of life" in shown["legacy-old"]["error"]
    assert {r["run_id"]: r["status"] for r in run_records(store)}["stopped"] == RUNNING
    view = query(connect(store), "select run_id, status from runs where status = 'CRASHED' order by run_id").to_pylist()
    assert [r["run_id"] for r in view] == ["legacy-old", "restarted", "silent", "stopped"]

    assert mark_crashed_runs(store) == ["legacy-old", "restarted", "silent", "stopped"]
    records = {r["run_id"]: r for r in run_records(store)}
    assert records["stopped"]["status"] == CRASHED and records["stopped"]["marked_crashed_at"]
    assert not store.exists(alive_key("stopped")) and store.exists(alive_key("beating"))
    assert mark_crashed_runs(store) == []


def test_a_sign_of_life_that_does_not_read_or_lies_far_ahead_is_judged_by_when_it_was_written(tmp_path):
    """A run on another host whose ``runs/alive/`` file says ``heartbeat_at: "yesterday"`` or NaN
    (an edit, a partial sync) was taken for silent: gc marked it CRASHED and removed its sign of
    life while it beat. One far ahead (year 9999's epoch seconds) kept it alive for ever (gc
    never swept what was written since its start). Both are now judged by when the file was last
    written, as a publishing claim is."""
    import os

    store = Store(str(tmp_path / "store"))
    stale_minutes = STALE_RUN_SECONDS / 60
    for run_id, beat in [("text", "yesterday"), ("nan", float("nan")), ("list", [1]), ("ahead", 253402300799.0)]:
        store.write_json(layout.run_key(run_id), _running(run_id, stale_minutes * 4))
        store.write_json(alive_key(run_id), {"run_id": run_id, "heartbeat_at": beat})
    # written just now: alive, whatever the file says
    assert {r["run_id"]: r["status"] for r in runs_as_known(store)} == dict.fromkeys(["ahead", "list", "nan", "text"], RUNNING)
    assert mark_crashed_runs(store) == []
    assert all(store.exists(alive_key(run_id)) for run_id in ("ahead", "list", "nan", "text"))
    # last written long ago: silent, far ahead or not
    old = time.time() - STALE_RUN_SECONDS - 600
    for run_id in ("ahead", "text"):
        os.utime(store.path(alive_key(run_id)), (old, old))
    assert mark_crashed_runs(store) == ["ahead", "text"]


def test_run_heartbeat_renews_its_sign_of_life_and_removes_it_at_the_end(tmp_path):
    store = Store(str(tmp_path / "store"))
    with RunHeartbeat(store, "r1", interval=0.05):
        first = store.read_json(alive_key("r1"))["heartbeat_at"]  # written at once
        deadline = time.time() + 10
        while store.read_json(alive_key("r1"))["heartbeat_at"] == first and time.time() < deadline:
            time.sleep(0.02)
        assert store.read_json(alive_key("r1"))["heartbeat_at"] > first
    assert not store.exists(alive_key("r1"))
    assert run_records(store) == []  # signs of life are not run records


def test_extraction_stage_records_count_as_runs_but_stay_out_of_the_runs_view(tmp_path):
    """prh-extract's records (runs/extractions/): a dead one is marked CRASHED in its own folder, a
    live one holds back the cleanup of shards from its start (live_runs_since); the catalog's
    runs view lists pipeline runs only."""
    store = Store(str(tmp_path / "store"))
    stale_minutes = STALE_RUN_SECONDS / 60
    store.write_json(layout.extraction_key("extract-dead"), _running("extract-dead", stale_minutes + 5))
    store.write_json(layout.run_key("pipeline-done"), {"run_id": "pipeline-done", "status": "COMPLETED"})
    assert live_runs_since(store) is None and mark_crashed_runs(store) == ["extract-dead"]
    dead = store.read_json(layout.extraction_key("extract-dead"))
    assert dead["status"] == CRASHED and "no sign of life" in dead["error"] and not store.exists(layout.run_key("extract-dead"))

    live = _running("extract-live", 3)
    store.write_json(layout.extraction_key("extract-live"), live)
    # its start, less the clock skew (another host's clock; S3's whole-second LastModified)
    assert live_runs_since(store) == datetime.fromisoformat(live["started_at"]).timestamp() - CLOCK_SKEW_SECONDS
    assert [r["run_id"] for r in live_records(store)] == ["extract-live"]
    assert [r["run_id"] for r in extraction_records(store)] == ["extract-dead", "extract-live"]
    assert [r["run_id"] for r in run_records(store)] == ["pipeline-done"]
    assert query(connect(store), "select run_id from runs").to_pylist() == [{"run_id": "pipeline-done"}]


def test_a_run_that_finished_while_gc_looked_is_not_marked_crashed(tmp_path, monkeypatch):
    """gc read a run's record (RUNNING), the run wrote COMPLETED and exited, then gc found its
    process gone and wrote back the copy it had read, as CRASHED: a completed run's results left
    `prh report` and `--keep-runs`. The record is read again before it is marked."""
    import storage.runs as runs

    store = Store(str(tmp_path / "store"))
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    process = {**current_owner(), "pid": dead_pid, "started": "0"}
    store.write_json(layout.run_key("finishing"), {"run_id": "finishing", "status": RUNNING, "process": process})
    store.write_json(layout.run_key("dead"), {"run_id": "dead", "status": RUNNING, "process": process})
    read = runs.run_records

    def read_then_the_run_finishes(store_: Store, *args, **kwargs):
        records = read(store_, *args, **kwargs)
        if not args:  # the pipeline runs' folder: the run writes its end right after gc read it
            store_.write_json(layout.run_key("finishing"), {"run_id": "finishing", "status": "COMPLETED", "process": process,
                                                            "alignment_versions": ["alignment/d/a__b/v1"]})
        return records

    monkeypatch.setattr(runs, "run_records", read_then_the_run_finishes)
    assert mark_crashed_runs(store) == ["dead"]
    finished = store.read_json(layout.run_key("finishing"))
    assert finished["status"] == "COMPLETED" and finished["alignment_versions"] == ["alignment/d/a__b/v1"]
    assert store.read_json(layout.run_key("dead"))["status"] == CRASHED


def test_a_run_marked_crashed_that_beats_again_is_live(tmp_path):
    """A process stopped for longer than the silence limit (a suspended machine) is marked
    CRASHED; resumed, its heartbeat writes its sign of life again and it will write its end. gc
    took it for dead meanwhile (no cleanup guard); it counts as live while it beats."""
    store = Store(str(tmp_path / "store"))
    marked = datetime.now(timezone.utc) - timedelta(minutes=3)
    record = {**_running("sleeper", STALE_RUN_SECONDS / 60 + 30), "status": CRASHED, "marked_crashed_at": marked.isoformat()}
    store.write_json(layout.run_key("sleeper"), record)
    assert live_records(store) == []  # marked, no sign of life since
    store.write_json(alive_key("sleeper"), {"run_id": "sleeper", "heartbeat_at": marked.timestamp() - 60})
    assert live_records(store) == []  # a sign older than the marking: the one marking removes, left by a failed delete
    store.write_json(alive_key("sleeper"), {"run_id": "sleeper", "heartbeat_at": time.time()})
    assert [r["run_id"] for r in live_records(store)] == ["sleeper"] and live_runs_since(store) is not None
    assert [(r["run_id"], r["status"], r["error"]) for r in runs_as_known(store)] == [("sleeper", RUNNING, None)]
    assert query(connect(store), "select status from runs").to_pylist() == [{"status": RUNNING}]
    assert mark_crashed_runs(store) == []  # not RUNNING: nothing to mark again


def test_copies_that_a_sync_adds_beside_run_records_are_left_out(store_url, caplog):
    """A store copied or synced through a sync client or another OS: a conflict copy of a record
    (valid JSON, the run's own id) was listed as a second run in the ``runs`` view, and macOS's
    ``._<run_id>.json`` (binary metadata) was a damaged run record that stopped `prh gc --keep-runs`
    for good and failed `prh verify`. Neither is prh's record of a run now; a record whose own
    file is missing is still read from its copy."""
    from flows.cli import main
    from storage.runs import DamagedRecord

    store = Store(store_url)
    record = {"run_id": "r1", "status": "COMPLETED", "started_at": "2026-01-01T00:00:00+00:00"}
    store.write_json(layout.run_key("r1"), record)
    for name in ("r1 (conflicted copy).json", "r1.sync-conflict-20260101-101010-ABCDEFG.json", "r2 copy.json"):
        store.write_json(f"{layout.RUNS}/{name}", {**record, "run_id": "r2" if name.startswith("r2") else "r1"})
    store.write_bytes(f"{layout.RUNS}/._r1.json", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    damaged: list[DamagedRecord] = []
    assert sorted(r["run_id"] for r in run_records(store, damaged=damaged)) == ["r1", "r2"]  # r2: only its copy
    assert damaged == []
    assert "is a copy of run r1's record runs/r1.json" in caplog.text
    con = connect(store_url)
    assert query(con, "select run_id from runs order by run_id").to_pylist() == [{"run_id": "r1"}, {"run_id": "r2"}]
    assert main(["verify", "--store", store_url]) == 0
    store.write_bytes(layout.run_key("r3"), b"{cut short")  # a record of prh's own name that does not read
    assert main(["verify", "--store", store_url]) == 1


def test_a_run_is_gone_only_once_silent_for_more_than_the_limit(tmp_path):
    """A run whose sign of life is older than ``STALE_RUN_SECONDS`` is gone, one exactly that old
    not yet; a record without signs of life is gone once started more than
    ``LEGACY_RUN_SECONDS`` ago (``gone_reason`` with an explicit ``now``)."""
    from storage.runs import epoch_seconds, gone_reason

    store = Store(str(tmp_path / "store"))
    started = "2026-03-01T00:00:00+00:00"
    start = epoch_seconds(started)
    other = {**current_owner(), "host": "another-host"}  # a process that cannot be checked from here
    beating = {"run_id": "r", "status": RUNNING, "started_at": started, "process": other, "heartbeat_s": RUN_HEARTBEAT_SECONDS}
    assert gone_reason(store, beating, now=start + STALE_RUN_SECONDS) is None
    assert "no sign of life from the run for 15 min" in gone_reason(store, beating, now=start + STALE_RUN_SECONDS + 1)
    store.write_json(alive_key("r"), {"run_id": "r", "heartbeat_at": start + 600})  # its last sign: 10 minutes in
    assert gone_reason(store, beating, now=start + 600 + STALE_RUN_SECONDS) is None
    assert gone_reason(store, beating, now=start + 600 + STALE_RUN_SECONDS + 1) is not None
    legacy = {k: v for k, v in beating.items() if k != "heartbeat_s"}
    assert gone_reason(store, legacy, now=start + LEGACY_RUN_SECONDS) is None
    assert "started 3 days ago by a prh that left no signs of life" in gone_reason(store, legacy, now=start + LEGACY_RUN_SECONDS + 1)


def test_live_runs_since_is_the_start_of_the_earliest_live_run_less_the_clock_skew(tmp_path):
    store = Store(str(tmp_path / "store"))
    assert live_runs_since(store) is None  # no run alive
    now = datetime.now(timezone.utc).replace(microsecond=0)
    starts = {"late": now - timedelta(hours=1), "early": now - timedelta(hours=2), "later": now - timedelta(minutes=5)}
    for run_id, started in starts.items():  # this process's runs: alive
        store.write_json(layout.run_key(run_id), {"run_id": run_id, "status": RUNNING, "started_at": started.isoformat(),
                                                  "process": current_owner()})
    store.write_json(layout.run_key("done"), {"run_id": "done", "status": "COMPLETED",
                                              "started_at": (now - timedelta(hours=5)).isoformat()})
    assert live_runs_since(store) == starts["early"].timestamp() - CLOCK_SKEW_SECONDS


def test_the_runs_view_lists_the_attempts_of_a_retried_run(tmp_path):
    """A flow run retried from the Prefect UI lists its earlier attempts in its record
    (``attempts``), but the ``runs`` view had no column for them: analysts could not tell a run
    that ran once from one that took three attempts. ``n_attempts`` counts them (this one too),
    ``attempts`` holds the earlier ones as JSON; a record written before prh listed them (none)
    reads as one attempt, and a hand-edited ``attempts`` that is no list as NULL."""
    store = Store(str(tmp_path / "store"))
    first = {"started_at": "2026-01-01T00:00:00+00:00", "finished_at": None, "status": "CRASHED", "error": "killed"}
    second = {**first, "finished_at": "2026-01-01T00:10:00+00:00", "status": "FAILED"}
    store.write_json(layout.run_key("old"), {"run_id": "old", "status": "COMPLETED"})
    store.write_json(layout.run_key("retried"), {"run_id": "retried", "status": "COMPLETED", "attempts": [first, second]})
    store.write_json(layout.run_key("edited"), {"run_id": "edited", "status": "COMPLETED", "attempts": "twice"})
    con = connect(store)
    rows = query(con, "select run_id, n_attempts, json_extract_string(attempts, '$[1].status') AS second_status, "
                      "json_array_length(attempts) AS earlier from runs order by run_id").to_pylist()
    assert rows == [{"run_id": "edited", "n_attempts": None, "second_status": None, "earlier": None},
                    {"run_id": "old", "n_attempts": 1, "second_status": None, "earlier": 0},
                    {"run_id": "retried", "n_attempts": 3, "second_status": "FAILED", "earlier": 2}]
    described = {r["column_name"]: r["column_type"] for r in query(con, "describe runs").to_pylist()}
    assert (described["n_attempts"], described["attempts"]) == ("BIGINT", "VARCHAR")


def test_the_runs_view_lists_the_pairs_a_stopped_run_aligned(tmp_path):
    """A run stopped (or failed) mid-alignment lists the pairs it had aligned in its record's
    ``partial_alignment_versions`` (not ``alignment_versions``: its grid is not whole), but the
    ``runs`` view had no column for them: analysts saw ``aligned`` count pairs that no column
    named. A list of store keys, as ``alignment_versions``; NULL in records without it or with
    something else there."""
    store = Store(str(tmp_path / "store"))
    keys = ["alignment/d1/vit__lm/a1", "alignment/d1/vit__gpt/a2"]
    store.write_json(layout.run_key("stopped"), {"run_id": "stopped", "status": "CANCELLED", "aligned": 2,
                                                 "partial_alignment_versions": keys})
    store.write_json(layout.run_key("done"), {"run_id": "done", "status": "COMPLETED", "alignment_versions": keys[:1]})
    store.write_json(layout.run_key("edited"), {"run_id": "edited", "status": "FAILED", "partial_alignment_versions": "a1"})
    con = connect(store)
    rows = query(con, "select run_id, partial_alignment_versions, alignment_versions from runs order by run_id").to_pylist()
    assert rows == [{"run_id": "done", "partial_alignment_versions": None, "alignment_versions": keys[:1]},
                    {"run_id": "edited", "partial_alignment_versions": None, "alignment_versions": None},
                    {"run_id": "stopped", "partial_alignment_versions": keys, "alignment_versions": None}]
    described = {r["column_name"]: r["column_type"] for r in query(con, "describe runs").to_pylist()}
    assert described["partial_alignment_versions"] == described["alignment_versions"] == "VARCHAR[]"


def test_a_run_opening_the_store_leaves_its_own_earlier_attempt_to_its_record(tmp_path):
    """A flow run retried after its attempt was killed found its own record ``RUNNING`` with a dead
    process, marked it ``CRASHED`` and logged it as an earlier run that crashed; other dead runs
    are still marked."""
    from storage.runs import open_for_run

    store = Store(str(tmp_path / "store"))
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    for run_id in ("me", "other"):
        store.write_json(layout.run_key(run_id), {"run_id": run_id, "status": RUNNING,
                                                  "process": {**current_owner(), "pid": dead_pid, "started": "0"}})
    assert open_for_run(store, run_id="me") == (["other"], [])
    assert {r["run_id"]: r["status"] for r in run_records(store)} == {"me": RUNNING, "other": CRASHED}


def test_open_for_run_skips_only_the_probe_its_caller_just_made(tmp_path, monkeypatch):
    """`prh run` probed its store before Prefect's server started, then its flow probed it again as
    it opened it (3 requests more on S3). Inside ``probe_made`` the first opening of that store
    (another Store object of the same URL, as the flow makes) skips it; another store, the same URL
    opened with other options, a gc opening (no free space wanted), a second opening (a retry) and
    any opening after the block probe."""
    from storage.runs import open_for_run, probe_made

    probed: list[str] = []
    real = Store.check_writable

    def counted(self, *args, **kwargs):
        probed.append(self.url)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "check_writable", counted)
    url, other = str(tmp_path / "store"), Store(str(tmp_path / "other"))
    cli = Store(url)
    cli.check_writable()
    with probe_made(cli):
        open_for_run(other)
        open_for_run(Store(url, storage_options={"auto_mkdir": True}))
        open_for_run(Store(url), min_free_mb=0)
        assert probed == [cli.url, other.url, cli.url, cli.url]
        open_for_run(Store(url), run_id="flow")  # the flow's opening: no probe
        assert len(probed) == 4
        open_for_run(Store(url), run_id="flow")  # its retry probes
        assert len(probed) == 5
    with probe_made(cli):
        pass
    open_for_run(Store(url))  # after a block: probes
    assert len(probed) == 6


def test_a_run_is_placed_after_the_runs_before_it_and_never_past_the_end_of_time(tmp_path):
    """``ordered_at``: a run's end, or just after a run recorded before it that is dated later (a
    host's clock ahead); a hand-edited record dated at the end of time cannot be passed (the run
    keeps its end, no OverflowError at the end of the run), nor is a store without records, or
    with a damaged one (not JSON: left out), an error."""
    from storage.runs import latest_placed, place_after

    end = "2026-01-02T00:00:00.000000+00:00"
    assert place_after(end, None) == end
    assert place_after(end, datetime(2026, 1, 1, tzinfo=timezone.utc)) == end
    assert place_after(end, datetime(2099, 1, 1, tzinfo=timezone.utc)) == "2099-01-01T00:00:00.000001+00:00"
    assert place_after(end, datetime.max.replace(tzinfo=timezone.utc)) == end
    store = Store(str(tmp_path / "store"))
    store.write_json(layout.run_key("me"), {"run_id": "me", "finished_at": "2099-01-01T00:00:00+00:00"})  # an earlier attempt
    store.write_json(layout.run_key("old"), {"run_id": "old", "started_at": "2025-01-01T00:00:00", "ordered_at": "junk"})
    store.write_bytes(layout.run_key("cut"), b'{"run_id": "cut", "finished_at": "2100')
    assert latest_placed(store, layout.RUNS, "me") == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert latest_placed(Store(str(tmp_path / "none")), layout.RUNS, "me") is None


def test_a_run_start_is_placed_after_the_records_as_marking_them_left_them(store_url, monkeypatch):
    """A run start reads the store's records once (``open_for_run``'s ``read``) and places the run
    after them (``latest_placed``): what it places the run after is what it would read again just
    then. A dead run's record as marked ``CRASHED``; one whose run wrote its end between the
    listing and the marking (read again before marking) as written, dated ahead by a clock here;
    the run's own earlier attempt left out; a store without records (no ``runs/extractions/``)
    none. On a local store as on S3."""
    import storage.runs as runs
    from storage.runs import latest_placed, open_for_run

    store = Store(store_url)
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    process = {**current_owner(), "pid": dead_pid, "started": "0"}
    store.write_json(layout.run_key("dead"), {"run_id": "dead", "status": RUNNING, "process": process,
                                              "started_at": "2025-01-01T00:00:00+00:00"})
    store.write_json(layout.run_key("finishing"), {"run_id": "finishing", "status": RUNNING, "process": process})
    store.write_json(layout.run_key("me"), {"run_id": "me", "finished_at": "2100-01-01T00:00:00+00:00"})  # an earlier attempt
    listed = runs.run_records

    def listed_then_the_run_finishes(store_: Store, *args, **kwargs):
        records = listed(store_, *args, **kwargs)
        if not args:  # the pipeline runs' folder: the run writes its end right after the listing
            store_.write_json(layout.run_key("finishing"), {"run_id": "finishing", "status": "COMPLETED",
                                                            "process": process, "finished_at": "2099-01-01T00:00:00+00:00"})
        return records

    monkeypatch.setattr(runs, "run_records", listed_then_the_run_finishes)
    read: runs.RecordsRead = {}
    assert open_for_run(store, min_free_mb=0, run_id="me", read=read) == (["dead"], [])
    monkeypatch.undo()
    assert {r["run_id"]: r.get("status") for r in read[layout.RUNS]} == {"dead": CRASHED, "finishing": "COMPLETED",
                                                                     "me": None}
    assert read[layout.RUNS] == run_records(store) and read[f"{layout.RUNS}/{layout.EXTRACTIONS}"] == []
    placed = latest_placed(store, layout.RUNS, "me", read[layout.RUNS])
    assert placed == latest_placed(store, layout.RUNS, "me") == datetime(2099, 1, 1, tzinfo=timezone.utc)


def test_signs_of_life_of_ended_runs_are_removed_and_no_others(store_url):
    """A run killed after writing COMPLETED and before removing its sign of life left
    `runs/alive/<id>.json` for good. They go now (a dry run lists them), with FAILED and CANCELLED
    runs' and an extraction stage's; a live run's, a CRASHED run's (it may beat again), one without
    a record and one newer than its run's end (a retry's) stay."""
    from storage.runs import CANCELLED, COMPLETED, FAILED, signs_of_ended_runs

    store = Store(store_url)
    now = time.time()
    ended_at = datetime.fromtimestamp(now - 3600, timezone.utc).isoformat()
    records = {"done": (layout.run_key, COMPLETED), "failed": (layout.run_key, FAILED),
               "stopped": (layout.run_key, CANCELLED), "stage": (layout.extraction_key, COMPLETED),
               "live": (layout.run_key, RUNNING), "crashed": (layout.run_key, CRASHED),
               "retried": (layout.run_key, COMPLETED)}
    for run_id, (key_of, status) in records.items():
        store.write_json(key_of(run_id), {"run_id": run_id, "status": status, "finished_at": ended_at,
                                          "started_at": ended_at, "heartbeat_s": RUN_HEARTBEAT_SECONDS})
    for run_id in [*records, "no-record"]:
        beat = now if run_id == "retried" else now - 3600 - 1
        store.write_json(alive_key(run_id), {"run_id": run_id, "heartbeat_at": beat})
    ended = {alive_key(r): s for r, s in (("done", COMPLETED), ("failed", FAILED), ("stage", COMPLETED),
                                          ("stopped", CANCELLED))}
    listed = signs_of_ended_runs(store, dry_run=True)
    assert {key: status for key, (status, _) in listed.items()} == ended and all(size > 0 for _, size in listed.values())
    assert all(store.exists(key) for key in ended)
    assert signs_of_ended_runs(store) == listed
    assert not any(store.exists(key) for key in ended)
    kept = ("live", "crashed", "retried", "no-record")
    assert all(store.exists(alive_key(r)) for r in kept)
    assert signs_of_ended_runs(store) == {}
