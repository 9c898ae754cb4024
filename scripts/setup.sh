#!/usr/bin/env bash
# Set up .venv with rerank-ray and its development tools. Safe to run again: it installs only
# what is missing.
#
# PyTorch: where no NVIDIA GPU is visible, the CPU build is installed first (a few hundred MB
# instead of several GB of CUDA libraries). With a GPU, nothing is pinned: pip takes the
# default CUDA build of the newest release that fits.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found: PyTorch comes with its CUDA build from the dependencies"
    else
        echo "setup: no GPU: installing the CPU build of PyTorch"
        # A local or mirrored 2.13.0+cpu wheel first; else PyTorch's own CPU index.
        "$PY" -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
            || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi

# The rest with uv, which resolves and installs the ~200 packages in seconds where pip takes
# minutes (CI's budget); it keeps the torch installed above, as a range it satisfies needs
# nothing more. --compile-bytecode as pip does: without the .pyc files every Ray worker process
# compiled torch and transformers again on import, and the test run took twice as long.
# pip does the same where uv cannot be had.
if "$PY" -m pip install -q uv 2>/dev/null && [ -x .venv/bin/uv ]; then
    .venv/bin/uv pip install -q --compile-bytecode --python "$PY" -e ".[dev]"
else
    "$PY" -m pip install -q -e ".[dev]"
fi
echo "setup: done ($("$PY" -c 'import torch, ray, sentence_transformers as st; print(f"torch {torch.__version__}, ray {ray.__version__}, sentence-transformers {st.__version__}")'))"
