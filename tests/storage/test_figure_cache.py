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
