"""Fuzzed input files: every corrupted pair file ends in a trained run or exit 2 naming the file.

    python benchmarks/fuzz_inputs.py [--files 200] [--seed 0] [--time-limit 240] [--jobs 2] [--no-record]
    python benchmarks/fuzz_inputs.py --rerun first-run.log   # after fixing: only its defects again

Writes ``--files`` pair files (1,200 rows of generated query/item pairs each, Parquet, JSONL or
CSV in turn), each damaged one way, drawn at random: truncated at a random byte, bytes flipped,
columns renamed or dropped, a value of the wrong type in one row, a 4 MiB line, a row in
another encoding (Latin-1, UTF-16, cp1252) amid UTF-8. Damage to one row lands in the first
1,000 rows, which the driver checks before Ray starts, or (two times in five) after them, where
only Ray Data's read tasks see it. Runs ``rerank-ray train`` on each (the tests' tiny BERT,
1 worker, 1 epoch, an embedded Ray each time) under a time limit and sorts the outcome:

- ``trained``: exit 0 (the damage left valid rows, e.g. swapped text columns, or skipped rows);
- ``exit 2, names the file``: the message names the file, and the output holds no traceback;
- anything else is a defect: ``exit 2 without the file``, ``traceback`` (another exit code, or a
  Python traceback in what the command printed), ``hang`` (the time limit passed).

Prints one line per file, a table (damage x format x outcome), and writes it to
benchmarks/RESULTS.md. Not in the test run: each class of failure it found has a test in the
default set (tests/test_bad_data.py, tests/test_file_habits.py).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import BENCH_ENV, ROOT, generate_item_pairs, markdown_table, record, tiny_bert

ROWS = 1200
SAMPLE = 1000  # rows the driver checks per file before Ray starts (rerank_ray/data/files.py SAMPLE_ROWS)
FORMATS = ("parquet", "jsonl", "csv")
DAMAGE = (
    "truncated",
    "bytes flipped",
    "columns renamed",
    "column dropped",
    "wrong type",
    "huge line",
    "other encoding",
)
OK_OUTCOMES = ("trained", "exit 2, names the file")


def clean_rows(seed: int) -> list[dict]:
    pairs = generate_item_pairs(ROWS, seed)
    return [{"sentence_0": q, "sentence_1": d, "label": y} for q, d, y in zip(*pairs.values())]


def write(rows: list[dict], fmt: str, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return
    if fmt == "csv":  # every value as text, as a spreadsheet writes it (a number in a text column too)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return
    columns = {name: [row.get(name) for row in rows] for name in rows[0]}
    for name, values in columns.items():  # a column of mixed types is written as text: Parquet has one type a column
        if len({type(v) for v in values if v is not None}) > 1:
            columns[name] = [None if v is None else str(v) for v in values]
    pq.write_table(pa.table(columns), path, row_group_size=400)  # 3 row groups: damage lands in one


def row_index(rng: random.Random) -> int:
    """A row to damage: beyond the driver's 1,000-row sample two times in five (where only Ray
    Data's read tasks see it), else within it."""
    return rng.randrange(SAMPLE, ROWS) if rng.random() < 0.4 else rng.randrange(SAMPLE)


def damage_rows(rows: list[dict], kind: str, rng: random.Random) -> tuple[list[dict], str]:
    """The rows with one kind of damage, and where (for the log line)."""
    rows = [dict(row) for row in rows]
    if kind == "columns renamed":
        a, b = rng.sample(["sentence_0", "sentence_1", "label"], 2)
        renamed = rng.choice([f"{a}<->{b}", f"{a}->text"])
        for row in rows:
            if renamed.endswith("->text"):
                row["text"] = row.pop(a)
            else:
                row[a], row[b] = row[b], row[a]
        return rows, renamed
    if kind == "column dropped":
        column = rng.choice(["sentence_0", "sentence_1", "label"])
        for row in rows:
            row.pop(column)
        return rows, column
    index = row_index(rng)
    if kind == "wrong type":
        column = rng.choice(["sentence_0", "sentence_1", "label"])
        value = rng.choice([12345, 3.5, "not a number", None, ""]) if column == "label" else rng.choice([7, None, ""])
        rows[index][column] = value
        return rows, f"row {index + 1} {column}={value!r}"
    if kind == "huge line":
        rows[index]["sentence_1"] = "word " * (4 * 1024 * 1024 // 5)
        return rows, f"row {index + 1}"
    raise ValueError(kind)


def damage_bytes(path: Path, kind: str, fmt: str, rng: random.Random, rows: list[dict]) -> str:
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        cut = rng.randrange(1, len(data))
        path.write_bytes(bytes(data[:cut]))
        return f"cut at byte {cut} of {len(data)}"
    if kind == "bytes flipped":
        spots = sorted(rng.randrange(len(data)) for _ in range(rng.choice([1, 3, 20])))
        for spot in spots:
            data[spot] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        return f"{len(spots)} byte(s) from {spots[0]}"
    if kind == "other encoding":  # one row's text in another encoding, the rest UTF-8
        index = row_index(rng)
        encoding = rng.choice(["latin-1", "utf-16", "cp1252"])
        lines = path.read_bytes().split(b"\n")
        line = 1 + index if fmt == "csv" else index  # the CSV header is line 0
        text = lines[line].decode("utf-8").replace("e", "é", 1)
        lines[line] = text.encode(encoding)
        path.write_bytes(b"\n".join(lines))
        return f"row {index + 1} in {encoding}"
    raise ValueError(kind)


def make_file(folder: Path, number: int, rng: random.Random) -> tuple[Path, str, str, str]:
    fmt = FORMATS[number % len(FORMATS)]
    kind = rng.choice([d for d in DAMAGE if not (d == "other encoding" and fmt == "parquet")])
    rows = clean_rows(rng.randrange(1 << 30))
    path = folder / f"fuzz-{number:03d}.{fmt}"
    if kind in ("truncated", "bytes flipped", "other encoding"):
        write(rows, fmt, path)
        where = damage_bytes(path, kind, fmt, rng, rows)
    else:
        rows, where = damage_rows(rows, kind, rng)
        write(rows, fmt, path)
    return path, fmt, kind, where


def classify(returncode: int | None, output: str, path: Path) -> str:
    if returncode is None:
        return "hang"
    if "Traceback (most recent call last)" in output:
        return "traceback"
    if returncode == 0:
        return "trained"
    if returncode == 2:
        return "exit 2, names the file" if path.name in output else "exit 2 without the file"
    return "traceback"


def run_one(path: Path, model: Path, scratch: Path, time_limit: float) -> tuple[int | None, str, float]:
    config = {
        "model": {"name_or_path": str(model)},
        "data": {"train": str(path)},
        "train": {"epochs": 1, "per_device_batch_size": 64, "logging_steps": 10},
        "scaling": {"num_workers": 1},
        "run": {"storage_path": str(scratch / "runs"), "name": path.stem},
    }
    config_file = scratch / f"{path.stem}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    # A session of its own: a hang is ended with its whole group (the embedded Ray with it).
    process = subprocess.Popen(
        [sys.executable, "-m", "rerank_ray.cli", "train", "--config", str(config_file)],
        cwd=ROOT,
        env={**os.environ, **BENCH_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=time_limit)
        returncode: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        output, _ = process.communicate()
        returncode = None
    return returncode, output, time.perf_counter() - started


def earlier_outcomes(log: Path) -> dict[str, str]:
    """File name -> outcome, from the per-file lines an earlier run printed."""
    found = {}
    for line in log.read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("fuzz-") and "): " in rest:
            found[name] = rest.split("): ", 1)[1].split(", exit ", 1)[0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=240.0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the files and outputs of defects here")
    parser.add_argument(
        "--rerun",
        type=Path,
        default=None,
        help="the output of an earlier run (same --files and --seed): run again only its defects "
        "(after fixing them), and count the rest as that run found them",
    )
    parser.add_argument("--jobs", type=int, default=2, help="commands run at a time")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    earlier = earlier_outcomes(args.rerun) if args.rerun else {}
    rng = random.Random(args.seed)
    model = tiny_bert()
    outcomes: collections.Counter = collections.Counter()
    defects: list[str] = []
    rerun: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rerank-fuzz-") as scratch_dir:
        scratch = Path(scratch_dir)
        to_run = []
        for number in range(args.files):
            path, fmt, kind, where = make_file(scratch, number, rng)  # every file, so the draws match
            if earlier.get(path.name) in OK_OUTCOMES:
                outcomes[(kind, fmt, earlier[path.name])] += 1
                path.unlink()
                continue
            if path.name in earlier:
                rerun.append(f"{path.name} ({earlier[path.name]})")
            to_run.append((path, fmt, kind, where))

        def one(item: tuple[Path, str, str, str]) -> tuple[tuple[Path, str, str, str], int | None, str, float]:
            return (item, *run_one(item[0], model, scratch, args.time_limit))

        # A few commands at a time: each spends most of its time starting Ray and its worker.
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for (path, fmt, kind, where), returncode, output, seconds in pool.map(one, to_run):
                outcome = classify(returncode, output, path)
                outcomes[(kind, fmt, outcome)] += 1
                last = next((line for line in reversed(output.splitlines()) if line.strip()), "")
                print(
                    f"{path.name} {kind} ({where}): {outcome}, exit {returncode}, {seconds:.0f} s | {last[:160]}",
                    flush=True,
                )
                if outcome not in OK_OUTCOMES:
                    defects.append(f"{path.name} {kind} ({where}): {outcome}\n{output[-4000:]}")
                    if args.keep:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        (args.keep / path.name).write_bytes(path.read_bytes())
                        (args.keep / f"{path.name}.out").write_text(output)
                path.unlink()
    for defect in defects:
        print(f"\n--- {defect}")
    outcome_names = [*OK_OUTCOMES, "exit 2 without the file", "traceback", "hang"]
    table_rows = []
    for kind in DAMAGE:
        for fmt in FORMATS:
            counts = [outcomes[(kind, fmt, o)] for o in outcome_names]
            if sum(counts):
                table_rows.append([kind, fmt, *counts])
    totals = [sum(outcomes[(k, f, o)] for k in DAMAGE for f in FORMATS) for o in outcome_names]
    table_rows.append(["**all**", "", *totals])
    body = (
        markdown_table(["damage", "format", *outcome_names], table_rows)
        + f"\n\n{args.files} files of {ROWS} rows, seed {args.seed}, a {args.time_limit:.0f} s limit per run, "
        f"{args.jobs} at a time; "
        f"{time.perf_counter() - started:.0f} s in all. Defects (the last three columns): {sum(totals[2:])}."
        + (
            f" Run again after the fixes (the rest as the first run, `--rerun`, found them): {', '.join(rerun)}."
            if rerun
            else ""
        )
    )
    record("Fuzzed input files", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
