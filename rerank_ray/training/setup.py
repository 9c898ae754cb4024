"""How a worker sets itself up before the model: its seeds, its fp32 matmul precision, its
autocast type, the collator of a grouped training set, and the loss of each training set."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank_ray import console
from rerank_ray.config import Config, TrainConfig
from rerank_ray.data.encoding import PairEncoder
from rerank_ray.training.batching import Batch, Collator, GroupBatch, GroupCollator, iter_batches
from rerank_ray.training.losses import GroupLoss, PointwiseLoss, PointwiseObjective, build_library_loss
from rerank_ray.training.plan import TrainPlan, WorkerLayout

if TYPE_CHECKING:
    import torch


def group_collator(config: Config, shape: str, encoder: PairEncoder, pad: Collator) -> GroupCollator:
    """The collator of a grouped training set; each epoch's draws are set by ``Worker._epoch_batches``."""
    import inspect

    from sentence_transformers.cross_encoder import losses

    loss = config.train.loss
    in_batch = loss in ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss")
    default = inspect.signature(getattr(losses, loss)).parameters.get("num_negatives")
    return GroupCollator(
        encoder=encoder,
        pad=pad,
        in_batch=in_batch,
        num_negatives=config.train.loss_kwargs.get("num_negatives", default.default if default else None),
        max_docs=config.data.max_docs_per_query,
        keep_first=shape == "n-tuple",
    )


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def matmul_precision(device_type: str, tf32: bool) -> str | None:
    """The fp32 matmul precision to set for ``train.tf32`` on this device: "high" (TF32) or
    "highest" (full fp32) on CUDA; None elsewhere (a CPU worker keeps PyTorch's setting, which
    only CUDA's tensor cores would change)."""
    if device_type != "cuda":
        return None
    return "high" if tf32 else "highest"


def autocast_dtype(precision: str, device_type: str, rank: int) -> torch.dtype | None:
    """The autocast type of ``train.precision`` on this device: None for fp32, and for fp16 on a
    CPU (no fp16 autocast there: rank 0 says it trains in fp32)."""
    import torch

    if precision == "fp32":
        return None
    if device_type == "cpu" and precision == "fp16":
        if rank == 0:
            console.say("[rerank-ray] train.precision fp16 has no CPU autocast here: training in fp32")
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def training_views(config: Config, plan: TrainPlan, grouped: bool) -> list[tuple[Config, bool]]:
    """(config, grouped) of each training set: a mixture's sets, each as a run of its own; else the run."""
    if not plan.mixture:
        return [(config, grouped)]
    shapes = [part.shape for part in plan.mixture]
    return [(config.for_train_set(s), shape != "pairs") for s, shape in zip(config.train_sets(), shapes, strict=True)]


def mixture_collates(config: Config, plan: TrainPlan, encoder: PairEncoder, pad: Collator) -> list:
    """Each training set's collator: pairs arrive tokenized; a grouped set's are formed per batch."""
    return [
        group_collator(view, part.shape, encoder, pad) if grouped else pad
        for (view, grouped), part in zip(training_views(config, plan, False), plan.mixture, strict=True)
    ]


def objective(model: Any, train: TrainConfig, grouped: bool, device: Any) -> PointwiseObjective | GroupLoss:
    """The loss a step computes: the library's loss, on groups as it is, on pairs weighted per row."""
    library_loss = build_library_loss(model, train.loss, train.loss_kwargs)
    if grouped:
        return GroupLoss(library_loss)
    return PointwiseObjective(PointwiseLoss.from_library(library_loss).to(device))


def epoch_batches(
    config: Config, layout: WorkerLayout, shard: Any, collate: Collator | GroupCollator, seed: list[int]
) -> Iterator[Batch | GroupBatch]:
    """One epoch's batches of a training shard on this worker (a single training set's, or one set
    of a mixture's), its shuffles seeded by ``seed``; a grouped set draws its documents and
    in-batch negatives afresh each epoch, seeded alike."""
    if isinstance(collate, GroupCollator):
        import torch

        draws = np.random.default_rng([*seed, 1])
        generator = torch.Generator().manual_seed(int(draws.integers(2**62)))
        collate = replace(collate, rng=draws, generator=generator)
    return iter_batches(
        shard,
        layout.batch_size,
        collate,
        window_batches=config.data.window_batches,
        group_by_length=config.data.group_by_length,
        rng=np.random.default_rng(seed) if config.data.shuffle else None,
        strata=layout.accumulation,
    )
