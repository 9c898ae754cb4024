"""Export a finished run: the chosen checkpoint as a CrossEncoder folder with its model card
(:mod:`rerank_ray.model_card`), ``metrics.json``, a training-curve PNG and TensorBoard event files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rerank_ray.config import Config
from rerank_ray.driver import TrainOutcome, run_name, storage_root
from rerank_ray.model_card import RunRecord, SearchSummary, dataset_name, write_model_card
from rerank_ray.plan import TrainPlan
from rerank_ray.worker import HISTORY_FILE, MODEL_DIR

CARD_SAMPLE_ROWS = 1000


def select_checkpoint(result: Any, config: Config, plan: TrainPlan) -> tuple[Any, dict[str, Any]]:
    """(checkpoint, its metrics): best by headline metric, or the last one."""
    if plan.eval_rows and config.run.export == "best" and result.best_checkpoints:
        scored = [(c, m) for c, m in result.best_checkpoints if plan.headline_metric in m]
        if scored:
            return max(scored, key=lambda cm: (cm[1][plan.headline_metric], cm[1].get("step", 0)))
    if result.checkpoint is None:
        raise RuntimeError("the run reported no checkpoint: nothing to export")
    latest = [m for c, m in (result.best_checkpoints or []) if c.path == result.checkpoint.path]
    return result.checkpoint, (latest[0] if latest else dict(result.metrics or {}))


def _download(checkpoint: Any, folder: str) -> str:
    checkpoint.to_directory(folder)
    return folder


def _sample_rows(source: Any, limit: int) -> list[dict[str, Any]]:
    rows = source.dataset.limit(limit).take(limit)
    return [{"sentence_0": r["sentence_0"], "sentence_1": r["sentence_1"], "label": r["label"]} for r in rows]


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


def _upload(local: str, target: str) -> None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(target)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local, path, destination_filesystem=fs)


def export_run(
    config: Config,
    plan: TrainPlan,
    result: Any,
    sources: dict[str, Any],
    search_summary: SearchSummary | None = None,
) -> TrainOutcome:
    """Write the chosen checkpoint, its card and its metrics to the output folder.

    ``search_summary``: for a model selected by a hyperparameter search, what the search tried;
    it goes into the card (a "Hyperparameter search (Ray Tune)" section) and ``metrics.json``.
    """
    from sentence_transformers import CrossEncoder

    name = run_name(config)
    run_dir = os.path.join(storage_root(config), name)
    output_dir = config.run.output_dir or os.path.join(run_dir, "model")
    checkpoint, metrics = select_checkpoint(result, config, plan)
    with tempfile.TemporaryDirectory(prefix="rerank-export-") as scratch:
        chosen = _download(checkpoint, os.path.join(scratch, "chosen"))
        latest = (
            chosen
            if checkpoint.path == result.checkpoint.path
            else _download(result.checkpoint, os.path.join(scratch, "latest"))
        )
        history = json.loads(Path(latest, HISTORY_FILE).read_text())
        final_report = dict(result.metrics or {})
        train_seconds = float(final_report.get("train_seconds", 0.0))
        pairs_seen = float(final_report.get("pairs_seen", 0.0))
        step = int(metrics.get("step", plan.total_steps))

        model = CrossEncoder(
            os.path.join(chosen, MODEL_DIR), trust_remote_code=config.model.trust_remote_code, device="cpu"
        )
        evaluating = bool(plan.eval_rows and sources.get("eval") is not None)
        record = RunRecord(
            config=config,
            plan=plan,
            history=history,
            metrics=metrics,
            step=step,
            train_seconds=train_seconds,
            pairs_seen=pairs_seen,
            train_rows=_sample_rows(sources["train"], CARD_SAMPLE_ROWS),
            train_name=dataset_name(config, sources["train"]),
            eval_rows=_sample_rows(sources["eval"], CARD_SAMPLE_ROWS) if evaluating else [],
            eval_name=dataset_name(config, sources["eval"], "eval") if evaluating else None,
        )
        local_out = output_dir if "://" not in output_dir else os.path.join(scratch, "out")
        if os.path.isdir(local_out):
            shutil.rmtree(local_out)  # a stale export must not mix with this one
        write_model_card(model, record, local_out, search_summary)

        headline = plan.headline_metric
        before = next((e for e in history if e["step"] == 0 and headline in e), None)
        summary = {
            "headline_metric": headline if plan.eval_rows else None,
            "selected_step": step,
            "selected_by": config.run.export if plan.eval_rows else "last",
            "final": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "before_training": {k: v for k, v in (before or {}).items() if k not in ("step", "epoch")} or None,
            "train": {
                "pairs": plan.train_rows,
                "eval_pairs": plan.eval_rows,
                "epochs": config.train.epochs,
                "steps": plan.total_steps,
                "workers": config.scaling.num_workers,
                "train_seconds": train_seconds,
                "pairs_per_second": pairs_seen / train_seconds if train_seconds else None,
            },
            "run_dir": run_dir,
            "history": history,
        }
        if search_summary is not None:
            summary["search"] = search_summary.to_dict()
        Path(local_out, "metrics.json").write_text(json.dumps(summary, indent=2))
        plot_curve(history, headline, Path(local_out, "training_curve.png"))
        write_tensorboard(history, Path(local_out, "tensorboard"))
        if local_out != output_dir:
            _upload(local_out, output_dir)
    return TrainOutcome(run_dir=run_dir, output_dir=output_dir, metrics=summary)
