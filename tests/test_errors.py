"""Which failures stop a run and which are retried, out-of-memory messages, and messages that
always encode (rerank_ray.errors, rerank_ray.training.faults)."""

from __future__ import annotations

import pickle

import pytest
import torch

from rerank_ray import errors
from rerank_ray.errors import DataError
from rerank_ray.training import faults


def test_out_of_memory_names_the_batch_size_and_the_fix():
    with pytest.raises(errors.OutOfMemory) as caught, faults.explain_oom("train", 32, 2, 4, 256):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = str(caught.value)
    for part in (
        "train.per_device_batch_size=32",
        "train.per_device_batch_size=16 and train.gradient_accumulation_steps=4",
        "global batch of 256",
        "Tried to allocate 2.00 GiB",
    ):
        assert part in message, message
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)

    eval_advice = "eval.batch_size=64 .max_length 128.: set eval.batch_size=32"
    with pytest.raises(errors.OutOfMemory, match=eval_advice), faults.explain_oom("eval", 64, max_length=128):
        raise torch.OutOfMemoryError("CUDA out of memory.")
    with pytest.raises(RuntimeError, match="gloo"), faults.explain_oom("train", 8):
        raise RuntimeError("gloo: connection reset")  # not an out-of-memory error: left alone


def test_input_errors_stop_the_run_other_failures_are_retried():
    callback = faults.stop_retrying_callback()
    wrapped = RuntimeError("Ray Data task failed")
    wrapped.__cause__ = DataError("data.train: f.parquet, row 7: ...")
    with pytest.raises(errors.StopRetrying, match="rank 1: data.train: f.parquet, row 7") as caught:
        callback.after_exception(None, {0: RuntimeError("connection closed by peer"), 1: wrapped})
    # The cause survives the pickling that carries it from Ray's controller to the driver.
    revived = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(errors.clear_error(revived), DataError)
    callback.after_exception(None, {0: RuntimeError("The actor died unexpectedly")})  # retried: no raise
    oom = errors.OutOfMemory("out of accelerator memory ...")
    with pytest.raises(errors.StopRetrying):
        callback.after_exception(None, {0: oom})
    # A worker's SIGTERM is retried (the restart resumes from the checkpoint it wrote), and the
    # driver finds it under Ray's wrapping when no retry is left (exit 143, --resume).
    preempted = errors.WorkerPreempted("rank(s) [1] got SIGTERM ...")
    callback.after_exception(None, {0: RuntimeError("peer gone"), 1: preempted})  # no raise
    failed = RuntimeError("Training failed after 2 retries")
    failed.worker_failures = {1: preempted}  # what ray.train.TrainingFailedError holds
    assert errors.find_error(failed, errors.WorkerPreempted) is preempted
    assert errors.clear_error(failed) is None


def test_error_messages_are_always_utf8_encodable():
    """Ray sends a task's error as UTF-8; a message holding lone surrogates (a line in another
    encoding) killed the worker instead, and the task was retried for ever."""
    line = "ab\u00e9".encode("utf-16").decode("utf-8", "surrogateescape")
    for error in (errors.DataError(f"row 3 cannot be parsed ({line})"), errors.ConfigError(f"key {line}")):
        str(error).encode("utf-8")  # does not raise
        assert "\\udcff\\udcfe" in str(error)
        assert str(pickle.loads(pickle.dumps(error))) == str(error)


# ---------------------------------------------------------------------------------------------
# Secrets
