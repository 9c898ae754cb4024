"""Multi-class classification and reranking metrics equal sentence-transformers' evaluators on the
same scores; class labels stay integers through the tokenize stage and the batches."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from tiny import class_pairs, reranking_pairs

from rerank_ray.config import headline_metric_key
from rerank_ray.data.stream import tokenize_batch
from rerank_ray.errors import DataError
from rerank_ray.evaluation.metrics import compute_metrics
from rerank_ray.evaluation.ranking import query_hashes, reranking_metrics


def test_classification_metrics_equal_the_evaluator(tiny_bert_3_labels):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    model = CrossEncoder(str(tiny_bert_3_labels))
    rows = class_pairs(45)
    pairs = [[r["sentence_0"], r["sentence_1"]] for r in rows]
    labels = np.array([r["label"] for r in rows])
    expected = CrossEncoderClassificationEvaluator(pairs, labels.tolist(), name="dev")(model)
    logits = model.predict(pairs)
    ours = compute_metrics("classification", logits, labels, "dev", num_labels=3)
    assert {k: v for k, v in ours.items() if k != "dev_accuracy"} == pytest.approx(expected, abs=1e-12)
    assert ours["dev_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert headline_metric_key("classification", "dev") == "dev_f1_macro" and "dev_f1_macro" in ours


def test_classification_refuses_labels_that_are_not_class_ids():
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match="class ids 0..2 .* found 1.5"):
        compute_metrics("classification", logits, np.array([0, 1.5]), "eval", num_labels=3)
    with pytest.raises(ValueError, match="found 3"):
        compute_metrics("classification", logits, np.array([0, 3]), "eval", num_labels=3)


def _samples_and_rows(rows: list[dict], scores: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """The evaluator's samples (query, positives, negatives) and the scores in the order its
    predict call lists the pairs: per query with a positive, its positives then its negatives."""
    samples, ordered = {}, []
    for row, score in zip(rows, scores):
        sample = samples.setdefault(row["query_id"], {"query": row["sentence_0"], "positive": [], "negative": []})
        sample["positive" if row["label"] > 0 else "negative"].append((row["sentence_1"], score))
    for sample in samples.values():
        if sample["positive"]:
            ordered += [s for _, s in sample["positive"]] + [s for _, s in sample["negative"]]
    plain = [
        {"query": s["query"], "positive": [d for d, _ in s["positive"]], "negative": [d for d, _ in s["negative"]]}
        for s in samples.values()
    ]
    return plain, np.array(ordered)


def test_reranking_metrics_equal_the_evaluator_on_a_real_model(tiny_bert):
    """Scores of a real model, rows in a shuffled order (as the gathered shards arrive), grouped by
    query id: the same MAP, MRR@10 and nDCG@10 as CrossEncoderRerankingEvaluator."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    model = CrossEncoder(str(tiny_bert))
    rows = reranking_pairs(30, candidates=12, seed=4)
    random.Random(0).shuffle(rows)
    scores = model.predict([[r["sentence_0"], r["sentence_1"]] for r in rows])
    samples, _ = _samples_and_rows(rows, scores)
    expected = CrossEncoderRerankingEvaluator(samples, at_k=10, name="dev", write_csv=False)(model)
    groups = query_hashes([r["query_id"] for r in rows])
    ours = compute_metrics("reranking", scores, np.array([r["label"] for r in rows]), "dev", groups=groups)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert set(ours) == {"dev_map", "dev_mrr@10", "dev_ndcg@10"}


@pytest.mark.parametrize("at_k", [1, 3, 10])
def test_reranking_metrics_equal_the_evaluator_with_queries_without_positives(at_k):
    """Many queries of varied size, several positives, some queries with none (counted 0 by the
    library), k smaller than the lists: equal to the evaluator fed the same scores."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    from rerank_ray.evaluation.metrics import PrecomputedScores

    rng = np.random.default_rng(at_k)
    rows, scores = [], []
    for q in range(150):
        n = int(rng.integers(2, 30))
        labels = (rng.random(n) < 0.25).astype(int) if q % 11 else np.zeros(n, dtype=int)
        rows += [
            {"query_id": f"q{q}", "sentence_0": f"q{q}", "sentence_1": f"d{i}", "label": int(v)}
            for i, v in enumerate(labels)
        ]
        scores += rng.random(n).tolist()
    order = rng.permutation(len(rows))
    rows, scores = [rows[i] for i in order], np.array(scores)[order]
    samples, ordered = _samples_and_rows(rows, scores)
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=at_k, name="e", write_csv=False)
    expected = evaluator(PrecomputedScores(ordered, 1))
    groups = query_hashes([r["query_id"] for r in rows])
    ours = reranking_metrics(groups, scores, np.array([r["label"] for r in rows]), "e", at_k)
    assert ours == pytest.approx(expected, abs=1e-12)


def test_graded_relevance_keeps_its_gains_and_the_library_binary_figure():
    """Graded labels (0/1/2): nDCG@k uses them as gains (scikit-learn's ndcg_score per query); the
    library's binary nDCG stays as ndcg@k_binary; MAP/MRR count any label > 0 as relevant. Many
    ties in the scores: scikit-learn averages over tied documents, and so do we."""
    from sklearn.metrics import average_precision_score, ndcg_score

    rng = np.random.default_rng(5)
    groups, scores, labels = [], [], []
    graded, binary, ap = [], [], []
    for q in range(120):
        n = int(rng.integers(2, 40))
        label = rng.integers(0, 3, n).astype(float)
        label[0] = max(label[0], 1.0)
        score = rng.integers(0, 4, n).astype(float)  # ties everywhere
        groups += [q] * n
        scores += score.tolist()
        labels += label.tolist()
        graded.append(ndcg_score([label], [score], k=10))
        binary.append(ndcg_score([(label > 0).astype(int)], [score], k=10))
        ap.append(average_precision_score(label > 0, score))
    ours = reranking_metrics(np.array(groups), np.array(scores), np.array(labels), "e", 10)
    assert ours["e_ndcg@10"] == pytest.approx(np.mean(graded), abs=1e-12)
    assert ours["e_ndcg@10_binary"] == pytest.approx(np.mean(binary), abs=1e-12)
    assert ours["e_map"] == pytest.approx(np.mean(ap), abs=1e-12)
    assert ours["e_ndcg@10"] != pytest.approx(ours["e_ndcg@10_binary"])


def test_reranking_ties_break_as_in_the_library():
    """Float32 scores full of ties (a tiny model's are): MRR breaks them as the library's argsort
    does, nDCG and MAP average over them as scikit-learn does: equal values either way."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    from rerank_ray.evaluation.metrics import PrecomputedScores

    rng = np.random.default_rng(9)
    rows, scores = [], []
    for q in range(80):
        n = int(rng.integers(2, 40))
        labels = (rng.random(n) < 0.3).astype(int)
        rows += [
            {"query_id": f"q{q}", "sentence_0": "", "sentence_1": f"d{i}", "label": int(v)}
            for i, v in enumerate(labels)
        ]
        scores += rng.integers(0, 3, n).tolist()
    scores = np.array(scores, dtype=np.float32)
    samples, ordered = _samples_and_rows(rows, scores)
    expected = CrossEncoderRerankingEvaluator(samples, at_k=10, name="e", write_csv=False)(
        PrecomputedScores(ordered, 1)
    )
    groups = query_hashes([r["query_id"] for r in rows])
    ours = reranking_metrics(groups, scores, np.array([r["label"] for r in rows]), "e", 10)
    assert ours == pytest.approx(expected, abs=1e-12)


def test_reranking_rejects_single_candidate_queries_and_negative_labels():
    with pytest.raises(ValueError, match="1 eval queries have a single candidate"):
        reranking_metrics(np.array([1, 2, 2]), np.array([0.1, 0.2, 0.3]), np.array([1, 1, 0]), "e")
    with pytest.raises(ValueError, match="labels >= 0"):
        reranking_metrics(np.array([1, 1]), np.array([0.1, 0.2]), np.array([1, -1]), "e")


def test_query_hashes_are_stable_64_bit_ids():
    ids = query_hashes(["q1", "q2", "q1"])
    assert ids.dtype == np.int64 and ids[0] == ids[2] != ids[1]
    assert query_hashes(["q1"])[0] == ids[0]  # the same in every process: no shared numbering


class _LocalHandle:
    """Hands the encoder to tokenize_batch in this process (Ray Data would ship it via the store)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def get(self):
        return self.tokenizer


def test_class_labels_stay_integers_through_tokenize_and_batches(tiny_bert, tmp_path):
    import json

    from rerank_ray.config import Config, ModelConfig
    from rerank_ray.run.driver import inspect_data
    from rerank_ray.training.batching import Collator
    from rerank_ray.training.models import load_encoder

    encoder = load_encoder(ModelConfig(name_or_path=str(tiny_bert)), 32)
    handle = _LocalHandle(encoder)
    rows = class_pairs(6)
    # JSON readers often give 0.0, 1.0, 2.0, and the row checks pass labels on as float32: whole
    # class ids become int64 exactly.
    table = pa.table(
        {
            "sentence_0": [r["sentence_0"] for r in rows],
            "sentence_1": [r["sentence_1"] for r in rows],
            "label": pa.array([float(r["label"]) for r in rows], type=pa.float32()),
            "skip": pa.array([0] * 6, type=pa.int8()),
            "row_key": pa.array(range(6), type=pa.int64()),
        }
    )
    tokenized = tokenize_batch(table, handle, class_ids=True)
    assert tokenized.column("label").type == pa.int64()
    batch = Collator.for_encoder(encoder)(tokenized)
    assert batch.labels.dtype == np.int64 and batch.labels.tolist() == [r["label"] for r in rows]
    assert tokenize_batch(table, handle).column("label").type == pa.float32()  # BCE/MSE targets

    # A label that is no class id fails in the row checks, before Ray, naming the row and the rule.
    def error_for(label):
        path = tmp_path / "train.jsonl"
        bad = [dict(r) for r in rows]
        bad[4]["label"] = label
        path.write_text("".join(json.dumps(r) + "\n" for r in bad))
        config = Config.from_dict(
            {
                "model": {"name_or_path": str(tiny_bert), "num_labels": 3},
                "data": {"train": [str(path)]},
                "train": {"loss": "CrossEntropyLoss"},
                "eval": {"kind": "classification"},
            }
        )
        with pytest.raises(DataError) as caught:
            inspect_data(config)
        return str(caught.value)

    for label in (1.5, 3):
        message = error_for(label)
        assert "row 5" in message and f"holds {label}" in message and "a class id 0..2" in message
