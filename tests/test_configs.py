"""Every shipped config loads and validates; the reference recipes say what their runs used."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rerank_ray.config import load_config
from rerank_ray.mining.config import load_mine_config

ROOT = Path(__file__).parents[1]
#: Training configs; the files with a ``mine:`` section are ``rerank-ray mine``'s.
SHIPPED = [
    p for p in sorted((ROOT / "jobs" / "configs").rglob("*.yaml")) if "mine" not in yaml.safe_load(p.read_text())
]
MINING = [p for p in sorted((ROOT / "jobs" / "configs").rglob("*.yaml")) if p not in SHIPPED]
REFERENCE = ROOT / "jobs" / "configs" / "reference"


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT / "jobs" / "configs")) for p in SHIPPED])
def test_every_shipped_config_loads_and_validates(path):
    config = load_config(path)  # load_config runs Config.check
    config.check()
    assert config.headline_metric.startswith(config.eval.name + "_")


@pytest.mark.parametrize("path", MINING, ids=[p.name for p in MINING])
def test_every_shipped_mining_config_loads(path):
    config = load_mine_config(path, {})
    assert config.embedder and config.pairs and config.output
    with pytest.raises(Exception, match="unknown config key mine"):
        load_config(path)  # a training run given a mining config says so


# (file, hub id, evaluator kind, batch, epochs, precision, eval steps, headline)
RECIPES = [
    ("ref1-bge-reranker-v2-m3-binary.yaml", "BAAI/bge-reranker-v2-m3", "binary", 16, 3, "fp32", 0, "eval_average_precision"),
    ("ref2-ms-marco-minilm-l6-binary.yaml", "cross-encoder/ms-marco-MiniLM-L6-v2", "binary", 16, 3, "fp32", 500, "eval_average_precision"),
    ("ref3-gte-multilingual-reranker-correlation.yaml", "Alibaba-NLP/gte-multilingual-reranker-base", "correlation", 32, 5, "fp16", 100, "eval_spearman"),
    ("ref4-nli-deberta-v3-binary.yaml", "cross-encoder/nli-deberta-v3-base", "binary", 16, 1, "fp16", 0, "eval_average_precision"),
    ("ref5-bge-reranker-v2-m3-reranking.yaml", "BAAI/bge-reranker-v2-m3", "reranking", 8, 2, "fp16", 0, "eval_ndcg@10"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "hub_id", "kind", "batch", "epochs", "precision", "steps", "headline"), RECIPES)
def test_reference_recipes_hold_the_reference_hyperparameters(
    name, hub_id, kind, batch, epochs, precision, steps, headline
):
    config = load_config(REFERENCE / name)
    assert config.model.name_or_path == hub_id
    assert (config.eval.kind, config.train.per_device_batch_size, config.train.epochs) == (kind, batch, epochs)
    assert (config.train.precision, config.eval.steps, config.headline_metric) == (precision, steps, headline)
    train = config.train
    assert (train.loss, train.loss_kwargs, train.learning_rate, train.lr_scheduler, train.seed) == (
        "BinaryCrossEntropyLoss",
        {},  # the library's default activation for BCE: identity
        5e-5,
        "linear",
        42,
    )
    assert config.model.max_length == (256 if "deberta" in name else None)
    # Only the custom-code model opts in to running code shipped with it.
    assert config.model.trust_remote_code == (hub_id == "Alibaba-NLP/gte-multilingual-reranker-base")


def test_the_causal_lm_recipe_trains_qwen3_reranker_with_its_instruction():
    """Reference 6: a decoder reranker in bf16, its instruction as the default prompt (saved with the
    export, so predict applies it), the rendered chat capped at 512 tokens."""
    config = load_config(REFERENCE / "ref6-qwen3-reranker-0.6b-reranking.yaml")
    model = config.model
    assert model.name_or_path == "Qwen/Qwen3-Reranker-0.6B" and model.num_labels == 1 and model.max_length == 512
    assert model.prompts and model.default_prompt_name in model.prompts
    assert (config.train.precision, config.eval.kind, config.headline_metric) == ("bf16", "reranking", "eval_ndcg@10")
    assert config.scaling.use_gpu and not model.trust_remote_code
    assert model.lora.r == 16 and config.train.gradient_checkpointing


def test_trust_remote_code_is_off_by_default():
    from rerank_ray.config import ModelConfig

    assert ModelConfig().trust_remote_code is False
    unflagged = [p for p in SHIPPED if load_config(p).model.trust_remote_code and "gte-multilingual" not in p.name]
    assert not unflagged
