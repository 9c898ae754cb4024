"""Split the DBpedia-Entity reranking subset by query into training pairs and an eval set.

    python jobs/data/prepare_dbpedia.py [--source ../shared/data/dbpedia_entity] [--out data/dbpedia]

The source is BEIR-style: ``corpus.jsonl`` (5,000 DBpedia abstracts), ``queries.jsonl`` (50
queries) and ``qrels/test.tsv`` (3,709 judgements: 0 non-relevant, 1 relevant, 2 highly
relevant). Queries, not pairs, are split (seeded): no query of the eval set is seen in training.
A query's candidates are its judged documents: its positives are those judged 1 or 2, its
negatives those judged 0. Documents are "title text", as BEIR's cross-encoder reranking builds
them. Written to ``--out``:

- ``train.parquet``: the training queries' pairs; ``label`` the judgement divided by 2 (0, 0.5,
  1: soft targets for BinaryCrossEntropyLoss), plus ``query_id`` and ``pair_id``;
- ``eval.parquet``: the eval queries' pairs with the graded judgement (0, 1, 2) as ``label``;
- ``train_lists.parquet``: the training queries in the list shape (query, documents, labels: the
  judgements 0, 1, 2), for the listwise losses;
- ``train_tuples.parquet``: one (query, positive, negative_1..negative_7) row per judged
  positive of a training query, the negatives drawn (seeded) among its non-relevant documents,
  ``label`` the judgements (for MultipleNegativesRankingLoss, or MarginMSELoss with judgements
  standing in for a teacher's scores);
- ``beir/``: the same split as a BEIR folder (``corpus.jsonl`` and ``queries.jsonl`` copied,
  ``qrels/train.tsv`` and ``qrels/eval.tsv``), which ``eval.beir`` reads;
- ``LICENSE.txt``: the data's licence (DBpedia abstracts, CC BY-SA 3.0).

The JSONL files are read with PyArrow's JSON reader, which splits lines on "\\n" only: some
abstracts hold Unicode line separators that ``str.splitlines`` would cut.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

ROOT = Path(__file__).parents[2]
LICENCE = """DBpedia-Entity v2 subset in BEIR layout, split by query by jobs/data/prepare_dbpedia.py.
Source: github.com/agentset-ai/embedding-leaderboard, commit 7a1376c, datasets/dbpedia/
(via ../shared/data/dbpedia_entity).
Licence: DBpedia abstracts CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/).
Queries and relevance judgements: DBpedia-Entity v2 (Hasibi et al., SIGIR 2017).
"""


def split_queries(query_ids: list[str], eval_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, eval) query ids: a seeded shuffle, the first ``eval_fraction`` of it for eval."""
    ordered = sorted(query_ids)
    random.Random(seed).shuffle(ordered)
    count = max(1, round(len(ordered) * eval_fraction))
    return set(ordered[count:]), set(ordered[:count])


#: Hard negatives per (query, positive) tuple of train_tuples.parquet.
NEGATIVES_PER_TUPLE = 7


def grouped_rows(pairs: list[dict], negatives: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The training pairs in the grouped shapes (docs/data.md, "Shapes and columns"): one row per
    query with its judged documents and their judgements (0, 1, 2), and one row per judged
    positive with ``negatives`` of the query's non-relevant documents drawn (seeded) and the
    judgements of all of them as ``label`` (stand-ins for a teacher's scores)."""
    by_query: dict[str, list[dict]] = {}
    for pair in pairs:
        by_query.setdefault(pair["query_id"], []).append(pair)
    rng = random.Random(seed)
    lists, tuples = [], []
    for query_id in sorted(by_query):
        judged = by_query[query_id]
        grades = [round(p["label"] * 2) for p in judged]  # train.parquet holds judgement / 2
        lists.append(
            {
                "query": judged[0]["sentence_0"],
                "documents": [p["sentence_1"] for p in judged],
                "labels": grades,
                "pair_id": query_id,
            }
        )
        non_relevant = [p["sentence_1"] for p, g in zip(judged, grades) if g == 0]
        for index, (pair, grade) in enumerate(zip(judged, grades)):
            if grade == 0 or len(non_relevant) < negatives:
                continue
            drawn = rng.sample(non_relevant, negatives)
            row = {"query": pair["sentence_0"], "positive": pair["sentence_1"]}
            row.update({f"negative_{i + 1}": text for i, text in enumerate(drawn)})
            row["label"] = [float(grade)] + [0.0] * negatives
            row["pair_id"] = f"{query_id}#{index}"
            tuples.append(row)
    return lists, tuples


def prepare(source: Path, out: Path, eval_fraction: float = 0.3, seed: int = 42) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rerank_ray.data.beir import inspect_beir, read_beir_pairs

    beir = inspect_beir(str(source), "test")
    pairs = read_beir_pairs(beir)
    # Queries with something to rank: at least one positive and one negative judged document.
    usable = []
    for query in sorted(set(pairs["query_id"].to_pylist())):
        labels = pairs.filter(pc.equal(pairs["query_id"], query))["label"].to_pylist()
        if any(v > 0 for v in labels) and any(v == 0 for v in labels):
            usable.append(query)
    train_ids, eval_ids = split_queries(usable, eval_fraction, seed)

    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, ids, scale in (("train", train_ids, 0.5), ("eval", eval_ids, 1.0)):
        table = pairs.filter(pc.is_in(pairs["query_id"], pa.array(sorted(ids))))
        table = table.sort_by([("query_id", "ascending"), ("label", "descending"), ("sentence_1", "ascending")])
        labels = pc.multiply(table["label"], scale)
        pair_ids = [f"{q}#{i}" for i, q in enumerate(table["query_id"].to_pylist())]
        table = table.set_column(table.column_names.index("label"), "label", labels)
        pq.write_table(table.append_column("pair_id", pa.array(pair_ids)), out / f"{split}.parquet")
        counts[f"{split}_queries"], counts[f"{split}_pairs"] = len(ids), table.num_rows

    train_pairs = pq.read_table(out / "train.parquet")
    lists, tuples = grouped_rows(train_pairs.to_pylist(), NEGATIVES_PER_TUPLE, seed)
    pq.write_table(pa.Table.from_pylist(lists), out / "train_lists.parquet")
    pq.write_table(pa.Table.from_pylist(tuples), out / "train_tuples.parquet")
    counts["train_lists"], counts["train_tuples"] = len(lists), len(tuples)

    folder = out / "beir"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(beir.corpus, folder / "corpus.jsonl")
    shutil.copyfile(beir.queries, folder / "queries.jsonl")
    header, *judgements = Path(beir.qrels).read_text(encoding="utf-8").split("\n")
    for split, ids in (("train", train_ids), ("eval", eval_ids)):
        kept = [line for line in judgements if line.split("\t", 1)[0] in ids]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    (out / "LICENSE.txt").write_text(LICENCE)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "dbpedia_entity")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "dbpedia")
    parser.add_argument("--eval-fraction", type=float, default=0.3, help="share of the queries kept for eval")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    for key, value in prepare(args.source, args.out, args.eval_fraction, args.seed).items():
        print(f"{key}: {value}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
