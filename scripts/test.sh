#!/usr/bin/env bash
# Set up, check (lint, format, spelling, types), then run the test suite (the fast default set; pass -m slow for the slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The checks of `make check` (and pre-commit): lint, format, spelling, types.
.venv/bin/ruff check rerank_ray tests jobs benchmarks
.venv/bin/ruff format --check rerank_ray tests jobs benchmarks
.venv/bin/typos
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
