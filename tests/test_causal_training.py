"""Causal-LM (decoder) rerankers end to end on the real Ray Train loop: the reference recipe for
Qwen3-Reranker-0.6B as shipped on a tiny Qwen3-shaped stand-in, and the n-tuple shape with
in-batch negatives. The exported folder loads as the library's causal CrossEncoder (LogitScore on
"yes"/"no"), applies the run's prompt, and scores what the run's evaluation scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_grouped_training import _queries_per_epoch
from test_recipes import REFERENCE
from test_train import _audit, rec_list
from tiny import reranking_pairs, tuples, write_beir, write_parquet

from rerank_ray.config import load_config
from rerank_ray.run.driver import train

RECIPE = "ref6-qwen3-reranker-0.6b-reranking.yaml"


@pytest.mark.ray
def test_the_qwen3_recipe_trains_a_causal_reranker_that_predicts_what_it_reported(ray_local, tiny_causal, tmp_path):
    """Pairs, 2 workers, the recipe's prompt; fp32 here (bf16 autocast on CPU would score the
    evaluation in bf16 and the library's predict in fp32). The library's reranking evaluator on
    the exported model gives the run's last metrics, so the exported model applies the same
    prompt and the same inputs; its predict equals our scores pair by pair."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.modules.logit_score import LogitScore

    rows_train = reranking_pairs(10, seed=1)
    rows_eval = reranking_pairs(6, seed=2, start=100)
    train_file = write_parquet(
        [{k: v for k, v in r.items() if k != "query_id"} for r in rows_train], tmp_path / "t.parquet"
    )
    eval_file = write_parquet(rows_eval, tmp_path / "e.parquet")
    config = load_config(
        REFERENCE / RECIPE,
        [
            f"model.name_or_path={tiny_causal}",
            f"data.train={train_file}",
            f"data.eval={eval_file}",
            "scaling.use_gpu=false",
            "scaling.num_workers=2",
            "train.precision=fp32",
            "train.gradient_accumulation_steps=1",
            "train.learning_rate=5e-3",  # the tiny model must separate its scores (near-ties: float rounding)
            "train.epochs=2",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=qwen3",
        ],
    )
    assert config.model.default_prompt_name == "web" and config.model.prompts
    outcome = train(config)
    final = outcome.metrics["final"]
    assert outcome.metrics["headline_metric"] == "eval_ndcg@10"

    model = CrossEncoder(outcome.output_dir, device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "LogitScore"] and isinstance(model[1], LogitScore)
    assert model[0].transformer_task == "text-generation" and model.tokenizer.padding_side == "left"
    assert model.default_prompt_name == "web" and model.prompts["web"] == config.model.prompts["web"]
    samples = {}
    for r in rows_eval:
        sample = samples.setdefault(r["query_id"], {"query": r["sentence_0"], "positive": [], "negative": []})
        sample["positive" if r["label"] else "negative"].append(r["sentence_1"])
    single_process = CrossEncoderRerankingEvaluator(list(samples.values()), at_k=10, name="eval")(model)
    for key in ("eval_ndcg@10", "eval_map", "eval_mrr@10"):
        assert final[key] == pytest.approx(single_process[key], abs=1e-6), key
    card = (Path(outcome.output_dir) / "README.md").read_text(encoding="utf-8")
    assert "- Inputs: a causal-LM reranker (`Qwen3ForCausalLM`)" in card and "`LogitScore`" in card
    assert "default prompt `web`" in card


@pytest.mark.ray
def test_a_causal_reranker_trains_on_tuples_with_in_batch_negatives(ray_local, tiny_causal, tmp_path):
    """The n-tuple shape (MultipleNegativesRankingLoss, 2 workers): every query once per epoch,
    the ranks' weights equal, and the exported folder scores a BEIR eval set as the run did."""
    from sentence_transformers import CrossEncoder

    train_file = write_parquet(tuples(21, negatives=2, seed=3), tmp_path / "data" / "tuples.parquet")
    beir = write_beir(reranking_pairs(5, seed=2, start=100), tmp_path / "data" / "beir")
    config = load_config(
        Path(__file__).parents[1] / "jobs" / "configs" / "dbpedia-grouped.yaml",
        [
            f"model.name_or_path={tiny_causal}",
            "model.max_length=null",
            f"data.train={train_file}",
            f"eval.beir={beir}",
            "eval.beir_split=test",
            "data.id_column=pair_id",
            "data.max_docs_per_query=null",
            "train.per_device_batch_size=4",
            "train.epochs=2",
            "train.learning_rate=3e-3",
            "train.loss_kwargs={num_negatives: 2}",
            "eval.before_training=false",
            "run.audit=true",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=qwen3-tuples",
        ],
    )
    outcome = train(config)
    audit = _audit(outcome.run_dir)
    for epoch, seen in enumerate(_queries_per_epoch(audit, 2)):
        assert set(seen) == {f"q{i}" for i in range(21)} and max(seen.values()) == 1, epoch
    digests = {rank: [r["digest"] for r in rec_list(recs, "params")] for rank, recs in audit.items()}
    assert sorted(digests) == [0, 1] and digests[0] == digests[1]
    model = CrossEncoder(outcome.output_dir, device="cpu")
    assert model[0].transformer_task == "text-generation"
    scores = model.predict([("red car", "blue boat"), ("green tree", "black cat")], show_progress_bar=False)
    assert np.isfinite(scores).all()
