"""Convert the STS Benchmark files into Parquet pair files with the canonical columns.

    python jobs/data/prepare_stsb.py [--source ../shared/data/stsbenchmark] [--out data/stsb]

The originals are tab-separated without quoting or header, and 197 train rows carry two extra
licence columns after the second sentence, which a CSV reader rejects. This writes
``train.parquet``, ``dev.parquet`` and ``test.parquet`` with ``sentence_0``, ``sentence_1`` and
``label`` (the 0-5 score divided by 5) plus ``pair_id``. Tune on dev; the STS readme asks that
test be used once, for the final figure.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).parents[2]
SPLITS = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}


def read_split(path: Path) -> dict[str, list]:
    columns: dict[str, list] = {"sentence_0": [], "sentence_1": [], "label": [], "pair_id": []}
    with path.open(encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if len(row) < 7:
                raise ValueError(f"{path}: row {i + 1} has {len(row)} columns, expected at least 7")
            columns["sentence_0"].append(row[5])
            columns["sentence_1"].append(row[6])
            columns["label"].append(float(row[4]) / 5.0)
            columns["pair_id"].append(f"{path.stem}-{i}")
    return columns


def prepare(source: Path, out: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, name in SPLITS.items():
        target = out / f"{split}.parquet"
        pq.write_table(pa.table(read_split(source / name)), target)
        written[split] = target
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "stsbenchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "stsb")
    args = parser.parse_args()
    for split, path in prepare(args.source, args.out).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
