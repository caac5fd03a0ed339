"""bench/bench_report.py runs end to end at CI size, and its counts are the figure cache's."""

from __future__ import annotations

from tests.bench_scripts import load_bench


def test_bench_report_small(capsys):
    module = load_bench("bench_report")
    module.main(["--vision", "2", "--language", "1", "--layers-a", "3", "--layers-b", "4", "--metrics", "mutual_knn"])
    rows = {name.strip(): numbers for name, *numbers in (line.rsplit(maxsplit=4) for line in capsys.readouterr().out.splitlines()[2:])}
    # 1 metric: heatmap + calibrated heatmap + quality + size = 4 figures, and 2 layer figures
    assert rows["no cache (every figure drawn)"][1:3] == ["6", "0"]
    assert rows["warm cache, same rows"][1:3] == ["0", "6"]
    # one language model more: its 2 pairs' layer figures and the 4 per-metric figures
    assert rows["warm cache, one language model added"][1:3] == ["6", "2"]
