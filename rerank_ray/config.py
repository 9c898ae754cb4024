"""The one typed configuration of a run.

A run is described by nested dataclasses (model, data, train, eval, scaling, run; tune for a
hyperparameter search). They are loaded from YAML plus dotted ``key=value`` overrides, checked
before Ray starts, handed to every Ray worker as a plain dict and rebuilt there with
:meth:`Config.from_dict`.

Every field has a docstring right under it; ``rerank-ray fields`` prints them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from rerank_ray.errors import ConfigError
from rerank_ray.redaction import check_no_inline_credentials

EvalKind = Literal["binary", "correlation", "classification", "reranking"]
Precision = Literal["fp32", "fp16", "bf16"]
DataFormat = Literal["auto", "parquet", "jsonl", "csv", "tsv", "arrow"]
#: A data source: a path, folder, glob or URI, or a Hugging Face dataset mapping
#: (``{dataset: org/name, split: train, subset: ..., revision: ...}``, see rerank_ray/data/hub.py).
DataSource = str | dict[str, str]

#: The canonical column names every pair file is mapped onto.
PAIR_COLUMNS = ("sentence_0", "sentence_1", "label")

#: The headline metric of each evaluator kind: the primary metric of the matching
#: sentence-transformers evaluator. It selects the best checkpoint and is what Tune maximises.
HEADLINE = {
    "binary": "average_precision",
    "correlation": "spearman",
    "classification": "f1_macro",
    "reranking": "ndcg@{at_k}",
}

#: Data shapes a training set can have (rerank_ray/data/shapes.py finds it from the files' columns).
SHAPES = ("pairs", "n-tuple", "list")
#: Canonical columns of the grouped shapes, besides ``label``: a query with its positive and
#: negatives (``negative_1``..``negative_k``, or one ``negative``), or a query with a list of
#: documents and a list of labels.
GROUP_COLUMNS = ("query", "positive", "negative", "documents", "labels")


@dataclass(frozen=True)
class LossSpec:
    """What a sentence-transformers cross-encoder loss takes: the data shape, its labels, the head
    size and its keyword arguments (``train.loss_kwargs``; tests/test_losses.py checks these
    names against the library's signatures)."""

    shape: str
    labels: str
    num_labels: str
    kwargs: tuple[str, ...]
    needs_label: bool = True


#: The 12 losses of ``sentence_transformers.cross_encoder.losses`` ``train.loss`` takes.
LOSSES = {
    "BinaryCrossEntropyLoss": LossSpec("pairs", "float in [0, 1]", "one", ("activation_fn", "pos_weight")),
    "MSELoss": LossSpec("pairs", "float", "one", ("activation_fn",)),
    "CrossEntropyLoss": LossSpec("pairs", "integer class id", "several", ("activation_fn",)),
    "MultipleNegativesRankingLoss": LossSpec(
        "n-tuple", "none", "one", ("num_negatives", "scale", "activation_fn"), needs_label=False
    ),
    "CachedMultipleNegativesRankingLoss": LossSpec(
        "n-tuple",
        "none",
        "one",
        ("num_negatives", "scale", "activation_fn", "mini_batch_size", "show_progress_bar"),
        needs_label=False,
    ),
    "MarginMSELoss": LossSpec("n-tuple", "teacher scores (positive, negatives) or margins", "one", ("activation_fn",)),
    "ListNetLoss": LossSpec("list", "float per document", "one", ("activation_fn", "mini_batch_size")),
    "ListMLELoss": LossSpec(
        "list", "float per document", "one", ("activation_fn", "mini_batch_size", "respect_input_order")
    ),
    "PListMLELoss": LossSpec(
        "list",
        "float per document",
        "one",
        ("lambda_weight", "activation_fn", "mini_batch_size", "respect_input_order"),
    ),
    "LambdaLoss": LossSpec(
        "list",
        "float per document",
        "one",
        ("weighting_scheme", "k", "sigma", "eps", "reduction_log", "activation_fn", "mini_batch_size"),
    ),
    "RankNetLoss": LossSpec(
        "list", "float per document", "one", ("k", "sigma", "eps", "reduction_log", "activation_fn", "mini_batch_size")
    ),
    "ADRMSELoss": LossSpec("list", "float per document", "one", ("alpha", "activation_fn", "mini_batch_size")),
}
#: What each shape's columns are, for messages.
SHAPE_COLUMNS = {
    "pairs": "sentence_0, sentence_1, label",
    "n-tuple": "query, positive[, negative_1 .. negative_k][, label (a list of teacher scores)]",
    "list": "query, documents (a list of texts), labels (a list of numbers, one per document)",
}


def headline_metric_key(kind: str, name: str, at_k: int = 10) -> str:
    """The metric key of ``kind``'s headline, as the evaluator named ``name`` reports it."""
    return f"{name}_{HEADLINE[kind].format(at_k=at_k)}"


def integer_labels(loss_name: str) -> bool:
    """Whether the loss takes class ids (kept as integers from the file to the loss)."""
    return LOSSES[loss_name].labels == "integer class id"


def check_loss_fits(loss_name: str, num_labels: int, eval_kind: str, loss_kwargs: dict[str, Any]) -> None:
    """Raise a ConfigError when the loss cannot train this head or feed this evaluator."""
    if loss_name not in LOSSES:
        raise ConfigError(
            f"train.loss {loss_name!r} is not supported: choose one of {', '.join(LOSSES)} "
            "(the sentence-transformers cross-encoder losses)"
        )
    spec = LOSSES[loss_name]
    wants_several = spec.num_labels == "several"
    if wants_several and num_labels < 2:
        raise ConfigError(f"train.loss {loss_name} needs model.num_labels >= 2 (one logit per class)")
    if not wants_several and num_labels != 1:
        raise ConfigError(f"train.loss {loss_name} needs model.num_labels = 1, got {num_labels}")
    if eval_kind == "classification" and num_labels < 2:
        raise ConfigError("eval.kind classification needs model.num_labels >= 2 and train.loss CrossEntropyLoss")
    if eval_kind != "classification" and num_labels > 1:
        raise ConfigError(f"eval.kind {eval_kind} scores pairs with one logit; set eval.kind classification")
    allowed = set(spec.kwargs)
    extra = set(loss_kwargs) - allowed
    if extra:
        raise ConfigError(
            f"train.loss_kwargs has {sorted(extra)}, which {loss_name} does not take"
            + (f"; it takes {sorted(allowed)}" if allowed else "")
        )


def check_loss_shape(loss_name: str, shape: str, has_label: bool, where: str) -> None:
    """Raise a ConfigError when the training set's shape (found from its columns) is not one the
    loss takes: named before Ray starts, with the columns the loss needs."""
    spec = LOSSES[loss_name]
    if spec.shape != shape:
        raise ConfigError(
            f"train.loss {loss_name} trains on the {spec.shape} shape ({SHAPE_COLUMNS[spec.shape]}), but {where} "
            f"has the {shape} shape ({SHAPE_COLUMNS[shape]}): give it those columns (map yours with data.columns), "
            f"or choose a loss of the {shape} shape: "
            + ", ".join(name for name, other in LOSSES.items() if other.shape == shape)
        )
    if shape == "n-tuple" and spec.needs_label and not has_label:
        raise ConfigError(
            f"train.loss {loss_name} needs teacher scores in a label column (a list: the positive's score and each "
            f"negative's, or the margins), and {where} has none: add one (rerank-ray score writes it) or map it "
            "with data.columns.label"
        )


@dataclass
class ModelConfig:
    name_or_path: str = ""
    """Base model: a Hugging Face hub id (``cross-encoder/ms-marco-MiniLM-L6-v2``) or a local folder.
    Anything ``CrossEncoder(...)`` loads, including a sentence-transformers bi-encoder folder (it gets
    a new, untrained scoring head)."""

    num_labels: int = 1
    """Outputs of the scoring head: 1 for a relevance score (binary, graded and reranking labels),
    the number of classes for multi-class classification."""

    max_length: int | None = None
    """Longest pair in tokens; longer pairs are truncated (longest first). None: the tokenizer's own
    limit, capped at 512."""

    trust_remote_code: bool = False
    """Run modelling code shipped with the model on the hub. Off unless you have read that code."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) of the base model."""

    attn_implementation: str | None = None
    """Attention kernel passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``). None:
    the library's default."""


@dataclass
class DataConfig:
    train: list[DataSource] = field(default_factory=list)
    """Training pairs: files, folders or globs, local or any URI pyarrow reads (``s3://``, ``gs://``);
    Hugging Face datasets: ``hf://datasets/org/name[@revision]``, a mapping ``{dataset: org/name,
    split: train, subset: ..., revision: ...}``, a local folder in the hub's layout (its ``train``
    split) or a ``save_to_disk`` folder. A single string or mapping is accepted too."""

    eval: list[DataSource] = field(default_factory=list)
    """Evaluation pairs, same forms as ``train`` (a dataset's ``validation`` split, else ``test``,
    unless the mapping names one). Empty (and no ``eval.beir``): no evaluation; the last checkpoint
    is exported."""

    name: str | None = None
    """Name of the training set in the model card. None: the folder of its first file."""

    format: DataFormat = "auto"
    """File format. ``auto`` picks it from the file extension (.parquet, .jsonl/.json, .csv, .tsv)."""

    columns: dict[str, str] = field(default_factory=dict)
    """Maps canonical column names (keys) onto the names used in your files (values), e.g.
    ``{sentence_0: query, sentence_1: passage, label: score}`` for pairs, ``{positive: pos,
    negative_1: neg}`` for an n-tuple, ``{documents: passages, labels: scores}`` for a list.
    Unmapped keys keep their canonical name. The columns present decide the training set's
    shape (README, "Data shapes and losses")."""

    label_scale: float = 1.0
    """Every label is multiplied by this on read (0.2 turns 0-5 similarity scores into 0-1)."""

    shuffle: bool = True
    """Shuffle the training pairs every epoch: the order of the files, the rows of each file
    (``shuffle_buffer_rows`` at a time, as they are read) and, on each worker, the pairs within
    each window and the order of its batches."""

    shuffle_buffer_rows: int = 100_000
    """Rows of one file the reader permutes together (a file of at most this many rows is
    permuted whole), so a file sorted by label, source or query does not reach the model one
    kind at a time. Each read task holds this many rows of text; 0 keeps each file's order."""

    group_by_length: bool = False
    """Build each batch from pairs of similar token length (within a window), so batches carry
    little padding: about 1.9x the pairs/s of CrossEncoderTrainer on CPU, against about 0.9x
    without. Every pair is still seen once per epoch. Off by default because batches of similar
    length are also batches of similar pairs: on STS Benchmark one epoch ends about 0.01 of
    Spearman below the trainer with grouping, level with it without (benchmarks/RESULTS.md).
    Turn it on where speed counts more than that last 0.01. With
    ``train.gradient_accumulation_steps`` > 1 each optimizer step takes one micro-batch from each
    of that many length strata instead: a step spans every length again (the same batch of 32 as
    4 micro-batches of 8 reached the trainer's Spearman over 5 seeds, at 1.56x its pairs/s on CPU
    instead of 1.9x)."""

    window_batches: int = 32
    """Batches per shuffle / length-grouping window on each worker. Larger: more randomness and
    less padding, more memory."""

    prefetch_batches: int = 4
    """Padded batches a background thread prepares ahead of the training step on each worker, so
    the step never waits for the stream (0: prepare each batch on the step thread)."""

    id_column: str | None = None
    """Optional column that identifies a pair; with ``run.audit`` on, the ids each worker trained
    in each step are written down."""

    max_docs_per_query: int | None = None
    """Grouped shapes: at most this many documents of a query per epoch, drawn afresh each epoch
    (seeded); an n-tuple keeps its positive and draws among its negatives. None: all of them."""

    tokenize_batch_size: int = 1024
    """Rows per Ray Data tokenization task."""

    on_bad_row: Literal["error", "skip"] = "error"
    """What a bad row does (null or empty text, undecodable text, a missing, non-numeric or
    out-of-range label, a malformed line): ``error`` stops the run naming the file, row, column,
    value and fix; ``skip`` trains without it and counts it, by reason, in the log and in
    ``metrics.json``. File-level problems (unreadable, empty, missing columns) always stop the run."""


@dataclass
class TrainConfig:
    loss: str = "BinaryCrossEntropyLoss"
    """A sentence-transformers cross-encoder loss, by class name. On labelled pairs:
    ``BinaryCrossEntropyLoss``, ``MSELoss``, ``CrossEntropyLoss``; on a query with its positive
    (and hard negatives): ``MultipleNegativesRankingLoss``, ``CachedMultipleNegativesRankingLoss``,
    ``MarginMSELoss`` (teacher scores); on a query's list of documents and labels: ``LambdaLoss``,
    ``ListNetLoss``, ``ListMLELoss``, ``PListMLELoss``, ``RankNetLoss``, ``ADRMSELoss``. The
    training set's columns must have the loss's shape (README, "Data shapes and losses")."""

    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the loss, as its class takes them, e.g. ``{pos_weight: 4.0}`` for
    BinaryCrossEntropyLoss, ``{num_negatives: 8, scale: 20}`` for MultipleNegativesRankingLoss,
    ``{weighting_scheme: NDCGLoss2PPScheme, k: 10}`` for LambdaLoss. Modules are named:
    ``activation_fn`` by a torch.nn class (``Sigmoid``, ``Identity``, ``torch.nn.Tanh``) or null,
    ``weighting_scheme`` and ``lambda_weight`` by a sentence-transformers class name."""

    epochs: int = 3
    """Passes over the training data (sentence-transformers' default: 3)."""

    per_device_batch_size: int = 8
    """Rows per batch on each worker, as ``per_device_train_batch_size`` in sentence-transformers
    (default 8, as there): pairs, or for the grouped shapes queries (each with its documents).
    The global batch is this times the number of workers times ``gradient_accumulation_steps``."""

    gradient_accumulation_steps: int = 1
    """Batches whose gradients are summed before each optimizer step. With
    ``data.group_by_length`` each step's batches come from that many length strata of the
    window (one short, ..., one long), so a step is not made of one length's pairs."""

    learning_rate: float = 5e-5
    """Peak learning rate of AdamW."""

    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""

    adam_beta1: float = 0.9
    """AdamW beta1."""

    adam_beta2: float = 0.999
    """AdamW beta2."""

    adam_epsilon: float = 1e-8
    """AdamW epsilon."""

    lr_scheduler: str = "linear"
    """A transformers scheduler name: linear, cosine, constant_with_warmup, ..."""

    warmup_ratio: float = 0.0
    """Fraction of all optimizer steps spent warming the learning rate up from 0."""

    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm before each step (0 turns clipping off)."""

    precision: Precision = "fp32"
    """fp32, or fp16 / bf16 autocast on GPU (fp16 with a gradient scaler). On CPU fp16 falls back
    to fp32 and bf16 uses CPU autocast."""

    tf32: bool = True
    """On a CUDA GPU (Ampere or newer), run fp32 matrix multiplications on TF32 tensor cores
    (``torch.set_float32_matmul_precision("high")``: inputs rounded to a 10-bit mantissa, sums in
    fp32; several times the fp32 speed). PyTorch's own default is full fp32 ("highest"), which
    leaves a ``precision: fp32`` run on the slow path; false keeps it. Autocast (bf16 / fp16)
    and CPU runs are not affected."""

    seed: int = 42
    """Seed for the scoring head's initialisation, dropout and the shuffle."""

    logging_steps: int = 10
    """Optimizer steps between progress lines (step/total, loss, pairs/s, ETA)."""

    torch_compile: bool = False
    """Compile the model's training forward and backward with ``torch.compile`` (opt-in). The first
    steps take longer while it compiles; token lengths are then padded to multiples of 16 and an
    epoch's last batch filled with weight-0 rows, so it compiles a graph per length bucket (pairs
    shape). On CPU it needs a C++ compiler. Evaluation runs the uncompiled model."""


@dataclass
class EvalConfig:
    kind: EvalKind = "binary"
    """Evaluator: ``binary`` (headline: average precision), ``correlation`` (Spearman),
    ``classification`` (macro F1) or ``reranking`` (nDCG@10). Each headline is the primary metric
    of the matching sentence-transformers evaluator."""

    steps: int = 0
    """Evaluate (and checkpoint) every this many optimizer steps; 0: at the end of each epoch.
    There is always an evaluation at the end."""

    before_training: bool = True
    """Evaluate the base model before the first step, so the gain is visible."""

    batch_size: int = 64
    """Pairs per scoring batch on each worker."""

    name: str = "eval"
    """Prefix of the metric names (``eval_average_precision``)."""

    at_k: int = 10
    """Reranking: the cut-off of MRR@k and nDCG@k (the headline is ``ndcg@<at_k>``), as ``at_k`` of
    sentence-transformers' CrossEncoderRerankingEvaluator."""

    query_id_column: str | None = None
    """Reranking with pair files: the column that names the query of each eval pair. None: pairs
    with the same ``sentence_0`` text belong to one query."""

    beir: str | None = None
    """Reranking: a BEIR-style folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<beir_split>.tsv``)
    to evaluate on instead of ``data.eval``. Each query's candidates are its judged documents, with
    their graded judgements as labels."""

    beir_split: str = "test"
    """The qrels file of ``eval.beir`` to use: ``qrels/<beir_split>.tsv``."""

    retriever: str | None = None
    """Retrieve-then-rerank with ``eval.beir``: a bi-encoder (SentenceTransformer: hub id, local
    folder or ``pkg:<module>``) whose top ``eval.top_k`` documents of the whole corpus are each
    query's candidates, an unjudged document counting as non-relevant (BEIR's reranking protocol).
    Embedded once in Ray Data before training; its own ranking is reported too
    (``<name>_base_ndcg@10``, ...)."""

    run_file: str | None = None
    """Retrieve-then-rerank with ``eval.beir``: a TREC run file (``query_id Q0 corpus_id rank score
    tag`` per line, e.g. BM25's) whose top ``eval.top_k`` documents per query are its candidates."""

    top_k: int = 100
    """Candidates per query taken from ``eval.retriever`` or ``eval.run_file``."""

    always_rerank_positives: bool = False
    """With ``eval.retriever`` / ``eval.run_file``: also rerank the judged positives the retriever
    missed (sentence-transformers' ``always_rerank_positives=True``, the default of its NanoBEIR
    evaluator): an upper bound of reranking, not the retrieve-then-rerank figure. Off: only what
    the retriever returned is reranked, and a missed positive counts as not found."""

    retriever_batch_size: int = 64
    """Texts per encoding batch of ``eval.retriever``."""

    drop_unrankable: bool = False
    """Reranking: leave out of the evaluation the queries with a single candidate and those
    without any positive, counted in the log, the card and ``metrics.json``. Off: a
    single-candidate query stops the run before Ray starts, naming it, and a query without a
    positive counts 0 in the mean (as in sentence-transformers' evaluator)."""

    early_stopping_patience: int = 0
    """Stop training after this many evaluations in a row without the headline metric gaining
    more than ``early_stopping_min_delta`` over the best so far (as transformers'
    EarlyStoppingCallback; the evaluation before training does not count). 0: train every epoch.
    The learning-rate schedule stays the one planned for all epochs, as there."""

    early_stopping_min_delta: float = 0.0
    """The least gain of the headline metric over the best so far that counts as an improvement
    (``early_stopping_threshold`` in transformers)."""


@dataclass
class ScalingConfig:
    num_workers: int = 2
    """Ray Train workers (DDP ranks)."""

    use_gpu: bool = False
    """One GPU per worker (NCCL); CPU workers use gloo."""

    cpus_per_worker: float = 1.0
    """CPUs reserved for each worker; a CPU worker runs that many torch threads."""

    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources per worker, e.g. ``{accelerator_type:H100: 0.01}``."""

    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How workers are placed on nodes (Ray placement group strategy)."""

    check_cluster_cpus: bool = True
    """Before training, refuse a Ray cluster whose CPUs the workers would take all of: Ray Data's
    read and tokenize tasks would never start and the run would hang. Set false on a cluster
    that autoscales (its nodes are not all there yet when the run starts)."""


#: The experiment trackers ``run.report_to`` takes (transformers' names), with the package each needs
#: and the extra that installs it.
TRACKERS = {"tensorboard": ("tensorboard", None), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


@dataclass
class RunConfig:
    name: str | None = None
    """Run name: the folder under ``storage_path``. None: ``rerank-<timestamp>``."""

    storage_path: str = "runs"
    """Where checkpoints and results go: a local folder, NFS, ``s3://`` or ``gs://`` (pyarrow's
    options as a query, e.g. ``?endpoint_override=host:9000&scheme=http``). On a multi-node cluster
    every node must reach it: object storage or a shared mount, never one node's disk."""

    output_dir: str | None = None
    """Where the exported model goes. None: ``<storage_path>/<name>/model``."""

    export: Literal["best", "last"] = "best"
    """Export the checkpoint with the best headline metric, or the last one."""

    num_checkpoints_to_keep: int = 2
    """Checkpoints kept in storage: the last this many, plus the best by headline metric when
    evaluating."""

    checkpoint_steps: int = 0
    """Also write a checkpoint every this many optimizer steps (model, optimizer, scheduler, grad
    scaler, RNG states and the position in the data). 0: only at evaluations (``eval.steps``) and
    at the end. A restarted worker group or ``--resume`` continues from the newest complete one."""

    storage_retry_s: float = 300.0
    """How long a checkpoint upload keeps retrying storage that fails it (object storage
    throttling or dropping connections), waiting 1, 2, 4 ... 30 s between whole-folder attempts,
    before the run fails naming the storage; the newest complete checkpoint stays the restore point."""

    stall_timeout_s: float = 900.0
    """A worker that waits this long for its next batch (Ray Data's read and tokenize tasks given
    no CPU, a data store that stopped answering) ends the run, naming the stream that stalled and
    the cluster's free CPUs, rather than hanging it; exit code 2. 0: wait for ever."""

    max_failures: int = 2
    """Worker-group failures (a dead worker, a lost node) survived by restoring the newest complete
    checkpoint; -1: no limit. Bad input, config errors and out-of-memory stop the run at once,
    since a retry would fail the same way."""

    resume: bool = False
    """Continue the run ``run.name`` from its last checkpoint in ``storage_path`` (same as
    ``rerank-ray train --resume``). Without it, a run name that already has checkpoints is an
    error rather than a silent restart or overwrite."""

    lock_timeout_s: float = 300.0
    """A run holds a lock in its folder while it trains, so a second ``rerank-ray train`` of the
    same run stops with exit code 2. The holder refreshes it every fifth of this; a lock not
    refreshed for this many seconds (its driver died) is taken over, as is at once one whose
    process on this host has ended."""

    ray_address: str | None = None
    """Ray cluster to join. None: ``RAY_ADDRESS`` if set, else an embedded local Ray."""

    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where rank 0 reports the run while it trains (the values of transformers' ``report_to``):
    any of ``tensorboard`` (event files in ``<run folder>/tensorboard``), ``mlflow`` (the tracking
    server of ``MLFLOW_TRACKING_URI``; needs ``pip install 'rerank-ray[mlflow]'``), ``wandb``
    (``WANDB_*`` settings, offline with ``WANDB_MODE=offline``; needs ``'rerank-ray[wandb]'``);
    ``all`` for the three, ``[]`` or ``none`` for none. Loss, learning rate, pairs/s and every
    evaluation per step; the resolved config (redacted) as parameters; the model card and
    metrics.json as artifacts when the run ends. ``rerank-ray tune`` logs each trial."""

    tracking_project: str = "rerank-ray"
    """The MLflow experiment and the W&B project the runs are logged under."""

    audit: bool = False
    """Write ``audit/rank<N>.jsonl`` in the run folder (local storage): per step, the ids
    (``data.id_column``) of the pairs that worker trained; per checkpoint, a digest of its
    parameters. Proves every pair was seen once and all ranks hold the same weights."""


def _default_search_space() -> dict[str, Any]:
    return {
        "train.learning_rate": {"loguniform": [1e-5, 1e-4]},
        "train.per_device_batch_size": {"choice": [16, 32]},
        "train.epochs": {"choice": [1, 2, 3]},
    }


@dataclass
class TuneConfig:
    space: dict[str, Any] = field(default_factory=_default_search_space)
    """What ``rerank-ray tune`` searches: config fields of the train, model or data section by dotted
    name, each with one of ``loguniform: [low, high]``, ``uniform: [low, high]``, ``randint: [low,
    high]`` (both ends included) or ``choice: [a, b, ...]``, e.g. ``{train.learning_rate: {loguniform:
    [1e-5, 1e-4]}, train.epochs: {choice: [1, 2]}}``. A space given in YAML or overrides replaces
    this default: learning rate log-uniform in [1e-5, 1e-4], per-device batch 16 or 32, 1 to 3 epochs."""

    search: Literal["random", "grid", "optuna"] = "random"
    """How trials are drawn: ``random`` (``num_samples`` draws), ``grid`` (every combination of the
    ``choice`` lists once; ranges are refused and ``num_samples`` is not used) or ``optuna``
    (Optuna's TPE sampler, ``num_samples`` trials; needs ``pip install 'rerank-ray[tune]'``)."""

    num_samples: int = 8
    """Trials to run with random and optuna search."""

    max_concurrent_trials: int | None = None
    """Trials training at once, each with ``scaling.num_workers`` workers. None: as many as the
    cluster's CPUs and GPUs hold, keeping 2 CPUs for Ray Data."""

    scheduler: Literal["asha", "none"] = "asha"
    """``asha``: asynchronous successive halving on the headline metric at every evaluation, which
    stops a trial trailing the others at the same epoch; ``none``: every trial trains to its end."""

    grace_period: float = 1.0
    """ASHA: epochs every trial trains before it may be stopped."""

    reduction_factor: float = 3.0
    """ASHA: at each rung (``grace_period`` x ``reduction_factor``^k epochs) the trials below the
    best 1/``reduction_factor`` of those that reached it are stopped."""

    seed: int = 0
    """Seed of the random and optuna samplers: the same seed draws the same trials."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the pairs come from and how they are batched."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loss, optimizer, schedule and precision."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation kind and frequency."""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    """Workers and their resources."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run name, storage and export."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Hyperparameter search (``rerank-ray tune``): space, algorithm, scheduler, trials."""

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build and check a config from a plain nested dict (YAML, or the dict a worker gets)."""
        config = _build(cls, raw, prefix="")
        config.check()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def headline_metric(self) -> str:
        """The metric key that selects the best checkpoint and that Tune optimises."""
        return headline_metric_key(self.eval.kind, self.eval.name, self.eval.at_k)

    def _check_lr_scheduler(self) -> None:
        # transformers.get_scheduler would raise this inside every worker, after Ray started.
        from transformers.trainer_utils import SchedulerType

        names = [t.value for t in SchedulerType]
        if self.train.lr_scheduler not in names:
            hint = difflib.get_close_matches(self.train.lr_scheduler, names, n=1)
            raise ConfigError(
                f"train.lr_scheduler {self.train.lr_scheduler!r} is not a transformers scheduler"
                + (f" (did you mean {hint[0]}?)" if hint else "")
                + f"; choose one of: {', '.join(names)}"
            )

    def check(self) -> None:
        """Cross-field checks; each error names the key and the fix."""
        if not self.model.name_or_path:
            raise ConfigError("model.name_or_path is required: a hub id or a local model folder")
        if not self.data.train:
            raise ConfigError("data.train is required: a file, folder, glob or URI of training pairs")
        positive = {
            "train.epochs": self.train.epochs,
            "train.per_device_batch_size": self.train.per_device_batch_size,
            "train.gradient_accumulation_steps": self.train.gradient_accumulation_steps,
            "train.logging_steps": self.train.logging_steps,
            "eval.batch_size": self.eval.batch_size,
            "scaling.num_workers": self.scaling.num_workers,
            "model.num_labels": self.model.num_labels,
            "data.window_batches": self.data.window_batches,
            "data.tokenize_batch_size": self.data.tokenize_batch_size,
            "run.num_checkpoints_to_keep": self.run.num_checkpoints_to_keep,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}")
        if self.model.max_length is not None and self.model.max_length < 2:
            raise ConfigError(f"model.max_length must be at least 2 tokens, got {self.model.max_length}")
        self._check_lr_scheduler()
        if not 0 <= self.train.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.train.warmup_ratio}")
        if not self.train.learning_rate > 0 or not math.isfinite(self.train.learning_rate):
            raise ConfigError(f"train.learning_rate must be a positive number, got {self.train.learning_rate}")
        non_negative: dict[str, float] = {
            "train.weight_decay": self.train.weight_decay,
            "train.max_grad_norm": self.train.max_grad_norm,
            "eval.steps": self.eval.steps,
            "scaling.cpus_per_worker": self.scaling.cpus_per_worker,
            "run.checkpoint_steps": self.run.checkpoint_steps,
            "data.prefetch_batches": self.data.prefetch_batches,
            "data.shuffle_buffer_rows": self.data.shuffle_buffer_rows,
            "eval.early_stopping_patience": self.eval.early_stopping_patience,
            "eval.early_stopping_min_delta": self.eval.early_stopping_min_delta,
            "run.lock_timeout_s": self.run.lock_timeout_s,
            "run.storage_retry_s": self.run.storage_retry_s,
            "run.stall_timeout_s": self.run.stall_timeout_s,
        }
        for key, amount in non_negative.items():
            if amount < 0:
                raise ConfigError(f"{key} must not be negative, got {amount}")
        if self.data.label_scale == 0:
            raise ConfigError("data.label_scale must not be 0")
        self._check_eval()
        self._check_report_to()
        if self.run.resume and not self.run.name:
            raise ConfigError("run.resume needs run.name: the name of the run to continue")
        storage_scheme = self.run.storage_path.partition("://")[0] if "://" in self.run.storage_path else "file"
        if self.run.audit and storage_scheme != "file":
            raise ConfigError(
                f"run.audit appends to per-rank files in the run folder, which {storage_scheme}:// storage cannot "
                "do: use a local or NFS run.storage_path for an audited run, or run.audit=false"
            )
        if self.train.torch_compile:
            check_torch_compile()
        if self.run.max_failures < -1:
            raise ConfigError(f"run.max_failures must be -1 (no limit) or at least 0, got {self.run.max_failures}")
        # Credentials written into a path would reach Ray's logs, error messages and the model card.
        check_no_inline_credentials(self.paths())
        unknown_columns = [key for key in self.data.columns if not is_canonical_column(key)]
        if unknown_columns:
            raise ConfigError(
                f"data.columns has unknown key(s) {sorted(unknown_columns)}: its keys are the canonical "
                f"names ({', '.join(PAIR_COLUMNS)}; {', '.join(GROUP_COLUMNS)}, negative_1..negative_k) "
                "and its values the column names in your files"
            )
        if self.data.max_docs_per_query is not None and self.data.max_docs_per_query < 1:
            raise ConfigError(f"data.max_docs_per_query must be at least 1, got {self.data.max_docs_per_query}")
        # The loss and the evaluator kind must fit the head; fail here rather than in a worker.
        check_loss_fits(self.train.loss, self.model.num_labels, self.eval.kind, self.train.loss_kwargs)

    def _check_report_to(self) -> None:
        unknown = [name for name in self.run.report_to if name not in (*TRACKERS, "all", "none")]
        if unknown:
            raise ConfigError(
                f"run.report_to has unknown tracker(s) {unknown}: choose from {[*TRACKERS, 'all', 'none']}"
            )

    def trackers(self) -> list[str]:
        """``run.report_to`` with ``all`` and ``none`` expanded, in a fixed order."""
        names = set(self.run.report_to)
        if "all" in names:
            return list(TRACKERS)
        return [name for name in TRACKERS if name in names]

    def paths(self) -> dict[str, list[str]]:
        """Every path or URI of the config, by key (the ones a credential must never be written into)."""
        return {
            "model.name_or_path": [self.model.name_or_path],
            "data.train": [_source_path(spec) for spec in self.data.train],
            "data.eval": [_source_path(spec) for spec in self.data.eval],
            "run.storage_path": [self.run.storage_path],
            "run.output_dir": [self.run.output_dir] if self.run.output_dir else [],
        }

    def _check_eval(self) -> None:
        """The reranking inputs belong to the reranking kind; class labels are not scaled."""
        evaluation = self.eval
        if evaluation.at_k < 1:
            raise ConfigError(f"eval.at_k must be at least 1, got {evaluation.at_k}")
        reranking_only = {"eval.query_id_column": evaluation.query_id_column, "eval.beir": evaluation.beir}
        for key, value in reranking_only.items():
            if value is not None and evaluation.kind != "reranking":
                raise ConfigError(f"{key} is only used by eval.kind reranking (eval.kind is {evaluation.kind!r})")
        retrieval = {"eval.retriever": evaluation.retriever, "eval.run_file": evaluation.run_file}
        for key, value in retrieval.items():
            if value is not None and evaluation.beir is None:
                raise ConfigError(
                    f"{key} chooses the candidates among a BEIR folder's corpus: set eval.beir (and eval.kind reranking)"
                )
        if evaluation.retriever is not None and evaluation.run_file is not None:
            raise ConfigError("set either eval.retriever (a bi-encoder) or eval.run_file (a TREC run), not both")
        if evaluation.retriever_batch_size < 1:
            raise ConfigError(f"eval.retriever_batch_size must be at least 1, got {evaluation.retriever_batch_size}")
        if evaluation.top_k < 2:
            raise ConfigError(f"eval.top_k must be at least 2 (a ranking of one is no ranking), got {evaluation.top_k}")
        if evaluation.always_rerank_positives and evaluation.retriever is None and evaluation.run_file is None:
            raise ConfigError("eval.always_rerank_positives only applies with eval.retriever or eval.run_file")
        if evaluation.beir is not None and self.data.eval:
            raise ConfigError("set either data.eval (pair files) or eval.beir (a BEIR folder), not both")
        if evaluation.drop_unrankable and evaluation.kind != "reranking":
            raise ConfigError(
                f"eval.drop_unrankable is only used by eval.kind reranking (eval.kind is {evaluation.kind!r})"
            )
        if evaluation.early_stopping_patience and not (self.data.eval or evaluation.beir):
            raise ConfigError(
                "eval.early_stopping_patience watches the eval set's headline metric: set data.eval (or eval.beir)"
            )
        if self.train.loss == "CrossEntropyLoss" and self.data.label_scale != 1.0:
            raise ConfigError("data.label_scale must stay 1 with CrossEntropyLoss: its labels are class ids")


def is_canonical_column(name: str) -> bool:
    """A key ``data.columns`` takes: a canonical column of some shape."""
    if name in PAIR_COLUMNS or name in GROUP_COLUMNS:
        return True
    prefix, _, number = name.partition("_")
    return prefix == "negative" and number.isdigit() and int(number) >= 1


def check_torch_compile() -> None:
    """``train.torch_compile`` needs a torch whose compiler runs on this Python and platform."""
    import torch

    if not hasattr(torch, "compile"):
        raise ConfigError(f"train.torch_compile needs torch 2.0 or newer, this is {torch.__version__}: set it to false")
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(
            f"train.torch_compile: torch {torch.__version__} cannot compile on this Python/platform "
            "(torch._dynamo.is_dynamo_supported() is False): set train.torch_compile=false"
        )


#: Output formats of ``rerank-ray mine``, as ``mine_hard_negatives``' ``output_format`` names them.
MINE_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")


@dataclass
class MineConfig:
    """``rerank-ray mine`` (the ``mine:`` section of its YAML): hard negatives for (query,
    positive) pairs, chosen as ``sentence_transformers.util.mine_hard_negatives`` chooses them.
    The keys after ``output_scores`` are that function's parameters, with its defaults."""

    pairs: list[str] = field(default_factory=list)
    """Files, folders or globs of (query, positive) pairs: ``query`` and ``positive`` columns,
    labelled pairs (the rows with a label above 0 are the positives), n-tuples (their query and
    positive) or lists (the documents labelled above 0). Parquet, JSON Lines, CSV or TSV."""
    corpus: list[str] = field(default_factory=list)
    """Files of documents to mine from. The positives are always candidates too (added where the
    corpus lacks them, as the library adds them). Empty: the positives are the corpus."""
    corpus_column: str = "text"
    """The corpus files' text column."""
    corpus_title_column: str | None = "title"
    """A title column joined before the text with a space where the file has it (as BEIR's
    reranking builds a document); null: the text alone."""
    columns: dict[str, str] = field(default_factory=dict)
    """Canonical column -> your column in the pair files, as ``data.columns`` (``query``,
    ``positive``; ``sentence_0``, ``sentence_1``, ``label``; ``documents``, ``labels``)."""
    embedder: str = ""
    """The bi-encoder (a SentenceTransformer): hub id, local folder or ``pkg:<module>``."""
    output: str = ""
    """A new folder (local or URI) for the mined rows, as Parquet parts; the summary is written
    beside it (``<output>.summary.json``)."""
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] = "triplet"
    """``triplet`` (query, positive, negative), ``n-tuple`` (query, positive, negative_1..n),
    ``labeled-pair`` (sentence_0, sentence_1, label) or ``labeled-list`` (query, documents,
    labels): written with the canonical column names ``rerank-ray train`` reads."""
    output_scores: bool = False
    """Add a ``score`` column: the similarity of each written pair (a list per row for triplets,
    tuples and lists). Unlike the library, the labels stay beside it."""
    range_min: int = 0
    """Skip the ``range_min`` most similar candidates (likely unlabelled positives)."""
    range_max: int | None = None
    """Consider candidates up to this rank. Null: derived as the library derives it."""
    max_score: float | None = None
    """Drop candidates more similar than this."""
    min_score: float | None = None
    """Drop candidates less similar than this."""
    absolute_margin: float | None = None
    """Drop candidates within this margin of the (hardest) positive's similarity."""
    relative_margin: float | None = None
    """Drop candidates above ``positive - |positive| * relative_margin``."""
    num_negatives: int = 3
    """Negatives per query."""
    sampling_strategy: Literal["top", "random"] = "top"
    """``top``: the most similar candidates left; ``random``: a seeded sample of them."""
    include_positives: bool = False
    """Keep the positives among the candidates (for reranking eval sets; the output becomes n-tuple)."""
    query_prompt: str | None = None
    """A prompt prepended to each query when embedding (wins over ``query_prompt_name``)."""
    query_prompt_name: str | None = None
    """A prompt of the embedder's ``prompts`` for the queries."""
    corpus_prompt: str | None = None
    """A prompt prepended to each document when embedding."""
    corpus_prompt_name: str | None = None
    """A prompt of the embedder's ``prompts`` for the documents."""
    cross_encoder: str | None = None
    """A cross-encoder that rescores the candidates before the filters (as the library does:
    only when a margin, ``max_score`` or ``min_score`` is set)."""
    batch_size: int = 32
    """Texts per forward pass of the embedder (and of the cross-encoder)."""
    use_faiss: bool = False
    """Search each block with faiss (``IndexFlatIP``: exact inner product, as the library's
    ``use_faiss``); needs faiss on every node (``pip install faiss-cpu``, or ``faiss-gpu``)."""
    search_batch_size: int = 16384
    """Queries per search task (the library's ``faiss_batch_size``): a task holds this many
    queries' candidates and one block of the corpus at a time."""
    seed: int = 0
    """Seed of ``sampling_strategy: random``."""
    rows_per_batch: int = 1024
    """Texts handed to an embedding actor at a time."""
    concurrency: int | None = None
    """Embedding actors at once. Null: one per GPU of the cluster, else one."""
    cpus_per_actor: float = 1.0
    """CPUs of each embedding actor (its torch threads on CPU)."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the embedder or cross-encoder."""

    def check(self) -> None:
        """The checks that need no data; each error names the key (the flag is the key with dashes)."""
        for key in ("pairs", "embedder", "output"):
            if not getattr(self, key):
                raise ConfigError(f"mine.{key} is required (--{key.replace('_', '-')})")
        if self.num_negatives < 1:
            raise ConfigError(f"mine.num_negatives must be at least 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise ConfigError(f"mine.range_min must be non-negative, got {self.range_min}")
        for key in ("batch_size", "search_batch_size", "rows_per_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"mine.{key} must be at least 1, got {getattr(self, key)}")
        if self.use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise ConfigError("mine.use_faiss needs faiss: pip install faiss-cpu (or faiss-gpu)") from None
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"mine.concurrency must be at least 1, got {self.concurrency}")
        check_no_inline_credentials(
            {"mine.pairs": self.pairs, "mine.corpus": self.corpus, "mine.output": [self.output]}
        )


def load_mine_config(path: str | Path | None, values: dict[str, Any]) -> MineConfig:
    """The ``mine:`` section of a YAML file (or none), then ``values`` (the flags given) over it."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path)).get("mine") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: mine must be a mapping of keys, got {raw!r}")
    raw = {**raw, **values}
    config = _build(MineConfig, raw, prefix="mine.")
    config.check()
    return config


# --------------------------------------------------------------------------------------------
# Loading: YAML file + dotted overrides -> checked Config


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``a.b=value`` overrides, and check the result."""
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        apply_override(raw, override)
    return Config.from_dict(raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...), not {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``section.key=value`` in a nested dict; the value is parsed as YAML (``[a, b]``, ``null``)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse value {text!r}: {err}") from err
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}: {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in raw if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(fields)}"
        raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = coerce_value(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _source_path(spec: DataSource) -> str:
    return spec if isinstance(spec, str) else spec.get("dataset", "")


def coerce_value(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the field's type; accept the few lossless conversions YAML needs."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    wrong = ConfigError(f"{key} must be {type_name(hint)}, got {type(value).__name__}: {value!r}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, key)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key} must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads "5e-5" (no dot) as a string; accept any string that is a plain number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        raise wrong
    if hint is str:
        if isinstance(value, str):
            return value
        raise wrong
    if origin is list:
        (item_type,) = args
        if item_type is str and isinstance(value, str):
            return [value]  # a single path is a list of one
        if item_type is DataSource and isinstance(value, (str, dict)):
            return [coerce_value(value, item_type, key)]  # a single source, path or mapping
        if not isinstance(value, list):
            raise wrong
        return [coerce_value(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        key_type, value_type = args
        if not isinstance(value, dict):
            raise wrong
        return {
            coerce_value(k, key_type, f"{key} key"): coerce_value(v, value_type, f"{key}.{k}") for k, v in value.items()
        }
    raise TypeError(f"config field {key} has a type the loader does not handle: {hint}")


def field_docs(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, docstring) for every leaf field, read from the docstrings in this file."""
    source = inspect.getsource(cls)
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            rows.extend(field_docs(hint, prefix=f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", type_name(hint), docs.get(f.name, "")))
    return rows
