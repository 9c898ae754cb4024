#!/usr/bin/env bash
# The prepared GPU script (issues 13, 28 and 30): one NVIDIA GPU, ONE call of the device tool (at
# most 10 minutes), stages in the order of their value, each under its own time limit and all of
# them under GPU_BUDGET_S (540 s from the start, setup included), so the call ends well inside its
# 600 s and a second call can rerun what failed or did not fit (the summary prints its command).
# NOT RUN ON A GPU YET.
#
#   bash benchmarks/gpu_prepare.sh                  # here, first: fills .gpu/ and .raycarry/, prints the call
#   bash benchmarks/gpu.sh                          # there: device tool, carry [".gpu", ".raycarry"], timeout_s 600
#   GPU_STAGES="large memfit" bash benchmarks/gpu.sh   # a rerun of some stages (setup, env, models always run)
#   GPU_DRY_RUN=1 PYTHON=.venv/bin/python bash benchmarks/gpu.sh   # here: every stage's code path, CPU, tiny models
#
# Stages (each logs to $OUT/stages.log, says its status and seconds, and adds one JSON line per
# figure to $OUT/results.jsonl; a stage whose limit does not fit in what is left is skipped):
#   setup      install the carried wheels newer than the image's (.gpu/wheels: the pinned transformers,
#              sentence-transformers, huggingface_hub, peft, ...), unpack Ray (.raycarry/device_prefix.sh)
#   env        the GPU, and the versions actually imported, set against the project's pins
#   models     random-weight models (benchmarks/random_model.py): all-MiniLM-L6-v2's shape, BERT-base's,
#              and Qwen3-Reranker-0.6B's (a causal LM, bf16): speed and memory depend on the shape only
#   nccl       tests/test_gpu.py: a real run whose every collective goes through NCCL
#   114k       rerank-ray train, Ray Train + Ray Data, 114,138 pairs x 3 epochs, bf16, 2,000 held-out
#              pairs scored after each epoch (benchmarks/items_114k.py; target: under 60 s)
#   ceiling-*  the step alone (benchmarks/ceiling.py), bf16, fused AdamW, 3 STS epochs, after 8
#              warm-up batches: pairs/s and MFU, MiniLM-L6 and BERT-base, eager and torch.compile
#              (dynamic shapes from the start: one compilation, not a static one and then a dynamic one)
#   syncs      tests/test_host_syncs.py on CUDA under torch.cuda.set_sync_debug_mode("error")
#   large      rerank-ray train of the Qwen3-0.6B-shaped reranker, bf16, LoRA r=16, activation
#              checkpointing, 1 GPU worker, 1,024 STS pairs: DDP, then FSDP2 as a group of one
#              (benchmarks/gpu_steps.py large): pairs/s, peak CUDA memory of the worker
#   memfit     benchmarks/memory_fit.py --measure-only: a step's CUDA memory with and without checkpointing
#   packing    benchmarks/padding_free.py: a MiniLM-shaped step's forward and backward, bf16, padded against
#              padding-free (data.padding_free), under SDPA and flash_attention_2 (reported unavailable
#              without the flash-attn package)
# MFU = model FLOPs (6 x non-embedding parameters x real tokens + attention) / seconds / the GPU's
# dense bf16 peak, PEAK_TFLOPS (989: H100 SXM and H200, the same compute).
#
# The dry run (GPU_DRY_RUN=1; tests/test_gpu_script.py runs it) uses this machine's environment
# (no wheels, no Ray unpacked), the tests' tiny models and synthetic pairs, CPU workers: the two
# pytest stages only collect their CUDA tests (NCCL and the sync debug mode need CUDA), the
# compiled ceiling uses the aot_eager backend (no C++ codegen), BERT-base's ceiling is left out
# (MiniLM's path with a bigger shape), and memory_fit measures one configuration (--quick).
# The stage commands are exported functions that `timeout` runs through `bash -c` (in single quotes:
# expanded there, not here).
# shellcheck disable=SC2016,SC2329
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_DRY_RUN:-0}
if [ -z "${PYTHON:-}" ]; then PYTHON=python3; [ -x .venv/bin/python ] && PYTHON=.venv/bin/python; fi
OUT=${OUT:-/tmp/rerank-gpu}
PEAK=${PEAK_TFLOPS:-989}
STAGES=${GPU_STAGES:-}
if [ "$DRY" = 1 ]; then
    BUDGET=${GPU_BUDGET_S:-400}
    SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/rerank-gpu-dry.XXXXXX")
    trap 'rm -rf "$SCRATCH"' EXIT
else
    BUDGET=${GPU_BUDGET_S:-540}
    SCRATCH=${GPU_SCRATCH:-/tmp/rerank-gpu-scratch}
fi
MODELS=$SCRATCH/models
STS=.gpu/stsb/train.parquet
LOG=$OUT/stages.log
RESULTS=$OUT/results.jsonl
export PYTHON PEAK MODELS SCRATCH STS
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_TRAIN_ENABLE_PRINT_PATCH=0
export RERANK_BENCH_DATA=$SCRATCH/bench
mkdir -p "$OUT" "$MODELS"
: > "$LOG"
: > "$RESULTS"

wanted() {  # wanted NAME: in GPU_STAGES (names or prefixes: "ceiling" takes every ceiling-*), or no list
    [ -z "$STAGES" ] && return 0
    local s
    for s in $STAGES; do [[ $1 == "$s"* ]] && return 0; done
    return 1
}

record() {  # record NAME STATUS EXIT SECONDS LIMIT NOTE: the stage's own line in results.jsonl
    "$PYTHON" -c 'import json, sys
n, status, code, seconds, limit, note = sys.argv[1:]
print(json.dumps({"kind": "stage", "stage": n, "status": status, "exit": int(code), "seconds": int(seconds),
                  "limit": int(limit), "note": note}))' "$@" >> "$RESULTS"
}

stage() {  # [NOTE=...] [ALWAYS=1] stage NAME LIMIT_S COMMAND...: skipped when not in GPU_STAGES (unless
    # ALWAYS) or when the budget cannot cover its limit
    local name=$1 limit=$2 note=${NOTE:-}
    shift 2
    [ -n "${ALWAYS:-}" ] || wanted "$name" || return 0
    local used=$((SECONDS))
    if (( used + limit > BUDGET )); then
        echo "== $name: skipped (${used} s used of ${BUDGET}, limit ${limit})" | tee -a "$LOG"
        record "$name" skipped 0 0 "$limit" "not enough time left: $used s used of $BUDGET"
        return 0
    fi
    echo "== $name (limit $limit s): $*" >> "$LOG"
    local start=$SECONDS rc status
    timeout -k 15 "$limit" "$@" > "$SCRATCH/stage.out" 2> "$SCRATCH/stage.err"
    rc=$?
    { cat "$SCRATCH/stage.out"; echo "-- stderr"; cat "$SCRATCH/stage.err"; } >> "$LOG"
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    echo "== $name: $status (exit $rc) in $((SECONDS - start)) s (limit $limit)${note:+; $note}" | tee -a "$LOG"
    if [ "$status" != ok ]; then tail -n 25 "$SCRATCH/stage.err" | sed 's/^/   | /'; fi
    record "$name" "$status" "$rc" "$((SECONDS - start))" "$limit" "$note"
    # Every JSON object the stage printed on stdout is a figure.
    "$PYTHON" -c 'import json, sys
for line in sys.stdin:
    try:
        figure = json.loads(line)
    except ValueError:
        continue
    if isinstance(figure, dict):
        print(json.dumps({"stage": sys.argv[1], **figure}))' "$name" < "$SCRATCH/stage.out" >> "$RESULTS"
    # A Ray stage that failed may leave Ray's processes behind: on the (lent, single-user) GPU
    # machine stop them all; never in the dry run, on a machine shared with other people's Ray.
    if [ "$status" != ok ] && [ "$DRY" != 1 ] && [[ " nccl 114k large " == *" $name "* ]]; then
        "$PYTHON" -m ray.scripts.scripts stop --force > /dev/null 2>&1
    fi
    return 0
}

# --- The stages' commands (functions, run by `timeout` through bash -c) -----------------------

setup_gpu() {
    "$PYTHON" benchmarks/gpu_steps.py setup --wheels .gpu/wheels || return
    if "$PYTHON" -c "import ray" 2> /dev/null; then
        echo "Ray is already importable: .raycarry/device_prefix.sh not run" >&2
    else
        bash .raycarry/device_prefix.sh >&2
    fi
}

build_models() {
    set -e
    if [ "$GPU_DRY_RUN" = 1 ]; then
        # benchmarks/random_model.py's build, in one process (each process costs seconds here)
        "$PYTHON" benchmarks/gpu_steps.py dry-inputs --out "$SCRATCH/dry" --models "$MODELS" --pairs 512 >&2
        return
    fi
    # Only what the selected stages need (GPU_STAGES), so that a rerun builds no more; at once.
    local pids=() pid
    if wanted 114k || wanted ceiling-minilm || wanted ceiling-minilm-compile || wanted packing; then
        "$PYTHON" benchmarks/random_model.py --like .gpu/minilm --out "$MODELS/minilm-l6" >&2 &
        pids+=($!)
    fi
    if wanted ceiling-base || wanted ceiling-base-compile; then
        "$PYTHON" benchmarks/random_model.py --like .gpu/minilm --out "$MODELS/bert-base" --shape bert-base >&2 &
        pids+=($!)
    fi
    if wanted large; then
        "$PYTHON" benchmarks/random_model.py --like .gpu/qwen3-0.6b --out "$MODELS/qwen3-0.6b" --device cuda >&2 &
        pids+=($!)
    fi
    for pid in "${pids[@]}"; do wait "$pid"; done
}
export -f setup_gpu build_models wanted
export GPU_DRY_RUN=$DRY STAGES

ceiling() {  # ceiling MODEL [--compile]: the step alone, bf16
    if [ "$DRY" = 1 ]; then
        "$PYTHON" benchmarks/ceiling.py --train "$SCRATCH/dry/pairs.parquet" --model "$1" --device cpu --dtype bf16 \
            --batch-size 32 --epochs 1 --threads 2 --warmup-batches 2 "${@:2}"
    else
        "$PYTHON" benchmarks/ceiling.py --train "$STS" --model "$1" --device cuda --dtype bf16 \
            --batch-size 32 --epochs 3 --peak-tflops "$PEAK" --warmup-batches 8 "${@:2}"
    fi
}
export -f ceiling
export DRY

# --- The run ------------------------------------------------------------------------------------

echo "== rerank-ray GPU script: $( [ "$DRY" = 1 ] && echo "DRY RUN (CPU, tiny models)" || echo GPU ), budget $BUDGET s, figures in $RESULTS"
if [ "$DRY" = 1 ]; then
    echo "== setup: skipped (dry run: this machine's environment; no wheels installed, no Ray unpacked)" | tee -a "$LOG"
    record setup skipped 0 0 0 "dry run: this machine's environment"
else
    for needed in "$STS" .gpu/minilm/config.json .gpu/qwen3-0.6b/config.json .gpu/wheels .raycarry/device_prefix.sh; do
        [ -e "$needed" ] || { echo "no $needed: run bash benchmarks/gpu_prepare.sh first (here), carry [\".gpu\", \".raycarry\"]"; exit 2; }
    done
    ALWAYS=1 stage setup 150 bash -c setup_gpu
fi

DRYFLAG=()
[ "$DRY" = 1 ] && DRYFLAG=(--dry-run)
ALWAYS=1 stage env 60 "$PYTHON" benchmarks/gpu_steps.py env "${DRYFLAG[@]}"
ALWAYS=1 stage models "$( [ "$DRY" = 1 ] && echo 90 || echo 120 )" bash -c build_models

if [ "$DRY" = 1 ]; then
    NOTE="dry run: collected only (NCCL needs CUDA)" \
        stage nccl 60 "$PYTHON" benchmarks/gpu_steps.py pytest --collect-only -- -m gpu tests/test_gpu.py
    NOTE="dry run: 256 pairs x 1 epoch, tiny BERT, CPU worker" \
        stage 114k 150 "$PYTHON" benchmarks/items_114k.py --dry-run --rows 256 --epochs 1 --eval-rows 64 \
        --threads 1 --model "$MODELS/minilm-l6" --no-record
    stage ceiling-minilm 60 bash -c 'ceiling "$MODELS/minilm-l6"'
    NOTE="dry run: aot_eager backend" stage ceiling-minilm-compile 90 \
        bash -c 'ceiling "$MODELS/minilm-l6" --compile --dynamic --compile-backend aot_eager'
    for name in ceiling-base ceiling-base-compile; do
        echo "== $name: skipped (dry run: MiniLM's path with BERT-base's shape)" | tee -a "$LOG"
        record "$name" skipped 0 0 0 "dry run: MiniLM's path with BERT-base's shape"
    done
    NOTE="dry run: collected only (the sync debug mode needs CUDA)" \
        stage syncs 60 "$PYTHON" benchmarks/gpu_steps.py pytest --collect-only -- -m gpu tests/test_host_syncs.py
    NOTE="dry run: tiny causal LM (bf16), 64 pairs, CPU worker" \
        stage large 180 "$PYTHON" benchmarks/gpu_steps.py large --model "$MODELS/qwen3-0.6b" \
        --train "$SCRATCH/dry/pairs.parquet" --pairs 64 --batch-size 8 --max-length 64 --device cpu --scratch "$SCRATCH"
    NOTE="dry run: --quick (one configuration, CPU)" \
        stage memfit 90 "$PYTHON" benchmarks/memory_fit.py --measure-only --quick
    NOTE="dry run: 2 batches, SDPA, CPU" \
        stage packing 60 "$PYTHON" benchmarks/padding_free.py --model "$MODELS/minilm-l6" \
        --train "$SCRATCH/dry/pairs.parquet" --batches 2 --rounds 1 --attn sdpa --threads 2 --no-record
else
    stage nccl 90 "$PYTHON" benchmarks/gpu_steps.py pytest -- -m gpu tests/test_gpu.py
    stage 114k 180 "$PYTHON" benchmarks/items_114k.py --gpu --model "$MODELS/minilm-l6" --eval-rows 2000 --no-record \
        --timeout 140
    stage ceiling-minilm 45 bash -c 'ceiling "$MODELS/minilm-l6"'
    stage ceiling-minilm-compile 100 bash -c 'ceiling "$MODELS/minilm-l6" --compile --dynamic'
    stage ceiling-base 45 bash -c 'ceiling "$MODELS/bert-base"'
    stage ceiling-base-compile 100 bash -c 'ceiling "$MODELS/bert-base" --compile --dynamic'
    stage syncs 60 "$PYTHON" benchmarks/gpu_steps.py pytest -- -m gpu tests/test_host_syncs.py
    stage large 180 "$PYTHON" benchmarks/gpu_steps.py large --model "$MODELS/qwen3-0.6b" --train "$STS" \
        --pairs 1024 --batch-size 16 --max-length 256 --device cuda --scratch "$SCRATCH"
    stage memfit 90 "$PYTHON" benchmarks/memory_fit.py --measure-only
    stage packing 60 "$PYTHON" benchmarks/padding_free.py --device cuda --dtype bf16 --model "$MODELS/minilm-l6" \
        --train "$STS" --attn sdpa flash_attention_2 --threads 8 --no-record
fi

echo "== done in $SECONDS s (budget $BUDGET); stages in $LOG"
"$PYTHON" benchmarks/gpu_steps.py summary "$RESULTS" | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
