"""Grouped and listwise training on the real Ray Train loop (issue 14): a query's documents stay
together, every query is trained once per epoch across the workers, the ranks' weights agree,
and the shape follows from the columns."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import base_config
from test_faults import read_audit, sessions_in_order, trained_per_epoch
from test_train import _audit, _weights, rec_list
from tiny import judged_lists, reranking_pairs, tuples, write_beir, write_jsonl, write_parquet

from rerank_ray.config import Config, load_config
from rerank_ray.errors import ConfigError
from rerank_ray.run.driver import inspect_data, train
from rerank_ray.training.faults import FAULTS_ENV

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"


def _queries_per_epoch(audit: dict[int, list[dict]], epochs: int) -> list[Counter]:
    return [
        Counter(
            pid for recs in audit.values() for rec in rec_list(recs, "pairs") if rec["epoch"] == e for pid in rec["ids"]
        )
        for e in range(epochs)
    ]


def _shipped(name: str, model: Path, train_file: Path, beir: Path, tmp_path: Path, *overrides: str) -> Config:
    """A config of jobs/configs/ as shipped, with a tiny model, tiny data and this test's storage."""
    return load_config(
        CONFIGS / name,
        [
            f"model.name_or_path={model}",
            "model.max_length=null",
            f"data.train={train_file}",
            f"eval.beir={beir}",
            "eval.beir_split=test",
            f"run.storage_path={tmp_path / 'runs'}",
            f"run.name={name.removesuffix('.yaml')}",
            "data.id_column=pair_id",
            "run.audit=true",
            *overrides,
        ],
    )


@pytest.mark.ray
@pytest.mark.slow  # about 60 s; the restore itself is tested on pairs in the default set (test_faults.py)
def test_the_listwise_config_trains_every_query_once_through_a_killed_worker(
    ray_local, tiny_bert, tmp_path, monkeypatch
):
    """jobs/configs/dbpedia-listwise.yaml (LambdaLoss on judged lists) on a tiny model; rank 1 is
    killed (SIGKILL) right after step 7, 2 steps into epoch 2: the restart restores step 6 and the
    rest of the epoch trains exactly the queries it had not trained (tests/test_faults.py)."""
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": "step-7", "at": "step", "rank": 1, "step": 7}]}
    monkeypatch.setenv(FAULTS_ENV, json.dumps(spec))
    train_file = write_parquet(judged_lists(37, seed=1), tmp_path / "data" / "lists.parquet")
    beir = write_beir(reranking_pairs(12, seed=2, start=100), tmp_path / "data" / "beir")
    config = _shipped(
        "dbpedia-listwise.yaml",
        tiny_bert,
        train_file,
        beir,
        tmp_path,
        "train.per_device_batch_size=4",
        "train.learning_rate=5e-3",
        "data.max_docs_per_query=4",
        "eval.steps=6",
        "run.checkpoint_steps=2",
        "run.max_failures=1",
    )
    outcome = train(config)
    assert {p.name for p in faults_dir.iterdir()} == {"step-7"}
    records = read_audit(Path(outcome.run_dir))
    sessions = sessions_in_order(records)
    assert [restored for _, restored in sessions] == [None, 6]
    counts = trained_per_epoch(records, sessions)
    assert sorted(counts) == [0, 1]
    for epoch, seen in counts.items():
        assert set(seen) == {f"q{i}" for i in range(37)} and max(seen.values()) == 1, epoch
    audit = _audit(outcome.run_dir)
    digests = {rank: [(r["step"], r["digest"]) for r in rec_list(recs, "params")] for rank, recs in audit.items()}
    assert sorted(digests) == [0, 1] and digests[0] == digests[1] and len(digests[0]) >= 2
    # 37 queries -> 38 rows (one filler) -> 19 per worker -> 5 batches of 4 queries per epoch.
    assert outcome.metrics["train"]["steps"] == 10
    history = [e for e in outcome.metrics["history"] if "dev_ndcg@10" in e]
    assert history[-1]["dev_ndcg@10"] > history[0]["dev_ndcg@10"]
    card = (Path(outcome.output_dir) / "README.md").read_text(encoding="utf-8")
    assert "loss:LambdaLoss" in card and "- Loss: `LambdaLoss` with `{'k': 10}`" in card
    assert "37 queries with a list of labelled documents, batched by query" in card
    assert "at most 4 documents each, drawn per epoch" in card


@pytest.mark.ray
def test_the_grouped_config_trains_with_in_batch_negatives_on_parquet_tuples(ray_local, tiny_bert, tmp_path):
    """jobs/configs/dbpedia-grouped.yaml (MultipleNegativesRankingLoss on (query, positive, 3
    negatives) rows, 3 documents drawn per epoch), here with its cached variant (the gradient cache
    in chunks of 5 pairs, under DDP's no_sync but for the last chunk): every query once per
    epoch, ranks equal, the loss falls."""
    train_file = write_parquet(tuples(29, negatives=3, seed=3), tmp_path / "data" / "tuples.parquet")
    beir = write_beir(reranking_pairs(8, seed=2, start=100), tmp_path / "data" / "beir")
    config = _shipped(
        "dbpedia-grouped.yaml",
        tiny_bert,
        train_file,
        beir,
        tmp_path,
        "data.max_docs_per_query=3",
        "train.loss=CachedMultipleNegativesRankingLoss",
        "train.loss_kwargs={num_negatives: 2, mini_batch_size: 5}",
        "train.epochs=3",
        "train.logging_steps=1",
        "train.learning_rate=3e-3",
        "eval.before_training=false",
    )
    outcome = train(config)
    audit = _audit(outcome.run_dir)
    for epoch, seen in enumerate(_queries_per_epoch(audit, 3)):
        assert set(seen) == {f"q{i}" for i in range(29)} and max(seen.values()) == 1, epoch
    digests = {rank: [r["digest"] for r in rec_list(recs, "params")] for rank, recs in audit.items()}
    assert digests[0] == digests[1]
    losses = [e["loss"] for e in outcome.metrics["history"] if "loss" in e]
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses


@pytest.mark.ray
@pytest.mark.slow  # MarginMSELoss's equality with the library is in the default set; a run of 80 s
def test_the_distillation_config_learns_the_teachers_margins(ray_local, tiny_bert, tmp_path):
    """jobs/configs/dbpedia-distill.yaml (MarginMSELoss on tuples with teacher scores)."""
    train_file = write_jsonl(tuples(32, negatives=2, seed=4, scores=True), tmp_path / "data" / "scored.jsonl")
    beir = write_beir(reranking_pairs(6, seed=2, start=100), tmp_path / "data" / "beir")
    config = _shipped(
        "dbpedia-distill.yaml",
        tiny_bert,
        train_file,
        beir,
        tmp_path,
        "train.epochs=5",
        "train.per_device_batch_size=4",
        "train.logging_steps=2",
        "train.learning_rate=5e-3",
        "run.audit=false",
        "eval.before_training=false",
    )
    outcome = train(config)
    losses = [e["loss"] for e in outcome.metrics["history"] if "loss" in e]
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses


@pytest.mark.ray
@pytest.mark.slow  # the gradients' equality is in the default set (tests/test_group_losses.py); 2 runs, 100 s
def test_one_worker_batch_b_matches_two_workers_batch_half_b_for_a_listwise_loss(ray_local, tiny_bert, tmp_path):
    """ListNetLoss is a mean over queries: the whole set in one global batch per step gives the
    same weights however the queries are split across workers (see tests/test_train.py). A
    listwise loss hardly changes when every logit of a query shifts alike, so the head's bias gets
    a gradient of float noise (5e-9 here), which Adam turns into steps of the learning rate: it is
    left out of the comparison (tests/test_group_losses.py compares gradients exactly)."""
    data = write_jsonl(judged_lists(15, seed=4), tmp_path / "lists.jsonl")
    common = {
        "loss": "ListNetLoss",
        "loss_kwargs": {"activation_fn": "Sigmoid"},
        "epochs": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "seed": 7,
    }
    one = base_config(tiny_bert, data, None, tmp_path / "runs", train={**common, "per_device_batch_size": 16})
    one["scaling"]["num_workers"] = 1
    one["run"]["name"] = "one"
    two = base_config(tiny_bert, data, None, tmp_path / "runs", train={**common, "per_device_batch_size": 8})
    two["run"]["name"] = "two"
    w1 = _weights(train(Config.from_dict(one)).output_dir)
    w2 = _weights(train(Config.from_dict(two)).output_dir)
    compared = [key for key in w1 if key != "classifier.bias"]
    assert len(compared) == len(w1) - 1
    for key in compared:
        np.testing.assert_allclose(w1[key], w2[key], atol=2e-5, rtol=1e-4, err_msg=key)


def test_a_loss_given_a_shape_it_cannot_take_is_refused_before_ray(tiny_bert, tmp_path):
    lists = write_jsonl(judged_lists(5), tmp_path / "lists.jsonl")
    raw = base_config(tiny_bert, lists, None, tmp_path / "runs", train={"loss": "MultipleNegativesRankingLoss"})
    with pytest.raises(ConfigError) as refused:
        inspect_data(Config.from_dict(raw))
    message = str(refused.value)
    assert "MultipleNegativesRankingLoss trains on the n-tuple shape" in message
    assert "has the list shape" in message and str(lists) in message and "LambdaLoss" in message
    scores_needed = base_config(
        tiny_bert,
        write_jsonl(tuples(4), tmp_path / "t.jsonl"),
        None,
        tmp_path / "runs",
        train={"loss": "MarginMSELoss"},
    )
    with pytest.raises(ConfigError, match="MarginMSELoss needs teacher scores in a label column"):
        inspect_data(Config.from_dict(scores_needed))
    pairs = base_config(tiny_bert, lists, None, tmp_path / "runs")  # BCE on lists
    with pytest.raises(ConfigError, match="BinaryCrossEntropyLoss trains on the pairs shape"):
        inspect_data(Config.from_dict(pairs))


def test_the_shape_follows_from_the_columns(tiny_bert, tmp_path):
    rows = [{"q": r["query"], "docs": r["documents"], "grades": r["labels"]} for r in judged_lists(4)]
    mapped = write_jsonl(rows, tmp_path / "mapped.jsonl")
    raw = base_config(
        tiny_bert,
        mapped,
        None,
        tmp_path / "runs",
        data={"columns": {"query": "q", "documents": "docs", "labels": "grades"}},
        train={"loss": "ListMLELoss"},
    )
    shape = inspect_data(Config.from_dict(raw))["train"].checker.shape
    assert shape.name == "list"
    triplets = write_jsonl([{"query": "a", "positive": "b", "negative": "c"}], tmp_path / "triplets.jsonl")
    raw = base_config(tiny_bert, triplets, None, tmp_path / "runs", train={"loss": "MultipleNegativesRankingLoss"})
    shape = inspect_data(Config.from_dict(raw))["train"].checker.shape
    assert (shape.name, shape.text_columns) == ("n-tuple", ("query", "positive", "negative"))
    assert json.loads(json.dumps(shape.describe())) == "(query, positive, 1 negative) tuples"
