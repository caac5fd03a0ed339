"""A store restored in part (a copy cut short, an older backup of one box): the catalog says when a
pair's current result is gone and an older version of the pair stands in for it in
``alignment_best``; the pairs whose versions are all gone (``prh gc --keep-runs``) and the pairs
the latest run did not score are not warned about. docs/storage.md, "Backing up, moving and
restoring a store"."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from storage import layout
from storage.catalog import connect, query
from storage.store import Store
from tests.storage.catalog_store import DATASET, build_catalog_store
from tests.storage.test_catalog_current import PAIR, _publish, _run

LOGGER = "storage.catalog"


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def _store_with_a_newer_result(tmp_path: Path) -> tuple[Store, Path, str]:
    """build_catalog_store's two January runs (version al-<a>-<b> of every pair), then a February run
    that scored PAIR again (version al-new): the store, its folder and al-new's key."""
    root = tmp_path / "store"
    store = build_catalog_store(str(root))
    new = _publish(store, "al-new")
    _run(store, "run-new", 1, [new])
    return store, root, new


def test_a_latest_result_missing_after_a_partial_restore_is_named_where_an_older_one_stands_in(tmp_path, caplog):
    store, root, new = _store_with_a_newer_result(tmp_path)
    shutil.rmtree(root / new)  # the restore brought runs/ back whole, alignment/ without that version
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        con = connect(str(root))
    rows = query(con, "select distinct alignment_version from alignment_best "
                      f"where model_a = '{PAIR[0]}' and model_b = '{PAIR[1]}'").to_pylist()
    assert rows == [{"alignment_version": "al-vit-small-lm-small"}]  # the January result, shown as current
    said = [w for w in _warnings(caplog) if "run-new" in w]
    assert len(said) == 1, _warnings(caplog)
    older = layout.alignment_key(DATASET, *PAIR, "al-vit-small-lm-small")
    assert new in said[0] and older in said[0] and "not in the store" in said[0] and "prh run" in said[0]
    assert "vit-small x lm-small" in said[0]


def test_a_latest_result_whose_best_file_is_left_out_as_damaged_is_named_too(tmp_path, caplog):
    store, root, new = _store_with_a_newer_result(tmp_path)
    best = root / new / layout.BEST_FILE
    best.write_bytes(best.read_bytes()[:100])  # cut short: the view leaves the file out
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        connect(str(root))
    assert any("run-new" in w and new in w and "not in the store" in w for w in _warnings(caplog)), _warnings(caplog)


def test_no_warning_when_the_current_results_are_whole_or_a_pairs_versions_are_all_gone(tmp_path, caplog):
    store, root, new = _store_with_a_newer_result(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        connect(str(root))
    assert _warnings(caplog) == []
    # a pair only the January runs scored, its one version removed (as gc --keep-runs does): no
    # other version stands in, the pair has no rows, nothing to warn about
    gone = layout.alignment_key(DATASET, "vit-large", "lm-large", "al-vit-large-lm-large")
    shutil.rmtree(root / gone)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        con = connect(str(root))
    assert _warnings(caplog) == []
    assert query(con, "select count(*) as n from alignment_best where model_a = 'vit-large' and model_b = 'lm-large'"
                 ).to_pylist() == [{"n": 0}]
