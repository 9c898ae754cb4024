"""Ray job entrypoint: fine-tune a cross-encoder on the cluster this job runs on.

Submit from the repository root (the same config file as on a laptop; storage the nodes share)::

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/train.py --config jobs/configs/X.yaml run.storage_path=s3://BUCKET/rerank-runs [key=value ...]

Inside a Ray job, Ray's job supervisor sets ``RAY_ADDRESS`` for this process, so the driver joins
the cluster the job runs on (no embedded Ray). The exit code is the run's outcome, and Ray's job
status follows it: 0 success (SUCCEEDED), 2 a config or data error, 1 anything else (FAILED).
Arguments are those of ``rerank-ray train`` (``--resume`` included).
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
    sys.exit(main(["train", *sys.argv[1:]]))
