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


def build_tiny_bert(folder: Path, num_labels: int = 1, dropout: float = 0.0) -> Path:
    """A 2-layer BERT with hidden size 32 and a word-level vocabulary of :data:`WORDS`."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = SPECIAL + WORDS + ["the", "a", "is", "of"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, model_max_length=128)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=num_labels,
    )
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
