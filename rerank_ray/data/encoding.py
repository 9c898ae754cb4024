"""A pair's tokens exactly as sentence-transformers feeds them to the model it was loaded as.

``CrossEncoder.predict`` runs every pair through its first module's ``preprocess``: for an
encoder (BERT, XLM-R, DeBERTa-v2) one tokenizer call on (query, document) with the prompt glued
to the query; for a causal-LM reranker (Qwen3-Reranker and the like) the pair becomes ``query``
and ``document`` messages, the prompt a system message, rendered through the model's chat
template, truncated from the right with the template's closing tokens restored, and padded on the
left. Rather than re-implement that, this module runs the library's own ``preprocess`` inside Ray
Data tasks and the workers, on a CrossEncoder built without its weights
(:func:`load_preprocessor`: the library's loading path with the backbone replaced by its config),
and strips the padding it added (rows are re-padded per batch, on the workers, the same way).

Each row's tokens do not depend on the batch it was tokenized in (truncation and the suffix are
decided per row; tests/test_encoding.py checks both, and that our ids equal the library's for
every model family, with and without a prompt, at a truncating max length).

``model.max_query_length`` is ours (FlagEmbedding's ``query_max_len``): the query is cut to that
many tokens before the pair is formed, so a long document cannot crowd it out of the pair.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from rerank_ray.errors import ConfigError

#: The library's task of a causal-LM reranker's backbone (its Transformer module's ``transformer_task``).
CAUSAL_TASK = "text-generation"
_LOADING = threading.Lock()


def load_preprocessor(
    source: str,
    max_length: int,
    trust_remote_code: bool = False,
    revision: str | None = None,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Any:
    """``CrossEncoder(source)`` as the library loads it (its modules, tokenizer, chat template,
    processing settings, saved prompts), but with the backbone replaced by an ``nn.Module`` that
    holds only its config: ``preprocess`` reads nothing else of it. No weights file is read, so
    it is built in a fraction of a second and pickles to the size of its tokenizer."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer

    def config_only(self, name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs):
        return _config_only_class()(config)

    # The library's loader, minus the weights: patched only while this one constructor runs.
    with _LOADING:
        original = Transformer._load_model
        Transformer._load_model = config_only
        try:
            return CrossEncoder(
                source,
                max_length=max_length,
                trust_remote_code=trust_remote_code,
                revision=revision,
                prompts=prompts,
                default_prompt_name=default_prompt_name,
                device="cpu",
            )
        finally:
            Transformer._load_model = original


def _config_only_class() -> type:
    """An ``nn.Module`` that holds a model's config and nothing else: what the weightless
    CrossEncoder has for a backbone. Made on first use (torch is imported where a command needs
    it, not with this module) and kept as this module's ``ConfigOnly``, so pickle finds it."""
    if "ConfigOnly" not in globals():
        import torch

        class ConfigOnly(torch.nn.Module):
            def __init__(self, config: Any):
                super().__init__()
                self.config = config

        ConfigOnly.__module__, ConfigOnly.__qualname__ = __name__, "ConfigOnly"
        globals()["ConfigOnly"] = ConfigOnly
    return globals()["ConfigOnly"]


def __getattr__(name: str) -> Any:
    # An unpickled encoder names rerank_ray.data.encoding.ConfigOnly before anything made it here.
    if name == "ConfigOnly":
        return _config_only_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class PairEncoder:
    """Tokenizes (query, document) pairs as ``CrossEncoder.predict`` does for one model, without
    padding. Picklable: the driver builds it once and Ray carries it to the tasks and workers."""

    preprocessor: Any
    """The weightless CrossEncoder of :func:`load_preprocessor`."""
    prompt: str | None = None
    """The prompt applied to every pair (``model.prompts[model.default_prompt_name]``), as predict applies it."""
    max_query_length: int | None = None
    """Queries longer than this many tokens are cut to it before the pair is formed."""

    @classmethod
    def build(
        cls,
        source: str,
        max_length: int,
        trust_remote_code: bool = False,
        revision: str | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        max_query_length: int | None = None,
    ) -> PairEncoder:
        preprocessor = load_preprocessor(
            source, max_length, trust_remote_code, revision, prompts=prompts, default_prompt_name=default_prompt_name
        )
        prompt = default_prompt(preprocessor)
        return cls(preprocessor=preprocessor, prompt=prompt, max_query_length=max_query_length)

    @property
    def module(self) -> Any:
        """The library's Transformer module, whose ``preprocess`` this runs."""
        return self.preprocessor[0]

    @property
    def tokenizer(self) -> Any:
        return self.module.tokenizer

    @property
    def causal(self) -> bool:
        """A causal-LM reranker (a chat template, left padding, a yes/no score)."""
        return getattr(self.module, "transformer_task", None) == CAUSAL_TASK

    @property
    def max_length(self) -> int:
        return int(self.preprocessor.max_seq_length)

    @property
    def token_types(self) -> bool:
        return "token_type_ids" in self.tokenizer.model_input_names

    def encode(self, first: list[str], second: list[str]) -> dict[str, list[list[int]]]:
        """Each pair's ``input_ids`` (and ``token_type_ids`` where the model takes them), unpadded."""
        if not first:
            return {"input_ids": [], **({"token_type_ids": []} if self.token_types else {})}
        queries = self.cut_queries(first) if self.max_query_length is not None else first
        features = self.preprocessor.preprocess(list(zip(queries, second)), prompt=self.prompt)
        mask = features["attention_mask"].bool().numpy()
        out = {"input_ids": _unpad(features["input_ids"].numpy(), mask)}
        if "token_type_ids" in features:
            out["token_type_ids"] = _unpad(features["token_type_ids"].numpy(), mask)
        return out

    def cut_queries(self, queries: list[str]) -> list[str]:
        assert self.max_query_length is not None
        return cut_queries(self.tokenizer, queries, self.max_query_length)


def cut_queries(tokenizer: Any, queries: list[str], limit: int) -> list[str]:
    """Each query cut after its ``limit``-th token (as the tokenizer splits it alone, without
    special tokens): the text up to the end of that token, so the cut query tokenizes to the same
    first tokens. Needs a fast tokenizer (its offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("model.max_query_length needs a fast tokenizer (one with offsets): this model has none")
    encoded = tokenizer(queries, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    return [
        query if len(offsets) <= limit else query[: offsets[limit - 1][1]]
        for query, offsets in zip(queries, encoded["offset_mapping"])
    ]


#: Written beside an exported model: what rerank-ray applies to its inputs that the library's
#: ``CrossEncoder`` does not know (``rerank-ray eval`` and ``rank`` read it).
INFERENCE_FILE = "rerank_ray.json"


def saved_max_query_length(model_folder: str) -> int | None:
    """The ``model.max_query_length`` a model was trained with (its :data:`INFERENCE_FILE`), or None."""
    path = os.path.join(model_folder, INFERENCE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("max_query_length")


def default_prompt(preprocessor: Any) -> str | None:
    """The prompt ``predict`` applies when called without one: ``prompts[default_prompt_name]``."""
    name = getattr(preprocessor, "default_prompt_name", None)
    if name is None:
        return None
    prompts = getattr(preprocessor, "prompts", None) or {}
    if name not in prompts:
        raise ConfigError(
            f"model.default_prompt_name {name!r} is not one of the model's prompts ({sorted(prompts)}): "
            "add it to model.prompts"
        )
    return prompts[name] or None


def _unpad(values: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    """The real tokens of each padded row (padding may be on either side)."""
    return [row[keep].tolist() for row, keep in zip(values, mask)]
