"""Export a finished run: the chosen checkpoint as a CrossEncoder folder with its model card,
``metrics.json``, a training-curve PNG and TensorBoard event files.

The model card is sentence-transformers' own, filled from what the run recorded, plus what only a
distributed run knows (:mod:`rerank_ray.run.model_card`).

One process writes the export: the driver (on a cluster, the Ray job's entrypoint on the head
node), after ``trainer.fit()`` returns. It builds the whole folder in a local scratch directory and
publishes it with :func:`rerank_ray.storage.publish_dir` (a rename on local/NFS storage;
``metrics.json`` uploaded last on object storage). Workers only write checkpoints.

The checkpoint is chosen among the *complete* ones in the run folder (those whose completion
marker lists files that are all there, :mod:`rerank_ray.training.checkpointing`). The model card and
``metrics.json`` pass through :func:`rerank_ray.redaction.redact`, so no token or key that is set
in the environment is written into them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rerank_ray import storage
from rerank_ray.config import Config
from rerank_ray.data.beir import Retrieval
from rerank_ray.data.stream import PairSource
from rerank_ray.losses import integer_labels
from rerank_ray.redaction import redact, redact_obj
from rerank_ray.resources import peak_rss_mib, process_start_unix
from rerank_ray.run.model_card import EvalRecord, RunRecord, TrainRecord, dataset_name, write_model_card
from rerank_ray.run.paths import run_dir, run_name, storage_root
from rerank_ray.training import adapters, checkpointing
from rerank_ray.training.checkpointing import CheckpointInfo
from rerank_ray.training.plan import TrainPlan
from rerank_ray.training.strategy import exported_model
from rerank_ray.training.tracking import TrackingRun, finish, metric_tag

CARD_SAMPLE_ROWS = 1000


@dataclass
class TrainOutcome:
    run_dir: str
    output_dir: str
    metrics: dict[str, Any]
    """What metrics.json holds."""


def select_checkpoint(config: Config, plan: TrainPlan) -> tuple[CheckpointInfo, CheckpointInfo]:
    """(chosen, latest) complete checkpoints: the best by headline metric, or the last one."""
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


def card_label(label: float, class_ids: bool) -> int | float:
    """A label as the card shows it, as the file wrote it: class ids as integers (the row checks
    pass every label on as a float; the card's label statistics must read 0, 1, 2, not a float
    range), scores by their shortest float32 digits (0.2, not 0.20000000298023224: the stream
    holds float32)."""
    return int(label) if class_ids else float(str(np.float32(label)))


def _sample_rows(source: PairSource, limit: int, class_ids: bool) -> list[dict[str, Any]]:
    """The first rows, as the card shows them, in their shape's canonical columns (labels:
    :func:`card_label`)."""
    rows = [r for r in source.dataset.limit(limit).take(limit) if not r.get("skip")]  # skip: placeholders
    if source.shape.name == "list":
        return [
            {
                "query": r["query"],
                "documents": list(r["documents"]),
                "labels": [card_label(x, False) for x in r["labels"]],
            }
            for r in rows
        ]
    if source.shape.name == "n-tuple":
        return [_tuple_row(r, source.shape.text_columns, source.shape.has_label) for r in rows]
    return [
        {
            "sentence_0": r["sentence_0"],
            "sentence_1": r["sentence_1"],
            "label": card_label(r["label"], class_ids),
        }
        for r in rows
    ]


def _tuple_row(row: dict[str, Any], columns: tuple[str, ...], has_label: bool) -> dict[str, Any]:
    """An n-tuple as its file held it: the query, its positive and negatives (and teacher scores)."""
    out: dict[str, Any] = {"query": row["query"]}
    out.update({name: doc for name, doc in zip(columns[1:], row["documents"])})
    if has_label:
        out["label"] = [card_label(x, False) for x in row["labels"]]
    return out


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
                writer.add_scalar(metric_tag(key), value, entry["step"])
    finally:
        writer.close()


def train_records(
    config: Config, plan: TrainPlan, sources: dict[str, PairSource | None], limit: int
) -> list[TrainRecord]:
    """A mixture's training sets for the card: each one's sample, loss and size (none without a mixture)."""
    records = []
    for train_set, part in zip(config.train_sets(), plan.mixture, strict=True):
        source = sources[part.dataset]
        assert source is not None
        rows = _sample_rows(source, limit, integer_labels(train_set.loss))
        records.append(TrainRecord(train_set.name, rows, train_set.loss, train_set.loss_kwargs, part.rows))
    return records


def eval_records(
    config: Config, plan: TrainPlan, sources: dict[str, PairSource | None], class_ids: bool
) -> list[EvalRecord]:
    """Each evaluation's part of the card: a sample of its pairs, its name, its left-out queries."""
    records = []
    for eval_set, eval_plan in zip(config.eval_sets(), plan.evals, strict=True):
        view = config.for_eval_set(eval_set)
        source = sources[eval_plan.dataset]
        assert source is not None
        rows = _sample_rows(source, CARD_SAMPLE_ROWS, class_ids)
        # An entry of eval.sets goes by its name; the single evaluation of a run, by its data's.
        name = eval_set.name if eval_set.key != "eval" else dataset_name(view, source, "eval")
        records.append(EvalRecord(view, eval_plan, rows, name, source.dropped_queries))
    return records


def eval_summary(evals: list[EvalRecord]) -> dict[str, Any]:
    """metrics.json's eval keys: a single evaluation's left-out queries and candidates as before;
    several evaluations', by name."""
    per_set = {
        e.plan.name: {
            "pairs": e.plan.rows,
            "queries_left_out": dict(e.dropped_queries),
            "candidates": Retrieval(**e.plan.retrieval).summary() if e.plan.retrieval else None,
        }
        for e in evals
    }
    if len(evals) > 1:
        return {"evaluations": per_set}
    only = next(iter(per_set.values()), {"queries_left_out": {}, "candidates": None})
    return {"eval_queries_left_out": only["queries_left_out"], "eval_candidates": only["candidates"]}


def skipped_rows(history: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Bad rows skipped (``data.on_bad_row: skip``), by split and reason: the training rows of the
    last complete epoch (every epoch reads the same rows) and the eval rows."""
    train = next((e["skipped_train_rows"] for e in reversed(history) if "skipped_train_rows" in e), {})
    evaluation = next((e["skipped_eval_rows"] for e in reversed(history) if "skipped_eval_rows" in e), {})
    return {"train": dict(train), "eval": dict(evaluation)}


def _is_resource_key(key: str) -> bool:
    return key.startswith(
        (
            "peak_rss_mib_rank",
            "rss_anon_mib_rank",
            "rss_shmem_mib_rank",
            "peak_cuda_allocated_mib_rank",
            "peak_cuda_reserved_mib_rank",
            "first_step_",
        )
    ) or (key == "data_wait_seconds")


def resource_summary(final_report: dict[str, Any], workers: int) -> dict[str, Any]:
    """Peak memory of the driver and of every worker, the step thread's wait for data, and when
    the first training step ended: from the workers' last report (see ``Worker._resource_metrics``)
    and this process (the driver, which exports after training, so its peak covers the run)."""
    first_step = final_report.get("first_step_unix")
    return {
        "driver_peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": [final_report.get(f"peak_rss_mib_rank{r}") for r in range(workers)],
        # At the last report, by kind: private memory, and shared memory touched (Ray's object store).
        "worker_rss_anon_mib": [final_report.get(f"rss_anon_mib_rank{r}") for r in range(workers)],
        "worker_rss_shmem_mib": [final_report.get(f"rss_shmem_mib_rank{r}") for r in range(workers)],
        # On CUDA workers (None elsewhere): torch.cuda.max_memory_allocated / max_memory_reserved.
        "worker_peak_cuda_allocated_mib": [
            final_report.get(f"peak_cuda_allocated_mib_rank{r}") for r in range(workers)
        ],
        "worker_peak_cuda_reserved_mib": [final_report.get(f"peak_cuda_reserved_mib_rank{r}") for r in range(workers)],
        "data_wait_seconds": final_report.get("data_wait_seconds"),
        "first_step_unix": first_step,
        "first_step_seconds_since_driver_start": first_step - process_start_unix() if first_step else None,
        "first_step_seconds_since_worker_start": final_report.get("first_step_seconds_since_worker_start"),
    }


def export_run(
    config: Config,
    plan: TrainPlan,
    result: Any,
    sources: dict[str, PairSource | None],
    search_summary: str | None = None,
    tracking: TrackingRun | None = None,
) -> TrainOutcome:
    """``search_summary``: a markdown section appended to the model card (``rerank-ray tune``
    passes the summary of the search that picked this run); ``tracking``: the trackers' runs, which
    get the card and metrics.json as artifacts and are closed."""

    name = run_name(config)
    run_folder = run_dir(config, name)
    output_dir = storage.resolve(config.run.output_dir) if config.run.output_dir else storage.join(run_folder, "model")
    checkpoint, last = select_checkpoint(config, plan)
    metrics = checkpoint.metrics
    with tempfile.TemporaryDirectory(prefix="rerank-export-") as scratch:
        chosen = checkpointing.download(checkpoint, os.path.join(scratch, "chosen"))
        latest = (
            chosen if checkpoint.name == last.name else checkpointing.download(last, os.path.join(scratch, "latest"))
        )
        history = checkpointing.read_history(latest)
        final_report = last.metrics
        train_seconds = float(final_report.get("train_seconds", 0.0))
        pairs_seen = float(final_report.get("pairs_seen", 0.0))
        step = int(metrics.get("step", checkpoint.step))
        stopped_at = (
            (int(final_report["step"]), float(final_report["epoch"])) if final_report.get("stopped_early") else None
        )

        # One plain CrossEncoder, whatever the checkpoint holds (the whole model, LoRA adapters,
        # FSDP shards): rerank_ray.training.strategy.
        model = exported_model(chosen, config, plan.max_length)
        train_source = sources["train"]
        assert train_source is not None
        class_ids = integer_labels(config.train.loss)
        train_sets = train_records(config, plan, sources, CARD_SAMPLE_ROWS)
        record = RunRecord(
            config=config,
            plan=plan,
            history=history,
            metrics=metrics,
            step=step,
            train_seconds=train_seconds,
            pairs_seen=pairs_seen,
            # A mixture's first set is sampled once, with its own labels.
            train_rows=train_sets[0].rows if train_sets else _sample_rows(train_source, CARD_SAMPLE_ROWS, class_ids),
            train_name=dataset_name(config, train_source),
            evals=eval_records(config, plan, sources, class_ids),
            stopped_at=stopped_at,
            train_shape=train_source.shape.describe(),
            train_sets=train_sets,
            trained_parameters=(adapters.trainable_parameters(model), sum(p.numel() for p in model.parameters()))
            if config.model.lora.r
            else None,
        )
        # Written whole in a scratch folder, then published in one step (storage.publish_dir):
        # the driver is the only process that writes the export.
        local_out = os.path.join(scratch, "out")
        if config.model.lora.r:
            if config.model.lora.save_adapter:  # the adapter alone, before it is merged
                model.save(os.path.join(scratch, "adapter"))
            adapters.merge(model)  # the export loads without peft
        write_model_card(model, record, local_out, search_summary)
        if config.model.lora.r and config.model.lora.save_adapter:
            shutil.move(os.path.join(scratch, "adapter"), os.path.join(local_out, "adapter"))

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
            **eval_summary(record.evals),
            "early_stopping": (
                {
                    "stopped_at_step": stopped_at[0],
                    "stopped_at_epoch": stopped_at[1],
                    "patience": config.eval.early_stopping_patience,
                    "min_delta": config.eval.early_stopping_min_delta,
                }
                if stopped_at
                else None
            ),
            "train": {
                "pairs": plan.train_rows - sum(skipped["train"].values()),
                "eval_pairs": plan.eval_rows - sum(skipped["eval"].values()),
                "epochs": config.train.epochs,
                "steps": plan.total_steps,
                "workers": config.scaling.num_workers,
                "train_seconds": train_seconds,
                "pairs_per_second": pairs_seen / train_seconds if train_seconds else None,
            },
            "resources": {
                **resource_summary(final_report, config.scaling.num_workers),
                # Mean over ranks, per epoch: an epoch boundary that stalls shows as a larger figure.
                "data_wait_seconds_per_epoch": [e["data_wait_s"] for e in history if "data_wait_s" in e],
            },
            "run_dir": redact(run_folder),
            "history": history,
        }
        summary = redact_obj(summary)
        plot_curve(history, headline, Path(local_out, "training_curve.png"))
        write_tensorboard(history, Path(local_out, "tensorboard"))
        # metrics.json is the marker of a complete export: publish_dir writes it last.
        Path(local_out, storage.COMPLETE_MARKER).write_text(json.dumps(summary, indent=2))
        storage.publish_dir(local_out, output_dir)
        finish(tracking, local_out, summary["final"])
    return TrainOutcome(run_dir=run_folder, output_dir=output_dir, metrics=summary)
