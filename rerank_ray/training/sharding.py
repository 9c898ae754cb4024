"""FSDP2 (``scaling.strategy: fsdp``): the CrossEncoder sharded across the workers, and its state
in torch's distributed checkpoint format.

Sharded by hand with ``fully_shard`` rather than Ray Train's ``prepare_model(parallel_strategy=
"fsdp")``: in Ray 2.60 that wraps the whole model once with the older ``FullyShardedDataParallel``
(FSDP1, no per-block units, no ``DTensor`` state for distributed checkpoints) and refuses CPU
workers. Here each transformer block (transformers' ``GradientCheckpointingLayer``: every family's
layer class) is one unit and the root (embeddings, head) another, over the process group Ray
Train already set up. FSDP2 does not broadcast the initial weights, so the worker checks that
every rank starts from the same ones before sharding (:func:`rerank_ray.training.audit.check_replicas`).

Checkpoints: the model's and the optimizer's sharded state dicts, written by every rank with
``torch.distributed.checkpoint`` (each rank its own ``__<rank>_0.distcp``, rank 0 the metadata) and
read back on any number of ranks (resharded on load), or in one process without a process group
(the export).
"""

from __future__ import annotations

from typing import Any

#: Subfolders of a checkpoint: the model's and the optimizer's distributed-checkpoint files.
MODEL_SHARDS, OPTIMIZER_SHARDS = "model_shards", "optimizer_shards"


def transformer_blocks(model: Any) -> list[Any]:
    """The repeated blocks of a transformers model (its ``GradientCheckpointingLayer`` modules:
    BertLayer, XLMRobertaLayer, DebertaV2Layer, Qwen3DecoderLayer, ...)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def shard(cross_encoder: Any, device_type: str, world_size: int, param_dtype: Any = None) -> int:
    """Shard ``cross_encoder`` in place: each transformer block, then the root. ``param_dtype``:
    the dtype the weights are gathered in for compute (bf16), gradients reduced in fp32. Returns
    the number of blocks."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    blocks = transformer_blocks(cross_encoder)
    if not blocks:
        raise RuntimeError(
            f"scaling.strategy fsdp found no transformer block in {type(cross_encoder[0].model).__name__} to shard"
        )
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(cross_encoder, mesh=mesh, mp_policy=policy)
    return len(blocks)


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def save_shards(folder: str, model: Any, optimizer: Any) -> None:
    """Every rank: the model's and the optimizer's shards into ``folder`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    dcp.save(get_model_state_dict(model), checkpoint_id=f"{folder}/{MODEL_SHARDS}")
    dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=f"{folder}/{OPTIMIZER_SHARDS}")


def load_shards(folder: str, model: Any, optimizer: Any | None = None) -> None:
    """Every rank (or one process, the model alone): the state written by :func:`save_shards`,
    on whatever number of ranks it was written with."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model_state = get_model_state_dict(model)
    dcp.load(model_state, checkpoint_id=f"{folder}/{MODEL_SHARDS}")
    set_model_state_dict(model, model_state)
    if optimizer is not None:
        optimizer_state = get_optimizer_state_dict(model, optimizer)
        dcp.load(optimizer_state, checkpoint_id=f"{folder}/{OPTIMIZER_SHARDS}")
        set_optimizer_state_dict(model, optimizer, optimizer_state)


def full_state_dict(model: Any) -> dict[str, Any]:
    """The whole model's weights on rank 0, on the CPU (every rank calls it: a collective; the other
    ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
