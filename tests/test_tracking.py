"""Live tracking (``run.report_to``) with the real packages, offline: TensorBoard event files
readable while the run trains, MLflow's local store with the parameters, per-step metrics and the
model card, W&B's offline run folder; and the error that names the extra when a package is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import base_config
from test_console import ROOT, SCREEN_LINES

from rerank_ray.config import Config
from rerank_ray.errors import ConfigError
from rerank_ray.run.lock import LOCK_FILE
from rerank_ray.training.tracking import TRACKING_FILE, check_installed, tune_callbacks


def test_a_missing_tracker_package_names_its_extra(monkeypatch):
    config = Config.from_dict({"model": {"name_or_path": "m"}, "data": {"train": ["t.jsonl"]}})
    config.run.report_to = ["tensorboard", "wandb"]
    check_installed(config)  # both installed here
    monkeypatch.setitem(sys.modules, "wandb", None)  # as on a machine without it
    with pytest.raises(ConfigError, match=r"run.report_to names wandb, .* pip install 'rerank-ray\[wandb\]'"):
        check_installed(config)


def test_report_to_takes_transformers_names_and_a_search_gets_tunes_callbacks():
    config = Config.from_dict({"model": {"name_or_path": "m"}, "data": {"train": ["t.jsonl"]}})
    assert config.trackers() == ["tensorboard"]  # the default
    config.run.report_to = ["all"]
    assert config.trackers() == ["tensorboard", "mlflow", "wandb"]
    assert [type(c).__name__ for c in tune_callbacks(config)] == ["MLflowLoggerCallback", "WandbLoggerCallback"]
    with pytest.raises(ConfigError, match="unknown tracker"):
        Config.from_dict({"model": {"name_or_path": "m"}, "data": {"train": ["t"]}, "run": {"report_to": ["comet"]}})


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for events in folder.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            found += [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return sorted(found)


@pytest.mark.ray
def test_a_cli_run_reports_live_and_prints_only_its_own_lines(tiny_bert, pair_files, tmp_path):
    """One real ``rerank-ray train`` (its own embedded Ray) with all three trackers, offline:
    TensorBoard's events readable while it trains, MLflow's store and W&B's offline folder filled;
    its console (what tests/test_console.py is about) holds only rerank-ray's lines, W&B's
    banners included in what is hidden; and a second driver of the same run, started 0.3 s
    later (issue 17's reproduction: both used to train into one folder), stops at the run's lock
    (tests/test_lock.py). One run serves the three: each costs a Ray start and a training."""
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    client.create_experiment("rr-test", artifact_location=str(tmp_path / "artifacts"))
    raw = base_config(tiny_bert, pair_files["train"], pair_files["eval"], tmp_path / "runs")
    raw["run"].update(report_to=["all"], tracking_project="rr-test", name="live", lock_timeout_s=300)
    raw["train"]["epochs"] = 1
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RERANK_RAY_VERBOSE")}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    run_dir = tmp_path / "runs" / "live"

    command = [sys.executable, "-m", "rerank_ray.cli", "train", "--config", str(config)]
    drivers = []
    for delay in (0.0, 0.3):  # started together, as two people starting one run
        time.sleep(delay)
        drivers.append(
            subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    seen_mid_run: list[tuple[int, float]] = []
    while any(d.poll() is None for d in drivers) and not seen_mid_run:
        # Mid-run: some losses are in the event files while the last checkpoint is not written yet.
        if not (run_dir / "checkpoint-0000013").exists() and (run_dir / "tensorboard").is_dir():
            seen_mid_run = _scalars(run_dir / "tensorboard", "train/loss")
        time.sleep(0.2)
    outputs = [d.communicate(timeout=600) for d in drivers]
    # Exactly one trains (which one is a race of their start-ups); the other stops at the lock.
    codes = [d.returncode for d in drivers]
    assert sorted(codes) == [0, 2], [(code, out[-2000:], err[-2000:]) for code, (out, err) in zip(codes, outputs)]
    out, err = outputs[codes.index(0)]
    refused = outputs[codes.index(2)][1]
    assert "error: run 'live' is being trained by another rerank-ray process" in refused
    assert "Traceback" not in refused
    assert not (run_dir / LOCK_FILE).exists()  # released when the run ended
    out = out + err
    lines = out.splitlines()
    assert len(lines) <= SCREEN_LINES and all(line.startswith("[rerank-ray] ") for line in lines), out
    assert any(line.startswith("[rerank-ray] step 4/13 | epoch 0.31 | loss") for line in lines), out  # relayed
    assert any("--verbose" in line and "logs" in line for line in lines), out  # says where the rest went

    assert seen_mid_run and seen_mid_run[0][0] == 4, "no loss in the event files while the run was training"
    assert [step for step, _ in _scalars(run_dir / "tensorboard", "train/loss")] == [4, 8, 12, 13]
    assert [step for step, _ in _scalars(run_dir / "tensorboard", "eval/average_precision")] == [0, 10, 13]

    ids = json.loads((run_dir / TRACKING_FILE).read_text())
    run = client.get_run(ids["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "live"
    assert run.data.params["train.learning_rate"] == "0.003" and run.data.params["scaling.num_workers"] == "2"
    losses = client.get_metric_history(ids["mlflow_run_id"], "train/loss")
    assert sorted(m.step for m in losses) == [4, 8, 12, 13]
    evaluations = {m.step: m.value for m in client.get_metric_history(ids["mlflow_run_id"], "eval/average_precision")}
    final = json.loads((run_dir / "model" / "metrics.json").read_text())
    assert sorted(evaluations) == [0, 10, 13]
    assert evaluations[final["selected_step"]] == pytest.approx(final["final"]["eval_average_precision"])
    assert sorted(a.path for a in client.list_artifacts(ids["mlflow_run_id"])) == ["README.md", "metrics.json"]

    offline = list((tmp_path / "wandb").glob(f"offline-run-*-{ids['wandb_id']}"))
    assert offline, list((tmp_path / "wandb").iterdir())
    assert any((folder / f"run-{ids['wandb_id']}.wandb").stat().st_size > 0 for folder in offline)
