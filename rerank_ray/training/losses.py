"""Losses: sentence-transformers' cross-encoder losses, applied to logits we computed.

The loss is chosen by class name from ``sentence_transformers.cross_encoder.losses`` and built
with the user's keyword arguments, so its parameters (activation, ``pos_weight``...) and its
model-card entry are the library's. We do not call its ``forward``: it tokenizes the raw texts on
the training thread and reduces to a batch mean. Our batches arrive tokenized from Ray Data and
carry a weight per pair (0 for the rows that even out the shards), so the loop needs the
per-pair loss. :class:`PointwiseLoss` rebuilds exactly the criterion the library's loss wraps,
with ``reduction="none"``; a test checks that it equals the library's loss on the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def build_library_loss(model: Any, loss_name: str, loss_kwargs: dict[str, Any]) -> nn.Module:
    """The sentence-transformers loss object, for its parameters and the model card. The names
    and keyword arguments it takes are checked on load (:data:`rerank_ray.config.POINTWISE_LOSSES`)."""
    import torch
    from sentence_transformers.cross_encoder import losses

    kwargs = dict(loss_kwargs)
    if "pos_weight" in kwargs and kwargs["pos_weight"] is not None:
        kwargs["pos_weight"] = torch.tensor(float(kwargs["pos_weight"]))
    return getattr(losses, loss_name)(model, **kwargs)


@dataclass
class PointwiseLoss:
    """Per-pair loss from logits, identical to the wrapped library loss's criterion."""

    name: str
    activation: nn.Module
    criterion: nn.Module
    multiclass: bool

    @classmethod
    def from_library(cls, library_loss: nn.Module) -> PointwiseLoss:
        from torch import nn

        name = type(library_loss).__name__
        if name == "BinaryCrossEntropyLoss":
            pos_weight = library_loss.pos_weight
            criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
            return cls(name, library_loss.activation_fn, criterion, multiclass=False)
        if name == "MSELoss":
            return cls(name, library_loss.activation_fn, nn.MSELoss(reduction="none"), multiclass=False)
        if name == "CrossEntropyLoss":
            return cls(name, library_loss.activation_fn, nn.CrossEntropyLoss(reduction="none"), multiclass=True)
        raise ValueError(f"no pointwise form for {name}")

    def to(self, device: torch.device) -> PointwiseLoss:
        self.criterion.to(device)
        self.activation.to(device)
        return self

    def per_pair(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of each pair, in fp32 whatever the autocast precision."""
        logits = logits.float()
        if self.multiclass:
            return self.criterion(self.activation(logits), labels.long())
        return self.criterion(self.activation(logits.view(-1)), labels.float().view(-1))
