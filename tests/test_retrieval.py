"""Retrieve-then-rerank evaluation: a retriever's top-k over the whole corpus are the candidates
(eval.retriever, eval.run_file), scored as sentence-transformers' CrossEncoderRerankingEvaluator
scores ranked ``documents``, the retriever's own ranking beside it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from tiny import WORDS, reranking_pairs, write_beir

from rerank_ray.config import Config, load_config
from rerank_ray.data.beir import BeirFiles, Retrieval, inspect_beir
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.evaluation.candidates import apply_candidates, read_run_file, retriever_metrics
from rerank_ray.evaluation.metrics import PrecomputedScores
from rerank_ray.evaluation.ranking import query_hashes, reranking_metrics


class LookupScores(PrecomputedScores):
    """A stand-in CrossEncoder scoring each (query, document) pair from a table."""

    def __init__(self, table: dict[tuple[str, str], float]):
        super().__init__(np.zeros(0), 1)
        self.table = table

    def predict(self, sentences, **kwargs):
        return np.array([self.table[(q, d)] for q, d in sentences])


def _retrieval_case(seed: int, queries: int = 60, corpus: int = 200):
    """Queries with judged documents (graded 0-2, some judged positives not retrieved) and a ranked
    list of retrieved documents from a corpus, and a score for every (query, document)."""
    rng = np.random.default_rng(seed)
    judged_rows, candidates, scores = [], [], {}
    for q in range(queries):
        query = f"q{q}"
        judged = rng.choice(corpus, size=int(rng.integers(1, 8)), replace=False)
        for i, doc in enumerate(judged):
            grade = float(rng.integers(0, 3)) if i else float(rng.integers(1, 3))  # one positive at least
            judged_rows.append({"query_id": query, "corpus_id": f"d{doc}", "label": grade, "sentence_0": query})
        retrieved = rng.choice(corpus, size=int(rng.integers(2, 30)), replace=False)
        candidates += [{"query_id": query, "corpus_id": f"d{d}", "rank": r + 1} for r, d in enumerate(retrieved)]
        for doc in range(corpus):
            scores[(query, f"d{doc}")] = float(rng.random())
    return pa.Table.from_pylist(judged_rows), pa.Table.from_pylist(candidates), scores


def _beir(judgements: pa.Table) -> BeirFiles:
    return BeirFiles(folder="f", split="test", corpus="", queries="", qrels="qrels/test.tsv", judgements=judgements)


def _ours(judgements, candidates, scores, always, at_k):
    beir = _beir(judgements)
    apply_candidates(beir, candidates, Retrieval("test", 100, always))
    base = retriever_metrics(beir, "e", at_k)
    pairs = beir.judgements
    groups = query_hashes(pairs["query_id"].to_pylist())
    predicted = np.array(
        [scores[(q, d)] for q, d in zip(pairs["query_id"].to_pylist(), pairs["corpus_id"].to_pylist())]
    )
    labels = pairs["label"].to_numpy()
    reranked = reranking_metrics(groups, predicted, labels > 0, "e", at_k, judged=beir.retrieval.judged())
    return reranked, base


@pytest.mark.parametrize("always", [False, True])
@pytest.mark.parametrize("at_k", [3, 10])
def test_metrics_equal_the_library_given_ranked_documents(always, at_k):
    """The library's evaluator fed each query's positives and its retrieved ``documents`` (ranked),
    with always_rerank_positives either way: the same MAP, MRR@k, nDCG@k and base_* figures as
    ours from the candidates table (missing positives normalise MAP and nDCG in both)."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    judgements, candidates, scores = _retrieval_case(seed=at_k + always)
    binary = judgements.set_column(2, "label", pa.array((judgements["label"].to_numpy() > 0).astype(float)))
    samples = []
    for query in sorted(set(judgements["query_id"].to_pylist())):
        rows = [r for r in binary.to_pylist() if r["query_id"] == query]
        found = [r for r in candidates.to_pylist() if r["query_id"] == query]
        samples.append(
            {
                "query": query,
                "positive": [r["corpus_id"] for r in rows if r["label"] > 0],
                "documents": [r["corpus_id"] for r in sorted(found, key=lambda r: r["rank"])],
            }
        )
    evaluator = CrossEncoderRerankingEvaluator(
        samples, at_k=at_k, name="e", write_csv=False, always_rerank_positives=always
    )
    expected = evaluator(LookupScores(scores))
    reranked, base = _ours(binary, candidates, scores, always, at_k)
    assert {**reranked, **base} == pytest.approx(expected, abs=1e-12)
    assert set(base) == {"e_base_map", f"e_base_mrr@{at_k}", f"e_base_ndcg@{at_k}"}


def test_graded_gains_are_normalised_by_every_judged_document():
    """Graded judgements, positives missing from the candidates: nDCG@10 is scikit-learn's
    ndcg_score over the candidates plus the missing judged documents ranked last (beyond k, so
    they add no gain but count in the ideal), as pytrec_eval normalises by the qrels."""
    from sklearn.metrics import ndcg_score

    judgements, candidates, scores = _retrieval_case(seed=3)
    beir = _beir(judgements)
    apply_candidates(beir, candidates, Retrieval("test", 100, False))
    pairs = beir.judgements.to_pylist()
    expected = []
    for query in sorted({r["query_id"] for r in pairs}):
        found = [r for r in pairs if r["query_id"] == query]
        gains = [r["label"] for r in found]
        given = [scores[(query, r["corpus_id"])] for r in found]
        missing = [
            r["label"]
            for r in judgements.to_pylist()
            if r["query_id"] == query and r["label"] > 0 and r["corpus_id"] not in {f["corpus_id"] for f in found}
        ]
        # Ten placeholders of gain 0 keep the missing documents below rank 10 whatever the list's length.
        padded_gains = gains + [0.0] * 10 + missing
        padded_scores = given + [-1.0] * 10 + [-2.0] * len(missing)
        expected.append(ndcg_score([padded_gains], [padded_scores], k=10) if any(padded_gains) else 0.0)
    groups = query_hashes([r["query_id"] for r in pairs])
    ours = reranking_metrics(
        groups,
        np.array([scores[(r["query_id"], r["corpus_id"])] for r in pairs]),
        np.array([r["label"] for r in pairs]),
        "e",
        10,
        judged=beir.retrieval.judged(),
    )
    assert ours["e_ndcg@10"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_run_file_takes_each_query_best_by_score(tmp_path):
    run = tmp_path / "bm25.run"
    run.write_text(
        "q1 Q0 d3 2 7.5 bm25\n"
        "q1 Q0 d1 1 9.0 bm25\n"
        "q1\tQ0  d2 3 7.5 bm25\n"  # any whitespace; a tie with d3 broken by the file's rank
        "q1 Q0 d1 4 1.0 bm25\n"  # listed twice: one candidate
        "\n"
        "q2 Q0 d9 1 3.0 bm25\n"
        "other Q0 d1 1 1.0 bm25\n"
    )
    table = read_run_file(str(run), top_k=2, queries={"q1", "q2"})
    assert table.to_pylist() == [
        {"query_id": "q1", "corpus_id": "d1", "rank": 1},
        {"query_id": "q1", "corpus_id": "d3", "rank": 2},
        {"query_id": "q2", "corpus_id": "d9", "rank": 1},
    ]
    run.write_text("q1 Q0 d3 2 7.5 bm25\nq1 Q0 d1 1\n")
    with pytest.raises(DataError, match=r"bm25.run line 2 has 4 fields, a TREC run line has 6"):
        read_run_file(str(run), top_k=2)
    run.write_text("q1 Q0 d3 first 7.5 bm25\n")
    with pytest.raises(DataError, match=r"line 1: rank 'first' and score '7.5' must be numbers"):
        read_run_file(str(run), top_k=2)
    with pytest.raises(DataError, match="cannot read"):
        read_run_file(str(tmp_path / "missing.run"), top_k=2)


def _beir_with_corpus(tmp_path, rows, extra_documents=40, seed=0):
    """A BEIR folder whose corpus holds the judged documents and unjudged ones."""
    folder = write_beir(rows, tmp_path / "beir")
    rng = random.Random(seed)
    extra = [{"_id": f"x{i}", "title": "", "text": " ".join(rng.sample(WORDS, 4))} for i in range(extra_documents)]
    with open(folder / "corpus.jsonl", "a") as f:
        f.writelines(json.dumps(d) + "\n" for d in extra)
    return folder


def test_all_positive_qrels_are_taken_with_a_retriever(tmp_path):
    """Qrels that judge only relevant documents (TREC-DL's graded 1-3) are refused with judged
    candidates, and taken with a retriever's: unjudged documents count as non-relevant."""
    rows = [dict(r, label=1 + i % 3) for i, r in enumerate(reranking_pairs(3, candidates=2)) if True]
    folder = _beir_with_corpus(tmp_path, rows)
    with pytest.raises(DataError, match="judges no document non-relevant.*eval.retriever or eval.run_file"):
        inspect_beir(str(folder), "test")
    beir = inspect_beir(str(folder), "test", retrieved=True)
    candidates = pa.Table.from_pylist(
        [{"query_id": "q0", "corpus_id": d, "rank": r + 1} for r, d in enumerate(["x1", "q0-d1", "x2"])]
        + [{"query_id": "q1", "corpus_id": "x3", "rank": 1}, {"query_id": "q1", "corpus_id": "x4", "rank": 2}]
    )
    apply_candidates(beir, candidates, Retrieval("run file r", 100, False))
    assert beir.retrieval.queries_without_candidates == ["q2"]  # left out, as trec_eval leaves them out
    labels = {(r["query_id"], r["corpus_id"]): r["label"] for r in beir.judgements.to_pylist()}
    assert labels == {("q0", "x1"): 0, ("q0", "q0-d1"): 2, ("q0", "x2"): 0, ("q1", "x3"): 0, ("q1", "x4"): 0}
    base = retriever_metrics(beir, "dev", 10)
    # q0: its judged positives d0 (gain 1, missed) and d1 (gain 2, at rank 2); q1 found nothing.
    assert base["dev_base_mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert base["dev_base_map"] == pytest.approx((0.5 / 2 + 0) / 2)


def test_retrieval_config_is_checked():
    def config(**evaluation):
        return Config.from_dict(
            {
                "model": {"name_or_path": "m"},
                "data": {"train": ["t.parquet"]},
                "eval": {"kind": "reranking", **evaluation},
            }
        )

    with pytest.raises(ConfigError, match="eval.retriever chooses the candidates among a BEIR folder's corpus"):
        config(retriever="m").check()
    with pytest.raises(ConfigError, match="either eval.retriever .* or eval.run_file"):
        config(beir="b", retriever="m", run_file="r").check()
    with pytest.raises(ConfigError, match="eval.top_k must be at least 2"):
        config(beir="b", retriever="m", top_k=1).check()
    with pytest.raises(ConfigError, match="eval.always_rerank_positives only applies"):
        config(beir="b", always_rerank_positives=True).check()
    config(beir="b", run_file="r", top_k=50).check()


@pytest.mark.slow
@pytest.mark.ray
def test_retriever_top_k_equals_semantic_search(ray_local, tiny_bi_encoder, tmp_path):
    """eval.retriever's candidates, embedded and searched in Ray Data, are the library's
    semantic_search top-k over the same model's embeddings (encode_query / encode_document)."""
    from sentence_transformers import SentenceTransformer, util

    from rerank_ray.evaluation.retrieval import retrieve

    rows = reranking_pairs(5, candidates=3, seed=3)
    folder = _beir_with_corpus(tmp_path, rows, extra_documents=60)
    beir = inspect_beir(str(folder), "test")
    config = load_config(
        None,
        [
            "model.name_or_path=m",
            f"eval.beir={folder}",
            f"eval.retriever={tiny_bi_encoder}",
            "eval.top_k=7",
            "eval.kind=reranking",
            "data.train=t.parquet",
        ],
    )
    table = retrieve(config, beir)
    model = SentenceTransformer(str(tiny_bi_encoder))
    documents = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    queries = beir.judgements.group_by("query_id", use_threads=False).aggregate([("sentence_0", "first")]).to_pylist()
    hits = util.semantic_search(
        model.encode_query([q["sentence_0_first"] for q in queries], convert_to_tensor=True, normalize_embeddings=True),
        model.encode_document(
            [(d["title"] + " " + d["text"]).strip() for d in documents],
            convert_to_tensor=True,
            normalize_embeddings=True,
        ),
        top_k=7,
    )
    got = {}
    for row in table.to_pylist():
        got.setdefault(row["query_id"], []).append((row["rank"], row["corpus_id"]))
    for query, found in zip(queries, hits):
        expected = [documents[h["corpus_id"]]["_id"] for h in found]
        assert [d for _, d in sorted(got[query["query_id"]])] == expected, query["query_id"]


def _reranking_a_retriever(model, train_file, beir, retriever, tmp_path, name: str) -> list[str]:
    """Overrides of a DBpedia config for the tiny models: train on ``train_file`` and evaluate by
    reranking ``retriever``'s top 10 of the ``beir`` folder's test split (not before training),
    the run ``name`` stored under ``tmp_path``."""
    return [
        f"model.name_or_path={model}",
        "model.max_length=null",
        f"data.train={train_file}",
        f"eval.beir={beir}",
        "eval.beir_split=test",
        f"eval.retriever={retriever}",
        "eval.top_k=10",
        "eval.before_training=false",
        f"run.storage_path={tmp_path / 'runs'}",
        f"run.name={name}",
        "run.report_to=[]",
    ]


def _graded_beir(tmp_path, queries: int = 8):
    """A TREC-DL-like BEIR folder: every judgement graded 1-3 (none judged non-relevant), and a
    corpus of unjudged documents besides the judged ones."""
    rows = [dict(r, label=1 + (i % 3)) for i, r in enumerate(reranking_pairs(queries, candidates=2, seed=7, start=100))]
    return _beir_with_corpus(tmp_path, rows, extra_documents=50, seed=1)


@pytest.mark.ray
def test_training_reranks_the_retrievers_top_k_and_reports_both(ray_local, tiny_bert, tiny_bi_encoder, tmp_path):
    """jobs/configs/dbpedia.yaml with eval.retriever on all-graded qrels: training evaluates on the
    retriever's top 10 of the whole corpus; metrics.json and the card carry the retriever's figure
    and the reranked one; the reranked figures equal the library's evaluator on the exported model
    given the same ranked documents, and ``rerank-ray eval --retriever`` reads the same."""
    from sentence_transformers import CrossEncoder, SentenceTransformer, util
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from tiny import write_parquet

    from rerank_ray.commands.evaluate import EvalRequest, run_eval
    from rerank_ray.run.driver import train

    beir = _graded_beir(tmp_path)
    train_file = write_parquet(reranking_pairs(24, seed=3), tmp_path / "train.parquet")
    config = load_config(
        "jobs/configs/dbpedia.yaml",
        _reranking_a_retriever(tiny_bert, train_file, beir, tiny_bi_encoder, tmp_path, "retrieved")
        + ["train.epochs=1", "train.per_device_batch_size=8"],
    )
    outcome = train(config)
    final, candidates = outcome.metrics["final"], outcome.metrics["eval_candidates"]
    assert candidates["source"] == f"retriever {tiny_bi_encoder}" and candidates["top_k"] == 10
    assert {"dev_base_ndcg@10", "dev_base_map", "dev_base_mrr@10", "dev_ndcg@10", "dev_ndcg@10_binary"} <= set(final)
    card = (Path(outcome.output_dir) / "README.md").read_text(encoding="utf-8")
    assert f"- Candidates: each query's top 10 of the corpus by retriever {tiny_bi_encoder}" in card
    assert f"nDCG@10 {final['dev_base_ndcg@10']:.4f} retrieved, {final['dev_ndcg@10']:.4f} reranked" in card

    # The library, in one process: the retriever's ranked documents, the exported model's scores.
    documents = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    texts = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in documents}
    judged = inspect_beir(str(beir), "test", retrieved=True).judgements.to_pylist()
    queries = {r["query_id"]: r["sentence_0"] for r in judged}
    bi_encoder = SentenceTransformer(str(tiny_bi_encoder))
    hits = util.semantic_search(
        bi_encoder.encode_query(list(queries.values()), convert_to_tensor=True, normalize_embeddings=True),
        bi_encoder.encode_document(list(texts.values()), convert_to_tensor=True, normalize_embeddings=True),
        top_k=10,
    )
    ids = list(texts)
    samples = [
        {
            "query": text,
            "positive": [texts[r["corpus_id"]] for r in judged if r["query_id"] == query],
            "documents": [texts[ids[h["corpus_id"]]] for h in found],
        }
        for (query, text), found in zip(queries.items(), hits)
    ]
    library = CrossEncoderRerankingEvaluator(
        samples, at_k=10, name="dev", write_csv=False, always_rerank_positives=False
    )
    expected = library(CrossEncoder(outcome.output_dir))
    assert final["dev_map"] == pytest.approx(expected["dev_map"], abs=1e-5)
    assert final["dev_mrr@10"] == pytest.approx(expected["dev_mrr@10"], abs=1e-5)
    assert final["dev_ndcg@10_binary"] == pytest.approx(expected["dev_ndcg@10"], abs=1e-5)  # the library's is binary
    assert final["dev_base_ndcg@10"] != final["dev_ndcg@10"]

    request = EvalRequest(
        model=outcome.output_dir,
        kind="reranking",
        data=[],
        beir=str(beir),
        name="dev",
        retriever=str(tiny_bi_encoder),
        top_k=10,
        output=str(tmp_path / "eval.json"),
    )
    result, _ = run_eval(request)
    for key in ("dev_map", "dev_mrr@10", "dev_ndcg@10", "dev_base_ndcg@10"):
        assert result["metrics"][key] == pytest.approx(final[key], abs=1e-5), key
    assert result["candidates"]["source"] == f"retriever {tiny_bi_encoder}"


def test_eval_command_reranks_a_run_file(tiny_bert, tmp_path):
    """``rerank-ray eval --beir --run-file`` (no Ray): the run's top-k reranked by the saved model,
    equal to the library's evaluator given the run's ranked documents."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    from rerank_ray.cli import main

    beir = _graded_beir(tmp_path, queries=6)
    documents = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    rng = random.Random(5)
    lines, ranked = [], {}
    judged = inspect_beir(str(beir), "test", retrieved=True).judgements.to_pylist()
    queries = {r["query_id"]: r["sentence_0"] for r in judged}
    for query in queries:
        chosen = rng.sample(documents, 12)
        ranked[query] = [d["_id"] for d in chosen[:8]]
        lines += [f"{query} Q0 {d['_id']} {i + 1} {20.0 - i} bm25" for i, d in enumerate(chosen)]
    run = tmp_path / "bm25.run"
    run.write_text("\n".join(lines) + "\n")
    output = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_bert),
            "--kind",
            "reranking",
            "--beir",
            str(beir),
            "--run-file",
            str(run),
            "--top-k",
            "8",
            "--name",
            "dev",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    result = json.loads(output.read_text())
    texts = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in documents}
    samples = [
        {
            "query": text,
            "positive": [texts[r["corpus_id"]] for r in judged if r["query_id"] == query],
            "documents": [texts[d] for d in ranked[query]],
        }
        for query, text in queries.items()
    ]
    expected = CrossEncoderRerankingEvaluator(
        samples, at_k=10, name="dev", write_csv=False, always_rerank_positives=False
    )(CrossEncoder(str(tiny_bert)))
    # The qrels are graded: our ndcg@10 uses the gains, the library's (binary) is our ndcg@10_binary.
    for ours, theirs in [
        ("dev_map", "dev_map"),
        ("dev_mrr@10", "dev_mrr@10"),
        ("dev_ndcg@10_binary", "dev_ndcg@10"),
        ("dev_base_map", "dev_base_map"),
        ("dev_base_mrr@10", "dev_base_mrr@10"),
        ("dev_base_ndcg@10_binary", "dev_base_ndcg@10"),
    ]:
        assert result["metrics"][ours] == pytest.approx(expected[theirs], abs=1e-6), ours
    assert result["candidates"] == {
        "source": f"run file {run}",
        "top_k": 8,
        "always_rerank_positives": False,
        "added_positives": 0,
        "queries_without_candidates": 0,
    }


@pytest.mark.ray
def test_a_search_of_the_listwise_config_reranks_a_retrievers_top_k_computed_once(
    ray_local, tiny_bert, tiny_bi_encoder, tmp_path
):
    """``rerank-ray tune`` on every shape and evaluation: jobs/configs/dbpedia-listwise.yaml
    (LambdaLoss on judged lists) evaluated on a BEIR folder reranking a bi-encoder's top 10,
    3 learning rates. The retriever's candidates are computed once for the search (a run file
    beside the trials, which every trial and the export read); the exported best trial reports
    the metric the search chose it by, and its figures are the library's evaluator's on the
    exported model given the same ranked documents."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from tiny import judged_lists, write_parquet

    from rerank_ray.evaluation.candidates import read_run_file
    from rerank_ray.tune.search import run_search

    beir = _graded_beir(tmp_path)
    train_file = write_parquet(judged_lists(16, seed=1), tmp_path / "lists.parquet")
    config = load_config(
        "jobs/configs/dbpedia-listwise.yaml",
        _reranking_a_retriever(tiny_bert, train_file, beir, tiny_bi_encoder, tmp_path, "listwise-search")
        + [
            "train.epochs=1",
            "train.per_device_batch_size=4",
            "tune.space={train.learning_rate: {choice: [1e-4, 1e-3, 5e-3]}}",
            "tune.search=grid",
            "tune.scheduler=none",
            # Two trials at a time on the test's 2 CPUs (as tests/test_tune.py runs them).
            "scaling.cpus_per_worker=0.5",
            "tune.max_concurrent_trials=2",
        ],
    )
    outcome = run_search(config)
    assert outcome.best is not None and len(outcome.rows) == 3
    run_file = tmp_path / "runs" / "listwise-search" / "retriever-candidates.trec"
    assert run_file.is_file()
    exported = json.loads((Path(outcome.paths.output) / "metrics.json").read_text())
    final = exported["final"]
    assert final[config.headline_metric] == pytest.approx(outcome.best["metric"], abs=1e-9)
    assert exported["eval_candidates"]["top_k"] == 10

    documents = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    texts = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in documents}
    judged = inspect_beir(str(beir), "test", retrieved=True).judgements.to_pylist()
    queries = {r["query_id"]: r["sentence_0"] for r in judged}
    candidates = read_run_file(str(run_file), 10)
    ranked: dict[str, list[str]] = {}
    for query, document in zip(candidates["query_id"].to_pylist(), candidates["corpus_id"].to_pylist()):
        ranked.setdefault(query, []).append(texts[document])
    samples = [
        {
            "query": text,
            "positive": [texts[r["corpus_id"]] for r in judged if r["query_id"] == query],
            "documents": ranked[query],
        }
        for query, text in queries.items()
    ]
    library = CrossEncoderRerankingEvaluator(
        samples, at_k=10, name="dev", write_csv=False, always_rerank_positives=False
    )
    expected = library(CrossEncoder(str(outcome.paths.output)))
    assert final["dev_map"] == pytest.approx(expected["dev_map"], abs=1e-5)
    assert final["dev_ndcg@10_binary"] == pytest.approx(expected["dev_ndcg@10"], abs=1e-5)
