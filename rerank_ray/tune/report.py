"""What a finished search leaves: the table of trials (printed and ``trials.csv``), ``search.png``,
``search_summary.json``, and the best trial's model exported with the search summary in its card.

The trials are read back from Tune's saved experiment (``ray.tune.ExperimentAnalysis``), so a
resumed search reports every trial, including those finished before the interruption.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_ray import storage
from rerank_ray.config import Config
from rerank_ray.errors import root_cause
from rerank_ray.run.driver import inspect_data, prepare_datasets
from rerank_ray.run.export import TrainOutcome, export_run
from rerank_ray.run.paths import storage_root
from rerank_ray.training.models import load_tokenizer
from rerank_ray.tune.space import Dimension, flatten_params, trial_config

#: Trial states in the table. "stopped early": the scheduler (ASHA) ended it before its last step.
COMPLETED, STOPPED, FAILED, UNFINISHED = "completed", "stopped early", "failed", "unfinished"
ERROR_CHARS = 300
#: Tune's experiment folder inside the search folder.
TUNE_DIR = "tune"
TRIALS_DIR = "trials"


@dataclass
class SearchPaths:
    root: str
    """``<storage_path>/<run.name>``: the search folder."""
    tune: str
    """Tune's experiment folder, what ``--resume`` restores."""
    trials: str
    """Storage path of the trials' Ray Train runs (one run per trial, named by trial id)."""
    output: str
    """Where the best trial's model is exported."""

    @classmethod
    def of(cls, config: Config) -> SearchPaths:
        # storage.join keeps a URI's query (its pyarrow options) at the end of every path.
        root = storage.join(storage_root(config), str(config.run.name))
        return cls(
            root=root,
            tune=storage.join(root, TUNE_DIR),
            trials=storage.join(root, TRIALS_DIR),
            output=config.run.output_dir or storage.join(root, "model"),
        )


@dataclass
class SearchOutcome:
    paths: SearchPaths
    rows: list[dict[str, Any]]
    """One per trial, as in ``trials.csv`` (plus each trial's metric history)."""
    best: dict[str, Any] | None
    """The row of the exported trial; None when no trial produced a checkpoint."""
    summary: dict[str, Any]
    """What ``search_summary.json`` holds."""
    interrupted: bool = False
    """Some trials did not finish (the search was stopped): nothing was exported."""


# --------------------------------------------------------------------------------------------
# Reading the trials back


def _error_text(trial: Any) -> str:
    """The failed trial's root cause in one line: ``ValueError: 'bogus' is not a valid ...``."""
    error = trial.get_pickled_error() or trial.get_error()
    if error is None:
        return ""
    root = root_cause(error)
    text = f"{type(root).__name__}: {root}" if root is not error else str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(root).__name__)[:ERROR_CHARS]


def _history(frame: Any, headline: str) -> list[tuple[int, float]]:
    """(step, headline) at every evaluation the trial reported, in order."""
    if frame is None or len(frame) == 0 or headline not in frame or "step" not in frame:
        return []
    points = frame[["step", headline]].dropna()
    return [(int(step), float(value)) for step, value in zip(points["step"], points[headline])]


def _selected(history: list[tuple[int, float]], export: str) -> tuple[int, float] | None:
    """The evaluation whose checkpoint the trial's export would take: best or last, after step 0
    (the evaluation before training has no checkpoint)."""
    trained = [point for point in history if point[0] > 0]
    if not trained:
        return None
    if export == "last":
        return trained[-1]
    return max(trained, key=lambda point: (point[1], point[0]))


def _status(trial: Any, steps: int | None, total: int | None) -> str:
    if trial.status == "ERROR":
        return FAILED
    if trial.status != "TERMINATED":
        return UNFINISHED
    if steps is not None and total is not None and steps < total:
        return STOPPED
    return COMPLETED


def collect_trials(tune_dir: str, config: Config, dims: list[Dimension]) -> list[dict[str, Any]]:
    """One row per trial: id, status, searched values, selected headline metric, steps, error."""
    from ray.tune import ExperimentAnalysis

    headline = config.headline_metric
    analysis = ExperimentAnalysis(tune_dir, default_metric=headline, default_mode="max")
    frames = analysis.trial_dataframes
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        last = trial.last_result or {}
        steps, total = last.get("step"), last.get("total_steps")
        history = _history(frames.get(trial.trial_id), headline)
        selected = _selected(history, config.run.export)
        values = flatten_params(trial.config)
        rows.append(
            {
                "trial_id": trial.trial_id,
                "status": _status(trial, steps, total),
                "params": {dim.key: values.get(dim.key) for dim in dims},
                "metric": selected[1] if selected else None,
                "metric_step": selected[0] if selected else None,
                "last_metric": history[-1][1] if history else None,
                "steps": int(steps) if steps is not None else None,
                "total_steps": int(total) if total is not None else None,
                "error": _error_text(trial) if trial.status == "ERROR" else "",
                "history": history,
            }
        )
    return rows


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the highest selected metric among those with a checkpoint to export."""
    candidates = [r for r in rows if r["metric"] is not None and r["status"] in (COMPLETED, STOPPED)]
    return max(candidates, key=lambda r: r["metric"]) if candidates else None


def trial_steps(rows: list[dict[str, Any]]) -> int:
    """Optimizer steps trained over all trials: the search's compute, in steps."""
    return sum(r["steps"] or 0 for r in rows)


# --------------------------------------------------------------------------------------------
# Table, CSV, plot


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def csv_columns(config: Config, dims: list[Dimension]) -> list[str]:
    headline = config.headline_metric
    return [
        "trial_id",
        "status",
        *(d.key for d in dims),
        headline,
        f"{headline}_step",
        f"last_{headline}",
        "steps",
        "total_steps",
        "error",
    ]


def csv_rows(rows: list[dict[str, Any]], config: Config, dims: list[Dimension]) -> list[list[Any]]:
    out = []
    for r in rows:
        out.append(
            [
                r["trial_id"],
                r["status"],
                *(r["params"][d.key] for d in dims),
                r["metric"],
                r["metric_step"],
                r["last_metric"],
                r["steps"],
                r["total_steps"],
                r["error"],
            ]
        )
    return out


def format_table(rows: list[dict[str, Any]], config: Config, dims: list[Dimension], best_id: str | None) -> str:
    """The table of trials as aligned text; the exported trial is marked with ``*``."""
    header = csv_columns(config, dims)
    body = [[_fmt(v) for v in row] for row in csv_rows(rows, config, dims)]
    for cells in body:
        cells[-1] = cells[-1][:60]
        if cells[0] == best_id:
            cells[0] += " *"
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(line.rstrip() for line in lines)


def write_csv(path: Path, rows: list[dict[str, Any]], config: Config, dims: list[Dimension]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(csv_columns(config, dims))
        writer.writerows(csv_rows(rows, config, dims))


def plot_search(path: Path, rows: list[dict[str, Any]], headline: str, best_id: str | None) -> None:
    """Left: the headline metric by step for each trial. Right: each trial's last metric against
    its learning rate (hollow: stopped early by the scheduler)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_lr) = plt.subplots(1, 2, figsize=(12, 4.5))
    # The evaluation before training (step 0) is the base model's, far below the trained values:
    # drawn, it would squeeze the differences between trials into a flat band. It goes in the title.
    before = [value for r in rows for step, value in r["history"] if step == 0]
    drawn = False
    for r in rows:
        trained = [(step, value) for step, value in r["history"] if step > 0]
        if trained:
            steps, values = zip(*trained)
            style = {"linewidth": 2.5} if r["trial_id"] == best_id else {"linewidth": 1, "alpha": 0.8}
            by_step.plot(steps, values, marker=".", label=r["trial_id"], **style)
            drawn = True
    by_step.set_xlabel("optimizer step")
    by_step.set_ylabel(headline)
    start = f" (before training: {before[0]:.4g})" if before else ""
    by_step.set_title(f"{headline} by step, per trial{start}")
    if len(rows) <= 12 and drawn:
        by_step.legend(fontsize=7)
    for status, marker in ((COMPLETED, "o"), (STOPPED, "o")):
        points = [
            (r["params"].get("train.learning_rate") or math.nan, r["last_metric"])
            for r in rows
            if r["status"] == status and r["last_metric"] is not None
        ]
        if points:
            x, y = zip(*points)
            face = "none" if status == STOPPED else "tab:blue"
            by_lr.scatter(x, y, marker=marker, facecolors=face, edgecolors="tab:blue", label=status)
    by_lr.set_xscale("log")
    by_lr.set_xlabel("train.learning_rate")
    by_lr.set_ylabel(f"last {headline}")
    by_lr.set_title("last metric against learning rate")
    by_lr.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Summary (model card section and JSON) and export


def search_summary(config: Config, dims: list[Dimension], rows: list[dict[str, Any]], best: dict | None) -> dict:
    settings = config.tune
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "name": config.run.name,
        "headline_metric": config.headline_metric,
        "mode": "max",
        "search": settings.search,
        "seed": settings.seed,
        "scheduler": settings.scheduler,
        "grace_period": settings.grace_period if settings.scheduler == "asha" else None,
        "reduction_factor": settings.reduction_factor if settings.scheduler == "asha" else None,
        "space": {d.key: {d.kind: list(d.values)} for d in dims},
        "num_trials": len(rows),
        "status_counts": counts,
        "trial_steps": trial_steps(rows),
        "workers_per_trial": config.scaling.num_workers,
        "best": None
        if best is None
        else {k: best[k] for k in ("trial_id", "params", "metric", "metric_step", "steps", "total_steps")},
        "trials": [{k: v for k, v in r.items() if k != "history"} for r in rows],
    }


def summary_markdown(summary: dict[str, Any], dims: list[Dimension]) -> str:
    """The model card section: how the search ran and where this model stands among its trials."""
    headline = summary["headline_metric"]
    best = summary["best"]
    scheduler = (
        f"ASHA on `{headline}` at every evaluation (grace period {summary['grace_period']:g} epoch(s), "
        f"reduction factor {summary['reduction_factor']:g})"
        if summary["scheduler"] == "asha"
        else "none (every trial trains to its end)"
    )
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["status_counts"].items()))
    lines = [
        "## Hyperparameter search (rerank-ray tune)",
        "",
        f"This model is the best of {summary['num_trials']} trials of a Ray Tune search maximising `{headline}`.",
        "",
        f"- Search: {summary['search']} (seed {summary['seed']}); scheduler: {scheduler}",
        f"- Trials: {counts}; {summary['workers_per_trial']} worker(s) each; "
        f"{summary['trial_steps']:,} optimizer steps over all trials",
        "- Space: " + "; ".join(d.describe() for d in dims),
    ]
    if best:
        values = ", ".join(f"`{k}`={_fmt(v)}" for k, v in best["params"].items())
        lines.append(
            f"- Selected: trial `{best['trial_id']}` ({values}): {headline} {best['metric']:.4f} at step {best['metric_step']}"
        )
    top = sorted((t for t in summary["trials"] if t["metric"] is not None), key=lambda t: -t["metric"])[:10]
    if top:
        keys = [d.key for d in dims]
        lines += ["", "| trial | status | " + " | ".join(keys) + f" | {headline} | steps |"]
        lines.append("|---" * (len(keys) + 4) + "|")
        for t in top:
            cells = [t["trial_id"], t["status"], *(_fmt(t["params"][k]) for k in keys), f"{t['metric']:.4f}"]
            cells.append(f"{t['steps']}/{t['total_steps']}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def export_best(config: Config, paths: SearchPaths, best: dict[str, Any], markdown: str) -> TrainOutcome:
    """Export the best trial's chosen checkpoint, exactly as ``rerank-ray train`` exports a run."""
    import ray.train

    trial = trial_config(config.to_dict(), best["params"], best["trial_id"], paths.trials)
    trial.run.output_dir = paths.output
    tokenizer = load_tokenizer(trial.model)
    _, plan, sources = prepare_datasets(trial, tokenizer, inspect_data(trial))
    result = ray.train.Result.from_path(storage.join(paths.trials, best["trial_id"]))
    return export_run(trial, plan, result, sources, search_summary=markdown)


def report_search(
    config: Config, dims: list[Dimension], paths: SearchPaths, rows: list[dict[str, Any]]
) -> SearchOutcome:
    """Print the table, write ``trials.csv``, ``search.png`` and ``search_summary.json`` into the
    search folder, and export the best trial's model."""
    unfinished = [r["trial_id"] for r in rows if r["status"] == UNFINISHED]
    # An interrupted search (Ctrl-C) exports nothing: its best may change when it is resumed.
    best = None if unfinished else pick_best(rows)
    summary = search_summary(config, dims, rows, best)
    headline = config.headline_metric
    print(format_table(rows, config, dims, best["trial_id"] if best else None), flush=True)
    remote = storage.is_uri(paths.root)
    with tempfile.TemporaryDirectory(prefix="rerank-search-") as scratch:
        folder = Path(scratch if remote else paths.root)
        folder.mkdir(parents=True, exist_ok=True)
        write_csv(folder / "trials.csv", rows, config, dims)
        plot_search(folder / "search.png", rows, headline, best["trial_id"] if best else None)
        if best is not None:
            outcome = export_best(config, paths, best, summary_markdown(summary, dims))
            summary["output_dir"] = outcome.output_dir
            print(
                f"[rerank-ray] best trial {best['trial_id']}: {headline} {best['metric']:.4f} "
                f"(step {best['metric_step']}); model exported to {outcome.output_dir}",
                flush=True,
            )
        elif unfinished:
            print(
                f"[rerank-ray] the search was interrupted with {len(unfinished)} trial(s) unfinished: continue it "
                f"with --resume (run.name={config.run.name})",
                flush=True,
            )
        else:
            print("[rerank-ray] no trial produced a checkpoint: nothing to export", flush=True)
        summary["search_dir"] = paths.root
        (folder / "search_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if remote:
            storage.upload_files(str(folder), paths.root)
    print(
        f"[rerank-ray] trials table: {storage.join(paths.root, 'trials.csv')}; "
        f"plot: {storage.join(paths.root, 'search.png')}",
        flush=True,
    )
    return SearchOutcome(paths=paths, rows=rows, best=best, summary=summary, interrupted=bool(unfinished))
