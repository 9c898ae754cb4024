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
from typing import Any

import torch
from torch import nn

#: Pointwise losses we support, with the label kind each expects and the head size it needs.
POINTWISE_LOSSES = {
    "BinaryCrossEntropyLoss": {"labels": "float in [0, 1]", "num_labels": "one"},
    "MSELoss": {"labels": "float", "num_labels": "one"},
    "CrossEntropyLoss": {"labels": "integer class id", "num_labels": "several"},
}


def integer_labels(loss_name: str) -> bool:
    """Whether the loss takes class ids (kept as integers from the file to the loss)."""
    return POINTWISE_LOSSES[loss_name]["labels"] == "integer class id"


def check_loss_fits(loss_name: str, num_labels: int, eval_kind: str, loss_kwargs: dict[str, Any]) -> None:
    """Raise a ConfigError when the loss cannot train this head or feed this evaluator."""
    from rerank_ray.config import ConfigError

    if loss_name not in POINTWISE_LOSSES:
        raise ConfigError(
            f"train.loss {loss_name!r} is not supported: choose one of {', '.join(POINTWISE_LOSSES)} "
            "(pointwise sentence-transformers cross-encoder losses)"
        )
    wants_several = POINTWISE_LOSSES[loss_name]["num_labels"] == "several"
    if wants_several and num_labels < 2:
        raise ConfigError(f"train.loss {loss_name} needs model.num_labels >= 2 (one logit per class)")
    if not wants_several and num_labels != 1:
        raise ConfigError(f"train.loss {loss_name} needs model.num_labels = 1, got {num_labels}")
    if eval_kind == "classification" and num_labels < 2:
        raise ConfigError("eval.kind classification needs model.num_labels >= 2 and train.loss CrossEntropyLoss")
    if eval_kind != "classification" and num_labels > 1:
        raise ConfigError(f"eval.kind {eval_kind} scores pairs with one logit; set eval.kind classification")
    allowed = {"BinaryCrossEntropyLoss": {"pos_weight"}, "MSELoss": set(), "CrossEntropyLoss": set()}[loss_name]
    extra = set(loss_kwargs) - allowed
    if extra:
        raise ConfigError(
            f"train.loss_kwargs has {sorted(extra)}, which {loss_name} does not take here"
            + (f"; it takes {sorted(allowed)}" if allowed else "")
        )


def build_library_loss(model: Any, loss_name: str, loss_kwargs: dict[str, Any]) -> nn.Module:
    """The sentence-transformers loss object, for its parameters and the model card."""
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
