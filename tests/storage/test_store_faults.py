"""A store whose disk is full or read-only: clear errors naming the store and the file, raised
before work where possible, nothing half-written, nothing stored lost. A real tmpfs, no mocks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from storage.store import CLAIM, Store
from storage.store_errors import StoreNotWritable
from tasks.retries import is_transient
from tests.storage.small_disk import remount_read_only, tmpfs


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_disk_full_mid_publish_leaves_nothing_and_says_why(tmp_path):
    with tmpfs(tmp_path / "disk", 512) as disk:
        store = Store(str(disk / "store"))
        store.publish("features/d/m/v1", {"small.bin": b"x" * 1000}, {"kind": "test"})
        before = _files(disk)
        big = pa.table({"v": [os.urandom(1_000_000)]})
        with pytest.raises(StoreNotWritable) as raised:
            store.publish("features/d/m/v2", {"a.parquet": big}, {"kind": "test"})
        message = str(raised.value)
        assert "features/d/m/v2/a.parquet" in message and "No space left on device" in message
        assert store.display_url in message
        assert not is_transient(raised.value)  # a retry of the task cannot help
        # no manifest, no temporary file, no claim left; the earlier version is intact
        assert store.manifest("features/d/m/v2") is None
        assert _files(disk) == before
        assert store.read_bytes("features/d/m/v1/small.bin") == b"x" * 1000
        # nothing blocks the version: once it fits, it publishes completely
        again = store.publish("features/d/m/v2", {"a.parquet": pa.table({"v": [b"ok"]})}, {"kind": "test"})
        assert again.written and store.manifest("features/d/m/v2")["files"].keys() == {"a.parquet"}


def test_a_publish_that_fails_after_some_files_removes_them(tmp_path):
    """The first file fitted, the second did not: the first stayed (no claim, no manifest, so no
    sweep and no gc ever found it: 58% of a small disk held by nothing)."""
    with tmpfs(tmp_path / "disk", 512) as disk:
        store = Store(str(disk / "store"))
        with pytest.raises(StoreNotWritable, match="b.bin"):
            store.publish("features/d/m/v1", {"a.bin": os.urandom(300_000), "b.bin": os.urandom(300_000)}, {"kind": "t"})
        assert _files(disk) == []
        assert store.publish("features/d/m/v1", {"a.bin": b"1", "b.bin": b"2"}, {"kind": "t"}).written


def test_a_dead_writers_leftovers_go_when_the_version_is_published(tmp_path):
    """A writer killed mid-file leaves ``.<file>.tmp-<uuid>`` (and files of an earlier attempt)
    in the version folder; the next writer of the version removes them before writing, so the
    published folder holds its manifest's files only."""
    import subprocess
    import sys
    import time

    store = Store(str(tmp_path / "store"))
    code = "import json; from storage.owner import current_owner; print(json.dumps(current_owner()))"
    dead = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     cwd=Path(__file__).resolve().parents[2]).stdout)
    store.write_bytes("x/v/.layer-000.parquet.tmp-0123", b"half a file")
    store.write_bytes("x/v/layer-009.parquet", b"an earlier attempt's")
    store.write_bytes("x/v/_partial/shard-00000.parquet", b"resumable")
    store.write_bytes(f"x/v/{CLAIM}", json.dumps({"owner": "a", "claimed_at": time.time(), "process": dead}).encode())
    assert store.publish("x/v", {"layer-000.parquet": b"whole"}, {}).written
    assert _files(Path(store.path("x/v"))) == ["_partial/shard-00000.parquet", "layer-000.parquet", "manifest.json"]


def test_check_writable_wants_free_space(tmp_path, monkeypatch):
    with tmpfs(tmp_path / "disk", 1024) as disk:
        store = Store(str(disk / "store"))
        with pytest.raises(StoreNotWritable, match=r"MiB free, less than the 256 MiB.*PRH_MIN_FREE_MB"):
            store.check_writable()
        monkeypatch.setenv("PRH_MIN_FREE_MB", "0.5")
        store.check_writable()  # 1 MiB free is enough now
        assert _files(disk) == []  # the probe is gone
        assert sorted(p.name for p in (disk / "store").iterdir()) == []  # and its folder


def test_read_only_store_fails_before_work_and_keeps_what_it_has(tmp_path):
    with tmpfs(tmp_path / "disk", 1024) as disk:
        store = Store(str(disk / "store"))
        store.publish("datasets/d1", {"samples.bin": b"abc"}, {"kind": "dataset"})
        remount_read_only(disk)
        with pytest.raises(StoreNotWritable, match="is not writable: Read-only file system"):
            store.check_writable(min_free_mb=0)
        with pytest.raises(StoreNotWritable, match=r"cannot write datasets/d2/\.publishing .*Read-only file system"):
            store.publish("datasets/d2", {"samples.bin": b"def"}, {"kind": "dataset"})
        assert store.manifest("datasets/d1")["files"]["samples.bin"]["bytes"] == 3
        assert store.read_bytes("datasets/d1/samples.bin") == b"abc"
        assert not store.exists(f"datasets/d1/{CLAIM}")


def test_stale_claim_of_a_dead_process_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys

    store = Store(str(tmp_path / "store"))
    code = "import json; from storage.owner import current_owner; print(json.dumps(current_owner()))"
    dead = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     cwd=Path(__file__).resolve().parents[2]).stdout)
    import time

    store.write_bytes(f"x/v/{CLAIM}", json.dumps({"owner": "a", "claimed_at": time.time(), "process": dead}).encode())
    started = time.time()
    published = store.publish("x/v", {"a.bin": b"1"}, {})  # default staleness: 30 min
    assert published.written and time.time() - started < 5
    assert not store.exists(f"x/v/{CLAIM}")


def test_sweep_removes_what_a_dead_writer_left_unpublished(tmp_path):
    """A writer killed mid-publish leaves a claim and some files; the sweep removes them (keeping
    resumable shards and every published version), and leaves live writers' claims alone."""
    import subprocess
    import sys
    import time

    store = Store(str(tmp_path / "store"))
    code = "import json; from storage.owner import current_owner; print(json.dumps(current_owner()))"
    dead = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     cwd=Path(__file__).resolve().parents[2]).stdout)
    claim = lambda process: json.dumps({"owner": "x", "claimed_at": time.time(), "process": process}).encode()  # noqa: E731
    store.publish("alignment/d/a__b/v1", {"scores.parquet": b"kept"}, {})
    store.write_bytes("alignment/d/a__b/v2/scores.parquet", b"orphan")           # killed after one file
    store.write_bytes(f"alignment/d/a__b/v2/{CLAIM}", claim(dead))
    store.write_bytes("features/d/m/v3/_partial/shard-00000.parquet", b"resume me")  # killed mid-model
    store.write_bytes("features/d/m/v3/layer-000.parquet", b"orphan")
    store.write_bytes(f"features/d/m/v3/{CLAIM}", claim(dead))
    store.write_bytes("features/d/m/v4/layer-000.parquet", b"being written")    # a live writer
    from storage.owner import current_owner

    store.write_bytes(f"features/d/m/v4/{CLAIM}", claim(current_owner()))

    before = _files(Path(store.root))
    assert store.sweep_abandoned(dry_run=True) == ["features/d/m/v3", "alignment/d/a__b/v2"]  # listed, not touched
    assert _files(Path(store.root)) == before
    assert store.sweep_abandoned() == ["features/d/m/v3", "alignment/d/a__b/v2"]
    assert store.sweep_abandoned() == []
    assert not (Path(store.root) / "alignment/d/a__b/v2").exists()  # no empty folder left
    assert _files(Path(store.root)) == [
        "alignment/d/a__b/v1/manifest.json", "alignment/d/a__b/v1/scores.parquet",
        "features/d/m/v3/_partial/shard-00000.parquet",
        f"features/d/m/v4/{CLAIM}", "features/d/m/v4/layer-000.parquet",
    ]


def test_sweep_keeps_a_version_with_a_damaged_manifest_and_goes_on(tmp_path):
    """A dead writer's claim left beside a manifest that is damaged (cut short, edited): the sweep
    neither stops on it nor removes the version's files (`prh verify --remove-damaged` judges it);
    the other abandoned versions are still swept."""
    import time

    store = Store(str(tmp_path / "store"))
    old = json.dumps({"owner": "x", "claimed_at": time.time() - 10_000}).encode()  # silent for hours
    store.write_bytes("features/d/m/v1/layer-000.parquet", b"data")
    store.write_bytes("features/d/m/v1/manifest.json", b'{"cut sh')
    store.write_bytes(f"features/d/m/v1/{CLAIM}", old)
    store.write_bytes("features/d/m/v2/layer-000.parquet", b"orphan")
    store.write_bytes(f"features/d/m/v2/{CLAIM}", old)

    assert store.sweep_abandoned(dry_run=True, stale_after_s=60) == ["features/d/m/v2"]
    assert store.sweep_abandoned(stale_after_s=60) == ["features/d/m/v2"]
    assert _files(Path(store.root)) == ["features/d/m/v1/layer-000.parquet", "features/d/m/v1/manifest.json"]


def test_a_claim_attempt_left_by_a_killed_writer_is_removed_once_stale(tmp_path):
    """A writer killed inside ``create_exclusive`` (claim temp file written and linked, not yet
    unlinked) left ``..publishing.tmp-<uuid>`` in the version folder for good, even after the
    version was published; gc and the next writer remove it once it is older than a claim
    attempt can live, and never a fresh one (another process's attempt in flight)."""
    import subprocess
    import sys
    import time

    store = Store(str(tmp_path / "store"))
    kill_after_link = (
        "import os, sys\nfrom storage.store import Store\nreal = os.link\n"
        "def link(a, b):\n    real(a, b)\n    os._exit(9)\nos.link = link\n"
        "Store(sys.argv[1]).publish('alignment/d/a__b/v1', {'scores.parquet': b'x'}, {})\n")
    done = subprocess.run([sys.executable, "-c", kill_after_link, store.url], cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 9
    folder = Path(store.path("alignment/d/a__b/v1"))
    leftover = [name for name in os.listdir(folder) if name.startswith(f".{CLAIM}.tmp-")]
    assert len(leftover) == 1
    assert store.publish("alignment/d/a__b/v1", {"scores.parquet": b"x"}, {}).written  # the dead claim is taken over
    assert store.remove_dead_claim_attempts() == {}  # fresh: could be an attempt in flight
    old = time.time() - 3600
    os.utime(folder / leftover[0], (old, old))
    key = f"alignment/d/a__b/v1/{leftover[0]}"
    assert store.remove_dead_claim_attempts(dry_run=True) == {key: (folder / leftover[0]).stat().st_size}
    assert (folder / leftover[0]).exists()
    assert list(store.remove_dead_claim_attempts()) == [key]
    assert sorted(os.listdir(folder)) == ["manifest.json", "scores.parquet"]

    # a heartbeat's temporary file (written, not yet renamed over the sign of life) goes the same way
    beat = folder / f".{CLAIM}-alive-someone.tmp-0456"
    beat.write_bytes(b"{}")
    assert store.remove_dead_claim_attempts() == {}
    os.utime(beat, (old, old))
    assert list(store.remove_dead_claim_attempts()) == [f"alignment/d/a__b/v1/{beat.name}"] and not beat.exists()

    # the next writer of an unpublished version removes a stale one with the dead writer's files
    stale = Path(store.path(f"features/d/m/v2/.{CLAIM}.tmp-0123"))
    store.write_bytes(f"features/d/m/v2/.{CLAIM}.tmp-0123", b"{}")
    os.utime(stale, (old, old))
    assert store.publish("features/d/m/v2", {"layer-000.parquet": b"whole"}, {}).written
    assert sorted(os.listdir(stale.parent)) == ["layer-000.parquet", "manifest.json"]


def test_a_claim_whose_temporary_file_vanished_is_still_taken(tmp_path, monkeypatch):
    """A writer stalled between linking its claim and unlinking the temporary file, whose file gc
    removed meanwhile (taking it for a dead writer's), still holds its claim and publishes."""
    store = Store(str(tmp_path / "store"))
    real_link = os.link

    def link_then_lose_the_temp(source, target):
        real_link(source, target)
        os.unlink(source)  # as gc would

    monkeypatch.setattr(os, "link", link_then_lose_the_temp)
    assert store.create_exclusive("x/v/.publishing", b"{}")
    monkeypatch.setattr(os, "link", real_link)
    assert sorted(os.listdir(store.path("x/v"))) == [".publishing"]


def test_sweep_does_not_count_a_version_whose_manifest_landed_as_it_began(tmp_path, monkeypatch):
    """A stalled writer's manifest landing between the sweep's check and its listing: nothing in
    the folder is removed, and the version is not reported swept (nor its bytes freed)."""
    import time

    store = Store(str(tmp_path / "store"))
    old = json.dumps({"owner": "x", "claimed_at": time.time() - 10_000}).encode()  # silent for hours
    store.write_bytes("features/d/m/v1/layer-000.parquet", b"data")
    store.write_bytes(f"features/d/m/v1/{CLAIM}", old)
    store.write_bytes("features/d/m/v1/manifest.json", b"{}")
    monkeypatch.setattr(Store, "has_manifest_file", lambda self, key: False)  # checked just before it landed
    sizes: dict[str, int] = {}
    assert store.sweep_abandoned(stale_after_s=60, sizes=sizes) == [] and sizes == {}
    assert _files(Path(store.root)) == ["features/d/m/v1/layer-000.parquet", "features/d/m/v1/manifest.json"]


#: A child process under a file-size limit (``ulimit -f``) of 20,000 bytes: a version whose second
#: file is larger, published, then published again without the limit.
FILE_SIZE_LIMIT = """
import resource, sys
from storage.store import Store
from storage.store_errors import StoreNotWritable
from tasks.retries import is_transient
store = Store(sys.argv[1])
store.publish("features/d/m/v1", {"small.bin": b"x" * 1000}, {"kind": "test"})
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    store.publish("features/d/m/v2", {"a.bin": b"a" * 5_000, "b.bin": b"b" * 50_000}, {"kind": "test"})
except OSError as error:
    print(type(error).__name__, is_transient(error), error, sep="\\n")
"""


def test_a_file_over_the_file_size_limit_is_refused_naming_it_and_never_retried(tmp_path):
    """`ulimit -f` (a batch system's file-size limit) below a feature file: the publish failed with
    a bare `OSError: [Errno 27] File too large`, naming neither the store nor the file, and the
    task retry policy took it for a storage hiccup and ran the model's extraction again. It is
    now `StoreNotWritable` naming the file, its size and the limit; not retried; nothing of the
    version is left, the earlier version intact, and it publishes once the limit is gone."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    store = Store(str(tmp_path / "store"))
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, store.url], capture_output=True, text=True, timeout=120,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    kind, transient, message = done.stdout.strip().splitlines()
    assert (kind, transient) == ("StoreNotWritable", "False")
    assert message == (f"cannot write features/d/m/v2/b.bin to store {store.display_url}: File too large (errno 27) (a file "
                       "of 50,000 bytes, over this process's file-size limit of 20,000 bytes (`ulimit -f`))")
    assert _files(tmp_path / "store") == ["features/d/m/v1/manifest.json", "features/d/m/v1/small.bin"]
    again = store.publish("features/d/m/v2", {"a.bin": b"a" * 5_000, "b.bin": b"b" * 50_000}, {"kind": "test"})
    assert again.written and store.read_bytes("features/d/m/v2/b.bin") == b"b" * 50_000


def test_what_a_writer_killed_outside_versions_leaves_is_removed_once_stale(tmp_path, capsys):
    """A process killed mid-write outside version folders left files that nothing ever removed
    (a kill sweep over `prh run`): the temporary file of a run record or sign of life (killed
    before its rename), the write probe at the store's top (killed between creating and removing
    it) and its temporary file. `prh gc` removes them once older than a write in flight can be,
    never a fresh one."""
    import subprocess
    import sys
    import time

    from flows.cli import main
    from storage.temporaries import dead_probes

    store = Store(str(tmp_path / "store"))
    store.publish("datasets/0123456789abcdef", {"samples.parquet": b"rows"}, {})
    root = Path(store.root)
    kill = ("import os, sys\nimport storage.store as st\nfrom storage.store import Store\n"
            "real_replace, real_delete = os.replace, Store.delete\n"
            "def replace(a, b):\n    os._exit(9) if sys.argv[2] == 'replace' else real_replace(a, b)\n"
            "def delete(self, key):\n    os._exit(9) if sys.argv[2] == 'delete' else real_delete(self, key)\n"
            "st.os.replace, Store.delete = replace, delete\n"
            "store = Store(sys.argv[1])\n"
            "store.check_writable(0) if sys.argv[3] == 'probe' else store.write_json(sys.argv[3], {'run_id': 'r'})\n")
    for point, what in (("replace", "runs/r.json"), ("replace", "runs/alive/r.json"), ("replace", "probe"), ("delete", "probe")):
        done = subprocess.run([sys.executable, "-c", kill, store.url, point, what], cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 9
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "datasets" not in p.parts)
    assert len(left) == 4 and sum(name.startswith(".probe-") for name in left) == 1, left
    fresh = root / "runs" / f".r2.json.tmp-{'0' * 32}"  # a write in flight: kept
    fresh.write_bytes(b"{}")
    assert dead_probes(store) == {}  # all fresh
    assert main(["gc", "--store", store.url]) == 0 and all(f"removed {name}" not in capsys.readouterr().out for name in left)
    old = time.time() - 3600
    for name in left:
        os.utime(root / name, (old, old))
    probes = [name for name in left if name.startswith((".probe-", "..probe-"))]
    assert len(probes) == 2 and dead_probes(store, dry_run=True) == {name: (root / name).stat().st_size for name in probes}
    assert main(["gc", "--store", store.url]) == 0
    out = capsys.readouterr().out
    assert all(f"removed {name}: " in out for name in left), out
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "datasets/0123456789abcdef/manifest.json", "datasets/0123456789abcdef/samples.parquet", str(fresh.relative_to(root))]


def test_a_sweep_killed_between_dropping_a_dead_claim_and_taking_its_own_is_finished_later(tmp_path):
    """`prh gc` (or a run's start) sweeping a dead writer's version drops the dead claim, then
    creates its own: killed in between, it left the dead writer's files in a folder with neither
    claim nor manifest, which no later sweep looked at (they list claims): kept for ever (a kill
    sweep over `prh gc`). A version folder in that state whose files are all older than a claim can
    go unrenewed is now swept; a fresh one (a takeover in flight) and a folder that is not named
    like a version (another tool's data) are left alone."""
    import subprocess
    import sys
    import time

    store = Store(str(tmp_path / "store"))
    code = "import json; from storage.owner import current_owner; print(json.dumps(current_owner()))"
    dead = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     cwd=Path(__file__).resolve().parents[2]).stdout)
    version = "features/0123456789abcdef/m/fedcba9876543210"
    store.write_bytes(f"{version}/layer-000.parquet", b"orphan")
    store.write_bytes(f"{version}/{CLAIM}", json.dumps({"owner": "x", "claimed_at": time.time(), "process": dead}).encode())
    kill = ("import os, sys\nfrom storage.store import Store\n"
            "Store.create_exclusive = lambda self, key, data: os._exit(9)\n"
            "Store(sys.argv[1]).sweep_abandoned()\n")
    done = subprocess.run([sys.executable, "-c", kill, store.url], cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 9
    assert _files(Path(store.root)) == [f"{version}/layer-000.parquet"]  # the dead claim went, ours never came
    store.write_bytes("datasets/coco/images/a.jpg", b"another tool's")
    old = time.time() - 3600
    for path in Path(store.root).rglob("*"):
        os.utime(path, (old, old))
    assert store.sweep_abandoned(dry_run=True) == []  # modification times set back, but arrived just now
    time.sleep(1.2)
    fresh = "alignment/0123456789abcdef/a__b/00112233445566ff"
    store.write_bytes(f"{fresh}/scores.parquet", b"a takeover in flight")
    assert store.sweep_abandoned(dry_run=True, stale_after_s=1.0) == [version]
    assert store.sweep_abandoned(stale_after_s=1.0) == [version]
    assert store.sweep_abandoned(stale_after_s=1.0) == []
    assert _files(Path(store.root)) == [f"{fresh}/scores.parquet", "datasets/coco/images/a.jpg"]


def test_a_version_copied_in_with_its_old_times_is_not_swept_before_its_manifest_comes(tmp_path):
    """A store copied in by a tool that keeps modification times (`rsync -a` writes a version's
    `manifest.json` after its layer files) holds, for a moment, a version folder of old files
    with neither claim nor manifest: what a dead writer leaves. It is not swept while its files
    are new on this disk (their inode change time), so the copy is not cut short."""
    import time

    store = Store(str(tmp_path / "store"))
    version = "features/0123456789abcdef/m/fedcba9876543210"
    folder = Path(store.root) / version
    folder.mkdir(parents=True)
    for name in ("best.parquet", "layer-000.parquet"):
        (folder / name).write_bytes(b"copied")
    old = time.time() - 30 * 86400
    for path in folder.iterdir():
        os.utime(path, (old, old))  # as rsync -a sets them
    assert store.sweep_abandoned(dry_run=True) == []
    assert store.sweep_abandoned() == [] and sorted(p.name for p in folder.iterdir()) == ["best.parquet", "layer-000.parquet"]


def test_a_claimless_dead_version_is_swept_on_s3_too(s3_store_url):
    """The state that sweep leaves when killed between the dead claim and its own (above), on the
    loopback S3 endpoint: found from the same listing (``LastModified``) and swept. Any age
    counts as old with a negative limit, so no test waits for one."""
    store = Store(s3_store_url)
    version = "alignment/0123456789abcdef/a__b/fedcba9876543210"
    store.write_bytes(f"{version}/scores.parquet", b"orphan")
    store.write_bytes("datasets/coco/a.jpg", b"another tool's")
    assert store.sweep_abandoned() == []  # fresh: a takeover may be in flight
    assert store.sweep_abandoned(stale_after_s=-1.0) == [version]
    assert sorted(store.sizes("")) == ["datasets/coco/a.jpg"]
