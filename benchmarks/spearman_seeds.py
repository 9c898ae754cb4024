"""Dev Spearman over several paired seeds: what length grouping costs, against
CrossEncoderTrainer (a single run each cannot tell a 0.01 difference from seed noise).

    python benchmarks/spearman_seeds.py [--seeds 1 2 3 4 5] [--epochs 2]
        [--runners trainer mixed4 grouped ungrouped window8 window4] [--log runs.jsonl]

Every runner trains the real all-MiniLM-L6-v2 on the full STS Benchmark train split with the
throughput benchmark's settings (batch 32 a step, lr 8e-5, 10% warmup, max length 128) and the
given seed; a seed gives every runner the same scoring-head weights to start from. Runners:

- ``trainer``: CrossEncoderTrainer (benchmarks/st_trainer_baseline.py), batch 32;
- ``ungrouped``: rerank-ray's defaults (``data.group_by_length=false``), batch 32;
- ``grouped``: length grouping, each batch of 32 from one length run of a 32-batch window;
- ``mixed4``: length grouping with 4 micro-batches of 8 a step (``train.per_device_batch_size=8``,
  ``train.gradient_accumulation_steps=4``): each step takes one length-sorted micro-batch from
  each quarter of the window's lengths (``batching.window_order``), so the step's 32 pairs span
  every length while each micro-batch carries little padding;
- ``workers2``: the defaults on 2 workers of 1 CPU each at batch 16 (the same 32 a step): what
  splitting the step across workers (Ray Data's split, DDP) does to the model;
- ``window8`` / ``window4``: grouping in windows of 8 / 4 batches.

For each seed the runners run one after another, so a machine whose speed drifts hits them
alike; pairs/s ratios are read per seed. Each run's figures are appended to ``--log`` as they
come (a stopped invocation keeps what it measured). Prints a table and writes it to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import ensure_stsb, markdown_table, record, run_json_script, run_rerank_ray
from throughput import baseline_argv, build_parser, rerank_ray_config

GROUPED = ["data.group_by_length=true"]
RUNNERS = {
    "trainer": None,
    "ungrouped": [],
    "grouped": GROUPED,
    "mixed4": [*GROUPED, "train.per_device_batch_size=8", "train.gradient_accumulation_steps=4"],
    "workers2": ["scaling.num_workers=2", "scaling.cpus_per_worker=1", "train.per_device_batch_size=16"],
    "window8": [*GROUPED, "data.window_batches=8"],
    "window4": [*GROUPED, "data.window_batches=4"],
}


def epoch_rates(history: list[dict], epochs: int) -> list[float]:
    """Mean of the logged pairs/s (each over its logging interval) within each epoch."""
    rates: list[list[float]] = [[] for _ in range(epochs)]
    for entry in history:
        if "pairs_per_second" in entry and "loss" in entry:
            index = min(int(max(entry["epoch"] - 1e-9, 0.0)), epochs - 1)
            rates[index].append(entry["pairs_per_second"])
    return [statistics.fmean(r) if r else float("nan") for r in rates]


def run_one(name: str, settings, train: Path, seed: int) -> dict:
    if RUNNERS[name] is None:
        base = run_json_script(baseline_argv(settings, train, seed))
        return {"spearman": base["dev_spearman"], "pairs_per_second": base["pairs_per_second"]}
    ours = run_rerank_ray(rerank_ray_config(settings, train, seed), RUNNERS[name])
    return {
        "spearman": ours["final"]["dev_spearman"],
        "pairs_per_second": ours["train"]["pairs_per_second"],
        "epoch_pairs_per_second": epoch_rates(ours["history"], settings.epochs),
        "data_wait_seconds_per_epoch": ours["resources"]["data_wait_seconds_per_epoch"],
    }


def summary_rows(results: dict[str, dict[int, dict]], seeds: list[int]) -> list[list]:
    """Per runner: Spearman per seed and mean, the paired difference to the trainer (mean and
    standard deviation over seeds), mean pairs/s and the paired pairs/s ratio to the trainer."""
    trainer = results.get("trainer", {})
    rows = []
    for name, by_seed in results.items():
        values = [by_seed[s]["spearman"] for s in seeds if s in by_seed]
        paired = [s for s in seeds if s in by_seed and s in trainer]
        if name != "trainer" and paired:
            diffs = [by_seed[s]["spearman"] - trainer[s]["spearman"] for s in paired]
            ratios = [by_seed[s]["pairs_per_second"] / trainer[s]["pairs_per_second"] for s in paired]
            spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
            vs_trainer = [f"{statistics.fmean(diffs):+.4f} (sd {spread:.4f})", f"{statistics.fmean(ratios):.2f}x"]
        else:
            vs_trainer = ["-", "-"]
        rows.append(
            [
                name,
                *(f"{by_seed[s]['spearman']:.4f}" if s in by_seed else "-" for s in seeds),
                f"{statistics.fmean(values):.4f}" if values else "-",
                *vs_trainer,
                f"{statistics.fmean(by_seed[s]['pairs_per_second'] for s in by_seed):.1f}" if by_seed else "-",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--runners", nargs="+", choices=list(RUNNERS), default=["trainer", "mixed4"])
    parser.add_argument("--log", type=Path, help="append each run's figures here as a JSON line")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    settings = build_parser().parse_args(["--epochs", str(args.epochs)])  # the throughput benchmark's settings
    train = ensure_stsb() / "train.parquet"
    results: dict[str, dict[int, dict]] = {name: {} for name in args.runners}
    for seed in args.seeds:
        for name in args.runners:
            results[name][seed] = run_one(name, settings, train, seed)
            line = json.dumps({"seed": seed, "runner": name, "epochs": args.epochs, **results[name][seed]})
            print(line, file=sys.stderr, flush=True)
            if args.log:
                with args.log.open("a") as log:
                    log.write(line + "\n")
    header = [
        "runner",
        *(f"seed {s}" for s in args.seeds),
        "mean",
        "minus trainer (paired)",
        "pairs/s / trainer's",
        "pairs/s (mean)",
    ]
    body = markdown_table(header, summary_rows(results, args.seeds)) + (
        f"\n\nDev Spearman (1,500 pairs) after {args.epochs} epoch(s) of the full STS Benchmark train split "
        "(5,749 pairs), the throughput benchmark's settings; pairs/s over training steps, runners alternated "
        "within each seed."
    )
    record(
        f"Dev Spearman over paired seeds, {args.epochs} epoch(s): length grouping against CrossEncoderTrainer (CPU)",
        body,
        print_only=args.no_record,
    )


if __name__ == "__main__":
    main()
