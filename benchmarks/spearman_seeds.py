"""Dev Spearman after one epoch over several seeds: what length grouping costs, against
CrossEncoderTrainer (a single run each cannot tell a 0.01 difference from seed noise).

    python benchmarks/spearman_seeds.py [--seeds 1 2 3] [--runners grouped ungrouped window8 window4 trainer]

Every runner trains the real all-MiniLM-L6-v2 on the full STS Benchmark train split with the
throughput benchmark's settings (batch 32, lr 8e-5, 10% warmup, max length 128, 1 epoch) and the
given seed; a seed gives both rerank-ray and the trainer the same scoring-head weights to start
from. Runners: ``grouped`` (rerank-ray's defaults: length grouping in windows of 32 batches),
``window8`` / ``window4`` (windows of 8 / 4 batches), ``ungrouped`` (``data.group_by_length=false``)
and ``trainer`` (benchmarks/st_trainer_baseline.py). Prints a table and writes it to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys

from common import ensure_stsb, markdown_table, record, run_json_script, run_rerank_ray
from throughput import baseline_argv, build_parser, rerank_ray_config

RUNNERS = {
    "grouped": [],
    "window8": ["data.window_batches=8"],
    "window4": ["data.window_batches=4"],
    "ungrouped": ["data.group_by_length=false"],
    "trainer": None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--runners", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    settings = build_parser().parse_args([])  # the throughput benchmark's defaults
    train = ensure_stsb() / "train.parquet"
    results: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in args.runners}
    for seed in args.seeds:
        for name in args.runners:
            if RUNNERS[name] is None:
                base = run_json_script(baseline_argv(settings, train, seed))
                results[name][seed] = (base["dev_spearman"], base["pairs_per_second"])
            else:
                ours = run_rerank_ray(rerank_ray_config(settings, train, seed), RUNNERS[name])
                results[name][seed] = (ours["final"]["dev_spearman"], ours["train"]["pairs_per_second"])
            print(seed, name, results[name][seed], file=sys.stderr, flush=True)
    rows = []
    for name, by_seed in results.items():
        values = [by_seed[s][0] for s in args.seeds]
        rows.append(
            [name, *(f"{v:.4f}" for v in values), f"{sum(values) / len(values):.4f}"]
            + [f"{sum(by_seed[s][1] for s in args.seeds) / len(args.seeds):.1f}"]
        )
    header = ["runner", *(f"seed {s}" for s in args.seeds), "mean", "pairs/s (mean)"]
    body = markdown_table(header, rows) + (
        "\n\nDev Spearman (1,500 pairs) after one epoch of the full STS Benchmark train split; the same "
        "settings as the throughput benchmark. pairs/s are over training steps, each run on its own (not "
        "alternated): read them as rough."
    )
    record(
        "Dev Spearman over seeds: length grouping against CrossEncoderTrainer (CPU)", body, print_only=args.no_record
    )


if __name__ == "__main__":
    main()
