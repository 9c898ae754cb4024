"""The real thing: Ray Train with 2 CPU workers, the real loop, a tiny BERT."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import base_config
from tiny import synthetic_pairs, write_jsonl

from rerank_ray.config import Config
from rerank_ray.run.driver import train

pytestmark = pytest.mark.ray


def _audit(run_dir: str) -> dict[int, list[dict]]:
    records = {}
    for path in sorted(Path(run_dir, "audit").glob("rank*.jsonl")):
        rank = int(path.stem.removeprefix("rank"))
        records[rank] = [json.loads(line) for line in path.read_text().splitlines()]
    return records


def test_two_workers_train_every_pair_once_and_export_what_they_report(ray_local, tiny_bert, pair_files, tmp_path):
    # Length grouping with 2 micro-batches a step (batching.window_order's strata): the ordering
    # most likely to lose or repeat a pair; every other end-to-end test trains ungrouped.
    raw = base_config(
        tiny_bert,
        pair_files["train"],
        pair_files["eval"],
        tmp_path / "runs",
        data={"id_column": "pair_id", "group_by_length": True, "window_batches": 3},
        train={"epochs": 3, "learning_rate": 5e-3, "per_device_batch_size": 4, "gradient_accumulation_steps": 2},
        run={"storage_path": str(tmp_path / "runs"), "name": "e2e", "audit": True},
    )
    outcome = train(Config.from_dict(raw))
    audit = _audit(outcome.run_dir)
    assert sorted(audit) == [0, 1]

    # Every training pair exactly once per epoch, across both workers.
    all_ids = {f"p{i}" for i in range(203)}
    for epoch in (0, 1, 2):
        seen = Counter(
            pid
            for rank in audit.values()
            for rec in rec_list(rank, "pairs")
            if rec["epoch"] == epoch
            for pid in rec["ids"]
        )
        assert set(seen) == all_ids, f"epoch {epoch}: missing {sorted(all_ids - set(seen))[:5]}"
        assert max(seen.values()) == 1, f"epoch {epoch}: pairs seen twice: {[p for p, c in seen.items() if c > 1][:5]}"
    # Both workers really took part, in lockstep: the same steps on each.
    steps = {rank: sorted({rec["step"] for rec in rec_list(recs, "pairs")}) for rank, recs in audit.items()}
    assert steps[0] == steps[1] and len(steps[0]) == outcome.metrics["train"]["steps"]

    # Identical parameters on both ranks at every checkpoint.
    digests = {rank: [(r["step"], r["digest"]) for r in rec_list(recs, "params")] for rank, recs in audit.items()}
    assert digests[0] == digests[1] and len(digests[0]) >= 2

    # The workers' own measurements reach metrics.json (the benchmarks read them).
    resources = outcome.metrics["resources"]
    assert len(resources["worker_peak_rss_mib"]) == 2 and min(resources["worker_peak_rss_mib"]) > 50
    assert resources["driver_peak_rss_mib"] > 50
    assert resources["worker_peak_cuda_allocated_mib"] == [None, None]  # CPU workers: no CUDA figure
    assert 0 < resources["first_step_seconds_since_worker_start"] < resources["first_step_seconds_since_driver_start"]
    assert resources["data_wait_seconds"] >= 0
    # The epochs' streams are chained in the prefetch thread: one wait figure per epoch, none of
    # them more than the whole run's.
    per_epoch = resources["data_wait_seconds_per_epoch"]
    assert len(per_epoch) == 3 and all(0 <= w <= resources["data_wait_seconds"] + 1e-6 for w in per_epoch)

    # The loss falls on the learnable task.
    losses = [e["loss"] for e in outcome.metrics["history"] if "loss" in e]
    assert losses[-1] < 0.5 * losses[0], losses

    # Metrics and checkpoints are in the run's storage.
    run_dir = Path(outcome.run_dir)
    # The last run.num_checkpoints_to_keep (2) plus the best are kept whole; the others are emptied
    # down to a tombstone (Ray's run snapshot still lists their folders).
    folders = sorted(run_dir.glob("checkpoint-*"))
    checkpoints = [c for c in folders if (c / "checkpoint.json").is_file()]
    assert 2 <= len(checkpoints) <= 3 and all((c / "model" / "config.json").is_file() for c in checkpoints)
    assert all((c / "pruned.json").is_file() and not (c / "model").exists() for c in folders if c not in checkpoints)
    headline = outcome.metrics["headline_metric"]
    assert headline == "eval_average_precision"

    # The exported folder loads, and its scores reproduce the reported metric.
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    out = Path(outcome.output_dir)
    for name in ("README.md", "metrics.json", "training_curve.png"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    model = CrossEncoder(str(out))
    rows = [json.loads(line) for line in Path(pair_files["eval"]).read_text().splitlines()]
    evaluator = CrossEncoderClassificationEvaluator(
        [[r["sentence_0"], r["sentence_1"]] for r in rows], [int(r["label"]) for r in rows], name="eval"
    )
    recomputed = evaluator(model)
    reported = json.loads((out / "metrics.json").read_text())["final"]
    assert recomputed[headline] == pytest.approx(reported[headline], abs=1e-6)
    assert recomputed["eval_accuracy"] == pytest.approx(reported["eval_accuracy"], abs=1e-6)
    assert reported[headline] > 0.9  # it learned the task
    card = (out / "README.md").read_text()
    assert "**average_precision**" in card and "Distributed training (rerank-ray)" in card


def rec_list(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["kind"] == kind]


def _weights(folder: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    (path,) = Path(folder).glob("*.safetensors")
    return load_file(path)


@pytest.mark.parametrize(
    "accumulate",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # accumulation: the same invariant, 80 s more
    ids=["two-workers", "two-workers-vs-accumulation"],
)
def test_one_worker_batch_b_matches_two_workers_batch_half_b(ray_local, tiny_bert, tmp_path, accumulate):
    """The invariant that holds exactly: with the whole set in one global batch per epoch, each
    optimizer step sees the same pairs however they are split, and the loss is the mean over
    all real pairs (the filler row that evens 15 pairs out to 2 x 8 weighs 0). So the weights
    after 3 steps match up to float summation order. With several steps per epoch the global
    batches differ, because Ray's streaming split assigns rows to workers dynamically."""
    data = write_jsonl(synthetic_pairs(15, seed=3, with_id=False), tmp_path / "pairs.jsonl")
    common = {"epochs": 3, "learning_rate": 1e-3, "logging_steps": 1, "seed": 7}
    single = (
        {"per_device_batch_size": 8, "gradient_accumulation_steps": 2} if accumulate else {"per_device_batch_size": 16}
    )
    one = base_config(tiny_bert, data, None, tmp_path / "runs", train={**common, **single}, scaling={"num_workers": 1})
    one["run"]["name"] = "one"
    two = base_config(tiny_bert, data, None, tmp_path / "runs", train={**common, "per_device_batch_size": 8})
    two["run"]["name"] = "two"
    out_one = train(Config.from_dict(one))
    out_two = train(Config.from_dict(two))
    assert out_one.metrics["train"]["steps"] == out_two.metrics["train"]["steps"] == 3
    w1, w2 = _weights(out_one.output_dir), _weights(out_two.output_dir)
    assert w1.keys() == w2.keys()
    base = _weights_of_base(tiny_bert)
    moved = max(float(np.abs(w1[k] - base[k]).max()) for k in w1 if k in base)
    assert moved > 1e-3  # training really changed the weights
    for key in w1:
        np.testing.assert_allclose(w1[key], w2[key], atol=2e-5, rtol=1e-4, err_msg=key)


def _weights_of_base(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    raw = load_file(folder / "model.safetensors")
    return {k: v for k, v in raw.items()}


@pytest.mark.slow  # inductor compiles the forward and backward in C++: minutes on a busy 2-core machine
def test_torch_compile_reaches_the_weights_of_eager_training(ray_local, tiny_bert, tmp_path):
    data = write_jsonl(synthetic_pairs(15, seed=3, with_id=False), tmp_path / "pairs.jsonl")
    train_section = {"epochs": 3, "learning_rate": 1e-3, "logging_steps": 1, "seed": 7, "per_device_batch_size": 8}
    outputs = {}
    for compiled in (False, True):
        raw = base_config(
            tiny_bert,
            data,
            None,
            tmp_path / "runs",
            train={**train_section, "torch_compile": compiled},
            scaling={"num_workers": 1},
        )
        raw["run"]["name"] = f"compiled-{compiled}"
        outputs[compiled] = _weights(train(Config.from_dict(raw)).output_dir)
    for key in outputs[False]:
        np.testing.assert_allclose(outputs[True][key], outputs[False][key], atol=1e-4, rtol=1e-3, err_msg=key)


def test_early_stopping_ends_the_run_where_the_headline_stops_gaining(ray_local, tiny_bert, pair_files, tmp_path):
    """transformers' EarlyStoppingCallback rule: with patience 1 and a least gain no score can make,
    the first trained evaluation (step 2) sets the best and the next (step 4) ends the run, on both
    ranks alike; metrics.json and the card say where."""
    raw = base_config(
        tiny_bert,
        pair_files["train"],
        pair_files["eval"],
        tmp_path / "runs",
        eval={"steps": 2, "early_stopping_patience": 1, "early_stopping_min_delta": 1.0},
        run={"storage_path": str(tmp_path / "runs"), "name": "early"},
    )
    outcome = train(Config.from_dict(raw))
    assert outcome.metrics["early_stopping"] == {
        "stopped_at_step": 4,
        "stopped_at_epoch": pytest.approx(4 / 13),
        "patience": 1,
        "min_delta": 1.0,
    }
    assert outcome.metrics["train"]["steps"] == 26  # the plan (and the schedule) were for 2 epochs
    assert max(e["step"] for e in outcome.metrics["history"]) == 4
    card = (Path(outcome.output_dir) / "README.md").read_text(encoding="utf-8")
    assert "- Early stopping: stopped at step 4 (epoch 0.31)" in card
