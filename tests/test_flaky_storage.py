"""Flaky object storage (issue 17): a checkpoint upload to S3 that stops answering for a while is
retried with backoff and completes; storage that stays down past ``run.storage_retry_s`` ends the
run naming the storage (credentials masked), and the half-uploaded folder is never a restore point.

The S3 API is moto's server (tests/local_s3.py), paused with SIGSTOP: connections are accepted and
never answered, as with a stalled store (pyarrow's own retries give up after about 10 s)."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
from local_s3 import FAKE_SECRET, LocalS3

from rerank_ray.errors import StorageUnavailable
from rerank_ray.training import checkpointing


@pytest.fixture
def paused_s3(tmp_path, monkeypatch):
    s3 = LocalS3(tmp_path)
    for key, value in s3.credentials().items():
        monkeypatch.setenv(key, value)
    s3.make_bucket("ckpts")
    yield s3
    os.kill(s3.process.pid, signal.SIGCONT)
    s3.stop()


def _local_checkpoint(folder):
    """A checkpoint folder as :func:`checkpointing.save` lays it out: files, then the marker."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(os.urandom(4096))
    (folder / checkpointing.STATE_FILE).write_bytes(b"state")
    files = {"model/weights.bin": 4096, checkpointing.STATE_FILE: 5}
    (folder / checkpointing.MARKER).write_text(json.dumps({"step": 4, "metrics": {}, "files": files}))
    return folder


def test_an_upload_outlasts_storage_that_stops_answering_for_a_while(paused_s3, tmp_path, capsys):
    local = _local_checkpoint(tmp_path / "local")
    filesystem = paused_s3.filesystem("ckpts")
    os.kill(paused_s3.process.pid, signal.SIGSTOP)
    resume = threading.Timer(12.0, os.kill, (paused_s3.process.pid, signal.SIGCONT))
    resume.start()
    try:
        checkpointing.copy_checkpoint(str(local), filesystem, "ckpts/run/checkpoint-000004", 120.0, "s3://ckpts/run")
    finally:
        resume.cancel()
    assert paused_s3.files("ckpts") == {
        "ckpts/run/checkpoint-000004/model/weights.bin": 4096,
        "ckpts/run/checkpoint-000004/training_state.pt": 5,
        "ckpts/run/checkpoint-000004/checkpoint.json": (local / checkpointing.MARKER).stat().st_size,
    }
    said = capsys.readouterr().out
    assert "checkpoint upload to s3://ckpts/run failed (attempt 1" in said and "retrying in 1 s" in said


def test_storage_down_too_long_fails_naming_it_and_leaves_no_restore_point(paused_s3, tmp_path):
    local = _local_checkpoint(tmp_path / "local")
    filesystem = paused_s3.filesystem("ckpts")
    # The first file goes up, then storage stops answering for good.
    filesystem.create_dir("ckpts/run/checkpoint-000004/model", recursive=True)
    os.kill(paused_s3.process.pid, signal.SIGSTOP)
    uri = paused_s3.uri("ckpts", "run", secret=True)
    with pytest.raises(StorageUnavailable) as failure:
        checkpointing.copy_checkpoint(str(local), filesystem, "ckpts/run/checkpoint-000004", 3.0, uri)
    message = str(failure.value)
    assert "checkpoint checkpoint-000004: storage s3://" in message and "unreachable for 3 s" in message
    assert "run.storage_retry_s" in message and "--resume" in message
    assert FAKE_SECRET not in message and FAKE_SECRET.replace("/", "%2F") not in message
    os.kill(paused_s3.process.pid, signal.SIGCONT)
    found = checkpointing.verify(filesystem, "ckpts/run/checkpoint-000004")
    assert isinstance(found, str)  # incomplete: no marker, never restored or exported
