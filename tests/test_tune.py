"""Hyperparameter search, the real thing: Ray Tune trials, each a 2-worker Ray Train run of the
real loop on a tiny BERT, on CPU."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import base_config

from rerank_ray.config import Config
from rerank_ray.errors import ConfigError
from rerank_ray.tune.report import COMPLETED, FAILED, STOPPED

pytestmark = pytest.mark.ray

WORKTREE = Path(__file__).parents[1]


def search_config(tiny_bert, pair_files, storage: Path, name: str, tune: dict, **sections) -> dict:
    raw = base_config(tiny_bert, pair_files["train"], pair_files["eval"], storage, **sections)
    raw["run"].update(storage_path=str(storage), name=name)
    raw["tune"] = tune
    return raw


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_four_trial_search_records_failures_and_exports_the_best(
    ray_local, tiny_bert, pair_files, tmp_path, monkeypatch
):
    """A grid of 4 trials, 2 at a time, each on 2 workers; the 2 trials whose label scale puts the
    labels outside [0, 1] fail (the trial's data checks refuse the rows), are recorded with their
    error, and the search goes on. Each trial is logged to MLflow (run.report_to)."""
    from mlflow.tracking import MlflowClient
    from sentence_transformers import CrossEncoder

    from rerank_ray.tune.search import run_search

    raw = search_config(
        tiny_bert,
        pair_files,
        tmp_path / "runs",
        "grid4",
        {
            "search": "grid",
            "scheduler": "none",
            "max_concurrent_trials": 2,
            # A label scale of 3 passes every check of the config (nothing there knows the labels)
            # and fails in each such trial on its data: a real failure of a bad value.
            "space": {
                "train.learning_rate": {"choice": [2e-3, 6e-3]},
                "data.label_scale": {"choice": [1.0, 3.0]},
            },
        },
        scaling={"num_workers": 2, "cpus_per_worker": 0.5},
        run={"report_to": ["mlflow"], "tracking_project": "grid4-search"},
    )
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    client = MlflowClient(tracking_uri)
    client.create_experiment("grid4-search", artifact_location=str(tmp_path / "artifacts"))
    outcome = run_search(Config.from_dict(raw))
    headline = "eval_average_precision"

    rows = {r["trial_id"]: r for r in outcome.rows}
    assert len(rows) == 4
    by_status = {s: [r for r in rows.values() if r["status"] == s] for s in (COMPLETED, FAILED)}
    assert len(by_status[COMPLETED]) == 2 and len(by_status[FAILED]) == 2
    for row in by_status[FAILED]:
        assert row["params"]["data.label_scale"] == 3.0
        assert "DataError" in row["error"] and "is outside what the label must be" in row["error"]
        assert row["metric"] is None and row["steps"] is None
    # Each completed trial ran the same 2-worker training as rerank-ray train: 203 pairs over 2
    # workers in batches of 8 is 13 steps per epoch (1 worker would take 26), 2 epochs.
    for row in by_status[COMPLETED]:
        assert row["params"]["data.label_scale"] == 1.0
        assert row["steps"] == row["total_steps"] == 26
        assert row["metric"] > 0.9  # it learned the task
        assert row["history"][0] == (0, pytest.approx(row["history"][0][1]))  # evaluated before training
        assert [step for step, _ in row["history"]] == [0, 10, 20, 26]  # every evaluation reached Tune
    best = max(by_status[COMPLETED], key=lambda r: r["metric"])
    assert outcome.best["trial_id"] == best["trial_id"]
    # Ray Tune's MLflow callback: a run per trial, its values as parameters, its reports as metrics.
    logged = client.search_runs([client.get_experiment_by_name("grid4-search").experiment_id])
    assert len(logged) == 4 and {r.data.tags["rerank_ray.search"] for r in logged} == {"grid4"}
    finished = [r for r in logged if r.info.status == "FINISHED"]
    assert len(finished) == 2 and all(headline in r.data.metrics for r in finished)
    scales = {value for r in finished for key, value in r.data.params.items() if key.endswith("label_scale")}
    assert scales == {"1.0"}, [r.data.params for r in finished]

    root = Path(outcome.paths.root)
    table = read_csv(root / "trials.csv")
    assert [r["trial_id"] for r in table] == sorted(rows)
    assert {"status", "train.learning_rate", "data.label_scale", headline, "steps", "error"} <= set(table[0])
    assert sorted(r["status"] for r in table) == [COMPLETED, COMPLETED, FAILED, FAILED]
    assert all("is outside what the label must be" in r["error"] for r in table if r["status"] == FAILED)
    assert (root / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((root / "search_summary.json").read_text())
    assert summary["best"]["trial_id"] == best["trial_id"]
    assert summary["status_counts"] == {COMPLETED: 2, FAILED: 2}
    assert summary["trial_steps"] == 52

    # The best trial's model is exported as a CrossEncoder folder that loads, scores as reported,
    # and carries the search summary in its card.
    out = Path(outcome.paths.output)
    assert out == root / "model"
    model = CrossEncoder(str(out))
    assert model.predict([("red", "blue car")]).shape == (1,)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"][headline] == pytest.approx(best["metric"], abs=1e-9)
    assert metrics["selected_step"] == best["metric_step"]
    card = (out / "README.md").read_text()
    assert "## Hyperparameter search (rerank-ray tune)" in card
    assert f"trial `{best['trial_id']}`" in card and "2 completed, 2 failed" in card

    # Running the same search again is refused unless it is resumed: nothing is overwritten.
    with pytest.raises(ConfigError, match="already exists .* pass --resume"):
        run_search(Config.from_dict(raw))


@pytest.mark.slow
def test_asha_stops_trailing_trials_and_frees_their_workers(ray_local, tiny_bert, pair_files, tmp_path):
    """One learning rate that learns, then two that cannot (1e-7): at the first rung (1 epoch)
    both trail the first trial's metric, and ASHA stops them there. The third trial can only start
    once the second one's workers are released."""
    from rerank_ray.tune.search import run_search

    raw = search_config(
        tiny_bert,
        pair_files,
        tmp_path / "runs",
        "asha",
        {
            "search": "grid",
            "scheduler": "asha",
            "grace_period": 1,
            "reduction_factor": 2,
            "max_concurrent_trials": 1,
            "space": {"train.learning_rate": {"choice": [5e-3, 1e-7, 1e-7]}},
        },
        train={"epochs": 3},
        eval={"steps": 0},  # evaluate at the end of each epoch: rungs fall on evaluations
    )
    outcome = run_search(Config.from_dict(raw))
    good, *slow = sorted(outcome.rows, key=lambda r: r["trial_id"])
    assert good["status"] == COMPLETED and good["steps"] == good["total_steps"] == 39
    for row in slow:
        assert row["status"] == STOPPED, row
        assert row["steps"] == 13 and row["total_steps"] == 39  # stopped at the end of epoch 1 of 3
        assert row["last_metric"] < good["metric"]
    assert outcome.best["trial_id"] == good["trial_id"]
    assert outcome.summary["trial_steps"] == 39 + 13 + 13


def _saved_trials(tune_dir: Path) -> dict[str, str]:
    """Trial id -> status in Tune's last saved experiment state (what a restore would see)."""
    from ray.tune import ExperimentAnalysis

    try:
        return {t.trial_id: t.status for t in ExperimentAnalysis(str(tune_dir)).trials}
    except Exception:  # noqa: BLE001 - not written yet, or being written
        return {}


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether Ray Train has registered a checkpoint of this run (a checkpoint folder appears
    before it is registered; only a registered one is restored)."""
    import ray.train

    try:
        return ray.train.Result.from_path(str(run_dir)).checkpoint is not None
    except (RuntimeError, ValueError):  # no run snapshot yet, or one being written
        return False


def _train_runs_of_this_job() -> int:
    """Ray Train runs (controller actors, dead or alive) this test process has started."""
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    actors = list_actors(
        address=context.gcs_address,  # not "the" local Ray: other Rays may run on this host
        filters=[("class_name", "=", "TrainController"), ("job_id", "=", context.get_job_id())],
        limit=10_000,
        raise_on_missing_output=False,
    )
    return len(actors)


@pytest.mark.slow
def test_killed_search_resumes_only_its_unfinished_trials(ray_local, tiny_bert, pair_files, tmp_path):
    """A search of 3 trials (1, 12 and 1 epochs) runs in a driver process of its own, which is
    killed (SIGKILL) once the first trial has finished and the second has a checkpoint. The search
    resumed with --resume leaves the finished trial alone, continues the second from its
    checkpoint, runs the third, and exports the best."""
    import ray

    from rerank_ray.cli import main

    storage = tmp_path / "runs"
    raw = search_config(
        tiny_bert,
        pair_files,
        storage,
        "killed",
        {
            "search": "grid",
            "scheduler": "none",
            "max_concurrent_trials": 1,
            "space": {"train.epochs": {"choice": [1, 12, 1]}},
        },
        data={"id_column": "pair_id"},
        eval={"steps": 0},
        run={"audit": True},  # each rank writes the steps it trained: what resumed, what restarted
    )
    config_path = tmp_path / "search.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    search_dir = storage / "killed"
    log = (tmp_path / "driver.log").open("w")
    # The driver joins this test's Ray, as a driver joins a cluster; killing it ends its job, and
    # Ray ends the job's trials with it.
    driver = subprocess.Popen(
        [sys.executable, "-m", "rerank_ray.cli", "tune", "--config", str(config_path)]
        + [f"run.ray_address={ray.get_runtime_context().gcs_address}"],
        cwd=WORKTREE,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900
        first = second = None
        while time.monotonic() < deadline:
            assert driver.poll() is None, f"the search ended before it could be killed: {tmp_path / 'driver.log'}"
            saved = _saved_trials(search_dir / "tune")
            ids = sorted(saved)
            if len(ids) >= 2 and saved[ids[0]] == "TERMINATED":
                first, second = ids[0], ids[1]
                if _has_checkpoint(search_dir / "trials" / second):
                    break
            time.sleep(1)
        else:
            pytest.fail("the first trial did not finish, or the second reach a checkpoint, in 15 minutes")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()

    first_audit = {p.name: p.read_bytes() for p in (search_dir / "trials" / first / "audit").glob("*.jsonl")}
    assert len(first_audit) == 2
    runs_before = _train_runs_of_this_job()
    assert main(["tune", "--config", str(config_path), "--resume"]) == 0

    from rerank_ray.tune.report import collect_trials
    from rerank_ray.tune.space import parse_space

    config = Config.from_dict(raw)
    rows = {
        r["trial_id"]: r
        for r in collect_trials(str(search_dir / "tune"), config, parse_space(config.tune.space, "grid"))
    }
    assert len(rows) == 3 and all(r["status"] == COMPLETED for r in rows.values()), rows
    assert rows[second]["steps"] == rows[second]["total_steps"] == 12 * 13
    # The finished trial was not trained again: its audit files are byte for byte the same.
    assert {p.name: p.read_bytes() for p in (search_dir / "trials" / first / "audit").glob("*.jsonl")} == first_audit
    # The interrupted one went on from its checkpoint: its first steps were trained once only.
    for path in (search_dir / "trials" / second / "audit").glob("rank*.jsonl"):
        steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if '"kind": "pairs"' in line]
        assert steps.count(1) == 1 and max(steps) == 12 * 13, path
    # Exactly the two unfinished trials ran after the restart (the interrupted and the pending one).
    assert _train_runs_of_this_job() - runs_before == 2
    assert (search_dir / "model" / "README.md").is_file()
