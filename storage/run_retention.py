"""Published versions kept by ``prh gc --keep-runs N``; the others are removed.

Published versions are immutable and runs never remove them, so a store that lives for months
keeps every superseded one: a checkpoint updated in place adds a feature version every night,
and with it new alignment versions. ``--keep-runs N`` keeps what the N newest runs that
published results (``COMPLETED``, or ``FAILED``, ``CANCELLED`` or ``CRASHED`` with alignment
versions: :func:`published_results`, the runs ``prh report`` picks from,
``tasks.report_source.select_run``) name, with what those versions were computed
from, and removes every other published version:

- kept: every version those runs' records name (``dataset_version``; ``feature_versions``, as
  ``features/<dataset_version>/<model>/<feature_version>``; ``alignment_versions`` and
  ``partial_alignment_versions``, keys), then
  the inputs of every kept version: an alignment version's dataset and its two feature versions
  (its manifest's ``lineage``, as the catalog reads it), a feature version's dataset;
- kept: every version published after the oldest kept run started, less ``CLOCK_SKEW_SECONDS``
  (a run on another host may have published it and not yet recorded it), with its inputs;
- kept: the dataset and feature versions named by every extraction stage (``prh-extract``, its
  record in ``runs/extractions/``) that ran since then (it finished, or started when it has no
  finish time, after that moment: a long GPU stage that started before a short run and finished
  after it counts), published or reused: its alignment stage may not have run yet; and those
  named by every ``COMPLETED`` run without results (a one-model zoo's run: features only) that
  ran since then; and the ``partial_alignment_versions`` of every run that ran since then (the
  pairs a run stopped or failed mid-alignment had aligned, new or found stored: its retry goes
  on from them), with their inputs;
- kept: a version whose manifest is damaged (not JSON, another version's, or a field of the
  wrong type: ``prh verify`` deals with it) and a manifest outside any version folder;
- with ``keep_current`` (``--keep-current``), kept: the alignment versions behind the catalog's
  current results (``alignment_best``: a pair or metric that only an older run scored, such as a
  model since dropped from the zoo), with their inputs. Without it, the plan still names them
  (``current``) so that ``prh gc`` can say which removed versions held current results;
- nothing is removed while a run record cannot be read (``storage.runs.DamagedRecord``: which
  versions its run used is unknown), nor while a run or an extraction stage is alive
  (``RUNNING`` and not known gone, ``storage.runs.gone_reason``): its record names its versions
  only when it ends, and it may be reusing any version stored; nor when no run published
  results (nothing to keep by), nor while a record is dated more than ``CLOCK_SKEW_SECONDS``
  after this host's clock (:func:`dated_ahead`: a clock set back between two runs; it would sort
  as the newest run and the versions of the runs after it would go).

A demo's rendered-dataset pointer (``datasets/rendered/<recipe>.json``) whose dataset is removed
is removed after it (a rerun of that recipe draws the pairs again); the others stay. Run records
(``runs/``), run reports and the figure cache (``reports/``, see ``--keep-reports``) are not
versions and stay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import duckdb

from storage import layout
from storage.catalog import current_alignment_keys
from storage.runs import (CANCELLED, CLOCK_SKEW_SECONDS, COMPLETED, CRASHED, FAILED, PARTIAL_ALIGNMENTS, DamagedRecord, epoch_seconds,
                          extraction_records, live_records, place_key, run_records)
from storage.store import Store, parse_json
from storage.store_errors import DamagedManifest
from storage.times import utc_time
from storage.verify import is_version_key, manifest_problems

#: Boxes in the order their versions are removed: a version before the versions it was computed
#: from, so that an interrupted gc never leaves a version whose inputs are gone.
REMOVAL_ORDER = (layout.ALIGNMENT, layout.FEATURES, layout.DATASETS)


@dataclass
class RetentionPlan:
    """What ``--keep-runs`` keeps and removes in a store.

    ``kept_runs``: ids of the kept runs, newest first; ``since``: the epoch seconds from which
    every published version is kept (None when nothing is removed); ``keep``: keys of the kept
    published versions; ``remove``: keys of the published versions to remove, in
    :data:`REMOVAL_ORDER`; ``pointers``: rendered-dataset pointers (key -> dataset version key)
    whose dataset is removed; ``blocked``: why nothing is removed (a live run, no run with
    results), else None; ``run_files``: the run records and signs of life under ``runs/`` when
    the plan was made (a new one means a run started since, even one that has already ended);
    ``current``: keys of the alignment versions behind the
    catalog's current results (``storage.catalog.current_alignment_keys``), None when they could
    not be read (``keep_current`` then blocks the plan)."""

    kept_runs: list[str] = field(default_factory=list)
    since: float | None = None
    keep: set[str] = field(default_factory=set)
    remove: list[str] = field(default_factory=list)
    pointers: dict[str, str] = field(default_factory=dict)
    blocked: str | None = None
    run_files: set[str] = field(default_factory=set)
    current: set[str] | None = None


def published_results(record: dict[str, Any]) -> bool:
    """Whether the run of ``record`` published results: ``COMPLETED``, ``FAILED``, ``CANCELLED``
    (stopped after its results were recorded, while its report was written) or ``CRASHED`` (a
    retry killed before its end, whose record keeps an earlier attempt's whole grid), with some
    alignment versions (the predicate of ``tasks.report_source.select_run``; a run of a one-model
    zoo, features only, has none, nor has a run stopped mid-alignment)."""
    return record.get("status") in (COMPLETED, FAILED, CANCELLED, CRASHED) and bool(record.get("alignment_versions"))


def newest_runs(records: Iterable[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` newest runs that published results, newest first, in ``select_run``'s order
    (``storage.runs.place_key``): place (``ordered_at``: its finish, or just after a run recorded
    before it started that is dated later, ``storage.runs.place_after``; else finish time; start
    time when there is none), then start time, then run id. Times compare as the catalog's
    ``TIMESTAMPTZ`` do: to the microsecond (epoch seconds as floats merged runs placed 1 µs apart
    after a record dated centuries ahead), read as the catalog reads them
    (``storage.times.utc_time``), one that is no time last (``NULLS LAST``)."""
    return sorted((r for r in records if published_results(r)), key=place_key, reverse=True)[:n]


def run_versions(record: dict[str, Any]) -> set[str]:
    """Keys of the versions a run record names (its grid's alignment versions, and the pairs a
    stopped attempt of it aligned: :func:`partial_alignments`). ValueError when it does not name
    them readably (what such a run uses cannot be kept)."""
    dataset, features = _named_inputs(record)
    alignments = record.get("alignment_versions")
    if dataset is None or features is None or not isinstance(alignments, list):
        raise ValueError(f"run {record.get('run_id')}'s record does not name its dataset, feature and alignment versions")
    return _input_keys(dataset, features) | {str(key) for key in alignments} | partial_alignments(record)


def partial_alignments(record: dict[str, Any]) -> set[str]:
    """Keys of the alignment versions a run record lists as aligned before the run (or an attempt
    of it) stopped or failed (``storage.runs.PARTIAL_ALIGNMENTS``); none when not a list."""
    listed = record.get(PARTIAL_ALIGNMENTS)
    return {key for key in listed if isinstance(key, str)} if isinstance(listed, list) else set()


def _named_inputs(record: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """(``dataset_version``, ``feature_versions``) as a run or extraction record names them (the
    catalog's ``runs`` view holds the latter as JSON text); None for either when not readable."""
    dataset, features = record.get("dataset_version"), record.get("feature_versions")
    if isinstance(features, str):
        try:
            features = parse_json(features)
        except ValueError:
            features = None
    return (dataset if isinstance(dataset, str) and dataset else None,
            features if isinstance(features, dict) else None)


def _input_keys(dataset: str, features: dict[str, Any]) -> set[str]:
    """Keys of dataset version ``dataset`` and of its feature versions ``features`` (model -> version)."""
    keys = {layout.dataset_key(dataset)}
    keys.update(layout.features_key(dataset, str(model), str(version)) for model, version in features.items())
    return keys


def inputs(key: str, manifest: dict[str, Any]) -> set[str]:
    """Keys of the versions the published version ``key`` was computed from: an alignment
    version's dataset and feature versions (its manifest's ``lineage``), a feature version's
    dataset (its key's), none for a dataset."""
    box, dataset = key.split("/")[:2]
    if box == layout.DATASETS:
        return set()
    needed = {layout.dataset_key(dataset)}
    if box == layout.ALIGNMENT:
        lineage = manifest.get("lineage") or {}
        source = str(lineage.get("dataset_version") or dataset)
        needed |= _input_keys(source, lineage.get("features") or {})
    return needed


def published_versions(store: Store) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """(version key -> manifest of every published version, keys of versions with a damaged
    manifest: not JSON, another version's, or a field of the wrong type, see
    ``storage.verify.manifest_problems``). A manifest outside any version folder is neither."""
    versions: dict[str, dict[str, Any]] = {}
    damaged: list[DamagedManifest] = []
    odd: set[str] = set()
    for box in REMOVAL_ORDER:
        for key, manifest in store.manifests(box, on_damaged=damaged.append):
            if is_version_key(key):
                if manifest_problems(manifest):
                    odd.add(key)
                else:
                    versions[key] = manifest
    return versions, odd | {d.version_key for d in damaged}


def extraction_versions(record: dict[str, Any]) -> set[str]:
    """Keys of the versions an extraction stage's record names (its dataset and feature versions,
    as far as it got); none when it names no dataset readably."""
    dataset, features = _named_inputs(record)
    return set() if dataset is None else _input_keys(dataset, features or {})


def plan_retention(store: Store, keep_runs: int, keep_current: bool = False) -> RetentionPlan:
    """What ``prh gc --keep-runs keep_runs [--keep-current]`` keeps and removes (see the module's
    docstring)."""
    if keep_runs < 1:
        raise ValueError(f"--keep-runs must be 1 or more (0 would remove every published version), got {keep_runs}")
    seen = run_files(store)  # before the records: a run that starts later shows up against it
    damaged: list[DamagedRecord] = []
    records, extractions = run_records(store, damaged=damaged), extraction_records(store, damaged)
    if damaged:  # its run may be the newest, or have reused old versions: nothing can be told apart
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        return RetentionPlan(blocked=f"{damaged[0]}{more}; no published version is removed until then")
    alive = live_records(store, records + extractions)
    if alive:
        names = ", ".join(f"{r.get('run_id')} (started {r.get('started_at')})" for r in alive)
        return RetentionPlan(blocked=f"run {names} is still running; what it reuses is recorded only when it ends "
                                     "(run prh gc --keep-runs again after it)")
    ahead = dated_ahead(records + extractions, time.time())
    if ahead is not None:
        return RetentionPlan(blocked=ahead)
    kept = newest_runs(records, keep_runs)
    if not kept:
        return RetentionPlan(blocked="no run published results, so none tells which versions to keep")
    plan = RetentionPlan(kept_runs=[str(r.get("run_id")) for r in kept], run_files=seen)
    starts = [epoch_seconds(r.get("started_at")) for r in kept]
    try:
        named = set().union(*(run_versions(r) for r in kept))
        if None in starts:
            raise ValueError(f"run {plan.kept_runs[starts.index(None)]}'s record has no start time")
    except ValueError as error:
        plan.blocked = str(error)
        return plan
    plan.since = min(s for s in starts if s is not None) - CLOCK_SKEW_SECONDS
    versions, damaged = published_versions(store)
    recent = {key for key, manifest in versions.items() if _published_since(manifest, plan.since)}
    features_only = [r for r in records if r.get("status") == COMPLETED and not published_results(r)]
    for record in extractions + features_only:
        # an extraction stage's versions are for an alignment stage that may not have run yet; a
        # completed run of a one-model zoo produced features only
        if _ran_since(record, plan.since):
            recent |= extraction_versions(record)
    for record in records:  # the pairs a run stopped or failed mid-alignment had (its retry goes on from them)
        if _ran_since(record, plan.since):
            recent |= partial_alignments(record)
    plan.keep = _closure(named | recent | damaged, versions)
    plan.remove = [key for box in REMOVAL_ORDER for key in sorted(versions) if key.startswith(box + "/") and key not in plan.keep]
    if any(key.startswith(layout.ALIGNMENT + "/") for key in plan.remove):  # only then can a current result go
        try:  # reads the manifests again (the catalog's way) and the best-row files
            plan.current = current_alignment_keys(store)
        except (duckdb.Error, OSError) as error:  # a best-row file that cannot be read
            if keep_current:
                plan.blocked = f"the current results (alignment_best) could not be read to keep them: {str(error).splitlines()[0]}"
                plan.keep, plan.remove = set(), []
                return plan
        if keep_current and plan.current:
            plan.keep = _closure(plan.keep | (plan.current & set(versions)), versions)
            plan.remove = [key for key in plan.remove if key not in plan.keep]
    removed = set(plan.remove)
    for pointer, target in rendered_pointers(store).items():
        if target in removed:
            plan.pointers[pointer] = target
    return plan


def _ran_since(record: dict[str, Any], since: float) -> bool:
    """Whether the run (or extraction stage) of ``record`` ran at or after ``since`` (epoch
    seconds): it finished then, or started then when it has no finish time; a record without
    either time counts."""
    ran_until = epoch_seconds(record.get("finished_at")) or epoch_seconds(record.get("started_at"))
    return ran_until is None or ran_until >= since


def dated_ahead(records: list[dict[str, Any]], now: float) -> str | None:
    """Why the newest runs cannot be told, or None: a record (pipeline run or extraction stage)
    that started or finished more than ``CLOCK_SKEW_SECONDS`` after ``now``, this host's clock. Its
    host's clock was ahead when it ran, or this one is behind (a clock set back between two runs):
    it sorts as the newest run, so gc kept its versions and removed those of the runs after it,
    the newest results (and the ``*_latest`` views show it too)."""
    for record in records:
        for field_name in ("started_at", "finished_at"):
            read = utc_time(record.get(field_name))  # as the runs are ordered (newest_runs): ' 2099-...' too
            moment = read.timestamp() if read is not None else None
            if moment is not None and moment > now + CLOCK_SKEW_SECONDS:
                hours = (moment - now) / 3600
                return (f"run {record.get('run_id')}'s record has {field_name} {record.get(field_name)}, {hours:,.1f} h after "
                        f"this host's clock ({datetime.fromtimestamp(now, timezone.utc).isoformat(timespec='seconds')}): "
                        "a clock was ahead when it ran, or this one is behind, so which runs are the newest cannot "
                        "be told; correct the clock (or that record's times: started_at, finished_at and ordered_at, which "
                        "orders it) first; no published version is removed "
                        "until then")
    return None


def _published_since(manifest: dict[str, Any], since: float) -> bool:
    """Whether the version was published at or after ``since``; a version without a readable
    ``published_at`` counts as recent (kept)."""
    published = epoch_seconds(manifest.get("published_at")) if manifest.get("published_at") else None
    return published is None or published >= since


def _closure(keys: set[str], versions: dict[str, dict[str, Any]]) -> set[str]:
    """``keys`` with the inputs of every published one among them, recursively."""
    kept, todo = set(keys), list(keys)
    while todo:
        key = todo.pop()
        for needed in inputs(key, versions[key]) if key in versions else ():
            if needed not in kept:
                kept.add(needed)
                todo.append(needed)
    return kept


def rendered_pointers(store: Store) -> dict[str, str]:
    """Every readable ``datasets/rendered/<recipe>.json``: its key -> the key of the dataset
    version it points to."""
    paths = sorted(store.glob(f"{layout.DATASETS}/rendered", "*.json")) if store.exists(f"{layout.DATASETS}/rendered") else []
    pointers = {}
    for path, raw in zip(paths, store.read_many(paths, f"{layout.DATASETS}/rendered")):
        try:
            pointers[store.key_of(path)] = layout.dataset_key(str(parse_json(raw or b"")["dataset_version"]))
        except (ValueError, KeyError, TypeError):
            continue  # not one of prh's pointers: left alone
    return pointers


def run_files(store: Store) -> set[str]:
    """Keys of the run records (``runs/*.json``, ``runs/extractions/*.json``) and signs of life
    (``runs/alive/*.json``), from one listing read afresh: a run writes its record and its sign
    of life before it reads any version; the sign goes when it ends, the record stays (a run
    that starts and ends between two looks leaves its record). A writer's temporary file
    (``.<name>.tmp-...``) is not one."""
    return {key for key in store.sizes(layout.RUNS) if key.endswith(".json") and not key.rsplit("/", 1)[-1].startswith(".")}


def apply_retention(store: Store, plan: RetentionPlan, dry_run: bool = False, sizes: dict[str, int] | None = None,
                    on_removed: Callable[[str], None] | None = None) -> list[str]:
    """Remove (``dry_run``: only list) ``plan``'s versions and then its pointers; returns the keys
    removed. ``sizes`` receives key -> bytes of each, measured before its removal. A run that
    starts meanwhile (a new record or sign of life, :func:`run_files`) stops the removal: what it reuses is unknown. A version
    that a writer is publishing again (its claim held) is left alone."""
    removed: list[str] = []
    if plan.blocked:
        return removed
    for key in [*plan.remove, *plan.pointers]:
        try:
            size = store.tree_bytes(key) if key in plan.remove else len(store.read_bytes(key))
        except FileNotFoundError:
            continue  # a pointer removed meanwhile
        if not dry_run:
            if run_files(store) - plan.run_files:
                plan.blocked = "a run started during gc: the other versions stay (run prh gc --keep-runs again after it)"
                break
            if key in plan.remove:
                if not store.unpublish(key):
                    continue
            else:
                store.delete(key)
        if sizes is not None:
            sizes[key] = size
        removed.append(key)
        if on_removed is not None:
            on_removed(key)
    return removed
