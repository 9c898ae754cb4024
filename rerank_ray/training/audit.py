"""What proves a run trained what it should: the audit files (``run.audit``: the ids each rank
trained or scored, per step) and the replica check (every rank holds the same weights)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_ray.training.batching import Batch, GroupBatch
from rerank_ray.training.collectives import Collectives

if TYPE_CHECKING:
    import torch


class AuditLog:
    """``audit/rank<N>.jsonl`` of one rank, appended record by record; a no-op without ``run.audit``."""

    def __init__(self, folder: str | None, rank: int):
        self.path = Path(folder, f"rank{rank}.jsonl") if folder else None
        self.session = ""
        """The worker group's attempt every record belongs to (set once its ranks agree on it)."""

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        record = {"session": self.session, **record} if self.session else record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def pair_ids(self, batch: Batch | GroupBatch, kind: str, session: str, epoch: int, step: int) -> None:
        """The ids of the real pairs of ``batch``: trained in step ``step`` (``pairs``) or scored
        in the evaluation at it (``eval``), and when (what ran while a checkpoint uploaded)."""
        if self.path is not None and batch.pair_ids is not None:
            ids = [pid for pid, w in zip(batch.pair_ids, batch.weights) if w > 0]
            record = {"kind": kind, "session": session, "epoch": epoch, "step": step, "ids": ids, "time": time.time()}
            self.write(record)


def parameter_digest(model: torch.nn.Module) -> str:
    """A digest of every parameter this rank holds: each tensor (a sharded one's local shard)
    reduced to (sum, sum of squares) in float64 on its device, hashed. Cheap enough for every
    checkpoint."""
    import torch

    with torch.no_grad():
        fingerprint = torch.stack(
            [torch.stack([p.double().sum(), p.double().square().sum()]) for p in map(_local, model.parameters())]
        ).cpu()
    return hashlib.sha256(fingerprint.numpy().tobytes()).hexdigest()


def _local(parameter: Any) -> Any:
    """A DTensor's local shard (FSDP), else the tensor."""
    return parameter.to_local() if hasattr(parameter, "to_local") else parameter


def is_sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "to_local") for p in model.parameters())


def check_replicas(model: torch.nn.Module, collectives: Collectives, audit: AuditLog, step: int) -> None:
    """Fail loudly if the ranks' parameters differ: gradients were not synchronised. The
    digests of :func:`parameter_digest` are all-gathered and must match exactly.

    Under FSDP each rank holds other shards by design, so there is nothing to compare once the
    model is sharded: the digest of this rank's shards goes to the audit, and the check that
    matters, an identical start on every rank, runs before sharding (FSDP does not broadcast
    rank 0's weights as DDP does)."""
    digest = parameter_digest(model)
    audit.write({"kind": "params", "step": step, "digest": digest})
    if not collectives.active or is_sharded(model):
        return
    digests = collectives.gather_objects(digest)
    if len(set(digests)) != 1:
        if step < 0:
            raise RuntimeError(
                f"the ranks start from different weights ({digests}): under scaling.strategy fsdp every rank "
                "must load the same model (a new head or adapters seeded alike)"
            )
        raise RuntimeError(
            f"parameters differ across ranks at step {step} ({digests}): gradients are not being synchronised"
        )
