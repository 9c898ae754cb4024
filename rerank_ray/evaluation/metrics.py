"""Metrics of the evaluator kinds, computed by sentence-transformers' own evaluators.

Workers score their shard of the eval set; rank 0 gathers the scores (plus the labels and, for
reranking, a 64-bit query id per pair) and computes the metrics once, with the library's code:

- ``binary``, ``classification`` and ``correlation`` hand the scores to the matching
  sentence-transformers evaluator through :class:`PrecomputedScores`, a stand-in model whose
  ``predict`` returns them;
- ``reranking`` groups the scores by query and applies CrossEncoderRerankingEvaluator's own
  per-query computation (:mod:`rerank_ray.evaluation.ranking`).

So every metric a user reads is the number the library's evaluator computes for those scores,
and nobody scores the whole eval set on one rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rerank_ray.evaluation.ranking import reranking_metrics


class _NoModelCard:
    """Absorbs the evaluator's attempt to store metrics on the model card (done at export)."""

    def set_evaluation_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass


class PrecomputedScores:
    """A stand-in for a CrossEncoder whose ``predict`` returns scores computed by the workers.

    The evaluators call ``predict`` once with all their pairs; we check the count matches so a
    mismatch between the scores and the labels cannot pass silently.
    """

    def __init__(self, scores: np.ndarray, num_labels: int):
        self.scores = scores
        self.num_labels = num_labels
        self.model_card_data = _NoModelCard()

    def predict(self, sentences: list, **kwargs: Any) -> np.ndarray:
        if len(sentences) != len(self.scores):
            raise RuntimeError(f"evaluator asked for {len(sentences)} scores, {len(self.scores)} were computed")
        return self.scores


def build_evaluator(
    kind: str, labels: np.ndarray, name: str, pairs: list[list[str]] | None = None, at_k: int = 10
) -> Any:
    """The sentence-transformers evaluator of ``kind``. ``pairs`` only matter for the model card;
    metrics come from the scores, so placeholders are used when they are not given."""
    from sentence_transformers.cross_encoder.evaluation import (
        CrossEncoderClassificationEvaluator,
        CrossEncoderCorrelationEvaluator,
        CrossEncoderRerankingEvaluator,
    )

    pairs = pairs if pairs is not None else [["", ""]] * len(labels)
    if kind in ("binary", "classification"):
        return CrossEncoderClassificationEvaluator(pairs, labels.astype(int).tolist(), name=name, write_csv=False)
    if kind == "correlation":
        return CrossEncoderCorrelationEvaluator(pairs, labels.astype(float).tolist(), name=name, write_csv=False)
    if kind == "reranking":
        # The per-query samples are not needed: the metrics come from rerank_ray.evaluation.ranking.
        return CrossEncoderRerankingEvaluator(samples=[], at_k=at_k, name=name, write_csv=False)
    raise ValueError(f"unknown eval.kind {kind!r}")


def compute_metrics(
    kind: str,
    scores: np.ndarray,
    labels: np.ndarray,
    name: str,
    num_labels: int = 1,
    *,
    groups: np.ndarray | None = None,
    at_k: int = 10,
    judged: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Metrics of ``kind`` for scores already passed through the model's activation (as ``predict``).

    ``scores`` holds one score per pair, or one row of ``num_labels`` logits for ``classification``;
    ``groups`` the query id of each pair for ``reranking``; ``judged`` its queries' judged
    positives (query id, gain) when a retriever chose the candidates.
    """
    if len(scores) == 0:
        raise ValueError("the eval set is empty: nothing to evaluate")
    if kind == "reranking":
        if groups is None:
            raise ValueError("eval.kind reranking needs the query of every pair")
        return reranking_metrics(groups, scores, labels, name, at_k, judged)
    if kind == "binary":
        _check_binary(labels)
    if kind == "classification":
        labels = _class_ids(labels, num_labels)
    evaluator = build_evaluator(kind, labels, name)
    metrics = {key: float(value) for key, value in evaluator(PrecomputedScores(scores, num_labels)).items()}
    if kind == "classification":
        # The library reports macro, micro and weighted F1; accuracy is what a reader looks for next.
        metrics[f"{name}_accuracy"] = float(np.mean(np.argmax(scores, axis=1) == labels))
    return metrics


def _check_binary(labels: np.ndarray) -> None:
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        value = labels[bad][0].item()
        raise ValueError(
            f"eval.kind binary needs labels 0 or 1; found {value!r}. Use eval.kind correlation for graded labels"
        )
    if len(np.unique(labels)) < 2:
        raise ValueError("eval.kind binary needs both labels 0 and 1 in the eval set")


def _class_ids(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Labels as integer class ids in [0, num_labels), or an error naming the first bad value."""
    ids = labels.astype(np.int64)
    bad = (ids != labels) | (ids < 0) | (ids >= num_labels)
    if bad.any():
        value = labels[bad][0].item()
        raise ValueError(
            f"eval.kind classification needs class ids 0..{num_labels - 1} (model.num_labels = {num_labels}); "
            f"found {value!r}"
        )
    return ids
