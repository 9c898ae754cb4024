"""Streaming memory: peak RSS of the driver and of each worker, 10k against 1M pairs.

    python benchmarks/streaming_memory.py [--small 10000] [--large 1000000] [--workers 2]

Generates short item-description pairs (binary labels) as Parquet shards of 50,000 pairs (10k:
one shard of 10,000; 1M: 20 shards), then trains the tests' tiny BERT (2 layers, hidden 32) on
each for one epoch with ``rerank-ray train``: every pair goes through the reader, the row checks,
tokenization and the workers' batching. The peaks come from the run itself (``resources`` in
metrics.json: ``getrusage`` in the driver and in each worker). Prints a table and writes it to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys

from common import BENCH_DATA, markdown_table, record, run_rerank_ray, tiny_bert, write_pair_shards

SHARD_ROWS = 50_000


def config(model, folder, workers: int, batch_size: int) -> dict:
    return {
        "model": {"name_or_path": str(model), "max_length": 32},
        "data": {"train": [str(folder)]},
        "train": {"epochs": 1, "per_device_batch_size": batch_size, "learning_rate": 1e-3, "logging_steps": 200},
        "eval": {"before_training": False},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    model = tiny_bert()
    runs = {}
    for rows in (args.small, args.large):
        folder = write_pair_shards(BENCH_DATA / f"items-{rows}", rows, min(rows, SHARD_ROWS), seed=rows)
        metrics = run_rerank_ray(config(model, folder, args.workers, args.batch_size))
        runs[rows] = metrics
        print(rows, metrics["resources"], metrics["wall_seconds"], file=sys.stderr, flush=True)
    small, large = runs[args.small]["resources"], runs[args.large]["resources"]

    def growth(a: float, b: float) -> str:
        return f"{(b / a - 1) * 100:+.1f}%"

    rows = [["driver", f"{small['driver_peak_rss_mib']:.0f}", f"{large['driver_peak_rss_mib']:.0f}",
             growth(small["driver_peak_rss_mib"], large["driver_peak_rss_mib"])]]  # fmt: skip
    for rank, (a, b) in enumerate(zip(small["worker_peak_rss_mib"], large["worker_peak_rss_mib"])):
        rows.append([f"worker {rank}", f"{a:.0f}", f"{b:.0f}", growth(a, b)])
    for kind, label in (("anon", "private"), ("shmem", "shared (object store)")):
        for rank, (a, b) in enumerate(zip(small[f"worker_rss_{kind}_mib"], large[f"worker_rss_{kind}_mib"])):
            rows.append([f"worker {rank}, {label}, at the end", f"{a:.0f}", f"{b:.0f}", growth(a, b) if a else "-"])
    rows.append(
        ["wall time, s", f"{runs[args.small]['wall_seconds']:.0f}", f"{runs[args.large]['wall_seconds']:.0f}", "-"]
    )
    body = markdown_table(["process", f"peak RSS MiB, {args.small:,} pairs", f"{args.large:,} pairs", "growth"], rows)
    body += (
        f"\n\nTarget: growth at most 10%. Generated item-description pairs (benchmarks/common.py), Parquet shards of "
        f"{SHARD_ROWS:,} pairs; tiny BERT, max length 32, {args.workers} workers x 1 CPU, batch {args.batch_size} per "
        "worker, one epoch, every pair read, checked, tokenized and trained. Peaks from getrusage in each process; "
        "RSS counts the pages of Ray's shared object store a worker has touched, so the workers' resident memory at "
        "the end is split into private and shared (/proc/self/status RssAnon, RssShmem). Other jobs on the machine "
        "change the wall times, not the memory figures."
    )
    record("Streaming memory: 10k against 1M pairs (CPU)", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
