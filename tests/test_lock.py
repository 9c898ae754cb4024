"""One driver per run: the run's lock refuses a second driver, survives a crash, and is taken
over once its holder is gone. (Two real ``rerank-ray train`` started together: tests/test_tracking.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


# Two real `rerank-ray train` of one run started 0.3 s apart (one trains, the other exits 2):
# tests/test_tracking.py, whose CLI run serves that test too.
