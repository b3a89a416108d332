#!/usr/bin/env bash
# The measurements an accelerator makes meaningful, in one table (under 8 minutes on one GPU):
#   ResNet-50 bf16 train step at batch 256 (anchor: ~7,000 images/s per H100 in NVIDIA's MLPerf
#   results), Transformer-big tokens/s and the fraction of the matmul peak at the reference batch,
#   the NCF step, the ResNet-50 Offline SUT end to end, compile times and peak device memory.
#
#   bash scripts/device_check.sh [OUTDIR]          # each step's full output lands in OUTDIR/
#   DEVICE_CHECK_SMOKE=1 bash scripts/device_check.sh   # tiny shapes: checks the script on a CPU
#
# Each step has its own time limit, so one that hangs or runs out of memory costs only its row.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-device_check_out}
mkdir -p "$OUT"
SMOKE=${DEVICE_CHECK_SMOKE:-0}

if [ "$SMOKE" = 1 ]; then
  RN=(--batch_size=2 --steps=1 --repeats=1 --config=tiny)
  TF=(--batch_size=2 --steps=1 --repeats=1 --config=tiny)
  NC=(--batch_size=1024 --steps=1 --repeats=1 --config=tiny)
  INF=(--image_size=32 --batch_sizes=8 --min_duration_ms=500 --total_sample_count=64)
else
  RN=(--batch_size=256 --steps=20 --repeats=2)
  TF=(--batch_size=128 --steps=10 --repeats=2)          # reference: 128 packed rows of 256 tokens
  NC=(--batch_size=1048576 --steps=20 --repeats=2)      # the v0.5 reference batch (2^20)
  INF=(--batch_sizes=64,128,256 --min_duration_ms=20000 --total_sample_count=4096)
fi

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "$? $((SECONDS - t0))" >"$OUT/$name.rc"
}

step resnet50_train 150 "$PY" scripts/bench_train_step.py --benchmark=resnet50 --dtype=bfloat16 --torch=false "${RN[@]}"
# --notorch: the PyTorch peers (on by default when torch imports) would eat the 8-minute budget;
# this check is about our numbers. The Transformer step is Transformer-big's reference config
# (the default --config=reference) at the reference batch.
step transformer_train 150 "$PY" scripts/bench_train_step.py --benchmark=transformer --dtype=bfloat16 \
  --notorch "${TF[@]}"
step ncf_train 90 "$PY" scripts/bench_train_step.py --benchmark=ncf --notorch "${NC[@]}"
step resnet50_offline 150 "$PY" -m mlperf_jax.infer --benchmark=resnet50 --scenario=Offline \
  --mode=performance --dtype=bfloat16 --target_qps=auto --min_query_count=1 \
  --outdir="$OUT/resnet50_offline_logs" "${INF[@]}"
"$PY" scripts/device_check_table.py "$OUT"
