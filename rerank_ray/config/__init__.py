"""The one typed configuration of a run.

A run is described by nested dataclasses (model, data, train, eval, scaling, run; tune for a
hyperparameter search): :mod:`~rerank_ray.config.sections`, a docstring under every field
(``rerank-ray fields`` prints them). They are loaded from YAML plus dotted ``key=value``
overrides (:mod:`~rerank_ray.config.loading`), checked before Ray starts
(:mod:`~rerank_ray.config.checks`), handed to every Ray worker as a plain dict and rebuilt there
with :meth:`Config.from_dict`. The loss table the checks read is :mod:`rerank_ray.losses`.
"""

from rerank_ray.config.loading import apply_override, coerce_value, field_docs, type_name
from rerank_ray.config.root import Config, load_config
from rerank_ray.config.sections import (
    GROUP_COLUMNS,
    HEADLINE,
    PAIR_COLUMNS,
    TRACKERS,
    DataConfig,
    DataSource,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    RunConfig,
    ScalingConfig,
    TrainConfig,
    TuneConfig,
    headline_metric_key,
    is_canonical_column,
)

__all__ = [
    "GROUP_COLUMNS",
    "HEADLINE",
    "PAIR_COLUMNS",
    "TRACKERS",
    "Config",
    "DataConfig",
    "DataSource",
    "EvalConfig",
    "LoraConfig",
    "ModelConfig",
    "RunConfig",
    "ScalingConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_override",
    "coerce_value",
    "field_docs",
    "headline_metric_key",
    "is_canonical_column",
    "load_config",
    "type_name",
]
