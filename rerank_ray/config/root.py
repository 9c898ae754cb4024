"""The root of a run's config: its sections, built from a plain dict and checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank_ray.config.checks import check_sections, config_paths
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
    headline_metric_key,
)


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
        """The metric key that selects the best checkpoint and that Tune optimises."""
        return headline_metric_key(self.eval.kind, self.eval.name, self.eval.at_k)

    def trackers(self) -> list[str]:
        """``run.report_to`` with ``all`` and ``none`` expanded, in a fixed order."""
        names = set(self.run.report_to)
        if "all" in names:
            return list(TRACKERS)
        return [name for name in TRACKERS if name in names]

    def paths(self) -> dict[str, list[str]]:
        """Every path or URI of the config, by key (the ones a credential must never be written into)."""
        return config_paths(self.model, self.data, self.run)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``a.b=value`` overrides, and check the result."""
    raw: dict[str, Any] = read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        apply_override(raw, override)
    return Config.from_dict(raw)
