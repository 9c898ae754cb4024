"""LoRA adapters (``model.lora``) on a CrossEncoder's backbone, with peft.

The backbone (``cross_encoder[0].model``) is wrapped in peft's ``PeftModel`` and put back into
the CrossEncoder, so the library's forward, ``preprocess`` and save work unchanged. Why not the
library's ``CrossEncoder.add_adapter``: with transformers 5.25 it needs peft 0.22, newer than any
release, and on that path a new scoring head stays frozen at its random start and is left out of
the saved adapter (sentence-transformers issue #3980) unless ``modules_to_save`` names it;
``get_peft_model`` with the sequence-classification task trains and saves the head by itself.

A causal-LM reranker has no new head (its score is its yes/no logits), so only its adapters train.
"""

from __future__ import annotations

from typing import Any

from rerank_ray.config import LoraConfig
from rerank_ray.data.encoding import CAUSAL_TASK

#: The adapter's weights in a saved adapter folder (peft's file name).
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_causal(cross_encoder: Any) -> bool:
    return getattr(cross_encoder[0], "transformer_task", None) == CAUSAL_TASK


def add_lora(cross_encoder: Any, lora: LoraConfig) -> None:
    """Wrap the backbone in LoRA adapters (in place); only they, and the modules to save, stay trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    settings = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha if lora.alpha is not None else 2 * lora.r,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules or "all-linear",
        modules_to_save=lora.modules_to_save,
        task_type=TaskType.CAUSAL_LM if is_causal(cross_encoder) else TaskType.SEQ_CLS,
    )
    cross_encoder[0].model = get_peft_model(cross_encoder[0].auto_model, settings)


def has_lora(cross_encoder: Any) -> bool:
    from peft import PeftModel

    return isinstance(cross_encoder[0].model, PeftModel)


def adapter_state(cross_encoder: Any) -> dict[str, Any]:
    """The adapters' and the saved modules' weights: what a LoRA checkpoint holds of the model."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(cross_encoder[0].model)


def load_adapter_state(cross_encoder: Any, folder: str) -> None:
    """Load an adapter folder's weights (:data:`ADAPTER_WEIGHTS`) into the wrapped backbone, exactly:
    a key the model lacks, or one of its adapter keys the file lacks, is an error."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(folder, device="cpu")
    result = set_peft_model_state_dict(cross_encoder[0].model, weights)
    missing = [key for key in result.missing_keys if "lora_" in key or "modules_to_save" in key]
    if result.unexpected_keys or missing:
        raise RuntimeError(
            f"the adapter in {folder} does not fit the model: unexpected {result.unexpected_keys[:5]}, "
            f"missing {missing[:5]}"
        )


def merge(cross_encoder: Any) -> None:
    """Fold the adapters into the base weights (in place): the CrossEncoder is a plain one again,
    which ``CrossEncoder(path)`` loads without peft once saved."""
    cross_encoder[0].model = cross_encoder[0].model.merge_and_unload()


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
