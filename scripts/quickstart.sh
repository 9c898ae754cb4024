#!/usr/bin/env bash
# Set up, then fine-tune all-MiniLM-L6-v2 on the STS Benchmark sample on 2 local CPU workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rerank-ray train --config jobs/configs/quickstart.yaml "$@"
