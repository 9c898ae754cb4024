"""Ray job entrypoint: a Ray Tune search over a config's hyperparameters, on the cluster this job
runs on.

Submit from the repository root::

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/tune.py --config jobs/configs/X.yaml run.storage_path=s3://BUCKET/rerank-runs [key=value ...]

Arguments are those of ``rerank-ray tune``. As in ``jobs/train.py``, the driver joins the cluster
through the ``RAY_ADDRESS`` Ray sets for a job's entrypoint, and the exit code is the outcome
(0 success, 2 a config or data error, 1 anything else).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # see jobs/train.py

from rerank_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
