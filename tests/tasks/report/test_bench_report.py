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


def test_bench_report_zoo_small(capsys):
    """bench/bench_report_zoo.py builds a real store of the zoo's shape and its report (CI size)."""
    load_bench("bench_report_zoo").main(["--vision", "2", "--language", "2", "--layers", "3", "--n", "16"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 x 2 models, N = 16")
    rows = {line[:34].strip(): line[34:].split() for line in lines[2:]}
    # 3 metrics: 2 heatmaps + quality + size each = 12, and 4 layer figures
    assert rows["no cache (every figure drawn)"][2] == rows["warm figure cache"][2] == "16"
    assert 0 < float(rows["no cache (every figure drawn)"][1]) < 5  # MB
