"""Losses and metrics agree with sentence-transformers' own on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import synthetic_pairs

from rerank_ray.evaluation.metrics import compute_metrics
from rerank_ray.training.losses import PointwiseLoss, build_library_loss


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("BinaryCrossEntropyLoss", {}), ("BinaryCrossEntropyLoss", {"pos_weight": 3.0}), ("MSELoss", {})],
)
def test_pointwise_loss_equals_library_loss(tiny_bert, name, kwargs):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_bert))
    rows = synthetic_pairs(12)
    library = build_library_loss(model, name, kwargs)
    labels = torch.tensor([r["label"] * 0.8 for r in rows])
    expected = library([[r["sentence_0"] for r in rows], [r["sentence_1"] for r in rows]], labels)
    logits = model(model.preprocess([(r["sentence_0"], r["sentence_1"]) for r in rows]))["scores"]
    ours = PointwiseLoss.from_library(library).per_pair(logits, labels).mean()
    torch.testing.assert_close(ours, expected)


def test_binary_metrics_equal_the_evaluator_on_a_real_model(tiny_bert):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    model = CrossEncoder(str(tiny_bert))
    rows = synthetic_pairs(40)
    pairs = [[r["sentence_0"], r["sentence_1"]] for r in rows]
    labels = np.array([int(r["label"]) for r in rows])
    expected = CrossEncoderClassificationEvaluator(pairs, labels.tolist(), name="eval")(model)
    scores = model.predict(pairs)
    ours = compute_metrics("binary", scores, labels, "eval")
    assert ours == pytest.approx(expected, abs=1e-12)


def test_correlation_metrics_equal_the_evaluator(tiny_bert):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator

    model = CrossEncoder(str(tiny_bert))
    rows = synthetic_pairs(30)
    pairs = [[r["sentence_0"], r["sentence_1"]] for r in rows]
    graded = np.linspace(0, 1, len(rows))
    expected = CrossEncoderCorrelationEvaluator(pairs, graded.tolist(), name="dev")(model)
    ours = compute_metrics("correlation", model.predict(pairs), graded, "dev")
    assert ours == pytest.approx(expected, abs=1e-12)
    assert set(ours) == {"dev_pearson", "dev_spearman"}


def test_binary_metrics_refuse_graded_labels():
    with pytest.raises(ValueError, match="labels 0 or 1; found 0.5"):
        compute_metrics("binary", np.array([0.1, 0.2]), np.array([0.5, 1.0]), "eval")
