#!/usr/bin/env bash
# Run every reference benchmark (PyTorch + ONNX Runtime), one workload per process,
# and append the JSON lines to the file given as first argument.
#
#   bench/reference/run_reference.sh results/reference.jsonl
#
# Env: THREADS (default 2), QUICK=1 for a quick smoke run (fewer repeats),
#      PYTHON (default /usr/bin/python3: Debian's interpreter owns python3-torch).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTPUT.jsonl" >&2
  exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
THREADS=${THREADS:-2}
QUICK=${QUICK:-0}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

# workload:warmup:repeats
if [[ $QUICK == 1 ]]; then
  TORCH_RUNS="2d_infer:1:3 2d_train:1:1 3d_infer:1:1 3d_train:1:1"
  ORT_RUNS="2d_infer:1:3 3d_infer:1:1"
else
  TORCH_RUNS="2d_infer:2:20 2d_train:1:5 3d_infer:1:5 3d_train:1:3"
  ORT_RUNS="2d_infer:2:20 3d_infer:1:5"
fi

echo "== PyTorch ($("$PYTHON" -c 'import torch; print(torch.__version__)'), $THREADS threads)" >&2
for run in $TORCH_RUNS; do
  IFS=: read -r wl warm rep <<<"$run"
  echo "-- torch $wl" >&2
  "$PYTHON" "$HERE/bench_torch.py" --workload "$wl" --threads "$THREADS" \
    --warmup "$warm" --repeats "$rep" | tee -a "$OUT"
done

echo "== ONNX export" >&2
MODELS="$HERE/models"
if [[ ! -f "$MODELS/unet2d_infer.onnx" || ! -f "$MODELS/unet3d_infer.onnx" ]]; then
  "$PYTHON" "$HERE/export_onnx.py" --out-dir "$MODELS" 2> >(grep -v -e 'instance_norm' -e 'warnings.warn' >&2)
fi

echo "== ONNX Runtime (onnxruntime-node, $THREADS intra-op threads)" >&2
if [[ ! -d "$HERE/node_modules/onnxruntime-node" ]]; then
  (cd "$HERE" && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund >&2)
fi
for run in $ORT_RUNS; do
  IFS=: read -r wl warm rep <<<"$run"
  case $wl in
    2d_infer) model="$MODELS/unet2d_infer.onnx" ;;
    3d_infer) model="$MODELS/unet3d_infer.onnx" ;;
  esac
  echo "-- onnxruntime $wl" >&2
  node "$HERE/bench_ort.mjs" --model "$model" --workload "$wl" --threads "$THREADS" \
    --warmup "$warm" --repeats "$rep" | tee -a "$OUT"
done
echo "wrote $OUT" >&2
