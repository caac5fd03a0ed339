"""bench/bench_views.py runs end to end at CI size: the lineage join and the current views give
the answers it checks (the same rows as a plain view; run-new's rows only)."""

from __future__ import annotations

from tests.bench_scripts import load_bench


def test_bench_views_small(capsys):
    module = load_bench("bench_views")
    module.main(["--vision", "2", "--language", "3", "--layers-a", "3", "--layers-b", "2", "--metrics", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert out.startswith("72 rows in 6 files (2 x 3 pairs, 3 x 2 layers, 2 metrics)"), out
    assert "current views: every pair aligned twice (144 layer-pair rows in 12 files, 12 best files)" in out
    tables = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| query")]
    assert len(tables) == len(module.QUERIES) + len(module.CURRENT_QUERIES)
