"""prh from a notebook: the Python calls an analyst makes without the CLI (``docs/queries.md``,
"Three ways in"), with the inputs a notebook gives them (a ``pathlib.Path``, a mistyped folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.catalog import connect, query
from storage.store import Store
from tests.storage.catalog_store import build_catalog_store


@pytest.fixture(scope="module")
def catalog_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nb") / "store"
    build_catalog_store(str(folder))
    return folder


def _models(con) -> list[str]:
    return sorted(query(con, "select model from models").column("model").to_pylist())


def test_connect_takes_a_pathlib_path_as_it_takes_the_folder_as_text(catalog_folder):
    # hand-built store: four models (tests/storage/catalog_store.py MODELS)
    expected = ["lm-large", "lm-small", "vit-large", "vit-small"]
    assert _models(connect(str(catalog_folder))) == expected
    assert _models(connect(catalog_folder)) == expected  # had been "store URL PosixPath(...) is empty"
    assert Store(catalog_folder).url == Store(str(catalog_folder)).url


@pytest.mark.parametrize("given", [None, b"/tmp/store", 3])
def test_a_store_url_that_is_not_text_is_named_as_such_not_as_empty(given):
    with pytest.raises(ValueError) as refused:
        Store(given)
    message = str(refused.value)
    assert "is empty" not in message and type(given).__name__ in message and repr(given) in message


def test_connect_to_a_mistyped_folder_is_an_error_not_an_empty_catalog(tmp_path, catalog_folder):
    missing = tmp_path / "sotre"  # a typo: nothing there
    with pytest.raises(ValueError, match="does not exist") as refused:
        connect(str(missing))
    assert str(missing) in str(refused.value)
    assert not missing.exists()  # and nothing was created there
    other = tmp_path / "notes"
    other.mkdir()
    (other / "analysis.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="not a prh store") as refused:
        connect(other)
    assert "runs/" in str(refused.value)
    with pytest.raises(ValueError, match="not a prh store: it is a file"):
        connect(other / "analysis.ipynb")


def test_connect_to_a_store_with_nothing_published_yet_gives_the_empty_views(tmp_path):
    """A store whose first run has only started (``runs/`` and no record yet) is a store: its
    catalog has the views, without rows."""
    (tmp_path / "fresh" / "runs").mkdir(parents=True)
    con = connect(str(tmp_path / "fresh"))
    assert query(con, "select count(*) n from alignment_best").to_pylist() == [{"n": 0}]
    assert query(con, "select count(*) n from runs").to_pylist() == [{"n": 0}]


def _process_state() -> dict:
    """What a notebook's later cells depend on that a library could change for the whole process."""
    import faulthandler
    import gc
    import locale
    import logging
    import os
    import signal
    import sys
    import warnings

    import numpy as np
    import torch

    return {
        "threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "torch": (torch.get_default_dtype(), torch.is_grad_enabled(), torch.are_deterministic_algorithms_enabled(),
                  torch.get_float32_matmul_precision(), torch.get_rng_state().tolist()),
        "numpy": (np.get_printoptions(), np.geterr(), str(np.random.get_state()[1][:8].tolist())),
        "warnings": list(warnings.filters),
        "logging": (logging.getLogger().level, list(logging.getLogger().handlers), logging.root.manager.disable),
        "environ": dict(os.environ),
        "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)},
        "process": (locale.setlocale(locale.LC_ALL), os.getcwd(), list(sys.path), gc.isenabled(),
                    faulthandler.is_enabled(), sys.getrecursionlimit(), sys.excepthook),
    }


def test_the_engine_changes_nothing_process_wide():
    """docs/metrics.md ("In a notebook"): scoring, calibrating, bootstrapping and preparing leave
    the process as they found it (threads, default dtype, random states, warnings filters, logging,
    environment, signal handlers)."""
    import numpy as np
    import torch

    from tasks.metrics import Representation, bootstrap_ci, calibrate, layer_matrix, prepare, score

    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    y = torch.tensor(x[:, :4] + rng.normal(size=(30, 4)), requires_grad=True)  # float64, needs grad
    before = _process_state()
    rep = Representation([prepare(x), x.astype(np.float16)])
    rep.cache_grams()
    for metric in ("mutual_knn", "cka", "cknna", "svcca"):  # not rsa_spearman: scipy.stats's first import adds a filter
        layer_matrix(metric, rep, [y], topk=4, cca_dim=3)
    score("cka", x, y)
    calibrate("mutual_knn", rep, [y], permutations=9, topk=4)
    bootstrap_ci("cka", rep, [y], n_boot=4)
    assert _process_state() == before




def test_interrupting_a_catalog_query_in_a_notebook_is_a_keyboard_interrupt():
    """A notebook's interrupt (SIGINT) during ``query`` came back as DuckDB's ``RuntimeError:
    Query interrupted`` (what DuckDB's Python client raises for the KeyboardInterrupt it catches,
    seen with a real SIGINT), which reads as a failed query and is not what ``except
    KeyboardInterrupt`` (or a kernel) looks for; it is now the ``KeyboardInterrupt`` it was. How soon
    DuckDB looks at the signal depends on the query and the machine's load (0.5 s to over 30 s
    measured), so the conversion is checked on DuckDB's error itself. Another RuntimeError, and
    ``con.interrupt()`` from a thread (a watchdog's timeout: ``duckdb.InterruptException``), stay
    errors."""
    import threading

    import duckdb

    from storage.catalog import QueryError, _duckdb_errors

    with pytest.raises(KeyboardInterrupt, match=r"^the query was interrupted \(Query interrupted\)$"):
        with _duckdb_errors():
            raise RuntimeError("Query interrupted")
    with pytest.raises(RuntimeError, match="^something else$"):
        with _duckdb_errors():
            raise RuntimeError("something else")
    con, done = duckdb.connect(), threading.Event()

    def watchdog() -> None:  # until the query ends: an interrupt before it starts would be lost
        while not done.wait(0.2):
            con.interrupt()

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        with pytest.raises(QueryError, match="Interrupted"):
            query(con, "select max(md5(a.range::varchar)) from range(1000000000000) a")
    finally:
        done.set()
