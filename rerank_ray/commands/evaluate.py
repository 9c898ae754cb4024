"""``rerank-ray eval``: a saved model's metrics on your own pairs or a BEIR folder.

It runs in this process, without Ray (``eval --retriever`` excepted: its first stage embeds the
corpus in Ray Data, as a training run's evaluation does): the pairs are read and checked by the training reader
(:func:`rerank_ray.data.reading.read_file`, one file after another) and scored with
``CrossEncoder.predict`` (which batches them by length), and the metrics come from the same code
as during training (:func:`rerank_ray.evaluation.metrics.compute_metrics`), so a figure from ``eval``
is comparable to the one a run reported. That suits the eval and test sets these commands are
for (thousands to a few hundred thousand pairs); a larger set is better scored by a training
run's evaluation, which spreads it over the workers.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rerank_ray.commands.options import add_flags, add_verbose, given
from rerank_ray.config import PAIR_COLUMNS, Config, DataConfig, headline_metric_key
from rerank_ray.config.sections import EvalKind
from rerank_ray.data.beir import BeirFiles, inspect_beir, read_beir_pairs
from rerank_ray.data.checks import RowChecker, eval_label_rule
from rerank_ray.data.encoding import cut_queries, saved_max_query_length
from rerank_ray.data.files import column_mapping, resolve_paths
from rerank_ray.data.reading import open_local_or_uri, read_file
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.evaluation.metrics import compute_metrics
from rerank_ray.evaluation.ranking import QUERY_ID, query_hashes
from rerank_ray.evaluation.retrieval import retrieve
from rerank_ray.losses import LabelRule
from rerank_ray.run.cluster import ensure_ray
from rerank_ray.run.driver import run_file_candidates, with_candidates
from rerank_ray.training.progress import quiet_libraries


@dataclass
class EvalRequest:
    """What ``rerank-ray eval`` is asked for: its flags (``at_k`` -> ``--at-k``), each field's
    docstring the flag's help."""

    model: str
    """A saved CrossEncoder folder (e.g. runs/<run>/model)."""
    kind: EvalKind
    """The evaluator kind, as ``eval.kind``."""
    data: list[str] = field(default_factory=list)
    """Pair files, folders or globs (parquet, jsonl, csv, tsv); or give --beir."""
    beir: str | None = None
    """Reranking: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) instead of --data."""
    beir_split: str = "test"
    """The qrels file of --beir: qrels/<split>.tsv."""
    columns: dict[str, str] = field(default_factory=dict)
    """Your column names, as data.columns, e.g. sentence_0=query label=score."""
    query_id_column: str | None = None
    """Reranking: the column naming each pair's query."""
    label_scale: float = 1.0
    """Every label is multiplied by this, as data.label_scale."""
    at_k: int = 10
    """Reranking: k of MRR@k and nDCG@k."""
    name: str = "eval"
    """The metrics' prefix."""
    batch_size: int = 64
    """Pairs per scoring batch (and texts per batch of --retriever)."""
    output: str | None = None
    """Where to write the metrics JSON. None: <model>/eval-<name>.json."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the model."""
    retriever: str | None = None
    """With --beir: rerank this bi-encoder's top-k of the corpus, as eval.retriever (starts Ray)."""
    run_file: str | None = None
    """With --beir: rerank a TREC run file's top-k, as eval.run_file."""
    top_k: int = 100
    """Candidates per query of --retriever / --run-file."""
    always_rerank_positives: bool = False
    """Also rerank the judged positives the retriever missed, as eval.always_rerank_positives."""

    def check(self) -> None:
        """What the flags must agree on (each error names the flags)."""
        if not os.path.isdir(self.model):
            raise ConfigError(f"--model {self.model}: no such model folder")
        if (self.beir is None) == (not self.data):
            raise ConfigError("give either --data FILES or --beir FOLDER")
        if self.retriever is not None and self.run_file is not None:
            raise ConfigError("give either --retriever or --run-file, not both")

    def as_config(self) -> Config:
        """The training config whose ``eval`` section this request is (checked as it is)."""
        config = Config.from_dict(
            {
                "model": {"name_or_path": self.model, "trust_remote_code": self.trust_remote_code},
                "data": {"train": ["unused"]},
                "eval": {
                    "kind": self.kind,
                    "beir": self.beir,
                    "beir_split": self.beir_split,
                    "at_k": self.at_k,
                    "name": self.name,
                    "retriever": self.retriever,
                    "run_file": self.run_file,
                    "top_k": self.top_k,
                    "always_rerank_positives": self.always_rerank_positives,
                    "retriever_batch_size": self.batch_size,
                },
            }
        )
        config.check()
        return config


#: How to name each column's file column on the eval command line (the missing-column fix).
COLUMN_FLAGS = {
    **{name: f"name it with --columns {name}=<your column>" for name in PAIR_COLUMNS},
    "query_id": "check --query-id-column",
}


def read_pairs(
    specs: list[str], columns: dict[str, str], query_id_column: str | None, rule: LabelRule, label_scale: float
) -> pa.Table:
    """Pair files (any format ``data.train`` takes, local or URI) as one table of checked rows:
    the same reader and row checks as training, so a bad row fails naming its file, row, column
    and value. The labels come out scaled by ``label_scale``."""
    files, fmt = resolve_paths(specs, "auto", "--data")
    mapping = column_mapping(DataConfig(columns=columns), query_id_column)
    checker = RowChecker(
        what="--data",
        files=files,
        file_columns={canonical: column for column, canonical in mapping.items()},
        rule=rule,
        label_scale=label_scale,
        on_bad_row="error",
        column_fixes=COLUMN_FLAGS,
    )
    chunks = [
        chunk
        for index, path in enumerate(files)
        for chunk in read_file(open_local_or_uri(path, fmt), fmt, index, checker)
    ]
    if not chunks:
        raise DataError(f"--data: no pairs in {', '.join(files)}")
    return pa.concat_tables(chunks)


def evaluate_saved_model(request: EvalRequest) -> dict[str, Any]:
    """Score the pairs with the saved model and compute the metrics of ``request.kind``."""
    from sentence_transformers import CrossEncoder

    # The model first: its number of labels decides which class ids a classification eval takes.
    model = CrossEncoder(request.model, trust_remote_code=request.trust_remote_code, device=None)
    retrieval = None
    if request.beir is not None:
        beir = beir_with_candidates(request)
        retrieval = beir.retrieval
        table = read_beir_pairs(beir)
        labels = table["label"].to_numpy().astype(np.float64) * request.label_scale
    else:
        scale = f" after --label-scale {request.label_scale:g}" if request.label_scale != 1 else ""
        rule = eval_label_rule(request.kind, model.num_labels, scale, setting="--kind")
        table = read_pairs(request.data, request.columns or {}, request.query_id_column, rule, request.label_scale)
        labels = table["label"].to_numpy().astype(np.float64)
    if table.num_rows == 0:
        raise DataError("the eval pairs are empty")
    if request.kind == "classification":
        labels = labels.astype(np.int64)
    queries = table["sentence_0"].to_pylist()
    limit = saved_max_query_length(request.model)  # the run's model.max_query_length, as it trained
    if limit:
        queries = cut_queries(model.tokenizer, queries, limit)
    pairs = list(zip(queries, table["sentence_1"].to_pylist()))
    scores = model.predict(pairs, batch_size=request.batch_size, show_progress_bar=False)
    groups = None
    if request.kind == "reranking":
        key = QUERY_ID if QUERY_ID in table.column_names else "sentence_0"
        groups = query_hashes(table[key].to_pylist())
    metrics = compute_metrics(
        request.kind,
        scores,
        labels,
        request.name,
        model.num_labels,
        groups=groups,
        at_k=request.at_k,
        judged=retrieval.judged() if retrieval else None,
    )
    result = {
        "model": request.model,
        "data": [request.beir] if request.beir else request.data,
        "kind": request.kind,
        "pairs": table.num_rows,
        "headline_metric": headline_metric_key(request.kind, request.name, request.at_k),
        "metrics": {**metrics, **(retrieval.base if retrieval else {})},
    }
    if retrieval:
        result["candidates"] = retrieval.summary()
    return result


def beir_with_candidates(request: EvalRequest) -> BeirFiles:
    """The BEIR split, its candidates the judged documents or a retriever's top-k (a run file
    read here; a bi-encoder run in Ray Data, an embedded Ray started for it)."""
    retrieved = request.retriever is not None or request.run_file is not None
    beir = inspect_beir(request.beir or "", request.beir_split, retrieved=retrieved)
    if not retrieved:
        return beir
    config = request.as_config()
    if request.run_file is not None:
        candidates = run_file_candidates(config, beir)
    else:
        started = ensure_ray(config, forward_logs=False)
        if started:
            print(f"[rerank-ray] {started}", flush=True)
        candidates = retrieve(config, beir)
    with_candidates(config, beir, candidates)
    return beir


def default_output(request: EvalRequest) -> str:
    """Next to the model's own metrics.json: ``<model>/eval-<name>.json``."""
    return os.path.join(request.model, f"eval-{request.name}.json")


def run_eval(request: EvalRequest) -> tuple[dict[str, Any], str]:
    request.check()
    result = evaluate_saved_model(request)
    output = request.output or default_output(request)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2))
    return result, output


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval", help="metrics of a saved model on pair files or a BEIR folder (in this process, no Ray)"
    )
    add_flags(parser, EvalRequest)
    add_verbose(parser)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    result, output = run_eval(EvalRequest(**given(args, EvalRequest)))
    headline = result["headline_metric"]
    print(f"[rerank-ray] {result['pairs']} pairs, eval.kind {result['kind']}")
    for key, value in result["metrics"].items():
        print(f"{'*' if key == headline else ' '} {key}: {value:.4f}")
    print(f"[rerank-ray] metrics written to {output}")
    return 0
