"""The benchmark script runs end to end at CI size and checks engine == paper-style loop."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_bench


def test_bench_small_runs(capsys: pytest.CaptureFixture[str]) -> None:
    mod = load_bench("bench_metrics")
    mod.main(["--small", "--large-n", "500", "--calibrate", "mutual_knn", "cka",
              "--precision-error", "300"])
    out = capsys.readouterr().out
    for metric in ("mutual_knn", "cka", "cknna"):
        line = next(l for l in out.splitlines() if l.startswith(metric))
        assert float(line.split()[-1]) < 1e-5  # max |engine - paper loop|
    assert "calibrate cka" in out and "N=500" in out
    # --large-n: the three knn_precision modes side by side; refined lists are the exact ones
    rows = {l.split()[0]: l.split() for l in out.splitlines()
            if l.split() and l.split()[0] in ("exact", "bf16", "bf16-refine")}
    assert set(rows) == {"exact", "bf16", "bf16-refine"}
    assert rows["bf16-refine"][-3] == "0.00%" and float(rows["bf16-refine"][-1]) == 0.0
    # --precision-error: both data sets, the refinement changes no list
    err = [l.split() for l in out.splitlines() if l.startswith(("gaussian", "lowrank"))]
    assert {(r[0], r[2]) for r in err} == {(d, m) for d in ("gaussian", "lowrank")
                                           for m in ("exact", "bf16", "bf16-refine")}
    assert all(r[4] == "0.00%" for r in err if r[2] == "bf16-refine")


def test_bench_prepare_small_gives_the_papers_clamp(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/bench_prepare.py at CI size: the pooled (blockwise) clamp gives the paper's output."""
    mod = load_bench("bench_prepare")
    for extra in ([], ["--exact"]):
        results = mod.main(["--layers", "3", "--n", "40", "--width", "16", *extra])
        (_, _, paper), (_, _, pooled) = results["paper"], results["pooled"]
        assert paper.shape == (3, 40, 8) and float(abs(paper).max()) > 0
        assert float(abs(pooled - paper).max()) < 1e-6
    rows = [l.split() for l in capsys.readouterr().out.splitlines() if l.startswith(("paper", "pooled"))]
    assert [r[0] for r in rows] == ["paper", "pooled"] * 2 and all(float(r[-1]) < 1e-6 for r in rows)
