"""The root of a run's config: its sections, built from a plain dict and checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank_ray.config.checks import check_sections, config_paths, source_path
from rerank_ray.config.evalsets import EvalSet, best_metric, eval_sets
from rerank_ray.config.loading import apply_override, build, read_yaml
from rerank_ray.config.sections import (
    TRACKERS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    ScalingConfig,
    TrainConfig,
    TuneConfig,
)
from rerank_ray.config.trainsets import TrainSet, train_set_data, train_sets


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the pairs come from and how they are batched."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loss, optimizer, schedule and precision."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation kind and frequency."""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    """Workers and their resources."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run name, storage and export."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Hyperparameter search (``rerank-ray tune``): space, algorithm, scheduler, trials."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build and check a config from a plain nested dict (YAML, or the dict a worker gets)."""
        config = build(cls, raw, prefix="")
        config.check()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Cross-field checks (:mod:`rerank_ray.config.checks`); each error names the key and the fix."""
        check_sections(self.model, self.data, self.train, self.eval, self.scaling, self.run)

    @property
    def headline_metric(self) -> str:
        """The metric key that selects the best checkpoint, that early stopping watches and that
        Tune optimises: ``eval.metric_for_best``, else the first evaluation's headline."""
        return best_metric(self.eval_sets(), self.eval)

    def eval_sets(self) -> list[EvalSet]:
        """The run's evaluations (:mod:`rerank_ray.config.evalsets`), in the config's order."""
        return eval_sets(self.eval, self.data)

    def train_sets(self) -> list[TrainSet]:
        """A mixture's training sets (:mod:`rerank_ray.config.trainsets`); empty for a single one."""
        return train_sets(self.data, self.train)

    def for_train_set(self, train_set: TrainSet) -> Config:
        """This config as a run on ``train_set`` alone: what reads, checks and batches one training set."""
        data, train = train_set_data(self.data, self.train, train_set)
        return dataclasses.replace(self, data=data, train=train)

    def for_eval_set(self, eval_set: EvalSet) -> Config:
        """This config as a run with ``eval_set`` as its single evaluation: what the code that reads,
        checks and scores one eval set takes."""
        data = dataclasses.replace(self.data, eval=list(eval_set.sources))
        return dataclasses.replace(self, data=data, eval=eval_set.evaluation)

    def trackers(self) -> list[str]:
        """``run.report_to`` with ``all`` and ``none`` expanded, in a fixed order."""
        names = set(self.run.report_to)
        if "all" in names:
            return list(TRACKERS)
        return [name for name in TRACKERS if name in names]

    def paths(self) -> dict[str, list[str]]:
        """Every path or URI of the config, by key (the ones a credential must never be written into)."""
        paths = config_paths(self.model, self.data, self.run)
        for eval_set in self.eval_sets():
            if eval_set.key != "eval":
                paths[f"{eval_set.key}.data"] = [source_path(spec) for spec in eval_set.sources]
        return paths


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``a.b=value`` overrides, and check the result."""
    raw: dict[str, Any] = read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        apply_override(raw, override)
    return Config.from_dict(raw)
