"""Mining at scale: ``rerank-ray mine`` on a corpus of 100k against 1M documents, 1 against 2
embedding actors, and ``mine_hard_negatives`` in one process beside it.

    python benchmarks/mine_scale.py [--small 100000] [--large 1000000] [--queries 1000] [--no-record]

Generates a corpus of distinct short documents (random words of the tests' vocabulary and a
number) as JSON Lines, and ``--queries`` (query, positive) pairs whose positives are corpus
documents, then mines 7 negatives per query with the tests' tiny bi-encoder (2-layer BERT,
hidden 32; ``tests/tiny.py``), output n-tuple:

- ``rerank-ray mine`` as a user runs it (a subprocess, embedded Ray), on each corpus size, with
  1 and 2 embedding actors on the small corpus;
- ``sentence_transformers.util.mine_hard_negatives`` in one process on the same files, the same
  model and parameters (exact search, no faiss).

Memory is polled every 0.2 s from /proc for every process of a run: the driver (the command's
process), the embedding actors (``ray::MapWorker(MapBatches(Embedder))``), the search tasks
(``ray::search_blocks``); each with its peak resident memory and its peak private memory
(``RssAnon``: resident memory less the pages of Ray's shared object store it has mapped, which
``VmRSS`` counts too). Prints a table and writes it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import BENCH_DATA, BENCH_ENV, ROOT, markdown_table, record

NEGATIVES = 7
#: Process kinds of a run, by what their command line holds.
KINDS = {"actor": "MapBatches(Embedder)", "search": "search_blocks"}


def tiny_bi_encoder() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_tiny_bi_encoder

    folder = BENCH_DATA / "tiny-bi-encoder"
    if not (folder / "model" / "modules.json").is_file():
        build_tiny_bi_encoder(folder)
    return folder / "model"


def write_data(documents: int, queries: int) -> tuple[Path, Path]:
    """A corpus of ``documents`` distinct texts and ``queries`` pairs (kept: built once)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import WORDS

    folder = BENCH_DATA / f"mine-{documents}"
    corpus, pairs = folder / "corpus.jsonl", folder / "pairs.jsonl"
    if (folder / "_complete").is_file():
        return pairs, corpus
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(documents)
    texts = []
    with corpus.open("w") as handle:
        for i in range(documents):
            text = " ".join(rng.choices(WORDS, k=rng.randint(4, 9))) + f" {i}"
            if i < queries:
                texts.append(text)
            handle.write(json.dumps({"_id": str(i), "text": text}) + "\n")
    with pairs.open("w") as handle:
        for q, positive in enumerate(texts):
            handle.write(json.dumps({"query": " ".join(rng.sample(WORDS, 3)) + f" q{q}", "positive": positive}) + "\n")
    (folder / "_complete").write_text("done")
    return pairs, corpus


def _status(pid: int) -> dict[str, float]:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon"):
                fields[name] = int(value.split()[0]) / 1024
    except (OSError, ValueError):
        return {}
    return fields


class Poller:
    """Peak VmRSS and RssAnon, in MiB, of the driver and of each process kind, while a run lasts."""

    def __init__(self, driver: int):
        self.driver = driver
        self.peaks: dict[str, dict[str, float]] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _kind(self, pid: int) -> str | None:
        if pid == self.driver:
            return "driver"
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return None
        return next((kind for kind, mark in KINDS.items() if mark in cmdline), None)

    def _poll(self) -> None:
        while not self.done.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                kind = self._kind(int(entry.name))
                if kind is None:
                    continue
                peak = self.peaks.setdefault(kind, {"VmRSS": 0.0, "RssAnon": 0.0})
                for name, value in _status(int(entry.name)).items():
                    peak[name] = max(peak[name], value)
            time.sleep(0.2)

    def stop(self) -> dict[str, dict[str, float]]:
        self.done.set()
        self.thread.join()
        return self.peaks


def run_ours(model: Path, pairs: Path, corpus: Path, actors: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    Path(str(out) + ".summary.json").unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "rerank_ray.cli", "mine", "--pairs", str(pairs), "--corpus", str(corpus),
        "--embedder", str(model), "--output", str(out), "--format", "n-tuple", "--num-negatives", str(NEGATIVES),
        "--concurrency", str(actors),
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **BENCH_ENV}, stdout=subprocess.PIPE, text=True)
    poller = Poller(process.pid)
    output, _ = process.communicate(timeout=7200)
    peaks = poller.stop()
    if process.returncode:
        raise SystemExit(f"rerank-ray mine failed ({process.returncode}):\n{output}")
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    return {
        "wall": time.perf_counter() - started,
        "peaks": peaks,
        "rows": summary["rows"],
        "stages": summary["stage_seconds"],
        "texts": summary["texts_embedded"],
    }


def run_library(model: Path, pairs: Path, corpus: Path) -> dict:
    """``mine_hard_negatives`` in a process of its own; its peak from getrusage."""
    code = f"""
import json, resource, time
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives
started = time.perf_counter()
rows = [json.loads(line) for line in open({str(pairs)!r})]
corpus = [json.loads(line)["text"] for line in open({str(corpus)!r})]
model = SentenceTransformer({str(model)!r}, device="cpu")
dataset = Dataset.from_dict({{"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}})
mined = mine_hard_negatives(dataset, model, corpus=corpus, num_negatives={NEGATIVES}, output_format="n-tuple",
                            verbose=False)
print(json.dumps({{"rows": len(mined), "wall": time.perf_counter() - started,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **BENCH_ENV}, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _rate(run: dict) -> str:
    return f"{run['texts'] / run['stages']['embed']:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    model = tiny_bi_encoder()
    data = {size: write_data(size, args.queries) for size in (args.small, args.large)}
    out = BENCH_DATA / "mined"
    runs = {}
    for label, size, actors in (("small-1", args.small, 1), ("small-2", args.small, 2), ("large-2", args.large, 2)):
        runs[label] = run_ours(model, *data[size], actors, out)
        print(label, runs[label], file=sys.stderr, flush=True)
    library = {size: run_library(model, *data[size]) for size in (args.small, args.large)}
    print(library, file=sys.stderr, flush=True)

    def peak(run: dict, kind: str, field: str) -> str:
        value = run["peaks"].get(kind, {}).get(field)
        return f"{value:.0f}" if value else "-"

    def growth(a: float, b: float) -> str:
        return f"{(b / a - 1) * 100:+.1f}%"

    rows = []
    for label, size, actors in (("small-1", args.small, 1), ("small-2", args.small, 2), ("large-2", args.large, 2)):
        run = runs[label]
        rows.append(
            [f"rerank-ray mine, {actors} actor(s)", f"{size:,}", f"{run['wall']:.0f}", peak(run, "driver", "VmRSS"),
             peak(run, "actor", "VmRSS"), peak(run, "actor", "RssAnon"), peak(run, "search", "VmRSS"),
             peak(run, "search", "RssAnon"), f"{run['rows']:,}"]
        )  # fmt: skip
    for size, result in library.items():
        rows.append(
            ["mine_hard_negatives, one process", f"{size:,}", f"{result['wall']:.0f}", f"{result['peak']:.0f}",
             "-", "-", "-", "-", f"{result['rows']:,}"]
        )  # fmt: skip
    small, large = runs["small-2"]["peaks"], runs["large-2"]["peaks"]
    growths = [
        f"{name} {growth(small[kind][field], large[kind][field])}"
        for name, kind, field in (
            ("driver", "driver", "VmRSS"),
            ("embedding actor (private)", "actor", "RssAnon"),
            ("search task (private)", "search", "RssAnon"),
        )
        if small.get(kind, {}).get(field) and large.get(kind, {}).get(field)
    ]
    lib_growth = growth(library[args.small]["peak"], library[args.large]["peak"])
    body = markdown_table(
        ["run", "corpus documents", "wall s", "driver peak RSS MiB", "actor peak RSS", "actor peak private",
         "search task peak RSS", "search task peak private", "rows written"],
        rows,
    )  # fmt: skip
    body += (
        f"\n\nGrowth from {args.small:,} to {args.large:,} documents (2 actors): {', '.join(growths)}; "
        f"mine_hard_negatives' process: {lib_growth}. Target: under 10% for rerank-ray's processes. "
        f"Embedding throughput on {args.small:,} documents (texts embedded over the embedding stage's seconds): "
        f"1 actor {_rate(runs['small-1'])}, 2 actors {_rate(runs['small-2'])} texts/s; on {args.large:,}, 2 actors "
        f"{_rate(runs['large-2'])}. Stage seconds (Ray start, embedding, search, selection and writing): "
        + "; ".join(f"{label} " + ", ".join(f"{v:.0f}" for v in run["stages"].values()) for label, run in runs.items())
        + ". "
        f"{args.queries:,} (query, positive) pairs, {NEGATIVES} negatives each, n-tuple; the tests' tiny bi-encoder "
        "(2-layer BERT, hidden 32), embedding batch 32 (the library's default) in both. Private memory is RssAnon "
        "(resident memory less shared pages: the blocks of Ray's object store a process has read are counted "
        "in its VmRSS). Polled every 0.2 s from /proc."
    )
    record("Mining hard negatives at scale: 100k against 1M documents (CPU)", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
