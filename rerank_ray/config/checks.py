"""Cross-field checks of a run's config, made on load (the driver's and each worker's).

Each error names the key and the fix. The checks that need the data (columns, shapes, labels)
are :mod:`rerank_ray.data.files`'; those of the ``tune:`` section are ``rerank-ray tune``'s
(:mod:`rerank_ray.tune.space`), so a ``train`` run never reads it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math

from rerank_ray.config.evalsets import EvalSet, check_eval_sets, eval_sets
from rerank_ray.config.sections import (
    GROUP_COLUMNS,
    PAIR_COLUMNS,
    TRACKERS,
    DataConfig,
    DataSource,
    EvalConfig,
    ModelConfig,
    RunConfig,
    ScalingConfig,
    TrainConfig,
    is_canonical_column,
)
from rerank_ray.config.trainsets import MIXTURE_KEYS, train_set_data, train_sets
from rerank_ray.errors import ConfigError
from rerank_ray.losses import check_loss_fits
from rerank_ray.redaction import check_no_inline_credentials


def check_sections(
    model: ModelConfig,
    data: DataConfig,
    train: TrainConfig,
    evaluation: EvalConfig,
    scaling: ScalingConfig,
    run: RunConfig,
) -> None:
    """Every check of a run's sections, in the order a user fixes them: what is required, the
    ranges of numbers, then the settings that must agree with each other."""
    if not model.name_or_path:
        raise ConfigError("model.name_or_path is required: a hub id or a local model folder")
    if not data.train:
        raise ConfigError("data.train is required: a file, folder, glob or URI of training pairs")
    check_ranges(model, data, train, evaluation, scaling, run)
    check_lr_scheduler(train.lr_scheduler)
    sets = eval_sets(evaluation, data)
    check_eval_sets(sets, evaluation)
    for eval_set in sets:
        check_one_evaluation(eval_set, data, train, model)
    check_evaluation(evaluation, data, train)
    if evaluation.early_stopping_patience and not sets:
        raise ConfigError(
            "eval.early_stopping_patience watches the eval set's headline metric: set data.eval (or eval.beir)"
        )
    check_report_to(run.report_to)
    if run.resume and not run.name:
        raise ConfigError("run.resume needs run.name: the name of the run to continue")
    storage_scheme = run.storage_path.partition("://")[0] if "://" in run.storage_path else "file"
    if run.audit and storage_scheme != "file":
        raise ConfigError(
            f"run.audit appends to per-rank files in the run folder, which {storage_scheme}:// storage cannot "
            "do: use a local or NFS run.storage_path for an audited run, or run.audit=false"
        )
    if train.torch_compile:
        check_torch_compile()
        if data.padding_free == "on":
            raise ConfigError(
                "data.padding_free: on and train.torch_compile do not go together: a packed row changes length "
                "every batch, so the compiler would compile graph after graph. Set one of them off"
            )
    if run.wait_for_workers_s is not None and not run.wait_for_workers_s > 0:
        raise ConfigError(
            f"run.wait_for_workers_s must be positive (or null: wait for ever), got {run.wait_for_workers_s}"
        )
    if run.max_failures < -1:
        raise ConfigError(f"run.max_failures must be -1 (no limit) or at least 0, got {run.max_failures}")
    # Credentials written into a path would reach Ray's logs, error messages and the model card.
    check_no_inline_credentials(config_paths(model, data, run))
    check_column_map(data.columns, "data.columns")
    check_sources(data)
    # The loss and the evaluator kind must fit the head; fail here rather than in a worker.
    check_loss_fits(train.loss, model.num_labels, evaluation.kind, train.loss_kwargs)
    check_memory_settings(model, train, scaling)
    check_elastic(train, scaling)
    check_mixture(model, data, train, evaluation, scaling)


def check_mixture(
    model: ModelConfig, data: DataConfig, train: TrainConfig, evaluation: EvalConfig, scaling: ScalingConfig
) -> None:
    """Each training set of a mixture checked as a single one would be; what a mixture does not take yet."""
    sets = train_sets(data, train)
    if not sets:
        return
    if scaling.min_workers is not None:
        raise ConfigError(
            "a mixture of training sets (data.train sources with their own loss) trains on a fixed number of "
            "workers: set scaling.min_workers to null"
        )
    if train.torch_compile:
        raise ConfigError("a mixture of training sets does not take train.torch_compile yet: set it to false")
    for train_set in sets:
        own_data, own_train = train_set_data(data, train, train_set)
        try:
            check_loss_fits(own_train.loss, model.num_labels, evaluation.kind, own_train.loss_kwargs)
            if own_train.loss == "CrossEntropyLoss" and own_data.label_scale != 1.0:
                raise ConfigError("label_scale must stay 1 with CrossEntropyLoss: its labels are class ids")
        except ConfigError as err:
            raise ConfigError(f"{train_set.key} ({train_set.name}): {err}") from err


def worker_counts(scaling: ScalingConfig) -> list[int]:
    """Every number of workers a run may train on: ``num_workers``, or each from ``min_workers`` up."""
    low = scaling.min_workers if scaling.min_workers is not None else scaling.num_workers
    return list(range(low, scaling.num_workers + 1))


def check_elastic(train: TrainConfig, scaling: ScalingConfig) -> None:
    """An elastic range keeps the global batch: it must split evenly over every worker count."""
    if scaling.min_workers is None:
        return
    if not 1 <= scaling.min_workers <= scaling.num_workers:
        raise ConfigError(
            f"scaling.min_workers must be between 1 and scaling.num_workers ({scaling.num_workers}), "
            f"got {scaling.min_workers}"
        )
    if not scaling.resize_check_s > 0:
        raise ConfigError(f"scaling.resize_check_s must be positive, got {scaling.resize_check_s}")
    batch = train.per_device_batch_size * train.gradient_accumulation_steps * scaling.num_workers
    uneven = [w for w in worker_counts(scaling) if batch % w]
    if uneven:
        fits = math.lcm(*worker_counts(scaling))
        raise ConfigError(
            f"the global batch ({batch}: train.per_device_batch_size x train.gradient_accumulation_steps x "
            f"scaling.num_workers) must split evenly over every worker count from scaling.min_workers "
            f"{scaling.min_workers} to scaling.num_workers {scaling.num_workers}, and {uneven} do not divide it: "
            f"make it a multiple of {fits}, or narrow the range"
        )


def check_memory_settings(model: ModelConfig, train: TrainConfig, scaling: ScalingConfig) -> None:
    """LoRA, activation checkpointing and FSDP: their ranges, and what they do not combine with."""
    lora = model.lora
    if lora.r < 0:
        raise ConfigError(f"model.lora.r must be 0 (no LoRA) or a positive rank, got {lora.r}")
    if lora.alpha is not None and not lora.alpha > 0:
        raise ConfigError(f"model.lora.alpha must be positive, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"model.lora.dropout must be in [0, 1), got {lora.dropout}")
    if lora.r == 0 and (lora.save_adapter or lora.target_modules or lora.modules_to_save):
        raise ConfigError(
            "model.lora settings are set but model.lora.r is 0 (no LoRA): set a rank, e.g. model.lora.r=16"
        )
    if lora.r:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ConfigError(
                "model.lora needs peft: pip install 'rerank-ray[lora]' (on a cluster, in the job's runtime env too)"
            ) from None
    if scaling.strategy == "fsdp":
        if train.precision == "fp16":
            raise ConfigError(
                "scaling.strategy fsdp trains in fp32 or bf16 (train.precision bf16): fp16 would need a gradient "
                "scaler for sharded gradients"
            )
        if train.torch_compile:
            raise ConfigError("train.torch_compile is not supported with scaling.strategy fsdp: set one of them off")


def check_ranges(
    model: ModelConfig,
    data: DataConfig,
    train: TrainConfig,
    evaluation: EvalConfig,
    scaling: ScalingConfig,
    run: RunConfig,
) -> None:
    """Counts at least 1, amounts not negative, ratios in their interval."""
    positive = {
        "train.epochs": train.epochs,
        "train.per_device_batch_size": train.per_device_batch_size,
        "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train.logging_steps": train.logging_steps,
        "eval.batch_size": evaluation.batch_size,
        "scaling.num_workers": scaling.num_workers,
        "model.num_labels": model.num_labels,
        "data.window_batches": data.window_batches,
        "data.tokenize_batch_size": data.tokenize_batch_size,
        "run.num_checkpoints_to_keep": run.num_checkpoints_to_keep,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if model.max_length is not None and model.max_length < 2:
        raise ConfigError(f"model.max_length must be at least 2 tokens, got {model.max_length}")
    if model.max_query_length is not None and model.max_query_length < 1:
        raise ConfigError(f"model.max_query_length must be at least 1 token, got {model.max_query_length}")
    if (
        model.max_query_length is not None
        and model.max_length is not None
        and model.max_query_length >= model.max_length
    ):
        raise ConfigError(
            f"model.max_query_length ({model.max_query_length}) must be below model.max_length "
            f"({model.max_length}): the pair needs room for its document"
        )
    if (
        model.default_prompt_name is not None
        and model.prompts is not None
        and model.default_prompt_name not in model.prompts
    ):
        raise ConfigError(
            f"model.default_prompt_name {model.default_prompt_name!r} is not a key of model.prompts "
            f"({sorted(model.prompts)})"
        )
    if not 0 <= train.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {train.warmup_ratio}")
    if not train.learning_rate > 0 or not math.isfinite(train.learning_rate):
        raise ConfigError(f"train.learning_rate must be a positive number, got {train.learning_rate}")
    non_negative: dict[str, float] = {
        "train.weight_decay": train.weight_decay,
        "train.max_grad_norm": train.max_grad_norm,
        "eval.steps": evaluation.steps,
        "scaling.cpus_per_worker": scaling.cpus_per_worker,
        "run.checkpoint_steps": run.checkpoint_steps,
        "data.prefetch_batches": data.prefetch_batches,
        "data.shuffle_buffer_rows": data.shuffle_buffer_rows,
        "eval.early_stopping_patience": evaluation.early_stopping_patience,
        "eval.early_stopping_min_delta": evaluation.early_stopping_min_delta,
        "run.lock_timeout_s": run.lock_timeout_s,
        "run.storage_retry_s": run.storage_retry_s,
        "run.stall_timeout_s": run.stall_timeout_s,
    }
    for key, amount in non_negative.items():
        if amount < 0:
            raise ConfigError(f"{key} must not be negative, got {amount}")
    if data.label_scale == 0:
        raise ConfigError("data.label_scale must not be 0")
    if data.max_docs_per_query is not None and data.max_docs_per_query < 1:
        raise ConfigError(f"data.max_docs_per_query must be at least 1, got {data.max_docs_per_query}")


def check_lr_scheduler(name: str) -> None:
    """``train.lr_scheduler`` must be a transformers scheduler: ``transformers.get_scheduler``
    would raise this inside every worker, after Ray started."""
    from transformers.trainer_utils import SchedulerType

    names = [t.value for t in SchedulerType]
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        raise ConfigError(
            f"train.lr_scheduler {name!r} is not a transformers scheduler"
            + (f" (did you mean {hint[0]}?)" if hint else "")
            + f"; choose one of: {', '.join(names)}"
        )


def check_report_to(report_to: list[str]) -> None:
    unknown = [name for name in report_to if name not in (*TRACKERS, "all", "none")]
    if unknown:
        raise ConfigError(f"run.report_to has unknown tracker(s) {unknown}: choose from {[*TRACKERS, 'all', 'none']}")


def check_one_evaluation(eval_set: EvalSet, data: DataConfig, train: TrainConfig, model: ModelConfig) -> None:
    """An evaluation of ``eval.sets`` checked as a single one would be, the message naming its entry."""
    if eval_set.key == "eval":
        return  # the section itself: check_evaluation's
    own_data = dataclasses.replace(data, train=[], eval=eval_set.sources)
    try:
        check_evaluation(eval_set.evaluation, own_data, train)
        check_sources(own_data)
        check_no_inline_credentials({f"{eval_set.key}.data": [source_path(spec) for spec in eval_set.sources]})
        check_loss_fits(train.loss, model.num_labels, eval_set.evaluation.kind, train.loss_kwargs)
    except ConfigError as err:
        raise ConfigError(f"{eval_set.key} ({eval_set.name}): {err}") from err


def check_evaluation(evaluation: EvalConfig, data: DataConfig, train: TrainConfig) -> None:
    """The reranking inputs belong to the reranking kind; class labels are not scaled."""
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
    if evaluation.beir is not None and data.eval:
        raise ConfigError("set either data.eval (pair files) or eval.beir (a BEIR folder), not both")
    if evaluation.drop_unrankable and evaluation.kind != "reranking":
        raise ConfigError(
            f"eval.drop_unrankable is only used by eval.kind reranking (eval.kind is {evaluation.kind!r})"
        )
    if train.loss == "CrossEntropyLoss" and data.label_scale != 1.0:
        raise ConfigError("data.label_scale must stay 1 with CrossEntropyLoss: its labels are class ids")


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


def source_path(spec: DataSource) -> str:
    """The path of a data source: the path itself, a file mapping's path or a hub mapping's dataset id."""
    if isinstance(spec, str):
        return spec
    return str(spec.get("path", spec.get("dataset", "")))


def check_column_map(columns: object, key: str) -> None:
    """A column map: canonical names (keys) onto the names in the files (strings)."""
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise ConfigError(f"{key} must map canonical column names onto your column names, got {columns!r}")
    unknown_columns = [key for key in columns if not is_canonical_column(key)]
    if unknown_columns:
        raise ConfigError(
            f"{key} has unknown key(s) {sorted(unknown_columns)}: its keys are the canonical "
            f"names ({', '.join(PAIR_COLUMNS)}; {', '.join(GROUP_COLUMNS)}, negative_1..negative_k) "
            "and its values the column names in your files"
        )


#: The keys of a file mapping source; a Hugging Face mapping's own are rerank_ray.data.hub's.
FILE_SOURCE_KEYS = ("path", "columns")


def check_sources(data: DataConfig) -> None:
    """Mapping sources: a file mapping (``path``) or a dataset mapping (``dataset``), each with an
    optional column map (the hub mapping's other keys are checked as it is resolved)."""
    for split, specs in (("train", data.train), ("eval", data.eval)):
        for index, spec in enumerate(specs):
            if not isinstance(spec, dict):
                continue
            key = f"data.{split}[{index}]"
            if ("path" in spec) == ("dataset" in spec):
                raise ConfigError(
                    f"{key}: a source mapping names either a path ({{path: data/pairs.parquet, columns: {{...}}}}) "
                    f"or a Hugging Face dataset ({{dataset: org/name, split: ...}}), got the keys {sorted(spec)}"
                )
            if split == "train":
                spec = {k: v for k, v in spec.items() if k not in MIXTURE_KEYS}  # rerank_ray.config.trainsets'
            if "path" in spec:
                unknown = sorted(set(spec) - set(FILE_SOURCE_KEYS))
                if unknown or not isinstance(spec["path"], str) or not spec["path"]:
                    raise ConfigError(
                        f"{key}: a path mapping takes the keys {list(FILE_SOURCE_KEYS)} with a path string, "
                        f"got {spec!r}"
                    )
            elif not all(isinstance(v, str) for k, v in spec.items() if k != "columns"):
                raise ConfigError(f"{key}: a dataset mapping's values other than columns are strings, got {spec!r}")
            if "columns" in spec:
                check_column_map(spec["columns"], f"{key}.columns")


def config_paths(model: ModelConfig, data: DataConfig, run: RunConfig) -> dict[str, list[str]]:
    """Every path or URI of the config, by key (the ones a credential must never be written into)."""
    return {
        "model.name_or_path": [model.name_or_path],
        "data.train": [source_path(spec) for spec in data.train],
        "data.eval": [source_path(spec) for spec in data.eval],
        "run.storage_path": [run.storage_path],
        "run.output_dir": [run.output_dir] if run.output_dir else [],
    }
