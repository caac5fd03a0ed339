#!/usr/bin/env bash
# The GPU measurements of issues 3 and 4 as one prepared run (about 2-3 minutes on one H200; the
# five steps are capped at 120 + 90 + 130 + 130 + 60 = 530 s, and the whole script at BUDGET
# seconds, default 480, pip and imports included: a step starts only with time left and is cut at
# the budget, so the call's 540 s are never reached; the steps took 105 s on an H200).
#
# On a lent device machine (its python3 holds CUDA torch and transformers, not pydantic, nor the
# pipeline's prefect, duckdb, s3fs or the demo's emoji/openmoji packages, which these checks never
# import: tests/test_gpu_checks.py runs them with those imports failing and no network): first,
# here, `make gpu-wheels` (pydantic's wheels for that Python into a fresh .whl/, ignored by git), then
# with the `device` tool:  run  command="bash bench/gpu_checks.sh"  carry=[".whl"]  timeout_s=540
# Logs and tables land in $OUT (the tool brings them back; seven files): summary.txt (each step's
# exit and seconds), machine.txt (GPU, python3 -V, torch/transformers, the wheels' pip exit code
# and output), metrics_layers.log, metrics_large_n.log, extract_llm.log, extract_vit.log and
# cuda_vs_cpu.log (the device's numbers against the CPU's: every metric, and the extraction when it
# imports; bench/cuda_vs_cpu.py). The issues' targets come first (issue 3: all layer pairs, then
# N=100,000; issue 4: the LM, then the ViT), each figure printed as soon as it is measured, so a
# step cut short keeps what it printed; the comparison with the CPU runs last.
# Each model's extraction is its own step (one failing keeps the other's figure); they are
# skipped, with a line in summary.txt, when the wheels do not install or the extraction code
# does not import (writing the shard, which needs pyarrow and fsspec, is timed apart: a failure
# there is the row's write_error, the extraction figure stays). SMALL=1 DEVICE=cpu runs the same
# steps at CI size on a CPU (bfloat16 models, two image-decoding worker processes; on the GPU the
# pipeline's choice, threads; tests/test_gpu_checks.py), so the script cannot rot unnoticed.
# STEPS (names, space-separated) runs a subset; WHL is the wheel folder; BUDGET the script's seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/prh-gpu-checks}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
WHL=${WHL:-.whl}
STEPS=${STEPS:-metrics_layers metrics_large_n extract_llm extract_vit cuda_vs_cpu}
BUDGET=${BUDGET:-480}  # seconds for the whole script (the device call is given 540)
GRACE=10  # seconds `timeout -k` waits after TERM before it kills a step
mkdir -p "$OUT"
: > "$OUT/summary.txt"

if [ "${SMALL:-0}" = 1 ]; then
  layers=(--small --profile)
  compare=(--n 120)  # CPU against CPU: only that the script runs
  large=(--skip-layers --skip-paper --large-n 600 --large-n-blocks 0.5 128)  # 0.5 MiB: blockwise at N=600
  shapes=(--scale small --n 16 --dtype bfloat16 --prepare processes)
  export PRH_DECODE_WORKERS=2
else
  compare=()
  layers=(--layers-a 33 --width-a 4096 --layers-b 40 --width-b 1536 --repeats 5 --profile)
  large=(--skip-layers --skip-paper --large-n 100000 --large-n-blocks 128 512 2048)
  shapes=(--scale full --n 1024)
fi

# packages the device image lacks (make gpu-wheels): their pip exit code goes to machine.txt
pip_rc=none  # none: no wheels to install
pip_log=""
if compgen -G "$WHL/*.whl" >/dev/null; then
  pip_log=$("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/prh-site "$WHL"/*.whl 2>&1)
  pip_rc=$?
  [ "$pip_rc" = 0 ] && export PYTHONPATH="/tmp/prh-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# the device machine reaches no network: nothing may wait on a model hub
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

# versions of what the steps import (the image's, not the project's pins), and what sets float32
# matmuls to TF32 (which would make the 'exact' searches and the bf16-refine certificate inexact)
versions='import importlib, os, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
try:
    print("float32 matmul precision", torch.get_float32_matmul_precision(),
          "cuBLAS allow_tf32", torch.backends.cuda.matmul.allow_tf32)
except Exception as exc:
    print("float32 matmul precision unreadable:", type(exc).__name__, exc)
for name in ("transformers", "numpy", "pyarrow", "fsspec", "pydantic", "PIL", "tokenizers", "scipy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "not importable:", type(exc).__name__, exc)
print("environment:", {k: v for k, v in os.environ.items() if "TF32" in k or k.startswith(("CUDA_", "PYTORCH_", "TORCH_"))})'
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  echo "python: $("$PY" -V 2>&1) ($(command -v "$PY")), cpus $(nproc)"; \
  "$PY" -c "$versions"; \
  if [ "$pip_rc" = none ]; then echo "pip install $WHL/*.whl: not run (no wheels there)"; \
  else echo "pip install $WHL/*.whl: exit $pip_rc"; [ -n "$pip_log" ] && echo "$pip_log"; fi; \
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

status=0
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
step() {  # name, timeout seconds, command...: cut to what is left of BUDGET, skipped when too little is
  local name=$1 limit=$2; shift 2
  wanted "$name" || return 0
  local left=$((BUDGET - SECONDS - GRACE))
  if [ "$left" -lt 15 ]; then
    note "== $name: SKIPPED: $((BUDGET - SECONDS)) s left of the script's $BUDGET s"
    status=1
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  note "== $name (limit $limit s): $*"
  local started=$SECONDS
  timeout -k "$GRACE" "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "== $name: exit $rc after $((SECONDS - started)) s$([ "$rc" = 124 ] && echo " (timed out at $limit s)")$([ "$rc" = 137 ] && [ $((SECONDS - started)) -ge "$limit" ] && echo " (killed $GRACE s after its $limit s limit)")"
  tail -n 25 "$OUT/$name.log"
  [ "$rc" = 0 ] || status=1
}

# The extraction steps need pydantic (the wheels) and the extraction code importable.
extract_ok=1
if wanted extract_llm || wanted extract_vit || wanted cuda_vs_cpu; then
  if [ "$pip_rc" != 0 ] && [ "$pip_rc" != none ]; then
    note "== extract_llm, extract_vit: SKIPPED: pip install $WHL/*.whl failed (exit $pip_rc; its output in machine.txt)"
    extract_ok=0
  elif ! why=$("$PY" -c "import pydantic, tasks.extract" 2>&1); then
    note "== extract_llm, extract_vit: SKIPPED: the extraction code does not import ($(echo "$why" | tail -n 1)); pip install $WHL/*.whl: $([ "$pip_rc" = none ] && echo "not run, no wheels (make gpu-wheels)" || echo "exit $pip_rc")"
    extract_ok=0
  fi
  [ "$extract_ok" = 1 ] || status=1
fi

# issue 3: all layer pairs at the paper's largest shape; then N=100,000 mutual k-NN, exact and bf16
step metrics_layers 120 "$PY" bench/bench_metrics.py --device "$DEVICE" "${layers[@]}"
step metrics_large_n 90 "$PY" bench/bench_metrics.py --device "$DEVICE" "${large[@]}"
# issue 4: LLaMA-7B-shaped LM (bits per byte) and DINOv2-giant-shaped ViT, random init, all layers
# pooled and written (a shard to a temporary local store); one process each
if [ "$extract_ok" = 1 ]; then
  step extract_llm 130 "$PY" bench/bench_extract.py shapes --which llm --device "$DEVICE" "${shapes[@]}"
  step extract_vit 130 "$PY" bench/bench_extract.py shapes --which vit --device "$DEVICE" "${shapes[@]}"
fi
# last, the device's code paths against the CPU's numbers (every metric; extraction when it imports)
step cuda_vs_cpu 60 "$PY" bench/cuda_vs_cpu.py --device "$DEVICE" "${compare[@]}" $([ "$extract_ok" = 1 ] || echo --skip-extract)
exit $status
