"""Shared pieces of the benchmark scripts: the machine line, data preparation, running
rerank-ray as a user would (a subprocess with a generated config), and RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
STSB = ROOT / "data" / "stsb"
#: Generated data and samples (RERANK_BENCH_DATA moves them: benchmarks/gpu.sh's dry run writes to scratch).
BENCH_DATA = Path(os.environ.get("RERANK_BENCH_DATA") or ROOT / "data" / "bench")

#: Environment of every process a benchmark starts: this checkout's code in the driver and in the
#: Ray workers, no hub, no tokenizer threads competing with torch's.
BENCH_ENV = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

#: The niceness Ray gives its worker processes (raylet's ``worker_niceness``, 15 by default).
RAY_WORKER_NICENESS = int(os.environ.get("RAY_worker_niceness", 15))  # noqa: SIM112 - Ray spells it so

SHARED_MACHINE_NOTE = (
    "Absolute figures move between invocations on this machine (other jobs, and the host's own speed: "
    "the same ceiling loop has run at 30 to 63 pairs/s on different occasions)."
)
ALTERNATED_NOTE = (
    " The runners were alternated within one invocation so that the load hits them alike; read the "
    "ratios within a round."
)


def machine() -> str:
    """A one-line description of where a figure was measured."""
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        gpu, torch_version = "unknown", "unknown"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem_gib:.0f} GiB RAM, {gpu}; Python {platform.python_version()}, torch {torch_version}"


def ensure_stsb() -> Path:
    if not (STSB / "train.parquet").is_file():
        subprocess.run([sys.executable, str(ROOT / "jobs" / "data" / "prepare_stsb.py")], check=True)
    return STSB


def stsb_subset(rows: int, seed: int = 0) -> Path:
    """The STS Benchmark train split, or a fixed random sample of ``rows`` pairs of it (0: all).

    The same file goes to every runner of a benchmark, so they train on the same pairs."""
    train = ensure_stsb() / "train.parquet"
    if not rows:
        return train
    import numpy as np
    import pyarrow.parquet as pq

    path = BENCH_DATA / f"stsb-train-{rows}-seed{seed}.parquet"
    if not path.is_file():
        table = pq.read_table(train)
        if rows > table.num_rows:
            raise SystemExit(f"--subset {rows}: the train split has only {table.num_rows} pairs")
        index = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=rows, replace=False))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(index), path)
    return path


def run_rerank_ray(config: dict, overrides: list[str] = (), env: dict | None = None, timeout: int = 7200) -> dict:
    """Run ``rerank-ray train`` in a fresh process, as a user would; return metrics.json plus the
    wall time and the seconds from the command to the end of the first training step. The run is
    stored and exported in a scratch folder unless ``config`` sets ``run.storage_path`` (object
    storage, say; the export then goes to a local ``run.output_dir``)."""
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as scratch:
        config = json.loads(json.dumps(config))
        run = config.setdefault("run", {})
        run.setdefault("storage_path", scratch)
        run.setdefault("name", "bench")
        run.setdefault("output_dir", str(Path(scratch, "bench", "model")))
        path = Path(scratch, "config.yaml")
        path.write_text(yaml.safe_dump(config))
        started = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rerank_ray.cli", "train", "--config", str(path), *overrides],
            cwd=ROOT,
            env={**os.environ, **BENCH_ENV, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the driver stops the run and shuts its Ray down (killed outright, it
            # would leave Ray's dashboard and runtime-env agents running).
            proc.terminate()
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, output=stdout, stderr=stderr) from None
        wall = time.time() - started
        if proc.returncode != 0:
            raise RuntimeError(f"rerank-ray failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-4000:]}")
        metrics = json.loads(Path(run["output_dir"], "metrics.json").read_text())
        metrics["wall_seconds"] = wall
        metrics["started_unix"] = started
        first_step = metrics["resources"]["first_step_unix"]
        metrics["command_to_first_step_seconds"] = first_step - started if first_step else None
        return metrics


def run_json_script(argv: list[str], timeout: int = 7200) -> dict:
    """Run a script that prints one JSON line last; return that object."""
    # Ray starts its workers at niceness 15 (Ray's RAY_worker_niceness), so rerank-ray trains at
    # niceness 15; the scripts compared with it run at the same niceness, so that other jobs on a
    # shared machine take CPU from every runner alike.
    proc = subprocess.run(
        ["nice", "-n", str(RAY_WORKER_NICENESS), sys.executable, *argv],
        cwd=ROOT,
        env={**os.environ, **BENCH_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def this_command() -> str:
    """The command line that ran this benchmark, as RESULTS.md quotes it."""
    return " ".join(["python", f"benchmarks/{os.path.basename(sys.argv[0])}", *sys.argv[1:]])


def record(section: str, body: str, *, print_only: bool = False) -> None:
    """Replace (or append) a ``## section`` of RESULTS.md with the table, the command that ran
    (:func:`this_command`) and the machine; ``print_only`` (a script's ``--no-record``): print them."""
    command = this_command()
    if print_only:
        print(f"{command}\n{machine()}\n\n{body}")
        return
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = (
        f"## {section}\n\n"
        f"Command: `{command}`  \nMachine: {machine()}  \nDate: {time.strftime('%Y-%m-%d')}\n\n{body.strip()}\n"
    )
    start = text.find(f"## {section}\n")
    if start == -1:
        text = text.rstrip() + "\n\n" + block
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + block + (text[end:] if end != -1 else "")
    RESULTS.write_text(text)
    print(block)


# --------------------------------------------------------------------------------------------
# Generated pair sets

COLOURS = ["red", "blue", "green", "black", "white", "grey", "navy", "beige", "pink", "brown", "olive", "cream"]
MATERIALS = [
    "cotton",
    "linen",
    "wool",
    "leather",
    "denim",
    "silk",
    "steel",
    "oak",
    "bamboo",
    "glass",
    "ceramic",
    "plastic",
]
ITEMS = [
    "shirt",
    "jacket",
    "sofa",
    "lamp",
    "chair",
    "table",
    "boots",
    "kettle",
    "backpack",
    "watch",
    "scarf",
    "mug",
    "desk",
    "rug",
]
DETAILS = [
    "slim fit",
    "hand made",
    "water resistant",
    "for kids",
    "with pockets",
    "extra large",
    "set of two",
    "eco friendly",
]


def generate_item_pairs(rows: int, seed: int) -> dict[str, list]:
    """Short e-commerce style pairs: a search query and an item description, label 1 when the
    description matches the query's item and colour, else 0 (half of each), like the reference
    MiniLM run's product-matching set (114,138 pairs of short item descriptions, binary labels)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def pick(words, size):
        return np.asarray(words, dtype=object)[rng.integers(0, len(words), size)]

    colour, material, item = pick(COLOURS, rows), pick(MATERIALS, rows), pick(ITEMS, rows)
    positive = rng.random(rows) < 0.5
    other_item = pick(ITEMS, rows)
    shown_item = np.where(positive | (other_item == item), item, other_item)
    label = (shown_item == item).astype("float32")
    detail = pick(DETAILS, rows)
    queries = [f"{c} {i}" for c, i in zip(colour, item)]
    docs = [f"{c.title()} {m} {i}, {d}" for c, m, i, d in zip(colour, material, shown_item, detail)]
    return {"sentence_0": queries, "sentence_1": docs, "label": label.tolist()}


def write_pair_shards(folder: Path, rows: int, rows_per_shard: int, seed: int = 0) -> Path:
    """``rows`` generated pairs in Parquet shards of ``rows_per_shard`` (kept: built once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = folder / "_complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, rows, rows_per_shard)):
        count = min(rows_per_shard, rows - start)
        pq.write_table(
            pa.table(generate_item_pairs(count, seed * 100_003 + shard)), folder / f"part-{shard:04d}.parquet"
        )
    done.write_text(str(rows))
    return folder


def tiny_bert() -> Path:
    """The tests' 2-layer BERT (hidden 32), built once under data/bench/."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_tiny_bert

    folder = BENCH_DATA / "tiny-bert"
    if not (folder / "config.json").is_file():
        build_tiny_bert(folder)
    return folder
