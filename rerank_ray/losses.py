"""The loss table: what each sentence-transformers cross-encoder loss takes.

One row per loss of ``sentence_transformers.cross_encoder.losses`` that ``train.loss`` accepts:
the data shape it trains on, the rule its labels must follow (as data: the row checker of
:mod:`rerank_ray.data.checks` applies it to every training label), the size of the head and
the keyword arguments of its class. The config checks a run against it before Ray starts;
the training code builds the library's own loss from the same name
(:mod:`rerank_ray.training.losses`). tests/test_group_losses.py checks the table against the
library's classes and signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from rerank_ray.errors import ConfigError

#: Data shapes a training set can have (rerank_ray/data/shapes.py finds it from the files' columns).
SHAPES = ("pairs", "n-tuple", "list")
#: What each shape's columns are, for messages.
SHAPE_COLUMNS = {
    "pairs": "sentence_0, sentence_1, label",
    "n-tuple": "query, positive[, negative_1 .. negative_k][, label (a list of teacher scores)]",
    "list": "query, documents (a list of texts), labels (a list of numbers, one per document)",
}


@dataclass(frozen=True)
class LabelRule:
    """What a label must be (after ``data.label_scale``): its bounds, whether it is a whole
    number, the words for a message and the fix to suggest."""

    description: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    fix: str = ""
    class_ids: bool = False
    """The label is a class id of the head: ``high`` is ``model.num_labels - 1``, set by
    :meth:`for_head`, and the labels stay int64 from the file to the loss."""

    def violations(self, labels: np.ndarray) -> np.ndarray:
        bad = np.zeros(len(labels), dtype=bool)
        if self.low is not None:
            bad |= labels < self.low
        if self.high is not None:
            bad |= labels > self.high
        if self.integer:
            bad |= labels != np.round(labels)
        return bad

    def for_head(self, num_labels: int, where: str) -> LabelRule:
        """This rule for a head of ``num_labels`` outputs, described for ``where`` (the setting
        that chose it and how the labels were scaled)."""
        if self.class_ids:
            return replace(
                self,
                description=f"a class id 0..{num_labels - 1}{where} ({num_labels} classes)",
                high=num_labels - 1.0,
            )
        return replace(self, description=f"{self.description}{where}")


FINITE = LabelRule("a finite number")
CLASS_ID = LabelRule(
    "a class id",
    low=0.0,
    integer=True,
    class_ids=True,
    fix="write class ids 0..N-1 and set model.num_labels to the number of classes",
)


@dataclass(frozen=True)
class LossSpec:
    """What a sentence-transformers cross-encoder loss takes: the data shape, the rule of its
    labels (None: it takes none), the head size and the keyword arguments of its class
    (``train.loss_kwargs``)."""

    shape: str
    label: LabelRule | None
    num_labels: Literal["one", "several"]
    kwargs: tuple[str, ...]

    @property
    def needs_label(self) -> bool:
        return self.label is not None


_LIST_RULE = LabelRule("a finite number per document")
#: The 12 losses of ``sentence_transformers.cross_encoder.losses`` that ``train.loss`` takes.
LOSSES = {
    "BinaryCrossEntropyLoss": LossSpec(
        "pairs",
        LabelRule(
            "a number in [0, 1]",
            0.0,
            1.0,
            fix="scale the labels into [0, 1] with data.label_scale (0.2 for 0-5 scores), "
            "or use train.loss MSELoss for unbounded scores",
        ),
        "one",
        ("activation_fn", "pos_weight"),
    ),
    "MSELoss": LossSpec("pairs", FINITE, "one", ("activation_fn",)),
    "CrossEntropyLoss": LossSpec("pairs", CLASS_ID, "several", ("activation_fn",)),
    "MultipleNegativesRankingLoss": LossSpec("n-tuple", None, "one", ("num_negatives", "scale", "activation_fn")),
    "CachedMultipleNegativesRankingLoss": LossSpec(
        "n-tuple",
        None,
        "one",
        ("num_negatives", "scale", "activation_fn", "mini_batch_size", "show_progress_bar"),
    ),
    "MarginMSELoss": LossSpec(
        "n-tuple", LabelRule("teacher scores (positive, negatives) or margins"), "one", ("activation_fn",)
    ),
    "ListNetLoss": LossSpec("list", _LIST_RULE, "one", ("activation_fn", "mini_batch_size")),
    "ListMLELoss": LossSpec("list", _LIST_RULE, "one", ("activation_fn", "mini_batch_size", "respect_input_order")),
    "PListMLELoss": LossSpec(
        "list", _LIST_RULE, "one", ("lambda_weight", "activation_fn", "mini_batch_size", "respect_input_order")
    ),
    "LambdaLoss": LossSpec(
        "list",
        _LIST_RULE,
        "one",
        ("weighting_scheme", "k", "sigma", "eps", "reduction_log", "activation_fn", "mini_batch_size"),
    ),
    "RankNetLoss": LossSpec(
        "list", _LIST_RULE, "one", ("k", "sigma", "eps", "reduction_log", "activation_fn", "mini_batch_size")
    ),
    "ADRMSELoss": LossSpec("list", _LIST_RULE, "one", ("alpha", "activation_fn", "mini_batch_size")),
}


def integer_labels(loss_name: str) -> bool:
    """Whether the loss takes class ids (kept as integers from the file to the loss)."""
    label = LOSSES[loss_name].label
    return label is not None and label.class_ids


def train_label_rule(loss_name: str, num_labels: int, scale: str = "") -> LabelRule:
    """What a training label must be for ``loss_name`` (``scale``: how the labels were scaled,
    for the message). A loss without labels accepts any finite number where a file has one."""
    label = LOSSES[loss_name].label or FINITE
    return label.for_head(num_labels, f"{scale} for train.loss {loss_name}")


def check_loss_fits(loss_name: str, num_labels: int, eval_kind: str, loss_kwargs: dict[str, Any]) -> None:
    """Raise a ConfigError when the loss cannot train this head or feed this evaluator."""
    if loss_name not in LOSSES:
        raise ConfigError(
            f"train.loss {loss_name!r} is not supported: choose one of {', '.join(LOSSES)} "
            "(the sentence-transformers cross-encoder losses)"
        )
    spec = LOSSES[loss_name]
    wants_several = spec.num_labels == "several"
    if wants_several and num_labels < 2:
        raise ConfigError(f"train.loss {loss_name} needs model.num_labels >= 2 (one logit per class)")
    if not wants_several and num_labels != 1:
        raise ConfigError(f"train.loss {loss_name} needs model.num_labels = 1, got {num_labels}")
    if eval_kind == "classification" and num_labels < 2:
        raise ConfigError("eval.kind classification needs model.num_labels >= 2 and train.loss CrossEntropyLoss")
    if eval_kind != "classification" and num_labels > 1:
        raise ConfigError(f"eval.kind {eval_kind} scores pairs with one logit; set eval.kind classification")
    allowed = set(spec.kwargs)
    extra = set(loss_kwargs) - allowed
    if extra:
        raise ConfigError(
            f"train.loss_kwargs has {sorted(extra)}, which {loss_name} does not take"
            + (f"; it takes {sorted(allowed)}" if allowed else "")
        )


def check_loss_shape(loss_name: str, shape: str, has_label: bool, where: str) -> None:
    """Raise a ConfigError when the training set's shape (found from its columns) is not one the
    loss takes: named before Ray starts, with the columns the loss needs."""
    spec = LOSSES[loss_name]
    if spec.shape != shape:
        raise ConfigError(
            f"train.loss {loss_name} trains on the {spec.shape} shape ({SHAPE_COLUMNS[spec.shape]}), but {where} "
            f"has the {shape} shape ({SHAPE_COLUMNS[shape]}): give it those columns (map yours with data.columns), "
            f"or choose a loss of the {shape} shape: "
            + ", ".join(name for name, other in LOSSES.items() if other.shape == shape)
        )
    if shape == "n-tuple" and spec.needs_label and not has_label:
        raise ConfigError(
            f"train.loss {loss_name} needs teacher scores in a label column (a list: the positive's score and each "
            f"negative's, or the margins), and {where} has none: add one (rerank-ray score writes it) or map it "
            "with data.columns.label"
        )
