"""A reranking eval set's queries, counted before Ray starts: single-candidate queries refused
naming them, or, with ``eval.drop_unrankable``, left out of an evaluation whose metrics then
equal the library evaluator's on the queries kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import reranking_pairs, write_beir, write_jsonl

from rerank_ray.config import Config
from rerank_ray.errors import DataError
from rerank_ray.run.driver import inspect_data, train


def _rows() -> list[dict]:
    rows = reranking_pairs(6, candidates=3, seed=2)
    rows += reranking_pairs(2, candidates=1, seed=3, start=50)  # a positive alone: nothing to rank
    no_positive = reranking_pairs(1, candidates=3, seed=4, start=60)
    return rows + [{**r, "label": 0} for r in no_positive]


def _config(tiny_bert, tmp_path, eval_rows, **eval_section) -> Config:
    train_file = write_jsonl(reranking_pairs(6, seed=1), tmp_path / "train.jsonl")
    eval_file = write_jsonl(eval_rows, tmp_path / "eval.jsonl")
    return Config.from_dict(
        {
            "model": {"name_or_path": str(tiny_bert)},
            "data": {"train": [str(train_file)], "eval": [str(eval_file)]},
            "train": {"epochs": 1, "per_device_batch_size": 8, "learning_rate": 5e-3},
            "eval": {"kind": "reranking", "query_id_column": "query_id", **eval_section},
            "scaling": {"num_workers": 2},
            "run": {"storage_path": str(tmp_path / "runs"), "name": "queries"},
        }
    )


def test_single_candidate_queries_stop_the_run_before_ray_naming_them(tiny_bert, tmp_path):
    config = _config(tiny_bert, tmp_path, _rows())
    with pytest.raises(DataError) as refused:
        inspect_data(config)
    message = str(refused.value)
    assert "data.eval: 2 of 9 eval queries have a single candidate ('q50', 'q51')" in message
    assert "eval.drop_unrankable=true" in message
    beir = write_beir(_rows(), tmp_path / "beir")
    config = _config(tiny_bert, tmp_path, _rows())
    config.data.eval, config.eval.beir, config.eval.query_id_column = [], str(beir), None
    with pytest.raises(DataError, match=r"eval.beir: 2 of 9 eval queries have a single candidate \('q50', 'q51'\)"):
        inspect_data(config)


def test_drop_unrankable_counts_what_it_leaves_out(tiny_bert, tmp_path, capsys):
    config = _config(tiny_bert, tmp_path, _rows(), drop_unrankable=True)
    queries = inspect_data(config)["eval"].eval_queries
    assert queries.total == 9 and queries.single_candidate == ["q50", "q51"] and queries.without_positive == ["q60"]
    assert queries.dropped() == {"single_candidate": 2, "without_positive": 1} and queries.dropped_rows == 5
    assert (
        "leaves out 3 of 9 queries (2 with a single candidate, 1 without a positive; 5 pairs)"
        in capsys.readouterr().out
    )
    # Off, a query without a positive stays (it counts 0, as in the library); only singles stop a run.
    kept = _config(tiny_bert, tmp_path, [r for r in _rows() if not r["query_id"].startswith("q5")])
    assert inspect_data(kept)["eval"].eval_queries.dropped() == {}


@pytest.mark.ray
def test_the_queries_left_out_are_not_scored_and_the_rest_equal_the_library(ray_local, tiny_bert, tmp_path):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    rows = _rows()
    outcome = train(_config(tiny_bert, tmp_path, rows, drop_unrankable=True))
    assert outcome.metrics["eval_queries_left_out"] == {"single_candidate": 2, "without_positive": 1}
    assert outcome.metrics["train"]["eval_pairs"] == len(rows) - 5
    kept = [r for r in rows if r["query_id"] not in ("q50", "q51", "q60")]
    samples = []
    for query_id in dict.fromkeys(r["query_id"] for r in kept):
        mine = [r for r in kept if r["query_id"] == query_id]
        samples.append(
            {
                "query": mine[0]["sentence_0"],
                "positive": [r["sentence_1"] for r in mine if r["label"]],
                "negative": [r["sentence_1"] for r in mine if not r["label"]],
            }
        )
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, name="eval")
    expected = evaluator(CrossEncoder(outcome.output_dir))
    reported = outcome.metrics["final"]
    for key in ("eval_map", "eval_mrr@10", "eval_ndcg@10"):
        assert reported[key] == pytest.approx(expected[key], abs=1e-6), key
    card = (Path(outcome.output_dir) / "README.md").read_text(encoding="utf-8")
    assert "3 unrankable queries left out (2 with a single candidate, 1 without a positive" in card
