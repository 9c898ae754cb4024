"""The tune section and its search space: checked on load, errors naming the key; no Ray started."""

from __future__ import annotations

import pytest

from rerank_ray.config import Config, load_config
from rerank_ray.errors import ConfigError
from rerank_ray.tune.space import check_tune, check_values, flatten_space, parse_space, to_param_space

BASE = {"model": {"name_or_path": "m"}, "data": {"train": ["t.jsonl"], "eval": ["e.jsonl"]}}


def _config(**tune) -> Config:
    """A config with this tune section, checked as ``rerank-ray tune`` checks it on load."""
    config = Config.from_dict({**BASE, "tune": tune})
    check_tune(config)
    return config


def test_a_train_run_does_not_check_the_tune_section():
    """Only ``rerank-ray tune`` reads tune:, so a typo in its space (or optuna missing) cannot
    fail a train run or a worker rebuilding the config; the section's keys are still known keys."""
    config = Config.from_dict({**BASE, "tune": {"space": {"train.learnig_rate": {"choice": [1e-5]}}}})
    with pytest.raises(ConfigError, match="tune.space.train.learnig_rate: train has no field"):
        check_tune(config)
    with pytest.raises(ConfigError, match="unknown config key tune.serach"):
        Config.from_dict({**BASE, "tune": {"serach": "grid"}})


def test_default_space_searches_learning_rate_batch_and_epochs():
    config = _config()
    dims = {d.key: d for d in parse_space(config.tune.space, config.tune.search)}
    assert dims["train.learning_rate"].kind == "loguniform"
    assert dims["train.per_device_batch_size"].values == (16, 32)
    assert dims["train.epochs"].values == (1, 2, 3)
    assert config.headline_metric == "eval_average_precision"  # what Tune maximises


@pytest.mark.parametrize(
    ("space", "search", "message"),
    [
        ({"train.learnig_rate": {"choice": [1e-5]}}, "random", "tune.space.train.learnig_rate: train has no field"),
        ({"train.learnig_rate": {"choice": [1e-5]}}, "random", "did you mean tune.space.train.learning_rate?"),
        ({"eval.steps": {"choice": [10]}}, "random", "tune.space.eval.steps: the eval section cannot be searched"),
        ({"epochs": {"choice": [1]}}, "random", "tune.space.epochs: not a config field"),
        ({"train.epochs": {"loguniform": [1, 3]}}, "random", "tune.space.train.epochs: loguniform draws floats"),
        ({"train.learning_rate": {"randint": [1, 3]}}, "random", "randint draws ints, but train.learning_rate"),
        ({"train.loss": {"uniform": [0, 1]}}, "random", "train.loss holds str; use choice"),
        ({"train.per_device_batch_size": {"choice": [16, "x"]}}, "random", "batch_size.choice[1] must be int"),
        ({"train.learning_rate": {"loguniform": [0, 1e-4]}}, "random", "loguniform needs 0 < low < high"),
        ({"train.learning_rate": {"uniform": [1e-4, 1e-5]}}, "random", "uniform needs low < high"),
        ({"train.learning_rate": {"choice": []}}, "random", "choice needs a non-empty list"),
        ({"train.learning_rate": {"between": [1, 2]}}, "random", "must have exactly one of loguniform"),
        ({"train.learning_rate": 3e-5}, "random", "a fixed value belongs in its own section"),
        ({"train.learning_rate": {"loguniform": [1e-5, 1e-4]}}, "grid", "grid search takes listed values only"),
        ({}, "random", "tune.space is empty"),
    ],
)
def test_bad_space_fails_on_load_naming_the_key(space, search, message):
    with pytest.raises(ConfigError, match=None) as err:
        _config(space=space, search=search)
    assert message in str(err.value)


def test_other_tune_fields_are_checked():
    with pytest.raises(ConfigError, match="tune.num_samples must be at least 1"):
        _config(num_samples=0)
    with pytest.raises(ConfigError, match="tune.max_concurrent_trials must be at least 1"):
        _config(max_concurrent_trials=0)
    with pytest.raises(ConfigError, match=r"tune.grace_period must be in \(0, 2\] epochs"):
        _config(space={"train.epochs": {"choice": [1, 2]}}, grace_period=3)
    with pytest.raises(ConfigError, match="tune.reduction_factor must be above 1"):
        _config(reduction_factor=1)
    with pytest.raises(ConfigError, match="tune.search must be one of"):
        _config(search="bayes")


def test_nested_keys_and_overrides_give_the_same_space(tmp_path):
    """YAML may nest the keys; a command-line override always does."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: {name_or_path: m}\ndata: {train: t.jsonl}\n"
        "tune:\n  space:\n    train.learning_rate: {loguniform: [1e-5, 1e-4]}\n"
    )
    config = load_config(path, ["tune.space.train.epochs={choice: [1, 2]}"])
    flat = flatten_space(config.tune.space)
    assert set(flat) == {"train.learning_rate", "train.epochs"}
    # "1e-5" (read by YAML as a string) is coerced to a float like every config float
    (lr,) = [d for d in parse_space(config.tune.space, "random") if d.key == "train.learning_rate"]
    assert lr.values == (1e-5, 1e-4)


def test_values_are_checked_against_the_whole_config():
    config = _config(space={"train.warmup_ratio": {"choice": [0.0, 1.5]}})
    dims = parse_space(config.tune.space, "random")
    with pytest.raises(ConfigError, match=r"tune.space.train.warmup_ratio: 1.5 is not a valid value: .*\[0, 1\)"):
        check_values(config, dims)


def test_param_space_uses_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = {
        "train.learning_rate": {"loguniform": [1e-5, 1e-4]},
        "train.epochs": {"randint": [1, 3]},
        "train.per_device_batch_size": {"choice": [16, 32]},
    }
    random_space = to_param_space(parse_space(space, "random"), "random")
    assert isinstance(random_space["train"]["learning_rate"], Float)
    epochs = random_space["train"]["epochs"]
    assert isinstance(epochs, Integer) and (epochs.lower, epochs.upper) == (1, 4)  # both ends included
    assert isinstance(random_space["train"]["per_device_batch_size"], Categorical)
    grid = to_param_space(parse_space({"train.per_device_batch_size": {"choice": [16, 32]}}, "grid"), "grid")
    assert grid["train"]["per_device_batch_size"] == {"grid_search": [16, 32]}


def test_trials_that_fit_the_cluster():
    from rerank_ray.tune.search import TRIAL_DRIVER_CPUS, trial_resources, trials_that_fit

    config = _config()  # 2 workers x 1 CPU
    assert trial_resources(config) == {"CPU": 2 + TRIAL_DRIVER_CPUS}
    assert trials_that_fit(config, {"CPU": 4}) == 1  # 2 CPUs stay with Ray Data
    assert trials_that_fit(config, {"CPU": 12}) == 4
    gpu = Config.from_dict({**BASE, "scaling": {"num_workers": 2, "use_gpu": True}})
    assert trials_that_fit(gpu, {"CPU": 64, "GPU": 8}) == 4
    assert trials_that_fit(gpu, {"CPU": 64}) == 1  # no GPU at all: one trial, which waits for them


def test_cli_tune_exits_2_naming_the_key(capsys, tmp_path):
    from rerank_ray.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {train: t.jsonl, eval: e.jsonl}\n")
    code = main(["tune", "--config", str(path), "tune.space={train.learnig_rate: {loguniform: [1e-5, 1e-4]}}"])
    assert code == 2
    assert "tune.space.train.learnig_rate: train has no field" in capsys.readouterr().err


def test_tune_needs_an_eval_set(capsys, tmp_path):
    from rerank_ray.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {train: t.jsonl}\n")
    assert main(["tune", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "rerank-ray tune compares trials on the headline metric of their evaluation" in err
    assert "data.eval (pairs), eval.beir (a BEIR folder) or eval.sets (several)" in err


def test_optuna_draws_trials_in_the_nested_form_the_trials_read():
    """Optuna's TPE (the optional extra) gets the same space and hands back the nested values a
    trial applies; the concurrency limit goes to Tune's limiter, num_samples to Tune."""
    pytest.importorskip("optuna")
    from rerank_ray.tune.search import build_searcher
    from rerank_ray.tune.space import flatten_params

    config = _config(search="optuna", num_samples=3, seed=1)
    searcher, max_concurrent, num_samples = build_searcher(config, concurrency=2)
    assert (max_concurrent, num_samples) == (2, 3)
    dims = parse_space(config.tune.space, "optuna")
    assert searcher.set_search_properties(config.headline_metric, "max", to_param_space(dims, "optuna"))
    for i in range(3):
        values = flatten_params(searcher.suggest(f"t{i}"))
        assert set(values) == {d.key for d in dims}
        assert 1e-5 <= values["train.learning_rate"] <= 1e-4
        assert values["train.per_device_batch_size"] in (16, 32) and values["train.epochs"] in (1, 2, 3)
        searcher.on_trial_complete(f"t{i}", {config.headline_metric: 0.5 + i / 10})
