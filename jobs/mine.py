"""Ray job entrypoint: mine hard negatives for (query, positive) pairs on the cluster this job runs on.

Submit from the repository root (inputs and output on storage the nodes share)::

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/mine.py --config jobs/configs/dbpedia-mine.yaml --output s3://BUCKET/mined/ [--flag value ...]

Inside a Ray job the driver joins the job's cluster (``RAY_ADDRESS``); the embedding actors take
its GPUs when it has them. Exit codes: 0 success, 2 a config or data error, 1 anything else.
Arguments are those of ``rerank-ray mine``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/train.py` puts jobs/ first on sys.path; the uploaded working dir (the repository
# root) goes first instead, so the driver imports the same rerank_ray as the workers, whose
# PYTHONPATH Ray starts with the working dir.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rerank_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["mine", *sys.argv[1:]]))
