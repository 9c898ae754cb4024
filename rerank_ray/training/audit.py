"""What proves a run trained what it should: the audit files (``run.audit``: the ids each rank
trained or scored, per step) and the replica check (every rank holds the same weights)."""

from __future__ import annotations

import hashlib
import json
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

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def pair_ids(self, batch: Batch | GroupBatch, kind: str, session: str, epoch: int, step: int) -> None:
        """The ids of the real pairs of ``batch``: trained in step ``step`` (``pairs``) or scored
        in the evaluation at it (``eval``)."""
        if self.path is not None and batch.pair_ids is not None:
            ids = [pid for pid, w in zip(batch.pair_ids, batch.weights) if w > 0]
            self.write({"kind": kind, "session": session, "epoch": epoch, "step": step, "ids": ids})


def parameter_digest(model: torch.nn.Module) -> str:
    """A digest of every parameter: each tensor reduced to (sum, sum of squares) in float64 on
    its device, hashed. Cheap enough for every checkpoint."""
    import torch

    with torch.no_grad():
        fingerprint = torch.stack(
            [torch.stack([p.double().sum(), p.double().square().sum()]) for p in model.parameters()]
        ).cpu()
    return hashlib.sha256(fingerprint.numpy().tobytes()).hexdigest()


def check_replicas(model: torch.nn.Module, collectives: Collectives, audit: AuditLog, step: int) -> None:
    """Fail loudly if the ranks' parameters differ: gradients were not synchronised. The
    digests of :func:`parameter_digest` are all-gathered and must match exactly."""
    digest = parameter_digest(model)
    audit.write({"kind": "params", "step": step, "digest": digest})
    if not collectives.active:
        return
    digests = collectives.gather_objects(digest)
    if len(set(digests)) != 1:
        raise RuntimeError(
            f"parameters differ across ranks at step {step} ({digests}): gradients are not being synchronised"
        )
