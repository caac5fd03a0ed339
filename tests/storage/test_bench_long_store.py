"""bench/bench_long_store.py runs end to end at CI size, on stores the catalog reads as the
pipeline's: every pair's current rows, the latest run's grid, one family per run and metric."""

from __future__ import annotations

from storage.catalog import connect
from tests.bench_scripts import load_bench


def test_the_synthetic_store_reads_as_a_pipeline_store(tmp_path):
    module = load_bench("bench_long_store")
    counts = module.build(tmp_path / "store", vision=3, language=2, runs=6, epochs=2, metrics=2, layers=3)
    assert counts == {"models": 5, "pairs": 6, "alignment_versions": 12, "runs": 6}
    con = connect(str(tmp_path / "store"))
    assert con.execute("select count(*) from runs where status = 'COMPLETED'").fetchone() == (6,)
    assert con.execute("select count(*) from alignment_best_all").fetchone() == (12 * 2,)
    # the current rows: the second epoch's versions, listed by the three latest runs
    assert con.execute("select count(*), count(distinct alignment_version) from alignment_best").fetchone() == (6 * 2, 6)
    assert con.execute("select count(*) from alignment").fetchone() == (6 * 2 * 3 * 3,)
    assert con.execute("select count(*) from alignment_best_all b semi join alignment_best c using (alignment_version) "
                       "where b.published_at > timestamptz '2025-01-02'").fetchone() == (12,)
    # alignment_fdr: one family per run and metric, of the six pairs
    assert con.execute("select count(*), min(n_tests), max(n_tests), max(n_missing) from alignment_fdr").fetchone() == (6 * 6 * 2, 6, 6, 0)
    assert con.execute("select count(*) from models_current").fetchone() == (5,)


def test_bench_long_store_small(capsys):
    module = load_bench("bench_long_store")
    module.main(["--runs", "4", "8", "--vision", "2", "--language", "1", "2", "--fixed-runs", "4", "--layers", "3",
                 "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| operation")]
    assert len(rows) == 2 * 12, out
    by_name = {line.split(" | ")[0][2:]: line for line in rows[:12]}
    assert "(4)" in by_name["connect + count(runs)"] and "(8)" in by_name["connect + count(runs)"]  # each record read once
    assert by_name["closing table"].count("(1)") == 2  # the record it shows, not the history
