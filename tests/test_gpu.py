"""The worker on one GPU (issue 13): every collective through a real NCCL process group.

NCCL takes CUDA tensors only, and refuses two ranks on one GPU; with one worker the collectives
are skipped, so a one-GPU run would never show a CPU tensor handed to NCCL. The test hook
``force_collectives`` (rerank_ray/training/faults.py) makes the worker call each of them with
its group of one: the epoch-end tallies, the replica check, the checkpoint gather, the resource
figures, the stop check. ``-m gpu`` runs it on CUDA (benchmarks/gpu.sh does); the CPU variant
(gloo) is slow-marked and shows the hook reaches every collective.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import base_config

from rerank_ray.config import Config
from rerank_ray.run.driver import train
from rerank_ray.training.faults import FAULTS_ENV

pytestmark = pytest.mark.ray


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cuda", marks=pytest.mark.gpu),
        pytest.param("cpu", marks=pytest.mark.slow),
    ],
)
def test_every_collective_of_the_worker_through_a_real_group_of_one(
    device, ray_local, tiny_bert, pair_files, tmp_path, monkeypatch
):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"dir": str(tmp_path), "faults": [], "force_collectives": True}))
    raw = base_config(
        tiny_bert,
        pair_files["train"],
        pair_files["eval"],
        tmp_path / "runs",
        train={"epochs": 2, "per_device_batch_size": 16, "precision": "bf16" if device == "cuda" else "fp32"},
        scaling={"num_workers": 1, "use_gpu": device == "cuda"},
        run={"storage_path": str(tmp_path / "runs"), "name": "group-of-one", "checkpoint_steps": 5},
    )
    outcome = train(Config.from_dict(raw))
    metrics = outcome.metrics
    assert metrics["train"]["steps"] == 2 * 13  # 203 pairs in batches of 16, 2 epochs
    assert metrics["final"][metrics["headline_metric"]] > 0.5
    assert (Path(outcome.run_dir) / "model" / "config.json").is_file()
