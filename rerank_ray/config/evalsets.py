"""The evaluations of a run: the entries of ``eval.sets``, or the single evaluation the ``eval``
section describes, each resolved into the ``eval`` section and eval sources it runs with.

An entry is a plain mapping in the config (so a worker rebuilds it from the dict it gets) and is
built here into a full :class:`EvalConfig` with the loader's type checks: the per-evaluation keys
it leaves out take the ``eval`` section's values, the run-wide ones (when to evaluate, early
stopping, the batch size) are the section's alone. Each evaluation is then checked with the same
rules as a single one, its messages prefixed with the entry's key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rerank_ray.config.loading import build, coerce_value
from rerank_ray.config.sections import DataConfig, DataSource, EvalConfig, headline_metric_key
from rerank_ray.errors import ConfigError

#: Keys of ``eval`` an entry of ``eval.sets`` may set for itself and otherwise takes from the section.
INHERITED_KEYS = (
    "kind",
    "at_k",
    "query_id_column",
    "beir_split",
    "top_k",
    "always_rerank_positives",
    "retriever_batch_size",
    "drop_unrankable",
)
#: Keys only an entry gives: its name and where its data is.
OWN_KEYS = ("name", "data", "beir", "retriever", "run_file")
#: Keys of ``eval`` that are the run's, whatever the evaluations: an entry may not set them.
RUN_WIDE_KEYS = (
    "steps",
    "before_training",
    "batch_size",
    "early_stopping_patience",
    "early_stopping_min_delta",
    "sets",
    "metric_for_best",
)


@dataclass(frozen=True)
class EvalSet:
    """One evaluation of a run."""

    key: str
    """Where the config describes it (``eval`` or ``eval.sets[1]``), for messages."""
    dataset: str
    """The name of its Ray dataset (``eval``, ``eval_1``, ...)."""
    evaluation: EvalConfig
    """Its ``eval`` section: its own keys, the run-wide ones of the run's section."""
    sources: list[DataSource]
    """Its pair sources (``data.eval`` or the entry's ``data``); empty for a BEIR folder."""

    @property
    def name(self) -> str:
        return self.evaluation.name

    @property
    def headline(self) -> str:
        return headline_metric_key(self.evaluation.kind, self.evaluation.name, self.evaluation.at_k)


def dataset_name(index: int) -> str:
    """The Ray dataset of the ``index``-th evaluation (the first keeps the name ``eval``)."""
    return "eval" if index == 0 else f"eval_{index}"


def eval_sets(evaluation: EvalConfig, data: DataConfig) -> list[EvalSet]:
    """The run's evaluations, in the config's order; none without eval data."""
    if not evaluation.sets:
        if not (data.eval or evaluation.beir):
            return []
        return [EvalSet("eval", dataset_name(0), evaluation, list(data.eval))]
    for key in ("beir", "retriever", "run_file"):
        if getattr(evaluation, key) is not None:
            raise ConfigError(
                f"eval.{key} describes the single evaluation of a run without eval.sets: with eval.sets, give "
                f"each set its own {key}"
            )
    return [_entry(index, entry, evaluation, data) for index, entry in enumerate(evaluation.sets)]


def _entry(index: int, entry: Any, evaluation: EvalConfig, data: DataConfig) -> EvalSet:
    key = f"eval.sets[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{key} must be a mapping ({{name: dev, kind: binary, data: dev.tsv}}), got {entry!r}")
    run_wide = sorted(set(entry) & set(RUN_WIDE_KEYS))
    if run_wide:
        raise ConfigError(
            f"{key}.{run_wide[0]} is the run's, not a set's: set eval.{run_wide[0]} once (every set is evaluated "
            "at the same steps)"
        )
    unknown = sorted(set(entry) - set(INHERITED_KEYS) - set(OWN_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key {key}.{unknown[0]}: a set takes {', '.join(OWN_KEYS)} and any of {', '.join(INHERITED_KEYS)}"
        )
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ConfigError(f"{key} needs a name (the prefix of its metrics: {{name: dev, ...}})")
    fields = {name: getattr(evaluation, name) for name in INHERITED_KEYS}
    fields.update({k: v for k, v in entry.items() if k != "data"})
    own = build(EvalConfig, fields, prefix=f"{key}.")
    sources: list[DataSource] = coerce_value(entry["data"], list[DataSource], f"{key}.data") if "data" in entry else []
    if own.beir is not None and sources:
        raise ConfigError(f"{key}: give it either data (pair files) or beir (a BEIR folder), not both")
    if own.beir is None and not sources:
        if not data.eval:
            raise ConfigError(
                f"{key} ({own.name}) has no data: give it data (pair files), beir (a BEIR folder), or set data.eval"
            )
        sources = list(data.eval)
    merged = dataclasses.replace(
        own, **{name: getattr(evaluation, name) for name in RUN_WIDE_KEYS if name not in ("sets", "metric_for_best")}
    )
    return EvalSet(key, dataset_name(index), merged, sources)


def check_eval_sets(sets: list[EvalSet], evaluation: EvalConfig) -> None:
    """Names that tell the sets' metrics apart, and a ``metric_for_best`` one of them reports."""
    names = [s.name for s in sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"eval.sets: the name {repeated[0]!r} is given twice: each set needs its own (its metrics' prefix)"
        )
    best = evaluation.metric_for_best
    if best is None:
        return
    if not sets:
        raise ConfigError(f"eval.metric_for_best ({best}) needs an evaluation: set data.eval, eval.beir or eval.sets")
    if not any(best.startswith(f"{name}_") for name in names):
        raise ConfigError(
            f"eval.metric_for_best {best!r} is not a metric of the evaluations ({', '.join(names)}): give the full "
            f"name with its set's prefix, e.g. {sets[0].headline!r}"
        )


def best_metric(sets: list[EvalSet], evaluation: EvalConfig) -> str:
    """The metric that selects the best checkpoint: ``eval.metric_for_best``, else the first
    evaluation's headline (the section's own headline when there is none)."""
    if evaluation.metric_for_best:
        return evaluation.metric_for_best
    if sets:
        return sets[0].headline
    return headline_metric_key(evaluation.kind, evaluation.name, evaluation.at_k)
