"""The reference recipes, each run as shipped with a tiny stand-in of its model's family
(BERT, XLM-RoBERTa, DeBERTa-v2, a custom-code model) and tiny data with its label type and
evaluator, on real Ray with CPU workers. Only the model, the data, the workers and the storage
are overridden (and, where a test compares metrics, a learning rate the tiny model learns with).

Default set: one run per evaluator kind and per family (recipes 3, 4, 5 here, the binary kind and
BERT in test_train.py, multi-class classification in test_classification.py). Recipes 1 and 2
repeat a kind and a family already covered and are marked slow.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from test_model_card import assert_complete_card
from tiny import graded_pairs, reranking_pairs, synthetic_pairs, write_jsonl, write_parquet

from rerank_ray.cli import main
from rerank_ray.config import load_config
from rerank_ray.run.driver import train

REFERENCE = Path(__file__).parents[1] / "jobs" / "configs" / "reference"


def _run_recipe(name: str, model: Path, train_file: Path, eval_file: Path, tmp_path: Path, *extra: str):
    config = load_config(
        REFERENCE / name,
        [
            f"model.name_or_path={model}",
            f"data.train={train_file}",
            f"data.eval={eval_file}",
            "scaling.use_gpu=false",
            "scaling.num_workers=2",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=recipe",
            *extra,
        ],
    )
    return config, train(config)


def _binary_recipe(name, model, tmp_path):
    rows_train, rows_eval = synthetic_pairs(48, seed=1, with_id=False), synthetic_pairs(30, seed=2, with_id=False)
    train_file = write_parquet(rows_train, tmp_path / "data" / "train.parquet")
    eval_file = write_parquet(rows_eval, tmp_path / "data" / "eval.parquet")
    config, outcome = _run_recipe(name, model, train_file, eval_file, tmp_path)
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    evaluator = CrossEncoderClassificationEvaluator(
        [[r["sentence_0"], r["sentence_1"]] for r in rows_eval], [int(r["label"]) for r in rows_eval], name="eval"
    )
    recomputed = evaluator(CrossEncoder(outcome.output_dir))
    final = outcome.metrics["final"]
    assert outcome.metrics["headline_metric"] == "eval_average_precision"
    assert recomputed["eval_average_precision"] == pytest.approx(final["eval_average_precision"], abs=1e-5)
    return config, outcome


@pytest.mark.ray
@pytest.mark.slow
def test_recipe1_bge_m3_binary_on_tiny_xlm_roberta(ray_local, tiny_xlm_roberta, tmp_path):
    _, outcome = _binary_recipe("ref1-bge-reranker-v2-m3-binary.yaml", tiny_xlm_roberta, tmp_path)
    assert outcome.metrics["train"]["epochs"] == 3


@pytest.mark.ray
@pytest.mark.slow
def test_recipe2_ms_marco_minilm_binary_on_tiny_bert(ray_local, tiny_bert, tmp_path):
    _, outcome = _binary_recipe("ref2-ms-marco-minilm-l6-binary.yaml", tiny_bert, tmp_path)
    assert outcome.metrics["train"]["epochs"] == 3


@pytest.mark.ray
def test_recipe3_custom_code_correlation_with_graded_labels(ray_local, tiny_custom_code, tmp_path, capfd):
    """The custom-code recipe trains only because its config opts in to trust_remote_code; graded
    labels, correlation evaluator, fp16 falling back to fp32 on CPU."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator

    rows_train, rows_eval = graded_pairs(96, seed=1), graded_pairs(40, seed=2)
    train_file = write_jsonl(rows_train, tmp_path / "data" / "train.jsonl")
    eval_file = write_jsonl(rows_eval, tmp_path / "data" / "eval.jsonl")
    config, outcome = _run_recipe(
        "ref3-gte-multilingual-reranker-correlation.yaml", tiny_custom_code, train_file, eval_file, tmp_path
    )
    assert config.model.trust_remote_code and config.train.precision == "fp16"
    assert "fp16 has no CPU autocast here: training in fp32" in capfd.readouterr().out
    assert outcome.metrics["headline_metric"] == "eval_spearman"
    assert outcome.metrics["train"]["steps"] == 10  # 96 pairs / 2 workers / batch 32 = 2 steps x 5 epochs
    # The exported folder carries the modelling code and loads (with the same opt-in).
    out = Path(outcome.output_dir)
    assert (out / "modeling_new.py").is_file()
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(out), trust_remote_code=True)
    evaluator = CrossEncoderCorrelationEvaluator(
        [[r["sentence_0"], r["sentence_1"]] for r in rows_eval], [r["label"] for r in rows_eval], name="eval"
    )
    assert evaluator(model)["eval_spearman"] == pytest.approx(outcome.metrics["final"]["eval_spearman"], abs=1e-5)


def test_custom_code_without_the_opt_in_fails_before_ray_with_a_clear_message(tiny_custom_code, tmp_path, capsys):
    data = write_jsonl(graded_pairs(10), tmp_path / "train.jsonl")
    code = main(
        [
            "train",
            "--config",
            str(REFERENCE / "ref3-gte-multilingual-reranker-correlation.yaml"),
            f"model.name_or_path={tiny_custom_code}",
            "model.trust_remote_code=false",
            f"data.train={data}",
            f"data.eval={data}",
            f"run.storage_path={tmp_path}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "ships its own modelling code (configuration_new.py, modeling_new.py" in err
    assert "set model.trust_remote_code: true" in err


@pytest.mark.ray
def test_recipe4_nli_deberta_binary_replaces_the_three_label_head(ray_local, tiny_deberta_v2, tmp_path, capfd):
    """DeBERTa-v2 with its 3-label NLI head: the recipe trains a new 1-label head, max length 256,
    one epoch, evaluated once at the end."""
    config, outcome = _binary_recipe("ref4-nli-deberta-v3-binary.yaml", tiny_deberta_v2, tmp_path)
    assert "head is replaced by a new 1-label head" in capfd.readouterr().out
    assert config.model.max_length == 256 and outcome.metrics["train"]["epochs"] == 1
    evaluations = [e["step"] for e in outcome.metrics["history"] if "eval_average_precision" in e]
    assert evaluations == [outcome.metrics["train"]["steps"]]  # at the end only
    card = (Path(outcome.output_dir) / "README.md").read_text()
    assert "- `max_length`: 256" in card


@pytest.mark.ray
def test_recipe5_reranking_on_four_workers_scores_every_eval_pair_once(ray_local, tiny_xlm_roberta, tmp_path):
    """Reranking with integer labels (20% positive) on 4 CPU workers: each worker scores its own
    shard of the eval set (the audit lists the pairs each scored: every pair exactly once per
    evaluation, all four ranks taking part), rank 0 computes the metrics from the gathered
    (query, score, label), and they equal CrossEncoderRerankingEvaluator run in one process on
    the exported model."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    rows_train = reranking_pairs(8, seed=1)
    rows_eval = reranking_pairs(12, seed=2, start=100)
    rows_eval += reranking_pairs(1, candidates=7, seed=3, start=200)  # 67 pairs: 4 workers need filler rows
    train_file = write_parquet(
        [{k: v for k, v in r.items() if k != "query_id"} for r in rows_train], tmp_path / "t.parquet"
    )
    eval_file = write_parquet(rows_eval, tmp_path / "e.parquet")
    config, outcome = _run_recipe(
        "ref5-bge-reranker-v2-m3-reranking.yaml",
        tiny_xlm_roberta,
        train_file,
        eval_file,
        tmp_path,
        "scaling.num_workers=4",
        "scaling.cpus_per_worker=0.5",
        "data.id_column=pair_id",
        "run.audit=true",
        "train.learning_rate=5e-3",  # the tiny model must separate its scores: near-ties would make the
        # single-process comparison below depend on float rounding
    )
    assert outcome.metrics["headline_metric"] == "eval_ndcg@10"
    assert outcome.metrics["train"]["eval_pairs"] == len(rows_eval) == 67

    audit = {}
    for path in sorted(Path(outcome.run_dir, "audit").glob("rank*.jsonl")):
        audit[int(path.stem.removeprefix("rank"))] = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(audit) == [0, 1, 2, 3]
    evaluations = sorted({r["step"] for records in audit.values() for r in records if r["kind"] == "eval"})
    assert len(evaluations) == 3  # before training and after each of the 2 epochs
    expected_ids = Counter(r["pair_id"] for r in rows_eval)
    for step in evaluations:
        by_rank = {
            rank: [i for r in records if r["kind"] == "eval" and r["step"] == step for i in r["ids"]]
            for rank, records in audit.items()
        }
        assert all(by_rank.values()), f"step {step}: a rank scored nothing: { {k: len(v) for k, v in by_rank.items()} }"
        scored = Counter(i for ids in by_rank.values() for i in ids)
        assert scored == expected_ids, f"step {step}: pairs missing or scored twice"

    samples = {}
    for r in rows_eval:
        sample = samples.setdefault(r["query_id"], {"query": r["sentence_0"], "positive": [], "negative": []})
        sample["positive" if r["label"] else "negative"].append(r["sentence_1"])
    single_process = CrossEncoderRerankingEvaluator(list(samples.values()), at_k=10, name="eval")(
        CrossEncoder(outcome.output_dir)
    )
    final = outcome.metrics["final"]
    for key in ("eval_ndcg@10", "eval_map", "eval_mrr@10"):
        assert final[key] == pytest.approx(single_process[key], abs=1e-6), key
    assert_complete_card(Path(outcome.output_dir) / "README.md", headline="ndcg@10", workers="4 x CPU")
