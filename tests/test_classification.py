"""Multi-class classification on Ray: CrossEntropyLoss over 3 labels, integer labels end to end,
the headline (macro F1) and accuracy equal sentence-transformers' evaluator on the export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import base_config
from test_model_card import assert_complete_card
from tiny import class_pairs, write_jsonl

from rerank_ray.config import Config
from rerank_ray.run.driver import train

pytestmark = pytest.mark.ray


def test_three_class_classification_trains_and_reports_the_library_metrics(ray_local, tiny_bert_3_labels, tmp_path):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    rows_train, rows_eval = class_pairs(240, seed=1), class_pairs(45, seed=2)
    raw = base_config(
        tiny_bert_3_labels,
        write_jsonl(rows_train, tmp_path / "train.jsonl"),
        write_jsonl(rows_eval, tmp_path / "eval.jsonl"),
        tmp_path / "runs",
        train={"loss": "CrossEntropyLoss", "epochs": 5, "learning_rate": 5e-3, "warmup_ratio": 0.1},
        eval={"kind": "classification", "steps": 0},
    )
    raw["model"]["num_labels"] = 3
    raw["data"]["name"] = "tiny-classes"
    outcome = train(Config.from_dict(raw))
    final = outcome.metrics["final"]
    assert outcome.metrics["headline_metric"] == "eval_f1_macro"
    losses = [e["loss"] for e in outcome.metrics["history"] if "loss" in e]
    assert losses[-1] < 0.7 * losses[0], losses

    model = CrossEncoder(outcome.output_dir)
    assert model.num_labels == 3
    pairs = [[r["sentence_0"], r["sentence_1"]] for r in rows_eval]
    labels = [r["label"] for r in rows_eval]
    recomputed = CrossEncoderClassificationEvaluator(pairs, labels, name="eval")(model)
    for key in ("eval_f1_macro", "eval_f1_micro", "eval_f1_weighted"):
        assert final[key] == pytest.approx(recomputed[key], abs=1e-6), key
    accuracy = np.mean(model.predict(pairs).argmax(1) == np.array(labels))
    assert final["eval_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert final["eval_f1_macro"] > 0.8  # it learned the three classes

    card = assert_complete_card(
        Path(outcome.output_dir) / "README.md", headline="f1_macro", workers="2 x CPU", loss="CrossEntropyLoss"
    )
    # Integer labels all the way: the card's label column is a class distribution, not a float range.
    assert "<li>0: ~33.33%</li><li>1: ~33.33%</li><li>2: ~33.33%</li>" in card  # the 45 eval pairs
    assert "* Size: 240 training samples" in card and "#### tiny-classes" in card
    assert (
        json.loads((Path(outcome.output_dir) / "metrics.json").read_text())["final"]["eval_accuracy"]
        == final["eval_accuracy"]
    )
