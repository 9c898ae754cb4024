"""The search space of ``rerank-ray tune``: parsed and checked on load, turned into Ray Tune domains.

A space maps config fields, by dotted name, to a distribution::

    space:
      train.learning_rate: {loguniform: [1e-5, 1e-4]}
      train.per_device_batch_size: {choice: [16, 32]}
      train.epochs: {choice: [1, 2]}

Keys may also be nested (``train: {learning_rate: {...}}``), which is what a command-line override
such as ``tune.space.train.epochs={choice: [1, 2]}`` produces. Every bound and every listed value is
checked against the field's type here, so a typo fails on load, naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from rerank_ray.config import Config, coerce_value, type_name
from rerank_ray.errors import ConfigError

#: Sections whose fields may be searched. ``eval`` defines what trials are compared on, ``scaling``
#: what each trial runs on and ``run`` where it is stored: searching those would compare unlike things.
TUNABLE_SECTIONS = ("train", "model", "data")
#: Distribution kinds: ranges take ``[low, high]`` (both ends included), ``choice`` a list of values.
RANGE_KINDS = ("loguniform", "uniform", "randint")
KINDS = (*RANGE_KINDS, "choice")


@dataclass(frozen=True)
class Dimension:
    key: str
    """Dotted config key, e.g. ``train.learning_rate``."""
    kind: str
    """One of :data:`KINDS`."""
    values: tuple
    """``(low, high)`` for a range, the listed values for ``choice``; coerced to the field's type."""

    @property
    def where(self) -> str:
        return f"tune.space.{self.key}"

    def probes(self) -> tuple:
        """Values worth checking against the whole config: every choice, both ends of a range."""
        return self.values

    def describe(self) -> str:
        if self.kind == "choice":
            return f"`{self.key}` one of {', '.join(repr(v) for v in self.values)}"
        low, high = self.values
        label = {"loguniform": "log-uniform", "uniform": "uniform", "randint": "integer"}[self.kind]
        return f"`{self.key}` {label} in [{low:g}, {high:g}]"


def flatten_space(space: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{dotted key: {kind: values}}`` from a space written with dotted (``train.epochs``) or
    nested (``train: {epochs: ...}``) keys."""
    flat: dict[str, dict[str, Any]] = {}
    for key, value in space.items():
        nested = "." not in key and isinstance(value, dict) and not any(kind in value for kind in KINDS)
        items = value.items() if nested else [(None, value)]
        for name, spec in items:
            dotted = f"{key}.{name}" if nested else key
            if not isinstance(spec, dict):
                raise ConfigError(
                    f"tune.space.{dotted} must be a mapping such as {{loguniform: [1e-5, 1e-4]}} or "
                    f"{{choice: [16, 32]}}, got {spec!r} (a fixed value belongs in its own section: {dotted}={spec!r})"
                )
            flat[dotted] = spec
    return flat


def _field_hint(key: str) -> Any:
    """The type of config field ``section.field``; a ConfigError naming the key if there is none."""
    where = f"tune.space.{key}"
    section, _, name = key.partition(".")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections or not name:
        raise ConfigError(f"{where}: not a config field; keys look like train.learning_rate")
    if section not in TUNABLE_SECTIONS:
        raise ConfigError(
            f"{where}: the {section} section cannot be searched (only {', '.join(TUNABLE_SECTIONS)}): "
            "eval decides what trials are compared on, scaling what they run on, run where they are stored"
        )
    section_type = typing.get_type_hints(Config)[section]
    hints = typing.get_type_hints(section_type)
    if name not in hints:
        close = difflib.get_close_matches(name, list(hints), n=1)
        hint = f" (did you mean tune.space.{section}.{close[0]}?)" if close else ""
        raise ConfigError(f"{where}: {section} has no field {name!r}{hint}")
    return hints[name]


def _numeric_kind(hint: Any) -> type | None:
    """float or int if the field holds that number (also inside ``X | None``), else None."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in (float, int):
        if option in options:
            return option
    return None


def parse_dimension(key: str, spec: dict[str, Any]) -> Dimension:
    where = f"tune.space.{key}"
    hint = _field_hint(key)
    kinds = [k for k in spec if k in KINDS]
    unknown = [k for k in spec if k not in KINDS]
    if unknown or len(kinds) != 1:
        raise ConfigError(f"{where} must have exactly one of {', '.join(KINDS)}, got {sorted(spec)}")
    (kind,) = kinds
    raw = spec[kind]
    if kind == "choice":
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}: choice needs a non-empty list of values, got {raw!r}")
        values = tuple(coerce_value(v, hint, f"{where}.choice[{i}]") for i, v in enumerate(raw))
        return Dimension(key, kind, values)
    if not isinstance(raw, list) or len(raw) != 2:
        raise ConfigError(f"{where}: {kind} needs [low, high], got {raw!r}")
    number = _numeric_kind(hint)
    wanted = int if kind == "randint" else float
    if number is not wanted:
        fix = {int: "; use randint or choice", float: "; use loguniform, uniform or choice"}.get(number, "; use choice")
        raise ConfigError(f"{where}: {kind} draws {wanted.__name__}s, but {key} holds {type_name(hint)}{fix}")
    low, high = (coerce_value(v, wanted, f"{where}.{kind}[{i}]") for i, v in enumerate(raw))
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and not (low > 0 and math.isfinite(high)):
        raise ConfigError(f"{where}: loguniform needs 0 < low < high, got [{low}, {high}]")
    return Dimension(key, kind, (low, high))


def parse_space(space: dict[str, Any], search: str) -> list[Dimension]:
    """The checked dimensions of ``tune.space`` for search algorithm ``search``."""
    dims = [parse_dimension(key, spec) for key, spec in flatten_space(space).items()]
    if search == "grid":
        for dim in dims:
            if dim.kind != "choice":
                raise ConfigError(
                    f"{dim.where}: grid search takes listed values only; "
                    f"write {{choice: [...]}} instead of {dim.kind}, or use tune.search random or optuna"
                )
    return dims


def grid_size(dims: list[Dimension]) -> int:
    return math.prod(len(d.values) for d in dims)


def max_value(dims: list[Dimension], key: str, default: Any) -> Any:
    """The largest value ``key`` can take in the space (``default`` when it is not searched)."""
    for dim in dims:
        if dim.key == key:
            return max(dim.values)
    return default


def to_param_space(dims: list[Dimension], search: str) -> dict[str, Any]:
    """Nested Ray Tune param space: ``{"train": {"learning_rate": tune.loguniform(...)}}``."""
    from ray import tune

    space: dict[str, Any] = {}
    for dim in dims:
        if dim.kind == "choice":
            domain = tune.grid_search(list(dim.values)) if search == "grid" else tune.choice(list(dim.values))
        elif dim.kind == "loguniform":
            domain = tune.loguniform(*dim.values)
        elif dim.kind == "uniform":
            domain = tune.uniform(*dim.values)
        else:
            low, high = dim.values
            domain = tune.randint(low, high + 1)  # Tune's upper bound is exclusive; ours is included
        section, name = dim.key.split(".", 1)
        space.setdefault(section, {})[name] = domain
    return space


def flatten_params(params: dict[str, Any]) -> dict[str, Any]:
    """Tune's nested trial config ``{"train": {"learning_rate": x}}`` -> ``{"train.learning_rate": x}``
    (two levels, as :func:`to_param_space` builds it; dict-valued fields stay whole)."""
    return {f"{section}.{name}": value for section, values in params.items() for name, value in values.items()}


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the plain config dict ``base`` with the dotted ``params`` set."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    return raw


def check_tune(config: Config) -> list[Dimension]:
    """The checked dimensions of the ``tune:`` section, after its own checks (trial counts, the
    scheduler's settings against the longest trial, Optuna installed when asked for). Only
    ``rerank-ray tune`` reads that section, so only it checks it: a ``train`` run or a worker
    never does."""
    tune = config.tune
    dims = parse_space(tune.space, tune.search)
    if not dims:
        raise ConfigError("tune.space is empty: name at least one field to search, e.g. train.learning_rate")
    if tune.num_samples < 1:
        raise ConfigError(f"tune.num_samples must be at least 1, got {tune.num_samples}")
    if tune.max_concurrent_trials is not None and tune.max_concurrent_trials < 1:
        raise ConfigError(f"tune.max_concurrent_trials must be at least 1 or null, got {tune.max_concurrent_trials}")
    if tune.scheduler == "asha":
        longest = max_value(dims, "train.epochs", config.train.epochs)
        if not 0 < tune.grace_period <= longest:
            raise ConfigError(
                f"tune.grace_period must be in (0, {longest}] epochs (the longest trial), got {tune.grace_period}"
            )
        if tune.reduction_factor <= 1:
            raise ConfigError(f"tune.reduction_factor must be above 1, got {tune.reduction_factor}")
    if tune.search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise ConfigError("tune.search optuna needs Optuna: pip install 'rerank-ray[tune]'")
    return dims


def trial_config(base: dict[str, Any], params: dict[str, Any], trial_id: str, trials_dir: str) -> Config:
    """The base config with the trial's values (dotted keys), as a Train run named by the trial id."""
    raw = apply_params(base, params)
    raw["run"].update(name=trial_id, storage_path=trials_dir, output_dir=None)
    return Config.from_dict(raw)


def check_values(config: Config, dims: list[Dimension]) -> None:
    """Build the config with every listed value and both ends of every range, one at a time, so a
    value the config rejects (``train.warmup_ratio: 1.5``) fails before Ray starts, naming the key."""
    base = config.to_dict()
    for dim in dims:
        for value in dim.probes():
            try:
                Config.from_dict(apply_params(base, {dim.key: value}))
            except ConfigError as err:
                raise ConfigError(f"{dim.where}: {value!r} is not a valid value: {err}") from err
