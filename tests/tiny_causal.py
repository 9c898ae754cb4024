"""A tiny, randomly initialised causal-LM reranker (Qwen3-shaped) for the tests. Built in about a second, offline.

sentence-transformers 6.3 loads a folder whose ``config.json`` names a ``*ForCausalLM`` architecture as a
causal-LM CrossEncoder: a ``Transformer`` module with ``transformer_task="text-generation"`` (left padding,
``logits_to_keep=1``) followed by ``LogitScore(true_token_id=<"yes">, false_token_id=<"no">)``, so the score is
``logit("yes") - logit("no")`` at the last position (sigmoid applied by ``predict``). Pairs reach the model as
chat messages with the roles ``query`` and ``document``; a prompt arrives as a leading ``system`` message. The
chat template here renders them in the layout of Qwen3-Reranker::

    <|im_start|>system
    Judge whether the document meets the requirement of the query. Answer only yes or no.<|im_end|>
    <|im_start|>user
    <Instruct>: {system message, else DEFAULT_INSTRUCTION}
    <Query>: {query}
    <Document>: {document}<|im_end|>
    <|im_start|>assistant
    <think>

    </think>

The assistant start (and the empty think block) is rendered unconditionally, as rerankers' templates do:
sentence-transformers does not pass ``add_generation_prompt``. Without content the template alone is
:data:`TEMPLATE_TOKENS` tokens long, and its tail after the document (``<|im_end|> <|im_start|> assistant <think>
</think>``) is the suffix the library writes back over truncated rows.

The tokenizer is word-level (Lowercase normalizer, Whitespace pre-tokenizer) over :data:`tiny.WORDS`,
:data:`tiny.EXTRA_WORDS`, the template's words and the digits 0-9. The digits matter: the library finds the
template's suffix by rendering the pair with the fillers ``"0"`` and ``"1 2 3 4"`` and diffing the tails, which
only works when the two fillers tokenize differently (both as ``<unk>`` they would look like template).

Example (``python tests/tiny_causal.py`` runs it and the fuller acceptance checks of :func:`_self_check`)::

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from sentence_transformers import CrossEncoder
    >>> folder = build_tiny_causal_reranker(Path(tempfile.mkdtemp()) / "tiny-qwen3")
    >>> model = CrossEncoder(str(folder), device="cpu")
    >>> [type(m).__name__ for m in model], model[0].transformer_task
    (['Transformer', 'LogitScore'], 'text-generation')
    >>> scores = model.predict([("red car", "blue boat"), ("green tree", "black cat")])
    >>> bool(np.isfinite(scores).all() and scores[0] != scores[1])
    True
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tiny import EXTRA_WORDS, WORDS  # noqa: E402

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK = "<unk>"
SPECIAL = [PAD, IM_START, IM_END, UNK]
#: Matched whole, before normalization and pre-tokenization (else the Whitespace pre-tokenizer splits them).
MARKERS = ["<think>", "</think>", "<Instruct>:", "<Query>:", "<Document>:"]

SYSTEM_MESSAGE = "Judge whether the document meets the requirement of the query. Answer only yes or no."
DEFAULT_INSTRUCTION = "Given a search query, find the documents that answer it"

#: Words of the template, its system message and default instruction, beyond tiny.WORDS / EXTRA_WORDS.
TEMPLATE_WORDS = [
    "system", "user", "assistant", "judge", "whether", "document", "meets", "requirement", "query",
    "answer", "only", "yes", "no", "or", "given", "search", "find", "documents", "that", "it", ".", ",",
]  # fmt: skip
DIGITS = [str(d) for d in range(10)]

# Flat message format (contents are strings): the library infers "flat" because the template names none of
# the structured-content patterns (``content[0]``, ``.type``, ...). A list content is still read, via item['text'].
CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}{{ item['text'] }}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set ns = namespace(instruction='" + DEFAULT_INSTRUCTION + "', query='', document='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.instruction = text(message['content']) -%}"
    "{%- elif message['role'] in ('query', 'user') -%}{%- set ns.query = text(message['content']) -%}"
    "{%- elif message['role'] == 'document' -%}{%- set ns.document = text(message['content']) -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "<|im_start|>system\n" + SYSTEM_MESSAGE + "<|im_end|>\n"
    "<|im_start|>user\n"
    "<Instruct>: {{ ns.instruction }}\n"
    "<Query>: {{ ns.query }}\n"
    "<Document>: {{ ns.document }}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


def vocabulary() -> list[str]:
    """The tokens in id order: special tokens, markers, then the words (each once)."""
    words = list(dict.fromkeys(WORDS + EXTRA_WORDS + TEMPLATE_WORDS + DIGITS))
    return SPECIAL + MARKERS + words


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :func:`vocabulary` with the chat template, pad and eos tokens."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL])
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in MARKERS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        model_max_length=128,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_causal_reranker(folder: Path, initializer_range: float = 0.2) -> Path:
    """A 2-layer ``Qwen3ForCausalLM`` (hidden 32, 2 heads, intermediate 64, tied embeddings) with the word-level
    tokenizer of :func:`build_tokenizer`, seeded (``torch.manual_seed(0)``) and saved to ``folder``.

    ``initializer_range`` is wider than Qwen3's 0.02 so that the yes/no logits of different pairs differ
    visibly rather than in the 4th decimal."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TEMPLATE_TOKENS = 41  # checked by _self_check: the rendered template with empty query and document


def _self_check(folder: Path) -> None:
    """The acceptance checks: loads as a causal-LM CrossEncoder, scores, truncates, takes prompts, trains."""
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules.logit_score import LogitScore
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    render = tokenizer.apply_chat_template(
        [{"role": "query", "content": ""}, {"role": "document", "content": ""}], tokenize=True, return_dict=True
    )["input_ids"]
    assert tokenizer.unk_token_id not in render, tokenizer.convert_ids_to_tokens(render)
    assert len(render) == TEMPLATE_TOKENS, len(render)

    pairs = [("red car", "blue boat"), ("green tree", "black cat"), ("the sun", "a moon is of the star")]
    model = CrossEncoder(str(folder), device="cpu")
    transformer, score = model[0], model[1]
    assert transformer.transformer_task == "text-generation" and len(model) == 2
    assert isinstance(score, LogitScore)
    assert (score.true_token_id, score.false_token_id) == tuple(tokenizer.convert_tokens_to_ids(["yes", "no"]))
    assert transformer.input_formatter.message_format == "flat"

    scores = model.predict(pairs)
    assert np.isfinite(scores).all() and len(set(scores.tolist())) == len(pairs), scores

    features = model.preprocess(pairs)
    assert features["modality"] == "message" and features["logits_to_keep"] == 1
    assert features["attention_mask"][:, -1].all() and not features["attention_mask"][:, 0].all()  # left padding
    ids = features["input_ids"][0][features["attention_mask"][0].bool()]
    expected = tokenizer.apply_chat_template(
        [{"role": "query", "content": "red car"}, {"role": "document", "content": "blue boat"}],
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert ids.tolist() == list(expected)

    # Truncation: cut to 24, then the template's tail is written back over the last positions.
    model.max_seq_length = 24
    truncated = model.preprocess(pairs)
    assert truncated["input_ids"].shape == (len(pairs), 24)
    tail = tokenizer.convert_tokens_to_ids([IM_END, IM_START, "assistant", "<think>", "</think>"])
    assert (truncated["input_ids"][:, -len(tail) :] == torch.tensor(tail)).all()
    assert np.isfinite(model.predict(pairs)).all()
    model.max_seq_length = 128

    # Prompts: a system message, rendered as the instruction.
    with_prompt = model.preprocess(pairs, prompt="judge the red")
    words = tokenizer.convert_ids_to_tokens(with_prompt["input_ids"][0][with_prompt["attention_mask"][0].bool()])
    assert "<Instruct>: judge the red <Query>:" in " ".join(words), words
    assert np.isfinite(model.predict(pairs, prompt="judge the red")).all()
    prompted = CrossEncoder(str(folder), device="cpu", prompts={"query": "judge the red"})
    assert np.allclose(prompted.predict(pairs, prompt_name="query"), model.predict(pairs, prompt="judge the red"))
    assert not np.allclose(prompted.predict(pairs, prompt_name="query"), scores)

    # Trains: one backward pass through the CrossEncoder's forward gives gradients.
    model.train()
    out = model(model.preprocess(pairs))["scores"]
    assert out.shape == (len(pairs), 1)
    torch.nn.functional.binary_cross_entropy_with_logits(out.view(-1), torch.tensor([1.0, 0.0, 1.0])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert model[0].auto_model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


if __name__ == "__main__":
    import doctest
    import tempfile
    import time

    failures, _ = doctest.testmod()
    assert failures == 0, "the docstring example failed"

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        built = build_tiny_causal_reranker(Path(tmp) / "tiny-qwen3")
        print(f"built {built} in {time.perf_counter() - start:.2f}s: {sorted(p.name for p in built.iterdir())}")
        _self_check(built)
        print("self-check passed")
