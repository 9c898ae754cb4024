"""Runs that survive faults, on the real Ray with 2 CPU workers: a worker killed with SIGKILL in the
middle of writing a checkpoint and another sent SIGTERM in the middle of an epoch; a driver killed
and the run continued with ``--resume``. Pair ids (``run.audit``) prove that the pairs trained after a restore
are exactly the ones the interrupted epoch had not trained."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import base_config
from tiny import synthetic_pairs, write_jsonl

from rerank_ray.config import Config
from rerank_ray.run.driver import train
from rerank_ray.training.faults import FAULTS_ENV

pytestmark = pytest.mark.ray

TRAIN_PAIRS = 203  # pair_files: 2 workers x 102 rows (one filler) = 13 batches of 8 per worker per epoch
STEPS_PER_EPOCH = 13


def read_audit(run_dir: Path) -> list[dict]:
    records = []
    for path in sorted((run_dir / "audit").glob("rank*.jsonl")):
        rank = int(path.stem.removeprefix("rank"))
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a killed worker
                records.append({**json.loads(line), "rank": rank})
    return records


def sessions_in_order(records: list[dict]) -> list[tuple[str, int | None]]:
    """(session id, step it restored from) of each worker-group attempt, in the order they ran."""
    seen: dict[str, int | None] = {}
    for record in records:
        if record["kind"] == "session" and record["rank"] == 0:
            seen.setdefault(record["session"], record["restored_from"])
    return list(seen.items())


def trained_per_epoch(records: list[dict], sessions: list[tuple[str, int | None]]) -> dict[int, Counter]:
    """Pair ids trained in each epoch by the work that survived: an attempt's steps count up to
    the step the next attempt restored from (later steps were lost with the dead worker group)."""
    cutoff = {session: None for session, _ in sessions}
    for (session, _), (_, next_restored) in zip(sessions, sessions[1:]):
        cutoff[session] = next_restored
    counts: dict[int, Counter] = {}
    for record in records:
        if record["kind"] != "pairs":
            continue
        limit = cutoff[record["session"]]
        if limit is not None and record["step"] > limit:
            continue
        counts.setdefault(record["epoch"], Counter()).update(record["ids"])
    return counts


def assert_every_pair_once_per_epoch(counts: dict[int, Counter], epochs: int, pairs: int) -> None:
    everything = {f"p{i}" for i in range(pairs)}
    assert sorted(counts) == list(range(epochs))
    for epoch, seen in counts.items():
        missing = everything - set(seen)
        twice = [pid for pid, n in seen.items() if n > 1]
        assert not missing and not twice, f"epoch {epoch}: missing {sorted(missing)[:5]}, trained twice {twice[:5]}"


def fault_config(tiny_bert, pair_files, tmp_path, name: str, **sections) -> dict:
    raw = base_config(
        tiny_bert,
        pair_files["train"],
        pair_files["eval"],
        tmp_path / "runs",
        data={"id_column": "pair_id"},
        train={"epochs": 2, "learning_rate": 5e-3, "logging_steps": 4},
        eval={"steps": 10},
        run={"storage_path": str(tmp_path / "runs"), "name": name, "audit": True, "checkpoint_steps": 4},
    )
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def test_killed_and_preempted_workers_restore_and_train_each_remaining_pair_once(
    ray_local, tiny_bert, pair_files, tmp_path, monkeypatch
):
    """Two real faults in one run. Rank 0 is SIGKILLed while uploading the checkpoint of step 8
    (its model files are in storage, its marker is not): the restart must ignore that partial
    checkpoint and restore step 4. Later rank 1 gets SIGTERM (a preempted node's notice) right
    after step 17 (epoch 2, 4 of 13 steps): at the next progress step (20) every rank writes a
    checkpoint and the workers restart from it, losing no step. After each restore the interrupted
    epoch trains exactly the pairs it had not trained, and the run finishes with the metric a
    healthy run reaches."""
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {
        "dir": str(faults_dir),
        "faults": [
            {"name": "upload-8", "at": "checkpoint_upload", "rank": 0, "step": 8},
            {"name": "step-17", "at": "step", "rank": 1, "step": 17, "action": "sigterm"},
        ],
    }
    monkeypatch.setenv(FAULTS_ENV, json.dumps(spec))
    raw = fault_config(tiny_bert, pair_files, tmp_path, "killed", run={"max_failures": 2})
    started = time.perf_counter()
    outcome = train(Config.from_dict(raw))
    print(f"run with two killed workers: {time.perf_counter() - started:.0f} s")

    # Both faults really fired, in two worker processes.
    fired = {p.name: json.loads(p.read_text()) for p in faults_dir.iterdir()}
    assert set(fired) == {"upload-8", "step-17"}
    assert fired["upload-8"]["pid"] != fired["step-17"]["pid"]

    run_dir = Path(outcome.run_dir)
    records = read_audit(run_dir)
    sessions = sessions_in_order(records)
    # Three attempts: the first from scratch, the second from step 4 (the partial checkpoint of
    # step 8 was ignored), the third from step 20, the checkpoint the SIGTERM asked for.
    assert [restored for _, restored in sessions] == [None, 4, 20]

    counts = trained_per_epoch(records, sessions)
    assert_every_pair_once_per_epoch(counts, epochs=2, pairs=TRAIN_PAIRS)
    # Both ranks took every step of the surviving work, in lockstep.
    final = [r for r in records if r["kind"] == "pairs" and r["session"] == sessions[-1][0]]
    assert {r["step"] for r in final if r["rank"] == 0} == {r["step"] for r in final if r["rank"] == 1}
    assert max(r["step"] for r in final) == 2 * STEPS_PER_EPOCH

    # The checkpoint of step 8 was rewritten whole by the second attempt and then pruned; what is
    # left is complete (marker + every file) or a tombstone.
    from rerank_ray.training import checkpointing

    complete, incomplete = checkpointing.scan(str(tmp_path / "runs"), "killed")
    assert not incomplete
    assert [c.step for c in complete][-2:] == [24, 26]

    metrics = outcome.metrics
    assert metrics["train"]["steps"] == 2 * STEPS_PER_EPOCH
    assert metrics["final"][metrics["headline_metric"]] > 0.9


@pytest.mark.slow  # two runs, one with its own Ray: about 100 s on this machine
def test_sigterm_to_the_driver_checkpoints_and_resume_trains_the_rest(ray_local, tiny_bert, pair_files, tmp_path):
    """Preemption: SIGTERM reaches the CLI's driver while a worker pauses after step 6; the run
    stops at its next progress step (8), writes that step's checkpoint, exports nothing and exits
    143 within a bound; ``--resume`` continues from step 8 and trains exactly the pairs epoch 1
    had left (no checkpoint_steps: the one at step 8 is the stop's own)."""
    raw = fault_config(tiny_bert, pair_files, tmp_path, "preempted", run={"checkpoint_steps": 0})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(raw))
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {
        "dir": str(faults_dir),
        "faults": [{"name": "pause-6", "at": "step", "step": 6, "action": "pause", "seconds": 8}],
    }
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), FAULTS_ENV: json.dumps(spec)}
    env.pop("RAY_ADDRESS", None)
    job = subprocess.Popen(
        [sys.executable, "-m", "rerank_ray.cli", "train", "--config", str(config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 400
        while not (faults_dir / "pause-6").exists():
            assert job.poll() is None, f"the run ended early:\n{job.communicate()[0][-3000:]}"
            assert time.time() < deadline, "the run never reached step 6"
            time.sleep(0.2)
        job.send_signal(signal.SIGTERM)  # the driver only, as a scheduler signals it
        signalled = time.perf_counter()
        output, _ = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    print(f"stopped {time.perf_counter() - signalled:.0f} s after SIGTERM")
    assert job.returncode == 143, output[-3000:]
    assert "stopped by SIGTERM at step 8 of 26" in output and "--resume" in output, output[-3000:]
    assert "Traceback" not in output

    from rerank_ray.training import checkpointing

    run_dir = tmp_path / "runs" / "preempted"
    assert checkpointing.latest_complete(str(tmp_path / "runs"), "preempted").step == 8
    assert not (run_dir / "model").exists()  # nothing exported from a stopped run

    resumed = train(Config.from_dict({**raw, "run": {**raw["run"], "resume": True}}))
    records = read_audit(Path(resumed.run_dir))
    sessions = sessions_in_order(records)
    assert [restored for _, restored in sessions] == [None, 8]
    assert_every_pair_once_per_epoch(trained_per_epoch(records, sessions), 2, TRAIN_PAIRS)
    assert resumed.metrics["final"][resumed.metrics["headline_metric"]] > 0.9


@pytest.mark.slow  # two jobs, one with its own Ray: 100-250 s on this machine
def test_resume_after_the_driver_is_killed(ray_local, tiny_bert, pair_files, tmp_path):
    """The CLI runs in its own process (with its own local Ray) and pauses after step 18; the test
    kills that whole process group with SIGKILL, as when a job's machine dies. ``--resume``
    then continues from the last complete checkpoint (step 16, in epoch 2) instead of starting
    over, and trains exactly the pairs epoch 2 had left.

    The data has bad rows and ``data.on_bad_row: skip``: the counts in ``metrics.json`` are
    exact although the epoch they are counted in was split across two jobs. Hub and cloud
    secrets are in the environment of the first job and in a free-text field of the config: none
    reaches the logs, the checkpoints, the model card or metrics.json."""
    train_rows = synthetic_pairs(TRAIN_PAIRS, seed=1)
    train_rows[5]["sentence_1"] = ""  # empty_text
    train_rows[77]["label"] = 4.0  # label_out_of_range for BinaryCrossEntropyLoss
    train_rows[150]["sentence_0"] = None  # null_text
    data = write_jsonl(train_rows, tmp_path / "data" / "train.jsonl")
    eval_rows = synthetic_pairs(61, seed=2)
    eval_rows[3]["label"] = 0.5  # not a binary label
    eval_data = write_jsonl(eval_rows, tmp_path / "data" / "eval.jsonl")

    secret_token = "hf_" + "Q" * 34
    secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    pairs = {"train": data, "eval": eval_data}
    raw = fault_config(
        tiny_bert, pairs, tmp_path, "resumed", data={"on_bad_row": "skip", "name": f"pairs {secret_token}"}
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(raw))  # JSON is YAML
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": "pause-18", "at": "step", "step": 18, "action": "pause"}]}
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1]),
        FAULTS_ENV: json.dumps(spec),
        "HF_TOKEN": secret_token,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "first-job.log"
    started = time.perf_counter()
    with log.open("w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "rerank_ray.cli", "train", "--config", str(config_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its Ray dies with it
        )
        try:
            deadline = time.time() + 400
            while not (faults_dir / "pause-18").exists():
                assert job.poll() is None, f"the first job ended early:\n{log.read_text()[-3000:]}"
                assert time.time() < deadline, "the first job never reached step 18"
                time.sleep(0.5)
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    print(f"first job, killed after step 18: {time.perf_counter() - started:.0f} s")

    from rerank_ray.training import checkpointing

    storage = str(tmp_path / "runs")
    assert checkpointing.latest_complete(storage, "resumed").step == 16

    # Without --resume the run name is refused rather than restarted or overwritten.
    from rerank_ray.config import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        train(Config.from_dict(raw))

    started = time.perf_counter()
    resumed = train(Config.from_dict({**raw, "run": {**raw["run"], "resume": True}}))
    print(f"resumed job: {time.perf_counter() - started:.0f} s")

    records = read_audit(Path(resumed.run_dir))
    sessions = sessions_in_order(records)
    assert [restored for _, restored in sessions] == [None, 16]
    counts = trained_per_epoch(records, sessions)
    good = TRAIN_PAIRS - 3
    bad_ids = {"p5", "p77", "p150"}
    everything = {f"p{i}" for i in range(TRAIN_PAIRS)} - bad_ids
    for epoch in (0, 1):
        assert set(counts[epoch]) == everything and max(counts[epoch].values()) == 1, epoch
    assert sum(counts[1].values()) == good

    metrics = resumed.metrics
    assert metrics["skipped_rows"] == {
        "train": {"null_text": 1, "empty_text": 1, "label_out_of_range": 1},
        "eval": {"label_out_of_range": 1},
    }
    assert metrics["train"]["pairs"] == good and metrics["train"]["eval_pairs"] == 60
    assert metrics["final"][metrics["headline_metric"]] > 0.9

    # No secret anywhere: the first job's output, the run folder (checkpoints, history, audit),
    # the exported model card and metrics.json.
    texts = {"first job log": log.read_text(errors="replace")}
    for path in Path(resumed.run_dir).rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".txt", ".yaml", ""):
            texts[str(path)] = path.read_text(errors="replace")
    for where, text in texts.items():
        assert secret_token not in text and secret_key not in text, where
    card = (Path(resumed.output_dir) / "README.md").read_text()
    assert "pairs ***" in card  # the data name, with the token masked


@pytest.mark.slow
def test_a_killed_worker_ends_where_a_healthy_run_ends(ray_local, tiny_bert, pair_files, tmp_path, monkeypatch):
    """The same run with and without a worker killed in the middle of epoch 1: the final metric
    and the final training loss agree within noise (the restored run sees the rest of the epoch
    in another order, so they are not bit-identical)."""
    healthy = train(Config.from_dict(fault_config(tiny_bert, pair_files, tmp_path, "healthy")))
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": "step-7", "at": "step", "rank": 1, "step": 7}]}
    monkeypatch.setenv(FAULTS_ENV, json.dumps(spec))
    killed = train(Config.from_dict(fault_config(tiny_bert, pair_files, tmp_path, "killed-once")))
    assert (faults_dir / "step-7").exists()
    headline = healthy.metrics["headline_metric"]
    assert abs(healthy.metrics["final"][headline] - killed.metrics["final"][headline]) <= 0.05
    losses = [[e["loss"] for e in outcome.metrics["history"] if "loss" in e] for outcome in (healthy, killed)]
    assert losses[0][-1] == pytest.approx(losses[1][-1], rel=0.25), losses
    assert healthy.metrics["train"]["steps"] == killed.metrics["train"]["steps"]
