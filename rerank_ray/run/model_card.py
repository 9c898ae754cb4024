"""The model card of an exported run: sentence-transformers' own, plus what only a Ray run knows.

sentence-transformers' card (its template, filled through ``model.model_card_data``) has the
sections of the reference cards its trainer writes: the evaluation metrics with the primary
metric in bold, the training and evaluation sets (size, columns, approximate statistics of the
first 100 rows, sample rows), the loss and its parameters, the non-default and all
hyperparameters, the training logs (epoch, step, training loss, headline metric), the training
time, the framework versions and a usage snippet. Its trainer fills them from callbacks; our loop
is not that trainer, so :func:`fill_card_data` fills them from what the run recorded.

Appended after it: the framework versions gain Ray, and a "Distributed training (rerank-ray)"
section says how many workers of which kind trained it, at how many pairs/s, and, for a model a
hyperparameter search selected, what that search tried (the section ``rerank-ray tune`` writes,
:func:`rerank_ray.tune.report.summary_markdown`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank_ray.config import Config
from rerank_ray.data import hub
from rerank_ray.data.beir import Retrieval
from rerank_ray.data.encoding import CAUSAL_TASK, INFERENCE_FILE
from rerank_ray.data.sources import location
from rerank_ray.data.stream import PairSource
from rerank_ray.evaluation.metrics import build_evaluator
from rerank_ray.redaction import redact
from rerank_ray.training.losses import build_library_loss
from rerank_ray.training.models import base_model_id
from rerank_ray.training.plan import EvalPlan, TrainPlan

DISTRIBUTED_HEADING = "## Distributed training (rerank-ray)"


@dataclass
class TrainRecord:
    """One training set of a mixture, for its card."""

    name: str
    rows: list[dict[str, Any]]
    """Its first rows (canonical columns): the card's statistics."""
    loss: str
    loss_kwargs: dict[str, Any]
    size: int


@dataclass
class EvalRecord:
    """One evaluation of an exported run, for its card."""

    config: Config
    """The run's config as a run with this evaluation alone (:meth:`Config.for_eval_set`)."""
    plan: EvalPlan
    rows: list[dict[str, Any]]
    """The first eval pairs (canonical columns): the card's statistics."""
    name: str
    """The eval set's name in the card's dataset list."""
    dropped_queries: dict[str, int] = field(default_factory=dict)
    """Reranking eval queries left out by ``eval.drop_unrankable``, by reason."""


@dataclass
class RunRecord:
    """What an exported run recorded: everything the card is filled from."""

    config: Config
    plan: TrainPlan
    history: list[dict[str, Any]]
    """The loop's history: progress lines (loss, pairs/s) and evaluations, by step."""
    metrics: dict[str, Any]
    """The exported checkpoint's report (its metrics, step, epoch)."""
    step: int
    """The exported checkpoint's step."""
    train_seconds: float
    pairs_seen: float
    train_rows: list[dict[str, Any]]
    """The first training pairs (canonical columns): statistics, samples and usage examples."""
    train_name: str
    evals: list[EvalRecord] = field(default_factory=list)
    """Each evaluation of the run, in the config's order."""
    train_sets: list[TrainRecord] = field(default_factory=list)
    """A mixture's training sets (empty: the single one of ``train_rows``)."""
    stopped_at: tuple[int, float] | None = None
    """(step, epoch) where early stopping ended the run; None: it trained every planned step."""
    train_shape: str = "labelled pairs"
    """The training set's shape, in words (:meth:`rerank_ray.data.shapes.Shape.describe`)."""
    trained_parameters: tuple[int, int] | None = None
    """With LoRA: (parameters trained, parameters of the model with its adapters)."""


def hyperparameters(config: Config, plan: TrainPlan) -> tuple[dict[str, Any], dict[str, Any]]:
    """(all, non-default) hyperparameters under sentence-transformers' trainer names, so a card
    reads like the ones its trainer writes; defaults are that trainer's."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    train, scaling = config.train, config.scaling
    values = {
        "per_device_train_batch_size": train.per_device_batch_size,
        "per_device_eval_batch_size": config.eval.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "learning_rate": train.learning_rate,
        "weight_decay": train.weight_decay,
        "adam_beta1": train.adam_beta1,
        "adam_beta2": train.adam_beta2,
        "adam_epsilon": train.adam_epsilon,
        "max_grad_norm": train.max_grad_norm,
        "num_train_epochs": train.epochs,
        "lr_scheduler_type": train.lr_scheduler,
        "warmup_steps": plan.warmup_steps,
        "seed": train.seed,
        "fp16": train.precision == "fp16",
        "bf16": train.precision == "bf16",
        "eval_steps": plan.eval_every,
        "logging_steps": train.logging_steps,
        "max_length": plan.max_length,
        "optim": "adamw_torch_fused" if scaling.use_gpu else "adamw_torch",
        "group_by_length": config.data.group_by_length,
        # What only a Ray run has
        "num_workers": scaling.num_workers,
        "use_gpu": scaling.use_gpu,
        "global_batch_size": train.per_device_batch_size * scaling.num_workers * train.gradient_accumulation_steps,
    }
    defaults = {f.name: f.default for f in dataclasses.fields(CrossEncoderTrainingArguments)}
    non_default = {k: v for k, v in values.items() if k in defaults and defaults[k] != v and k != "optim"}
    return values, non_default


def training_logs(history: list[dict[str, Any]], headlines: list[str]) -> list[dict[str, Any]]:
    """sentence-transformers' training-log rows: Epoch, Step, Training Loss, each evaluation's
    headline metric (as the library logs a SequentialEvaluator's primary metrics)."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in history:
        if "loss" not in entry and not any(key in entry for key in headlines):
            continue  # a note of the step (skipped rows, the epoch's data wait), not a log row
        row = rows.setdefault(entry["step"], {"Epoch": round(entry.get("epoch", 0.0), 4), "Step": entry["step"]})
        if "loss" in entry:
            row["Training Loss"] = round(entry["loss"], 4)
        for key in headlines:
            if key in entry:
                row[key] = round(entry[key], 4)
    out = [rows[s] for s in sorted(rows)]
    for row in out:
        row.setdefault("Training Loss", "-")
    return out


def dataset_name(config: Config, source: PairSource, split: str = "train") -> str:
    """The name a split goes by in the card: ``data.name``, the source's own, or its folder."""
    if config.data.name:
        return config.data.name if split == "train" else f"{config.data.name} ({split})"
    if source.name:
        return source.name
    specs = config.data.train if split == "train" else config.data.eval
    hub_source = hub.parse(location(specs[0]), f"data.{split}") if specs else None
    if hub_source is not None:  # a Hugging Face dataset goes by its id
        return (
            hub_source.dataset.rstrip("/").rsplit("/", 1)[-1]
            if os.path.isdir(hub_source.dataset)
            else hub_source.dataset
        )
    first = source.files[0].rstrip("/")
    return first.rsplit("/", 2)[-2] if "/" in first else first


def fill_card_data(model: Any, record: RunRecord) -> None:
    """Fill ``model.model_card_data`` the way sentence-transformers' trainer does."""
    import datasets
    import numpy as np

    config, plan = record.config, record.plan
    card = model.model_card_data
    # A hub id, or the one a pkg: package ships; a local folder is no base-model link. Set as
    # given: the library's own set_base_model asks the hub, which an offline cluster cannot reach.
    card.base_model = base_model_id(config.model)
    if card.base_model and config.model.revision:
        card.base_model_revision = config.model.revision
    card.add_tags("rerank-ray")
    parts = record.train_sets or [
        TrainRecord(record.train_name, record.train_rows, config.train.loss, config.train.loss_kwargs, plan.train_rows)
    ]
    losses = [build_library_loss(model, part.loss, part.loss_kwargs) for part in parts]
    card.set_losses(losses)
    loss = losses[0]  # the evaluation datasets' table names a loss too: the first set's

    train_sample = datasets.Dataset.from_list(record.train_rows)
    card.train_datasets = []
    for part, part_loss in zip(parts, losses):  # a mixture: each set with its loss, as for a DatasetDict
        card.train_datasets += card.extract_dataset_metadata(
            dataset=datasets.Dataset.from_list(part.rows),
            dataset_metadata=[{"name": part.name}],
            loss=part_loss,
            dataset_type="train",
        )
        card.train_datasets[-1]["size"] = part.size  # the statistics come from the sample; the size is the whole set
    # The library tagged the size it saw, the sample's: the tag says the whole set's too.
    card.tags = [tag for tag in card.tags if not tag.startswith("dataset_size:")]
    card.add_tags(f"dataset_size:{plan.train_rows}")
    card.set_widget_examples(train_sample)

    card.eval_datasets = []
    for evaluation in record.evals:
        if not evaluation.rows:
            continue
        card.eval_datasets += card.extract_dataset_metadata(
            dataset=datasets.Dataset.from_list(evaluation.rows),
            dataset_metadata=[{"name": evaluation.name}],
            loss=loss,
            dataset_type="eval",
        )
        card.eval_datasets[-1]["size"] = evaluation.plan.rows
        own = evaluation.config.eval
        evaluator = build_evaluator(
            own.kind,
            np.asarray([r["label"] for r in evaluation.rows]),
            own.name,
            pairs=[[r["sentence_0"], r["sentence_1"]] for r in evaluation.rows],
            at_k=own.at_k,
        )
        evaluator.primary_metric = evaluation.config.headline_metric
        prefix = own.name + "_"
        card.set_evaluation_metrics(
            evaluator,
            {k: v for k, v in record.metrics.items() if k.startswith(prefix) and not k.endswith("_runtime")},
            step=record.step,
        )
    if card.eval_datasets:
        card.set_best_model_step(record.step)
    headlines = [e.config.headline_metric for e in record.evals]
    card.training_logs = training_logs(record.history, list(dict.fromkeys([*headlines, plan.headline_metric])))
    card.all_hyperparameters, card.non_default_hyperparameters = hyperparameters(config, plan)
    card.evaluation_duration = sum(
        e.get(f"{evaluation.plan.name}_runtime", 0.0) for e in record.history for evaluation in record.evals
    )
    card._training_start_time = time.time() - record.train_seconds - card.evaluation_duration


def candidates_line(record: RunRecord, evaluation: EvalRecord) -> str:
    """Where a retrieve-then-rerank evaluation's candidates came from, and the retriever's own
    figure beside the reranked one (empty with judged candidates)."""
    retrieval = Retrieval(**evaluation.plan.retrieval) if evaluation.plan.retrieval else None
    if retrieval is None:
        return ""
    name, at_k = evaluation.config.eval.name, evaluation.config.eval.at_k
    base = retrieval.base.get(f"{name}_base_ndcg@{at_k}")
    reranked = record.metrics.get(f"{name}_ndcg@{at_k}")
    figures = (
        f": nDCG@{at_k} {base:.4f} retrieved, {reranked:.4f} reranked"
        if base is not None and reranked is not None
        else ""
    )
    return (
        f"\n- Candidates: each query's top {retrieval.top_k} of the corpus by {retrieval.source}, unjudged "
        "documents non-relevant"
        + (
            f", plus {retrieval.added_positives:,} judged positives it missed"
            if retrieval.always_rerank_positives
            else ""
        )
        + (
            f"; {len(retrieval.queries_without_candidates):,} queries without any left out"
            if retrieval.queries_without_candidates
            else ""
        )
        + figures
    )


def mixture_line(record: RunRecord) -> str:
    """A mixture's training sets, each with its rows, loss and steps per epoch."""
    sets = "; ".join(
        f"`{part.name}` ({part.size:,} rows, `{part.loss}`"
        + (f" with `{part.loss_kwargs}`" if part.loss_kwargs else "")
        + f", {mix.used_steps:,} steps per epoch)"
        for part, mix in zip(record.train_sets, record.plan.mixture, strict=True)
    )
    return f"- Mixture ({record.config.data.sampling} sampling, one set per step on every worker): {sets}"


def evaluation_line(record: RunRecord, evaluation: EvalRecord) -> str:
    """One evaluation in the card's distributed-training section."""
    own, dropped = evaluation.config.eval, evaluation.dropped_queries
    named = f" `{own.name}`" if len(record.evals) > 1 else ""
    return (
        f"- Evaluation{named}: `{own.kind}` on {evaluation.plan.rows:,} pairs, every {record.plan.eval_every:,} "
        "steps, each worker scoring its shard"
        + (
            f"; {sum(dropped.values()):,} unrankable queries left out "
            f"({dropped['single_candidate']:,} with a single candidate, "
            f"{dropped['without_positive']:,} without a positive; eval.drop_unrankable)"
            if dropped
            else ""
        )
        + candidates_line(record, evaluation)
    )


def distributed_section(record: RunRecord, search: str | None = None, inputs: str | None = None) -> str:
    """What only a Ray run knows: workers, throughput, the checkpoint choice, the search;
    ``inputs``: how the model reads a pair (:func:`inputs_line`)."""
    config, plan = record.config, record.plan
    scaling = config.scaling
    kind = "GPU" if scaling.use_gpu else "CPU"
    pairs_per_second = record.pairs_seen / record.train_seconds if record.train_seconds else 0.0
    evaluation = "\n".join(evaluation_line(record, e) for e in record.evals) or "- Evaluation: none"
    lines = [
        DISTRIBUTED_HEADING,
        "",
        f"- Workers: {scaling.num_workers} x {kind} ("
        + ("FSDP2, each transformer block sharded" if scaling.strategy == "fsdp" else "DDP")
        + f", {'NCCL' if scaling.use_gpu else 'gloo'}), "
        f"{scaling.cpus_per_worker:g} CPU each"
        + (", 1 GPU each" if scaling.use_gpu else "")
        + ("; activation checkpointing" if config.train.gradient_checkpointing else ""),
        *([lora_line(config, record.trained_parameters)] if config.model.lora.r else []),
        (
            f"- Training data: {plan.train_rows:,} rows in {len(plan.mixture)} sets"
            if plan.mixture
            else f"- Training pairs: {plan.train_rows:,}"
            if plan.train_shape == "pairs"
            else f"- Training data: {plan.train_rows:,} {record.train_shape}, batched by query "
            f"({config.train.per_device_batch_size} queries per batch per worker"
            + (
                f", at most {config.data.max_docs_per_query} documents each, drawn per epoch"
                if config.data.max_docs_per_query
                else ""
            )
            + ")"
        )
        + f"; steps: {plan.total_steps:,} ({plan.steps_per_epoch:,} per epoch)",
        *([inputs] if inputs else []),
        mixture_line(record)
        if record.train_sets
        else f"- Loss: `{config.train.loss}`"
        + (f" with `{config.train.loss_kwargs}`" if config.train.loss_kwargs else ""),
        *(
            [
                f"- Early stopping: stopped at step {record.stopped_at[0]:,} (epoch {record.stopped_at[1]:.2f}), "
                f"`{plan.headline_metric}` having gained no more than {config.eval.early_stopping_min_delta:g} "
                f"in {config.eval.early_stopping_patience} evaluation(s)"
            ]
            if record.stopped_at
            else []
        ),
        f"- Throughput: {pairs_per_second:,.1f} {plan.unit}/s over {record.train_seconds:,.0f} s of training",
        evaluation,
        f"- Selected checkpoint: {config.run.export} by `{plan.headline_metric}` (step {record.step:,})"
        if plan.eval_rows
        else "- Selected checkpoint: last",
        f"- Precision: {config.train.precision}"
        + (" (fp32 on these CPU workers)" if config.train.precision == "fp16" and not scaling.use_gpu else "")
        + f"; seed: {config.train.seed}",
        "",
    ]
    if search:
        lines.append(search.strip() + "\n")
    return "\n".join(lines)


def add_ray_version(card_text: str) -> str:
    """The template's framework versions, with Ray after the libraries it lists."""
    import ray

    match = re.search(r"### Framework Versions\n(?:- .*\n)+", card_text)
    if match is None:
        return card_text
    return card_text[: match.end()] + f"- Ray: {ray.__version__}\n" + card_text[match.end() :]


def lora_line(config: Config, trained: tuple[int, int] | None) -> str:
    """What LoRA trained, and that the export holds the merged weights."""
    lora = config.model.lora
    targets = ", ".join(lora.target_modules) if lora.target_modules else "every linear layer but the head"
    counts = f": {trained[0]:,} of {trained[1]:,} parameters trained" if trained else ""
    return (
        f"- LoRA: rank {lora.r}, alpha {lora.alpha if lora.alpha is not None else 2 * lora.r:g}, dropout "
        f"{lora.dropout:g}, on {targets}{counts}; merged into the exported weights"
        + (" (the adapter alone in `adapter/`)" if lora.save_adapter else "")
    )


def inputs_line(model: Any, config: Config) -> str:
    """How the model reads a pair: an encoder's pair of texts, or a causal LM's chat with its
    yes/no score; the prompt, the lengths."""
    module = model[0]
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None
    if getattr(module, "transformer_task", None) == CAUSAL_TASK:
        head = model[-1]
        kind = (
            f"a causal-LM reranker (`{type(module.model).__name__}`): each (query, document) pair is rendered "
            "through its chat template as `query` and `document` messages, padded on the left, and scored by "
            f"`LogitScore` (the logit of token {head.true_token_id} minus that of token {head.false_token_id}: "
            '"yes" and "no")'
        )
    else:
        kind = f"a cross-encoder (`{type(module.model).__name__}`): each (query, document) pair is tokenized together"
    return (
        f"- Inputs: {kind}; at most {model.max_seq_length} tokens"
        + (
            f", queries cut to {config.model.max_query_length} tokens first (saved in `{INFERENCE_FILE}`: "
            "`rerank-ray eval` and `rank` apply it; cut queries yourself before `CrossEncoder.predict`)"
            if config.model.max_query_length
            else ""
        )
        + (f"; default prompt `{model.default_prompt_name}` ({prompt!r}), applied by `predict`" if prompt else "")
    )


def write_model_card(model: Any, record: RunRecord, folder: str, search: str | None = None) -> None:
    """Save ``model`` to ``folder`` with its filled card (``README.md``); ``search``: the markdown
    section of the search that selected this run. No secret reaches the card (:func:`redact`).
    With ``model.max_query_length``, :data:`INFERENCE_FILE` records it beside the model."""
    fill_card_data(model, record)
    model.save(folder)
    if record.config.model.max_query_length:
        Path(folder, INFERENCE_FILE).write_text(
            json.dumps({"max_query_length": record.config.model.max_query_length}), encoding="utf-8"
        )
    readme = Path(folder, "README.md")
    text = add_ray_version(readme.read_text(encoding="utf-8"))
    section = distributed_section(record, search, inputs=inputs_line(model, record.config))
    readme.write_text(redact(text.rstrip() + "\n\n" + section), encoding="utf-8")
