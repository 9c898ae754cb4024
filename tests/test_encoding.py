"""Every reranker fed exactly as the library feeds it: the token ids, attention layout and padding
side of a pair equal ``CrossEncoder.preprocess``'s for each model family (tiny BERT, XLM-R,
DeBERTa-v2 and a causal-LM reranker), with and without a prompt, at a truncating max length; a
row's tokens do not depend on its batch; the score of our training forward equals
``CrossEncoder.predict`` on the saved model; ``model.max_query_length`` cuts the query, by token."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
import torch
from tiny import EXTRA_WORDS, WORDS

from rerank_ray.config import ModelConfig
from rerank_ray.data.encoding import PairEncoder, cut_queries
from rerank_ray.data.stream import filler_rows, tokenize_batch
from rerank_ray.training.batching import Collator
from rerank_ray.training.models import forward_extras, load_cross_encoder, load_encoder

FAMILIES = ["tiny_bert", "tiny_xlm_roberta", "tiny_deberta_v2", "tiny_causal"]
#: A max length that cuts some of the pairs of :func:`_pairs` and not others (the causal model's
#: chat template alone is 41 tokens).
MAX_LENGTH = {"tiny_causal": 56}
PROMPT = "judge the red "


class _Handle:
    """What tokenize_batch takes from the driver (the encoder in Ray's object store), in this process."""

    def __init__(self, encoder):
        self.encoder = encoder

    def get(self):
        return self.encoder


def _pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Queries of 1-4 words and documents of 2-30 words: at max length 24 many pairs are cut."""
    rng = random.Random(seed)
    vocabulary = WORDS + EXTRA_WORDS
    queries = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 4))) for _ in range(n)]
    documents = [" ".join(rng.choices(vocabulary, k=rng.randint(2, 30))) for _ in range(n)]
    return queries, documents


def _rows(queries: list[str], documents: list[str]) -> pa.Table:
    n = len(queries)
    return pa.table(
        {
            "sentence_0": queries,
            "sentence_1": documents,
            "label": pa.array([float(i % 2) for i in range(n)], pa.float32()),
            "skip": pa.array([0] * n, pa.int8()),
            "row_key": pa.array(np.arange(n), pa.int64()),
        }
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt", [None, PROMPT])
def test_our_batches_equal_the_library_preprocessing(family, prompt, request):
    """The stream's tokens (a Ray Data task's work: the encoder built without weights on the driver)
    padded by the worker's collator are the tensors CrossEncoder.preprocess builds for predict, on
    a model loaded with its weights: ids, attention mask, token types, padding side."""
    from sentence_transformers import CrossEncoder

    folder = str(request.getfixturevalue(family))
    prompts = {"judge": prompt} if prompt else None
    max_length = MAX_LENGTH.get(family, 24)
    encoder = load_encoder(
        ModelConfig(name_or_path=folder, prompts=prompts, default_prompt_name="judge" if prompt else None), max_length
    )
    library = CrossEncoder(folder, max_length=max_length, device="cpu")
    queries, documents = _pairs(23)
    tokenized = tokenize_batch(_rows(queries, documents), _Handle(encoder))
    ours = Collator.for_encoder(encoder)(tokenized).features(torch.device("cpu"))
    theirs = library.preprocess(list(zip(queries, documents)), prompt=prompt)
    assert set(ours) == {k for k in theirs if torch.is_tensor(theirs[k])}
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key].long(), msg=key)
    lengths = theirs["attention_mask"].sum(1)
    assert int(lengths.max()) == max_length and int(lengths.min()) < max_length  # some cut, some padded
    if family == "tiny_causal":
        assert encoder.causal and not bool(ours["attention_mask"][:, -1].eq(0).any())  # padded on the left
        assert forward_extras(library) == {"logits_to_keep": 1}
    else:
        assert not encoder.causal and forward_extras(library) == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_rows_tokens_do_not_depend_on_its_batch(family, request):
    encoder = load_encoder(ModelConfig(name_or_path=str(request.getfixturevalue(family))), MAX_LENGTH.get(family, 24))
    queries, documents = _pairs(15, seed=4)
    whole = encoder.encode(queries, documents)
    for i in range(len(queries)):
        alone = encoder.encode([queries[i]], [documents[i]])
        assert alone["input_ids"][0] == whole["input_ids"][i]
    order = list(reversed(range(len(queries))))
    shuffled = encoder.encode([queries[i] for i in order], [documents[i] for i in order])
    assert [shuffled["input_ids"][order.index(i)] for i in range(len(queries))] == whole["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_our_training_forward_scores_equal_predict_on_the_saved_model(family, request, tmp_path):
    """The training path (our tokens, our padding, the loaded model's forward with its extras, the
    activation) gives the scores ``CrossEncoder.predict`` gives on the folder the run would save,
    prompt included (saved as the model's default prompt)."""
    from sentence_transformers import CrossEncoder

    config = ModelConfig(
        name_or_path=str(request.getfixturevalue(family)), prompts={"judge": PROMPT}, default_prompt_name="judge"
    )
    model = load_cross_encoder(config, MAX_LENGTH.get(family, 24))
    encoder = load_encoder(config, MAX_LENGTH.get(family, 24))
    queries, documents = _pairs(19, seed=7)
    batch = Collator.for_encoder(encoder)(tokenize_batch(_rows(queries, documents), _Handle(encoder)))
    model.eval()
    with torch.no_grad():
        logits = model({**batch.features(torch.device("cpu")), **forward_extras(model)})["scores"]
        ours = model.activation_fn(logits.float()).reshape(-1).numpy()
    model.save(str(tmp_path / "saved"))
    saved = CrossEncoder(str(tmp_path / "saved"), device="cpu")
    assert saved.default_prompt_name == "judge" and saved.prompts["judge"] == PROMPT
    theirs = saved.predict(list(zip(queries, documents)), batch_size=5, show_progress_bar=False)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    without_prompt = saved.predict(list(zip(queries, documents)), prompt="", show_progress_bar=False)
    assert not np.array_equal(without_prompt, theirs)  # the prompt is part of what the model reads


def test_filler_rows_are_real_encodings_of_an_empty_pair(tiny_causal):
    encoder = load_encoder(ModelConfig(name_or_path=str(tiny_causal)), 24)
    rows = filler_rows(encoder, 3, id_column=False)
    assert rows.num_rows == 3 and rows.column("weight").to_pylist() == [0.0] * 3
    assert rows.column("input_ids").to_pylist()[0] == encoder.encode([""], [""])["input_ids"][0]


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_causal"])
def test_max_query_length_cuts_the_query_by_tokens_before_the_pair(family, request):
    folder = str(request.getfixturevalue(family))
    cut = load_encoder(ModelConfig(name_or_path=folder, max_query_length=3), 64)
    whole = load_encoder(ModelConfig(name_or_path=folder), 64)
    tokenizer = whole.tokenizer
    queries = ["red car on the blue river of stone", "cat", "the green tree"]
    documents = ["blue boat", "black dog", "white house"]
    expected = [" ".join(q.split()[:3]) for q in queries]  # word-level vocabularies: a word is a token
    assert cut_queries(tokenizer, queries, 3) == expected
    assert cut.encode(queries, documents) == whole.encode(expected, documents)
    for query, short in zip(queries, expected):
        ids = tokenizer(query, add_special_tokens=False)["input_ids"]
        assert tokenizer(short, add_special_tokens=False)["input_ids"] == ids[:3]


def test_a_template_without_query_and_document_roles_fails_before_ray(tiny_causal, tmp_path):
    """A causal model whose chat template ignores the query/document roles would score inputs that
    hold neither: the library refuses it, and the run stops there, naming the model."""
    import shutil

    from rerank_ray.errors import ConfigError

    folder = tmp_path / "plain-template"
    shutil.copytree(tiny_causal, folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %} yes"
    )
    with pytest.raises(ConfigError, match="cannot prepare its inputs"):
        load_encoder(ModelConfig(name_or_path=str(folder)), 24)


def test_the_encoder_pickles_without_weights(tiny_causal):
    import pickle

    encoder = PairEncoder.build(str(tiny_causal), 24)
    assert sum(p.numel() for p in encoder.preprocessor.parameters()) == 0  # no weights carried
    again = pickle.loads(pickle.dumps(encoder))
    queries, documents = _pairs(5)
    assert again.encode(queries, documents) == encoder.encode(queries, documents)
