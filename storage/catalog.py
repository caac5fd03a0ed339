"""The analysts' DuckDB catalog: views over every published version in a store.

``connect(url)`` returns an in-memory DuckDB connection with these views:

- ``datasets``: one row per dataset version (name, version, sample count, source, published_at).
- ``samples``: one row per sample (dataset_version, sample_id, image_id, text, image bytes).
- ``rejected_samples``: one row per row a dataset's load refused (dataset_version, row, sample_id,
  reason, detail: each version's ``rejected.parquet``, ``dataset_version`` from its folder); as
  many rows per version as ``datasets.n_rejected``.
- ``models``: one row per feature version (model, modality, hf id, revision, pooling, dtype,
  parameter count, layer count, widths, bits per byte, dataset_version).
- ``features``: one row per (model, feature version, layer, sample): the pooled vector as
  ``FLOAT[]``, and the ``dataset_version`` it was extracted on (join ``samples`` on both ids).
- ``alignment_best``: one row per metric × model pair: best layer pair, chance level, calibrated
  score, p-value and CI of the current result, the one of the latest run that scored that pair
  and metric, on whichever dataset that run used (:data:`CURRENT_BEST_SQL`).
- ``alignment``: one row per metric × model pair × layer pair: the layer pairs behind
  ``alignment_best``'s rows.
- ``alignment_best_all`` / ``alignment_all``: the same of every published alignment version (a
  store that has seen runs with other parameters, metric lists or datasets holds several rows
  per metric × model pair there), with ``published_at``.
- ``runs``: one row per pipeline run, with its lineage (``partial_alignment_versions``: the pairs
  a run stopped or failed mid-alignment had aligned), ``n_attempts`` / ``attempts`` (JSON) of a
  flow run retried from the Prefect UI, ``ordered_at``, its place among the runs
  (:data:`LATEST_RUN_SQL`), and what each attempt of a retried task said (JSON: ``retried``, the
  models and pairs that succeeded after failed attempts; ``error_attempts``, those of the task
  whose error ended the run; ``failures`` lists a failed task's ``attempts``). NULL in the records
  of runs before prh kept them.
- ``alignment_fdr``: one row per run × metric × model pair with a p-value: the run's
  Benjamini–Hochberg q-value over its model grid (``q_value``, one family per run and metric;
  NULL when ``n_missing`` of the run's alignment versions are not in the store: removed, or left
  out as damaged, so the family is not whole).
- ``alignment_latest`` / ``alignment_best_latest``: the rows of ``alignment_all`` /
  ``alignment_best_all`` of the latest run with results (:data:`LATEST_RUN_SQL`, the run
  ``prh report`` shows): one row per metric × model pair (× layer pair) of that run.
- ``models_current``: of ``models``, the feature version of each model name on each dataset
  version that runs now use (:data:`CURRENT_MODELS_SQL`).

``connect(url, runs=False)`` leaves out ``runs`` and the views computed from it (``alignment_best``,
``alignment``, ``alignment_fdr``, ``alignment_latest``, ``alignment_best_latest``,
``models_current``: :data:`DERIVED_VIEWS`) and reads no run record: for the report written at the
end of a run, which has its run's record and queries none of them.

Times (``datasets.published_at``, ``models.published_at``, the alignment views' ``published_at``, ``runs.started_at`` /
``finished_at`` / ``ordered_at``) are ``TIMESTAMPTZ`` in UTC (the connection's time zone is UTC); a value that is
not an ISO 8601 time (a hand-edited record) is NULL. File views have their columns in the order of
``_EMPTY_VIEWS`` whatever the store kind and the files' ages; rows written before ``unit``
existed (older prh aligned only by sample) show ``unit = 'sample'``.

Only published versions (those with a manifest) appear. For S3 stores the s3fs filesystem is
registered on the connection (DuckDB's httpfs extension is not needed). The files of one schema
are read without binding each one's footer (``storage.stored_files``); on a local store every
footer is bound once when the catalog opens, to find a damaged one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import duckdb
import pyarrow as pa

from storage import layout
from storage.runs import runs_as_known
from storage.read_only_fs import ReadOnlyFileSystem, StoreFileSystem
from storage.sql_guard import (CheckedQuery, ReadOnlyQueryError, checked_statements, issued_statements,
                               refused_advice_hint)
from storage.store import MANIFEST, Store, check_is_store
from storage.store_errors import REMOVE_DAMAGED_ADVICE, DamagedManifest
from storage.store_urls import duckdb_temporary_folder, escape_glob, unescape_glob
from storage.times import utc_time
from storage.stored_files import FileGroup, ListedFile, StoredFiles
from storage.verify import STRAY, STRAY_ADVICE, manifest_problems, named_like_a_version

log = logging.getLogger(__name__)

_FILE_VIEWS: dict[str, tuple[str, str]] = {
    # view: (manifest prefix, file name in each version, or "*" for every listed Parquet file)
    "samples": (layout.DATASETS, layout.SAMPLES_FILE),
    "rejected_samples": (layout.DATASETS, layout.REJECTED_FILE),
    "features": (layout.FEATURES, "*"),
    "alignment_all": (layout.ALIGNMENT, layout.SCORES_FILE),
    "alignment_best_all": (layout.ALIGNMENT, layout.BEST_FILE),
}

# Column types of each file view, in the order of the pipeline's files (``tasks.align_task.result_tables``):
# the view's columns when the store holds no version of it yet, and the order (and the columns a file
# written by an older prh lacks, as NULL) of ``SELECT *`` otherwise, on every kind of store.
_EMPTY_VIEWS = {
    "samples": "dataset_version VARCHAR, sample_id VARCHAR, image_id VARCHAR, text VARCHAR, image BLOB",
    # ``tasks.data.tables.REJECTED_SCHEMA``; the file has no ``dataset_version``: its folder's (``_FOLDER_VERSION_VIEWS``)
    "rejected_samples": "dataset_version VARCHAR, row BIGINT, sample_id VARCHAR, reason VARCHAR, detail VARCHAR",
    "features": "model VARCHAR, feature_version VARCHAR, layer SMALLINT, sample_id VARCHAR, vector FLOAT[]",
    "alignment_all": (
        "alignment_version VARCHAR, dataset_version VARCHAR, model_a VARCHAR, model_b VARCHAR, metric VARCHAR, "
        "params VARCHAR, layer_a INTEGER, layer_b INTEGER, layer_name_a VARCHAR, layer_name_b VARCHAR, "
        "score DOUBLE, n_samples INTEGER, unit VARCHAR"
    ),
    "alignment_best_all": (
        "alignment_version VARCHAR, dataset_version VARCHAR, model_a VARCHAR, model_b VARCHAR, metric VARCHAR, "
        "params VARCHAR, modality_a VARCHAR, modality_b VARCHAR, layer_a INTEGER, layer_b INTEGER, "
        "layer_name_a VARCHAR, layer_name_b VARCHAR, score DOUBLE, chance_level DOUBLE, null_mean DOUBLE, "
        "null_std DOUBLE, tau DOUBLE, p_value DOUBLE, calibrated_score DOUBLE, permutations INTEGER, ci_low DOUBLE, ci_high DOUBLE, ci_degenerate BOOLEAN, bootstrap INTEGER, "
        "n_samples INTEGER, unit VARCHAR"
    ),
}

_META_COLUMNS = {
    "datasets": ["dataset_version", "name", "n_samples", "n_images", "n_rejected", "source", "code_version", "published_at"],
    "models": [
        "model", "feature_version", "dataset_version", "modality", "loader", "model_id", "revision", "commit", "source_digest", "pooling",
        "dtype", "param_count", "n_layers", "layer_names", "layer_widths", "bits_per_byte", "bits_per_byte_pooled", "n_samples",
        "code_version", "device", "seconds", "published_at",
    ],
    "runs": [
        "run_id", "flow_run_id", "status", "started_at", "finished_at", "store", "config", "dataset_version",
        "feature_versions", "alignment_versions", "partial_alignment_versions", "extracted", "reused", "aligned", "metrics_computed",
        "metrics_copied", "code_version", "error", "failures", "n_attempts", "attempts", "ordered_at", "retried",
        "error_attempts", "stage_seconds", "task_seconds", "peak_rss_mb", "peak_gpu_mb", "bytes_published", "bytes_read",
    ],
}


class QueryError(ValueError):
    """Raised when DuckDB refuses or fails an analyst's read-only query (unknown column, wrong
    types, ...); the message is DuckDB's. The DuckDB exception is the ``__cause__``."""


#: ``(alignment_version, model_a, feature_version_a, model_b, feature_version_b, published_at,
#: dataset_version)``: ``published_at`` is the version's manifest's, ISO 8601 in UTC, or None when
#: it is not a time; ``dataset_version`` is its folder's (``alignment/<dataset>/<pair>/<version>``).
Lineage = tuple[str, str, str, str, str, str | None, str]
#: ``(model, feature_version, dataset_version)``
FeatureDataset = tuple[str, str, str]


@dataclass
class CatalogSources:
    """What the views are made of: Parquet URIs per file view, Arrow tables per metadata view.

    ``files[view]``: the data files of every published version (``samples``, ``rejected_samples``,
    ``features``, ``alignment_all``, ``alignment_best_all``); ``tables[view]``: one row per version or run
    (``datasets``, ``models``, ``runs``); ``lineage``: :data:`Lineage` rows for every alignment
    version and each order of its two models (its manifest's lineage and ``published_at``, its
    folder's dataset version), from which the alignment views get ``feature_version_a`` /
    ``feature_version_b`` / ``published_at``. Rows are told apart by version, both model names
    and dataset: one version id can belong to two pair folders (a model renamed, same features).
    ``listed``: every file of ``files`` (its URI) as its manifest lists it (key, bytes, schema
    fingerprint). ``feature_datasets``: ``(model, feature_version, dataset_version)`` of every
    feature version (its folder, ``features/<dataset>/<model>/<version>``), from which the
    ``features`` view gets ``dataset_version``.
    """

    files: dict[str, list[str]]
    tables: dict[str, pa.Table]
    lineage: list[Lineage] = field(default_factory=list)
    listed: dict[str, ListedFile] = field(default_factory=dict)
    feature_datasets: list[FeatureDataset] = field(default_factory=list)


def catalog_sources(store: Store, runs: bool = True) -> CatalogSources:
    """Read every manifest and run record of ``store`` into :class:`CatalogSources`. A damaged
    manifest (cut short, a copy of another version's, or a field of the wrong type:
    ``storage.verify.manifest_problems``) is left out with a warning naming it: one bad file must
    not hide the rest of the store, nor count another version twice. Without ``runs`` the run
    records are not read (one request each on an object store) and ``tables`` has no ``runs``."""

    def left_out(damaged: DamagedManifest) -> None:
        if named_like_a_version(damaged.version_key):
            log.warning("%s; left out of the catalog", damaged)
        else:
            log.warning("%s; left out of the catalog (%s: %s)", damaged.problem, STRAY, STRAY_ADVICE)

    manifests = {prefix: _usable(store, store.manifests(prefix, on_damaged=left_out))
                 for prefix in (layout.DATASETS, layout.FEATURES, layout.ALIGNMENT)}
    listed = {
        store.read_uri(f"{key}/{name}"): ListedFile.from_manifest(f"{key}/{name}", entry)
        for prefix in sorted({prefix for prefix, _ in _FILE_VIEWS.values()})  # each box once (two views read datasets/, two alignment/)
        for key, manifest in manifests[prefix]
        for name, entry in sorted(_entries(manifest).items())
        if name.endswith(".parquet")
    }
    files = {
        view: [
            store.read_uri(f"{key}/{name}")
            for key, manifest in manifests[prefix]
            for name in sorted(manifest["files"])
            if name.endswith(".parquet") and (file_name == "*" or name == file_name)
        ]
        for view, (prefix, file_name) in _FILE_VIEWS.items()
    }
    tables = {
        "datasets": _meta_table("datasets", [_catalog_row(m) for _, m in manifests[layout.DATASETS]]),
        "models": _meta_table("models", [_model_row(m) for _, m in manifests[layout.FEATURES]]),
    }
    if runs:
        tables["runs"] = _meta_table("runs", [_run_row(r) for r in runs_as_known(store)])
    lineage = sorted({row for key, manifest in manifests[layout.ALIGNMENT] for row in _lineage_rows(key, manifest)},
                     key=lambda row: tuple("" if v is None else v for v in row))
    feature_datasets = sorted({_feature_dataset(key) for key, _ in manifests[layout.FEATURES]})
    return CatalogSources(files, tables, lineage, listed, feature_datasets)


def stored_files(store: Store, sources: CatalogSources) -> StoredFiles:
    """:class:`StoredFiles` of ``sources``: one recursive listing of each box that has files (on
    an object store a few LIST requests), against which each file's size is checked before a view
    reads it. Files are grouped by schema fingerprint (each view bound from the first file of each
    group); a local store's footers are all bound once when its views are created (they are cheap
    to read there: ``StoredFiles.bind_every_footer``)."""
    entries: dict[str, dict[str, Any]] = {}
    for prefix in sorted({_FILE_VIEWS[view][0] for view, files in sources.files.items() if files}):
        entries.update(store.listing(prefix))
    return StoredFiles(sources.listed, entries, bind_every_footer=store.is_local)


def _usable(store: Store, manifests: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``manifests`` (version key, manifest) less those with a field of the wrong type
    (``storage.verify.manifest_problems``: ``files`` null, a ``lineage`` that is text...), each
    left out with a warning naming it, as a manifest that is not JSON is."""
    usable = []
    for key, manifest in manifests:
        problems = manifest_problems(manifest)
        if problems:
            log.warning("manifest %s/%s in store %s is damaged (%s); left out of the catalog (prh verify names it, "
                        "--remove-damaged removes it)", key, MANIFEST, store.display_url, "; ".join(problems))
            continue
        usable.append((key, manifest))
    return usable


def _entries(manifest: dict[str, Any]) -> dict[str, Any]:
    """A usable manifest's ``files`` (name → entry, see :func:`_usable`)."""
    return dict(manifest["files"])


def _lineage_rows(key: str, manifest: dict[str, Any]) -> list[Lineage]:
    """The :data:`Lineage` rows of one alignment version: both orders of its two models (one row
    when a model is aligned with itself), with the time the version was published."""
    dataset, _, version = key.rstrip("/").split("/")[-3:]
    published = utc_time(manifest.get("published_at"))
    published_at = published.isoformat() if published is not None else None
    features = [(str(m), str(v)) for m, v in manifest.get("lineage", {}).get("features", {}).items()]
    return [(version, *a, *b, published_at, dataset) for a in features for b in features if len(features) == 1 or a != b]


def _feature_dataset(key: str) -> FeatureDataset:
    """``(model, feature_version, dataset_version)`` of the feature version stored at ``key``
    (``features/<dataset_version>/<model>/<feature_version>``: the folder its layer files are in,
    whose ``model`` column names the folder's model, also for a copy under a new name)."""
    dataset, model, version = key.rstrip("/").split("/")[-3:]
    return model, version, dataset


def _run_row(record: dict[str, Any]) -> dict[str, Any]:
    """A run record's row of the ``runs`` view: the record, with ``attempts`` (the earlier attempts
    of a flow run retried from the Prefect UI, oldest first: ``started_at``, ``finished_at``,
    ``status``, ``error``; ``[]`` for a run that ran once, as every record written before prh listed
    them) and ``n_attempts`` (those and this one). Both NULL when ``attempts`` is not a list (a
    hand-edited record). A ``COMPLETED`` record written before prh listed ``failures`` shows ``[]``:
    a model or pair that failed then failed the whole run, so a completed one had none (its
    ``failures`` had been NULL, which a ``where failures = '[]'`` left out)."""
    if "failures" not in record and record.get("status") == "COMPLETED":
        record = {**record, "failures": []}
    earlier = record.get("attempts")
    if earlier is None:
        earlier = []
    if not isinstance(earlier, list):
        return {**record, "attempts": None, "n_attempts": None}
    earlier = [attempt for attempt in earlier if isinstance(attempt, dict)]
    return {**record, "attempts": earlier, "n_attempts": len(earlier) + 1}


def _catalog_row(manifest: dict[str, Any]) -> dict[str, Any]:
    """A version's row of a metadata view: its manifest's ``catalog`` and when it was published."""
    return {**manifest.get("catalog", {}), "published_at": manifest.get("published_at")}  # an object (see _usable)


def _model_row(manifest: dict[str, Any]) -> dict[str, Any]:
    """A feature version's row of the ``models`` view (:func:`_catalog_row`). Features extracted
    before the per-caption mean existed (docs/extraction.md, "bits per byte") stored the pooled
    figure, all bits over all bytes, as ``bits_per_byte``: their manifest has no
    ``bits_per_byte_pooled`` and its ``extras`` sum the loss (``nll_nats``, ``text_bytes``) but
    not the captions' figures (``bpb_sum``). Such a row shows that figure as
    ``bits_per_byte_pooled`` and its ``bits_per_byte`` null (the mean was never computed), so an
    old and a new version of one model are not compared across the two definitions."""
    row = _catalog_row(manifest)
    extras = manifest.get("extras")
    legacy = (isinstance(extras, dict) and "nll_nats" in extras and "text_bytes" in extras and "bpb_sum" not in extras
              and "bits_per_byte_pooled" not in row and row.get("bits_per_byte") is not None)
    if legacy:
        row["bits_per_byte_pooled"], row["bits_per_byte"] = row["bits_per_byte"], None
    return row


def connect(
    store: Store | str | os.PathLike[str], storage_options: dict[str, Any] | None = None, *, read_only: bool = True,
    lossless_arrow: bool = False, runs: bool = True,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose views cover every published version in ``store``: a
    :class:`Store`, or its URL or folder (text or a ``pathlib.Path``). A URL or folder in which
    nothing is found must at least name a store (``storage.store.check_is_store``: a folder
    holding ``runs/``, ``datasets/``...): a missing folder, a file or another folder is a
    ``ValueError`` naming it, as ``prh sql --store`` says, not an empty catalog. A ``Store`` is
    read as it is (an empty one gives the views without rows).

    ``runs=False``: the catalog without the run history, for a reader that has its run's record
    already (the report written at the end of a run): the run records are not read (each is one
    GET on an object store, and a store holds one per run it ever ran: a year of nightly runs,
    365 GETs), and neither ``runs`` nor the views computed from it (:data:`DERIVED_VIEWS`, every
    one of which reads ``runs``) are created. A query that names one of them fails (DuckDB's
    ``Table with name runs does not exist``) rather than finding no rows. ``prh sql`` and every
    other reader of the history keep the default.

    ``lossless_arrow``: results exported to Arrow keep DuckDB's ``TIMETZ`` offsets, ``BIT``
    strings and ``HUGEINT``/``UHUGEINT`` values (DuckDB's ``arrow_lossless_conversion``), for
    ``prh sql`` (``flows.sql_output`` writes them); off by default, since then ``sum()`` of a
    ``BIGINT`` (a ``HUGEINT``) reaches Arrow as raw bytes, not a number.

    With ``read_only`` (the default) the connection is then locked down: it may read files
    only under the store's root, and its configuration is locked (no ``SET``, no logging to
    files, no re-enabling access). Statement-level refusal of writes is :func:`query`'s job.
    Pass ``read_only=False`` for a connection that may also read and write other files.
    """
    named = not isinstance(store, Store)  # a URL or folder, as an analyst gives it
    if named:
        store = Store(store, storage_options)
    sources = catalog_sources(store, runs=runs)
    if named and not any(sources.files.values()) and not any(table.num_rows for table in sources.tables.values()):
        # nothing found: a mistyped folder had given an empty catalog (``prh sql`` refused it)
        check_is_store(store, "check the store's URL or folder given to connect()")
    con = duckdb.connect(":memory:")
    stored = stored_files(store, sources)
    # DuckDB asks about each file it reads (glob, open, size, modified: four HEAD requests on S3,
    # at every query): the listing just read answers for the published files
    register_store_filesystem(con, store, read_only, stored.intact())
    con.execute("SET TimeZone = 'UTC'")  # TIMESTAMPTZ columns shown (and returned to Arrow) in UTC
    if lossless_arrow:
        con.execute("SET arrow_lossless_conversion = true")
    read: list[str] = []
    for view, files in sources.files.items():
        read += _create_file_view(con, view, files, sources.lineage, store, stored, sources.feature_datasets)
    for view, table in sources.tables.items():
        create_table_view(con, view, table)
    if runs:  # each derived view reads runs: without it, none (a query naming one fails, see above)
        create_derived_views(con)
        _warn_current_results_missing(con, store, sources, read)
    if read_only:
        lock_down(con, [store.uri("").rstrip("/") + "/"], _exists_in(store),
                  linked_files(store.root, read) if store.is_local else [])
    return con


def linked_files(root: str, files: list[str]) -> list[str]:
    """Those of ``files`` (the local paths the views read, glob characters escaped) that lie
    outside the folder ``root`` once symbolic links are followed: a store whose ``features/`` (or
    one model's folder) was moved to a bigger disk and linked back. DuckDB checks a path against
    ``allowed_directories`` with its links followed, so such a file was refused ("file system
    operations are disabled by configuration") though it is the store's own; :func:`lock_down`
    allows each of them by name (DuckDB's ``allowed_paths``), and nothing else beside it."""
    real_root = os.path.realpath(root)
    folders: dict[str, str] = {}  # folder -> where it lies: one realpath per folder, one lstat per file
    linked = []
    for file in files:
        path = unescape_glob(file)
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        real = os.path.realpath(path) if os.path.islink(path) else os.path.join(folders[folder], name)
        if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
            linked += [file, path, real]  # as DuckDB is given it, the file itself, where it lies
    return linked


#: The latest run with results, as a query over ``runs`` (one row, or none): ``COMPLETED``, or
#: ``FAILED`` (a nightly run with one broken model still publishes every other pair), that lists
#: some alignment versions (a run of a one-model zoo, features only, has no results to show), the
#: last to finish first, by ``ordered_at`` (its end, or just after the runs recorded before it
#: when one of them is dated later: ``storage.runs.place_after``; a record without it by
#: ``finished_at``, one without that by its start). The one definition of "the latest run": the ``*_latest`` views use it, docs/queries.md
#: repeats its conditions and order (tests/storage/test_queries.py checks), and ``prh report``'s
#: default run (``tasks.report_source.select_run``, same conditions and order) must be this run
#: (tests/storage/test_catalog_views.py checks).
#: A run with results: its record lists alignment versions (written once every pair is aligned,
#: so a run stopped after that, while its report was written, ``CANCELLED``, has them all too; and
#: a retry's record keeps an earlier attempt's whole grid from its start, so a retry killed
#: before its end, ``CRASHED``, still lists that attempt's results: ``flows.run_record.carry_over_work``)
_RUN_HAS_RESULTS = "status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'CRASHED') AND len(coalesce(alignment_versions, [])) > 0"
_RUNS_LATEST_FIRST = "coalesce(ordered_at, finished_at, started_at) DESC, started_at DESC, run_id DESC"
LATEST_RUN_SQL = f"SELECT * FROM runs WHERE {_RUN_HAS_RESULTS} ORDER BY {_RUNS_LATEST_FIRST} LIMIT 1"
#: The latest run of any status, in the same order (what a store without a run with results last ran).
LATEST_OF_ALL_RUNS_SQL = f"SELECT * FROM runs ORDER BY {_RUNS_LATEST_FIRST} LIMIT 1"

#: A version's store key (``alignment/<dataset>/<model a>__<model b>/<version>``, as run records
#: list them) from a row of an alignment view aliased ``v``: a version id alone can belong to two
#: pair folders, when a model was renamed.
_KEY_OF_ROW = "concat_ws('/', 'alignment', v.dataset_version, v.model_a || '__' || v.model_b, v.alignment_version)"


def _of_latest_run(view: str) -> str:
    """``SELECT`` of the rows of ``view`` (``alignment_all`` or ``alignment_best_all``) whose
    alignment version the latest run with results lists (:data:`LATEST_RUN_SQL`), by store key."""
    return f"SELECT v.* FROM {view} AS v WHERE {_KEY_OF_ROW} IN (SELECT unnest(alignment_versions) FROM ({LATEST_RUN_SQL}))"


#: ``alignment_best``: of the rows of ``alignment_best_all``, the current one of each model pair
#: and metric (one row per metric × model pair, whatever datasets the store holds: its
#: ``dataset_version`` says which). Current: from the version that the latest run with results
#: (:data:`LATEST_RUN_SQL`'s conditions and order) among those that list one lists; a version no
#: such run lists (its run crashed, or the store's run records are gone) only where no run lists
#: one, the last published first. Each version is joined to the latest run that lists it only
#: (``listed``: one row per version): a year of nightly runs lists every version hundreds of
#: times, and joining every listing had ranked runs × pairs × metrics rows (750,000 for 400 runs
#: of a 625-pair, 3-metric zoo) to keep pairs × metrics of them.
CURRENT_BEST_SQL = f"""
    WITH runs_ranked AS (
        SELECT alignment_versions, row_number() OVER (ORDER BY {_RUNS_LATEST_FIRST}) AS run_rank
        FROM runs WHERE {_RUN_HAS_RESULTS}
    ), listed AS (
        SELECT alignment_key, min(run_rank) AS run_rank
        FROM (SELECT unnest(alignment_versions) AS alignment_key, run_rank FROM runs_ranked) GROUP BY alignment_key
    ), ranked AS (
        SELECT v.*, row_number() OVER (
                   PARTITION BY v.model_a, v.model_b, v.metric
                   ORDER BY r.run_rank ASC NULLS LAST, v.published_at DESC NULLS LAST, v.alignment_version DESC,
                            v.dataset_version DESC
               ) AS _current_rank
        FROM alignment_best_all AS v
        LEFT JOIN listed AS r ON r.alignment_key = {_KEY_OF_ROW}
    )
    SELECT * EXCLUDE (_current_rank) FROM ranked WHERE _current_rank = 1"""

#: ``alignment``: the layer pairs of ``alignment_all`` behind each row of ``alignment_best``.
CURRENT_SCORES_SQL = """
    SELECT v.* FROM alignment_all AS v SEMI JOIN alignment_best AS c
        ON c.alignment_version = v.alignment_version AND c.dataset_version = v.dataset_version
       AND c.model_a = v.model_a AND c.model_b = v.model_b AND c.metric = v.metric"""


#: ``models_current``: of the rows of ``models`` (one per feature version), the current one of each
#: model name on each dataset version: the feature version that the latest run to use that model
#: on that dataset used (its record's ``feature_versions``; any status, :data:`_RUNS_LATEST_FIRST`),
#: or, where no run record names one, the last published. After an upgrade that changed the
#: extraction code (a new ``code_version``), or another pooling or dtype, ``models`` holds the old and
#: the new version and ``models_current`` the one the runs now use. A record whose
#: ``feature_versions`` is not a JSON object of texts (a hand-edited record) names none.
CURRENT_MODELS_SQL = f"""
    WITH runs_ranked AS (
        SELECT dataset_version, try(from_json(feature_versions, '"MAP(VARCHAR, VARCHAR)"')) AS used,
               row_number() OVER (ORDER BY {_RUNS_LATEST_FIRST}) AS run_rank
        FROM runs
    ), listed AS (
        SELECT dataset_version, entry.key AS model, entry.value AS feature_version, min(run_rank) AS run_rank
        FROM (SELECT dataset_version, run_rank, unnest(map_entries(used)) AS entry FROM runs_ranked)
        GROUP BY ALL
    ), ranked AS (
        SELECT m.*, row_number() OVER (
                   PARTITION BY m.model, m.dataset_version
                   ORDER BY r.run_rank ASC NULLS LAST, m.published_at DESC NULLS LAST, m.feature_version DESC
               ) AS _current_rank
        FROM models AS m
        LEFT JOIN listed AS r
          ON r.model = m.model AND r.feature_version = m.feature_version AND r.dataset_version = m.dataset_version
    )
    SELECT * EXCLUDE (_current_rank) FROM ranked WHERE _current_rank = 1"""


#: Views computed from the others (after them), in creation order: name -> ``SELECT``.
DERIVED_VIEWS: dict[str, str] = {
    # the current result of each model pair and metric (the history is in the *_all views)
    "alignment_best": CURRENT_BEST_SQL,
    "alignment": CURRENT_SCORES_SQL,
    # one run's results: the latest run with results (columns of ``alignment`` / ``alignment_best``)
    "alignment_latest": _of_latest_run("alignment_all"),
    "alignment_best_latest": _of_latest_run("alignment_best_all"),
    # the feature version each model name now has on each dataset (``models`` holds every one)
    "models_current": CURRENT_MODELS_SQL,
    # Benjamini–Hochberg over one run's model grid, per metric (and its parameters): the run's
    # alignment versions (``runs.alignment_versions``, store keys) joined to their best rows; p
    # sorted ascending (ties in a fixed order: they get one q-value anyway), q_(i) = min over
    # j >= i of p_(j) * m / j, at most 1 (``tasks.metrics.bh_fdr``). Rows without a p-value
    # (no permutations) are not tests and do not count in m.
    "alignment_fdr": f"""
        WITH members AS (
            SELECT DISTINCT run_id, status AS run_status, unnest(alignment_versions) AS alignment_key FROM runs
        ), present AS (
            SELECT DISTINCT {_KEY_OF_ROW} AS alignment_key FROM alignment_best_all AS v
        ), missing AS (
            SELECT m.run_id, count(*) FILTER (WHERE p.alignment_key IS NULL) AS n_missing
            FROM members AS m LEFT JOIN present AS p USING (alignment_key) GROUP BY m.run_id
        ), tested AS (
            SELECT m.run_id, m.run_status, v.alignment_version, v.dataset_version, v.metric, v.params,
                   v.model_a, v.model_b, v.score, v.calibrated_score, v.p_value, v.permutations
            FROM members AS m JOIN alignment_best_all AS v ON m.alignment_key = {_KEY_OF_ROW}
            WHERE v.p_value IS NOT NULL AND NOT isnan(v.p_value)
        ), ranked AS (
            SELECT *,
                   row_number() OVER (PARTITION BY run_id, metric, params ORDER BY p_value, model_a, model_b) AS p_rank,
                   count(*) OVER (PARTITION BY run_id, metric, params) AS n_tests
            FROM tested
        )
        SELECT run_id, run_status, alignment_version, dataset_version, metric, params, model_a, model_b, score,
               calibrated_score, p_value, permutations, p_rank::INTEGER AS p_rank, n_tests::INTEGER AS n_tests,
               coalesce(x.n_missing, 0)::INTEGER AS n_missing,
               CASE WHEN coalesce(x.n_missing, 0) = 0 THEN least(1.0, min(p_value * n_tests / p_rank) OVER (
                   PARTITION BY run_id, metric, params ORDER BY p_rank DESC
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) END AS q_value
        FROM ranked LEFT JOIN missing AS x USING (run_id)""",
}


def current_alignment_keys(store: Store) -> set[str]:
    """Store keys (``alignment/<dataset>/<model a>__<model b>/<version>``) of the alignment
    versions behind the rows of ``alignment_best`` (:data:`CURRENT_BEST_SQL`): what ``prh gc
    --keep-current`` keeps. Reads the manifests, the run records and the best-row files only."""
    sources = catalog_sources(store)
    con = duckdb.connect(":memory:")
    try:
        register_store_filesystem(con, store)
        _create_file_view(con, "alignment_best_all", sources.files["alignment_best_all"], sources.lineage, store,
                          stored_files(store, sources))
        create_table_view(con, "runs", sources.tables["runs"])
        return {row[0] for row in con.execute(f"SELECT DISTINCT {_KEY_OF_ROW} FROM ({CURRENT_BEST_SQL}) AS v").fetchall()}
    finally:
        con.close()


#: Of each model pair's folder (``alignment/<dataset>/<pair>/<version>``: the pair across datasets,
#: as ``alignment_best`` partitions), the alignment version listed by the latest run with results that
#: lists one (:data:`LATEST_RUN_SQL`'s conditions and order; the smallest key among a run's), with that
#: run's id: one row per pair, worked out in DuckDB (400 nightly runs of 625 pairs list 250,000 keys,
#: which fetched into Python had cost 0.2-0.6 s and more of every connect; a grouped ``min`` here,
#: 0.2 s on 2 loaded cores). Reads only ``runs``.
_LATEST_LISTED_SQL = f"""
    SELECT latest.run, latest.key FROM (
        SELECT min({{'rank': run_rank, 'key': alignment_key, 'run': run_id}}) AS latest
        FROM (SELECT run_id, run_rank, unnest(alignment_versions) AS alignment_key
              FROM (SELECT run_id, alignment_versions, row_number() OVER (ORDER BY {_RUNS_LATEST_FIRST}) AS run_rank
                    FROM runs WHERE {_RUN_HAS_RESULTS}))
        WHERE len(string_split(alignment_key, '/')) = 4 AND split_part(alignment_key, '/', 1) = '{layout.ALIGNMENT}'
        GROUP BY split_part(alignment_key, '/', 3))"""


def _warn_current_results_missing(con: duckdb.DuckDBPyConnection, store: Store, sources: CatalogSources,
                                  read: list[str]) -> None:
    """Warn about each model pair whose current result is gone while an older one stands in.

    ``alignment_best`` shows, of each pair, the rows of the version that the latest run listing one
    of that pair lists, ranked among the versions the store holds: when that version is not in the
    store (a partial restore, a copy cut short, ``prh verify --remove-damaged``, a best file left
    out as damaged) the view shows another version of the pair (an older run's, with other
    parameters) as current, with nothing to tell it apart. No file is read: the versions present
    are those whose ``best.parquet`` the view reads (``read``), the listings come from ``runs``.
    A pair none of whose versions is left shows no rows (what ``prh gc --keep-runs`` does to a
    pair only an older run scored) and is not warned about."""
    best_files = sources.files.get("alignment_best_all", [])
    if not best_files:
        return
    shown = set(read)
    present = {sources.listed[uri].key.rsplit("/", 1)[0] for uri in best_files if uri in shown and uri in sources.listed}
    by_pair: dict[str, set[str]] = {}
    for key in present:
        by_pair.setdefault(key.split("/")[2], set()).add(key)
    latest = {key.split("/")[2]: (run_id, key) for run_id, key in con.execute(_LATEST_LISTED_SQL).fetchall()}
    for pair, (run_id, key) in sorted(latest.items()):
        others = sorted(by_pair.get(pair, set()) - {key})
        if key in present or not others:
            continue
        log.warning("store %s: run %s, the latest run with results for the pair %s, lists %s, which is not in the "
                    "store (a partial restore or copy, or removed as damaged); alignment_best and alignment show "
                    "that pair's rows of another version instead (%s), not that run's result. `prh run` with that "
                    "run's config computes it again (`prh verify` names damaged versions)",
                    store.display_url, run_id, pair.replace("__", " x "), key, ", ".join(others))


def create_table_view(con: duckdb.DuckDBPyConnection, view: str, table: pa.Table) -> None:
    """The view ``view`` of ``con`` over the Arrow ``table`` (read in place, not copied): DuckDB's
    registration under the view's own name, a temporary view, so that no other name shows in
    ``SHOW TABLES``, ``information_schema.tables`` or ``duckdb_views()`` (a ``CREATE VIEW`` over a
    registered ``_<view>_table`` had listed those three internal names beside the views)."""
    con.register(view, table)


def create_derived_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Create :data:`DERIVED_VIEWS` on ``con``, which already has the file views and tables;
    returns their names."""
    for name, select in DERIVED_VIEWS.items():
        con.execute(f"CREATE VIEW {name} AS {select}")
    return list(DERIVED_VIEWS)


def register_store_filesystem(con: duckdb.DuckDBPyConnection, store: Store, read_only: bool = True,
                              published: dict[str, dict[str, Any]] | None = None) -> None:
    """Let DuckDB reach a remote store through its fsspec filesystem (DuckDB's httpfs is not
    needed), through a :class:`StoreFileSystem` of it (one existence check per file when the
    store's path has glob characters); with ``read_only`` through a :class:`ReadOnlyFileSystem`,
    so that a write that got past :func:`query`'s checks fails in the filesystem. ``published``
    (store key → listing entry: :meth:`StoredFiles.intact`): files whose existence, size and
    modification time the wrapper answers from that entry, without a request. A local store needs
    nothing: DuckDB reads local files itself (:func:`lock_down` limits which)."""
    if not store.is_local:
        known = {store.path(key): entry for key, entry in (published or {}).items()}
        con.register_filesystem(ReadOnlyFileSystem(store.fs, known) if read_only else StoreFileSystem(store.fs, known))


def _exists_in(store: Store) -> Callable[[str], bool]:
    """``exists`` for :func:`lock_down`: a URI of ``store``'s filesystem (``s3://...`` or a path)."""
    return lambda uri: bool(store.fs.exists(uri.split("://", 1)[-1]))


def lock_down(con: duckdb.DuckDBPyConnection, allowed_directories: list[str],
              exists: Callable[[str], bool] | None = None, allowed_paths: list[str] | None = None) -> None:
    """Let ``con`` read only under ``allowed_directories`` (and the files ``allowed_paths``:
    :func:`linked_files`) and lock its configuration.

    A directory whose path holds glob characters (``results [v1]``) is allowed in its escaped
    spelling too (``results [[]v1]``: what ``Store.read_uri`` gives DuckDB). DuckDB also takes
    that spelling literally, so ``exists`` (a path → bool of the store's filesystem; default:
    the local disk) must show that no folder of that literal name exists: one would be readable.
    Raises ValueError naming it.

    Afterwards the connection cannot read or write other files (``read_text('/etc/...')``,
    ``COPY ... TO '/tmp/x'``), attach databases, install or load extensions, or change any
    setting (``SELECT * FROM enable_logging(storage = 'file', ...)`` fails too).
    """
    # DuckDB checks a path both as written (a pattern, the store's own glob characters escaped:
    # ``Store.read_uri``) and as the files it matches: both spellings of each directory are allowed
    exists = exists or os.path.lexists
    for d in allowed_directories:
        escaped = escape_glob(d)
        if escaped != d and exists(escaped.rstrip("/")):
            raise ValueError(f"the store {d!r} has glob characters in its path and a folder {escaped!r} exists beside it: "
                             "the read-only catalog could read that folder too; rename one of them")
    listing = ", ".join(_literal(d) for d in dict.fromkeys(
        spelling for d in allowed_directories for spelling in (d, escape_glob(d))))
    # DuckDB also allows its temporary directory (default ``.tmp`` in the working directory, where
    # anything may lie): a fresh private path instead, created only if a query spills to disk.
    # In DuckDB's spelling of the folder (UTF-8): a non-ASCII TMPDIR in a Latin-1 locale reads
    # '/tmp/prh-Ã¼' here, and a spill failed on that other, missing folder; a TMPDIR named in bytes
    # that are not UTF-8 (a lone surrogate here) had failed every catalog with 'std::bad_cast'.
    private = os.path.join(duckdb_temporary_folder("a query spills to one")[1], f"prh-duckdb-{uuid.uuid4().hex}")
    con.execute(f"SET temp_directory = {_literal(private)}")
    con.execute(f"SET allowed_directories = [{listing}]")
    if allowed_paths:
        con.execute(f"SET allowed_paths = [{', '.join(_literal(p) for p in dict.fromkeys(allowed_paths))}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _create_file_view(con: duckdb.DuckDBPyConnection, view: str, files: list[str],
                      lineage: list[Lineage] | None, store: Store, stored: StoredFiles | None = None,
                      feature_datasets: list[FeatureDataset] | None = None) -> list[str]:
    """The view ``view`` over ``files`` (Parquet, columns united by name, in the order of
    ``_EMPTY_VIEWS``; a column an older file lacks is NULL, ``unit`` NULL is ``'sample'``). The
    alignment views also get ``feature_version_a`` / ``feature_version_b`` from ``lineage``
    (written into the view, so that an exported catalog file has them too): models are
    identified by name and feature version, since one model name can have several feature
    versions (another pooling). The ``features`` view gets ``dataset_version`` from
    ``feature_datasets`` (:attr:`CatalogSources.feature_datasets`) the same way.
    Returns the files the view reads (a damaged one is left out, with a warning).

    With ``stored`` (:func:`stored_files`), a file missing from the listing or of another size
    than its manifest's (cut short, or rewritten by hand as valid Parquet: rows dropped, scores
    changed) is left out first, on every kind of store; the view then reads the files of one
    schema fingerprint together, bound from their first file only (``storage.stored_files``), so
    that a query naming the view (or a view over it) does not read every footer again. On a local
    store every footer is bound once here first (:func:`_footers_bound`), which finds one that
    does not parse; damage that keeps the size shows when a query reads the file (the error then
    points to `prh verify`)."""
    if not files:
        declared = _EMPTY_VIEWS[view].split(", ") + list(_ADDED_COLUMNS.get(view, ()))
        con.execute(f"CREATE VIEW {view} AS SELECT {_typed_nulls(declared)} WHERE false")
        return []
    groups = [FileGroup(files, union_by_name=True)]
    if stored is not None:
        misfits = stored.misfits(files)
        if misfits:
            _left_out(view, misfits)
            return _create_file_view(con, view, [f for f in files if f not in misfits], lineage, store, stored,
                                     feature_datasets)
        groups = stored.groups(files)
    try:
        if stored is not None and stored.bind_every_footer:
            groups = _footers_bound(con, files, groups)
        con.execute(_file_view_sql(view, groups, lineage, feature_datasets))  # binding reads each union_by_name file's schema
        return files
    except duckdb.Error:  # a damaged file (cut short, overwritten): find it, show the rest
        damaged = _unreadable(con, files, store)
        if not damaged:
            raise
        _left_out(view, damaged)
        return _create_file_view(con, view, [f for f in files if f not in damaged], lineage, store, stored,
                                 feature_datasets)


def _footers_bound(con: duckdb.DuckDBPyConnection, files: list[str], groups: list[FileGroup]) -> list[FileGroup]:
    """Bind every footer of ``files`` (one ``read_parquet`` of all of them, ``union_by_name``):
    raises DuckDB's error for a file whose footer does not parse, as binding a view over them
    would. Returns ``groups`` (the files by schema fingerprint) when reading them so gives the
    columns and types of that read, else the one group of all files read ``union_by_name``: a
    file whose schema is not its fingerprint (rewritten by hand at the same size) is read as
    before the views were grouped on local stores."""
    every = [FileGroup(list(files), union_by_name=True)]
    whole = con.execute(f"DESCRIBE SELECT * FROM {_source_sql(every)}").fetchall()
    if len(groups) == 1 and groups[0].union_by_name:
        return every
    try:
        grouped = con.execute(f"DESCRIBE SELECT * FROM {_source_sql(groups)}").fetchall()
    except duckdb.Error:  # groups whose columns do not unite
        return every
    return groups if [row[:2] for row in grouped] == [row[:2] for row in whole] else every


def _left_out(view: str, damaged: dict[str, str]) -> None:
    """Warn about each damaged file (URI → reason) that the view ``view`` leaves out."""
    for file, reason in damaged.items():
        log.warning("%s: %s; left out of the %s view (prh verify names its version; %s)", file, reason, view,
                    REMOVE_DAMAGED_ADVICE)


def _source_sql(groups: list[FileGroup], file_column: str | None = None) -> str:
    """What a file view selects from: one ``read_parquet`` per group (non-empty groups), the
    groups combined ``UNION ALL BY NAME`` (columns by name, each of the type that holds all).
    ``file_column``: a column of that name holds each row's file (DuckDB's ``filename``)."""
    named = f", filename = {_literal(file_column)}" if file_column else ""
    reads = [f"read_parquet([{', '.join(_literal(f) for f in group.files)}], "
             f"union_by_name = {'true' if group.union_by_name else 'false'}{named})" for group in groups]
    if len(reads) == 1:
        return reads[0]
    return "(" + " UNION ALL BY NAME ".join(f"SELECT * FROM {read}" for read in reads) + ")"


def _typed_nulls(declared: list[str]) -> str:
    """``NULL::TYPE AS name, ...`` of ``declared`` (``"name TYPE"`` items)."""
    return ", ".join(f"NULL::{c.split(' ', 1)[1]} AS {c.split(' ', 1)[0]}" for c in declared)


def _canonical_sql(view: str, groups: list[FileGroup]) -> str:
    """The files' rows with the columns of ``_EMPTY_VIEWS[view]`` first, in that order (a file
    written before a column existed has it NULL; columns unknown there follow, as the files have
    them): an empty row of those columns united ``BY NAME`` with the files, so that ``SELECT *``
    has one order on a local store (every footer bound) and on S3 (groups by schema fingerprint,
    each group in its files' order). ``unit`` NULL (files written before it existed, when prh
    aligned only by sample) is ``'sample'``. A view of ``_FOLDER_VERSION_VIEWS`` takes its
    ``dataset_version`` from the folder of each row's file (``datasets/<version>/<file>``)."""
    declared = _EMPTY_VIEWS[view].split(", ")
    file_column = _FILE_COLUMN if view in _FOLDER_VERSION_VIEWS else None
    rows = (f"SELECT {_typed_nulls(declared)} WHERE false UNION ALL BY NAME "
            f"SELECT * FROM {_source_sql(groups, file_column)}")
    if file_column:  # the last folder of the file's path, whatever the store's root or kind (s3://...)
        return (f"(SELECT * EXCLUDE ({file_column}) REPLACE (parse_path({file_column})[-2] AS dataset_version) "
                f"FROM ({rows}))")
    if "unit VARCHAR" in declared:
        return f"(SELECT * REPLACE (coalesce(unit, 'sample') AS unit) FROM ({rows}))"
    return f"({rows})"


def _values_sql(rows: list[tuple[str | None, ...]], names: tuple[str, ...]) -> str:
    """A relation of ``rows`` (text or None: ``NULL``) with columns ``names``, each ``VARCHAR``
    (an empty one of that shape without rows).

    The rows are one JSON text (a list of lists), unnested when a query reads the view: DuckDB binds
    a view each time a query names it, and a view over another binds that one again, so a ``VALUES``
    list of the lineage (2,400 rows of 7 literals for 1,200 alignment versions) was parsed and bound
    at every use, 0.1 s each, several times per ``connect``; one literal binds in milliseconds. The
    SQL stays self-contained (an exported catalog holds it; ``from_json`` is DuckDB's own)."""
    if not rows:
        return "SELECT " + ", ".join(f"NULL::VARCHAR AS {n}" for n in names) + " WHERE false"
    text = json.dumps([list(row) for row in rows], separators=(",", ":"))
    typed = ", ".join(f"r[{i}]::VARCHAR AS {n}" for i, n in enumerate(names, 1))
    return f"SELECT {typed} FROM (SELECT unnest(from_json({_literal(text)}, '[[\"VARCHAR\"]]')) AS r)"


def _file_view_sql(view: str, groups: list[FileGroup], lineage: list[Lineage] | None,
                   feature_datasets: list[FeatureDataset] | None = None) -> str:
    """``CREATE VIEW`` of :func:`_create_file_view` over non-empty groups of files."""
    source = _canonical_sql(view, groups)
    if view == "features":  # a small join on (model, feature_version): no file read more than before
        known = _values_sql(list(feature_datasets or []), ("model", "feature_version", "dataset_version"))
        return (f"CREATE VIEW {view} AS WITH datasets_of AS ({known}) "
                f"SELECT p.*, d.dataset_version FROM {source} p LEFT JOIN datasets_of d "
                f"ON d.model = p.model AND d.feature_version = p.feature_version")
    if view not in _LINEAGE_VIEWS:
        return f"CREATE VIEW {view} AS SELECT * FROM {source}"
    known = _values_sql(list(lineage or []), ("alignment_version", "model_a", "version_a", "model_b", "version_b",
                                              "published_at", "dataset_version"))
    # one join on the version, both model names (a version id may serve two pair folders) and the dataset
    return (
        f"CREATE VIEW {view} AS WITH lineage AS ({known}) "
        f"SELECT p.*, l.version_a AS {LINEAGE_COLUMNS[0]}, l.version_b AS {LINEAGE_COLUMNS[1]}, "
        f"l.published_at::TIMESTAMPTZ AS {LINEAGE_COLUMNS[2]} "
        f"FROM {source} p LEFT JOIN lineage l ON l.alignment_version = p.alignment_version "
        f"AND l.model_a = p.model_a AND l.model_b = p.model_b AND l.dataset_version = p.dataset_version"
    )


def _unreadable(con: duckdb.DuckDBPyConnection, files: list[str], store: Store) -> dict[str, str]:
    """The Parquet files among ``files`` (``Store.read_uri`` of ``store``) that are damaged (not
    Parquet: cut short, overwritten, a footer that does not parse or points past the file's end)
    or missing, with the reason. An error that may pass (an object store that does not answer)
    marks nothing: the caller then raises it (or ``store`` raises ``StoreIOError`` while it looks
    for the file)."""
    damaged = {}
    for file in files:
        try:
            con.execute(f"SELECT count(*) FROM parquet_metadata({_literal(file)})").fetchall()
        except duckdb.IOException as error:
            if not store.exists(store.key_of(unescape_glob(file))):
                damaged[file] = "the file is missing"
            elif _FOOTER_PAST_END in str(error):  # the footer's offsets are past the file's end
                damaged[file] = str(error).splitlines()[0]
        except duckdb.InvalidInputException as error:  # not Parquet: cut short, overwritten
            damaged[file] = str(error).splitlines()[0]
        except duckdb.Error as error:  # a footer that does not parse (thrift) is damage; a Python error
            if _FOOTER_UNPARSED in str(error):  # raised by a registered filesystem (s3fs: a timeout) may pass
                damaged[file] = str(error).splitlines()[0]
    return damaged


#: DuckDB's words for a Parquet footer that points past the end of its file, and for one whose
#: metadata does not parse (damaged footers, not an object store that does not answer: an error
#: of a registered fsspec filesystem reaches DuckDB's caller as a plain ``duckdb.Error`` too).
_FOOTER_PAST_END = "Could not read enough bytes"
_FOOTER_UNPARSED = "TProtocolException"


#: File views whose files hold no ``dataset_version``: it is the name of each file's folder, the
#: version's (``datasets/<version>/rejected.parquet``), read through the private column
#: ``_FILE_COLUMN`` (DuckDB's ``filename``), which the view leaves out.
_FOLDER_VERSION_VIEWS = ("rejected_samples",)
_FILE_COLUMN = "_prh_file"


#: File views that carry the feature versions of their two models and the time their version was
#: published (``CatalogSources.lineage``), and the columns they add to their Parquet files'
#: (``_EMPTY_VIEWS``: the files' columns).
_LINEAGE_VIEWS = ("alignment_all", "alignment_best_all")
LINEAGE_COLUMNS = ("feature_version_a", "feature_version_b", "published_at")
#: The columns each file view adds to its files' (``"name TYPE"``; after them, in this order).
_ADDED_COLUMNS = {**dict.fromkeys(_LINEAGE_VIEWS, ("feature_version_a VARCHAR", "feature_version_b VARCHAR",
                                                   "published_at TIMESTAMPTZ")),
                  "features": ("dataset_version VARCHAR",)}


def _meta_table(view: str, rows: list[dict[str, Any]]) -> pa.Table:
    """One row per manifest / run record, columns ``_META_COLUMNS[view]`` (nested dicts as JSON),
    each of its fixed type (``_META_TYPES``; text otherwise), whatever the values: a column that
    is null in every row (no causal LM: ``bits_per_byte``) or a view without rows keeps its
    type, so that ``round(bits_per_byte, 2)`` works on any store. A value that does not fit
    its type (a hand-edited manifest) is null."""
    columns = _META_COLUMNS[view]
    data = {c: [utc_time(r.get(c)) if c in _TIME_COLUMNS else _json_cell(r.get(c), c in _JSON_COLUMNS) for r in rows]
            for c in columns}
    return pa.table({c: _typed_column(v, _META_TYPES.get(c, pa.string())) for c, v in data.items()})


#: Columns of the metadata views that hold a moment (``Store.publish``'s ``published_at``, the run
#: record's ``started_at`` / ``finished_at`` / ``ordered_at``: ISO 8601 text from ``storage.store.utc_now``):
#: ``TIMESTAMPTZ`` in the views.
_TIME_COLUMNS = ("published_at", "started_at", "finished_at", "ordered_at")
UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Types of the metadata views' columns that are not text.
_META_TYPES: dict[str, pa.DataType] = {
    **dict.fromkeys(_TIME_COLUMNS, UTC_TIMESTAMP),
    **dict.fromkeys(("n_samples", "n_images", "n_rejected", "param_count", "n_layers", "aligned", "metrics_computed",
                      "metrics_copied", "n_attempts", "bytes_published", "bytes_read"), pa.int64()),
    **dict.fromkeys(("bits_per_byte", "bits_per_byte_pooled", "seconds", "peak_rss_mb", "peak_gpu_mb"), pa.float64()),
    "layer_widths": pa.list_(pa.int64()),
    **dict.fromkeys(("layer_names", "alignment_versions", "partial_alignment_versions", "extracted", "reused"),
                    pa.list_(pa.string())),
}


def _typed_column(values: list[Any], kind: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of ``kind``, a value that does not convert as null (text in a
    list column too: Arrow would take ``"ab"`` for the list ``["a", "b"]``)."""
    if pa.types.is_list(kind):
        values = [None if isinstance(value, (str, bytes)) else value for value in values]
    try:
        return pa.array(values, kind)
    except (pa.ArrowException, TypeError, ValueError):
        return pa.array([value if _fits(value, kind) else None for value in values], kind)


def _fits(value: Any, kind: pa.DataType) -> bool:
    try:
        pa.scalar(value, kind)
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True


#: Columns held as JSON text whatever their value (lists of records).
_JSON_COLUMNS = {"failures", "attempts", "retried", "error_attempts"}


def _json_cell(value: Any, as_json: bool = False) -> Any:
    """Nested dicts (and any value of a JSON column) become JSON text so that every column has
    one Arrow type. Text inside is kept as written (``"path": "/data/café"``), not as ``\\u``
    escapes: ``where source like '%café%'`` on ``datasets`` or ``where config like ...`` on
    ``runs`` found nothing when a path, a model id or an error message held a non-ASCII
    character. Only a value that is no UTF-8 text (a lone surrogate ``"\\ud83d"`` of a hand-edited
    record) keeps the escapes, as before: Arrow text cannot hold it."""
    if value is None or not (as_json or isinstance(value, dict)):
        return value
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, sort_keys=True)
    return text


_LOCKED = ("file system operations are disabled", "configuration has been locked", "external access is disabled")


def query(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run an analyst's read-only query and return its result as an Arrow table.

    Only SELECT (including WITH ... SELECT, FROM ..., PIVOT/UNPIVOT, DESCRIBE/SUMMARIZE/SHOW,
    which DuckDB parses as SELECT) and EXPLAIN [ANALYZE] of such a query are accepted; anything
    that could write or change state (COPY, EXPORT, INSERT, CREATE, ATTACH, SET, PRAGMA,
    INSTALL, LOAD, CALL, ``EXPLAIN ANALYZE COPY ...``) is refused with
    :class:`ReadOnlyQueryError` before anything runs, as is a write hidden inside a query
    (``WITH x AS (COPY ... TO ...) SELECT 1``, which DuckDB types SELECT; ``query('...')``):
    see :mod:`storage.sql_guard`. On a connection from :func:`connect`
    (locked down), a SELECT that reaches outside the store or touches the configuration
    (``read_text('/etc/passwd')``, ``enable_logging(...)``) fails with the same error. A query
    DuckDB cannot run (an unknown column, a type error) raises :class:`QueryError` with
    DuckDB's message; one it cannot parse, ``ValueError``.
    """
    checked = checked_statements(con, sql)
    for text in checked[:-1]:
        _run_checked(con, text, fetch=False)
    return _run_checked(con, checked[-1])


def query_each(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[pa.Table]:
    """:func:`query` for a query of several statements (``select 1; select 2``): every
    statement's result, in order, each as it is computed (``query`` returns the last). Every
    statement is checked before the first runs; errors as ``query``'s, a failing statement of
    several named by its place (``statement 2 of 3: the query failed: ...``)."""
    return _each_statement(con, sql, _run_checked)


def query_each_head(con: duckdb.DuckDBPyConnection, sql: str | CheckedQuery, rows: int,
                    batch_rows: int = 8192) -> Iterator[tuple[pa.Table, int]]:
    """:func:`query_each`, keeping of each result only its first ``rows`` rows: ``(head, total
    row count)`` per statement. The result is read ``batch_rows`` at a time and the rest only
    counted, so memory is the head plus one batch (``prh sql``'s table shows 10,000 rows: a
    ``select * from features`` of a large store had been read whole first, 636 MB for 20M
    short rows). Errors as :func:`query_each`'s, a failing statement of several named by its place."""
    return _each_statement(con, sql, lambda con, text: _head_checked(con, text, rows, batch_rows))


def query_batches(con: duckdb.DuckDBPyConnection, sql: str | CheckedQuery, batch_rows: int = 8192
                  ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """:func:`query` of a one-statement query, its result read as it is computed: its schema and
    its record batches of at most ``batch_rows`` rows, so that memory is about one batch (``prh
    sql --format csv|json`` writes each as it comes). The first batch is computed before this
    returns, so that a query that fails at once raises here, before anything is written; an
    error while a later batch is computed (``'x'::INT`` in row 300,000) raises from the iterator,
    as :func:`query`'s (:class:`QueryError`, not the ``OSError`` that Arrow's reader gives)."""
    ((schema, batches),) = _each_statement(con, sql, lambda con, text: _batches_checked(con, text, batch_rows),
                                           one=True)
    return schema, batches


def _each_statement(con: duckdb.DuckDBPyConnection, sql: str | CheckedQuery,
                    run: Callable[[duckdb.DuckDBPyConnection, str], Any], one: bool = False) -> Iterator[Any]:
    """``run(con, text)`` of each statement of ``sql``, in order, all checked before the first
    runs (`query_each`; a :class:`storage.sql_guard.CheckedQuery` was checked already, and one
    that ``check_query`` did not make is refused); a failing
    statement of several named by its place. With ``one``, a query of several statements is
    refused (ValueError) before any runs."""
    checked = issued_statements(sql) if isinstance(sql, CheckedQuery) else checked_statements(con, sql)
    if one and len(checked) > 1:
        raise ValueError(f"the query has {len(checked)} statements, where one result is read: run them one at a time")
    for number, text in enumerate(checked, 1):
        try:
            yield run(con, text)
        except (QueryError, ReadOnlyQueryError) as error:
            if len(checked) == 1:
                raise
            raise type(error)(f"statement {number} of {len(checked)}: {error}") from error.__cause__


def _head_checked(con: duckdb.DuckDBPyConnection, text: str, rows: int, batch_rows: int) -> tuple[pa.Table, int]:
    """The first ``rows`` rows of one checked statement's result and its row count (`query_each_head`)."""
    schema, batches = _batches_checked(con, text, batch_rows)
    kept: list[pa.RecordBatch] = []
    total = 0
    for batch in batches:
        if total < rows:
            kept.append(batch.slice(0, rows - total))
        total += batch.num_rows
    return pa.Table.from_batches(kept, schema=schema), total


def _batches_checked(con: duckdb.DuckDBPyConnection, text: str, batch_rows: int
                     ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """One checked statement's schema and record batches (`query_batches`), its first batch
    already computed (a statement without a result: no columns, no batches)."""
    with _duckdb_errors():
        result = con.sql(text)
        if result is None:
            return pa.schema([]), iter(())
        reader = result.to_arrow_reader(batch_rows)
    batches = _batches_of(reader)
    first = next(batches, None)
    return reader.schema, (batches if first is None else itertools.chain([first], batches))


def _batches_of(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The batches of a DuckDB result's Arrow reader; DuckDB's error while it computes one
    (Arrow's reader raises it as a bare ``OSError`` with DuckDB's message) as :func:`query`'s."""
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as error:
            with _duckdb_errors():
                raise _as_duckdb_error(str(error)) from None
        yield batch


def _as_duckdb_error(message: str) -> duckdb.Error:
    """DuckDB's error of the class its ``message`` names (``Conversion Error: ...`` →
    ``duckdb.ConversionException``; a message without such a name, as a registered fsspec
    filesystem's error reaches DuckDB's caller: ``duckdb.Error``), so that it is reported as when
    DuckDB raised it itself (:func:`_duckdb_errors`, :func:`read_failure_hint`)."""
    named = re.match(r"([A-Za-z][A-Za-z ]*) Error: ", message)
    kind = getattr(duckdb, named.group(1).replace(" ", "") + "Exception", None) if named else None
    if not (isinstance(kind, type) and issubclass(kind, duckdb.Error)):
        kind = duckdb.Error
    return kind(message)


def _run_checked(con: duckdb.DuckDBPyConnection, text: str, fetch: bool = True) -> pa.Table:
    """Run one statement that :func:`storage.sql_guard.checked_statements` passed; its result
    as an Arrow table (empty when it has none or ``fetch`` is false). DuckDB's errors become
    :class:`ReadOnlyQueryError` / :class:`QueryError` (see :func:`query`)."""
    with _duckdb_errors():
        if not fetch:
            con.execute(text).fetchall()
            return pa.table({})
        result = con.sql(text)
        return result.to_arrow_table() if result is not None else pa.table({})


#: How DuckDB's Python client words the ``RuntimeError`` it raises in place of a
#: ``KeyboardInterrupt`` (Ctrl-C, a notebook kernel's interrupt) that stopped its query.
_INTERRUPTED = "Query interrupted"


@contextlib.contextmanager
def _duckdb_errors() -> Iterator[None]:
    """DuckDB's errors while a checked statement runs, as :class:`ReadOnlyQueryError` (the
    connection's lock refused it) or :class:`QueryError` (see :func:`query`); a query stopped by
    Ctrl-C (a notebook's interrupt button) as the ``KeyboardInterrupt`` it was: DuckDB catches it and
    raises ``RuntimeError('Query interrupted')``, which read as a failed query."""
    try:
        yield
    except RuntimeError as error:  # DuckDB's own for the KeyboardInterrupt it caught (a notebook's interrupt)
        if str(error).startswith(_INTERRUPTED):
            raise KeyboardInterrupt(f"the query was interrupted ({error})") from None
        raise
    except duckdb.Error as error:  # con.interrupt() from a thread (a watchdog): duckdb.InterruptException, a failure
        if isinstance(error, (duckdb.PermissionException, duckdb.InvalidInputException)) and any(marker in str(error) for marker in _LOCKED):
            raise ReadOnlyQueryError(
                f"the catalog is read-only and reads only the store's files: {str(error).splitlines()[0]}"
            ) from None
        raise QueryError(f"the query failed: {str(error).rstrip()}{read_failure_hint(error)}{refused_advice_hint(str(error))}") from error


def read_failure_hint(error: duckdb.Error) -> str:
    """What to do about DuckDB's ``error`` while reading the store, in parentheses (or ``''``): a
    process out of file descriptors is told its limit (the hint had been that a stored file may
    be damaged, sending the user to `prh verify`, which finds nothing); a file that fails to read
    otherwise may be damaged."""
    if "Too many open files" in str(error):
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return (f" (this process may keep only {limit} files open at once (`ulimit -n`), fewer than the query reads: "
                "raise the limit, e.g. `ulimit -n 4096`, and run it again; the store is not damaged by this)")
    read_error = type(error) is duckdb.Error or isinstance(error, duckdb.IOException) or (
        isinstance(error, duckdb.InvalidInputException) and "parquet" in str(error).lower())
    if read_error and any(sign in str(error) for sign in _GONE):
        return (" (a file is not there: one the catalog listed when it was opened was removed since, by `prh gc` or by "
                "hand; open the catalog again (`prh sql` again, or a new `connect`) to read the store as it is now; "
                "`prh verify` names any file a manifest lists that is missing)")
    if read_error and any(sign in str(error) for sign in _CHANGED):
        return (" (a file the catalog listed when it was opened was written again since: published files are never "
                "rewritten by prh, so a copy or an edit replaced it; `prh verify` tells whether it still is what its "
                "manifest lists)")
    if read_error:
        return " (reading a stored file failed: if one was damaged after it was published, `prh verify` names it)"
    return ""


#: Words of DuckDB's and s3fs's errors for a file that is no longer there (local, then S3).
_GONE = ("No files found that match the pattern", "No such file or directory", "The specified key does not exist", "NoSuchKey")
#: ... and for a file rewritten since the catalog listed it (s3fs's ETag checks).
_CHANGED = ("FileExpired", "PreconditionFailed", "pre-conditions", "has changed")
