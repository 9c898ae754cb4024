"""Metrics of the evaluator kinds, computed by sentence-transformers' own evaluators.

Workers score their shard of the eval set; rank 0 gathers the scores and hands them to the
matching sentence-transformers evaluator through :class:`PrecomputedScores`, a stand-in model
whose ``predict`` returns those scores. So every metric a user reads is the number the library's
evaluator computed, and nobody scores the whole eval set on one rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The headline metric of each kind: the primary metric of the matching sentence-transformers evaluator.
HEADLINE = {
    "binary": "average_precision",
    "correlation": "spearman",
    "classification": "f1_macro",
    "reranking": "ndcg@10",
}


def headline_metric_key(kind: str, name: str) -> str:
    return f"{name}_{HEADLINE[kind]}"


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


def build_evaluator(kind: str, labels: np.ndarray, name: str, pairs: list[list[str]] | None = None) -> Any:
    """The sentence-transformers evaluator of ``kind``. ``pairs`` only matter for the model card;
    metrics come from the scores, so placeholders are used when they are not given."""
    from sentence_transformers.cross_encoder.evaluation import (
        CrossEncoderClassificationEvaluator,
        CrossEncoderCorrelationEvaluator,
    )

    pairs = pairs if pairs is not None else [["", ""]] * len(labels)
    if kind == "binary":
        return CrossEncoderClassificationEvaluator(pairs, labels.astype(int).tolist(), name=name, write_csv=False)
    if kind == "classification":
        return CrossEncoderClassificationEvaluator(pairs, labels.astype(int).tolist(), name=name, write_csv=False)
    if kind == "correlation":
        return CrossEncoderCorrelationEvaluator(pairs, labels.astype(float).tolist(), name=name, write_csv=False)
    raise NotImplementedError(f"eval.kind {kind!r} is not implemented yet")


def compute_metrics(kind: str, scores: np.ndarray, labels: np.ndarray, name: str, num_labels: int = 1) -> dict:
    """Metrics of ``kind`` for scores already passed through the model's activation (as ``predict``)."""
    if len(scores) == 0:
        raise ValueError("the eval set is empty: nothing to evaluate")
    if kind == "binary":
        bad = ~np.isin(labels, (0, 1))
        if bad.any():
            value = labels[bad][0].item()
            raise ValueError(
                f"eval.kind binary needs labels 0 or 1; found {value!r}. Use eval.kind correlation for graded labels"
            )
        if len(np.unique(labels)) < 2:
            raise ValueError("eval.kind binary needs both labels 0 and 1 in the eval set")
    evaluator = build_evaluator(kind, labels, name)
    metrics = evaluator(PrecomputedScores(scores, num_labels))
    return {key: float(value) for key, value in metrics.items()}
