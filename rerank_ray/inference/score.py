"""``rerank-ray score``: a cross-encoder teacher scores every row of a pair, tuple or list file with
Ray Data, for distillation.

The rows are read in Ray Data read tasks by pyarrow's readers (every column kept, whatever its
type; a file per task), each with its key (file, row), scored in
``map_batches`` by a pool of actors that each load the teacher once (one GPU each when the
cluster has GPUs, else CPUs), sorted back into the input's order by that key and written as
sharded Parquet, each row with a
``score`` column added:

- labelled pairs (``sentence_0``, ``sentence_1``): a number, the teacher's score of the pair
  (train with ``MSELoss`` and ``data.columns: {label: score}``);
- an n-tuple (``query``, ``positive``, ``negative_1``..): a list, the positive's score then each
  negative's (``MarginMSELoss`` with ``data.columns: {label: score}``);
- a list (``query``, ``documents``): a list, one score per document (a listwise loss with
  ``data.columns: {labels: score}``).

Scores are ``CrossEncoder.predict``'s, with the teacher's own activation (as the library's
MarginMSELoss example computes its labels), or its raw logits with ``--activation identity``.
sentence-transformers scores in one process; this spreads the pairs over the actors of a cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from rerank_ray.config import Config, DataConfig
from rerank_ray.data.files import resolve_paths
from rerank_ray.data.reading import open_local_or_uri, peek_columns
from rerank_ray.data.rows import ORDER, READERS, flat_values, rows_datasource
from rerank_ray.data.shapes import Shape, file_name, find_shape
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.inference.jobs import actor_pool, check_output_is_new, write_summary
from rerank_ray.run.cluster import ensure_ray

SCORE_COLUMN = "score"


@dataclass
class ScoreRequest:
    """What ``rerank-ray score`` is asked for: its flags (``batch_size`` -> ``--batch-size``),
    each field's docstring the flag's help."""

    model: str
    """The teacher: a hub id or a saved CrossEncoder folder."""
    data: list[str]
    """Files, folders or globs (parquet, jsonl, csv, tsv) of pairs, n-tuples or lists."""
    output: str
    """A new folder (local or URI) for the scored rows, as Parquet parts."""
    columns: dict[str, str] = field(default_factory=dict)
    """Your column names, as data.columns, e.g. query=question positive=answer."""
    batch_size: int = 64
    """Pairs per forward pass of the teacher (``CrossEncoder.predict``'s batch size)."""
    rows_per_batch: int = 256
    """Rows handed to an actor at a time (a list or tuple row holds several pairs)."""
    concurrency: int | None = None
    """Actors scoring at once. None: one per GPU of the cluster, else one."""
    cpus_per_actor: float = 1.0
    """CPUs of each actor (its torch threads on CPU)."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """fp32, or fp16 / bf16 on GPU actors."""
    activation: Literal["model", "identity"] = "model"
    """``model``: the teacher's own activation, as ``CrossEncoder.predict`` applies it; ``identity``: raw logits."""
    max_length: int | None = None
    """Longest pair in tokens. None: the teacher's own."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the model."""


def check_request(request: ScoreRequest) -> tuple[list[str], str, Shape]:
    """The input files, their format and shape, checked before Ray starts: every file has the
    columns of the first file's shape."""
    if request.activation not in ("model", "identity"):
        raise ConfigError(f"--activation {request.activation!r}: choose model or identity")
    if request.precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"--precision {request.precision!r}: choose fp32, fp16 or bf16")
    files, fmt = resolve_paths(list(request.data), "auto", "--data")
    if fmt not in READERS:
        raise ConfigError(f"--data: rerank-ray score reads {', '.join(READERS)} files, not {fmt}")
    data = DataConfig(columns=request.columns)
    first = peek_columns(open_local_or_uri(files[0], fmt), fmt) or []
    shape = find_shape(first, data)
    needed = [file_name(data, name) for name in shape.text_columns] + (
        [file_name(data, "documents")] if shape.name == "list" else []
    )
    for path in files:
        present = peek_columns(open_local_or_uri(path, fmt), fmt)
        missing = [column for column in needed if present is not None and column not in present]
        if present is None or missing:
            raise DataError(
                f"--data: {path} "
                + (f"lacks column(s) {missing} of the {shape.name} shape" if present else "cannot be read")
                + (f" (its columns: {present})" if present else "")
                + "; name yours with --columns, e.g. --columns query=question positive=answer"
            )
    check_output_is_new(request.output, "--output")
    if SCORE_COLUMN in first:
        raise DataError(f"--data: {files[0]} has a {SCORE_COLUMN!r} column already: score the files it came from")
    return files, fmt, shape


def pairs_of(batch: pa.Table, shape: Shape, data: DataConfig) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The (query, document) pairs of a batch's rows, row after row, and the pairs per row."""
    if shape.name == "list":
        queries = batch.column(file_name(data, "query")).to_pylist()
        documents = batch.column(file_name(data, "documents")).to_pylist()
        rows = [[(q, d) for d in docs or []] for q, docs in zip(queries, documents)]
    else:
        columns = [batch.column(file_name(data, name)).to_pylist() for name in shape.text_columns]
        rows = [[(values[0], doc) for doc in values[1:]] for values in zip(*columns)]
    for index, row in enumerate(rows):
        if not row or any(not isinstance(a, str) or not isinstance(b, str) for a, b in row):
            raise DataError(
                f"--data: a row of the {shape.name} shape holds no text where one is needed (row {index} of a "
                f"read block: {row[:2]}): fill it in or remove it"
            )
    return [pair for row in rows for pair in row], np.array([len(row) for row in rows], dtype=np.int64)


class Scorer:
    """A Ray Data actor: the teacher, loaded once, scoring batches of rows."""

    def __init__(self, request: dict[str, Any], shape: dict[str, Any]):
        import torch
        from sentence_transformers import CrossEncoder

        self.request = ScoreRequest(**request)
        self.shape = Shape(shape["name"], tuple(shape["text_columns"]), shape["has_label"])
        self.data = DataConfig(columns=self.request.columns)
        cuda = torch.cuda.is_available()
        if not cuda:
            torch.set_num_threads(max(1, int(self.request.cpus_per_actor)))
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.request.precision) if cuda else None
        self.model = CrossEncoder(
            self.request.model,
            device="cuda" if cuda else "cpu",
            trust_remote_code=self.request.trust_remote_code,
            max_length=self.request.max_length,
            model_kwargs={"torch_dtype": dtype} if dtype is not None else None,
        )
        self.activation = torch.nn.Identity() if self.request.activation == "identity" else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs, counts = pairs_of(batch, self.shape, self.data)
        kwargs = {"activation_fn": self.activation} if self.activation is not None else {}
        scores = np.asarray(
            self.model.predict(
                pairs, batch_size=self.request.batch_size, show_progress_bar=False, convert_to_numpy=True, **kwargs
            ),
            dtype=np.float32,
        ).reshape(-1)
        if self.shape.name == "pairs":
            column = pa.array(scores, pa.float32())
        else:
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores, pa.float32()))
        return batch.append_column(SCORE_COLUMN, column)


def score(request: ScoreRequest) -> dict[str, Any]:
    """Score the rows of ``request.data`` and write them, scored, to ``request.output``; returns
    (and writes beside them, :func:`summary_path`) what was scored."""
    import ray
    import ray.data

    files, fmt, shape = check_request(request)
    started_line = ensure_ray(Config(), forward_logs=False)
    if started_line:
        print(f"[rerank-ray] {started_line}", flush=True)
    dataset = ray.data.read_datasource(rows_datasource(files, fmt))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    concurrency = request.concurrency or max(1, gpus)
    print(
        f"[rerank-ray] scoring {len(files)} file(s) of {shape.describe()} with {request.model} on {concurrency} "
        f"{'GPU' if gpus else 'CPU'} actor(s)",
        flush=True,
    )
    started = time.perf_counter()
    scored = dataset.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "request": request.__dict__,
            "shape": {"name": shape.name, "text_columns": list(shape.text_columns), "has_label": shape.has_label},
        },
        batch_size=request.rows_per_batch,
        batch_format="pyarrow",
        **actor_pool(concurrency, gpus, request.cpus_per_actor),
    )
    # The input's order, by each row's key (rows.py says why). After the sort the blocks are in
    # key order, and Ray Data names each written part by its task's index.
    scored.sort(ORDER).drop_columns([ORDER]).write_parquet(request.output)
    written = ray.data.read_parquet(request.output)
    values = np.asarray(
        [x for batch in written.iter_batches(batch_format="pyarrow") for x in flat_values(batch.column(SCORE_COLUMN))]
    )
    summary = {
        "model": request.model,
        "shape": shape.name,
        "files": len(files),
        "rows": written.count(),
        "pairs": int(len(values)),
        "score": {
            "min": float(values.min()),
            "mean": float(values.mean()),
            "max": float(values.max()),
        }
        if len(values)
        else None,
        "activation": request.activation,
        "seconds": time.perf_counter() - started,
        "output": request.output,
    }
    write_summary(request.output, summary)
    return summary
