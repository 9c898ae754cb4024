#!/usr/bin/env bash
# Set up, lint, then run the test suite (the fast default set; pass -m slow for the slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check rerank_ray tests jobs benchmarks
exec .venv/bin/python -m pytest "$@"
