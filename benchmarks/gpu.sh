#!/usr/bin/env bash
# The prepared GPU script (issue 13): one NVIDIA GPU, within 10 minutes, every stage under its own
# time limit and all of them under GPU_BUDGET_S (570 s), so one call of the device tool runs it
# and a second one can rerun it. NOT RUN YET: no GPU has been lent to this project's sessions so
# far; the first session that gets one runs it, fixes what breaks and records the figures.
#
#   bash benchmarks/gpu_prepare.sh                     # here, first: fills .gpu/ (STS, tokenizer)
#   bash benchmarks/gpu.sh                             # there (device tool: carry [".gpu"])
#
# Stages (each says its exit code and seconds; logs in $OUT/stages.log, figures in
# $OUT/results.jsonl, one JSON line each):
#   env        the GPU, torch, whether Ray is installed
#   models     random-weight models of all-MiniLM-L6-v2's shape and of BERT-base's
#              (benchmarks/random_model.py: speed depends on the shape, not the weights)
#   syncs      tests/test_host_syncs.py on CUDA under torch.cuda.set_sync_debug_mode("error")
#   ceiling-*  the step alone (benchmarks/ceiling.py), bf16, fused AdamW, one STS epoch:
#              pairs/s and MFU for MiniLM-L6 and BERT-base, eager and torch.compile
#   nccl       (Ray only) tests/test_gpu.py: a real run whose every collective goes through NCCL
#   114k       (Ray only) rerank-ray train on 114,138 pairs x 3 epochs, bf16 (target < 60 s)
# MFU = model FLOPs (6 x non-embedding parameters x real tokens + attention) / seconds / the
# GPU's dense bf16 peak, PEAK_TFLOPS (989: H100 SXM and H200, the same compute).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then PYTHON=python3; [ -x .venv/bin/python ] && PYTHON=.venv/bin/python; fi
OUT=${OUT:-/tmp/rerank-gpu}
PEAK=${PEAK_TFLOPS:-989}
BUDGET=${GPU_BUDGET_S:-570}
MODELS=${MODELS_DIR:-/tmp/rerank-gpu-models}
STS=.gpu/stsb/train.parquet
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" "$MODELS"
: > "$OUT/stages.log"
: > "$OUT/results.jsonl"

stage() {  # stage NAME LIMIT_S COMMAND...: skipped when the budget cannot cover its limit
    local name=$1 limit=$2
    shift 2
    if (( SECONDS + limit > BUDGET )); then
        echo "== $name: skipped (${SECONDS} s used of ${BUDGET})" | tee -a "$OUT/stages.log"
        return
    fi
    local start=$SECONDS
    echo "== $name: $*" >> "$OUT/stages.log"
    timeout "$limit" "$@" > "$OUT/stage.tmp" 2>&1
    local rc=$?
    cat "$OUT/stage.tmp" >> "$OUT/stages.log"
    echo "== $name: exit $rc in $((SECONDS - start)) s (limit $limit)" | tee -a "$OUT/stages.log"
    # A stage whose last line is a JSON object (ceiling.py prints one) adds it to the figures.
    tail -n 1 "$OUT/stage.tmp" | "$PYTHON" -c "
import json, sys
try:
    line = json.loads(sys.stdin.read())
except ValueError:
    sys.exit()
if isinstance(line, dict):
    print(json.dumps({'stage': '$name', 'exit': $rc, **line}))" >> "$OUT/results.jsonl"
}

ceiling() {  # ceiling MODEL [--compile]: the command line of the step alone, bf16, one STS epoch
    echo "$PYTHON" benchmarks/ceiling.py --train "$STS" --model "$1" --device cuda --dtype bf16 \
        --batch-size 32 --epochs 1 --peak-tflops "$PEAK" "${@:2}"
}

[ -f "$STS" ] || { echo "no $STS: run bash benchmarks/gpu_prepare.sh first (here), then carry .gpu"; exit 2; }
stage env 30 "$PYTHON" -c "
import importlib.util, json, torch
print(json.dumps({'gpu': torch.cuda.get_device_name(0), 'capability': torch.cuda.get_device_capability(0),
                  'torch': torch.__version__, 'cuda': torch.version.cuda,
                  'ray': importlib.util.find_spec('ray') is not None}))"
HAVE_RAY=$("$PYTHON" -c "import importlib.util; print(int(importlib.util.find_spec('ray') is not None))")
stage models 90 bash -c "'$PYTHON' benchmarks/random_model.py --like .gpu/minilm --out '$MODELS/minilm-l6' &&
    '$PYTHON' benchmarks/random_model.py --like .gpu/minilm --out '$MODELS/bert-base' --shape bert-base"
stage syncs 120 "$PYTHON" -m pytest -q -m gpu tests/test_host_syncs.py
stage ceiling-minilm 60 $(ceiling "$MODELS/minilm-l6")
stage ceiling-minilm-compile 100 $(ceiling "$MODELS/minilm-l6" --compile)
stage ceiling-base 60 $(ceiling "$MODELS/bert-base")
stage ceiling-base-compile 120 $(ceiling "$MODELS/bert-base" --compile)
if [ "$HAVE_RAY" = 1 ]; then
    stage nccl 150 "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py
    stage 114k 200 "$PYTHON" benchmarks/items_114k.py --gpu --model "$MODELS/minilm-l6" --no-record
else
    echo "== nccl, 114k: skipped (no Ray on this machine: see benchmarks/gpu_prepare.sh)" | tee -a "$OUT/stages.log"
fi
rm -f "$OUT/stage.tmp"
echo "== done in $SECONDS s; figures:"
cat "$OUT/results.jsonl"
