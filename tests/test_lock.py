"""One driver per run: the run's lock refuses a second driver, survives a crash, and is taken
over once its holder is gone. Two real ``rerank-ray train`` started together: one trains."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import synthetic_pairs, write_jsonl

from rerank_ray.errors import ConfigError
from rerank_ray.run.lock import LOCK_FILE, RunLock

ROOT = Path(__file__).resolve().parents[1]


def _write_lock(run_dir: Path, host: str, pid: int, age_s: float = 0.0) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps({"token": "theirs", "host": host, "pid": pid, "since": time.time() - age_s}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_held_lock_refuses_a_second_driver_until_released(tmp_path):
    run_dir = tmp_path / "runs" / "job"
    with RunLock(str(run_dir), "job", 300):
        assert (run_dir / LOCK_FILE).is_file()
        with pytest.raises(ConfigError) as refused:
            RunLock(str(run_dir), "job", 300).acquire()
        message = str(refused.value)
        assert (
            f"run 'job' is being trained by another rerank-ray process ({socket.gethostname()} pid {os.getpid()}"
            in message
        )
        assert "taken over once it is 300 s old (run.lock_timeout_s)" in message
    assert not (run_dir / LOCK_FILE).exists()
    with RunLock(str(run_dir), "job", 300):  # free again
        pass


def test_a_lock_left_by_a_dead_driver_is_taken_over_saying_why(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "job"
    _write_lock(run_dir, "another-host", 12345, age_s=1000)  # its driver died 1000 s ago
    with RunLock(str(run_dir), "job", 300):
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "taking over the lock of run 'job' (not refreshed for 1000 s" in capsys.readouterr().out
    # A fresh lock of a live process on another host is respected...
    _write_lock(run_dir, "another-host", 12345, age_s=10)
    with pytest.raises(ConfigError, match="another-host pid 12345"):
        RunLock(str(run_dir), "job", 300).acquire()
    # ...one of a process of this host that has ended is taken over at once (a killed job resumed).
    _write_lock(run_dir, socket.gethostname(), _dead_pid(), age_s=10)
    with RunLock(str(run_dir), "job", 300):
        pass
    assert "has ended" in capsys.readouterr().out


def test_the_holder_keeps_its_lock_fresh(tmp_path):
    run_dir = tmp_path / "runs" / "job"
    with RunLock(str(run_dir), "job", timeout_s=5):  # refreshed every second
        path = run_dir / LOCK_FILE
        os.utime(path, (time.time() - 100, time.time() - 100))
        deadline = time.monotonic() + 30
        while time.time() - path.stat().st_mtime > 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert time.time() - path.stat().st_mtime < 50, "the heartbeat did not refresh the lock"
        assert json.loads(path.read_text())["pid"] == os.getpid()


@pytest.mark.ray
def test_two_trains_of_one_run_started_together_one_trains(tiny_bert, tmp_path):
    """The issue's reproduction: started 0.3 s apart, both used to train into one folder."""
    data = write_jsonl(synthetic_pairs(40), tmp_path / "train.jsonl")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{name_or_path: {tiny_bert}}}\ndata: {{train: {data}}}\n"
        f"train: {{epochs: 1, per_device_batch_size: 8}}\nscaling: {{num_workers: 1}}\n"
        f"run: {{storage_path: {tmp_path / 'runs'}, name: twice}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "rerank_ray.cli", "train", "--config", str(config)]
    first = subprocess.Popen(  # --verbose, seen here: Ray's own lines reach the console too
        [*command, "--verbose"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    time.sleep(0.3)
    second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert "(RayTrainWorker pid=" in out and "[rerank-ray] step 5/5 | epoch 1.00" in out, out[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    assert "error: run 'twice' is being trained by another rerank-ray process" in second.stderr
    assert "Traceback" not in second.stderr
    assert not (tmp_path / "runs" / "twice" / LOCK_FILE).exists()  # released when the run ended
