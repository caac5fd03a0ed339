"""The order in which `make test`'s pytest-xdist workers take the suite's files.

``--dist loadfile`` hands out whole files (a file's module fixtures are built once), and xdist
hands them out the files with the most tests first. The suite's longest files hold one to five
end-to-end tests each (a full pipeline, a killed run and its rerun, a Prefect server with its
workers): they came last, and one worker ran them alone for minutes after the other had nothing
left. ``LongestFileFirst`` hands the files out longest first ("longest processing time first"):
what is left at the end is short files on both workers. Which tests run, on which worker a file
runs whole, and each file's own test order are as before; only the order of the files changes.

A file's time is its entry in ``FILE_SECONDS`` (seconds: the sum of its tests' setup, call and
teardown durations in a ``-n 2 --durations=0`` run on a 2-core machine under load; only their order
matters), else its number of tests times ``SECONDS_PER_TEST``. A file missing from the table, or
timed on another machine, still runs, at worst later than it could. To refresh the table: run
the suite with ``--durations=0`` and list the files whose tests add up to more than ~10 s.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from xdist.scheduler import LoadFileScheduling

# Estimate for a file not in FILE_SECONDS: most of the suite's tests take a few milliseconds to a
# fraction of a second.
SECONDS_PER_TEST = 0.2

FILE_SECONDS: dict[str, float] = {
    "tests/flows/test_cli.py": 724,
    "tests/flows/test_deployment.py": 527,
    "tests/storage/test_s3_faults.py": 428,
    "tests/flows/test_crash_recovery.py": 245,
    "tests/flows/test_pipeline.py": 191,
    "tests/tasks/test_metric_plugins.py": 176,
    "tests/tasks/report/test_build.py": 175,
    "tests/flows/test_stages.py": 156,
    "tests/storage/test_export_readonly.py": 136,
    "tests/flows/test_prefect_env.py": 135,
    "tests/flows/test_run_record.py": 122,
    "tests/flows/test_reproducible_runs.py": 118,
    "tests/flows/test_add_model.py": 111,
    "tests/flows/test_server_watchdog.py": 107,
    "tests/storage/test_queries.py": 102,
    "tests/test_gpu_checks.py": 101,
    "tests/storage/test_catalog_s3_groups.py": 97,
    "tests/flows/test_gc_keep_runs.py": 93,
    "tests/tasks/test_alignment_memory.py": 91,
    "tests/storage/test_damaged_store.py": 83,
    "tests/tasks/extract/test_model_errors.py": 74,
    "tests/tasks/metrics/test_kernel_metrics.py": 73,
    "tests/tasks/metrics/test_knn_hits.py": 72,
    "tests/tasks/metrics/test_knn_ties.py": 69,
    "tests/flows/test_serve_leases.py": 67,
    "tests/tasks/test_report_source.py": 67,
    "tests/storage/test_catalog_views.py": 65,
    "tests/flows/test_runners.py": 60,
    "tests/flows/test_dask.py": 58,
    "tests/tasks/metrics/test_cknna.py": 55,
    "tests/storage/test_s3_requests.py": 53,
    "tests/storage/test_catalog_pairing.py": 48,
    "tests/storage/test_catalog_current.py": 47,
    "tests/storage/test_pairing_cache.py": 44,
    "tests/tasks/test_extract_resume.py": 42,
    "tests/storage/test_figure_cache.py": 39,
    "tests/storage/test_export_paths.py": 37,
    "tests/flows/test_sql_output.py": 36,
    "tests/flows/test_report.py": 35,
    "tests/tasks/metrics/test_knn_metrics.py": 34,
    "tests/tasks/metrics/test_bootstrap.py": 33,
    "tests/tasks/metrics/test_subspace_metrics.py": 30,
    "tests/flows/test_prefect_results.py": 30,  # timed alone: one retried tiny pipeline run
    "tests/flows/test_store_copies.py": 35,  # timed alone: four copies and two reruns of the tiny store
    "tests/tasks/data/test_openmoji.py": 30,
    "tests/storage/test_store_faults.py": 28,
    "tests/tasks/metrics/test_bench.py": 27,
    "tests/storage/test_publish_concurrent.py": 25,
    "tests/tasks/extract/test_upstream.py": 24,
    "tests/storage/test_locale_paths.py": 24,
    "tests/storage/test_runs.py": 23,
    "tests/storage/test_store.py": 23,
    "tests/flows/test_task_attempts.py": 23,
    "tests/tasks/report/test_few_permutations.py": 22,
    "tests/tasks/extract/test_language.py": 22,
    "tests/storage/test_verify.py": 22,
    "tests/test_conftest.py": 21,
    "tests/tasks/metrics/test_numerics.py": 21,
    "tests/flows/test_omp_policy.py": 9,  # timed alone: torch imported in a built Turkish locale
    "tests/storage/test_time_zones.py": 7,
    "tests/tasks/report/test_zoo_size.py": 6,
}


def estimated_seconds(path: str, n_tests: int, table: Mapping[str, float] = FILE_SECONDS) -> float:
    """The time a file's tests are expected to take: its entry in ``table``, else per test."""
    known = table.get(path)
    return float(known) if known is not None else n_tests * SECONDS_PER_TEST


def longest_first(units: Mapping[str, object], table: Mapping[str, float] = FILE_SECONDS) -> list[str]:
    """The files of ``units`` (path -> its tests, a sized collection) longest first; files of one
    estimate keep their order in ``units`` (a stable sort)."""
    return sorted(units, key=lambda path: -estimated_seconds(path, len(units[path]), table))


class LongestFileFirst(LoadFileScheduling):
    """xdist's ``loadfile`` scheduling, with its queue of files ordered by ``longest_first``."""

    def __init__(self, config, log=None, table: Mapping[str, float] = FILE_SECONDS) -> None:
        super().__init__(config, log)
        self._table = table
        self._ordered = False

    def _assign_work_unit(self, node) -> None:
        # The queue is complete when the first file is handed out (xdist fills it in schedule(),
        # then assigns): ordered here once, before any file leaves it.
        if not self._ordered:
            self.workqueue = OrderedDict((path, self.workqueue[path]) for path in longest_first(self.workqueue, self._table))
            self._ordered = True
        super()._assign_work_unit(node)
