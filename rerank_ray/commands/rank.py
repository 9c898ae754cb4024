"""``rerank-ray rank``: a saved model sorts documents for one query (``CrossEncoder.rank``)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_ray.commands.options import add_flags, given
from rerank_ray.data.encoding import cut_queries, saved_max_query_length
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.training.progress import quiet_libraries


@dataclass
class RankRequest:
    """What ``rerank-ray rank`` is asked for: its flags, each field's docstring the flag's help."""

    model: str
    """A saved CrossEncoder folder."""
    query: str
    """The query."""
    docs: str
    """A text file (one document per line) or JSONL with 'text' (and an optional 'title')."""
    top_k: int | None = None
    """Show only the best K."""
    json: bool = False
    """Print JSON instead of a table."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the model."""


def read_documents(path: str, text_field: str = "text") -> list[str]:
    """Documents to rank: a text file with one per line, or a JSONL file of objects with a
    ``text`` field (and an optional ``title``, put first as BEIR does). Split on "\\n" only:
    texts may hold other Unicode line separators."""
    if not os.path.isfile(path):
        raise ConfigError(f"--docs {path}: no such file")
    lines = [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]
    if not path.lower().endswith((".jsonl", ".json", ".ndjson")):
        return lines
    documents = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not JSON: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise DataError(f"{path}: line {number} has no text field {text_field!r}")
        title = record.get("title")
        documents.append(f"{title} {record[text_field]}".strip() if isinstance(title, str) else record[text_field])
    return documents


def rank_documents(
    model_path: str, query: str, documents: list[str], top_k: int | None = None, trust_remote_code: bool = False
) -> list[dict[str, Any]]:
    """The documents sorted by the model's score for ``query`` (CrossEncoder.rank)."""
    from sentence_transformers import CrossEncoder

    if not os.path.isdir(model_path):
        raise ConfigError(f"--model {model_path}: no such model folder")
    if not documents:
        raise DataError("no documents to rank")
    model = CrossEncoder(model_path, trust_remote_code=trust_remote_code, device=None)
    if model.num_labels != 1:
        raise ConfigError(f"--model {model_path} has {model.num_labels} outputs; ranking needs a 1-output reranker")
    limit = saved_max_query_length(model_path)  # the run's model.max_query_length, as it trained
    if limit:
        query = cut_queries(model.tokenizer, [query], limit)[0]
    ranked = model.rank(query, documents, top_k=top_k, return_documents=True, show_progress_bar=False)
    return [
        {"rank": i + 1, "index": r["corpus_id"], "score": float(r["score"]), "text": r["text"]}
        for i, r in enumerate(ranked)
    ]


def add_parser(commands: Any) -> None:
    add_flags(commands.add_parser("rank", help="rank documents for a query with a saved model"), RankRequest)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    request = RankRequest(**given(args, RankRequest))
    ranked = rank_documents(
        request.model,
        request.query,
        read_documents(request.docs),
        top_k=request.top_k,
        trust_remote_code=request.trust_remote_code,
    )
    if request.json:
        print(json.dumps(ranked, indent=2, ensure_ascii=False))
        return 0
    for row in ranked:
        text = row["text"] if len(row["text"]) <= 100 else row["text"][:97] + "..."
        print(f"{row['rank']:>4}  {row['score']:.4f}  {text}")
    return 0
