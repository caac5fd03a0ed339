"""The run report: ``prh report`` writes it to a folder; ``publish_report_artifact`` stores it
with the run and attaches it to the Prefect run as a markdown artifact.

Composition only: ``tasks.report_source`` reads the tables, ``tasks.report`` draws and writes
the page. Heavy imports (matplotlib, DuckDB, Prefect) happen inside the functions, so that
importing this module for the command line costs nothing.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import re
import shlex
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.report_retention import REPORTS
from storage.store import STALE_CLAIM_SECONDS
from tasks.shown_text import for_markdown, for_terminal

if TYPE_CHECKING:
    from storage.store import Store
    from tasks.report import Report

ARTIFACT_KEY = "prh-report"
REPORT_FILE = "report.html"
# Largest heatmap (as base64) inlined into the markdown artifact; beyond it only the link is given.
ARTIFACT_IMAGE_LIMIT = 200_000
#: The temporary name :func:`_write_all` writes a file under before renaming it: ``.<name>.tmp-<32 hex>``.
TEMPORARY_FILE = re.compile(r"\..+\.tmp-[0-9a-f]{32}")
#: A temporary file of a report folder older than this (seconds) is a killed writer's: one in
#: flight lives as long as its report takes to write its files (seconds): the store's limit for
#: dead writers' temporary files.
STALE_TEMPORARY_S = STALE_CLAIM_SECONDS


def add_report_arguments(parser: argparse.ArgumentParser, store_help: str) -> None:
    """The options of ``prh report``."""
    parser.add_argument("--store", default=None, help=store_help)
    parser.add_argument("--run", default=None, help="run id, or a unique start of it (default: the latest run that published results: COMPLETED, or FAILED "
                        "for some models with the rest published, or CANCELLED or CRASHED after its results were recorded, with "
                        "some alignment versions)")
    parser.add_argument("--out", required=True, help="folder for report.html and figures/")
    parser.add_argument("--pair", default=None, metavar="A:B", help="model pair of the nearest-neighbour examples (default: the best-aligned)")


def run_report(args: argparse.Namespace, store: str) -> int:
    """``prh report``: write the report of one run of ``store`` (an existing store's URL), print
    where it is."""
    pair = None
    if args.pair:
        if ":" not in args.pair:
            raise ValueError(f"--pair {args.pair!r}: expected MODEL_A:MODEL_B")
        model_a, model_b = args.pair.split(":", 1)
        pair = (model_a, model_b)
    path, report = write_report(store, args.out, run_id=args.run, pair=pair)
    print(f"report of {reported_run(report.data.run, chosen=args.run is not None)} written to {path} "
          f"({len(report.figures)} figures in {path.parent / 'figures'})")
    for note in report.notes:
        print(f"note: {for_terminal(note)}")  # notes quote the store's run records: no escape code reaches the terminal
    return 0


def reported_run(run: dict[str, Any], chosen: bool) -> str:
    """Which run a report shows, for the line ``prh report`` prints: ``run ID (STATUS, started
    2026-01-02 00:00:00 UTC; the latest run with results)``, the last part only where ``--run``
    did not choose it (``chosen``): the default is the latest run that published results, which
    need not be the newest run (a one-model zoo's run has none)."""
    from tasks.report.build import shown_time

    facts = [str(run.get("status") or "status unknown")]
    if run.get("started_at"):
        facts.append(f"started {shown_time(run['started_at'])}")
    latest = "" if chosen else "; the latest run with results"
    return for_terminal(f"run {run.get('run_id')} ({', '.join(facts)}{latest})")  # quoted from the store's record


def write_report(
    store: str, out: str | Path, run_id: str | None = None, pair: tuple[str, str] | None = None, formats: tuple[str, ...] = ("png", "svg")
) -> tuple[Path, "Report"]:
    """Build the report of ``run_id`` (default: latest run that published results) and write it under ``out``:
    ``report.html`` (self-contained) and ``figures/<name>.png|svg``, then remove the figures an
    earlier report left there (:func:`remove_stale_figures`) and the temporary files of a report
    killed while writing there (:func:`remove_dead_temporaries`). Returns (page path, report).
    ``ValueError`` saying why when the run has no alignment results (``no_results_reason``):
    nothing is written."""
    from storage.figure_cache import StoreFigureCache
    from storage.store import Store
    from tasks.report import build_report
    from tasks.report_source import load_report_input, no_results_reason

    out = check_report_folder(out)  # before the report is built: a bad --out fails at once
    results = Store(store)
    if results.is_local and out.resolve().is_relative_to(Path(results.root).resolve()):
        raise ValueError(f"report folder {str(out)!r} is inside the store {results.display_url}: write it elsewhere (it would "
                         "sit among the store's files; each run's own report is stored under reports/ already)")
    data = load_report_input(results, run_id=run_id, pair=pair)
    if data.best.num_rows == 0:  # nothing to report: say why, write nothing (an earlier page in `out` stays)
        raise ValueError(no_results_reason(data.run))
    if data.run.get("store") != results.display_url:  # a copied or moved store: say where it was read
        data = dataclasses.replace(data, run={**data.run, "store": results.display_url, "run's store": data.run.get("store")})
    if pair is not None:
        check_pair(data.best.to_pylist(), pair, str(data.run.get("run_id")))
    report = build_report(data, formats=formats, cache=StoreFigureCache(results))
    files = report.files()
    _write_all(out, sorted(files.items(), key=lambda item: item[0] == REPORT_FILE))  # the page last
    remove_stale_figures(out, set(files))
    remove_dead_temporaries(out)
    return out / REPORT_FILE, report


def remove_dead_temporaries(out: Path, stale_after_s: float = STALE_TEMPORARY_S, now: float | None = None) -> list[str]:
    """Remove the temporary files (:data:`TEMPORARY_FILE`) in ``out`` and ``out/figures`` that were
    last written more than ``stale_after_s`` seconds before ``now``: those of a ``prh report`` killed
    (``kill -9``, a machine that died) between writing and renaming them, which nothing else would
    ever remove. Younger ones may be another report's in flight and are left. Plain files only; one
    that cannot be removed is left for the next report. Returns their paths relative to ``out``."""
    now = time.time() if now is None else now
    removed = []
    for folder in (out, out / "figures"):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            try:
                if (TEMPORARY_FILE.fullmatch(path.name) and path.is_file() and not path.is_symlink()
                        and now - path.stat().st_mtime > stale_after_s):
                    path.unlink()
                    removed.append(str(path.relative_to(out)))
            except OSError:  # removed meanwhile by another report, or not removable: the report is written all the same
                continue
    return removed


def _write_all(out: Path, files: list[tuple[str, bytes]]) -> None:
    """Write ``files`` (path relative to ``out``, bytes) all or none: each first to a temporary
    file beside its target, then, once every one is written, each renamed over its target in
    order (a reader, or a second ``prh report`` into the same folder, never sees half a page). A
    write that fails (a full disk, a folder where a figure goes) leaves the earlier report as it
    was: its figures were replaced one by one, so a failure part way left another run's figures
    beside the earlier page. ``ValueError`` naming the folder and the file."""
    staged: list[tuple[Path, Path]] = []
    try:
        for relative, content in files:
            target = out / relative
            if not target.resolve().is_relative_to(out.resolve()):
                raise ValueError(f"report file {relative!r} would be written outside {str(out)!r}")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_dir() and not target.is_symlink():
                    raise IsADirectoryError(f"a folder {relative} is in the way")
                temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
                staged.append((temporary, target))
                temporary.write_bytes(content)
            except OSError as error:
                raise ValueError(f"report folder {str(out)!r}: cannot write {relative}: {error.strerror or error}") from None
        for temporary, target in staged:
            try:
                os.replace(temporary, target)
            except OSError as error:  # the folder changed meanwhile
                raise ValueError(f"report folder {str(out)!r}: cannot write {target.relative_to(out)}: "
                                 f"{error.strerror or error}") from None
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


def remove_stale_figures(out: Path, written: set[str]) -> list[str]:
    """Remove the figures an earlier report left in ``out/figures/`` that this one did not write
    (``written``: the paths relative to ``out``), so that the folder shows one report. Only plain
    files named as a report names its figures (``tasks.report.build.FIGURE_FILE``:
    ``model-heatmap-*``, ``quality-*``, ``size-*``, ``layers-*`` ``.png|.svg``) are removed; any other
    file, folder or link is left alone. Returns the names removed."""
    from tasks.report.build import FIGURE_FILE

    folder = out / "figures"
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if (FIGURE_FILE.fullmatch(path.name) and f"figures/{path.name}" not in written
                and path.is_file() and not path.is_symlink()):
            try:
                path.unlink()
            except OSError as error:
                raise ValueError(f"report folder {str(out)!r}: cannot remove the earlier report's figures/{path.name}: "
                                 f"{error.strerror or error}") from None
            removed.append(path.name)
    return removed


def check_report_folder(out: str | Path) -> Path:
    """``out`` as a Path if it can be the report's folder: an existing folder, or a path whose
    nearest existing ancestor is a folder (it is created). Else ``ValueError`` naming it: empty,
    a file, or under a file."""
    if not str(out).strip():
        raise ValueError(f"report folder {str(out)!r} is empty: give the folder to write report.html and figures/ to (--out)")
    out = Path(out).expanduser()
    try:
        for place in (out, *out.parents):
            if place.is_dir():
                return out
            if place.exists() or place.is_symlink():  # a file, or a link to nothing
                kind = "a file" if place.is_file() else "not a folder"
                what = f"is {kind}" if place == out else f"is under {str(place)!r}, which is {kind}"
                raise ValueError(f"report folder {str(out)!r} {what}: give a folder (--out)")
    except OSError as error:  # a name longer than the disk takes (ENAMETOOLONG), a folder that cannot be searched
        raise ValueError(f"report folder {str(out)!r}: {error.strerror or error} (--out)") from None
    return out


def check_pair(best: list[dict[str, Any]], pair: tuple[str, str], run_id: str) -> None:
    """``ValueError`` unless ``pair`` (``--pair A:B``, either order) is one of the model pairs of
    ``best`` (the run's best rows), listing the run's pairs."""
    from tasks.report.tables import pairs_of

    pairs = pairs_of(best)
    if pair not in pairs and pair[::-1] not in pairs:
        listed = ", ".join(f"{a}:{b}" for a, b in pairs) or "none (it published no alignment)"
        raise ValueError(f"--pair {pair[0]}:{pair[1]}: run {run_id} has no such model pair; its pairs: {listed}")


def report_key(run_id: str) -> str:
    """Store key of a run's report: ``reports/<run_id>/report.html``."""
    from storage.store import Store

    return Store.key(REPORTS, run_id, REPORT_FILE)


def store_report(store: "Store", run_id: str, report: "Report") -> str:
    """Write the self-contained page into the store (atomically); returns its key."""
    key = report_key(run_id)
    store.write_bytes(key, report.html.encode("utf-8"))
    return key


def publish_report_artifact(store: str, record: dict[str, Any]) -> str | None:
    """Build the report of the run described by ``record`` (the pipeline's run record: ``run_id``,
    ``alignment_versions``, ``feature_versions``, ``dataset_version``), store it under
    ``reports/<run_id>/report.html`` and publish the markdown artifact ``prh-report``: where the
    report is, the first metric's model × model heatmap, and each metric's chance level. Figures
    whose rows did not change since an earlier run are reused (``storage.figure_cache``). No run
    record of the store is read (``record`` is the run's: ``tasks.report_source.load_report_input``).

    Returns the report's URL in the store. A report that cannot be built is logged as a warning
    and None is returned: the run's results are already published and stay valid.
    """
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact

    from storage.figure_cache import StoreFigureCache
    from storage.store import Store
    from storage.store_urls import redact_url
    from tasks.report import build_report
    from tasks.report_source import load_report_input

    logger = get_run_logger()
    try:
        target = Store(store)
        cache = StoreFigureCache(target)
        report = build_report(load_report_input(target, record=record), formats=("png",), cache=cache)
        key = store_report(target, str(record["run_id"]), report)
        logger.info("report figures: %d drawn, %d reused from earlier runs", cache.misses, cache.hits)
    except Exception as error:  # the report is a view of published results; never fail the run for it
        logger.warning("report not built: %s: %s", type(error).__name__, error)
        return None
    url = redact_url(target.uri(key) if not target.is_local else Path(target.path(key)).as_uri())
    logger.info("report stored at %s", url)
    try:
        create_markdown_artifact(key=ARTIFACT_KEY, markdown=artifact_markdown(report, record, url, target.display_url),
                                 description=f"Alignment report of run {record['run_id']}")
    except Exception as error:  # the page is stored; only the artifact that links it is missing
        logger.warning("report artifact not created: %s: %s", type(error).__name__, error)
    return url


def artifact_markdown(report: "Report", record: dict[str, Any], url: str, store: str | None = None) -> str:
    """The artifact's text: a link to the stored page, a heatmap, the chance levels per metric and
    each metric's best pair (the largest score, the smallest where lower is better:
    ``tasks.report.tables.best_row``). Where the page is not a local file (``url`` an ``s3://``
    address, which a browser does not open), the ``prh report`` command that writes it into a
    local folder, for the store ``store`` (its URL without credentials)."""
    from tasks.report.tables import best_row, chance_ratio, common_chance, metrics_of, rows

    best = rows(report.data.best)
    lines = [f"# prh report, run {for_markdown(record['run_id'])}", "", f"Full report (self-contained HTML, every figure): [{url}]({url})", ""]
    if not url.startswith("file:") and store is not None:
        command = f"prh report --store {shlex.quote(store)} --run {shlex.quote(str(record['run_id']))} --out prh-report"
        if "`" not in command and for_terminal(command) == command:  # a code block shows it as written
            lines += ["A browser does not open that address; this writes the page into the folder prh-report:", "",
                      "```", command, "```", ""]
    heatmaps = [f for f in report.figures if f.name.startswith("model-heatmap-") and not f.name.endswith("-calibrated")]
    if heatmaps:
        encoded = base64.b64encode(heatmaps[0].png).decode("ascii")
        if len(encoded) <= ARTIFACT_IMAGE_LIMIT:
            lines += [f"![{for_markdown(heatmaps[0].caption)}](data:image/png;base64,{encoded})", ""]
    lines += ["| metric | chance level | best pair | score | × chance | calibrated | p |", "|---|---|---|---|---|---|---|"]
    for metric in metrics_of(best):
        chance = common_chance(best, metric)
        top = best_row(best, metric)
        if top is None:  # every pair's score NULL (layers excluded): nothing to rank
            lines.append(f"| {for_markdown(metric)} | {'–' if chance is None else f'{chance:.4f}'} | – | – | – | – | – |")
            continue
        found = chance_ratio(top)  # as the report's table: none where it would mislead (lower is better, chance 0)
        ratio = "–" if found is None else f"{found[0]:.1f}×" + ("" if found[1] == "chance" else " null")
        calibrated = "–" if top.get("calibrated_score") is None else f"{top['calibrated_score']:.3f}"
        p = "–" if top.get("p_value") is None else f"{top['p_value']:.3g}"
        lines.append(f"| {for_markdown(metric)} | {'–' if chance is None else f'{chance:.4f}'} | "
                     f"{for_markdown(top['model_a'])} × {for_markdown(top['model_b'])} | "
                     f"{top['score']:.4f} | {ratio} | {calibrated} | {p} |")
    if report.notes:
        lines += ["", "Notes:"] + [f"- {for_markdown(n)}" for n in report.notes]  # names and records from the store: inert
    return "\n".join(lines) + "\n"
