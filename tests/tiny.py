"""Tiny, randomly initialised models and synthetic pair data for the tests. Built in seconds, offline."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "red", "blue", "green", "black", "white", "car", "boat", "house", "tree", "river", "stone", "bird",
    "fish", "cat", "dog", "apple", "bread", "milk", "water", "fire", "snow", "rain", "sun", "moon",
    "star", "road", "city", "field", "glass", "paper", "metal", "wood", "sand", "hill", "lake", "cloud",
]  # fmt: skip
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EXTRA_WORDS = ["the", "a", "is", "of"]


def _bert_parts(**settings):
    """The word-level tokenizer of :data:`WORDS` and a 2-layer, hidden-32 BertConfig (``settings``
    override its fields): the tiny BERT cross-encoder and bi-encoder share them."""
    from transformers import BertConfig, BertTokenizer

    words = SPECIAL + WORDS + EXTRA_WORDS
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, model_max_length=128)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **settings,
    )
    return tokenizer, config


def build_tiny_bert(folder: Path, num_labels: int = 1, dropout: float = 0.0) -> Path:
    """A 2-layer BERT with hidden size 32 and a word-level vocabulary of :data:`WORDS`."""
    from transformers import BertForSequenceClassification

    tokenizer, config = _bert_parts(
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=num_labels
    )
    return _save_seeded(BertForSequenceClassification, config, tokenizer, folder)


def build_tiny_bi_encoder(folder: Path) -> Path:
    """A SentenceTransformer (2-layer BERT, mean pooling) for mining. Initialised with a wide spread
    (``initializer_range`` 1.0): the default 0.02 makes every text's embedding nearly the same."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertModel

    tokenizer, config = _bert_parts(initializer_range=1.0)
    bert = _save_seeded(BertModel, config, tokenizer, folder / "bert")
    model = SentenceTransformer(modules=[models.Transformer(str(bert)), models.Pooling(32, "mean")], device="cpu")
    model.save(str(folder / "model"))
    return folder / "model"


def mining_pairs(num_queries: int, documents: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    """(query, positive) rows, every third query with two positives and one pair repeated, and a
    corpus of distinct documents that holds the positives."""
    rng = random.Random(seed)
    corpus = list(dict.fromkeys(" ".join(rng.sample(WORDS, rng.randint(3, 7))) for _ in range(documents)))
    rows = []
    for q in range(num_queries):
        query = " ".join(rng.sample(WORDS, 2)) + f" {EXTRA_WORDS[q % len(EXTRA_WORDS)]}"
        for _ in range(2 if q % 3 == 0 else 1):
            rows.append({"query": query, "positive": rng.choice(corpus[: documents // 2])})
        if q == 1:
            rows.append(dict(rows[-1]))
    return rows, corpus


def _unigram_vocab(specials: list[str]) -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary: the special tokens, one piece per word, then single
    letters so that any lowercase text tokenizes without unknown pieces."""
    words = [(f"\u2581{w}", -5.0) for w in WORDS + EXTRA_WORDS]
    letters = [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -8.0)]
    return [(s, 0.0) for s in specials] + words + letters


def _save_seeded(model_class, config, tokenizer, folder: Path) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_xlm_roberta(folder: Path, num_labels: int = 1) -> Path:
    """A 2-layer XLM-RoBERTa (the family of BAAI/bge-reranker-v2-m3) with a Unigram vocabulary, wrapped
    in transformers' XLMRobertaTokenizer (which builds it with the tokenizers library)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

    tokenizer = XLMRobertaTokenizer(
        vocab=_unigram_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), model_max_length=128
    )
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,  # XLM-R positions start after the padding index
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    return _save_seeded(XLMRobertaForSequenceClassification, config, tokenizer, folder)


def build_tiny_deberta_v2(folder: Path) -> Path:
    """A 2-layer DeBERTa-v2 with relative attention like cross-encoder/nli-deberta-v3-base, including its
    3-label NLI head (a reranker recipe replaces it with a 1-label head), and a Unigram vocabulary in
    transformers' DebertaV2Tokenizer."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Tokenizer

    tokenizer = DebertaV2Tokenizer(
        vocab=_unigram_vocab(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]), model_max_length=512
    )
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=64,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
        id2label={0: "contradiction", 1: "entailment", 2: "neutral"},
        label2id={"contradiction": 0, "entailment": 1, "neutral": 2},
    )
    return _save_seeded(DebertaV2ForSequenceClassification, config, tokenizer, folder)


CUSTOM_CONFIG_CODE = """
from transformers import PretrainedConfig


class NewConfig(PretrainedConfig):
    model_type = "new"

    def __init__(self, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=512, pad_token_id=1, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        super().__init__(pad_token_id=pad_token_id, **kwargs)
"""

CUSTOM_MODEL_CODE = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_new import NewConfig


class NewForSequenceClassification(PreTrainedModel):
    """A model architecture transformers does not ship: only loadable with trust_remote_code."""

    config_class = NewConfig
    base_model_prefix = "new"

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        layer = nn.TransformerEncoderLayer(
            config.hidden_size, config.num_attention_heads, config.intermediate_size, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_hidden_layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.embeddings(input_ids) + self.positions(positions)[None]
        padding = attention_mask == 0 if attention_mask is not None else None
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        return SequenceClassifierOutput(logits=self.classifier(hidden[:, 0]))
'''


def build_tiny_custom_code(folder: Path) -> Path:
    """A model whose architecture lives in the folder itself (configuration_new.py, modeling_new.py),
    referenced from config.json's ``auto_map``, as Alibaba-NLP/gte-multilingual-reranker-base does;
    with the XLM-RoBERTa tokenizer that model uses. Loading it runs that code: trust_remote_code."""
    import importlib.util
    import json
    import sys

    from transformers import XLMRobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_new.py").write_text(CUSTOM_CONFIG_CODE)
    (folder / "modeling_new.py").write_text(
        CUSTOM_MODEL_CODE.replace("from .configuration_new", "from configuration_new")
    )
    tokenizer = XLMRobertaTokenizer(
        vocab=_unigram_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), model_max_length=512
    )
    # Import the two files once, here, to write the initial weights with their own classes.
    sys.path.insert(0, str(folder))
    try:
        config_module = _import_file(importlib.util, folder / "configuration_new.py", "configuration_new")
        model_module = _import_file(importlib.util, folder / "modeling_new.py", "modeling_new")
        config = config_module.NewConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=1)
        _save_seeded(model_module.NewForSequenceClassification, config, tokenizer, folder)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("configuration_new", None)
        sys.modules.pop("modeling_new", None)
    # transformers imports the modelling file as part of a package: relative import, as on the hub.
    (folder / "modeling_new.py").write_text(CUSTOM_MODEL_CODE)
    config_path = folder / "config.json"
    saved = json.loads(config_path.read_text())
    saved["architectures"] = ["NewForSequenceClassification"]
    saved["auto_map"] = {
        "AutoConfig": "configuration_new.NewConfig",
        "AutoModelForSequenceClassification": "modeling_new.NewForSequenceClassification",
    }
    config_path.write_text(json.dumps(saved, indent=2))
    return folder


def _import_file(util, path: Path, name: str):
    spec = util.spec_from_file_location(name, path)
    module = util.module_from_spec(spec)
    sys_modules = __import__("sys").modules
    sys_modules[name] = module
    spec.loader.exec_module(module)
    return module


def synthetic_pairs(n: int, seed: int = 0, with_id: bool = True) -> list[dict]:
    """A task a 2-layer model learns in a few dozen steps: relevant documents (label 1) are
    written with the first half of the vocabulary, irrelevant ones with the second half."""
    rng = random.Random(seed)
    half = len(WORDS) // 2
    rows = []
    for i in range(n):
        label = i % 2
        pool = WORDS[:half] if label else WORDS[half:]
        row = {
            "sentence_0": rng.choice(WORDS),
            "sentence_1": " ".join(rng.sample(pool, rng.randint(2, 8))),
            "label": float(label),
        }
        if with_id:
            row["pair_id"] = f"p{i}"
        rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def graded_pairs(n: int, seed: int = 0) -> list[dict]:
    """Graded similarity like the STS-style recipes: a 4-word document whose label (0, 0.25, ...,
    1) is the share of its words drawn from the first half of the vocabulary."""
    rng = random.Random(seed)
    half = len(WORDS) // 2
    rows = []
    for i in range(n):
        relevant = i % 5
        words = rng.sample(WORDS[:half], relevant) + rng.sample(WORDS[half:], 4 - relevant)
        rng.shuffle(words)
        rows.append({"sentence_0": rng.choice(WORDS), "sentence_1": " ".join(words), "label": relevant / 4})
    return rows


def class_pairs(n: int, num_classes: int = 3, seed: int = 0) -> list[dict]:
    """Multi-class pairs with integer labels: the class is the third of the vocabulary the
    document's words come from."""
    rng = random.Random(seed)
    size = len(WORDS) // num_classes
    rows = []
    for i in range(n):
        label = i % num_classes
        pool = WORDS[label * size : (label + 1) * size]
        row = {"sentence_0": rng.choice(WORDS), "sentence_1": " ".join(rng.sample(pool, rng.randint(4, 8)))}
        rows.append({**row, "label": label, "pair_id": f"c{i}"})
    return rows


def reranking_pairs(num_queries: int, candidates: int = 5, seed: int = 0, start: int = 0) -> list[dict]:
    """Queries with one positive and ``candidates - 1`` negatives each (20% positive for 5), integer
    labels, as the reranking recipe's data: positives use the first half of the vocabulary."""
    rng = random.Random(seed)
    half = len(WORDS) // 2
    rows = []
    for q in range(start, start + num_queries):
        query = f"{WORDS[q % len(WORDS)]} {WORDS[(q * 7 + 3) % len(WORDS)]} {q}"
        for c in range(candidates):
            pool = WORDS[:half] if c == 0 else WORDS[half:]
            text = " ".join(rng.sample(pool, rng.randint(2, 6)))
            rows.append(
                {
                    "query_id": f"q{q}",
                    "sentence_0": query,
                    "sentence_1": text,
                    "label": int(c == 0),
                    "pair_id": f"q{q}-d{c}",
                }
            )
    return rows


def write_beir(rows: list[dict], folder: Path, split: str = "test") -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) holding ``rows``'s judgements."""
    folder.mkdir(parents=True, exist_ok=True)
    queries = {r["query_id"]: r["sentence_0"] for r in rows}
    documents = {r["pair_id"]: r["sentence_1"] for r in rows}
    write_jsonl([{"_id": q, "text": t} for q, t in queries.items()], folder / "queries.jsonl")
    write_jsonl([{"_id": d, "title": "", "text": t} for d, t in documents.items()], folder / "corpus.jsonl")
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{r['query_id']}\t{r['pair_id']}\t{r['label']}" for r in rows]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def judged_lists(num_queries: int, seed: int = 0, start: int = 0) -> list[dict]:
    """Queries with a list of 3-6 judged documents (grade 2 or 1 from the first half of the
    vocabulary, 0 from the second): the list shape (query, documents, labels)."""
    rng = random.Random(seed)
    half = len(WORDS) // 2
    rows = []
    for q in range(start, start + num_queries):
        docs, labels = [], []
        for d in range(rng.randint(3, 6)):
            grade = 2 if d == 0 else rng.choice([0, 0, 1])
            pool = WORDS[:half] if grade else WORDS[half:]
            docs.append(" ".join(rng.sample(pool, rng.randint(2, 6))))
            labels.append(grade)
        order = rng.sample(range(len(docs)), len(docs))
        rows.append(
            {
                "query": f"{WORDS[q % len(WORDS)]} {WORDS[(q * 7 + 3) % len(WORDS)]} {q}",
                "documents": [docs[i] for i in order],
                "labels": [labels[i] for i in order],
                "pair_id": f"q{q}",
            }
        )
    return rows


def tuples(num_queries: int, negatives: int = 3, seed: int = 0, scores: bool = False) -> list[dict]:
    """(query, positive, negative_1..negative_k) rows, the positive from the first half of the
    vocabulary; with ``scores`` a teacher's scores (positive high) in ``label``."""
    rng = random.Random(seed)
    half = len(WORDS) // 2
    rows = []
    for q in range(num_queries):
        row = {
            "query": f"{WORDS[q % len(WORDS)]} {WORDS[(q * 7 + 3) % len(WORDS)]} {q}",
            "positive": " ".join(rng.sample(WORDS[:half], rng.randint(2, 6))),
        }
        for n in range(negatives):
            row[f"negative_{n + 1}"] = " ".join(rng.sample(WORDS[half:], rng.randint(2, 6)))
        if scores:
            row["label"] = [rng.uniform(0.5, 1.0)] + [rng.uniform(-1.0, -0.5) for _ in range(negatives)]
        row["pair_id"] = f"q{q}"
        rows.append(row)
    return rows
