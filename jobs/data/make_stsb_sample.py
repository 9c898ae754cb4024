"""Rebuild jobs/data/stsb-sample/ from the STS Benchmark files in ../shared/data/stsbenchmark.

    python jobs/data/make_stsb_sample.py [--source ../shared/data/stsbenchmark]

Writes train.csv (2,000 pairs drawn from sts-train.csv) and dev.csv (500 pairs from sts-dev.csv)
with columns sentence_0, sentence_1, label; the label is the 0-5 similarity score divided by 5.
The draw is seeded, so the files are reproducible.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

HERE = Path(__file__).parent / "stsb-sample"
SIZES = {"train": ("sts-train.csv", 2000), "dev": ("sts-dev.csv", 500)}


def read_sts(path: Path) -> list[tuple[str, str, float]]:
    """The STS files are tab-separated without quoting; some train rows carry two extra columns."""
    with path.open(encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row[5], row[6], float(row[4])) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=Path(__file__).parents[2] / ".." / "shared" / "data" / "stsbenchmark"
    )
    args = parser.parse_args()
    HERE.mkdir(exist_ok=True)
    for split, (name, size) in SIZES.items():
        rows = read_sts(args.source / name)
        sample = random.Random(0).sample(rows, size)
        with (HERE / f"{split}.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence_0", "sentence_1", "label"])
            writer.writerows((a, b, round(score / 5, 4)) for a, b, score in sample)
        print(f"wrote {size} pairs to {HERE / f'{split}.csv'}")


if __name__ == "__main__":
    main()
