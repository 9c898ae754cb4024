"""A mixture of training sets (issue 29, parts 1-2): training sources with their own loss, each
optimizer step one set's batch on every worker, ``data.sampling`` proportional or round-robin.
The invariants: every row of every set once per epoch (proportional), through a killed worker
too; the same weights on every rank; one worker at batch B trains the weights of two at B/2."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_faults import read_audit, sessions_in_order, trained_per_epoch
from test_train import _audit, _weights, rec_list
from tiny import graded_pairs, synthetic_pairs, tuples, write_jsonl, write_parquet

from rerank_ray.config import Config
from rerank_ray.errors import ConfigError
from rerank_ray.training.faults import FAULTS_ENV
from rerank_ray.training.mixture import batches_done, schedule
from rerank_ray.training.plan import MixPlan, TrainPlan


def _mixture_config(sources: list, **sections) -> Config:
    raw = {"model": {"name_or_path": "m"}, **sections}
    raw["data"] = {**raw.get("data", {}), "train": sources}
    return Config.from_dict(raw)


def test_sources_with_a_loss_are_a_mixture_each_with_its_own_settings():
    config = _mixture_config(
        [
            {"path": "judged.parquet", "loss": "BinaryCrossEntropyLoss", "label_scale": 0.5},
            {"path": "mined/", "columns": {"query": "q"}, "loss": "MultipleNegativesRankingLoss", "name": "mined"},
            "more.jsonl",
        ],
        train={"loss": "MSELoss", "loss_kwargs": {}},
    )
    judged, mined, more = config.train_sets()
    assert (judged.dataset, judged.name, judged.source, judged.label_scale) == (
        "train",
        "judged",
        "judged.parquet",
        0.5,
    )
    assert (mined.dataset, mined.source, mined.loss) == (
        "train_1",
        {"path": "mined/", "columns": {"query": "q"}},
        "MultipleNegativesRankingLoss",
    )
    assert (more.name, more.loss) == ("more", "MSELoss")  # no loss of its own: train.loss
    view = config.for_train_set(mined)
    assert (view.data.train, view.train.loss, view.data.name) == ([mined.source], mined.loss, "mined")
    assert _mixture_config(["a.jsonl", {"path": "b.jsonl"}]).train_sets() == []  # no loss named: one set


@pytest.mark.parametrize(
    ("sources", "sections", "message"),
    [
        ([{"path": "a/x.jsonl", "loss": "MSELoss"}, {"path": "b/x.jsonl", "loss": "MSELoss"}], {}, "name 'x'"),
        ([{"path": "a.jsonl", "loss": "NoSuchLoss"}], {}, r"data.train\[0\] \(a\): .*NoSuchLoss"),
        ([{"path": "a.jsonl", "loss": "MSELoss", "label_scale": "x"}], {}, r"data.train\[0\].label_scale must be"),
        ([{"path": "a.jsonl", "loss": "MSELoss"}], {"scaling": {"min_workers": 1}}, "scaling.min_workers to null"),
        ([{"path": "a.jsonl", "loss": "MSELoss", "cols": {}}], {}, r"data.train\[0\]: a path mapping takes"),
    ],
)
def test_a_wrong_mixture_fails_on_load(sources, sections, message):
    with pytest.raises(ConfigError, match=message):
        _mixture_config(sources, **sections)


def _plan(config: Config, rows: list[int]) -> TrainPlan:
    parts = [MixPlan(f"train_{i}" if i else "train", f"s{i}", n, n, "pairs") for i, n in enumerate(rows)]
    return TrainPlan.build(config, sum(rows), sum(rows), [], 32, mixture=parts)


def test_proportional_takes_every_step_of_every_set_in_one_order_for_every_rank():
    config = _mixture_config(
        ["a.jsonl", {"path": "b.jsonl", "loss": "MSELoss"}],
        train={"per_device_batch_size": 4, "gradient_accumulation_steps": 2},
        scaling={"num_workers": 2},
    )
    plan = _plan(config, [40, 18])  # 20 and 9 rows per worker: 5 and 3 batches, 3 and 2 steps
    assert [(p.batches, p.steps, p.used_batches) for p in plan.mixture] == [(5, 3, 5), (3, 2, 3)]
    assert (plan.steps_per_epoch, plan.layout(config, 2).batches_per_epoch) == (5, 8)
    order = schedule(plan, seed=7, epoch=0)
    assert Counter(order.tolist()) == {0: 3, 1: 2}
    assert np.array_equal(order, schedule(plan, seed=7, epoch=0))  # a function of seed and epoch alone
    assert any(not np.array_equal(order, schedule(plan, seed=7, epoch=e)) for e in range(1, 6))
    assert batches_done(plan, order, 5, 2) == [5, 3]  # the last step of each takes what is left


def test_round_robin_takes_turns_until_the_smallest_set_is_done():
    config = _mixture_config(
        ["a.jsonl", {"path": "b.jsonl", "loss": "MSELoss"}],
        data={"sampling": "round_robin"},
        train={"per_device_batch_size": 4},
        scaling={"num_workers": 2},
    )
    plan = _plan(config, [40, 18])
    assert [(p.steps, p.used_steps, p.used_batches) for p in plan.mixture] == [(5, 3, 3), (3, 3, 3)]
    assert schedule(plan, seed=1, epoch=0).tolist() == [0, 1, 0, 1, 0, 1]


def _mixture_run(tiny_bert, tmp_path, name: str, **sections) -> dict:
    from conftest import base_config

    pairs = write_jsonl(synthetic_pairs(43, seed=1), tmp_path / "data" / "judged.jsonl")
    mined = write_parquet(tuples(21, negatives=3, seed=2), tmp_path / "data" / "mined.parquet")
    raw = base_config(
        tiny_bert,
        [str(pairs)],
        None,
        tmp_path / "runs",
        data={"id_column": "pair_id", "max_docs_per_query": 3},
        train={"epochs": 2, "per_device_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 2},
        run={"name": name, "audit": True, "checkpoint_steps": 2},
    )
    raw["data"]["train"] = [
        {"path": str(pairs), "loss": "BinaryCrossEntropyLoss"},
        {"path": str(mined), "loss": "MultipleNegativesRankingLoss", "loss_kwargs": {"num_negatives": 2}},
    ]
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.mark.ray
def test_a_mixture_trains_every_row_of_each_set_once_per_epoch_through_a_killed_worker(
    ray_local, tiny_bert, tmp_path, monkeypatch
):
    """43 judged pairs (BCE) and 21 mined tuples (MNRL), 2 workers, batch 4: 6 + 3 steps per
    epoch in a seeded order. Rank 1 is killed right after step 12 (3 steps into epoch 2); the
    restart restores step 12's checkpoint and trains, of each set, exactly the rows the epoch had
    not trained. The ranks hold the same weights at every checkpoint; each set's loss is
    reported; the card lists both sets with their losses."""
    from rerank_ray.run.driver import train

    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": "step-13", "at": "step", "rank": 1, "step": 13}]}
    monkeypatch.setenv(FAULTS_ENV, json.dumps(spec))
    # Uploads in the step thread: the checkpoint of step 12 is complete before step 13's fault.
    raw = _mixture_run(
        tiny_bert,
        tmp_path,
        "mixed",
        run={"max_failures": 1, "checkpoint_upload": "sync", "num_checkpoints_to_keep": 20},
    )
    outcome = train(Config.from_dict(raw))
    assert {p.name for p in faults_dir.iterdir()} == {"step-13"}
    assert outcome.metrics["train"]["steps"] == 18
    records = read_audit(Path(outcome.run_dir))
    sessions = sessions_in_order(records)
    assert [restored for _, restored in sessions] == [None, 12]
    counts = trained_per_epoch(records, sessions)
    expected = {f"p{i}" for i in range(43)} | {f"q{i}" for i in range(21)}
    for epoch in (0, 1):
        seen = counts[epoch]
        assert set(seen) == expected and max(seen.values()) == 1, (epoch, [k for k, n in seen.items() if n > 1])
    audit = _audit(outcome.run_dir)
    digests = {rank: [(r["step"], r["digest"]) for r in rec_list(recs, "params")] for rank, recs in audit.items()}
    assert sorted(digests) == [0, 1] and digests[0] == digests[1] and len(digests[0]) >= 4
    logged = [e for e in outcome.metrics["history"] if "loss" in e]
    assert any("loss_judged" in e for e in logged) and any("loss_mined" in e for e in logged)
    card = (Path(outcome.output_dir) / "README.md").read_text(encoding="utf-8")
    assert "loss:BinaryCrossEntropyLoss" in card and "loss:MultipleNegativesRankingLoss" in card
    assert "#### judged" in card and "#### mined" in card
    assert "- Mixture (proportional sampling, one set per step on every worker): `judged` (43 rows" in card


@pytest.mark.ray
def test_round_robin_leaves_the_rest_of_the_larger_set_out_of_each_epoch(ray_local, tiny_bert, tmp_path):
    """Round-robin: 3 steps of each set per epoch (the tuples' 3), the pairs' other 3 steps read
    and left out; no row trained twice in an epoch, and the next epoch starts afresh."""
    from rerank_ray.run.driver import train

    raw = _mixture_run(tiny_bert, tmp_path, "round", data={"sampling": "round_robin"})
    outcome = train(Config.from_dict(raw))
    assert outcome.metrics["train"]["steps"] == 12
    records = read_audit(Path(outcome.run_dir))
    counts = trained_per_epoch(records, sessions_in_order(records))
    for epoch in (0, 1):
        seen = counts[epoch]
        assert max(seen.values()) == 1
        assert {k for k in seen if k.startswith("q")} == {f"q{i}" for i in range(21)}
        # 3 of each worker's 6 batches of pairs (one of them may be its short batch of 2).
        assert 18 <= len([k for k in seen if k.startswith("p")]) <= 24


@pytest.mark.ray
@pytest.mark.slow  # two runs, about 70 s; the schedule itself is in the default set
def test_one_worker_batch_b_matches_two_workers_batch_half_b_for_a_mixture(ray_local, tiny_bert, tmp_path):
    """Two pair sets with their own losses (BCE on binary labels, MSE on graded ones), each one
    global batch per epoch: every step sees the same rows however they are split, so 1 worker at
    batch 16 and 2 at batch 8 end with the same weights (as for a single set, test_train.py)."""
    from conftest import base_config

    from rerank_ray.run.driver import train

    binary = write_jsonl(synthetic_pairs(15, seed=3, with_id=False), tmp_path / "binary.jsonl")
    graded = write_jsonl(graded_pairs(13, seed=4), tmp_path / "graded.jsonl")
    weights = {}
    for workers, batch in ((1, 16), (2, 8)):
        raw = base_config(
            tiny_bert,
            binary,
            None,
            tmp_path / "runs",
            train={"epochs": 3, "learning_rate": 1e-3, "logging_steps": 1, "seed": 7, "per_device_batch_size": batch},
            scaling={"num_workers": workers},
            run={"name": f"w{workers}"},
        )
        raw["data"]["train"] = [
            {"path": str(binary), "loss": "BinaryCrossEntropyLoss"},
            {"path": str(graded), "loss": "MSELoss"},
        ]
        outcome = train(Config.from_dict(raw))
        assert outcome.metrics["train"]["steps"] == 6
        weights[workers] = _weights(outcome.output_dir)
    for key in weights[1]:
        np.testing.assert_allclose(weights[1][key], weights[2][key], atol=2e-5, rtol=1e-4, err_msg=key)
