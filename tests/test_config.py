"""The typed config: YAML + dotted overrides, checked before anything starts."""

from __future__ import annotations

import pytest

from rerank_ray.config import Config, field_docs, load_config
from rerank_ray.errors import ConfigError
from rerank_ray.mining.config import MineConfig
from rerank_ray.training.setup import matmul_precision


def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


MINIMAL = "model:\n  name_or_path: some/model\ndata:\n  train: pairs.parquet\n"


def test_yaml_and_overrides_build_typed_config(tmp_path):
    config = load_config(
        _write(tmp_path, MINIMAL + "train:\n  learning_rate: 5e-5\n"),
        ["train.learning_rate=3e-5", "scaling.num_workers=4", "data.eval=[a.jsonl, b.jsonl]", "run.name=x"],
    )
    assert config.train.learning_rate == 3e-5 and isinstance(config.train.learning_rate, float)
    assert config.scaling.num_workers == 4
    assert config.data.train == ["pairs.parquet"]  # a single path becomes a list of one
    assert config.data.eval == ["a.jsonl", "b.jsonl"]
    assert config.run.name == "x"


def test_round_trip_through_plain_dict():
    config = Config.from_dict(
        {"model": {"name_or_path": "m"}, "data": {"train": ["t"]}, "eval": {"kind": "correlation"}}
    )
    again = Config.from_dict(config.to_dict())
    assert again == config
    assert again.headline_metric == "eval_spearman"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=1e-5", "unknown config key train.lr; known keys: loss, loss_kwargs, epochs"),
        ("train.learnin_rate=1e-5", "unknown config key train.learnin_rate (did you mean train.learning_rate?)"),
        ("trian.epochs=1", "unknown config key trian (did you mean train"),
        ("train.epochs=two", "train.epochs must be int, got str: 'two'"),
        ("train.epochs=1.5", "train.epochs must be int, got float"),
        ("scaling.use_gpu=maybe", "scaling.use_gpu must be bool"),
        ("train.precision=fp8", "train.precision must be one of 'fp32', 'fp16', 'bf16', got 'fp8'"),
        ("train.per_device_batch_size=0", "train.per_device_batch_size must be at least 1, got 0"),
        ("train.loss=LambdaRankLoss", "train.loss 'LambdaRankLoss' is not supported"),
        ("data.columns={question: q}", "data.columns has unknown key(s) ['question']"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio must be in [0, 1)"),
        ("model.num_labels=3", "train.loss BinaryCrossEntropyLoss needs model.num_labels = 1"),
        ("run.resume=true", "run.resume needs run.name"),
        ("data.prefetch_batches=-1", "data.prefetch_batches must not be negative, got -1"),
        ("train.torch_compile=sometimes", "train.torch_compile must be bool"),
        ("train", "override 'train' must look like section.key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, MINIMAL), [override])
    assert message in str(err.value)


def test_torch_compile_is_checked_against_the_installed_torch(tmp_path, monkeypatch):
    assert load_config(_write(tmp_path, MINIMAL), ["train.torch_compile=true"]).train.torch_compile
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(ConfigError, match="train.torch_compile: torch .* cannot compile on this Python/platform"):
        load_config(_write(tmp_path, MINIMAL), ["train.torch_compile=true"])


def test_tf32_is_on_by_default_and_only_touches_cuda(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.train.tf32 and matmul_precision("cuda", config.train.tf32) == "high"
    off = load_config(_write(tmp_path, MINIMAL), ["train.tf32=false"]).train.tf32
    assert matmul_precision("cuda", off) == "highest"  # PyTorch's own full-fp32 default
    assert matmul_precision("cpu", True) is None


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_required_fields():
    with pytest.raises(ConfigError, match="model.name_or_path is required"):
        Config.from_dict({"data": {"train": ["x"]}})
    with pytest.raises(ConfigError, match="data.train is required"):
        Config.from_dict({"model": {"name_or_path": "m"}})


def test_every_field_has_a_docstring():
    docs = field_docs(Config) + field_docs(MineConfig, "mine.")
    assert len(docs) > 70
    missing = [key for key, _, doc in docs if not doc]
    assert not missing, missing


def test_early_stopping_needs_an_eval_set():
    with pytest.raises(ConfigError, match="eval.early_stopping_patience watches the eval set's headline"):
        load_config(None, ["model.name_or_path=m", "data.train=t.jsonl", "eval.early_stopping_patience=2"])
    with pytest.raises(ConfigError, match="eval.early_stopping_min_delta must not be negative"):
        load_config(None, ["model.name_or_path=m", "data.train=t.jsonl", "eval.early_stopping_min_delta=-1"])
