"""A mixture of training sets on one worker: which set each optimizer step trains, and each set's
batches, collator and loss.

Why not Ray Data's ``Dataset.mix``: it interleaves whole blocks of its inputs into one stream, with
one schema, no record of a row's source and no position to resume at; split over the workers
(``streaming_split``), a batch would join the end of one block to the start of the next (two
sets, two shapes, in one batch) and the ranks would hold different sets at the same step, while
DDP and the in-batch losses need the same set, so the same graph, on every rank. So each set is a
Ray dataset of its own, padded to a multiple of the workers like a single training set, and every
rank computes the same schedule: the set of each step of the epoch, from the seed and the epoch
(sentence-transformers' ProportionalBatchSampler and RoundRobinBatchSampler, per optimizer step).

The data position stays one set of trained row keys (a mixture numbers its sets' files one after
the other, :func:`rerank_ray.run.driver.mixture_datasets`): after a restore each set's rest is its
rows not yet trained, and the schedule's first steps, already taken, say how many batches each set
had done.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rerank_ray.config import Config
from rerank_ray.data.position import clip_ranges, count_in_ranges, file_keys, partial_epoch_batches
from rerank_ray.training.batching import Batch, Collator, GroupBatch, GroupCollator, optimizer_steps
from rerank_ray.training.plan import TrainPlan, WorkerLayout
from rerank_ray.training.prefetch import prefetch, stall_message
from rerank_ray.training.setup import epoch_batches


def schedule(plan: TrainPlan, seed: int, epoch: int) -> np.ndarray:
    """The training set (index into ``plan.mixture``) of each optimizer step of ``epoch``: a function
    of the seed and the epoch, so every rank steps the same set. ``proportional``: each set's steps
    in a seeded random order (each set drawn in proportion to the steps it has left);
    ``round_robin``: one step of each set in turn."""
    counts = [part.used_steps for part in plan.mixture]
    if plan.sampling == "round_robin":
        return np.tile(np.arange(len(counts)), counts[0])
    order = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng([seed, epoch, 0x6D6978]).permutation(order)


def batches_done(plan: TrainPlan, order: np.ndarray, steps: int, accumulation: int) -> list[int]:
    """Each set's batches in the first ``steps`` steps of an epoch's ``order`` (its last step may
    take fewer than ``accumulation``)."""
    taken = np.bincount(order[:steps], minlength=len(plan.mixture))
    return [min(int(n) * accumulation, part.batches) for n, part in zip(taken, plan.mixture)]


def check_restored(plan: TrainPlan, layout: WorkerLayout, trained: np.ndarray, done: list[int], step: int) -> None:
    """A restored mixture epoch: each set's rows not yet trained (by the checkpoint's keys) must
    fill exactly the batches the schedule leaves it."""
    for part, done_batches in zip(plan.mixture, done):
        trained_rows = count_in_ranges(clip_ranges(trained, *file_keys(part.first_file, part.files)))
        left = partial_epoch_batches(part.rows - trained_rows, layout.world_size, layout.batch_size, plan.rows_multiple)
        if left != part.batches - done_batches:
            raise RuntimeError(
                f"the checkpoint at step {step} records {trained_rows} trained rows of training set {part.name}, "
                f"which leaves {left} batches per worker, but the schedule leaves {part.batches - done_batches}: "
                "the checkpoint and the data do not match"
            )


@dataclass
class MixtureSteps:
    """One worker's steps through a mixture: (training set, micro-batches) per optimizer step."""

    config: Config
    plan: TrainPlan
    layout: WorkerLayout
    rank: int
    collates: list[Collator | GroupCollator]
    """Each set's collator (a grouped set's draws are set per epoch)."""
    shards: dict[str, Any] = field(default_factory=dict)
    """Each set's Ray Data shard and its rest after a restore, by dataset name."""
    loss_sums: list[Any] = field(default_factory=list)
    rows: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loss_sums = [0.0] * len(self.plan.mixture)
        self.rows = [0.0] * len(self.plan.mixture)

    @classmethod
    def open(cls, config: Config, plan: TrainPlan, layout: WorkerLayout, rank: int, collates: list) -> MixtureSteps:
        import ray.train

        # The shards are taken here, on the loop's thread (Ray Train's context), not in the producers.
        shards = {}
        for part in plan.mixture:
            shards[part.dataset] = ray.train.get_dataset_shard(part.dataset)
            shards[f"{part.dataset}_rest"] = ray.train.get_dataset_shard(f"{part.dataset}_rest")
        return cls(config, plan, layout, rank, collates, shards)

    def epoch(self, epoch: int, steps_done: int, resumed: bool) -> Iterator[tuple[int, list[Batch | GroupBatch]]]:
        """The epoch's steps from step ``steps_done`` of it on; ``resumed``: after a restore in the
        middle of it (each set's rows then come from its rest)."""
        order = schedule(self.plan, self.config.train.seed, epoch)
        done = batches_done(self.plan, order, steps_done, self.layout.accumulation)
        streams = [
            self._steps(index, epoch, done[index], resumed, steps_done if resumed else None)
            for index in range(len(self.plan.mixture))
        ]
        for index in order[steps_done:]:
            yield int(index), next(streams[index])
        # Each set's stream ends here: with round_robin the larger sets' rest is read and left out
        # of the epoch, so that every stream ends before the next epoch opens it again.
        for stream in streams:
            for _ in stream:
                pass

    def _steps(
        self, index: int, epoch: int, done: int, resumed: bool, resumed_at: int | None
    ) -> Iterator[list[Batch | GroupBatch]]:
        part = self.plan.mixture[index]
        name = f"{part.dataset}_rest" if resumed else part.dataset
        seed = [self.config.train.seed, epoch, self.rank, index] + ([resumed_at] if resumed_at is not None else [])
        batches = epoch_batches(self.config, self.layout, self.shards[name], self.collates[index], seed)
        ahead = prefetch(
            batches,
            self.config.data.prefetch_batches,
            self.config.run.stall_timeout_s,
            functools.partial(stall_message, f"train ({part.name})", name),
        )
        where = f"rank {self.rank}, epoch {epoch + 1}, training set {part.name} ({done} batches done before)"
        return optimizer_steps(ahead, part.batches - done, self.layout.accumulation, where)

    def add_loss(self, index: int, loss_sum: Any, rows: float) -> None:
        """A step's summed loss and real rows, to report each set's mean loss."""
        self.loss_sums[index] = self.loss_sums[index] + loss_sum
        self.rows[index] += rows

    def flush(self, all_reduce: Any) -> dict[str, float]:
        """``loss_<name>``: each set's mean loss over its steps since the last flush, all ranks."""
        import torch

        values = torch.stack([torch.as_tensor(v).float().cpu() for v in [*self.loss_sums, *self.rows]])
        totals = all_reduce(values).tolist()
        count = len(self.plan.mixture)
        out = {
            f"loss_{part.name}": totals[i] / totals[count + i]
            for i, part in enumerate(self.plan.mixture)
            if totals[count + i] > 0
        }
        self.loss_sums = [0.0] * count
        self.rows = [0.0] * count
        return out
