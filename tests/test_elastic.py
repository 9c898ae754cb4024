"""Runs on changing numbers of workers (elastic runs on spot capacity): the planned global batch
kept on any worker count of the range, a run continued on another number of workers training the
rest of its epoch exactly once, and (slow, on the two-node local cluster) a run that loses a node,
trains on, and grows back when the node returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import base_config
from test_faults import assert_every_pair_once_per_epoch, read_audit, sessions_in_order, trained_per_epoch
from tiny import synthetic_pairs, write_jsonl

from rerank_ray.config import Config
from rerank_ray.errors import ConfigError
from rerank_ray.run.driver import train
from rerank_ray.training.faults import FAULTS_ENV
from rerank_ray.training.plan import TrainPlan, rows_multiple

BASE = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}


def _config(**scaling_and_train) -> Config:
    train = {
        k: v for k, v in scaling_and_train.items() if k in ("per_device_batch_size", "gradient_accumulation_steps")
    }
    scaling = {k: v for k, v in scaling_and_train.items() if k not in train}
    return Config.from_dict({**BASE, "train": train, "scaling": scaling})


@pytest.mark.parametrize(
    ("settings", "counts"),
    [
        ({"num_workers": 2, "min_workers": 1, "per_device_batch_size": 8}, [1, 2]),
        ({"num_workers": 4, "min_workers": 1, "per_device_batch_size": 6}, [1, 2, 3, 4]),
        ({"num_workers": 4, "min_workers": 3, "per_device_batch_size": 3, "gradient_accumulation_steps": 4}, [3, 4]),
    ],
)
def test_every_worker_count_of_the_range_takes_the_planned_global_batch_and_steps(settings, counts):
    config = _config(**settings)
    multiple = rows_multiple(config)
    assert all(multiple % w == 0 for w in counts)
    rows = 1003 + (-1003) % multiple
    plan = TrainPlan.build(config, 1003, rows, [], 64)
    planned = config.train.per_device_batch_size * config.train.gradient_accumulation_steps * config.scaling.num_workers
    for world in counts:
        layout = plan.layout(config, world)
        assert layout.batch_size * layout.accumulation * world == planned
        assert -(-layout.batches_per_epoch // layout.accumulation) == plan.steps_per_epoch
        assert layout.rows_per_worker * world == rows


def test_a_range_whose_worker_counts_do_not_split_the_global_batch_is_refused():
    with pytest.raises(ConfigError, match=r"\[3\] do not divide it: make it a multiple of 12"):
        _config(num_workers=4, min_workers=1, per_device_batch_size=8)
    with pytest.raises(ConfigError, match="scaling.min_workers must be between 1 and scaling.num_workers"):
        _config(num_workers=2, min_workers=3)


@pytest.mark.ray
def test_a_run_continued_on_fewer_workers_trains_the_rest_of_its_epoch_once(
    ray_local, tiny_bert, tmp_path, monkeypatch
):
    """An elastic run of 1 to 2 workers trains on 2, loses rank 1 after step 7 with no restart
    allowed, and is continued (``--resume``) on 1 worker: the checkpoint of step 4 restores there,
    that worker takes the planned global batch (8 x 2 accumulated), and epoch 1 trains exactly the
    pairs it had left; the plan (13 steps an epoch) is the one the run started with."""
    rows = synthetic_pairs(203, seed=1)
    data = write_jsonl(rows, tmp_path / "data" / "train.jsonl")
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": "step-7", "at": "step", "rank": 1, "step": 7}]}
    monkeypatch.setenv(FAULTS_ENV, json.dumps(spec))
    raw = base_config(
        tiny_bert,
        data,
        None,
        tmp_path / "runs",
        data={"id_column": "pair_id"},
        train={"epochs": 2, "learning_rate": 5e-3, "logging_steps": 4},
        scaling={"num_workers": 2, "min_workers": 1},
        run={"storage_path": str(tmp_path / "runs"), "name": "elastic", "audit": True, "checkpoint_steps": 4,
             "max_failures": 0},
    )  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 - the lost worker ends the run (no restart allowed)
        train(Config.from_dict(raw))
    monkeypatch.delenv(FAULTS_ENV)
    raw["scaling"] = {"num_workers": 2, "min_workers": 1, "cpus_per_worker": 1}
    raw["run"]["resume"] = True
    # One worker now: the range's least (Ray Train's elastic start on what fits is shown on the cluster).
    resumed = Config.from_dict(raw)
    resumed.scaling.num_workers, resumed.scaling.min_workers = 1, None
    resumed.train.gradient_accumulation_steps = 2
    outcome = train(resumed)
    records = read_audit(Path(outcome.run_dir))
    sessions = sessions_in_order(records)
    assert [restored for _, restored in sessions] == [None, 4]
    assert {r["rank"] for r in records if r["session"] == sessions[1][0]} == {0}  # one worker after
    assert_every_pair_once_per_epoch(trained_per_epoch(records, sessions), 2, 203)
    assert outcome.metrics["train"]["steps"] == 26
