"""Every collective of a Ray Train worker, with its tensors placed on the worker's device.

GPU workers use the ``nccl`` backend, which takes CUDA tensors only; CPU workers use ``gloo``.
A count built with ``torch.tensor(...)`` lives on the CPU, and handed to NCCL it fails the run at
the first epoch end or checkpoint of a multi-GPU run (a single GPU skips the collectives, so it
never shows there). So the package calls ``torch.distributed`` here only
(``tests/test_collectives.py`` fails on a call elsewhere), and :meth:`Collectives.sum` moves what
it is given to the device first. The object collectives (``all_gather_object``,
``broadcast_object_list``) pickle into tensors on the current CUDA device, which Ray Train sets
for each GPU worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class Collectives:
    """The collectives of one worker. With one worker each is the identity, and none is called."""

    device: torch.device
    world_size: int
    #: Call the collectives with one worker too (a process group of one). A test hook
    #: (:func:`rerank_ray.training.faults.force_collectives`): one GPU's NCCL group then sees every
    #: tensor a multi-GPU run would hand it, since NCCL refuses two ranks on one GPU.
    always: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1 or self.always

    def place(self, values: torch.Tensor | np.ndarray | list | float, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``values`` as a tensor on the device. A CPU tensor reaches a GPU through pinned memory
        with a non-blocking copy: ``torch.tensor(x, device="cuda")`` copies from pageable memory,
        which makes the host wait for every kernel queued so far."""
        import torch

        tensor = torch.as_tensor(values, dtype=dtype)
        if tensor.device == self.device or (tensor.device.type == self.device.type == "cpu"):
            return tensor
        if self.device.type == "cuda" and tensor.device.type == "cpu":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def sum(self, values: torch.Tensor | np.ndarray | list | float, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The element-wise sum over all ranks, on the device (no host sync: read it when needed)."""
        import torch.distributed as dist

        tensor = self.place(values, dtype)
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, by rank, on every rank."""
        import torch.distributed as dist

        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``value``, on every rank."""
        import torch.distributed as dist

        if not self.active:
            return value
        shared = [value]
        dist.broadcast_object_list(shared, src=src)
        return shared[0]
