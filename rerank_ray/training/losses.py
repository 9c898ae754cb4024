"""Losses: sentence-transformers' cross-encoder losses, applied to logits we computed.

Two forms, both the library's math on our logits (one forward of the DDP model per micro-batch):
:class:`PointwiseLoss` for labelled pairs, :class:`GroupLoss` for queries with their documents.

The loss is chosen by class name from ``sentence_transformers.cross_encoder.losses`` and built
with the user's keyword arguments, so its parameters (activation, ``pos_weight``...) and its
model-card entry are the library's. Its ``forward`` tokenizes raw texts on the training thread;
our batches arrive tokenized (pairs: from Ray Data; groups: from the prefetch thread) and carry a
weight per row (0 for the rows that even out the shards). So for pairs :class:`PointwiseLoss`
rebuilds exactly the criterion the library's loss wraps, with ``reduction="none"``; for groups
:class:`GroupLoss` runs the library's own code on our logits. Tests (tests/test_losses_eval.py,
tests/test_group_losses.py) check both against the library's loss on the same texts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank_ray.errors import ConfigError
from rerank_ray.training.batching import Batch, GroupBatch

if TYPE_CHECKING:
    import torch
    from torch import nn


def build_library_loss(model: Any, loss_name: str, loss_kwargs: dict[str, Any]) -> nn.Module:
    """The sentence-transformers loss object, for its parameters, its math and the model card.
    The names and keyword arguments it takes are checked on load (:data:`rerank_ray.config.LOSSES`),
    the values naming modules by :func:`loss_arguments`."""
    from sentence_transformers.cross_encoder import losses

    return getattr(losses, loss_name)(model, **loss_arguments(loss_kwargs))


def loss_arguments(loss_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``train.loss_kwargs`` as the loss class takes them: ``pos_weight`` a tensor, an
    ``activation_fn`` named by a torch.nn class (``Sigmoid``, ``torch.nn.Identity``; null: none),
    ``weighting_scheme`` / ``lambda_weight`` by a sentence-transformers class name. A name that
    is no such class is a :class:`ConfigError` (the driver builds these before Ray starts)."""
    import torch
    from sentence_transformers.cross_encoder import losses

    kwargs = dict(loss_kwargs)
    if kwargs.get("pos_weight") is not None:
        kwargs["pos_weight"] = torch.tensor(float(kwargs["pos_weight"]))
    if isinstance(kwargs.get("activation_fn"), str):
        kwargs["activation_fn"] = _module(
            "train.loss_kwargs.activation_fn", kwargs["activation_fn"], torch.nn, "torch.nn."
        )
    for key in ("weighting_scheme", "lambda_weight"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = _module(
                f"train.loss_kwargs.{key}", kwargs[key], losses, "sentence_transformers.cross_encoder.losses."
            )
    return kwargs


def _module(key: str, name: str, namespace: Any, prefix: str) -> nn.Module:
    from torch import nn

    wanted = name.removeprefix(prefix)
    found = getattr(namespace, wanted, None)
    if found is None:  # "sigmoid" for Sigmoid
        found = next((getattr(namespace, n) for n in dir(namespace) if n.lower() == wanted.lower()), None)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ConfigError(f"{key} {name!r} names no module class of {prefix.rstrip('.')}")
    return found()


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


# ---------------------------------------------------------------------------------------------
# The objective of a micro-batch: what the step scales and back-propagates


@dataclass
class PointwiseObjective:
    """Sum over the batch's pairs of each pair's loss times its weight."""

    loss: PointwiseLoss

    def __call__(self, logits: torch.Tensor, batch: Batch, device: torch.device) -> torch.Tensor:
        labels, weights = batch.targets(device)
        return (self.loss.per_pair(logits, labels) * weights).sum()


class _Replay:
    """Stands in for the CrossEncoder inside a library loss's ``forward``: ``preprocess`` gets the
    loss's (query, document) pairs, which are our pair indices, and the call returns the logits we
    computed for them. So the loss's own code (its matrices, masks, sorting, reduction) runs on
    our logits, and its value and gradients are the library's by construction."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.device = logits.device

    def preprocess(self, pairs: list, prompt: Any = None, task: Any = None, **_: Any) -> dict[str, torch.Tensor]:
        import torch

        return {"index": torch.tensor([int(doc) for _, doc in pairs], dtype=torch.long)}

    def __call__(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"scores": self.logits[features["index"].to(self.device)].unsqueeze(1)}


@dataclass
class GroupLoss:
    """A grouped sentence-transformers loss on a :class:`GroupBatch`'s logits: the library
    loss's value over the batch's real queries, times their number (so that summed over the
    micro-batches and ranks of a step and divided by the step's queries it is the mean over
    queries, as for pairs).

    The in-batch losses get the library's ``calculate_loss`` on the score columns (the draw of
    the in-batch negatives is :func:`rerank_ray.training.batching.in_batch_negatives`); the
    others their own ``forward`` with :class:`_Replay` in place of the model. A loss that
    normalises over documents rather than queries (LambdaLoss, RankNetLoss, ADRMSELoss) is so
    normalised within each micro-batch, as the library's trainer does on each device."""

    library: nn.Module

    @property
    def name(self) -> str:
        return type(self.library).__name__

    @property
    def cached(self) -> int:
        """Pairs per chunk of the gradient cache (CachedMultipleNegativesRankingLoss), else 0."""
        return int(self.library.mini_batch_size) if self.name == "CachedMultipleNegativesRankingLoss" else 0

    @property
    def in_batch(self) -> bool:
        return self.name in ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss")

    def __call__(self, logits: torch.Tensor, batch: GroupBatch, device: torch.device) -> torch.Tensor:
        flat = logits.float().view(-1)
        n = batch.queries
        if n == 0:  # no real query in this batch: a zero that still reaches every parameter
            return flat.sum() * 0.0
        return self.value(flat, batch, device) * n

    def value(self, flat: torch.Tensor, batch: GroupBatch, device: torch.device) -> torch.Tensor:
        """The library loss's value for the batch's real queries (its mean over them)."""
        import torch

        n = batch.queries
        if self.in_batch:
            scores = list(flat[: n * batch.columns].view(batch.columns, n).unbind(0))
            return self.library.calculate_loss(scores, n)
        starts = np.concatenate([[0], np.cumsum(batch.doc_counts)[:-1]])
        label_starts = np.concatenate([[0], np.cumsum(batch.label_counts)[:-1]])
        labels = torch.from_numpy(batch.labels).to(device)
        per_query = [labels[s : s + c] for s, c in zip(label_starts.tolist(), batch.label_counts.tolist())]
        if self.name == "MarginMSELoss":
            k = int(batch.doc_counts[0])
            inputs = [list(range(n))] + [(starts + c).tolist() for c in range(k)]
            targets: Any = torch.stack([_margins(t, k) for t in per_query])
        else:
            inputs = [
                list(range(n)),
                [list(range(s, s + c)) for s, c in zip(starts.tolist(), batch.doc_counts.tolist())],
            ]
            targets = per_query
        model = self.library._modules["model"]
        self.library._modules["model"] = _Replay(flat)  # type: ignore[assignment]
        try:
            return self.library(inputs, targets)
        finally:
            self.library._modules["model"] = model


def cached_backward(
    forward: Callable[[dict[str, torch.Tensor], bool], torch.Tensor],
    features: dict[str, torch.Tensor],
    batch: GroupBatch,
    loss: GroupLoss,
    device: torch.device,
    chunk: int,
    scaled: Callable[[torch.Tensor], torch.Tensor],
    no_sync: Callable[[], contextlib.AbstractContextManager],
    sync_last: bool,
) -> torch.Tensor:
    """CachedMultipleNegativesRankingLoss's gradient cache (GradCache) on one micro-batch: score
    the pairs ``chunk`` at a time without a graph, take the loss and its gradient with respect to
    those logits, then score each chunk again with a graph and back-propagate its slice of that
    gradient, replaying the RNG state of the first pass (dropout draws the same masks). The
    gradients equal the plain loss's (tests/test_group_losses.py); memory holds one chunk's graph.

    By hand because the library's version runs inside its ``forward`` on texts, with a backward
    hook; here the model is the DDP-wrapped one (``no_sync`` on every chunk but the last of a
    step, so the gradients are all-reduced once) and ``scaled`` applies the step's scale and the
    gradient scaler. Returns the micro-batch's summed loss, detached."""
    import torch

    rows = next(iter(features.values())).shape[0]
    starts = list(range(0, rows, chunk))
    states, parts = [], []
    with torch.no_grad():
        for start in starts:
            states.append(_rng_state(device))
            parts.append(forward(_rows(features, start, chunk), False).float().view(-1))
    logits = torch.cat(parts).requires_grad_()
    total = loss(logits, batch, device)
    scaled(total).backward()
    cache = logits.grad
    for index, start in enumerate(starts):
        last = sync_last and index == len(starts) - 1
        with contextlib.nullcontext() if last else no_sync():
            _set_rng_state(device, states[index])
            again = forward(_rows(features, start, chunk), True).float().view(-1)
            again.backward(cache[start : start + chunk])
    return total.detach()


def _rows(features: dict[str, Any], start: int, count: int) -> dict[str, Any]:
    """Rows ``start`` to ``start + count`` of the batch's tensors; the other inputs (a causal
    model's ``logits_to_keep``) as they are."""
    return {
        name: value[start : start + count] if hasattr(value, "shape") else value for name, value in features.items()
    }


def _rng_state(device: torch.device) -> tuple:
    import torch

    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple) -> None:
    import torch

    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _margins(scores: torch.Tensor, documents: int) -> torch.Tensor:
    """An n-tuple's targets as margins: teacher scores (one per document) become the positive's
    minus each negative's, as MarginMSELoss does for a whole batch; margins stay."""
    return scores[0] - scores[1:] if len(scores) == documents else scores
