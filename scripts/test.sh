#!/usr/bin/env bash
# Set up, check (lint, format, spelling, types, the docs build), then run the test suite (the fast default set; pass -m slow for the slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The checks of `make check` (and pre-commit): lint, format, spelling, types.
.venv/bin/ruff check rerank_ray tests jobs benchmarks
.venv/bin/ruff format --check rerank_ray tests jobs benchmarks
.venv/bin/typos
.venv/bin/mypy
# The documentation site, strictly: a broken link or anchor, or a page left out of the navigation, fails.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir /tmp/rerank-ray-site
exec .venv/bin/python -m pytest "$@"
