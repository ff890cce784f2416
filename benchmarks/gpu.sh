#!/usr/bin/env bash
# One CUDA GPU, at most 8 minutes, one table. Run from anywhere:
#
#   bash benchmarks/gpu.sh                 # PYTHON=/path/to/venv/bin/python to pick the interpreter
#   SMOKE=1 bash benchmarks/gpu.sh         # the same steps on the CPU with a tiny model (checks the script itself)
#
# Measures, on the real ViT-M/16 detector (configs/vitdet_m16_inat21.yaml, random weights, nothing downloaded) and
# data made here by `birddet synth`:
#   - training images/s and peak memory at 1024 px: bf16 windowed (window 16), bf16 global, fp16 + GradScaler
#     (windowed), through `birddet train` with train.max_steps (the last logged window, after warm-up);
#   - eval images/s (detector forward in eval mode, bf16, batch 8, images already decoded) at 640 and 1024;
#   - predict images/s (`birddet predict --amp`, decode + detect + write, model load included) at 640 and 1024;
#   - a 1-process torchrun smoke run that starts an NCCL group and runs sharded predict inside it;
#   - the test suite's GPU-marked tests (`pytest -m gpu`).
# Targets on one H100: >= 10 training images/s at 1024 windowed, >= 40 detection images/s at 1024.
# Each step has its own time limit, cut to what is left of the 8-minute budget; a failed or timed-out step is a
# FAILED row and the script carries on, then exits 1.
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
SMOKE=${SMOKE:-0}
BUDGET_S=${BUDGET_S:-470}
START=$(date +%s)

if [[ "$SMOKE" == 1 ]]; then # tiny model, fp32 (CPU bf16 convolutions are slow), no loader workers
  DEVICE=cpu; PRESET=vit_reg4_tiny16_rms_avg; BIG=128; SMALL=96; STEPS=3; LOG=1; IMAGES=24; INFER_S=2
  TRAIN_SIZE=128; BF16=none; FP16=none; WORKERS=0; AMP_FLAG=; LIGHT=--light
  # The real heads (256-channel pyramid, 4conv1fc on 512 RoIs per image) cost minutes per step on a CPU.
  SMALL_HEADS=(model.pyramid.out_channels=32 model.roi_heads.conv_dim=32 model.roi_heads.representation_size=64
    model.roi_heads.batch_size_per_image=64 model.rpn.pre_nms_top_n_train=200 model.rpn.post_nms_top_n_train=100)
else
  DEVICE=cuda; PRESET=vit_reg4_m16_rms_avg; BIG=1024; SMALL=640; STEPS=20; LOG=10; IMAGES=120; INFER_S=10
  TRAIN_SIZE=1024; BF16=bf16; FP16=fp16; WORKERS=4; AMP_FLAG=--amp; LIGHT=
  SMALL_HEADS=()
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); SMOKE=1 runs on the CPU" >&2
    exit 2
  fi
fi

WORK=$(mktemp -d -t birddet-gpu-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROWS="$WORK/rows.txt"
: >"$ROWS"
FAILED=0

# step LABEL LIMIT_S CMD...: run CMD with at most LIMIT_S seconds (less if the budget is nearly spent), keep its
# ROW| lines, log the rest to $WORK/LABEL.log.
step() {
  local label=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    echo "ROW|$label|SKIPPED (8-minute budget spent)|" >>"$ROWS"
    FAILED=1
    return 0
  fi
  local log="$WORK/${label//[^A-Za-z0-9]/_}.log" t0=$(date +%s) rc=0
  echo "== $label (limit ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
  grep '^ROW|' "$log" >>"$ROWS" || true
  if ((rc != 0)); then
    local why="exit $rc"
    ((rc == 124 || rc == 137)) && why="timed out after ${limit}s"
    echo "ROW|$label|FAILED ($why)|see below" >>"$ROWS"
    echo "---- $label: last lines of its log" >&2
    tail -n 25 "$log" >&2
    FAILED=1
  fi
  echo "   $label: $(($(date +%s) - t0)) s" >&2
}

"$PY" - <<'EOF' >&2
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}, python {platform.python_version()}")
EOF

DATA="$WORK/data"
step "synthetic data" 60 "$PY" -m birddet.cli synth "$DATA" --images "$IMAGES"

train() { # train LABEL AMP WINDOW
  local run="$WORK/train-${1//[^A-Za-z0-9]/_}"
  step "train $1" 150 "$PY" -m birddet.cli train configs/vitdet_m16_inat21.yaml \
    model.backbone.weights=null model.backbone.preset="$PRESET" model.image_size="$TRAIN_SIZE" \
    model.backbone.window_size="$3" \
    data.train.ann="$DATA/train.json" data.train.images="$DATA/images" \
    data.val.ann="$DATA/val.json" data.val.images="$DATA/images" data.workers="$WORKERS" \
    train.amp="$2" train.device="$DEVICE" train.max_steps="$STEPS" train.log_every="$LOG" \
    ${SMALL_HEADS[@]+"${SMALL_HEADS[@]}"} --out "$run"
  if [[ -f "$run/metrics.jsonl" ]]; then
    "$PY" benchmarks/gpu.py train-row "$run" "$TRAIN_SIZE px, $1" >>"$ROWS" || true
  fi
}
train "$BF16, window 16" "$BF16" 16
train "$BF16, global" "$BF16" 0
train "$FP16 + GradScaler, window 16" "$FP16" 16

for size in "$SMALL" "$BIG"; do
  ckpt="$WORK/det$size.pt"
  step "checkpoint $size" 60 "$PY" benchmarks/gpu.py ckpt "$ckpt" --size "$size" --window 16 --preset "$PRESET" $LIGHT
  step "eval $size" 60 "$PY" benchmarks/gpu.py infer "$ckpt" "$DATA/images" --batch 8 $AMP_FLAG \
    --seconds "$INFER_S" --device "$DEVICE"
  out="$WORK/predict$size"
  step "predict $size" 90 "$PY" -m birddet.cli predict "$ckpt" "$DATA/images" --out "$out" --no-classifier \
    $AMP_FLAG --batch-size 8 --workers "$WORKERS" --device "$DEVICE"
  rate=$(grep -o '[0-9.]* images/s' "$WORK/predict_$size.log" | tail -n 1 | cut -d' ' -f1 || true)
  echo "ROW|predict images/s, $size px, batch 8${AMP_FLAG:+, bf16} (end to end)|${rate:-?}|img/s" >>"$ROWS"
done

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
step "torchrun nccl" 90 "$PY" -m torch.distributed.run --nproc_per_node=1 --master_addr=127.0.0.1 \
  --master_port="$PORT" benchmarks/gpu.py nccl "$WORK/det$SMALL.pt" "$DATA/images" "$WORK/nccl" --device "$DEVICE"

if [[ "$SMOKE" == 1 ]]; then
  echo "ROW|pytest -m gpu|not run (SMOKE)|" >>"$ROWS"
else
  step "pytest -m gpu" 150 "$PY" -m pytest -q -m gpu tests
  summary=$(grep -E '[0-9]+ (passed|failed|skipped)' "$WORK/pytest__m_gpu.log" | tail -n 1 || true)
  echo "ROW|pytest -m gpu|${summary:-?}|" >>"$ROWS"
fi

echo
echo "birddet GPU benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - START)) s$([[ "$SMOKE" == 1 ]] && echo ', SMOKE on CPU'))"
echo
echo "| what | value | unit |"
echo "|---|---:|---|"
awk -F'|' '{ printf "| %s | %s | %s |\n", $2, $3, $4 }' "$ROWS"
exit "$FAILED"
