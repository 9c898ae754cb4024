"""A mixture of training sets: ``data.train`` sources that name their own ``loss``.

When any training source is a mapping with a ``loss``, every training source is a dataset of its
own, with its own columns, shape (from its columns), label scale, loss and loss arguments; a
source that names no loss takes ``train.loss``. Each optimizer step trains one dataset's batch on
every worker (``data.sampling`` decides which: :mod:`rerank_ray.training.mixture`). A run whose
sources name no loss is the single training set of before, unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from rerank_ray.config.loading import coerce_value
from rerank_ray.config.sections import DataConfig, DataSource, TrainConfig
from rerank_ray.errors import ConfigError

#: The keys a training source mapping may carry besides where it is and its columns.
MIXTURE_KEYS = ("loss", "loss_kwargs", "name", "label_scale")


@dataclass(frozen=True)
class TrainSet:
    """One training set of a mixture."""

    key: str
    """Where the config gives it (``data.train[1]``), for messages."""
    dataset: str
    """The name of its Ray dataset (``train``, ``train_1``, ...)."""
    name: str
    """Its name in the progress line (``loss_<name>``), the trackers and the card."""
    source: DataSource
    """Its source, without the mixture's keys."""
    loss: str
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    label_scale: float = 1.0


def is_mixture(data: DataConfig) -> bool:
    return any(isinstance(spec, dict) and "loss" in spec for spec in data.train)


def dataset_name(index: int) -> str:
    """The Ray dataset of the ``index``-th training set (the first keeps the name ``train``)."""
    return "train" if index == 0 else f"train_{index}"


def train_sets(data: DataConfig, train: TrainConfig) -> list[TrainSet]:
    """The mixture's training sets, in the config's order; empty for a single training set."""
    if not is_mixture(data):
        return []
    sets = [_train_set(index, spec, data, train) for index, spec in enumerate(data.train)]
    names = [s.name for s in sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"data.train: two training sets go by the name {repeated[0]!r} (from their paths): give each a name "
            "({path: ..., loss: ..., name: judged})"
        )
    return sets


def _train_set(index: int, spec: DataSource, data: DataConfig, train: TrainConfig) -> TrainSet:
    key = f"data.train[{index}]"
    if not isinstance(spec, dict):
        spec = {"path": spec}
    own = {k: v for k, v in spec.items() if k in MIXTURE_KEYS}
    source = {k: v for k, v in spec.items() if k not in MIXTURE_KEYS}
    loss = coerce_value(own.get("loss", train.loss), str, f"{key}.loss")
    if "loss_kwargs" in own:
        loss_kwargs = coerce_value(own["loss_kwargs"], dict[str, Any], f"{key}.loss_kwargs")
    else:  # the run's arguments belong to the run's loss
        loss_kwargs = dict(train.loss_kwargs) if loss == train.loss else {}
    label_scale = coerce_value(own.get("label_scale", data.label_scale), float, f"{key}.label_scale")
    where = source.get("path", source.get("dataset", ""))
    name = coerce_value(own.get("name", _name_of(str(where))), str, f"{key}.name")
    plain: DataSource = source["path"] if set(source) == {"path"} else source
    return TrainSet(key, dataset_name(index), name, plain, loss, loss_kwargs, label_scale)


def _name_of(where: str) -> str:
    """A training set's default name: its file or folder, without the extension."""
    base = os.path.basename(where.rstrip("/")) or where
    return base.split(".")[0] or base


def train_set_data(data: DataConfig, train: TrainConfig, train_set: TrainSet) -> tuple[DataConfig, TrainConfig]:
    """The ``data`` and ``train`` sections of a run on ``train_set`` alone."""
    own_data = dataclasses.replace(
        data, train=[train_set.source], label_scale=train_set.label_scale, name=train_set.name
    )
    own_train = dataclasses.replace(train, loss=train_set.loss, loss_kwargs=dict(train_set.loss_kwargs))
    return own_data, own_train
