"""How a worker holds the model: LoRA adapters or every weight, activation checkpointing, and DDP
(a whole replica per rank) or FSDP2 (shards), from the config; and where a restored checkpoint's
weights go.

The loop sees a :class:`PreparedModel`: ``model`` is the CrossEncoder (its parameters sharded in
place under FSDP) that evaluation, checkpoints and the replica check use; ``wrapped`` is what
the training step calls (the DDP wrapper, its compiled form, or the sharded model itself).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from rerank_ray.config import Config
from rerank_ray.training import adapters, checkpointing, sharding
from rerank_ray.training.audit import AuditLog, check_replicas
from rerank_ray.training.collectives import Collectives
from rerank_ray.training.models import load_cross_encoder


@dataclass
class PreparedModel:
    model: Any
    """The CrossEncoder: evaluation, checkpoints and the replica check use it."""
    wrapped: Any
    """What the training step calls."""
    sharded: bool = False
    """FSDP2: parameters are DTensors, every rank holds a shard."""

    def no_sync(self, world_size: int) -> contextlib.AbstractContextManager:
        """A context for the micro-batches before an optimizer step's last: no gradient all-reduce
        under DDP. FSDP reduce-scatters every micro-batch (its "no sync" would keep whole, unsharded
        gradients until the last one: the memory FSDP is there to save)."""
        if self.sharded or world_size == 1:
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def after_evaluation(self) -> None:
        """FSDP keeps the root's weights gathered after a forward without backward: shard them again."""
        if self.sharded:
            self.model.reshard()


def prepare(
    config: Config,
    max_length: int,
    device: Any,
    world_size: int,
    collectives: Collectives,
    audit: AuditLog,
    restored: str | None,
    autocast_dtype: Any,
) -> PreparedModel:
    """Load the model (from ``restored``, a downloaded checkpoint folder, when it holds the whole
    model), add LoRA and activation checkpointing as configured, and place it: DDP, or shards."""
    import ray.train.torch
    import torch

    whole = restored is not None and checkpointing.model_format(restored) == "full"
    model = load_cross_encoder(
        config.model,
        max_length,
        path=checkpointing.model_dir(restored) if whole else None,
        dtype=weights_dtype(config),
    )
    if config.model.lora.r:
        adapters.add_lora(model, config.model.lora)
        if restored is not None and checkpointing.model_format(restored) == "adapter":
            adapters.load_adapter_state(model, checkpointing.model_dir(restored))
    if config.train.gradient_checkpointing:
        # The library's call: non-reentrant checkpointing of every transformer block (and, with
        # LoRA, inputs that require grad, so the adapters of the first block get theirs).
        model.activation_checkpointing_enable()
    if config.scaling.strategy == "fsdp":
        # FSDP does not broadcast rank 0's weights as DDP does: every rank must start alike.
        check_replicas(model, collectives, audit, step=-1)
        model.to(device)
        sharding.shard(model, device.type, world_size, param_dtype=autocast_dtype)
        return PreparedModel(model=model, wrapped=model, sharded=True)
    wrapped = ray.train.torch.prepare_model(
        model,
        parallel_strategy_kwargs={
            # A CrossEncoder uses every parameter in every step; "find unused" would add a
            # graph walk per step and fails with "mark a variable ready only once".
            "find_unused_parameters": False,
            # The model's buffers (position ids) are constants: no broadcast per forward.
            "broadcast_buffers": False,
        },
    )
    if config.train.torch_compile:
        # Compile the DDP-wrapped module (DDP's optimizer splits the graph at its gradient
        # buckets, so all-reduce still overlaps backward). Checkpoints and evaluation use the
        # uncompiled module holding the same parameters.
        wrapped = torch.compile(wrapped)
    return PreparedModel(model=model, wrapped=wrapped)


def weights_dtype(config: Config) -> Any:
    """The dtype the model's weights are loaded in: fp32 (the master weights autocast computes
    from), but bf16 for LoRA's frozen base under ``train.precision: bf16`` with DDP: nothing trains
    it, so its fp32 copy would only double its memory (peft keeps the adapters themselves in fp32).
    FSDP shards one dtype per unit, so it keeps fp32."""
    import torch

    frozen_bf16 = config.model.lora.r and config.train.precision == "bf16" and config.scaling.strategy == "ddp"
    return torch.bfloat16 if frozen_bf16 else torch.float32


def restore_sharded(prepared: PreparedModel, restored: str, optimizer: Any) -> None:
    """Under FSDP: the restored checkpoint's model and optimizer shards, on this world size."""
    if prepared.sharded:
        sharding.load_shards(restored, prepared.model, optimizer)


def exported_model(folder: str, config: Config, max_length: int) -> Any:
    """The CrossEncoder a downloaded checkpoint folder holds, in one process: as saved (the whole
    model), or the base model with the checkpoint's adapters or gathered shards loaded into it.
    LoRA adapters stay unmerged (the export may save them alone first: :func:`adapters.merge`)."""
    from sentence_transformers import CrossEncoder

    form = checkpointing.model_format(folder)
    if form == "full":
        return CrossEncoder(
            checkpointing.model_dir(folder), trust_remote_code=config.model.trust_remote_code, device="cpu"
        )
    # The weights as they trained (a LoRA base in bf16 stays so: the export scores as the evaluation did).
    model = load_cross_encoder(config.model, max_length, dtype=weights_dtype(config))
    if config.model.lora.r:
        adapters.add_lora(model, config.model.lora)
    if form == "adapter":
        adapters.load_adapter_state(model, checkpointing.model_dir(folder))
    else:
        sharding.load_shards(folder, model)  # no process group here: torch reads every shard itself
    return model
