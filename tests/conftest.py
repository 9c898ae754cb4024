"""Shared fixtures: tiny models built once per session, one local Ray for the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import (  # noqa: E402
    build_tiny_bert,
    build_tiny_bi_encoder,
    build_tiny_custom_code,
    build_tiny_deberta_v2,
    build_tiny_xlm_roberta,
    synthetic_pairs,
    write_jsonl,
)
from tiny_causal import build_tiny_causal_reranker  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# Ray Train's controller takes one report per worker per poll, every 2 s by default: a run's
# checkpoints and its end wait for it (about 7 s of a tiny test run's 42). Every Ray the tests
# start (in process, the CLI's embedded one, the local cluster's nodes) inherits this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_bert_3_labels(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert-3", num_labels=3)


@pytest.fixture(scope="session")
def tiny_bi_encoder(tmp_path_factory) -> Path:
    return build_tiny_bi_encoder(tmp_path_factory.mktemp("models") / "tiny-bi-encoder")


@pytest.fixture(scope="session")
def tiny_xlm_roberta(tmp_path_factory) -> Path:
    return build_tiny_xlm_roberta(tmp_path_factory.mktemp("models") / "tiny-xlm-roberta")


@pytest.fixture(scope="session")
def tiny_deberta_v2(tmp_path_factory) -> Path:
    return build_tiny_deberta_v2(tmp_path_factory.mktemp("models") / "tiny-deberta-v2")


@pytest.fixture(scope="session")
def tiny_custom_code(tmp_path_factory) -> Path:
    return build_tiny_custom_code(tmp_path_factory.mktemp("models") / "tiny-custom-code")


@pytest.fixture(scope="session")
def tiny_causal(tmp_path_factory) -> Path:
    """A 2-layer Qwen3-shaped causal-LM reranker with a chat template and "yes"/"no" tokens."""
    return build_tiny_causal_reranker(tmp_path_factory.mktemp("models") / "tiny-causal")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test that trains: starting Ray costs seconds, a test should not."""
    import ray

    from rerank_ray.run.cluster import free_port, own_agent_port, pinned_state_api

    if not ray.is_initialized():
        dashboard_port, api_env = pinned_state_api()
        with own_agent_port(free_port()):  # as the embedded Ray does: Ray's default ports left to others
            ray.init(
                num_cpus=4,
                include_dashboard=True,
                dashboard_port=dashboard_port,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **api_env}},
                log_to_driver=True,
            )
    yield ray
    ray.shutdown()


@pytest.fixture
def pair_files(tmp_path) -> dict[str, Path]:
    return {
        "train": write_jsonl(synthetic_pairs(203, seed=1), tmp_path / "data" / "train.jsonl"),
        "eval": write_jsonl(synthetic_pairs(61, seed=2), tmp_path / "data" / "eval.jsonl"),
    }


def base_config(model: Path, train_path, eval_path, storage: Path, **sections) -> dict:
    """A small, fast run: 2 CPU workers, tiny model, frequent evaluation."""
    raw = {
        "model": {"name_or_path": str(model)},
        "data": {"train": [str(p) for p in (train_path if isinstance(train_path, list) else [train_path])]},
        "train": {"epochs": 2, "per_device_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 4},
        "eval": {"steps": 10},
        "scaling": {"num_workers": 2},
        "run": {"storage_path": str(storage), "name": "run"},
    }
    if eval_path is not None:
        raw["data"]["eval"] = [str(eval_path)]
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw
