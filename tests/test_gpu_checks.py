"""bench/gpu_checks.sh, the prepared GPU run of issues 3 and 4, at CI size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_checks.sh"


def test_gpu_checks_script_runs_at_small_size(tmp_path):
    env = {**os.environ, "SMALL": "1", "DEVICE": "cpu", "PY": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    for step in ("metrics_layers", "metrics_large_n", "extract_shapes"):
        assert f"== {step}: exit 0 after" in summary
    layers = (tmp_path / "metrics_layers.log").read_text()
    for metric in ("mutual_knn", "cka", "cknna"):
        row = next(line for line in layers.splitlines() if line.startswith(metric))
        assert float(row.split()[-1]) < 1e-5  # engine equals the paper-style loop
    assert "N=600" in (tmp_path / "metrics_large_n.log").read_text()
    runs = [json.loads(line) for line in (tmp_path / "extract_shapes.log").read_text().splitlines() if line.startswith("{")]
    assert {r["bench"] for r in runs} == {"llm", "vit"} and all(r["seconds"] > 0 for r in runs)
    assert next(r for r in runs if r["bench"] == "llm")["bits_per_byte"] > 0
    assert "torch" in (tmp_path / "machine.txt").read_text()
