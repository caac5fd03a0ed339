"""Report figures cached in the store (local folder and S3): hits, misses, damaged entries, a
store that refuses writes, and the namespaces `prh gc` removes."""

from __future__ import annotations

import pytest

from flows.cli import main
from storage.figure_cache import FIGURES, StoreFigureCache, drawing_version, remove_stale_namespaces, stale_namespaces
from storage.store import Store

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels"
SVG = b"<?xml version='1.0'?><svg/>"


def test_round_trip_and_misses(store_url):
    store = Store(store_url)
    cache = StoreFigureCache(store)
    assert cache.namespace == drawing_version()
    assert cache.get("d1", ("png",)) is None
    cache.put("d1", {"png": PNG, "svg": SVG})
    assert cache.get("d1", ("png", "svg")) == {"png": PNG, "svg": SVG}
    assert cache.get("d1", ("png",)) == {"png": PNG}
    cache.put("d2", {"png": PNG})
    assert cache.get("d2", ("png", "svg")) is None  # one format missing: drawn again
    assert (cache.hits, cache.misses) == (2, 2)
    assert store.exists(f"{FIGURES}/{cache.namespace}/d1.png")
    assert StoreFigureCache(store, namespace="other").get("d1", ("png",)) is None  # other drawing code, other entries


def test_another_matplotlib_draws_into_another_namespace(tmp_path, monkeypatch):
    """A figure drawn by one matplotlib is not served to a report drawing with another (an upgrade,
    or two deployments sharing a store): the same rows, the same tasks/report code, but the
    namespace moves with the installed matplotlib, read without importing it."""
    import importlib.metadata

    store = Store(tmp_path.as_uri())
    drawn = StoreFigureCache(store)
    drawn.put("d", {"png": PNG})
    real = importlib.metadata.version

    def other_matplotlib(name: str) -> str:
        return "0.0.1" if name == "matplotlib" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", other_matplotlib)
    upgraded = StoreFigureCache(store)
    assert upgraded.namespace != drawn.namespace
    assert upgraded.get("d", ("png",)) is None  # drawn again by this matplotlib
    monkeypatch.setattr(importlib.metadata, "version", real)
    assert StoreFigureCache(store).get("d", ("png",)) == {"png": PNG}  # the same matplotlib: still a hit


def test_a_damaged_entry_is_a_miss(store_url):
    store = Store(store_url)
    cache = StoreFigureCache(store)
    cache.put("d", {"png": PNG})
    store.write_bytes(f"{FIGURES}/{cache.namespace}/d.png", b"<html>proxy error</html>")
    assert cache.get("d", ("png",)) is None
    store.write_bytes(f"{FIGURES}/{cache.namespace}/d.png", b"")
    assert cache.get("d", ("png",)) is None


def test_a_store_that_refuses_writes_turns_writing_off(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / "reports").write_bytes(b"a file where the folder should be")  # every write below it fails
    cache = StoreFigureCache(Store(str(root)))
    cache.put("d", {"png": PNG})
    assert cache.writable is False and cache.get("d", ("png",)) is None
    cache.put("e", {"png": PNG})  # no second attempt, no error
    assert (root / "reports").read_bytes().startswith(b"a file")


def test_stale_namespaces_and_gc(store_url, capsys):
    store = Store(store_url)
    assert stale_namespaces(store) == []  # nothing cached yet
    current = StoreFigureCache(store)
    current.put("d", {"png": PNG})
    StoreFigureCache(store, namespace="0123456789abcdef").put("d", {"png": PNG})
    StoreFigureCache(store, namespace="fedcba9876543210").put("e", {"png": PNG, "svg": SVG})
    old = [f"{FIGURES}/0123456789abcdef", f"{FIGURES}/fedcba9876543210"]
    assert stale_namespaces(store) == old
    assert remove_stale_namespaces(store, dry_run=True) == old and store.exists(f"{FIGURES}/fedcba9876543210/e.svg")
    assert main(["gc", "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert all(f"removed {key}: report figures drawn by another version of the report code" in out for key in old)
    assert stale_namespaces(store) == [] and not store.exists(f"{FIGURES}/fedcba9876543210/e.svg")
    assert current.get("d", ("png",)) == {"png": PNG}


@pytest.mark.parametrize("namespace", ["../x", "a/b", ""])
def test_namespaces_are_checked_like_any_key(tmp_path, namespace):
    cache = StoreFigureCache(Store(str(tmp_path / "s")), namespace=namespace or None)
    if namespace:
        with pytest.raises(ValueError):
            cache._key("d", "png")
    else:
        assert cache.namespace == drawing_version()


def test_gc_removes_cached_figures_older_than_the_limit(tmp_path, capsys):
    """Digests of superseded rows stayed forever in the current namespace; gc removes the files
    written more than --older-than-days ago (a still-shown figure is then drawn once more)."""
    import os
    import time

    store = Store(str(tmp_path / "store"))
    cache = StoreFigureCache(store)
    cache.put("old", {"png": PNG, "svg": SVG})
    cache.put("new", {"png": PNG})
    week_ago = time.time() - 8 * 86400
    for fmt in ("png", "svg"):
        os.utime(store.path(f"{FIGURES}/{cache.namespace}/old.{fmt}"), (week_ago, week_ago))
    assert main(["gc", "--store", store.url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 2 cached report figure(s) written more than 7 days ago" in out
    assert f"2 cached report figure(s) older than --older-than-days {len(PNG) + len(SVG):,} bytes" in out
    assert cache.get("old", ("png", "svg")) is not None  # a dry run removes nothing
    assert main(["gc", "--store", store.url]) == 0
    assert cache.get("old", ("png",)) is None and cache.get("new", ("png",)) == {"png": PNG}
    assert main(["gc", "--store", store.url, "--older-than-days", "0"]) == 0
    assert cache.get("new", ("png",)) is None


def test_directory_markers_are_not_namespaces_or_figures(s3_store_url, capsys):
    """A store copied to S3 by rclone (or with folders made in the S3 console, or an `aws s3 sync`
    of empty folders) holds zero-byte "directory marker" objects, ``reports/figures/`` among
    them, which s3fs lists as a child of that folder: gc took it for a namespace named
    ``figures`` and removed the whole cache, the current report code's figures too."""
    import boto3

    from storage.figure_cache import old_figures

    store = Store(s3_store_url)
    current = StoreFigureCache(store)
    current.put("d", {"png": PNG})
    StoreFigureCache(store, namespace="0123456789abcdef").put("d", {"png": PNG})
    bucket, _, prefix = store.root.partition("/")
    for folder in (FIGURES, f"{FIGURES}/{current.namespace}"):
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{folder}/", Body=b"")
    store.fs.invalidate_cache()
    assert stale_namespaces(store) == [f"{FIGURES}/0123456789abcdef"]
    assert list(old_figures(store, older_than_s=-1)) == [f"{FIGURES}/{current.namespace}/d.png"]
    assert main(["gc", "--store", s3_store_url]) == 0
    assert "removed reports/figures:" not in capsys.readouterr().out
    assert current.get("d", ("png",)) == {"png": PNG}


def test_old_figures_are_those_written_strictly_more_than_the_limit_ago(tmp_path) -> None:
    """``old_figures``: "more than ``older_than_s`` seconds before ``now``": a figure written
    exactly that long ago stays; a store without a figure cache has none to remove."""
    import os

    from storage.figure_cache import old_figures, remove_old_figures

    store = Store(str(tmp_path / "store"))
    assert old_figures(store, 0.0) == {} and remove_old_figures(store, 0.0) == {}
    cache = StoreFigureCache(store)
    cache.put("d", {"png": PNG})
    key = f"{FIGURES}/{cache.namespace}/d.png"
    written = 1_700_000_000.0
    os.utime(store.path(key), (written, written))
    assert old_figures(store, 100.0, now=written + 100.0) == {}
    assert old_figures(store, 100.0, now=written + 100.5) == {key: len(PNG)}


def test_gc_keeps_the_namespace_of_another_report_code_while_a_run_of_it_is_alive(store_url, capsys):
    """Two deployments of different code sharing one store: the gc of one removed the figure cache
    of the other's report code while a run of it was alive (and about to draw its report into it).
    A namespace that an alive run's record names (``report_code_version``) stays; those of a
    finished run, of a run known dead and of no run go as before."""
    from storage import layout
    from storage.figure_cache import REPORT_CODE
    from storage.owner import current_owner
    from storage.runs import COMPLETED, RUN_HEARTBEAT_SECONDS, RUNNING
    from storage.store import utc_now

    store = Store(store_url)
    me = current_owner()
    runs = {  # run id: (status, process, namespace of its report code)
        "run-live": (RUNNING, me, "a" * 16),
        "run-done": (COMPLETED, me, "b" * 16),
        "run-dead": (RUNNING, {**me, "started": "0"}, "c" * 16),  # its pid now belongs to another process: dead
    }
    for run_id, (status, process, namespace) in runs.items():
        store.write_json(layout.run_key(run_id), {"run_id": run_id, "status": status, "process": process, "started_at": utc_now(),
                                                  "heartbeat_s": RUN_HEARTBEAT_SECONDS, REPORT_CODE: namespace})
    for namespace in ("a" * 16, "b" * 16, "c" * 16, "d" * 16):  # d: no run names it
        StoreFigureCache(store, namespace=namespace).put("d", {"png": PNG})
    StoreFigureCache(store).put("d", {"png": PNG})
    assert main(["gc", "--store", store_url, "--dry-run"]) == 0
    assert f"kept {FIGURES}/{'a' * 16}: report figures of another version of the report code (run run-live is still running " \
           "with that report code)" in capsys.readouterr().out
    assert main(["gc", "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert all(f"removed {FIGURES}/{n * 16}: report figures drawn by another version" in out for n in "bcd")
    assert StoreFigureCache(store, namespace="a" * 16).get("d", ("png",)) == {"png": PNG}
    assert [StoreFigureCache(store, namespace=n * 16).get("d", ("png",)) for n in "bcd"] == [None] * 3
    assert StoreFigureCache(store).get("d", ("png",)) == {"png": PNG}
    # once that run has ended, its namespace goes too
    store.write_json(layout.run_key("run-live"), {**store.read_json(layout.run_key("run-live")), "status": COMPLETED})
    assert main(["gc", "--store", store_url]) == 0
    assert f"removed {FIGURES}/{'a' * 16}" in capsys.readouterr().out
    assert stale_namespaces(store) == []


def test_an_alive_run_of_an_older_prh_keeps_every_namespace(tmp_path, capsys):
    """A run whose record does not name its report code (written by a prh older than the field)
    may draw into any namespace: while it is alive gc removes none of them, and says why."""
    from storage import layout
    from storage.owner import current_owner
    from storage.runs import RUN_HEARTBEAT_SECONDS, RUNNING
    from storage.store import utc_now

    store = Store(str(tmp_path / "store"))
    store.write_json(layout.run_key("run-old"), {"run_id": "run-old", "status": RUNNING, "process": current_owner(),
                                                 "started_at": utc_now(), "heartbeat_s": RUN_HEARTBEAT_SECONDS})
    for namespace in ("a" * 16, "b" * 16):
        StoreFigureCache(store, namespace=namespace).put("d", {"png": PNG})
    assert stale_namespaces(store) == []
    assert main(["gc", "--store", store.url]) == 0
    assert "does not say which report code it draws with" in capsys.readouterr().out
    assert all(StoreFigureCache(store, namespace=n * 16).get("d", ("png",)) == {"png": PNG} for n in "ab")


def test_an_alive_extraction_stage_keeps_no_namespace(tmp_path, capsys):
    """Review: the extraction stage (``prh-extract``, ``runs/extractions/``) draws no report, but
    its alive record held figure namespaces as a pipeline run's does: one of a prh older than
    ``report_code_version`` kept every namespace of the store for as long as its extraction ran
    (hours on a GPU pool), and gc said a run "is still running" to explain it. Only pipeline runs
    hold a namespace; an alive pipeline run of an older prh still holds them all."""
    from storage import layout
    from storage.owner import current_owner
    from storage.runs import RUN_HEARTBEAT_SECONDS, RUNNING
    from storage.store import utc_now

    store = Store(str(tmp_path / "store"))
    alive = {"status": RUNNING, "process": current_owner(), "started_at": utc_now(), "heartbeat_s": RUN_HEARTBEAT_SECONDS}
    store.write_json(layout.extraction_key("extract-old"), {**alive, "run_id": "extract-old", "flow": "prh-extract"})
    store.write_json(layout.extraction_key("extract-new"), {**alive, "run_id": "extract-new", "flow": "prh-extract",
                                                            "report_code_version": "a" * 16})
    for namespace in ("a" * 16, "b" * 16):
        StoreFigureCache(store, namespace=namespace).put("d", {"png": PNG})
    assert stale_namespaces(store) == [f"{FIGURES}/{n * 16}" for n in "ab"]
    assert main(["gc", "--store", store.url]) == 0
    out = capsys.readouterr().out
    assert "still running" not in out and all(f"removed {FIGURES}/{n * 16}" in out for n in "ab")
    # a pipeline run of an older prh alive beside them: every namespace stays
    for namespace in ("a" * 16, "b" * 16):
        StoreFigureCache(store, namespace=namespace).put("d", {"png": PNG})
    store.write_json(layout.run_key("run-old"), {**alive, "run_id": "run-old"})
    assert stale_namespaces(store) == []
