"""NanoBEIR by name: the collection sentence-transformers' ``CrossEncoderNanoBEIREvaluator``
reads, turned into the BEIR folders and BM25 run files the reranking evaluation already takes.

The library loads four subsets of each dataset with ``datasets.load_dataset(dataset_id, subset,
split="Nano<Name>")``: ``corpus`` and ``queries`` (``_id``, ``text``), ``qrels`` (``query-id``,
``corpus-id``; every row a positive) and ``bm25`` (``query-id``, ``corpus-ids``: BM25's ranking).
We load them the same way (the hub id, or a local folder in the hub's layout) and write them once
into a local cache as ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv`` (score 1) and
``bm25.trec``, so the run reranks each query's BM25 top ``eval.top_k`` exactly as
``eval.beir`` with ``eval.run_file`` does (:mod:`rerank_ray.evaluation.candidates`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from rerank_ray.config.evalsets import nanobeir_folder, nanobeir_run_file, nanobeir_split
from rerank_ray.errors import DataError

COMPLETE = ".complete"


def materialize(dataset_id: str, name: str, folder: str | None = None) -> str:
    """Dataset ``name`` of ``dataset_id`` written as a BEIR folder with its BM25 run into
    ``folder`` (default: this process's cache), once: a folder already complete is kept.
    Returns the folder."""
    folder = folder or nanobeir_folder(dataset_id, name)
    if os.path.isfile(os.path.join(folder, COMPLETE)):
        return folder
    print(f"[rerank-ray] NanoBEIR: reading {nanobeir_split(name)} of {dataset_id} into {folder}", flush=True)
    split = nanobeir_split(name)
    corpus = _subset(dataset_id, "corpus", split, ["_id", "text"])
    queries = _subset(dataset_id, "queries", split, ["_id", "text"])
    qrels = _subset(dataset_id, "qrels", split, ["query-id", "corpus-id"])
    bm25 = _subset(dataset_id, "bm25", split, ["query-id", "corpus-ids"])
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{split}-", dir=os.path.dirname(folder))
    try:
        _write_jsonl(
            os.path.join(scratch, "corpus.jsonl"), ({"_id": r["_id"], "title": "", "text": r["text"]} for r in corpus)
        )
        _write_jsonl(os.path.join(scratch, "queries.jsonl"), ({"_id": r["_id"], "text": r["text"]} for r in queries))
        os.makedirs(os.path.join(scratch, "qrels"))
        with open(os.path.join(scratch, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for row in qrels:
                # Every qrels row is a positive to the library (it reads no score); a row may list several.
                ids = row["corpus-id"] if isinstance(row["corpus-id"], list) else [row["corpus-id"]]
                f.writelines(f"{row['query-id']}\t{corpus_id}\t1\n" for corpus_id in ids)
        with open(nanobeir_run_file(scratch), "w", encoding="utf-8") as f:
            for row in bm25:
                ranked = row["corpus-ids"]
                f.writelines(
                    f"{row['query-id']} Q0 {corpus_id} {rank} {len(ranked) - rank + 1} bm25\n"
                    for rank, corpus_id in enumerate(ranked, start=1)
                )
        open(os.path.join(scratch, COMPLETE), "w").close()
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
        os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _subset(dataset_id: str, subset: str, split: str, columns: list[str]) -> Any:
    """One subset's split, as the library loads it (``datasets.load_dataset``)."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, subset, split=split)
    except Exception as err:
        raise DataError(
            f"NanoBEIR: cannot load subset {subset!r} split {split!r} of {dataset_id!r}: {err}. A hub id needs "
            "the hub; a local folder in the hub's layout (subsets corpus, queries, qrels, bm25 in its README's "
            "configs) works offline: set dataset_id to its path"
        ) from err
    missing = sorted(set(columns) - set(dataset.column_names))
    if missing:
        raise DataError(
            f"NanoBEIR: subset {subset!r} split {split!r} of {dataset_id!r} lacks the column(s) {missing} "
            f"(it has {dataset.column_names})"
        )
    return dataset


def _write_jsonl(path: str, rows: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
