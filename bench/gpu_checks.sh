#!/usr/bin/env bash
# The GPU measurements of issues 3 and 4 as one prepared run (about 5 minutes on one H200).
#
# On a lent device machine (its python3 holds CUDA torch and transformers, not pydantic, nor the
# pipeline's prefect, duckdb, s3fs or the demo's emoji/openmoji packages, which these checks never
# import: tests/test_gpu_checks.py runs them with those imports failing): first,
# here, `make gpu-wheels` (pydantic's wheels for that Python into .whl/, ignored by git), then with
# the `device` tool:  run  command="bash bench/gpu_checks.sh"  carry=[".whl"]  timeout_s=540
# Logs and tables land in $OUT (the tool brings them back). SMALL=1 DEVICE=cpu runs the same
# steps at CI size on a CPU (tests/test_gpu_checks.py), so the script cannot rot unnoticed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/prh-gpu-checks}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then  # packages the device image lacks (make gpu-wheels)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/prh-site .whl/*.whl \
    && export PYTHONPATH="/tmp/prh-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ "${SMALL:-0}" = 1 ]; then
  layers=(--small)
  large=(--skip-layers --skip-paper --large-n 600)
  shapes=(--scale small --n 16)
else
  layers=(--layers-a 33 --width-a 4096 --layers-b 40 --width-b 1536 --repeats 5)
  large=(--skip-layers --skip-paper --large-n 100000)
  shapes=(--scale full --n 1024)
fi

status=0
step() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log"
  [ "$rc" = 0 ] || status=1
}

{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"; \
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# issue 3: all layer pairs at the paper's largest shape; then N=100,000 mutual k-NN, exact and bf16
step metrics_layers 150 "$PY" bench/bench_metrics.py --device "$DEVICE" "${layers[@]}"
step metrics_large_n 150 "$PY" bench/bench_metrics.py --device "$DEVICE" "${large[@]}"
# issue 4: LLaMA-7B-shaped LM (bits per byte) and DINOv2-giant-shaped ViT, random init, all layers
step extract_shapes 200 "$PY" bench/bench_extract.py shapes --device "$DEVICE" "${shapes[@]}"
exit $status
