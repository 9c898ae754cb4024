"""The worker's collectives: all in one module, tensors placed on the worker's device, real gloo
collectives across two processes; and the batch-count invariant checked before a batch beyond
the plan reaches a collective."""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rerank_ray.training.batching import optimizer_steps
from rerank_ray.training.collectives import Collectives

PACKAGE = Path(__file__).resolve().parents[1] / "rerank_ray"
HOME = PACKAGE / "training" / "collectives.py"


#: torch.distributed's sharding APIs (FSDP2, device meshes, distributed checkpoints).
SHARDING = ("torch.distributed.fsdp", "torch.distributed.device_mesh", "torch.distributed.checkpoint")


def test_only_the_collectives_module_calls_torch_distributed():
    """NCCL takes CUDA tensors only: a collective called elsewhere with a CPU tensor (a count, a
    tally) would end a multi-GPU run that a CPU or one-GPU test never fails. So every one goes
    through Collectives, which places its tensors. FSDP2, its device mesh and the distributed
    checkpoint (training/sharding.py) place their own tensors: their modules are allowed."""
    elsewhere = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == HOME:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Attribute) and node.attr == "distributed":
                names = ["torch.distributed"]
            if any(name.startswith("torch.distributed") and not name.startswith(SHARDING) for name in names):
                elsewhere.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert elsewhere == [], "torch.distributed used outside training/collectives.py: " + ", ".join(elsewhere)


def test_place_puts_values_on_the_device_as_tensors():
    collectives = Collectives(torch.device("cpu"), world_size=1)
    placed = collectives.place(np.array([1, 2, 3], dtype=np.int64), dtype=torch.float64)
    assert placed.device.type == "cpu" and placed.dtype == torch.float64 and placed.tolist() == [1.0, 2.0, 3.0]
    assert collectives.sum(4.0).item() == 4.0  # one worker: the identity, no process group needed
    assert collectives.gather_objects("x") == ["x"] and collectives.broadcast_object({"a": 1}) == {"a": 1}


TWO_RANKS = """
import json, os, sys

import numpy as np
import torch
import torch.multiprocessing as mp

from rerank_ray.training.collectives import Collectives


def rank_main(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        collectives = Collectives(torch.device("cpu"), world_size=2)
        tally = collectives.sum(np.array([rank, 10 + rank], dtype=np.int64), dtype=torch.float64)
        result = {
            "sum": tally.tolist(),
            "gathered": collectives.gather_objects({"rank": rank}),
            "broadcast": collectives.broadcast_object(f"from rank {rank}"),
        }
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(rank_main, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)
"""


def test_collectives_across_two_real_gloo_ranks(tmp_path):
    """Two processes of their own (never forked from this one, which may be a Ray driver)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    result = subprocess.run(
        [sys.executable, str(script), str(port), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "sum": [1.0, 21.0],
            "gathered": [{"rank": 0}, {"rank": 1}],
            "broadcast": "from rank 0",
        }


def test_a_batch_beyond_the_plan_is_refused_before_it_is_trained():
    for accumulation, reached in ((1, [0, 1, 2, 3, 4]), (2, [0, 1, 2, 3])):
        trained = []
        with pytest.raises(RuntimeError, match="rank 1, epoch 2: a batch beyond the 5 planned, stopped before it"):
            for step in optimizer_steps(iter(range(6)), expected=5, accumulation=accumulation, where="rank 1, epoch 2"):
                trained.extend(step)  # what a train_step (and its collectives) would get
        assert trained == reached  # the 6th never reached a step (nor the step it would have closed)
    with pytest.raises(RuntimeError, match="rank 0, epoch 1: 4 batches, 5 were planned: the shard lost rows"):
        list(optimizer_steps(iter(range(4)), expected=5, accumulation=2, where="rank 0, epoch 1"))
    assert list(optimizer_steps(iter(range(5)), expected=5, accumulation=2, where="-")) == [[0, 1], [2, 3], [4]]
