"""Export a finished run: the chosen checkpoint as a CrossEncoder folder with its model card,
``metrics.json``, a training-curve PNG and TensorBoard event files.

The model card is sentence-transformers' own (its template and its dataset statistics, loss,
evaluation and training-log sections), filled from what the run recorded; a short section with
what only a distributed run knows (workers, pairs/s, Ray version) is appended.

One process writes the export: the driver (on a cluster, the Ray job's entrypoint on the head
node), after ``trainer.fit()`` returns. It builds the whole folder in a local scratch directory and
publishes it with :func:`rerank_ray.storage.publish_dir` (a rename on local/NFS storage;
``metrics.json`` uploaded last on object storage). Workers only write checkpoints.

The checkpoint is chosen among the *complete* ones in the run folder (those whose completion
marker lists files that are all there, :mod:`rerank_ray.checkpointing`). The model card and
``metrics.json`` pass through :func:`rerank_ray.redaction.redact`, so no token or key that is set
in the environment is written into them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from rerank_ray import storage
from rerank_ray.checkpointing import HISTORY_FILE, MODEL_DIR
from rerank_ray.config import Config
from rerank_ray.driver import TrainOutcome, run_dir, run_name, storage_root
from rerank_ray.evaluation import build_evaluator
from rerank_ray.models import PACKAGE_PREFIX
from rerank_ray.plan import TrainPlan
from rerank_ray.redaction import redact, redact_obj

CARD_SAMPLE_ROWS = 1000


def select_checkpoint(config: Config, plan: TrainPlan) -> tuple[Any, Any]:
    """(chosen, latest) complete checkpoints: the best by headline metric, or the last one."""
    from rerank_ray import checkpointing

    complete, incomplete = checkpointing.scan(storage_root(config), run_name(config))
    if not complete:
        why = f" ({len(incomplete)} incomplete: {next(iter(incomplete.values()))})" if incomplete else ""
        raise RuntimeError(f"the run left no complete checkpoint in {storage_root(config)}: nothing to export{why}")
    latest = complete[-1]
    if plan.eval_rows and config.run.export == "best":
        best = checkpointing.best_checkpoint(complete, plan.headline_metric)
        if best is not None:
            return best, latest
    return latest, latest


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


def training_logs(history: list[dict[str, Any]], headline: str) -> list[dict[str, Any]]:
    """sentence-transformers' training-log rows: Epoch, Step, Training Loss, headline metric."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in history:
        row = rows.setdefault(entry["step"], {"Epoch": round(entry.get("epoch", 0.0), 4), "Step": entry["step"]})
        if "loss" in entry:
            row["Training Loss"] = round(entry["loss"], 4)
        if headline in entry:
            row[headline] = round(entry[headline], 4)
    out = [rows[s] for s in sorted(rows)]
    for row in out:
        row.setdefault("Training Loss", "-")
    return out


def _sample_rows(source: Any, limit: int) -> list[dict[str, Any]]:
    rows = source.dataset.limit(limit).take(limit)
    return [
        {"sentence_0": r["sentence_0"], "sentence_1": r["sentence_1"], "label": r["label"]}
        for r in rows
        if not r.get("skip")  # bad rows kept as placeholders with data.on_bad_row=skip
    ]


def dataset_name(config: Config, source: Any, split: str = "train") -> str:
    if config.data.name:
        return config.data.name if split == "train" else f"{config.data.name} ({split})"
    first = source.files[0].rstrip("/")
    return first.rsplit("/", 2)[-2] if "/" in first else first


def fill_model_card(
    model: Any,
    config: Config,
    plan: TrainPlan,
    sources: dict[str, Any],
    history: list[dict],
    metrics: dict[str, Any],
    step: int,
    train_seconds: float,
) -> None:
    import datasets
    import numpy as np

    from rerank_ray.losses import build_library_loss

    card = model.model_card_data
    model_id = config.model.name_or_path
    if not os.path.exists(model_id) and not model_id.startswith(PACKAGE_PREFIX):
        card.base_model = model_id  # a hub id; a local folder is no base-model link
    card.add_tags("rerank-ray")
    loss = build_library_loss(model, config.train.loss, config.train.loss_kwargs)
    card.set_losses([loss])

    train_rows = _sample_rows(sources["train"], CARD_SAMPLE_ROWS)
    train_sample = datasets.Dataset.from_list(train_rows)
    card.train_datasets = card.extract_dataset_metadata(
        dataset=train_sample,
        dataset_metadata=[{"name": dataset_name(config, sources["train"])}],
        loss=loss,
        dataset_type="train",
    )
    for meta in card.train_datasets:
        meta["size"] = plan.train_rows  # the statistics come from the sample; the size is the whole set
    card.set_widget_examples(train_sample)

    if plan.eval_rows and sources.get("eval") is not None:
        eval_rows = _sample_rows(sources["eval"], CARD_SAMPLE_ROWS)
        card.eval_datasets = card.extract_dataset_metadata(
            dataset=datasets.Dataset.from_list(eval_rows),
            dataset_metadata=card.eval_datasets,
            loss=loss,
            dataset_type="eval",
        )
        for meta in card.eval_datasets:
            meta["size"] = plan.eval_rows
        evaluator = build_evaluator(
            config.eval.kind,
            np.asarray([r["label"] for r in eval_rows]),
            config.eval.name,
            pairs=[[r["sentence_0"], r["sentence_1"]] for r in eval_rows],
        )
        evaluator.primary_metric = plan.headline_metric
        card.set_evaluation_metrics(
            evaluator,
            {k: v for k, v in metrics.items() if k.startswith(config.eval.name + "_") and not k.endswith("_runtime")},
            step=step,
        )
        card.set_best_model_step(step)
    card.training_logs = training_logs(history, plan.headline_metric)
    card.all_hyperparameters, card.non_default_hyperparameters = hyperparameters(config, plan)
    card.evaluation_duration = sum(e.get(f"{config.eval.name}_runtime", 0.0) for e in history)
    card._training_start_time = time.time() - train_seconds - card.evaluation_duration


def ray_section(config: Config, plan: TrainPlan, history: list[dict], train_seconds: float, pairs_seen: float) -> str:
    import ray
    import torch

    scaling = config.scaling
    kind = "GPU" if scaling.use_gpu else "CPU"
    pairs_per_second = pairs_seen / train_seconds if train_seconds else 0.0
    lines = [
        "## Distributed training (rerank-ray)",
        "",
        f"- Workers: {scaling.num_workers} x {kind} (DDP, {'NCCL' if scaling.use_gpu else 'gloo'}), "
        f"{scaling.cpus_per_worker:g} CPU each" + (", 1 GPU each" if scaling.use_gpu else ""),
        f"- Training pairs: {plan.train_rows:,}; steps: {plan.total_steps:,} ({plan.steps_per_epoch:,} per epoch)",
        f"- Throughput: {pairs_per_second:,.1f} pairs/s over {train_seconds:,.0f} s of training",
        f"- Selected checkpoint: {config.run.export} by `{plan.headline_metric}`"
        if plan.eval_rows
        else "- Selected checkpoint: last",
        f"- Ray: {ray.__version__}; PyTorch: {torch.__version__}; Python: {platform.python_version()}",
        "",
    ]
    return "\n".join(lines)


def plot_curve(history: list[dict], headline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_points = [(e["step"], e["loss"]) for e in history if "loss" in e]
    metric_points = [(e["step"], e[headline]) for e in history if headline in e]
    fig, ax_loss = plt.subplots(figsize=(7, 4))
    if loss_points:
        ax_loss.plot(*zip(*loss_points), color="tab:blue", label="training loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("training loss", color="tab:blue")
    if metric_points:
        ax_metric = ax_loss.twinx()
        ax_metric.plot(*zip(*metric_points), color="tab:orange", marker="o", label=headline)
        ax_metric.set_ylabel(headline, color="tab:orange")
    ax_loss.set_title("Training curve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_tensorboard(history: list[dict], folder: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for entry in history:
            for key, value in entry.items():
                if key in ("step", "epoch") or not isinstance(value, (int, float)):
                    continue
                tag = (
                    f"train/{key}" if key in ("loss", "learning_rate", "pairs_per_second") else key.replace("_", "/", 1)
                )
                writer.add_scalar(tag, value, entry["step"])
    finally:
        writer.close()


def skipped_rows(history: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Bad rows skipped (``data.on_bad_row: skip``), by split and reason: the training rows of the
    last complete epoch (every epoch reads the same rows) and the eval rows."""
    train = next((e["skipped_train_rows"] for e in reversed(history) if "skipped_train_rows" in e), {})
    evaluation = next((e["skipped_eval_rows"] for e in reversed(history) if "skipped_eval_rows" in e), {})
    return {"train": dict(train), "eval": dict(evaluation)}


def _is_resource_key(key: str) -> bool:
    return key.startswith(("peak_rss_mib_rank", "rss_anon_mib_rank", "rss_shmem_mib_rank", "first_step_")) or (
        key == "data_wait_seconds"
    )


def resource_summary(final_report: dict[str, Any], workers: int) -> dict[str, Any]:
    """Peak memory of the driver and of every worker, the step thread's wait for data, and when
    the first training step ended: from the workers' last report (see ``Worker._resource_metrics``)
    and this process (the driver, which exports after training, so its peak covers the run)."""
    from rerank_ray.resources import peak_rss_mib, process_start_unix

    first_step = final_report.get("first_step_unix")
    return {
        "driver_peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": [final_report.get(f"peak_rss_mib_rank{r}") for r in range(workers)],
        # At the last report, by kind: private memory, and shared memory touched (Ray's object store).
        "worker_rss_anon_mib": [final_report.get(f"rss_anon_mib_rank{r}") for r in range(workers)],
        "worker_rss_shmem_mib": [final_report.get(f"rss_shmem_mib_rank{r}") for r in range(workers)],
        "data_wait_seconds": final_report.get("data_wait_seconds"),
        "first_step_unix": first_step,
        "first_step_seconds_since_driver_start": first_step - process_start_unix() if first_step else None,
        "first_step_seconds_since_worker_start": final_report.get("first_step_seconds_since_worker_start"),
    }


def export_run(config: Config, plan: TrainPlan, result: Any, sources: dict[str, Any]) -> TrainOutcome:
    from sentence_transformers import CrossEncoder

    name = run_name(config)
    run_folder = run_dir(config, name)
    output_dir = storage.resolve(config.run.output_dir) if config.run.output_dir else storage.join(run_folder, "model")
    from rerank_ray import checkpointing

    checkpoint, last = select_checkpoint(config, plan)
    metrics = checkpoint.metrics
    with tempfile.TemporaryDirectory(prefix="rerank-export-") as scratch:
        chosen = checkpointing.download(checkpoint, os.path.join(scratch, "chosen"))
        latest = (
            chosen if checkpoint.name == last.name else checkpointing.download(last, os.path.join(scratch, "latest"))
        )
        history = json.loads(Path(latest, HISTORY_FILE).read_text())
        final_report = last.metrics
        train_seconds = float(final_report.get("train_seconds", 0.0))
        pairs_seen = float(final_report.get("pairs_seen", 0.0))
        step = int(metrics.get("step", checkpoint.step))

        model = CrossEncoder(
            os.path.join(chosen, MODEL_DIR), trust_remote_code=config.model.trust_remote_code, device="cpu"
        )
        fill_model_card(model, config, plan, sources, history, metrics, step, train_seconds)
        # Written whole in a scratch folder, then published in one step (storage.publish_dir):
        # the driver is the only process that writes the export.
        local_out = os.path.join(scratch, "out")
        model.save(local_out)
        readme = Path(local_out, "README.md")
        text = readme.read_text(encoding="utf-8")
        readme.write_text(
            redact(text.rstrip() + "\n\n" + ray_section(config, plan, history, train_seconds, pairs_seen)),
            encoding="utf-8",
        )

        headline = plan.headline_metric
        before = next((e for e in history if e["step"] == 0 and headline in e), None)
        skipped = skipped_rows(history)
        summary = {
            "headline_metric": headline if plan.eval_rows else None,
            "selected_step": step,
            "selected_by": config.run.export if plan.eval_rows else "last",
            "final": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not _is_resource_key(k)},
            "before_training": {k: v for k, v in (before or {}).items() if k not in ("step", "epoch")} or None,
            "skipped_rows": skipped,
            "train": {
                "pairs": plan.train_rows - sum(skipped["train"].values()),
                "eval_pairs": plan.eval_rows - sum(skipped["eval"].values()),
                "epochs": config.train.epochs,
                "steps": plan.total_steps,
                "workers": config.scaling.num_workers,
                "train_seconds": train_seconds,
                "pairs_per_second": pairs_seen / train_seconds if train_seconds else None,
            },
            "resources": resource_summary(final_report, config.scaling.num_workers),
            "run_dir": redact(run_folder),
            "history": history,
        }
        summary = redact_obj(summary)
        plot_curve(history, headline, Path(local_out, "training_curve.png"))
        write_tensorboard(history, Path(local_out, "tensorboard"))
        # metrics.json is the marker of a complete export: publish_dir writes it last.
        Path(local_out, storage.COMPLETE_MARKER).write_text(json.dumps(summary, indent=2))
        storage.publish_dir(local_out, output_dir)
    return TrainOutcome(run_dir=run_folder, output_dir=output_dir, metrics=summary)
