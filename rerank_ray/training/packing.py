"""How a batch reaches the model: padded, or padding-free (``data.padding_free``).

Padded, a batch is a (pairs, longest) matrix: every layer computes on the pad tokens too.
Padding-free, the batch's pairs stand back to back in one row of sum(lengths) tokens, with

- ``position_ids`` restarting for each pair (at 0, or at ``padding_idx + 1`` for the RoBERTa family,
  whose position table starts there);
- ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (each pair's start, then the row's end) and
  ``max_length_q`` / ``max_length_k``: what flash-attention's variable-length kernels take
  (transformers passes them to every attention layer), so no kernel looks across two pairs;
- no attention mask: given ``position_ids`` and no mask, transformers' mask builders find the pairs
  from where the positions restart and keep attention within each (``masking_utils``,
  ``find_packed_sequence_indices``), for the bidirectional encoders and the causal LMs alike;
- ``token_type_ids`` concatenated (a BERT pair model reads its segments from them).

sentence-transformers flattens batches this way only for embedding models
(``Transformer._can_flatten_inputs`` requires the feature-extraction or fill-mask task), never for
a CrossEncoder, whose heads read one position per row: hence this module. Each pair's score is
taken where the padded model would read it:

- encoders: a forward hook on the encoder hands the classification head the (pairs, 1, hidden)
  states at each pair's first token (``cu_seq_lens_q[:-1]``), where the head reads ``[:, 0]``;
- causal-LM rerankers: ``logits_to_keep`` holds each pair's last position as a (pairs, 1) index
  (``slice_logits_to_keep`` gathers them), so the logits are (pairs, 1, vocabulary), the shape the
  library's ``LogitScore`` reads ``[:, -1]`` from.

The scores (and gradients) equal the padded batch's up to float rounding with every attention
kernel (tests/test_packing.py checks eager and SDPA on CPU), but only the variable-length kernels
(``flash_attention_2`` / ``_3`` and the hub's flash kernels, CUDA) are faster: eager and SDPA
attend over the whole row with a dense (tokens x tokens) mask, several times slower than padding.
So ``auto`` packs only under a flash kernel on CUDA; on CPU, ``data.group_by_length`` is what
removes most of the padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank_ray.config import ModelConfig
from rerank_ray.data.encoding import CAUSAL_TASK
from rerank_ray.errors import ConfigError
from rerank_ray.training.batching import Batch, GroupBatch, to_device
from rerank_ray.training.models import MASKING_UTILS_FAMILIES, base_config, forward_extras, is_causal_lm, mask_kind

if TYPE_CHECKING:
    import torch

#: Encoder families that can be packed: their mask builder finds the pairs from ``position_ids``
#: (``masking_utils``), their encoder passes the attention kwargs on to every layer, and their
#: classification head reads the first position. DeBERTa-v2 builds its own mask and relative
#: positions over the whole row; other families are not checked.
PACKABLE_ENCODERS = MASKING_UTILS_FAMILIES


def unsupported(config: dict[str, Any]) -> str | None:
    """Why a base model (its config.json) cannot be packed, or None when it can."""
    if is_causal_lm(config):
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        model_type = config.get("model_type")
        try:
            model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.for_model(model_type))]
        except (KeyError, ValueError):
            return f"its model type {model_type!r} is not one transformers ships"
        if not getattr(model_class, "_supports_attention_backend", False):
            return f"{model_class.__name__} does not build its attention through transformers' attention interface"
        return None
    if config.get("model_type") not in PACKABLE_ENCODERS:
        return (
            f"model type {config.get('model_type')!r} is not one of the packable encoder families "
            f"({', '.join(PACKABLE_ENCODERS)}) or a causal LM"
        )
    return None


def check_padding_free(model: ModelConfig, setting: str) -> None:
    """Driver-side: ``data.padding_free: on`` with a base model that cannot be packed fails before
    Ray starts (``auto`` just pads such a model)."""
    if setting != "on":
        return
    reason = unsupported(base_config(model))
    if reason:
        raise ConfigError(
            f"data.padding_free: on: {model.name_or_path!r} cannot be packed: {reason}. "
            "Set data.padding_free to auto or off"
        )


def wants_packing(setting: str, attn_implementation: str | None, device_type: str, compiled: bool) -> bool:
    """Whether a run packs its batches: ``on`` always, ``off`` never, ``auto`` under a flash
    kernel on CUDA and without ``train.torch_compile`` (a packed row changes length every batch,
    so a compiled model would compile graph after graph)."""
    if setting != "auto":
        return setting == "on"
    return device_type == "cuda" and "flash" in (attn_implementation or "") and not compiled


def position_start(cross_encoder: Any) -> int:
    """Where a pair's positions start: ``padding_idx + 1`` for embeddings that number positions
    after the padding index (RoBERTa, XLM-R: their padded inputs count from there too), else 0."""
    embeddings = getattr(_backbone(cross_encoder), "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return padding_idx + 1 if isinstance(padding_idx, int) else 0


def pack(
    input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None, start: int
) -> tuple[dict[str, np.ndarray], int]:
    """(arrays of one packed row, longest pair) from a padded batch on the host: its real tokens,
    row after row (either padding side), and where each pair starts."""
    real = attention_mask.astype(bool)
    lengths = real.sum(axis=1)
    if len(lengths) == 0 or lengths.min() == 0:
        raise ValueError("a packed batch needs at least one token in every pair")
    starts = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=starts[1:])
    total = int(starts[-1])
    positions = np.arange(total, dtype=np.int64) - np.repeat(starts[:-1].astype(np.int64), lengths) + start
    arrays = {"input_ids": input_ids[real][None], "position_ids": positions[None], "cu_seq_lens": starts}
    if token_type_ids is not None:
        arrays["token_type_ids"] = token_type_ids[real][None]
    return arrays, int(lengths.max())


@dataclass
class InputForm:
    """How this run hands a batch to its model: the attention mask's form and the extras of
    the padded path (:func:`~rerank_ray.training.models.mask_kind`,
    :func:`~rerank_ray.training.models.forward_extras`), or a packed row."""

    mask: str = "2d"
    extras: dict[str, Any] = field(default_factory=dict)
    packed: bool = False
    start: int = 0
    """Where each packed pair's positions start (:func:`position_start`)."""
    causal: bool = False

    def features(
        self, batch: Batch | GroupBatch, device: torch.device, keep_mask: bool = False, packable: bool = True
    ) -> dict[str, Any]:
        """The forward's inputs for ``batch`` on ``device``. ``packable``: False where the caller
        splits the batch by rows (the cached losses' chunks), which a packed row cannot be."""
        if not (self.packed and packable):
            return {**batch.features(device, self.mask, keep_mask), **self.extras}
        arrays, longest = pack(batch.input_ids, batch.attention_mask, batch.token_type_ids, self.start)
        starts = arrays.pop("cu_seq_lens")
        features: dict[str, Any] = {name: to_device(array, device) for name, array in arrays.items()}
        features["cu_seq_lens_q"] = features["cu_seq_lens_k"] = to_device(starts, device)
        features["max_length_q"] = features["max_length_k"] = longest
        if self.causal:
            # Each pair's last token, as a (pairs, 1) index: logits (pairs, 1, vocabulary).
            features["logits_to_keep"] = to_device((starts[1:].astype(np.int64) - 1)[:, None], device)
        return features


def input_form(cross_encoder: Any, setting: str, device_type: str, compiled: bool) -> InputForm:
    """The :class:`InputForm` of ``cross_encoder`` under ``data.padding_free: setting``; when
    packed, an encoder gets the hook that gathers each pair's first token."""
    mask, extras = mask_kind(cross_encoder), forward_extras(cross_encoder)
    config = _backbone(cross_encoder).config
    if not wants_packing(setting, getattr(config, "_attn_implementation", None), device_type, compiled):
        return InputForm(mask, extras)
    reason = unsupported(config.to_dict())
    if reason:
        if setting == "on":
            raise ConfigError(f"data.padding_free: on: this model cannot be packed: {reason}")
        return InputForm(mask, extras)
    causal = getattr(cross_encoder[0], "transformer_task", None) == CAUSAL_TASK
    if not causal:
        _encoder(cross_encoder).register_forward_hook(_first_tokens, with_kwargs=True)
    return InputForm(mask, extras, packed=True, start=position_start(cross_encoder), causal=causal)


def _first_tokens(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
    """Forward hook on a packed encoder: its (1, tokens, hidden) output becomes the (pairs, 1,
    hidden) states at each pair's first token, which the classification head reads as ``[:, 0]``.
    A forward without ``cu_seq_lens_q`` (a padded batch) passes unchanged."""
    starts = kwargs.get("cu_seq_lens_q")
    if starts is None:
        return output
    output.last_hidden_state = output.last_hidden_state[0, starts[:-1].long()].unsqueeze(1)
    return output


def _backbone(cross_encoder: Any) -> Any:
    """The transformers model under the CrossEncoder's first module (under LoRA, peft's base model)."""
    model = cross_encoder[0].auto_model
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(model, model.base_model_prefix, model)


def _encoder(cross_encoder: Any) -> Any:
    encoder = getattr(_backbone(cross_encoder), "encoder", None)
    if encoder is None:
        raise ConfigError("data.padding_free: this encoder has no .encoder module to gather each pair's first token")
    return encoder
